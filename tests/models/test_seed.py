"""The seed architectures match their Keras tutorials' summaries and work at other input sizes."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from oculi.errors import OculiError
from oculi.models.registry import count_parameters, get_model_info, num_outputs_for, registered_models
from oculi.models.seed import _SamePad

# The trainable counts of the tutorials' Keras summaries.
KERAS_COUNTS = {
    "mlp": 59_130,
    "simple-cnn": 7_364_131,
    "small-cnn": 5_046_369,
    "alexnet-mini": 634_978,
    "vgg-mini": 551_722,
    "fashion-cnn": 390_410,
}

# Smallest square side each net accepts, worked out by hand from the layers (e.g. vgg-mini: 8 -> 4 -> 2 -> 1;
# small-cnn: 22 -> 20 -> 10 -> 8 -> 4 -> 2 -> 1).
MIN_SIDE = {"mlp": 1, "simple-cnn": 8, "small-cnn": 22, "alexnet-mini": 1, "vgg-mini": 8, "fashion-cnn": 21}

NAMES = list(KERAS_COUNTS)


def build(name: str, in_chans: int | None = None, size: tuple[int, int] | None = None,
          outputs: int | None = None):
    info = get_model_info(name)
    c, h, w = info.reference_input
    if outputs is None:
        outputs = num_outputs_for(info.reference_classes, info.default_head)
    return info.factory(num_outputs=outputs, in_chans=in_chans or c, image_size=size or (h, w))


def test_all_six_are_registered_in_order():
    assert [info.name for info in registered_models()] == NAMES + ["fast-cnn", "fast-cnn-wide"]  # the tutorials, then oculi's own


@pytest.mark.parametrize("name", NAMES)
def test_trainable_count_matches_keras_summary(name):
    assert count_parameters(build(name)) == KERAS_COUNTS[name]


@pytest.mark.parametrize("name", NAMES)
def test_forward_at_reference_input(name):
    torch.manual_seed(0)
    model = build(name)
    c, h, w = get_model_info(name).reference_input
    out = model(torch.randn(2, c, h, w))
    assert out.shape == (2, 1 if name == "small-cnn" else get_model_info(name).reference_classes)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name, side", [(n, s) for n in NAMES for s in (32, 8) if s >= MIN_SIDE[n]])
def test_forward_at_small_grey_input(name, side):
    model = build(name, in_chans=1, size=(side, side), outputs=10)
    assert model(torch.randn(2, 1, side, side)).shape == (2, 10)


@pytest.mark.parametrize("name", NAMES)
def test_smallest_input_works_and_one_less_is_refused(name):
    side = MIN_SIDE[name]
    model = build(name, in_chans=1, size=(side, side + 3), outputs=4)
    assert model(torch.randn(2, 1, side, side + 3)).shape == (2, 4)
    message = f"{name} needs images of at least {side}x{side} pixels, got {side - 1}x{side + 3}"
    with pytest.raises(OculiError, match=f"^{message}$"):
        build(name, in_chans=1, size=(side - 1, side + 3), outputs=4)


def test_small_cnn_defaults_to_a_sigmoid_head_and_the_rest_to_softmax():
    heads = {info.name: info.default_head for info in registered_models()}
    assert heads == {name: "sigmoid" if name == "small-cnn" else "softmax" for name in NAMES + ["fast-cnn", "fast-cnn-wide"]}
    assert get_model_info("small-cnn").reference_classes == 2


@pytest.mark.parametrize("name", NAMES)
def test_forward_is_head_of_features(name):
    model = build(name).eval()
    c, h, w = get_model_info(name).reference_input
    x = torch.randn(1, c, h, w)
    assert isinstance(model.features, nn.Sequential) and isinstance(model.head, nn.Sequential)
    assert torch.equal(model(x), model.head(model.features(x)))


def test_mlp_has_no_convolutional_stages():
    assert len(build("mlp").features) == 0


def test_same_padding_is_tensorflows_ceil_with_the_odd_pixel_after():
    # 11x11 stride 4 on 224 needs 7 pixels of padding: 3 before, 4 after, giving ceil(224 / 4) = 56.
    pad = _SamePad(11, 4)
    padded = pad(torch.ones(1, 1, 224, 224))
    assert padded.shape[-2:] == (231, 231)
    assert padded[0, 0, :3].sum() == 0 and padded[0, 0, 3].sum() > 0
    assert padded[0, 0, -4:].sum() == 0 and padded[0, 0, -5].sum() > 0
    stem = build("alexnet-mini").features[0][:3]  # pad, conv, relu
    assert stem(torch.randn(1, 3, 224, 224)).shape == (1, 32, 56, 56)


def test_fashion_cnn_shape_trace_ends_at_1x1():
    assert build("fashion-cnn").features(torch.randn(1, 1, 28, 28)).shape == (1, 256, 1, 1)


def test_batchnorm_uses_keras_eps_and_a_momentum_that_tracks_short_runs():
    bns = [m for m in build("vgg-mini").modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert len(bns) == 7
    assert all(m.eps == 1e-3 and m.momentum == 0.1 for m in bns)


def test_building_does_not_touch_batchnorm_statistics():
    model = build("vgg-mini", in_chans=1, size=(8, 8))
    assert all(int(m.num_batches_tracked) == 0 for m in model.modules() if isinstance(m, nn.BatchNorm2d))
