"""Imbalanced classes: weighting the loss or the draws helps the small class, and on imbalanced data the run
keeps the epoch with the best val macro-F1."""

import pytest
import torch
import torch.nn as nn
from sklearn.metrics import f1_score

from oculi.config import TrainConfig
from oculi.console import Reporter
from oculi.data.sources import DataSource
from oculi.data.split import Record
from oculi.defaults import DataProbe, imbalance, resolve
from oculi.training.loop import FeatureData, FeatureSet, Learner, LoopState, is_better, macro_f1
from oculi.training.optim import build_optimizer
from oculi.training.fitting import loop_settings as _loop_settings
from oculi.training.plan_line import describe_balance as _describe_balance
from oculi.data.loading import TensorSet


def twenty_to_one(n_small: int, seed: int) -> FeatureSet:
    """Two overlapping 2-D clouds, 20 points of class 0 for each of class 1 (the small one)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.cat([torch.zeros(20 * n_small, dtype=torch.long), torch.ones(n_small, dtype=torch.long)])
    points = torch.randn(len(labels), 2, generator=g) + 1.5 * labels[:, None].float()
    return FeatureSet(points, labels)


def small_class_recall(class_weights: str = "none", sampler: str = "shuffle") -> float:
    """Recall of class 1 on a fresh 20:1 set after training a linear head on another, as a run's
    --class-weights and --sampler set it up."""
    train, test = twenty_to_one(30, seed=0), twenty_to_one(200, seed=1)
    cfg = TrainConfig(class_weights=class_weights, sampler=sampler, epochs=30, batch_size=64, lr=0.05,
                      schedule="constant", warmup_epochs=0, label_smoothing=0.0, head="softmax", patience=None)
    settings = _loop_settings(cfg, TensorSet(train.features, train.labels, []), 2, torch.device("cpu"))
    torch.manual_seed(0)
    model = nn.Linear(2, 2)
    learner = Learner(model, build_optimizer(model, "adamw", 0.05, 0.0, 0.9), settings,
                      FeatureData(train, FeatureSet(train.features[:0], train.labels[:0])), torch.device("cpu"),
                      Reporter(quiet=True))
    learner.fit()
    with torch.no_grad():
        predicted = model(test.features).argmax(1)
    return float((predicted[test.labels == 1] == 1).float().mean())


def test_class_weights_and_balanced_sampling_raise_the_small_classs_recall():
    plain = small_class_recall()
    weighted, balanced = small_class_recall(class_weights="auto"), small_class_recall(sampler="balanced")
    print(f"small-class recall at 20:1: plain {plain:.2f}, class weights {weighted:.2f}, balanced {balanced:.2f}")
    assert weighted > plain + 0.2 and balanced > plain + 0.2


def test_macro_f1_is_sklearns():
    g = torch.Generator().manual_seed(0)
    labels, predicted = torch.randint(0, 4, (200,), generator=g), torch.randint(0, 4, (200,), generator=g)
    predicted[:3] = 3  # and a class that is never right
    expected = f1_score(labels, predicted, average="macro", labels=range(5), zero_division=0)
    assert macro_f1(predicted, labels, 5) == pytest.approx(expected)


def test_macro_f1_selection_keeps_the_epoch_that_serves_every_class():
    # epoch 2 is more accurate overall but ignores the small class: accuracy keeps it, macro-F1 does not
    first = {"val_acc": 0.93, "val_loss": 0.3, "val_macro_f1": 0.80}
    second = {"val_acc": 0.95, "val_loss": 0.2, "val_macro_f1": 0.49}
    state = LoopState(history=[first], best_epoch=1, epoch=1)
    assert is_better(second, state, "accuracy")
    assert not is_better(second, state, "macro-f1")


def source_with(counts: list[int]) -> DataSource:
    records = [Record(f"{c}/{i}.png", c, "train") for c, n in enumerate(counts) for i in range(n)]
    return DataSource("toy", [f"c{c}" for c in range(len(counts))], records)


def test_auto_selects_by_macro_f1_on_imbalanced_data_only():
    probe = DataProbe((8, 8), True)
    assert resolve(TrainConfig(), source_with([200, 10]), probe).select_by == "macro-f1"
    assert resolve(TrainConfig(), source_with([180, 179, 182]), probe).select_by == "accuracy"
    assert resolve(TrainConfig(select_by="accuracy"), source_with([200, 10]), probe).select_by == "accuracy"
    assert imbalance(source_with([200, 10])) == 20


def test_the_plan_line_says_how_imbalance_is_handled():
    cfg = TrainConfig(select_by="macro-f1", class_weights="auto")
    line = _describe_balance(cfg, source_with([200, 10]))
    assert "20.0:1" in line and "macro-F1" in line and "class-weighted loss" in line


def test_an_imbalanced_run_says_so_keeps_by_macro_f1_and_its_report_leads_with_recall(tmp_path, capsys):
    import json
    import numpy as np
    import oculi
    from oculi.report.build import metrics_section, read_run
    from tests.conftest import write_image
    rng = np.random.default_rng(0)
    for name, colour, n in (("common", 0, 60), ("rare", 1, 3)):
        for i in range(n):
            write_image(tmp_path / "data" / name / f"{i:02d}.png", rng, size=(8, 8), colour=colour)
    run = oculi.train(str(tmp_path / "data"), model="mlp", epochs=1, out=str(tmp_path / "run"), report=False,
                      val_split=0.2, test_split=0.2)
    said = capsys.readouterr()
    assert "keeps the epoch with the best val macro-F1" in said.out + said.err
    assert "recall" in said.out + said.err
    assert json.loads((run.run_dir / "config.json").read_text())["config"]["select_by"] == "macro-f1"
    section = metrics_section(read_run(run.run_dir), None, None)
    assert section.body.index("each class&#x27;s recall") < section.body.index("precision")
