"""The Learner: one training loop for images and for feature vectors, its hooks, its early stop."""

import copy
import dataclasses

import numpy as np
import pytest
import torch
import torch.nn as nn

from oculi.console import Reporter
from oculi.data.loading import TensorSet
from oculi.data.transforms import Preprocessing
from oculi.training.loop import (FeatureData, FeatureSet, HeadBar, ImageData, Learner, LoopSettings, LoopState,
                              copy_state)
from oculi.training.optim import build_optimizer
from tests.conftest import without_timing

PREPROCESSING = Preprocessing((4, 4), 3, mean=(0.4, 0.5, 0.6), std=(0.2, 0.25, 0.3))


def _images(n: int, classes: int, seed: int) -> TensorSet:
    """Random 4x4 colour images whose class's channel is brighter: learnable, but not at once."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % classes
    images = torch.randint(0, 160, (n, 3, 4, 4), generator=g)
    images[torch.arange(n), labels] += 60
    return TensorSet(images.to(torch.uint8), labels, [f"{i}.png" for i in range(n)])


def _features(data: TensorSet) -> FeatureSet:
    """What an identity backbone would give for ``data``: its normalised pixels, flattened."""
    return FeatureSet(PREPROCESSING.normalize(data.images).flatten(1), data.labels)


def _head(outputs: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Dropout(0.3), nn.Linear(3 * 4 * 4, outputs))  # dropout: its draws must agree too


def _learner(model: nn.Module, data, reporter=None, **settings) -> Learner:
    defaults = dict(epochs=3, batch_size=8, lr=0.05, schedule="cosine", warmup_epochs=1.0, label_smoothing=0.1,
                    patience=None, head="softmax", seed=3)
    optimizer = build_optimizer(model, "adamw", 0.05, 5e-4, 0.9)
    return Learner(model, optimizer, LoopSettings(**{**defaults, **settings}), data, torch.device("cpu"),
                   reporter or Reporter(quiet=True))


@pytest.mark.parametrize("head, classes", [("softmax", 3), ("sigmoid", 2)])
def test_a_head_learns_the_same_from_images_through_an_identity_backbone_as_from_their_features(head, classes):
    train, val = _images(42, classes, seed=0), _images(15, classes, seed=1)
    outputs = 1 if head == "sigmoid" else classes
    on_images = nn.Sequential(nn.Flatten(), _head(outputs))
    on_features = _head(outputs)
    images = _learner(on_images, ImageData(train, val, PREPROCESSING, None), head=head).fit()
    features = _learner(on_features, FeatureData(_features(train), _features(val)), head=head).fit()
    assert without_timing(images.history) == without_timing(features.history)
    assert images.history[-1]["train_acc"] > images.history[0]["train_acc"]  # it learned something
    for name, weight in on_features.state_dict().items():
        assert torch.equal(on_images[1].state_dict()[name], weight), name


def _feature_data(classes: int = 3) -> FeatureData:
    return FeatureData(_features(_images(42, classes, seed=0)), _features(_images(15, classes, seed=1)))


def test_resuming_from_an_epoch_end_repeats_the_uninterrupted_fit():
    saved = {}

    def save_after_epoch_one(state: LoopState) -> None:
        if state.epoch == 1:
            saved.update(model=copy_state(learner.model), optimizer=copy.deepcopy(learner.optimizer.state_dict()),
                         state=copy.deepcopy(state))

    learner = _learner(_head(3), _feature_data())
    learner.on_epoch_end = save_after_epoch_one
    full = learner.fit()
    resumed = _learner(_head(3), _feature_data())
    resumed.model.load_state_dict(saved["model"])
    resumed.optimizer.load_state_dict(saved["optimizer"])
    state = resumed.fit(saved["state"])
    assert without_timing(state.history) == without_timing(full.history) and state.best_epoch == full.best_epoch
    assert all(torch.equal(state.best_state[k], v) for k, v in full.best_state.items())


def test_on_epoch_start_is_told_each_epoch_before_it_trains():
    learner, state, started = _learner(_head(3), _feature_data(), epochs=4), LoopState(), []
    learner.on_epoch_start = lambda epoch: started.append((epoch, len(state.history)))
    learner.fit(state)
    assert started == [(0, 0), (1, 1), (2, 2), (3, 3)]


def test_early_stop_after_patience_epochs_without_a_better_val_accuracy(capsys):
    # lr 0: every epoch measures as the first, which is never beaten
    learner = _learner(_head(3), _feature_data(), Reporter(), epochs=10, lr=0.0, patience=2)
    state = learner.fit()
    # Stopped two epochs after the first; none was better than the last, which is kept (keep_with_margin)
    assert state.epoch == 3 and state.best_epoch == 3 and "kept the last epoch (3)" in state.decision["words"]
    assert "early stop: no better val accuracy for 2 epochs" in capsys.readouterr().err
    assert _learner(_head(3), _feature_data(), epochs=10, lr=0.0, patience=None).fit().epoch == 10


def test_progress_is_a_line_an_epoch_on_images_and_one_line_for_a_head(capsys):
    train, val = _images(42, 3, seed=0), _images(15, 3, seed=1)
    _learner(nn.Sequential(nn.Flatten(), _head(3)), ImageData(train, val, PREPROCESSING, None), Reporter()).fit()
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 3
    assert all(line.startswith(f"epoch   {e}/3  train loss ") for e, line in zip((1, 2, 3), lines))
    assert "  val loss " in lines[0] and " img/s  " in lines[0]
    learner = _learner(_head(3), FeatureData(_features(train), _features(val)), Reporter())
    learner.progress = HeadBar()
    state = learner.fit()
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("head   3 epochs on 42 feature vectors in ")
    assert f"; kept epoch {state.best_epoch}: train loss " in line and "  val loss " in line


def test_a_time_budget_stops_before_an_epoch_that_would_end_past_it(capsys):
    train, val = _images(40, 2, seed=0), _images(10, 2, seed=1)
    data = FeatureData(_features(train), _features(val))
    within = _learner(_head(2), data, epochs=5, time_budget=3600.0).fit()
    assert within.epoch == 5  # an hour is enough
    over = _learner(_head(2), data, Reporter(), epochs=5, time_budget=1e-9).fit()
    assert over.epoch == 1 and over.best_state is not None  # the first epoch always runs, and is kept
    assert "time budget: stopped after epoch 1 of 5" in capsys.readouterr().err


def _decided(labels, best, baseline=None, last=None, epochs=3, best_epoch=2):
    """A finished fit's state with the given val predictions, settled by keep_with_margin."""
    from oculi.training.loop import LoopState, keep_with_margin
    rows = [{"epoch": e, "phase": "finetune", "val_acc": 0.5, "val_loss": 1.0, "val_macro_f1": 0.5}
            for e in range(1, epochs + 1)]
    predicted = {"best": list(best), "last": list(last if last is not None else best)}
    state = LoopState(epoch=epochs, history=rows, best_state={"w": torch.ones(1)}, best_epoch=best_epoch,
                      baseline=None if baseline is None else {"epoch": 60, "phase": "features", "val_acc": 0.5},
                      baseline_state=None if baseline is None else {"w": torch.zeros(1)},
                      predicted={**predicted, **({"baseline": list(baseline)} if baseline is not None else {})})
    model = nn.Linear(1, 1, bias=False)
    nn.init.constant_(model.weight, 7.0)  # "the last epoch's" weights
    keep_with_margin(state, model, torch.tensor(labels))
    return state


def test_a_fine_tune_one_image_better_than_the_head_gives_way_to_the_head():
    labels = np.arange(200) % 2
    head, tuned = labels.copy(), labels.copy()
    head[[3, 77]] ^= 1
    tuned[3] ^= 1
    state = _decided(labels, tuned, baseline=head)
    assert state.best_epoch == 0 and torch.equal(state.best_state["w"], torch.zeros(1))  # the head's weights
    assert state.decision["kept"] == "the features head" and "(+1 image, p = 0.5)" in state.decision["words"]
    head[range(10, 40, 2)] ^= 1  # now the fine-tune is 16 images better
    state = _decided(labels, tuned, baseline=head)
    assert state.best_epoch == 2 and state.decision["better"] and state.decision["kept"] == "fine-tuned epoch 2"


def test_without_a_baseline_the_last_epoch_stays_unless_an_earlier_one_is_clearly_better():
    labels = np.arange(100) % 2
    best, last = labels.copy(), labels.copy()
    last[[5]] ^= 1
    state = _decided(labels, best, last=last)
    assert state.best_epoch == 3 and state.best_state["weight"].item() == 7.0  # the model as it ended
    assert state.decision["kept"] == "epoch 3" and state.predicted["best"] == list(last)
    last[range(0, 60, 3)] ^= 1  # 20 images worse at the end
    state = _decided(labels, best, last=last)
    assert state.best_epoch == 2 and state.decision["kept"] == "epoch 2"


def test_epochs_in_budget_counts_the_first_epoch_and_what_the_rest_of_the_budget_holds():
    from oculi.training.loop import epochs_in_budget
    assert epochs_in_budget(100.0, elapsed=12.0, epoch_seconds=10.0) == 9  # 88 s left: 8 more
    assert epochs_in_budget(5.0, elapsed=12.0, epoch_seconds=10.0) == 1  # over already: the one done
    assert epochs_in_budget(1e9, elapsed=1.0, epoch_seconds=0.001) == 10_000  # the config's bound
    assert epochs_in_budget(100.0, elapsed=30.0, epoch_seconds=10.0, done=2) == 9  # 70 s left: 7 more


def test_a_budget_without_an_epoch_count_sets_it_after_the_first_epoch_and_the_schedule_follows(monkeypatch, capsys):
    import oculi.training.loop as loop
    monkeypatch.setattr(loop, "epochs_in_budget", lambda budget, elapsed, seconds, done: 4)  # the speed, fixed
    train, val = _images(40, 2, seed=0), _images(10, 2, seed=1)
    data = FeatureData(_features(train), _features(val))
    learner = _learner(_head(2), data, Reporter(), epochs=8, time_budget=3600.0, epochs_from_budget=True)
    state = learner.fit()
    assert state.epoch == 4 and state.epochs == 4 and learner.settings.epochs == 4
    assert "time budget: 2 epochs took " in capsys.readouterr().err  # counted after the second
    # The cosine schedule ran to its end over the 4 epochs, not half-way through the 8 it started with.
    assert state.history[1]["lr"] > 0.01 and state.history[-1]["lr"] < 0.01
    resumed = _learner(_head(2), data, epochs=8, time_budget=3600.0, epochs_from_budget=True)
    after = resumed.fit(LoopState(epoch=3, history=state.history[:3], epochs=4))
    assert after.epoch == 4  # a resumed run keeps the count its first epoch bought
    fixed = _learner(_head(2), data, epochs=2, time_budget=3600.0).fit()
    assert fixed.epoch == 2 and fixed.epochs is None  # --epochs given: trained as asked


def test_a_budget_fitted_schedule_early_stops_only_in_its_last_quarter(monkeypatch):
    import oculi.training.loop as loop
    from oculi.training.loop import patience_counts
    fitted = LoopSettings(epochs=100, batch_size=8, lr=0.05, schedule="onecycle", warmup_epochs=1.0,
                          label_smoothing=0.0, patience=10, head="softmax", seed=0, time_budget=40.0,
                          epochs_from_budget=True)
    assert not patience_counts(fitted, 74) and patience_counts(fitted, 75)
    assert patience_counts(dataclasses.replace(fitted, epochs_from_budget=False), 11)  # --epochs: as always
    monkeypatch.setattr(loop, "epochs_in_budget", lambda budget, elapsed, seconds, done: 8)
    # lr 0: no epoch beats the first, so patience 2 would stop after epoch 3; the fitted 8 run to epoch 6
    state = _learner(_head(3), _feature_data(), epochs=40, lr=0.0, patience=2, time_budget=3600.0,
                     epochs_from_budget=True).fit()
    assert state.epochs == 8 and state.epoch == 6
