"""The end of a multi-label run (one sigmoid a class; ``finish`` hands it over): each class's threshold, the
test scores of label sets (``multilabel.multilabel_metrics``), the predictions with every probability, the
precision-recall curves and the labels' co-occurrence, then the bundle with its thresholds."""

from __future__ import annotations

import numpy as np

from ..data.loading import TensorSet, label_sets
from ..data.split import LABEL_SEP
from ..io import atomic_write_csv, atomic_write_json
from ..models import count_parameters
from ..multilabel import (DEFAULT_THRESHOLD, checked_class_temperatures, checked_thresholds, label_sets_of, log_loss,
                          multilabel_metrics, sigmoid)
from ..plots import plot_co_occurrence, plot_curves, plot_pr_curves, save_figure
from ..route import training_word
from ..runtime.bundle import save_bundle
from .context import RunContext
from .loop import LoopState


def finish_label_sets(model, ctx: RunContext, state: LoopState, class_logits, kept: dict,
                      fit_on: dict | None) -> dict | None:
    """Thresholds, test metrics, files and bundle of a multi-label run; ``class_logits(model, ctx, data,
    name)`` gives a split's logits as ``finish`` computes them, ``fit_on`` a kept head's out-of-fold ones."""
    plan, source, run, reporter = ctx.plan, ctx.source, ctx.run, ctx.reporter
    val = ctx.sets["val"]
    val_logits = class_logits(model, ctx, val, "val") if len(val) else None
    calibration = _calibration(val_logits, val.labels.numpy(), source.classes, plan.config, fit_on)
    divisor = calibration.get("temperatures", 1.0)
    val_probs = None if val_logits is None else sigmoid(val_logits, np.asarray(divisor))
    fit_probs = None if fit_on is None else {"probs": sigmoid(fit_on["logits"], np.asarray(divisor)),
                                             "targets": fit_on["labels"]}
    chosen = _thresholds(val_probs, val.labels.numpy(), source.classes, plan.config, fit_probs, reporter)
    if val_probs is not None:
        kept = {**kept, "val_images": len(val), "val_mAP": multilabel_metrics(
            val.labels.numpy(), val_probs, source.classes, chosen["thresholds"])["mAP"]}
    metrics = _evaluate(model, ctx, class_logits, chosen, kept, calibration)
    if ctx.world.main:
        save_figure(plot_curves(state.history, state.best_epoch), run.curves)
        save_bundle(run.path, model.cpu(), plan.model, source.classes, plan.preprocessing,
                    {"metrics": _summary(metrics, state), "weights_source": ctx.weights.source if ctx.weights else
                     "scratch", "training": training_word(kept["part"]), "route": plan.route, "kept": kept,
                     "trainable_parameters": count_parameters(model), "data": source.name,
                     "calibration": {"temperature": 1.0, "abstain_threshold": None,
                                     **({"class_temperatures": calibration["temperatures"]}
                                        if calibration.get("applied") else {})},
                     "thresholds": chosen["thresholds"]})
    _say(metrics, chosen, kept, run.path, reporter)
    return metrics


def _calibration(logits, targets, classes: list[str], cfg, fit_on: dict | None) -> dict:
    """Each class's checked temperature (``multilabel.checked_class_temperatures``, fitted on ``fit_on`` when
    a features head was kept); nothing without val images or with ``--no-calibrate``."""
    if logits is None or not cfg.calibrate:
        return {"applied": 0, "classes": [], "why": "no val images" if logits is None else "--no-calibrate"}
    fit = None if fit_on is None else {"logits": fit_on["logits"], "targets": fit_on["labels"]}
    return checked_class_temperatures(logits, targets, classes, cfg.seed, fit)


def _thresholds(probs, targets, classes: list[str], cfg, fit_on: dict | None, reporter) -> dict:
    """``multilabel.checked_thresholds`` on val's calibrated probabilities (fitted on ``fit_on``'s when a
    features head was kept; to ``--target-precision`` when given); 0.5 for every class, said so, without val
    images."""
    if probs is None:
        reporter.warn("no val images: every class's threshold stays 0.5")
        return {"thresholds": [DEFAULT_THRESHOLD] * len(classes), "classes": [], "fitted_on": None}
    chosen = checked_thresholds(probs, targets, classes, cfg.seed, fit_on, target_precision=cfg.target_precision)
    short = [r["class"] + (" (no threshold reaches it: 0.5 kept)" if r["fitted"] is None else "")
             for r in chosen["classes"] if not r.get("target_met", True)]
    if short:
        reporter.warn(f"--target-precision {cfg.target_precision:g}: not held on val images the threshold did not "
                      f"see for {', '.join(short[:8])}")
    return chosen


def _evaluate(model, ctx: RunContext, class_logits, chosen: dict, kept: dict, calibration: dict) -> dict | None:
    """The label-set metrics of the test split (else val) on calibrated probabilities, written with the
    predictions and figures; ``calibration`` with the split's log loss before and after it."""
    sets, source, run = ctx.sets, ctx.source, ctx.run
    split = next((s for s in ("test", "val") if len(sets[s])), None)
    if split is None:
        return None
    data = sets[split]
    logits, targets = class_logits(model, ctx, data, split), data.labels.numpy()
    probs = sigmoid(logits, np.asarray(calibration.get("temperatures", 1.0)))
    metrics = {"split": split, **multilabel_metrics(targets, probs, source.classes, chosen["thresholds"]),
               "kept": kept, "thresholds": chosen}
    metrics["calibration"] = {**calibration, "log_loss_before": log_loss(targets, sigmoid(logits)),
                              "log_loss_after": metrics["log_loss"]}
    if ctx.world.main:
        atomic_write_json(run.test_metrics, metrics)
        save_predictions(run.test_predictions, data, probs, source.classes, chosen["thresholds"])
        save_figure(plot_pr_curves(targets, probs, source.classes, chosen["thresholds"]), run.pr_curves)
        save_figure(plot_co_occurrence(metrics["co_occurrence"], source.classes), run.co_occurrence)
    return metrics


def save_predictions(path, data: TensorSet, probs: np.ndarray, classes: list[str], thresholds) -> None:
    """Per image: path, its true and predicted label sets (names joined by ';'), and every class's probability."""
    predicted = label_sets_of(probs, thresholds)
    true = label_sets(data.labels)
    rows = [(p, LABEL_SEP.join(classes[c] for c in t), LABEL_SEP.join(classes[c] for c in s),
             *(f"{v:.6f}" for v in row)) for p, t, s, row in zip(data.paths, true, predicted, probs)]
    atomic_write_csv(path, ["path", "true", "predicted", *(f"p_{c}" for c in classes)], rows)


def _summary(metrics: dict | None, state: LoopState) -> dict:
    """model.json's metrics: the headline label-set scores and the kept epoch."""
    m = metrics or {}
    return {"split": m.get("split"), "mAP": m.get("mAP"), "macro_f1": (m.get("macro_avg") or {}).get("f1"),
            "subset_accuracy": m.get("subset_accuracy"), "log_loss": m.get("log_loss"),
            "best_epoch": state.best_epoch, "epochs_run": state.epoch}


def _say(metrics: dict | None, chosen: dict, kept: dict, run_dir, reporter) -> None:
    moved = [r for r in chosen.get("classes", []) if r["applied"]]
    if chosen.get("target_precision") is not None:
        reporter.info(f"[bold]thresholds[/bold] for precision {chosen['target_precision']:g} (fitted on "
                      f"{chosen['fitted_on']}, checked on {chosen['checked_on']}): " + "; ".join(
                          f"{r['class']} {r['threshold']:.2f}" + ("" if r["precision_checked"] is None else
                                                                  f" ({r['precision_checked']:.1%})")
                          for r in chosen["classes"][:8]))
    elif chosen.get("fitted_on"):
        reporter.info(f"[bold]thresholds[/bold] {len(moved)} of {len(chosen['thresholds'])} classes moved from 0.5 "
                      f"(F1-optimal on {chosen['fitted_on']}, kept when {chosen['checked_on']} confirm it)"
                      + ("".join(f"; {r['class']} {r['threshold']:.2f}" for r in moved[:5])))
    if metrics is None:
        reporter.warn("no held-out images (no val or test split): the model is saved but not evaluated")
        return
    c = metrics["calibration"]
    if c.get("classes"):
        reporter.info(f"[bold]trust[/bold]  a temperature for {c['applied']} of {len(c['classes'])} classes "
                      f"(each kept when val images it was not fitted on confirm it): {metrics['split']} log loss "
                      f"{c['log_loss_before']:.4f} -> {c['log_loss_after']:.4f}")
    reporter.info(f"[bold]{metrics['split']}[/bold]   mAP {metrics['mAP']:.2%} (micro {metrics['micro_mAP']:.2%}), "
                  f"macro-F1 {metrics['macro_avg']['f1']:.3f}, micro-F1 {metrics['micro_avg']['f1']:.3f}, "
                  f"every label right on {metrics['subset_accuracy']:.2%} of {metrics['n']:,}, Hamming loss "
                  f"{metrics['hamming_loss']:.4f} ({kept['words']})")
    reporter.info(f"[bold]saved[/bold]  {run_dir}/ (model.safetensors, model.json, curves.png, pr_curves.png, "
                  f"co_occurrence.png, test_metrics.json)")
