"""oculi: from a folder of labelled images to a trained, evaluated, explainable image classifier.

    import oculi
    run = oculi.train("digits")            # or a folder of class folders
    clf = oculi.load(run.run_dir)
    clf.predict(["photo.jpg"])
"""

__version__ = "0.1.0"

from .api import load, train  # noqa: E402

__all__ = ["train", "load", "__version__"]
