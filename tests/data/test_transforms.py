import torch

import pytest

from oculi.data.transforms import Augmentation, Preprocessing, random_translate, resize_image


def test_resize_modes_give_the_target_size_and_keep_content_where_expected():
    image = torch.full((3, 40, 80), 200, dtype=torch.uint8)  # wide, uniform
    for mode in ("squash", "pad", "crop"):
        assert resize_image(image, (32, 32), mode).shape == (3, 32, 32)
    padded = resize_image(image, (32, 32), "pad")
    assert padded[:, :8].max() == 0 and padded[:, 8:24].min() == 200  # letterbox bars top and bottom
    assert resize_image(image, (32, 32), "crop").min() == 200  # crop fills the frame


def test_normalize_uses_mean_and_std():
    pre = Preprocessing((4, 4), 1, mean=(0.5,), std=(0.25,))
    batch = torch.tensor([0, 255], dtype=torch.uint8).view(2, 1, 1, 1).expand(2, 1, 4, 4)
    out = pre.normalize(batch)
    assert torch.allclose(out[0], torch.tensor(-2.0)) and torch.allclose(out[1], torch.tensor(2.0))


def test_preprocessing_round_trips_through_a_dict():
    pre = Preprocessing((24, 32), 3, "pad", (0.1, 0.2, 0.3), (0.4, 0.5, 0.6))
    assert Preprocessing.from_dict(pre.to_dict()) == pre


def test_augmentation_is_seeded_and_keeps_pixels():
    batch = torch.randint(0, 256, (16, 3, 12, 12), dtype=torch.uint8)
    aug = Augmentation(flip=True, translate=0.25)
    a = aug(batch, torch.Generator().manual_seed(1))
    b = aug(batch, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and a.dtype == torch.uint8 and a.shape == batch.shape
    assert not torch.equal(a, batch)


@pytest.mark.parametrize("shift", [0, 1])
def test_translate_shifts_content(shift):
    image = torch.arange(64, dtype=torch.uint8).view(1, 1, 8, 8)
    out = random_translate(image, 0.125, torch.Generator().manual_seed(shift))
    # Every output row is a (possibly reflected) run of the input: values come from the image only.
    assert set(out.unique().tolist()) <= set(image.unique().tolist())


# ---- affine and colour augmentation ------------------------------------------------------------------

from oculi.config import FILL_MODES  # noqa: E402
from oculi.data.transforms import AUGMENT_PRESETS, affine_batch, random_colour  # noqa: E402


def _affine(batch, angle=0.0, shear=0.0, scale=1.0, shift=(0.0, 0.0), fill="reflect"):
    n = len(batch)
    full = lambda v: torch.full((n,), float(v))  # noqa: E731
    return affine_batch(batch, full(angle), full(shear), full(scale), torch.tensor([shift] * n), fill)


def test_identity_parameters_leave_the_image_unchanged():
    batch = torch.randint(0, 256, (3, 3, 10, 14), dtype=torch.uint8)
    assert torch.equal(_affine(batch), batch)


def test_a_quarter_turn_is_rot90_and_a_half_turn_flips_a_wide_image_both_ways():
    square = torch.randint(0, 256, (2, 1, 8, 8), dtype=torch.uint8)
    turned = _affine(square, angle=torch.pi / 2)
    assert torch.equal(turned, torch.rot90(square, 1, (2, 3))) or torch.equal(turned, torch.rot90(square, -1, (2, 3)))
    wide = torch.randint(0, 256, (2, 3, 6, 10), dtype=torch.uint8)
    assert torch.equal(_affine(wide, angle=torch.pi), wide.flip(-1).flip(-2))


def test_shift_moves_content_by_whole_pixels():
    batch = torch.arange(64, dtype=torch.uint8).view(1, 1, 8, 8)
    out = _affine(batch, shift=(0.25, 0.0))  # a quarter of the width: 2 pixels
    assert torch.equal(out[..., :6], batch[..., 2:])


@pytest.mark.parametrize("fill", FILL_MODES)
def test_fill_modes_when_zooming_out(fill):
    image = torch.zeros(1, 1, 8, 8, dtype=torch.uint8)
    image[..., :, :4] = 200  # left half bright, right half dark
    out = _affine(image, scale=0.5, fill=fill)[0, 0]  # the image shrinks to the centre 4x4
    assert torch.equal(out[2:6, 2:4], torch.full((4, 2), 200, dtype=torch.uint8))
    assert torch.equal(out[2:6, 4:6], torch.zeros(4, 2, dtype=torch.uint8))
    left_border, right_border = out[4, 0].item(), out[4, 7].item()
    # wrap tiles the image: the copy on the left ends dark, the one on the right starts bright.
    expected = {"constant": (0, 0), "nearest": (200, 0), "reflect": (200, 0), "wrap": (0, 200)}[fill]
    assert (left_border, right_border) == expected


def test_reflect_mirrors_where_nearest_repeats_the_edge():
    image = torch.tensor([[10, 90, 200, 200, 200, 200, 90, 10]], dtype=torch.uint8).expand(8, 8).reshape(1, 1, 8, 8)
    shifted = lambda fill: _affine(image, shift=(-0.25, 0.0), fill=fill)[0, 0, 0, :2].tolist()  # noqa: E731
    assert shifted("nearest") == [10, 10] and shifted("reflect") == [90, 10]


def test_colour_changes_are_per_image_and_saturation_zero_would_be_gray():
    from oculi.data.transforms import Augmentation
    batch = torch.randint(0, 256, (32, 3, 6, 6), dtype=torch.uint8)
    out = random_colour(batch, Augmentation(brightness=0.5), torch.Generator().manual_seed(0))
    ratios = out.float().mean((1, 2, 3)) / batch.float().mean((1, 2, 3))
    assert ratios.std() > 0.05 and 0.4 < ratios.min() and ratios.max() < 1.6
    gray = random_colour(batch, Augmentation(saturation=1.0), torch.Generator().manual_seed(0))
    assert gray.dtype == torch.uint8 and gray.shape == batch.shape


@pytest.mark.parametrize("preset", sorted(AUGMENT_PRESETS))
def test_presets_are_seeded_and_keep_shape_and_dtype(preset):
    batch = torch.randint(0, 256, (8, 3, 20, 16), dtype=torch.uint8)
    aug = AUGMENT_PRESETS[preset]
    a, b = aug(batch, torch.Generator().manual_seed(3)), aug(batch, torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and a.shape == batch.shape and a.dtype == torch.uint8
    assert not torch.equal(a, batch)


@pytest.mark.parametrize("n, channels", [(700, 3), (2500, 1)])
def test_channel_stats_in_chunks_match_the_whole_sample(n, channels):
    from oculi.data.loading import RowView
    from oculi.data.transforms import channel_stats
    images = torch.randint(0, 256, (n, channels, 5, 4), generator=torch.Generator().manual_seed(n), dtype=torch.uint8)
    images[:, 0] //= 2  # channels differ
    sample = images[:: max(1, n // 1000)].double() / 255  # what max_images=1000 takes
    mean, std = channel_stats(images, max_images=1000, chunk=64)
    assert mean == pytest.approx(sample.mean(dim=(0, 2, 3)).tolist(), abs=1e-4)
    assert std == pytest.approx(sample.std(dim=(0, 2, 3)).tolist(), abs=1e-4)
    assert channel_stats(RowView(images, torch.arange(n)), max_images=1000, chunk=64) == (mean, std)


def test_the_augmentation_knobs_are_the_augmentation_fields():
    """Each --rotation, --fill-mode, ... sets the Augmentation field of its name (oculi.defaults)."""
    import dataclasses
    from oculi.config import AUGMENTATION_KNOBS
    from oculi.data.transforms import Augmentation
    assert sorted(AUGMENTATION_KNOBS) == sorted(f.name for f in dataclasses.fields(Augmentation))
