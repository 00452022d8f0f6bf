"""Figures for ``oculi explain``: feature maps per stage and Grad-CAM, as plain ``Figure`` objects."""

from __future__ import annotations

import textwrap

import numpy as np
import torch
from matplotlib.figure import Figure

from ..plots import show_image

_WIDTH = 8.0  # inches: 960 px at save_figure's dpi, readable scaled down to a phone's width
_COLUMNS = 8  # tiles per row: about an inch each
_VALUES_PER_ROW = 32  # cells per row for stages of 1x1 maps (more when that would take over 4 rows)
_VALUE_ROW = 0.25  # inches


def plot_feature_maps(maps: list[tuple[str, torch.Tensor]], max_channels: int = 16) -> Figure:
    """One block per stage, titled with its name and shape C x H x W, showing its ``max_channels`` most
    active channels (largest mean activation), most active first, each scaled to its own range. A stage
    of 1x1 maps shows every channel's value instead, as a strip on one shared scale."""
    if not maps:
        raise ValueError("no feature maps to plot: the model has no convolutional stages")
    heights = [_block_height(x, max_channels) for _, x in maps]
    fig = Figure(figsize=(_WIDTH, sum(heights) + 0.5), layout="constrained")
    fig.suptitle(f"Feature maps: up to {max_channels} most active channels per stage", fontsize=13)
    blocks = fig.subfigures(len(maps), 1, height_ratios=heights, squeeze=False)[:, 0]
    for block, (name, x) in zip(blocks, maps):
        _plot_stage(block, name, x, max_channels)
    return fig


def most_active(x: torch.Tensor, k: int) -> list[int]:
    """Indices of the ``k`` channels of [C, H, W] with the largest mean activation.

    Not simply the first k: channel order means nothing, and in deeper stages most channels are silent
    for a given image (zero after the ReLU), which would show as blank tiles. The most active ones are
    what this image switched on."""
    means = x.flatten(1).mean(dim=1)
    return torch.argsort(means, descending=True, stable=True)[:k].tolist()


def _grid(channels: int, max_channels: int) -> tuple[int, int]:
    """(rows, columns) of a stage's tiles."""
    shown = min(channels, max_channels)
    columns = min(shown, _COLUMNS)
    return -(-shown // columns), columns


def _block_height(x: torch.Tensor, max_channels: int) -> float:
    """Inches for a stage: its rows of tiles (as tall as the map's aspect makes them) and a title."""
    if _is_vector(x):
        return _value_grid(x.shape[0])[0] * _VALUE_ROW + 0.5
    rows, _ = _grid(x.shape[0], max_channels)
    aspect = float(np.clip(x.shape[1] / x.shape[2], 0.25, 2.0))
    return rows * (_WIDTH / _COLUMNS) * aspect + 0.4


def _is_vector(x: torch.Tensor) -> bool:
    """A stage shrunk to one pixel (8x8 digits after fast-cnn's pools): one number per channel."""
    return x.shape[1] * x.shape[2] == 1


def _value_grid(channels: int) -> tuple[int, int]:
    """(rows, columns) of a 1x1 stage's cells: at most 4 rows, so 1,280 channels stay a strip."""
    columns = min(channels, max(_VALUES_PER_ROW, -(-channels // 4)))
    return -(-channels // columns), columns


def _plot_vector(block, name: str, x: torch.Tensor) -> None:
    """Every channel's single value as one cell, on a scale shared by the stage: a 1x1 tile scaled to its
    own range would be a blank square."""
    c = x.shape[0]
    rows, columns = _value_grid(c)
    values = np.full(rows * columns, np.nan)  # NaN: the unused cells of the last row stay empty
    values[:c] = x.reshape(-1).float().numpy()
    block.suptitle(f"{name}: {c} x 1 x 1 (one value per channel, shared scale)",
                   fontsize=12, x=0.01, ha="left")
    ax = block.subplots()
    ax.imshow(values.reshape(rows, columns), cmap="viridis", interpolation="nearest", aspect="auto")
    ax.set_axis_off()


def _plot_stage(block, name: str, x: torch.Tensor, max_channels: int) -> None:
    if _is_vector(x):
        return _plot_vector(block, name, x)
    c, h, w = x.shape
    rows, _ = _grid(c, max_channels)
    block.suptitle(f"{name}: {c} x {h} x {w}", fontsize=12, x=0.01, ha="left")
    axes = block.subplots(rows, _COLUMNS, squeeze=False)  # always 8 columns: tiles keep one size
    channels = most_active(x, max_channels)
    for i, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if i >= len(channels):
            continue
        ax.imshow(_unit_range(x[channels[i]]), cmap="viridis", vmin=0, vmax=1)
        ax.text(0.03, 0.97, str(channels[i]), transform=ax.transAxes, fontsize=7, color="white",
                va="top", ha="left", bbox=dict(boxstyle="square,pad=0.1", fc="black", alpha=0.4, lw=0))


def _unit_range(channel: torch.Tensor) -> np.ndarray:
    """A channel scaled to [0, 1] by its own min and max (a constant channel shows as 0)."""
    values = channel.float().numpy()
    low, span = values.min(), values.max() - values.min()
    return (values - low) / span if span > 0 else np.zeros_like(values)


def plot_grad_cam(image: torch.Tensor, cam: torch.Tensor, title: str) -> Figure:
    """The uint8 image [C, H, W], its Grad-CAM heat map [H, W] in [0, 1], and the two overlaid."""
    fig = Figure(figsize=(9, 3.5), layout="constrained")
    ax_image, ax_cam, ax_overlay = fig.subplots(1, 3)
    heat = cam.float().numpy()
    show_image(ax_image, image)
    # jet, the usual Grad-CAM colours: its reds and blues stand out over a photo or a gray image alike.
    shown = ax_cam.imshow(heat, cmap="jet", vmin=0, vmax=1)
    fig.colorbar(shown, ax=ax_cam, shrink=0.8)
    show_image(ax_overlay, image)
    # Transparency follows the heat: where nothing speaks for the class, the image shows unchanged.
    ax_overlay.imshow(heat, cmap="jet", vmin=0, vmax=1, alpha=0.6 * heat)
    for ax, name in ((ax_image, "image"), (ax_cam, "heat map"), (ax_overlay, "overlay")):
        ax.set_title(name, fontsize=12)
        ax.set_xticks([])  # the heat map's axes (the image's are bare already)
        ax.set_yticks([])
    fig.suptitle("\n".join(textwrap.wrap(title, 80)), fontsize=13)  # long class names wrap, not clip
    return fig

