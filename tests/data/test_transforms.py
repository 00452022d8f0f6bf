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
