"""The end of a training run: the temperature fitted on val (and the abstain threshold), the test metrics
and predictions, the curves, then the bundle; and what the run says about them. Rank 0 writes; with several
processes every rank computes its share of the logits."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..calibration import (Calibration, at_bound, calibration_figures, checked_temperature,
                           choose_threshold_for_precision, class_logits, describe_abstaining,
                           expected_calibration_error, nll, selective_figures, softmax)
from ..check.run import leak_free_figures, leak_free_words, leaked_paths
from ..config import TrainConfig
from ..console import Reporter
from ..data.loading import TensorSet
from ..io import atomic_write_csv, atomic_write_json
from ..metrics import classification_metrics
from ..models import count_parameters
from ..plan import Plan
from ..plots import plot_confusion_matrix, plot_curves, save_figure
from ..route import finetune_part, kept_part, stages, training_word
from ..runtime.bundle import save_bundle
from ..runtime.engines import predict_logits
from .context import RunContext
from .distributed import sharded_rows
from .label_sets import finish_label_sets
from .loop import LoopState
from .transfer import frozen_logits
from .partial import partial_logits

def finish(model, ctx: RunContext, state: LoopState) -> dict | None:
    """Calibrate and evaluate the kept weights, write the results, then the bundle; the test metrics. model.json
    is written last, so a folder that has it holds a complete run (report.html, optional and rebuilt by
    `oculi report`, follows)."""
    plan, source, weights, run, reporter = ctx.plan, ctx.source, ctx.weights, ctx.run, ctx.reporter
    if plan.config.head == "multilabel":
        kept = kept_figures(plan, state, None, np.empty(0), 1.0)
        return finish_label_sets(model, ctx, state, _class_logits, kept, _fit_on(plan, state))
    val = ctx.sets["val"]
    val_logits = _class_logits(model, ctx, val, "val") if len(val) else None
    calibration, check = _calibrate(plan.config, val_logits, val.labels.numpy(), _fit_on(plan, state), reporter)
    kept = kept_figures(plan, state, val_logits, val.labels.numpy(), calibration.temperature)
    metrics = _evaluate(model, ctx, calibration, check, kept)
    if ctx.world.main:
        save_figure(plot_curves(state.history, state.best_epoch, _drawable_baseline(state)), run.curves)
        save_bundle(run.path, model.cpu(), plan.model, source.classes, plan.preprocessing,
                    {"metrics": _summary(metrics, state), "weights_source": weights.source if weights else "scratch",
                     "training": training_word(kept["part"]), "route": plan.route, "kept": kept,
                     "trainable_parameters": count_parameters(model), "data": source.name,
                     "calibration": calibration.to_dict()})
    _say_results(metrics, kept, run.path, reporter)
    _say_calibration(metrics, reporter)
    _say_recall(metrics, plan.config, reporter)
    return metrics


def _evaluate(model, ctx: RunContext, calibration: Calibration, check: dict, kept: dict) -> dict | None:
    """Metrics on the test set, or the val set when there is none, written (by rank 0) with their
    predictions and confusion matrix; None when neither has an image (a tiny data set trains, but cannot
    be measured). Each rank predicts its share of the images. The probabilities are calibrated;
    ``calibration`` in the metrics has ECE and log loss before and after."""
    cfg, sets, source, run = ctx.cfg, ctx.sets, ctx.source, ctx.run
    split = next((s for s in ("test", "val") if len(sets[s])), None)
    if split is None:
        return None
    data = sets[split]
    logits = _class_logits(model, ctx, data, split)
    labels = data.labels.numpy()
    probs = softmax(logits, calibration.temperature)
    metrics = {"split": split, **classification_metrics(labels, probs, source.classes, cfg.top_k),
               "kept": kept,
               "calibration": {**calibration_figures(logits, labels, calibration.temperature),
                               "fitted_on": "val" if cfg.calibrate and len(sets["val"]) else None, "check": check,
                               "if_applied": _if_applied(logits, labels, check)},
               "abstain": selective_figures(probs.max(1), probs.argmax(1) == labels, calibration.abstain_threshold)}
    if not ctx.world.main:
        return metrics
    leaked = leaked_paths(run.path)
    metrics["leaks_present"] = None if leaked is None else bool(leaked & set(data.paths))
    metrics["leak_free"] = leak_free_figures(data.paths, labels, probs, leaked, source.classes, cfg.top_k)
    atomic_write_json(run.test_metrics, metrics)
    _save_predictions(run.test_predictions, data, probs, source.classes)
    save_figure(plot_confusion_matrix(np.array(metrics["confusion_matrix"]), source.classes), run.confusion)
    return metrics


# ---------------------------------------------------------------- trust: calibration and abstaining

def _class_logits(model, ctx: RunContext, data: TensorSet, name: str) -> np.ndarray:
    """The class logits of ``data``'s images: of a features run, its head on the cached features (every rank
    reads them); else the whole model, each rank computing its share."""
    plan, device, reporter = ctx.plan, ctx.device, ctx.reporter
    if _backbone_stayed_frozen(plan):
        logits = frozen_logits(model, plan, data, device, reporter, name)
    elif _bottom_stayed_frozen(plan):
        logits = partial_logits(model, plan, data, device, reporter, name)
    else:
        logits = sharded_rows(ctx.world, lambda part: predict_logits(model, data.images[part], plan.preprocessing,
                                                                 device), len(data))
    return class_logits(logits.numpy(), plan.config.head)


def _backbone_stayed_frozen(plan: Plan) -> bool:
    """A features run without test-time views: its logits are the head's on the plain cached features."""
    return plan.route == "features" and plan.preprocessing.tta == "none"


def _bottom_stayed_frozen(plan: Plan) -> bool:
    """A run that fine-tuned the top stages only, without test-time views: its top on the cached activations."""
    return finetune_part(plan.route) == "top" and plan.preprocessing.tta == "none"


def _fit_on(plan: Plan, state: LoopState) -> dict | None:
    """What the temperature is fitted on when not on val: a kept features head's out-of-fold logits."""
    oof = state.out_of_fold
    if oof is None or _kept_part(plan, state) != "features":
        return None
    return {"logits": class_logits(oof["logits"], plan.config.head), "labels": oof["labels"]}


def _kept_part(plan: Plan, state: LoopState) -> str:
    return kept_part(plan.route, state.baseline is not None and state.best_epoch == 0)


def _calibrate(cfg: TrainConfig, logits: np.ndarray | None, labels: np.ndarray, fit_on: dict | None,
               reporter: Reporter) -> tuple[Calibration, dict]:
    """The temperature (--calibrate: fitted on logits that chose nothing, ``fit_on`` or val folds, and applied
    only when val images it was not fitted on confirm the gain: ``checked_temperature``) and the abstain
    threshold: --abstain-threshold, or the lowest val confidence that reaches --target-precision. Without val
    images: T = 1, said so."""
    if logits is None:
        if cfg.calibrate or cfg.target_precision is not None:
            reporter.warn("no val images: the probabilities are not calibrated (T = 1)"
                          + (" and --target-precision has nothing to choose a threshold on"
                             if cfg.target_precision is not None else ""))
        return Calibration(1.0, cfg.abstain_threshold), {"applied": False, "why": "no val images"}
    if not cfg.calibrate:
        check = {"applied": False, "why": "--no-calibrate"}
    else:
        check = checked_temperature(logits, labels, cfg.seed, fit_on)
    temperature = check.get("temperature", 1.0)
    if check["applied"] and at_bound(temperature):
        reporter.warn(f"the temperature fitted on the {len(labels)} val images stopped at the end of its range "
                      f"({temperature:g}): they ask for {'far sharper' if temperature < 1 else 'far flatter'} "
                      f"probabilities than the network gives, so the calibration is rough")
    if cfg.target_precision is None:
        return Calibration(temperature, cfg.abstain_threshold), check
    probs = softmax(logits, temperature)
    threshold = choose_threshold_for_precision(probs.max(1), probs.argmax(1) == labels, cfg.target_precision)
    if threshold is None:
        reporter.warn(f"--target-precision {cfg.target_precision:g}: no confidence threshold reaches it on the "
                      f"{len(labels)} val images; the model always answers")
    return Calibration(temperature, threshold), check


def _if_applied(logits: np.ndarray, labels: np.ndarray, check: dict) -> dict | None:
    """ECE and log loss at the fitted temperature, applied or not: what the check saved (or cost)."""
    if "fitted" not in check:
        return None
    probs = softmax(logits, check["fitted"])
    return {"temperature": check["fitted"], "ece": expected_calibration_error(probs, labels),
            "log_loss": nll(logits, labels, check["fitted"])}


def kept_figures(plan: Plan, state: LoopState, logits: np.ndarray | None, labels: np.ndarray,
                 temperature: float) -> dict:
    """What the run kept, in model.json and test_metrics.json: the part of its route (features, top, whole,
    scratch), its epoch, the rule's words, and its val figures as ``oculi evaluate RUN --data VAL`` measures them
    (the bundle's preprocessing, test-time views included; log loss calibrated and raw)."""
    part = _kept_part(plan, state)
    head_won = part == "features" and plan.route != "features"
    figures = {"part": part, "epoch": None if head_won else state.best_epoch,
               "words": _kept_words(part, plan, state),
               "decision": (state.decision or {}).get("words")}
    if logits is None:
        return {**figures, "val_images": 0, "val_accuracy": None, "val_loss": None, "val_loss_raw": None}
    return {**figures, "val_images": int(len(labels)),
            "val_accuracy": float((logits.argmax(1) == labels).mean()),
            "val_loss": nll(logits, labels, temperature), "val_loss_raw": nll(logits, labels)}


def _kept_words(part: str, plan: Plan, state: LoopState) -> str:
    """e.g. "features head", "top 2 stages, epoch 3", "whole network, epoch 7", "from scratch, epoch 10"."""
    if part == "features":  # its epoch (of the head's many quick ones) is in metrics.jsonl, marked kept
        return "features head"
    what = {"top": f"top {stages(plan.config.unfreeze_stages or 1)}", "whole": "whole network",
            "scratch": "from scratch"}[part]
    return f"{what}, epoch {state.best_epoch}"


def _say_calibration(metrics: dict | None, reporter: Reporter) -> None:
    """One line on the calibration (ECE and log loss before -> after), one on abstaining when it is in force."""
    if metrics is None:
        return
    c, split = metrics["calibration"], metrics["split"]
    check = c.get("check") or {}
    how = ("none fitted" if not c["fitted_on"] else
           (f"{check.get('fitted_on', 'val')}, confirmed on val images it was not fitted on" if check.get("applied")
            else f"T = {check.get('fitted', 1.0):.3f} fitted on {check.get('fitted_on', 'val')}, not applied: val "
                 f"images it was not fitted on saw no gain")
           + (": the same images, so optimistic" * (split == "val")))
    reporter.info(f"[bold]trust[/bold]  temperature {c['temperature']:.3f} ({how}): {split} ECE "
                  f"{c['before']['ece']:.4f} -> {c['after']['ece']:.4f}, log loss {c['before']['log_loss']:.4f} -> "
                  f"{c['after']['log_loss']:.4f}")
    abstaining = describe_abstaining(metrics["abstain"])
    if abstaining:
        reporter.info(f"       {abstaining} {split} images")


def _say_recall(metrics: dict | None, cfg: TrainConfig, reporter: Reporter, shown: int = 10) -> None:
    """On imbalanced data, each class's recall, lowest first: accuracy hides a class the model neglects."""
    if metrics is None or cfg.select_by != "macro-f1":
        return
    rows = sorted(metrics["per_class"], key=lambda c: c["recall"])
    more = f" and {len(rows) - shown} more" if len(rows) > shown else ""
    reporter.info("[bold]recall[/bold] " + ", ".join(f"{c['class']} {c['recall']:.1%}" for c in rows[:shown])
                  + f"{more} (macro-F1 {metrics['macro_avg']['f1']:.3f})")


def _summary(metrics: dict | None, state: LoopState) -> dict:
    """model.json's metrics: the headline numbers (null when nothing was held out) and the kept epoch."""
    headline = {key: (metrics or {}).get(key) for key in ("split", "accuracy", "top_k_accuracy", "log_loss")}
    return {**headline, "best_epoch": state.best_epoch, "epochs_run": state.epoch}


def _drawable_baseline(state: LoopState) -> dict | None:
    """The features head's val metrics for the curves, when it had a val set to be measured on."""
    return state.baseline if state.baseline and state.baseline.get("val_acc") is not None else None


def _say_results(metrics: dict | None, kept: dict, run_dir: Path, reporter: Reporter) -> None:
    if metrics is None:
        reporter.warn("no held-out images (no val or test split): the model is saved but not evaluated")
        written = "model.safetensors, model.json, curves.png"
    else:
        reporter.info(f"[bold]{metrics['split']}[/bold]   accuracy {metrics['accuracy']:.2%} on {metrics['n']:,}, "
                      f"top-{metrics['top_k']} {metrics['top_k_accuracy']:.2%}, "
                      f"log loss {metrics['log_loss']:.4f} ({kept['words']})")
        clean = metrics.get("leak_free")
        if clean is not None:
            reporter.warn(leak_free_words(metrics, clean))
        written = "model.safetensors, model.json, curves.png, confusion_matrix.png, test_metrics.json"
    reporter.info(f"[bold]saved[/bold]  {run_dir}/ ({written})")


def _save_predictions(path: Path, data: TensorSet, probs: np.ndarray, classes: list[str]) -> None:
    """Per-image predictions of the final evaluation (path, true, predicted, confidence)."""
    rows = [(p, classes[label], classes[int(row.argmax())], f"{row.max():.6f}")
            for p, label, row in zip(data.paths, data.labels.tolist(), probs)]
    atomic_write_csv(path, ["path", "true", "predicted", "confidence"], rows)
