"""Report figures for a training run."""

from .plots import plot_class_counts, plot_confusion_matrix, plot_curves, save_figure

__all__ = ["plot_curves", "plot_confusion_matrix", "plot_class_counts", "save_figure"]
