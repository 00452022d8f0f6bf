"""oculi explain: stages, feature maps and Grad-CAM, checked against models whose answer is known."""

import numpy as np
import pytest
import timm
import torch
import torch.nn as nn
from matplotlib.figure import Figure
from PIL import Image

from oculi.models.spec import ModelSpec
from oculi.runtime.bundle import save_bundle
from oculi.cli import main
from oculi.data.transforms import Preprocessing
from oculi.errors import OculiError
from oculi.deploy.explain import cam_stage, conv_stages, explain_image, feature_maps, grad_cam
from oculi.models import BackboneClassifier, create_model
from oculi.models.registry import stage_info
from oculi.deploy.predict import Classifier
from oculi.report.explain_plots import most_active, plot_feature_maps, plot_grad_cam


def _model(name, size=(32, 32), classes=3, in_chans=3, head="softmax"):
    torch.manual_seed(0)
    return create_model(name, classes, in_chans, size, head)[0]


def _no_hooks(model):
    return all(not m._forward_hooks and not m._backward_hooks for m in model.modules())


# ---------------------------------------------------------------- stages

def test_stages_of_the_seed_networks_are_their_conv_blocks():
    model = _model("simple-cnn")
    stages = conv_stages(model)
    assert [name for name, _ in stages] == ["stage 1", "stage 2", "stage 3"]
    assert [m for _, m in stages] == list(model.features)
    assert [name for name, _ in conv_stages(_model("vgg-mini"))] == ["stage 1", "stage 2", "stage 3"]
    assert conv_stages(_model("mlp", (8, 8))) == []


def test_stages_of_fast_cnn_start_with_the_whitening_layer():
    model = _model("fast-cnn")
    stages = conv_stages(model)
    assert [name for name, _ in stages] == ["whiten", "block 1", "block 2", "block 3"]
    assert stages[0][1] is model.whiten and [m for _, m in stages[1:]] == list(model.features)


def test_stages_of_a_timm_backbone_come_from_its_feature_info():
    model = _model("resnet18", (64, 64))
    names = [name for name, _ in conv_stages(model)]
    assert names == ["stage 1 (act1)", "stage 2 (layer1)", "stage 3 (layer2)", "stage 4 (layer3)", "stage 5 (layer4)"]
    assert conv_stages(model)[-1][1] is model.backbone.layer4


def test_an_unknown_module_falls_back_to_children_holding_convolutions():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Sequential(nn.Conv2d(4, 4, 3)), nn.Flatten())
    assert [name for name, _ in conv_stages(model)] == ["0", "2"]


def test_a_model_that_lists_its_stages_is_shown_those():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Sequential(nn.Conv2d(4, 4, 3)), nn.Flatten())
    model.feature_info = [stage_info("first", "0", 4, 1), {"module": "2.0", "num_chs": 4, "reduction": 1}]
    assert conv_stages(model) == [("first", model[0]), ("2.0", model[2][0])]  # unnamed: its module's name
    model.feature_info = []  # declares none: no guessing
    assert conv_stages(model) == []


# ---------------------------------------------------------------- feature maps

def test_feature_maps_are_each_stage_output_for_the_first_image():
    model = _model("simple-cnn", (24, 40)).eval()
    batch = torch.randn(2, 3, 24, 40)
    maps = feature_maps(model, batch)
    x = batch[:1]
    for (name, got), stage in zip(maps, model.features):
        x = stage(x)
        assert got.shape == x.shape[1:] and got.dtype == torch.float32
        assert torch.allclose(got, x[0], atol=1e-5), name
    assert [tuple(m.shape) for _, m in maps] == [(16, 12, 20), (32, 6, 10), (64, 3, 5)]


def test_feature_maps_of_fast_cnn_and_resnet_have_the_layer_shapes():
    maps = dict(feature_maps(_model("fast-cnn"), torch.randn(1, 3, 32, 32)))
    assert maps["whiten"].shape == (24, 31, 31) and maps["block 3"].shape == (128, 3, 3)
    model = _model("resnet18", (64, 64))
    maps = feature_maps(model, torch.randn(1, 3, 64, 64))
    for (_, m), info in zip(maps, model.backbone.feature_info):
        assert m.shape == (info["num_chs"], 64 // info["reduction"], 64 // info["reduction"])
    assert _no_hooks(model)


def _tiny_timm(name, **kwargs):
    backbone = timm.create_model(name, pretrained=False, num_classes=0, img_size=32, **kwargs)
    return BackboneClassifier(backbone, nn.Linear(backbone.num_features, 3))


def test_channels_last_stages_of_a_swin_are_turned_to_channels_first():
    model = _tiny_timm("swin_tiny_patch4_window7_224", window_size=4, embed_dim=16, depths=(1, 1), num_heads=(1, 2))
    assert model.backbone.output_fmt == "NHWC"
    maps = feature_maps(model, torch.randn(1, 3, 32, 32))
    assert [tuple(m.shape) for _, m in maps] == [(16, 8, 8), (32, 4, 4)]
    cam, _ = grad_cam(model, torch.randn(1, 3, 32, 32), target=0)
    assert cam.shape == (32, 32) and not torch.isnan(cam).any()


def test_a_vision_transformer_has_no_maps_to_show():
    model = _tiny_timm("vit_tiny_patch16_224", patch_size=8, embed_dim=16, depth=1, num_heads=1)
    assert feature_maps(model, torch.randn(1, 3, 32, 32)) == []
    with pytest.raises(OculiError, match="no convolutional stages"):
        grad_cam(model, torch.randn(1, 3, 32, 32))


def test_feature_maps_run_in_eval_mode_and_restore_each_modules_mode():
    model = _model("vgg-mini").train()
    model.features[0][2].eval()  # a BatchNorm set apart (as frozen-norm fine-tuning does)
    batch = torch.randn(1, 3, 32, 32)
    first, second = feature_maps(model, batch), feature_maps(model, batch)  # dropout off: equal
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(first, second))
    assert model.training and not model.features[0][2].training and model.features[1][2].training


# ---------------------------------------------------------------- Grad-CAM where the answer is known

def _red_left_green_right(size=16):
    """Red square in the left half, green square in the right half, nothing else."""
    image = torch.zeros(1, 2, size, size)
    image[0, 0, 4:12, 1:7] = 1.0
    image[0, 1, 4:12, 10:15] = 1.0
    return image


def _colour_net(outputs=2, stride=1):
    """logit 0 = how much red, logit 1 = how much green (or, one output: red minus green). With stride 2
    the conv averages 2x2 blocks, so the map Grad-CAM sees is half the input's size."""
    conv = nn.Conv2d(2, 2, stride, stride, bias=False)
    linear = nn.Linear(2, outputs, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.eye(2)[:, :, None, None].expand(2, 2, stride, stride) / stride ** 2)
        linear.weight.copy_(torch.eye(2) if outputs == 2 else torch.tensor([[1.0, -1.0]]))
    return nn.Sequential(conv, nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), linear)


def _left_share(cam):
    return float(cam[:, : cam.shape[1] // 2].sum() / cam.sum())


@pytest.mark.parametrize("stride", [1, 2])
def test_grad_cam_points_at_the_evidence_for_each_class(stride):
    model, image = _colour_net(stride=stride), _red_left_green_right()
    red, target = grad_cam(model, image, target=0)
    green, _ = grad_cam(model, image, target=1)
    assert target == 0 and red.shape == green.shape == (16, 16)
    assert _left_share(red) > 0.95 and _left_share(green) < 0.05
    for cam in (red, green):
        assert cam.min() >= 0 and cam.max() == pytest.approx(1.0)
    assert grad_cam(model, image)[1] == 0  # more red than green: red is predicted


def test_grad_cam_of_a_sigmoid_head_scores_class_0_by_the_negative_logit():
    model, image = _colour_net(outputs=1), _red_left_green_right()
    assert _left_share(grad_cam(model, image, target=1)[0]) > 0.95  # class 1: red
    assert _left_share(grad_cam(model, image, target=0)[0]) < 0.05  # class 0: green
    assert grad_cam(model, image)[1] == 1  # logit = red - green > 0
    with pytest.raises(OculiError, match="out of range"):
        grad_cam(model, image, target=2)


def test_grad_cam_without_evidence_is_all_zeros_not_nan():
    cam, _ = grad_cam(_colour_net(), torch.zeros(1, 2, 16, 16), target=0)
    assert torch.equal(cam, torch.zeros(16, 16))


def test_grad_cam_through_a_frozen_backbone_leaves_no_hooks_and_restores_the_mode():
    model = _model("resnet18", (64, 64)).train()
    model.requires_grad_(False)
    image = torch.randn(1, 3, 64, 64)
    with torch.no_grad():  # a caller's no_grad must not matter either
        cam, target = grad_cam(model, image)
    assert cam.shape == (64, 64) and 0 <= float(cam.min()) and float(cam.max()) == pytest.approx(1.0)
    assert not torch.isnan(cam).any()
    assert target == int(model.eval()(image).argmax())
    model.requires_grad_(True)
    assert torch.allclose(grad_cam(model, image)[0], cam, atol=1e-5)  # frozen or not: the same map
    model.train()
    grad_cam(model, image)
    assert model.training and all(m.training for m in model.modules())
    assert _no_hooks(model) and all(p.grad is None for p in model.parameters())


def test_grad_cam_at_another_stage():
    # (the target's effect is checked on the colour net above: a random net often has no positive
    # evidence at all for a class, and its map is then rightly all zeros)
    model, image = _model("simple-cnn"), torch.randn(1, 3, 32, 32)
    last, target = next((cam, t) for t in range(3) if (cam := grad_cam(model, image, t)[0]).max() > 0)
    early, _ = grad_cam(model, image, target=target, stage="stage 1")
    assert last.max() == early.max() == 1.0 and early.shape == (32, 32)
    assert not torch.allclose(early, last)
    with pytest.raises(OculiError, match="unknown stage 'stage 9'"):
        grad_cam(model, image, stage="stage 9")


def test_hooks_are_removed_even_when_the_forward_pass_fails():
    model = _model("simple-cnn").train()
    with pytest.raises(RuntimeError):
        grad_cam(model, torch.randn(1, 5, 32, 32))  # wrong channel count
    assert _no_hooks(model) and all(m.training for m in model.modules())


def test_grad_cam_of_a_dense_net_is_a_clear_error():
    with pytest.raises(OculiError, match="no convolutional stages"):
        grad_cam(_model("mlp", (8, 8)), torch.randn(1, 3, 8, 8))


def test_the_default_stage_is_the_last_with_a_map_of_7x7_or_more():
    assert cam_stage({"a": (8, 14, 14), "b": (16, 7, 7), "c": (32, 3, 3), "d": (64, 1, 1)}) == "b"
    assert cam_stage({"a": (8, 7, 9), "b": (16, 9, 6)}) == "a"  # both sides count
    # None that large: the largest map, the last of equal ones.
    assert cam_stage({"a": (8, 4, 4), "b": (32, 4, 4), "c": (64, 1, 1)}) == "b"
    assert cam_stage({"a": (8, 6, 6), "b": (32, 3, 3)}) == "a"


# ---------------------------------------------------------------- a saved classifier

def _bundle(folder, name, size=(16, 16), channels=3):
    torch.manual_seed(0)
    spec = ModelSpec(name, 3, channels, size, "softmax")
    save_bundle(folder, spec.build(), spec, ["ant", "bee", "wasp"], Preprocessing(image_size=size, channels=channels))
    return folder


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return _bundle(tmp_path_factory.mktemp("explain") / "run", "fast-cnn")


@pytest.fixture
def image(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "photo.png"
    Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(path)
    return path


def test_explain_image_gives_what_predict_gives(run, image):
    classifier = Classifier.load(run, device="cpu")
    e = explain_image(classifier, image)
    assert e.image.dtype == torch.uint8 and e.image.shape == (3, 16, 16)
    assert np.allclose(e.probs, classifier.predict_proba(image)[0], atol=1e-6)
    assert e.target == e.predicted == int(np.argmax(e.probs))
    assert [name for name, _ in e.maps] == ["whiten", "block 1", "block 2", "block 3"]
    assert e.cam.shape == (16, 16) and e.stage == "block 1" and e.label in e.title  # block 1: 8x8
    other = explain_image(classifier, image, "wasp")
    assert other.target == 2 and other.label == "wasp"
    with pytest.raises(OculiError, match="unknown class 'moth'.*ant, bee, wasp"):
        explain_image(classifier, image, "moth")


def _digit():
    from oculi.data.builtin import load_builtin
    return load_builtin("digits").images[0]


def test_grad_cam_of_a_digit_is_taken_where_the_map_is_7x7(tmp_path):
    # fast-cnn, the digits recipe's model: its blocks shrink an 8x8 digit to 3x3, then 1x1.
    classifier = Classifier.load(_bundle(tmp_path / "digits", "fast-cnn", (8, 8), channels=1), device="cpu")
    e = explain_image(classifier, _digit())
    shapes = {name: tuple(x.shape[-2:]) for name, x in e.maps}
    assert shapes["block 1"] == (3, 3) and shapes["whiten"] == (7, 7)
    assert e.stage == "whiten" and e.cam_size == (7, 7)
    assert "at whiten: 7x7 map" in e.title  # the figure's title, in `oculi explain` and the report
    assert e.stage_note.startswith("Taken at whiten, whose map is 7x7")


def test_grad_cam_where_every_map_is_small_says_it_is_coarse(tmp_path):
    classifier = Classifier.load(_bundle(tmp_path / "simple", "simple-cnn", (8, 8), channels=1), device="cpu")
    e = explain_image(classifier, _digit())
    assert [tuple(x.shape[-2:]) for _, x in e.maps] == [(4, 4), (2, 2), (1, 1)]
    assert e.stage == "stage 1" and e.title.endswith("at stage 1: 4x4 map, coarse")
    assert "only 4x4" in e.stage_note


def test_explain_image_of_a_dense_net_says_so(tmp_path, image):
    classifier = Classifier.load(_bundle(tmp_path / "mlp", "mlp", (8, 8)), device="cpu")
    with pytest.raises(OculiError, match="'mlp' has no convolutional stages"):
        explain_image(classifier, image)


# ---------------------------------------------------------------- figures

def test_feature_map_figure_shows_the_most_active_channels():
    x = torch.zeros(20, 6, 5)
    x[7] = 3.0
    x[7, 0, 0] = 0  # not constant: a constant channel is shown as a flat tile
    x[2, 1, 1] = 1.0
    assert most_active(x, 2) == [7, 2]
    fig = plot_feature_maps([("stage 1", x), ("stage 2", torch.rand(4, 3, 3)), ("stage 3", torch.rand(64, 1, 1))],
                            max_channels=10)
    assert isinstance(fig, Figure)
    titles = [sub._suptitle.get_text() for sub in fig.subfigs]
    assert titles[:2] == ["stage 1: 20 x 6 x 5", "stage 2: 4 x 3 x 3"] and titles[2].startswith("stage 3: 64 x 1 x 1")
    images = [len(ax.images) for ax in fig.subfigs[0].axes]
    assert sum(images) == 10 and len(fig.subfigs[1].axes) == 8 and sum(len(a.images) for a in fig.subfigs[1].axes) == 4
    first = fig.subfigs[0].axes[0]
    assert first.texts[0].get_text() == "7" and first.images[0].get_array().max() == 1.0
    with pytest.raises(ValueError):
        plot_feature_maps([])


def test_grad_cam_figure_shows_gray_images_in_gray(tmp_path):
    gray = torch.randint(0, 255, (1, 8, 8), dtype=torch.uint8)
    fig = plot_grad_cam(gray, torch.rand(8, 8), "Grad-CAM for '3'")
    image_ax, cam_ax, overlay_ax = fig.axes[:3]
    assert image_ax.images[0].get_cmap().name == "gray" and len(overlay_ax.images) == 2
    assert fig._suptitle.get_text() == "Grad-CAM for '3'"
    rgb = plot_grad_cam(torch.randint(0, 255, (3, 8, 8), dtype=torch.uint8), torch.rand(8, 8), "t")
    assert rgb.axes[0].images[0].get_array().shape == (8, 8, 3)


# ---------------------------------------------------------------- command line

def _cli(capsys, *args):
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_writes_both_figures(run, image, capsys):
    code, out, err = _cli(capsys, "explain", run, image, "--channels", "4", "--device", "cpu")
    folder = run / "explain-photo"
    assert code == 0, err
    assert "prediction: " in out and str(folder / "grad_cam.png") in out
    assert "Grad-CAM: Taken at " in out  # the terminal says which stage the heat map comes from
    for name in ("feature_maps.png", "grad_cam.png"):
        with Image.open(folder / name) as im:
            assert im.format == "PNG"
    code, out, _ = _cli(capsys, "explain", run, image, "--class", "bee", "--out", run.parent / "other")
    assert code == 0 and (run.parent / "other" / "grad_cam.png").is_file()


@pytest.mark.parametrize("args, message", [
    (["{run}", "{tmp}/missing.png"], "no such image file"),
    (["{run}", "{tmp}/broken.png"], "broken.png"),
    (["{run}", "{image}", "--class", "moth"], "unknown class 'moth'"),
    (["{run}", "{image}", "--channels", "0"], "--channels"),
    (["{tmp}/mlp", "{image}"], "no convolutional stages"),
])
def test_cli_errors_are_one_line(run, image, tmp_path, capsys, args, message):
    (tmp_path / "broken.png").write_bytes(b"not an image")
    _bundle(tmp_path / "mlp", "mlp", (8, 8))
    code, out, err = _cli(capsys, "explain", *[a.format(run=run, tmp=tmp_path, image=image) for a in args])
    assert code == 2 and message in err and err.startswith("error: ")
    assert len(err.strip().splitlines()) == 1
