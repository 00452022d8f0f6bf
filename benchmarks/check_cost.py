"""What the check at the start of `oculi train` costs: the data opened and decoded as training does it (from
the decoded-image cache when warm), then the cheap checks timed alone (file hashes and headers, perceptual
hashes, duplicate pairs, profile): the time they add to a run.

    python benchmarks/check_cost.py DATA   # e.g. /tmp/oculi-bench-cifar10/cifar10 (60,000 images)
"""

from __future__ import annotations

import sys
import time

from oculi.check.run import _decoded, inspect
from oculi.config import TrainConfig
from oculi.console import Reporter
from oculi.data.sources import open_source
from oculi.plan import resolve_plan


def main(data: str) -> None:
    start = time.perf_counter()
    source = open_source(data)
    sets, skipped = _decoded(source, resolve_plan(TrainConfig(data=data), source), Reporter(quiet=True))
    decoded = time.perf_counter()
    result = inspect(source, sets, skipped, Reporter(quiet=True))
    done = time.perf_counter()
    print(f"{data}: open + decode {decoded - start:.1f} s; the check {done - decoded:.1f} s")
    print(result.summary())


if __name__ == "__main__":
    main(sys.argv[1])
