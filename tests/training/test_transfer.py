"""Transfer learning: a head on cached frozen features, fine-tuning, and auto choosing between them.

Runs here use timm's tiny ``test_resnet`` with "pretrained" weights from a local file (``--weights``),
so they need no download; the real offline ImageNet backbone is checked on hymenoptera-256.
"""

import json

import pytest
import timm
import torch
from safetensors.torch import load_file

import oculi
from oculi.data.cache import TensorCache, cache_key
from oculi.errors import OculiError
from oculi.models import create_model, offline_weights_file
from oculi.training import features as features_module
from oculi.training.loop import LoopState, is_better
from oculi.training.transfer import backbone_groups, gradual_unfreezing
from tests.conftest import make_class_folder, without_timing

pytestmark = pytest.mark.slow


def _train(data, out, weights_file, **options):
    defaults = dict(model="test_resnet", weights=str(weights_file), image_size=48, progress=False, seed=0)
    return oculi.train(str(data), out=str(out), **{**defaults, **options})


def test_features_mode_trains_only_the_head_and_predicts_as_evaluated(tmp_path, colours, weights_file):
    run = _train(colours, tmp_path / "run", weights_file, mode="features", head_epochs=30)
    meta = json.loads((run.run_dir / "model.json").read_text())
    assert meta["training"] == "features" and meta["weights_source"] == "file:test_resnet.safetensors"
    rows = [json.loads(x) for x in (run.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 30 and {r["phase"] for r in rows} == {"features"}
    clf = oculi.load(run.run_dir)
    donor = timm.create_model("test_resnet")
    donor.load_state_dict(load_file(str(weights_file)))
    assert torch.equal(clf.model.backbone.conv1[0].weight, donor.conv1[0].weight)  # frozen: unchanged
    files = [colours / p for p in _column(run.run_dir / "test_predictions.csv", 0)]
    confidences = [p.confidence for p in clf.predict_files(files)]
    expected = [float(c) for c in _column(run.run_dir / "test_predictions.csv", 3)]
    assert confidences == pytest.approx(expected, abs=1e-5)
    assert run.test_metrics["accuracy"] > 0.5  # colour classes: far above chance (1/3)


def _column(csv_file, index):
    return [line.split(",")[index] for line in csv_file.read_text().splitlines()[1:]]


def test_a_time_budget_bounds_the_head_when_the_head_is_the_run(tmp_path, colours, weights_file):
    # Any budget shorter than an epoch: the loop trains one, then none would end in time (tune's trials).
    run = _train(colours, tmp_path / "run", weights_file, mode="features", head_epochs=30, time_budget=1e-6)
    assert len(run.history) == 1 and (run.run_dir / "model.json").is_file()


def test_second_run_reads_features_from_the_cache(tmp_path, colours, weights_file, monkeypatch, private_cache):
    first = _train(colours, tmp_path / "a", weights_file, mode="features", head_epochs=5, feature_views=2)
    entries = list((private_cache / "features").glob("*.safetensors"))
    assert len(entries) >= 3  # train view 1, train view 2, val

    def no_backbone(*args, **kwargs):
        raise AssertionError("features were recomputed")

    monkeypatch.setattr(features_module, "extract_features", no_backbone)
    second = _train(colours, tmp_path / "b", weights_file, mode="features", head_epochs=5, feature_views=2)
    assert without_timing(second.history) == without_timing(first.history)
    with pytest.raises(AssertionError, match="recomputed"):  # --no-cache never reads it
        _train(colours, tmp_path / "c", weights_file, mode="features", head_epochs=5, cache=False)


def test_cache_key_changes_with_any_pixel_and_with_the_backbone():
    images = torch.zeros(3, 3, 8, 8, dtype=torch.uint8)
    key = cache_key({"backbone": "x"}, images)
    changed = images.clone()
    changed[2, 1, 7, 7] = 1
    assert cache_key({"backbone": "x"}, changed) != key
    assert cache_key({"backbone": "y"}, images) != key
    assert cache_key({"backbone": "x"}, images[:2]) != key  # a removed image
    assert cache_key({"backbone": "x"}, images.clone()) == key


def test_a_damaged_cache_entry_is_a_miss(tmp_path):
    cache = TensorCache("features", root=tmp_path)
    cache.put("k", {"features": torch.ones(2, 3)})
    assert torch.equal(cache.get("k")["features"], torch.ones(2, 3))
    cache.path("k").write_bytes(b"garbage")
    assert cache.get("k") is None and cache.get("absent") is None


def test_auto_runs_features_then_finetuning_and_keeps_the_better(tmp_path, colours, weights_file):
    run = _train(colours, tmp_path / "run", weights_file, head_epochs=10, epochs=2)
    phases = [r["phase"] for r in run.history]
    assert phases == ["features"] * 10 + ["finetune"] * 2
    meta = json.loads((run.run_dir / "model.json").read_text())
    baseline = max(r["val_acc"] for r in run.history[:10])
    finetuned = [r["val_acc"] for r in run.history[10:]]
    assert meta["training"] == ("finetune" if max(finetuned) > baseline else meta["training"])
    assert meta["training"] in ("features", "finetune")


def test_auto_resume_after_a_crash_in_finetuning_matches(tmp_path, colours, weights_file, monkeypatch):
    options = dict(head_epochs=5, epochs=3, batch_size=8, feature_views=1)  # 4 steps an epoch, below
    full = _train(colours, tmp_path / "full", weights_file, **options)

    from oculi.training import loop
    real_set_lr, calls = loop.set_lr, {"n": 0}

    def crash_in_epoch_two(optimizer, lr):
        calls["n"] += 1
        # 38 train images, batch 8: 4 steps an epoch, in the head's 5 epochs as in fine-tuning (one Learner
        # steps both), then the 5 out-of-fold heads' 5 epochs of 3 steps (30-31 images); die 2 steps into
        # fine-tuning's epoch 2
        if calls["n"] == 5 * 4 + 5 * 5 * 3 + 4 + 2:
            raise KeyboardInterrupt
        real_set_lr(optimizer, lr)

    monkeypatch.setattr(loop, "set_lr", crash_in_epoch_two)
    with pytest.raises(KeyboardInterrupt):
        _train(colours, tmp_path / "crashed", weights_file, **options)
    monkeypatch.setattr(loop, "set_lr", real_set_lr)
    assert len((tmp_path / "crashed" / "metrics.jsonl").read_text().splitlines()) == 5 + 1
    resumed = oculi.train(resume=tmp_path / "crashed")
    assert [r["val_loss"] for r in resumed.history] == [r["val_loss"] for r in full.history]
    assert (tmp_path / "full" / "test_predictions.csv").read_text() == \
        (tmp_path / "crashed" / "test_predictions.csv").read_text()


def test_a_finetuned_epoch_must_beat_the_features_baseline():
    state = LoopState(baseline={"val_acc": 0.9, "val_loss": 0.3})
    assert not is_better({"val_acc": 0.9, "val_loss": 0.31}, state)
    assert is_better({"val_acc": 0.9, "val_loss": 0.29}, state)
    assert is_better({"val_acc": 0.95, "val_loss": 0.5}, state)


def test_gradual_unfreezing_thaws_from_the_top():
    model, _ = create_model("test_resnet", 2, 3, (32, 32))
    groups = backbone_groups(model.backbone)
    assert len(groups) >= 3 and sum(len(g) for g in groups) == len(list(model.backbone.parameters()))
    start = gradual_unfreezing(model, epochs=len(groups))
    start(0)
    trainable = [all(p.requires_grad for p in g) for g in groups]
    assert trainable == [False] * (len(groups) - 1) + [True]
    start(len(groups) - 1)
    assert all(p.requires_grad for p in model.parameters())


def test_a_features_run_names_the_head_it_kept_not_an_epoch(tmp_path, colours, weights_file, capsys):
    run = _train(colours, tmp_path / "run", weights_file, mode="features", head_epochs=5, progress=True,
                 report=False)
    result = next(line for line in capsys.readouterr().err.splitlines() if line.startswith("test "))
    assert result.endswith("(features head)") and run.test_metrics["split"] == "test"


def test_auto_without_val_images_fine_tunes_and_keeps_the_last_epoch(tmp_path, weights_file, capsys):
    photos = make_class_folder(tmp_path / "photos", per_class=2, classes=("ants", "bees"), size=(80, 72))
    run = _train(photos, tmp_path / "run", weights_file, head_epochs=3, epochs=2, progress=True, report=False)
    err = capsys.readouterr().err
    assert "with no val images to compare it with the features model, its last epoch is kept" in err
    assert [r["phase"] for r in run.history] == ["features"] * 3 + ["finetune"] * 2
    assert json.loads((run.run_dir / "model.json").read_text())["training"] == "finetune"


def test_features_mode_needs_pretrained_weights(tmp_path, colours):
    with pytest.raises(OculiError, match="--mode features needs a pretrained backbone"):
        oculi.train(str(colours), model="vgg-mini", mode="features", out=str(tmp_path / "x"), progress=False)


@pytest.mark.skipif(offline_weights_file("efficientnet_lite0") is None, reason="offline weights not installed")
def test_offline_backbone_features_reach_92_percent_on_hymenoptera(tmp_path, hymenoptera):
    from oculi.config import TrainConfig
    from oculi.data.sources import open_source
    from oculi.plan import resolve_plan
    planned = resolve_plan(TrainConfig(data=str(hymenoptera), mode="features"), open_source(str(hymenoptera)))
    assert planned.config.feature_views == 8  # 221 training images: about 2,000 feature vectors
    # One view and no temperature: the backbone's plain features are what is measured, at an eighth of the
    # extraction (the default's 8 views cost about two minutes of the suite on 2 cores).
    run = oculi.train(str(hymenoptera), mode="features", feature_views=1, calibrate=False,
                      out=str(tmp_path / "run"), progress=False)
    assert run.config.image_size == (288, 288) and run.config.model == "efficientnet_lite0"
    assert max(r["val_acc"] for r in run.history) >= 0.92
