"""Test-time augmentation: which views are averaged, and old bundles that stored a flag."""

import pytest
import torch

from oculi.data.transforms import Preprocessing
from oculi.runtime.engines import shift_image, tta_logits


def test_shift_image_moves_the_content_and_reflects_the_border():
    image = torch.arange(16.0).view(1, 1, 4, 4)
    down_right = shift_image(image, 1, 1)
    assert torch.equal(down_right[..., 1:, 1:], image[..., :-1, :-1])
    assert torch.equal(down_right[..., 0, 1:], image[..., 1, :-1])  # the row above row 0 reflects row 1
    assert torch.equal(shift_image(down_right, -1, -1)[..., :-1, :-1], image[..., :-1, :-1])


class Recorder(torch.nn.Module):
    """A 'model' whose logits are its input's first row: each view shows in the output."""

    def forward(self, x):
        return x[:, 0, 0, :].clone()


def test_tta_averages_the_named_views():
    x = torch.randn(2, 1, 5, 5)
    model = Recorder()
    assert torch.equal(tta_logits(model, x, "none"), x[:, 0, 0])
    assert torch.allclose(tta_logits(model, x, "flip"), (x[:, 0, 0] + x[:, 0, 0].flip(-1)) / 2)
    def mirrored(v):
        return (v[:, 0, 0] + v[:, 0, 0].flip(-1)) / 2
    expected = mirrored(x) / 2 + mirrored(shift_image(x, -1, -1)) / 4 + mirrored(shift_image(x, 1, 1)) / 4
    assert torch.allclose(tta_logits(model, x, "flip-shift"), expected)
    with pytest.raises(ValueError, match="crops"):
        tta_logits(model, x, "crops")


def test_bundles_that_stored_flip_tta_still_load():
    old = {"image_size": [8, 8], "channels": 1, "resize": "squash", "mean": [0.5], "std": [0.5], "flip_tta": True}
    assert Preprocessing.from_dict(old).tta == "flip"
    assert Preprocessing.from_dict({**old, "flip_tta": False}).tta == "none"
    assert Preprocessing.from_dict(Preprocessing((8, 8), 1, tta="flip-shift").to_dict()).tta == "flip-shift"


def test_training_steps_on_a_bfloat16_cpu_run_in_bfloat16_and_prediction_stays_float32():
    from oculi.runtime.engines import autocast, cpu_has_bfloat16
    conv, x, cpu = torch.nn.Conv2d(3, 4, 3), torch.randn(2, 3, 8, 8), torch.device("cpu")
    with autocast(cpu):
        assert conv(x).dtype == torch.float32  # prediction: what export and evaluate compare against
    with autocast(cpu, cpu=True):
        trained = conv(x).dtype
    assert trained == (torch.bfloat16 if cpu_has_bfloat16() else torch.float32)
