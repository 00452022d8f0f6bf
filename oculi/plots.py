"""Figures as plain ``matplotlib.figure.Figure``: no pyplot state, so headless-safe (runs, reports and the CLI draw them)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from .io import atomic_path

if TYPE_CHECKING:  # for the annotations only: drawing needs no torch import
    import torch

_TRAIN, _VAL = "tab:blue", "tab:orange"
_MAP = "tab:green"  # a multi-label run's val mAP
_MAX_CELL_TEXT = 25  # above this many classes cell numbers become unreadable clutter
_LABEL_CHARS = 28  # class names on an axis are cut here: a longer one squeezes the plot to nothing


def show_image(ax, image: "torch.Tensor") -> None:
    """A uint8 [C, H, W] image on ``ax``, without ticks; one channel in gray."""
    pixels = image.permute(1, 2, 0).numpy()
    ax.imshow(pixels[..., 0] if pixels.shape[2] == 1 else pixels, cmap="gray", vmin=0, vmax=255)
    ax.set_xticks([])
    ax.set_yticks([])


def close_figure(fig: Figure) -> None:
    """Release a figure; only pyplot-made figures hold global state."""
    if fig.canvas.manager is not None:
        import matplotlib.pyplot as plt

        plt.close(fig)


def save_figure(fig: Figure, path: str | Path) -> Path:
    """Write ``fig`` as PNG (dpi 120) atomically, then close it."""
    path = Path(path)
    with atomic_path(path) as tmp:
        # The temp name ends in .tmp, so the format must be explicit.
        fig.savefig(tmp, format="png", dpi=120)
    close_figure(fig)
    return path


# ---------------------------------------------------------------- training curves

def _series(history: list[dict], key: str) -> np.ndarray:
    return np.array([np.nan if h.get(key) is None else float(h[key]) for h in history])


def plot_curves(history: list[dict], best_epoch: int | None = None, baseline: dict | None = None,
                panels: tuple[str, ...] = ("acc", "loss")) -> Figure:
    """Accuracy and loss per epoch, train vs val, with the kept (best) epoch marked.

    ``best_epoch`` is the epoch whose weights the run kept; by default, the highest val accuracy.
    ``baseline`` (val metrics of the starting model: the head trained on frozen features) is drawn as a
    dashed line; ``best_epoch`` 0 means the baseline was kept. ``panels``: ("acc",) or ("loss",) draws one."""
    if not panels or not set(panels) <= {"acc", "loss"}:
        raise ValueError(f"panels must name acc and/or loss, got {panels}")
    fig = Figure(figsize=(5.2 * len(panels), 4.2), layout="constrained")  # two fit side by side in a report
    axes = dict(zip(panels, fig.subplots(1, len(panels), squeeze=False)[0]))
    ax_acc, ax_loss = axes.get("acc"), axes.get("loss")
    epochs = np.array([h.get("epoch", i + 1) for i, h in enumerate(history)])
    # Markers keep a single epoch (or gaps left by missing values) visible.
    marker = "o" if len(history) <= 60 else None
    for name, ax in axes.items():
        for split, color in (("train", _TRAIN), ("val", _VAL)):
            y = _series(history, f"{split}_{name}")
            if np.isfinite(y).any():
                ax.plot(epochs, y, color=color, marker=marker, ms=4, label=split)
        ax.set_title("Accuracy" if name == "acc" else "Loss")
        ax.set_ylabel("accuracy" if name == "acc" else "loss")
        _epoch_axis(ax, epochs)
        ax.grid(alpha=0.3)
    if baseline is not None:
        kept = " (kept)" if best_epoch == 0 else ""
        if ax_acc is not None:
            ax_acc.axhline(baseline["val_acc"], color=_VAL, ls="--", lw=1.2,
                           label=f"features head: val {baseline['val_acc']:.3f}{kept}")
        if ax_loss is not None:
            ax_loss.axhline(baseline["val_loss"], color=_VAL, ls="--", lw=1.2, label="features head: val")
    chosen_by = _series(history, "val_acc")
    maps = _series(history, "val_map")  # a multi-label run: its epoch is kept by val mAP
    if ax_acc is not None and np.isfinite(maps).any():
        ax_acc.plot(epochs, maps, color=_MAP, marker=marker, ms=4, label="val mAP")
        ax_acc.set_title("Every label right (train, val) and val mAP")
        ax_acc.set_ylabel("share of images / mAP")
        chosen_by = maps
    if best_epoch != 0:
        _mark_best(ax_acc, ax_loss, epochs, chosen_by, best_epoch)
    for ax in axes.values():
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="best")
    return fig


def _epoch_axis(ax, epochs: np.ndarray) -> None:
    ax.set_xlabel("epoch")
    if not len(epochs):
        return
    # A locator alone puts fractional ticks on a one-epoch run; list short runs explicitly.
    if len(epochs) <= 15:
        ax.set_xticks(epochs)
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlim(epochs.min() - 0.5, epochs.max() + 0.5)


def _mark_best(ax_acc, ax_loss, epochs: np.ndarray, val_acc: np.ndarray, best_epoch: int | None) -> None:
    if not np.isfinite(val_acc).any():
        return
    i = int(np.nanargmax(val_acc)) if best_epoch is None else int(np.flatnonzero(epochs == best_epoch)[0])
    if ax_acc is not None:
        ax_acc.plot(epochs[i], val_acc[i], "*", color="tab:red", ms=14, zorder=5,
                    label=f"kept: val {val_acc[i]:.3f} (epoch {epochs[i]})")
    for ax in (a for a in (ax_acc, ax_loss) if a is not None):
        ax.axvline(epochs[i], color="tab:red", ls=":", lw=1, alpha=0.7)


# ---------------------------------------------------------------- confusion matrix

def plot_confusion_matrix(matrix, classes: list[str], normalize: bool = False) -> Figure:
    """Confusion matrix (rows true, columns predicted), optionally row-normalised."""
    counts = np.asarray(matrix, dtype=float)
    values = _row_normalise(counts) if normalize else counts
    return _class_matrix(values, classes, "Confusion matrix", ("predicted", "true"),
                         "fraction of true class" if normalize else "images", normalize)


def plot_co_occurrence(matrix, classes: list[str]) -> Figure:
    """How often two labels are on one image (the diagonal: images with each label), of a multi-label set."""
    return _class_matrix(np.asarray(matrix, dtype=float), classes, "Labels on the same image", ("label", "label"),
                         "images", False)


def _class_matrix(values: np.ndarray, classes: list[str], title: str, axes: tuple[str, str], bar: str,
                  fractions: bool) -> Figure:
    """A classes x classes matrix of counts (or fractions) with its cells written in while they are legible."""
    k = len(classes)
    side = float(np.clip(0.42 * k + 3.0, 4.5, 18.0))
    fig = Figure(figsize=(side + 1.2, side), layout="constrained")
    ax = fig.subplots()
    im = ax.imshow(values, cmap="Blues", vmin=0, vmax=1 if fractions else max(values.max(), 1))
    fig.colorbar(im, ax=ax, shrink=0.8, label=bar)
    # The figure grows with k, so each cell stays ~0.4 inch: fonts need only shrink a little.
    label_font = float(np.clip(13 - 0.15 * k, 8, 11))
    ticks = np.arange(k)
    names = [_short(c, _LABEL_CHARS) for c in classes]
    ax.set_xticks(ticks, names, rotation=45, ha="right", rotation_mode="anchor", fontsize=label_font)
    ax.set_yticks(ticks, names, fontsize=label_font)
    ax.set_xlabel(axes[0])
    ax.set_ylabel(axes[1])
    ax.set_title(title)
    if k <= _MAX_CELL_TEXT:
        _cell_text(ax, im, values, fractions, float(np.clip(12 - 0.2 * k, 7, 11)))
    return fig


def plot_pr_curves(targets: np.ndarray, probs: np.ndarray, classes: list[str], thresholds) -> Figure:
    """Each class's precision-recall curve (its AP in the legend) and the point its threshold gives."""
    from sklearn.metrics import precision_recall_curve  # the report's and training's end only
    fig = Figure(figsize=(7.5, 5.5), layout="constrained")
    ax = fig.subplots()
    y, p = np.asarray(targets).astype(bool), np.asarray(probs, dtype=float)
    for c, name in enumerate(classes):
        if not y[:, c].any():
            continue
        precision, recall, _ = precision_recall_curve(y[:, c], p[:, c])
        line, = ax.step(recall, precision, where="post", lw=1.5,
                        label=f"{_short(name, _LABEL_CHARS)} (AP {_ap(precision, recall):.2f})")
        chosen = p[:, c] >= thresholds[c]
        hits = (chosen & y[:, c]).sum()
        ax.plot(hits / y[:, c].sum(), hits / max(chosen.sum(), 1), "o", color=line.get_color(), ms=6)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.02)
    ax.set_title("Precision-recall per class (dot: its threshold)")
    ax.legend(fontsize=8, loc="lower left", ncol=2 if len(classes) > 8 else 1)
    return fig


def _ap(precision: np.ndarray, recall: np.ndarray) -> float:
    """Average precision from a precision-recall curve, as scikit-learn sums it."""
    return float(-np.sum(np.diff(recall) * precision[:-1]))


def _row_normalise(counts: np.ndarray) -> np.ndarray:
    totals = counts.sum(axis=1, keepdims=True)
    # Classes absent from the data keep an all-zero row instead of NaN.
    return np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)


def _cell_text(ax, im, values: np.ndarray, normalize: bool, font: float) -> None:
    for (i, j), v in np.ndenumerate(values):
        text = f"{v:.2f}" if normalize else f"{int(v)}"
        if normalize and v == 0:
            text = "0"  # a bare 0 keeps empty cells quiet
        dark = im.norm(v) > 0.55
        ax.text(j, i, text, ha="center", va="center", fontsize=font,
                color="white" if dark else "black")


# ---------------------------------------------------------------- calibration

def plot_reliability(panels: dict[str, dict]) -> Figure:
    """Reliability diagrams side by side, one per entry of ``panels`` (title -> {"reliability": bins, "ece":
    float}, as ``calibration.calibration_figures`` gives them): each confidence bin's accuracy (a bar) and mean
    confidence (a red line: above the bar, over-confident); on the diagonal a perfectly calibrated model; below,
    how many images each bin holds."""
    fig = Figure(figsize=(4.6 * len(panels), 5.0), layout="constrained")
    axes = fig.subplots(2, len(panels), squeeze=False, height_ratios=[3, 1], sharex=True)
    for column, (title, panel) in enumerate(panels.items()):
        bins = panel["reliability"]
        low = np.array([b["low"] for b in bins])
        width = np.array([b["high"] - b["low"] for b in bins])
        full = [i for i, b in enumerate(bins) if b["count"]]
        accuracy = np.array([bins[i]["accuracy"] for i in full])
        confidence = np.array([bins[i]["confidence"] for i in full])
        ax, counts = axes[0][column], axes[1][column]
        ax.bar(low[full], accuracy, width[full], align="edge", color="tab:blue", alpha=0.8, edgecolor="white",
               label="accuracy")
        ax.hlines(confidence, low[full], low[full] + width[full], color="tab:red", lw=2.5, label="mean confidence")
        ax.plot([0, 1], [0, 1], "k--", lw=1, label="calibrated")
        ax.set(xlim=(0, 1), ylim=(0, 1), ylabel="accuracy", title=f"{title}: ECE {panel['ece']:.4f}")
        ax.legend(loc="lower right", fontsize=8)
        counts.bar(low, [b["count"] for b in bins], width, align="edge", color="tab:gray", edgecolor="white")
        counts.set(xlabel="confidence (top class probability)", ylabel="images", yscale="symlog")
    return fig


# ---------------------------------------------------------------- class counts

def plot_class_counts(counts: dict[str, dict[str, int]]) -> Figure:
    """Grouped horizontal bars: images per class for each split."""
    splits = list(counts)
    classes = list(dict.fromkeys(c for split in counts.values() for c in split))
    k, s = len(classes), max(len(splits), 1)
    height = float(np.clip(0.12 * k * (s + 1) + 1.6, 3.0, 20.0))
    fig = Figure(figsize=(8, height), layout="constrained")
    ax = fig.subplots()
    bar = 0.8 / s
    y = np.arange(k)
    for n, split in enumerate(splits):
        vals = [counts[split].get(c, 0) for c in classes]
        bars = ax.barh(y + (n - (s - 1) / 2) * bar, vals, height=bar, label=split)
        if k * s <= 80:  # numbers beside bars only while they stay legible
            ax.bar_label(bars, padding=2, fontsize=8)
    ax.set_yticks(y, [_short(c, _LABEL_CHARS) for c in classes], fontsize=float(np.clip(12 - 0.1 * k, 7, 10)))
    ax.set_ylim(k - 0.5, -0.5)  # first class on top, in reading order, no empty margin
    ax.set_xlabel("images")
    ax.set_title("Images per class")
    ax.grid(axis="x", alpha=0.3)
    ax.margins(x=0.12)  # room for the bar labels
    if splits:
        # Outside the axes so it never hides a bar; constrained layout makes room.
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), title="split")
    return fig


# ---------------------------------------------------------------- augmentation preview

def plot_augmentation_preview(originals: "torch.Tensor", augmented: "torch.Tensor", titles: list[str],
                              columns: int = 7) -> Figure:
    """Each original image [K, C, H, W] (uint8) followed by its augmented versions [K, n, C, H, W]: one
    block of rows per image, the original first and outlined."""
    k, n = augmented.shape[:2]
    rows_each = -(-(n + 1) // columns)
    fig = Figure(figsize=(1.6 * columns, 1.7 * rows_each * k), layout="constrained")
    axes = fig.subplots(rows_each * k, columns, squeeze=False)
    for i in range(k):
        tiles = [originals[i], *augmented[i]]
        for j in range(rows_each * columns):
            ax = axes[i * rows_each + j // columns, j % columns]
            if j >= len(tiles):
                ax.set_axis_off()
                continue
            show_image(ax, tiles[j])
            if j == 0:
                ax.set_title(f"{titles[i]} (original)", fontsize=8, loc="left")
                for spine in ax.spines.values():
                    spine.set(color="tab:green", linewidth=2)
    return fig


# ---------------------------------------------------------------- image filters

def plot_filters(original: "torch.Tensor", filtered: dict[str, "torch.Tensor"]) -> Figure:
    """The original uint8 image [C, H, W] and each filter's result, side by side."""
    tiles = {"original": original, **filtered}
    fig = Figure(figsize=(3 * len(tiles), 3.3), layout="constrained")
    for ax, (name, image) in zip(fig.subplots(1, len(tiles), squeeze=False)[0], tiles.items()):
        show_image(ax, image)
        ax.set_title(name)
        ax.set_axis_off()
    return fig


# ---------------------------------------------------------------- image grids

_RIGHT, _WRONG = "tab:green", "tab:red"


def plot_probability_bars(images: "torch.Tensor", probs: np.ndarray, true: list[int], classes: list[str],
                          top: int = 5) -> Figure:
    """Each image beside a bar chart of its ``top`` most probable classes: the true class green, a wrong
    top prediction red."""
    n, k = len(images), min(top, len(classes))
    fig = Figure(figsize=(5.2, 1.55 * max(n, 1) + 0.3), layout="constrained")
    axes = fig.subplots(max(n, 1), 2, squeeze=False, width_ratios=[1, 2.4])
    for i in range(n):
        show_image(axes[i, 0], images[i])
        axes[i, 0].set_title(f"true: {_short(classes[true[i]])}", fontsize=9, loc="left")
        order = np.argsort(-probs[i], kind="stable")[:k]
        colours = [_RIGHT if c == true[i] else _WRONG if j == 0 else "tab:gray" for j, c in enumerate(order)]
        ax = axes[i, 1]
        bars = ax.barh(np.arange(k), probs[i][order], color=colours)
        ax.bar_label(bars, labels=[f"{p:.1%}" for p in probs[i][order]], padding=3, fontsize=8)
        ax.set_yticks(np.arange(k), [_short(classes[c], 24) for c in order], fontsize=9)
        ax.set_ylim(k - 0.5, -0.5)
        ax.set_xlim(0, 1.18)  # room for the labels beside full bars
        ax.set_xticks([0, 0.5, 1])
        ax.grid(axis="x", alpha=0.3)
    return fig


def _short(name: str, limit: int = 14) -> str:
    """Class names cut to fit a small tile's title."""
    return name if len(name) <= limit else name[: limit - 1] + "…"
