"""``python -m oculi``: the ``oculi`` command, for environments where the console script is not installed."""

import sys

from .cli import main

sys.exit(main())
