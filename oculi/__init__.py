"""oculi: from a folder of labelled images to a trained, evaluated, explainable image classifier.

    import oculi
    run = oculi.train("digits")            # or a folder of class folders
    clf = oculi.load(run.run_dir)
    clf.predict(["photo.jpg"])
"""

from .version import __version__

__all__ = ["train", "load", "push", "tune", "__version__"]

# The API imports torch, training and reporting (seconds): loaded on first use, so that `import oculi`
# and `oculi --help` start at once.
_API = ("train", "load", "push")


def __getattr__(name: str):
    if name in _API:
        from . import api
        globals()[name] = getattr(api, name)  # later lookups skip __getattr__
        return globals()[name]
    if name == "tune":
        from .tune import tune
        globals()[name] = tune
        return tune
    raise AttributeError(f"module 'oculi' has no attribute '{name}'")


def __dir__() -> list[str]:
    return sorted(set(__all__) | {n for n in globals() if not n.startswith("_")})

