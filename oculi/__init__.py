"""oculi: from a folder of labelled images to a trained, evaluated, explainable image classifier.

    import oculi
    run = oculi.train("digits")            # or a folder of class folders
    clf = oculi.load(run.run_dir)
    clf.predict(["photo.jpg"])
"""

import sys as _sys
from types import ModuleType as _ModuleType

from .version import __version__

__all__ = ["train", "load", "__version__"]

# The API imports torch, training and reporting (seconds): loaded on first use, so that `import oculi`
# and `oculi --help` start at once.
_API = ("train", "load")


def __getattr__(name: str):
    if name in _API:
        from . import api
        globals()[name] = getattr(api, name)  # later lookups skip __getattr__
        return globals()[name]
    raise AttributeError(f"module 'oculi' has no attribute '{name}'")


def __dir__() -> list[str]:
    return sorted(set(__all__) | {n for n in globals() if not n.startswith("_")})


class _Package(_ModuleType):
    def __setattr__(self, name: str, value) -> None:
        # Importing the subpackage oculi.train binds it here as `train`, which would hide the API
        # function oculi.train(...); the subpackage stays reachable through sys.modules and imports.
        if name == "train" and isinstance(value, _ModuleType):
            return
        super().__setattr__(name, value)


_sys.modules[__name__].__class__ = _Package
