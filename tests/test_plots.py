import os

import numpy as np
import pytest
from matplotlib.figure import Figure
from PIL import Image

from oculi.plots import plot_class_counts, plot_confusion_matrix, plot_curves, save_figure


def _history(epochs):
    return [
        {"epoch": e, "train_loss": 1 / e, "train_acc": 1 - 1 / (e + 1),
         "val_loss": 1.2 / e, "val_acc": 0.9 - 1 / (e + 1), "lr": 0.01}
        for e in range(1, epochs + 1)
    ]


def _matrix(k, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 5, (k, k)) + np.diag(rng.integers(20, 60, k))


def _saved(fig, tmp_path, name="plot.png"):
    path = save_figure(fig, tmp_path / name)
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]  # no temp file left
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        return im.format, im.size


def test_curves(tmp_path):
    fig = plot_curves(_history(10))
    assert isinstance(fig, Figure)
    acc, loss = fig.axes
    assert acc.get_title() == "Accuracy" and loss.get_title() == "Loss"
    assert acc.get_xlabel() == loss.get_xlabel() == "epoch"
    assert any("kept: val" in t.get_text() for t in acc.get_legend().get_texts())
    fmt, (w, h) = _saved(fig, tmp_path)
    assert fmt == "PNG" and 800 < w < 2000 and 300 < h < 1000


def test_curves_single_epoch_uses_markers(tmp_path):
    fig = plot_curves(_history(1))
    lines = [ln for ln in fig.axes[0].get_lines() if ln.get_label() in ("train", "val")]
    assert lines and all(ln.get_marker() not in (None, "None", "") for ln in lines)
    assert list(fig.axes[0].get_xticks()) == [1]
    _saved(fig, tmp_path)


def test_curves_missing_val_values(tmp_path):
    history = _history(4)
    history[1]["val_acc"] = history[1]["val_loss"] = None
    _saved(plot_curves(history), tmp_path)
    # A run without a validation split at all.
    no_val = [{"epoch": 1, "train_loss": 0.5, "train_acc": 0.8, "val_loss": None, "val_acc": None}]
    fig = plot_curves(no_val)
    assert [ln.get_label() for ln in fig.axes[0].get_lines()] == ["train"]
    _saved(fig, tmp_path, "noval.png")


def test_curves_empty_history(tmp_path):
    _saved(plot_curves([]), tmp_path)


def test_confusion_matrix_two_classes(tmp_path):
    fig = plot_confusion_matrix([[40, 2], [3, 25]], ["ants", "bees"])
    ax = fig.axes[0]
    assert ax.get_title() == "Confusion matrix"
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("predicted", "true")
    texts = {t.get_text(): t.get_color() for t in ax.texts}
    assert set(texts) == {"40", "2", "3", "25"}
    assert texts["40"] == "white" and texts["2"] == "black"  # colour follows cell darkness
    assert [t.get_text() for t in ax.get_xticklabels()] == ["ants", "bees"]
    fmt, (w, h) = _saved(fig, tmp_path)
    assert fmt == "PNG" and 400 < w < 1200 and 400 < h < 1200


def test_confusion_matrix_normalised_handles_empty_rows():
    fig = plot_confusion_matrix([[3, 1, 0], [0, 0, 0], [1, 1, 2]], ["a", "b", "c"], normalize=True)
    data = fig.axes[0].images[0].get_array()
    np.testing.assert_allclose(data.sum(axis=1), [1, 0, 1])
    assert "0.75" in {t.get_text() for t in fig.axes[0].texts}


def test_confusion_matrix_thirty_classes_drops_cell_text(tmp_path):
    names = [f"class_number_{i}" for i in range(30)]
    fig = plot_confusion_matrix(_matrix(30), names)
    assert len(fig.axes[0].texts) == 0
    small_w, _ = plot_confusion_matrix(_matrix(2), ["a", "b"]).get_size_inches()
    assert fig.get_size_inches()[0] > small_w  # figure grows with the class count
    fmt, (w, h) = _saved(fig, tmp_path)
    assert fmt == "PNG" and 1000 < w < 3000


def test_class_counts(tmp_path):
    counts = {"train": {"ants": 120, "bees": 110}, "val": {"ants": 70, "bees": 80, "wasps": 3}}
    fig = plot_class_counts(counts)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["ants", "bees", "wasps"]
    assert len(ax.patches) == 6  # 2 splits x 3 classes, a missing class counts as 0
    fmt, (w, h) = _saved(fig, tmp_path)
    assert fmt == "PNG" and 500 < w < 1500


@pytest.mark.parametrize("k", [2, 30])
def test_class_counts_sizes(tmp_path, k):
    counts = {s: {f"class_{i}": 10 + i for i in range(k)} for s in ("train", "val", "test")}
    _saved(plot_class_counts(counts), tmp_path)


def test_save_figure_creates_folder_and_cleans_up_on_failure(tmp_path):
    fig = plot_curves(_history(2))
    save_figure(fig, tmp_path / "deep" / "curves.png")
    assert (tmp_path / "deep" / "curves.png").stat().st_size > 0

    broken = Figure()
    broken.savefig = lambda *a, **k: (_ for _ in ()).throw(OSError("disk full"))
    with pytest.raises(OSError):
        save_figure(broken, tmp_path / "broken.png")
    assert sorted(os.listdir(tmp_path)) == ["deep"]
    # A failed save over an earlier figure leaves that figure whole.
    before = (tmp_path / "deep" / "curves.png").read_bytes()
    with pytest.raises(OSError):
        save_figure(broken, tmp_path / "deep" / "curves.png")
    assert (tmp_path / "deep" / "curves.png").read_bytes() == before and os.listdir(tmp_path / "deep") == ["curves.png"]


def test_curves_mark_the_epoch_the_run_kept():
    fig = plot_curves(_history(10), best_epoch=4)
    assert any("(epoch 4)" in t.get_text() for t in fig.axes[0].get_legend().get_texts())


def _images(n, side=16, seed=0):
    import torch
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (n, 3, side, side), dtype=np.uint8))


def test_curves_one_panel_at_a_time():
    (acc,) = plot_curves(_history(5), panels=("acc",)).axes
    (loss,) = plot_curves(_history(5), panels=("loss",)).axes
    assert acc.get_title() == "Accuracy" and loss.get_title() == "Loss"
    stars = [[line for line in ax.lines if line.get_marker() == "*"] for ax in (acc, loss)]
    assert len(stars[0]) == 1 and not stars[1]  # the kept epoch's star is on the accuracy panel
    with pytest.raises(ValueError, match="panels"):
        plot_curves(_history(5), panels=("f1",))


def test_probability_bars_show_the_top_classes_in_order():
    from oculi.plots import plot_probability_bars
    probs = np.array([[0.1, 0.6, 0.3], [0.7, 0.2, 0.1]])
    fig = plot_probability_bars(_images(2), probs, [2, 0], ["a", "b", "c"], top=2)
    bars = [ax for ax in fig.axes if ax.patches]
    assert [t.get_text() for t in bars[0].get_yticklabels()] == ["b", "c"]
    assert [p.get_width() for p in bars[0].patches] == [0.6, 0.3]
    # First image: the top guess (b) is wrong, the true class (c) is second.
    assert [p.get_facecolor() for p in bars[0].patches][1] == pytest.approx((0.172549, 0.627451, 0.172549, 1.0), abs=1e-3)
