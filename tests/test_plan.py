"""The Plan: decided once, saved whole, read back by everything after training (issue 12)."""

import json
import re

import numpy as np
import pytest
from PIL import Image

import oculi
from oculi.training import run as run_module
from oculi.config import TrainConfig
from oculi.data.sources import open_source
from oculi.data.transforms import AUGMENT_PRESETS, Augmentation
from oculi.errors import WeightsUnavailable
from oculi.plan import Plan, resolve_plan
from oculi.rundir import RunDir


def _folder(root, name="mnist", size=(40, 40), per_class=6, classes=("a", "b")):
    """A folder of small random RGB images in ``classes``, called ``name``."""
    rng = np.random.default_rng(0)
    for c in classes:
        (root / name / c).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 255, (*size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / c / f"{i}.png")
    return root / name


def test_flips_follow_the_data_not_its_name(tmp_path):
    """A user's folder called "mnist" is flipped like any photo; the built-in digits are not."""
    folder = resolve_plan(TrainConfig(data="x"), open_source(str(_folder(tmp_path))))
    digits = resolve_plan(TrainConfig(data="digits"), open_source("digits"))
    assert folder.augmentation.flip and folder.config.tta == "flip"
    assert not digits.augmentation.flip and digits.config.tta == "none"


def test_a_folder_of_digit_classes_is_not_flipped(tmp_path):
    """Classes 0/ to 9/ are digits whatever the folder is called: a mirrored 2 is no digit."""
    digits = open_source(str(_folder(tmp_path, "anything", classes=tuple("0123456789"), per_class=3)))
    plan = resolve_plan(TrainConfig(data="x"), digits)
    assert not plan.augmentation.flip and plan.config.tta == "none"
    assert resolve_plan(TrainConfig(data="x", flip=True), digits).augmentation.flip  # asked for: flipped


def test_the_plan_round_trips_through_its_dict():
    plan = resolve_plan(TrainConfig(data="digits", rotation=12, fill_mode="wrap"), open_source("digits"))
    again = Plan.from_dict(json.loads(json.dumps(plan.to_dict())))
    assert again == plan and again.augmentation.rotation == 12 and again.augmentation.fill_mode == "wrap"


def test_a_run_saves_its_whole_plan_and_its_report_reads_it(tmp_path, monkeypatch):
    """The report shows the augmentation the run trained with, even after the preset has changed."""
    from oculi.report.build import augmentation_section, read_run
    result = run_module.train(TrainConfig(data="digits", epochs=1, augment="standard", out=str(tmp_path / "r"),
                                          progress=False, report=False))
    saved = RunDir(result.run_dir).read_config()
    plan = Plan.from_dict(saved)
    assert plan.config == result.config and plan.augmentation.rotation == AUGMENT_PRESETS["standard"].rotation
    assert plan.preprocessing.mean != (0.5,)  # from scratch: the training set's statistics, measured
    monkeypatch.setitem(AUGMENT_PRESETS, "standard", Augmentation(rotation=33))
    section = augmentation_section(read_run(result.run_dir), oculi.load(result.run_dir), _NoImages())
    rotation = re.search(r"<td>rotation</td><td[^>]*>([^<]*)</td>", section.body).group(1)
    assert float(rotation) == plan.augmentation.rotation != 33


class _NoImages:
    unavailable = "images not read in this test"


def test_augment_preview_shows_the_size_and_colour_training_uses(tmp_path, monkeypatch):
    from oculi.report import augment
    seen = {}
    monkeypatch.setattr(augment, "preview_figure", lambda source, aug, pre, *a: seen.setdefault("pre", pre))
    folder = _folder(tmp_path, "photos", size=(100, 90))
    augment.augmentation_preview(str(folder))
    planned = resolve_plan(TrainConfig(data=str(folder)), open_source(str(folder)))
    assert (seen["pre"].image_size, seen["pre"].channels) == (planned.preprocessing.image_size,
                                                              planned.preprocessing.channels)


def test_weights_that_cannot_be_had_replan_the_run_from_scratch(tmp_path, monkeypatch):
    """Asked for nothing but a timm model, a run without its weights trains it from scratch, planned for
    that (its size and recipe), and says so."""
    import oculi.models
    real = oculi.models.create_model

    def offline(name, *args, **kwargs):
        if args[4]:  # pretrained
            raise WeightsUnavailable(f"--pretrained: could not get ImageNet weights for '{name}'")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(oculi.models, "create_model", offline)
    folder = _folder(tmp_path, "photos", size=(100, 100))
    result = run_module.train(TrainConfig(data=str(folder), model="resnet10t", epochs=1, out=str(tmp_path / "r"),
                                          progress=False, report=False, test_split=0.2))
    plan = Plan.from_dict(RunDir(result.run_dir).read_config())
    assert (plan.config.pretrained, plan.config.mode) == (False, "scratch")
    assert plan.model.image_size == plan.preprocessing.image_size == (128, 128)  # from scratch's photo size
    with pytest.raises(WeightsUnavailable):  # asked for pretrained weights: no silent change of plan
        run_module.train(TrainConfig(data=str(folder), model="resnet10t", pretrained=True, epochs=1,
                                     out=str(tmp_path / "r2"), progress=False, report=False))


@pytest.mark.parametrize("settings, route", [
    (dict(pretrained=False, mode="scratch"), "scratch"),
    (dict(pretrained=True, mode="features"), "features"),
    (dict(pretrained=True, mode="finetune"), "whole"),
    (dict(pretrained=True, mode="finetune", unfreeze_stages=2), "top"),
    (dict(pretrained=True, mode="auto"), "features+whole"),
    (dict(pretrained=True, mode="auto", unfreeze_stages=1), "features+top")])
def test_the_route_is_one_value_the_plan_keeps(settings, route):
    from oculi.models.spec import ModelSpec
    from oculi.data.transforms import Preprocessing
    from oculi.plan import Plan
    from oculi.route import route_of
    cfg = TrainConfig(data="x", **settings)
    assert route_of(cfg) == route
    plan = Plan(cfg, Preprocessing((8, 8), 1), None, ModelSpec("mlp", 2, 1, (8, 8), "softmax"), route)
    saved = plan.to_dict()
    assert saved["route"] == route and Plan.from_dict(saved).route == route
    del saved["route"]  # a plan saved before routes: derived once, on load
    assert Plan.from_dict(saved).route == route


def test_no_module_but_the_route_works_out_which_way_a_run_trains():
    # issue 25: the route was re-derived from cfg.mode, unfreeze_stages and the model's class in six places
    import re
    from pathlib import Path
    import oculi
    root = Path(oculi.__file__).parent
    pattern = re.compile(r"cfg\.mode\s*(==|!=|in\b)|\.mode\s*==\s*\"|isinstance\([^)]*BackboneClassifier")
    places = [f"{path.relative_to(root)}:{i}" for path in [*root.glob("training/*.py"), *root.glob("report/*.py")]
              for i, line in enumerate(path.read_text().splitlines(), 1) if pattern.search(line)]
    assert places == [], places
