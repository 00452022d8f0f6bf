"""oculi augment-preview: one picture of a few images and their augmented versions."""

import pytest
from PIL import Image

from oculi.cli import main
from oculi.errors import OculiError
from oculi.report.augment import augmentation_preview


def _shown(fig):
    return [ax for ax in fig.axes if ax.images]


def test_each_image_comes_first_then_its_augmented_versions(colour_folder):
    fig = augmentation_preview(str(colour_folder), n=5, images=2, augment="standard")
    shown = _shown(fig)
    assert len(shown) == 2 * (1 + 5)
    titles = [ax.get_title(loc="left") for ax in shown if ax.get_title(loc="left")]
    assert titles == ["blue (original)", "green (original)"]  # one per class, in class order
    first, second = (ax.images[0].get_array() for ax in shown[:2])
    assert first.shape == second.shape == (20, 24, 3)  # small images keep their size
    assert (first != second).any()


def test_no_augmentation_repeats_the_original(colour_folder):
    shown = _shown(augmentation_preview(str(colour_folder), n=3, images=1, augment="none"))
    arrays = [ax.images[0].get_array() for ax in shown]
    assert all((a == arrays[0]).all() for a in arrays)


def test_bad_values_name_the_flag(colour_folder):
    with pytest.raises(OculiError, match="--n"):
        augmentation_preview(str(colour_folder), n=0)
    with pytest.raises(OculiError, match="--augment"):
        augmentation_preview(str(colour_folder), augment="wild")


def test_the_command_writes_a_png(colour_folder, tmp_path, capsys):
    out = tmp_path / "preview.png"
    assert main(["augment-preview", str(colour_folder), "--n", "4", "--out", str(out)]) == 0
    assert Image.open(out).size[0] > 500 and str(out) in capsys.readouterr().out


def test_out_as_a_folder_or_without_extension_gives_a_png(colour_folder, tmp_path):
    (tmp_path / "pictures").mkdir()
    assert main(["augment-preview", str(colour_folder), "--n", "2", "--out", str(tmp_path / "pictures")]) == 0
    assert Image.open(tmp_path / "pictures" / "augment_preview.png").format == "PNG"
    assert main(["augment-preview", str(colour_folder), "--n", "2", "--out", str(tmp_path / "grid")]) == 0
    assert Image.open(tmp_path / "grid.png").format == "PNG"


def test_knobs_change_the_preview(colour_folder):
    def tiles(**knobs):
        shown = _shown(augmentation_preview(str(colour_folder), n=4, images=1, augment="none", **knobs))
        return [ax.images[0].get_array() for ax in shown]
    plain = tiles()
    flipped = tiles(vflip=True)
    assert all((a == plain[0]).all() for a in plain)
    # Each version is the original or its upside-down mirror, and at least one is mirrored.
    assert all((a == plain[0]).all() or (a == plain[0][::-1]).all() for a in flipped)
    assert any((a == plain[0][::-1]).all() for a in flipped[1:])


def test_the_modern_preset_shows_its_per_image_changes_and_names_the_mixing_it_leaves_out(colour_folder):
    fig = augmentation_preview(str(colour_folder), n=6, images=1, augment="modern", flip=False, translate=0.0)
    arrays = [ax.images[0].get_array() for ax in _shown(fig)]
    assert sum((a != arrays[0]).any() for a in arrays[1:]) >= 4  # TrivialAugment and erasing changed most
    assert fig.get_suptitle() == "not previewed: MixUp 0.8 / CutMix 1 mix pairs of images of each training batch"
    assert not augmentation_preview(str(colour_folder), n=2, images=1, auto_augment="randaugment").get_suptitle()
