"""The modern recipe (issue 28): per-image policies, random erasing, MixUp/CutMix with soft targets, the EMA of
the weights (its math, its checkpoint), the modern preset and the flags' errors."""

import copy

import pytest
import torch
import torch.nn as nn

import oculi
from oculi.config import TrainConfig
from oculi.data.loading import TensorSet
from oculi.data.mixing import Mixed, cutmix_box, mix_batch
from oculi.data.transforms import AUGMENT_PRESETS, Augmentation, Preprocessing, auto_augment, random_erasing
from oculi.errors import OculiError
from oculi.plan import training_augmentation
from oculi.training.ema import WeightAverage
from oculi.training.loop import (ImageData, Learner, LoopSettings, LoopState, batch_hits, copy_state, loss_fn,
                                 mixed_targets)
from oculi.training.optim import build_optimizer
from oculi.training.plan_line import recipe_warnings
from oculi.console import Reporter
from tests.conftest import make_class_folder, without_timing
from tests.test_cli import run_cli


def _batch(n=8, c=3, side=16, seed=0):
    return torch.randint(0, 256, (n, c, side, side), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------- per-image augmentations


@pytest.mark.parametrize("policy", ["randaugment", "trivialaugment"])
@pytest.mark.parametrize("channels", [1, 3])
def test_a_policy_repeats_under_a_seed_and_changes_images_each_their_own_way(policy, channels):
    batch = _batch(c=channels).repeat(4, 1, 1, 1)  # 8 images, 4 times: the copies must not all change alike
    first = auto_augment(batch, policy, torch.Generator().manual_seed(1))
    again = auto_augment(batch, policy, torch.Generator().manual_seed(1))
    other = auto_augment(batch, policy, torch.Generator().manual_seed(2))
    assert first.shape == batch.shape and first.dtype == torch.uint8
    assert torch.equal(first, again) and not torch.equal(first, other)
    copies = first.view(4, 8, *batch.shape[1:])
    assert not all(torch.equal(copies[0], copies[k]) for k in range(1, 4))


def test_a_policy_leaves_the_global_generator_alone():
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    auto_augment(_batch(), "trivialaugment", torch.Generator().manual_seed(0))
    assert torch.equal(torch.rand(3), expected)


def test_random_erasing_is_seeded_and_erases_rectangles_at_its_rate():
    batch = torch.zeros(400, 3, 20, 20, dtype=torch.uint8)
    erased = random_erasing(batch, 0.25, torch.Generator().manual_seed(0))
    assert torch.equal(erased, random_erasing(batch, 0.25, torch.Generator().manual_seed(0)))
    assert erased.dtype == torch.uint8 and erased.shape == batch.shape
    touched = (erased != 0).flatten(1).any(1)
    assert 60 < int(touched.sum()) < 140  # 100 expected
    for image in erased[touched][:20]:
        rows, cols = (image != 0).any(0).any(1), (image != 0).any(0).any(0)
        box = image[:, rows][:, :, cols]
        # one rectangle of noise: its bounding box is almost all non-zero, and it covers 2% to 33% of the image
        assert (box != 0).float().mean() > 0.95 and 0.015 <= box[0].numel() / 400 <= 0.35
    assert torch.equal(random_erasing(batch, 0.0, torch.Generator()), batch)


def test_the_augmentation_applies_policy_and_erasing_after_the_batched_changes():
    aug = Augmentation(auto_augment="randaugment", erasing=1.0)
    batch = _batch()
    out = aug(batch, torch.Generator().manual_seed(3))
    assert torch.equal(out, aug(batch, torch.Generator().manual_seed(3))) and not torch.equal(out, batch)
    assert aug.changes_anything and not aug.mixes


# ---------------------------------------------------------------- MixUp and CutMix


def test_mixup_blends_the_batch_with_its_shuffle_by_lambda():
    images = torch.randn(6, 3, 8, 8)
    labels = torch.arange(6)
    mixed, pair = mix_batch(images, labels, 0.4, 0.0, torch.Generator().manual_seed(0))
    perm = pair.second  # labels are the indices: the second labels are the permutation
    assert torch.allclose(mixed, images * pair.lam + images[perm] * (1 - pair.lam))
    again, same = mix_batch(images, labels, 0.4, 0.0, torch.Generator().manual_seed(0))
    assert torch.equal(again, mixed) and same.lam == pair.lam and torch.equal(same.second, pair.second)


def test_cutmix_lambda_is_the_share_of_each_image_left_unpasted():
    images = torch.arange(6.0).view(6, 1, 1, 1).expand(6, 3, 10, 12).clone()  # image i is all i
    labels = torch.arange(6)
    lams = []
    for seed in range(20):
        mixed, pair = mix_batch(images, labels, 0.0, 1.0, torch.Generator().manual_seed(seed))
        own = (mixed == images).all(1).float().mean((1, 2))  # share of each image's pixels still its own
        moved = pair.second != labels
        assert torch.allclose(own[moved], torch.tensor(pair.lam))  # images paired with themselves are whole
        for i in torch.nonzero(moved).flatten():
            pasted = (mixed[i] != images[i]).any(0)
            assert (mixed[i][:, pasted] == float(pair.second[i])).all()  # what is not its own is its partner's
        lams.append(pair.lam)
    assert any(0 < lam < 1 for lam in lams)


def test_cutmix_box_sides_follow_lambda_inside_the_image():
    top, bottom, left, right = cutmix_box(100, 100, 0.75, torch.Generator().manual_seed(0))
    assert 0 <= top <= bottom <= 100 and 0 <= left <= right <= 100
    assert bottom - top <= 50 and right - left <= 50  # sqrt(1 - 0.75) = half of each side, at most


def test_with_both_on_each_batch_is_one_or_the_other():
    images, labels = torch.randn(8, 3, 8, 8), torch.arange(8)
    kinds = set()
    for seed in range(30):
        mixed, pair = mix_batch(images, labels, 1.0, 1.0, torch.Generator().manual_seed(seed))
        blended = torch.allclose(mixed, images * pair.lam + images[pair.second] * (1 - pair.lam))
        kinds.add("mixup" if blended and 0 < pair.lam < 1 else "cutmix")
    assert kinds == {"mixup", "cutmix"}


@pytest.mark.parametrize("head, classes", [("softmax", 5), ("multilabel", 4), ("sigmoid", 2)])
def test_mixed_targets_are_smoothed_targets_mixed_by_lambda(head, classes):
    g = torch.Generator().manual_seed(0)
    if head == "multilabel":
        first, second = (torch.randint(0, 2, (6, classes), generator=g).float() for _ in range(2))
    else:
        first, second = (torch.randint(0, classes, (6,), generator=g) for _ in range(2))
    target = mixed_targets(Mixed(first, second, 0.7), head, classes, 0.1)
    if head == "softmax":
        assert torch.allclose(target.sum(1), torch.ones(6))
        one_hot = torch.nn.functional.one_hot
        expected = (0.7 * one_hot(first, classes) + 0.3 * one_hot(second, classes)) * 0.9 + 0.1 / classes
    else:
        expected = (0.7 * first.float() + 0.3 * second.float()) * 0.9 + 0.05
    assert torch.allclose(target, expected)


def test_a_batch_mixed_with_itself_has_the_plain_loss_and_accuracy_counts_the_dominant_label():
    settings = LoopSettings(epochs=1, batch_size=4, lr=0.1, schedule="constant", warmup_epochs=0,
                            label_smoothing=0.2, patience=None, head="softmax", seed=0)
    logits, labels = torch.randn(6, 4), torch.tensor([0, 1, 2, 3, 0, 1])
    assert torch.allclose(loss_fn(logits, Mixed(labels, labels, 0.3), settings), loss_fn(logits, labels, settings))
    other = labels.roll(1)
    assert batch_hits(logits, Mixed(labels, other, 0.6), "softmax") == batch_hits(logits, labels, "softmax")
    assert batch_hits(logits, Mixed(labels, other, 0.4), "softmax") == batch_hits(logits, other, "softmax")


# ---------------------------------------------------------------- EMA


def test_the_average_after_k_steps_is_the_bias_corrected_closed_form():
    model, decay = nn.Linear(3, 2), 0.8
    model.register_buffer("counter", torch.zeros(()))
    average = WeightAverage(model, decay)
    seen = []
    for step in range(1, 6):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
            model.counter.fill_(step)
        seen.append(copy_state(model))
        average.update(model)
    k = len(seen)
    weights = torch.tensor([decay ** (k - i) for i in range(1, k + 1)], dtype=torch.float64)
    for name in ("weight", "bias"):
        stacked = torch.stack([s[name].double() for s in seen])
        expected = (weights.view(-1, 1, *[1] * (stacked.dim() - 2)) * stacked).sum(0) / weights.sum()
        assert torch.allclose(average.module.state_dict()[name].double(), expected, atol=1e-6)
    assert float(average.module.counter) == 5  # buffers copied, not averaged
    assert average.steps == 5


def _images(n, classes, seed):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % classes
    images = torch.randint(0, 160, (n, 3, 6, 6), generator=g)
    images[torch.arange(n), labels] += 60
    return TensorSet(images.to(torch.uint8), labels, [f"{i}.png" for i in range(n)])


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Dropout(0.2),
                         nn.Linear(4 * 4 * 4, 3))


def _ema_learner(**settings):
    model = _net()
    pre = Preprocessing((6, 6), 3, mean=(0.4, 0.5, 0.6), std=(0.2, 0.25, 0.3))
    aug = Augmentation(auto_augment="trivialaugment", erasing=0.5, mixup=0.4, cutmix=1.0)
    data = ImageData(_images(48, 3, 0), _images(15, 3, 1), pre, aug)
    loop = dict(epochs=3, batch_size=8, lr=0.05, schedule="cosine", warmup_epochs=1.0, label_smoothing=0.1,
                patience=None, head="softmax", seed=3, ema_decay=0.9)
    return Learner(model, build_optimizer(model, "adamw", 0.05, 5e-4, 0.9), LoopSettings(**{**loop, **settings}),
                   data, torch.device("cpu"), Reporter(quiet=True))


def test_an_ema_run_resumed_from_an_epoch_end_repeats_the_uninterrupted_one():
    saved = {}

    def save_after_epoch_one(state: LoopState) -> None:
        if state.epoch == 1:
            saved.update(model=copy_state(learner.model), optimizer=copy.deepcopy(learner.optimizer.state_dict()),
                         state=copy.deepcopy(state))

    learner = _ema_learner()
    learner.on_epoch_end = save_after_epoch_one
    full = learner.fit()
    resumed = _ema_learner()
    resumed.model.load_state_dict(saved["model"])
    resumed.optimizer.load_state_dict(saved["optimizer"])
    state = resumed.fit(saved["state"])
    assert without_timing(state.history) == without_timing(full.history)
    assert all(torch.equal(state.best_state[k], v) for k, v in full.best_state.items())
    assert state.average["steps"] == full.average["steps"] == 3 * 6


def test_with_ema_the_kept_weights_and_val_metrics_are_the_averages():
    learner = _ema_learner(epochs=2)
    state = learner.fit()
    kept = state.best_state
    averaged = learner.average.module.state_dict()
    assert all(torch.equal(kept[k], averaged[k]) for k in kept)  # the last epoch kept: the average's weights
    assert not torch.equal(kept["5.weight"], learner.model.state_dict()["5.weight"])
    assert torch.equal(kept["1.running_mean"], learner.model.state_dict()["1.running_mean"])  # buffers copied
    assert state.history[-1]["val_loss"] == learner.data.validate(learner.average.module, "softmax",
                                                                  torch.device("cpu"))["val_loss"]


def test_a_checkpoint_keeps_the_average(tmp_path):
    from oculi.training.checkpoint import load_checkpoint, save_checkpoint
    learner = _ema_learner(epochs=1)
    state = learner.fit()
    save_checkpoint(tmp_path / "c.safetensors", learner.model.state_dict(), state.best_state, learner.optimizer,
                    {"epoch": 1}, average=state.average)
    *_, meta = load_checkpoint(tmp_path / "c.safetensors")
    assert meta["average"]["steps"] == state.average["steps"]
    assert all(torch.equal(meta["average"]["state"][k], v) for k, v in state.average["state"].items())
    save_checkpoint(tmp_path / "plain.safetensors", learner.model.state_dict(), state.best_state, learner.optimizer,
                    {"epoch": 1})
    assert load_checkpoint(tmp_path / "plain.safetensors")[3]["average"] is None


def test_the_default_decay_gives_a_horizon_of_a_twentieth_of_the_steps():
    from oculi.defaults import ema_decay_for
    assert 1 / (1 - ema_decay_for(10_000)) == pytest.approx(500)
    assert ema_decay_for(10) == 0.0  # a horizon under a step: the average is the weights


# ---------------------------------------------------------------- presets, plans, flags


def test_the_modern_preset_combines_them_and_knobs_override_it():
    cfg = TrainConfig(augment="modern", erasing=0.0, mixup=0.2)
    aug = training_augmentation(cfg)
    assert aug.auto_augment == "trivialaugment" and aug.erasing == 0.0 and aug.mixup == 0.2 and aug.cutmix == 1.0
    assert aug.flip and aug.translate == AUGMENT_PRESETS["light"].translate


def test_routes_that_cannot_mix_or_average_say_so():
    aug = AUGMENT_PRESETS["modern"]
    assert recipe_warnings(aug, 0.99, "scratch") == [] and recipe_warnings(aug, 0.99, "whole") == []
    [mixing, ema] = recipe_warnings(aug, 0.99, "features")
    assert "MixUp/CutMix are not applied" in mixing and "--ema is not applied" in ema
    assert "not applied" in recipe_warnings(aug, None, "features+top")[0]
    assert "fine-tuning only" in recipe_warnings(aug, None, "features+whole")[0]


@pytest.mark.parametrize("args, flag", [
    (["--auto-augment", "autoaugment"], "--auto-augment"),
    (["--erasing", "1.5"], "--erasing"),
    (["--mixup", "-1"], "--mixup"),
    (["--cutmix", "nan"], "--cutmix"),
    (["--ema", "--ema-decay", "1"], "--ema-decay"),
    (["--ema-decay", "0.99"], "--ema-decay"),
])
def test_recipe_flag_errors_are_one_line_naming_the_flag(tmp_path, capsys, args, flag):
    make_class_folder(tmp_path / "colours", per_class=6)
    code, out, err = run_cli(capsys, "train", str(tmp_path / "colours"), *args)
    assert code == 2 and err.startswith("error: ") and flag in err
    assert len(err.strip().splitlines()) == 1


def test_a_multilabel_head_with_mixup_and_ema_trains_an_epoch(tmp_path):
    from tests.training.test_multilabel_run import make_label_sets
    table = make_label_sets(tmp_path / "sets", images=60)
    run = oculi.train(str(table), epochs=1, mixup=0.4, cutmix=1.0, ema=True, batch_size=16, seed=0,
                      out=str(tmp_path / "run"), progress=False, cache=False, report=False, export="none")
    assert run.config.head == "multilabel" and run.config.ema_decay is not None
    assert 0 <= run.history[0]["train_acc"] <= 1 and run.history[0]["val_map"] is not None
    plain = oculi.train(str(table), epochs=1, ema=True, batch_size=16, seed=0, out=str(tmp_path / "plain"),
                        progress=False, cache=False, report=False, export="none")
    assert plain.history[0]["train_loss"] != run.history[0]["train_loss"]  # the batches were mixed


def test_a_crashed_modern_ema_run_resumed_ends_as_the_uninterrupted_one(tmp_path, monkeypatch):
    options = dict(data="digits", epochs=3, image_size=12, progress=False, report=False, export="none",
                   augment="modern", ema=True)
    full = oculi.train(out=str(tmp_path / "full"), **options)

    from oculi.training import loop
    real_set_lr, calls = loop.set_lr, {"n": 0}

    def crash_in_epoch_two(optimizer, lr):
        calls["n"] += 1
        if calls["n"] == 22 + 5:  # digits: 22 steps an epoch at batch 64; die 5 steps into epoch 2
            raise KeyboardInterrupt
        real_set_lr(optimizer, lr)

    monkeypatch.setattr(loop, "set_lr", crash_in_epoch_two)
    with pytest.raises(KeyboardInterrupt):
        oculi.train(out=str(tmp_path / "crashed"), **options)
    monkeypatch.setattr(loop, "set_lr", real_set_lr)
    resumed = oculi.train(resume=tmp_path / "crashed")
    assert without_timing(resumed.history) == without_timing(full.history)
    assert (tmp_path / "full" / "model.safetensors").read_bytes() == \
        (tmp_path / "crashed" / "model.safetensors").read_bytes()
