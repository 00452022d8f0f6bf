"""Fitting a run's model as its route says: a head on frozen features, then (or only) the top stages on
their cached activations or the whole network; what was kept, marked in metrics.jsonl; a checkpoint after
every epoch and the state restored from it (``--resume``)."""

from __future__ import annotations

import dataclasses
from contextlib import nullcontext
from typing import Callable

import torch

from ..config import TrainConfig
from ..data.loading import TensorSet, class_counts
from ..plan import Plan
from ..route import finetune_part, head_first, stages, trains_backbone
from ..runtime.engines import place_model
from .checkpoint import load_checkpoint, save_checkpoint
from .context import RunContext
from .distributed import broadcast_module, broadcast_object, convert_sync_bn, local_main_first, use_sync_bn
from .loop import ImageData, Learner, LoopSettings, LoopState, copy_state
from .optim import build_optimizer
from .partial import CachedTop, TopOfModel, cached_top, trainable_top
from .trackers import RunLog
from .transfer import features_phase, gradual_unfreezing


def loop_settings(cfg: TrainConfig, train: TensorSet, num_classes: int, device) -> LoopSettings:
    """The Learner's settings; the batch is each process's (every process has at least one image)."""
    weights = None
    if cfg.class_weights == "auto" and cfg.head == "multilabel":  # each class's positives against its negatives
        positives = class_counts(train.labels, num_classes).float().clamp_min(1)
        weights = ((len(train) - positives).clamp_min(1) / positives).to(device)
    elif cfg.class_weights == "auto":
        counts = class_counts(train.labels, num_classes).float().clamp_min(1)
        weights = (len(train) / (num_classes * counts)).to(device)
    return LoopSettings(epochs=cfg.epochs, batch_size=max(1, min(cfg.batch_size, len(train) // cfg.world_size)),
                        lr=cfg.lr, accumulate=cfg.accumulate,
                        schedule=cfg.schedule, warmup_epochs=cfg.warmup_epochs,
                        label_smoothing=cfg.label_smoothing, patience=cfg.patience, head=cfg.head,
                        lookahead=bool(cfg.lookahead), mixed_precision=cfg.mixed_precision,
                        seed=cfg.seed, sampler=cfg.sampler, class_weights=weights,
                        select_by=cfg.select_by,  # "auto" only in plans from before it existed: accuracy
                        time_budget=cfg.time_budget, epochs_from_budget=cfg.epochs_from_budget)


def fit(model, ctx: RunContext, restoring: bool, log: RunLog) -> LoopState:
    """Train ``model`` as the plan's route says: a head on frozen features, then (or only) the top stages or
    the whole network; ``restoring``: from the run's checkpoint. ``log`` gets every epoch's row as
    metrics.jsonl does."""
    plan, sets, device, world = ctx.plan, ctx.sets, ctx.device, ctx.world
    cfg = plan.config
    settings = loop_settings(cfg, sets["train"], len(ctx.source.classes), device)
    # A features run never trains a BatchNorm: nothing to synchronise.
    if trains_backbone(plan.route) and use_sync_bn(cfg.sync_bn, settings.batch_size, world):
        model = convert_sync_bn(model, device)
    place_model(model, device)
    state = LoopState()
    top = cached_top(model, plan, sets, device, ctx.reporter) if finetune_part(plan.route) == "top" else None
    # A resumed run past its features phase finds that phase's result in the checkpoint.
    if head_first(plan.route) and not restoring:
        head_state = _features_phase(model, ctx, settings, top.features(device) if top is not None else None)
        if plan.route == "features":
            log.log_epochs(head_state.history)
            head_state = dataclasses.replace(head_state, best_state=copy_state(model))
            _write_marked_log(head_state, ctx)
            return head_state
        state = _after_the_head(head_state, model)
        ctx.reporter.info(_finetune_plan(state.baseline, top))
    optimizer = build_optimizer(model, cfg.optimizer, cfg.lr, cfg.weight_decay, cfg.momentum,
                                cfg.backbone_lr if plan.route != "scratch" else 1.0)
    if restoring:
        state = _restore(model, optimizer, ctx)
    if plan.route != "scratch":
        model.frozen_norm = True
    # --ema averages the network's training, not a features head's (whose epochs take milliseconds)
    settings = dataclasses.replace(settings, phase="finetune" if plan.route != "scratch" else "train",
                                   ema_decay=cfg.ema_decay)
    if top is not None:  # the top stages on their cached inputs; the state dicts stay the whole model's
        trainable_top(model, top.split)
        net, data = TopOfModel(model, top.split), top.data(plan.augmentation)
    else:
        net, data = model, ImageData(sets["train"], sets["val"], plan.preprocessing, plan.augmentation)
    learner = Learner(net, optimizer, settings, data, device, ctx.reporter, on_epoch_start=_on_epoch_start(model, plan),
                      on_epoch_end=_epoch_saver(model, optimizer, ctx, log), world=world)
    state = learner.fit(state)
    if state.baseline is not None:
        _say_what_was_kept(state, ctx)
    _write_marked_log(state, ctx)
    return state


def _after_the_head(head_state: LoopState, model) -> LoopState:
    """The fine-tune's starting state: the features head is the baseline it must beat (its row, weights,
    out-of-fold logits and val predictions) and the weights kept until an epoch does."""
    predicted = {"baseline": head_state.predicted["best"]} if "best" in head_state.predicted else {}
    return LoopState(best_state=copy_state(model), baseline=head_state.best_row, prior=head_state.history,
                     baseline_state=copy_state(model), out_of_fold=head_state.out_of_fold, predicted=predicted)


def _epoch_saver(model, optimizer, ctx: RunContext, log: RunLog) -> Callable[[LoopState], None]:
    """After each epoch, on rank 0: metrics.jsonl, the trackers and a checkpoint ``--resume`` goes on from."""
    def on_epoch_end(s: LoopState) -> None:
        if not ctx.world.main:
            return
        ctx.run.write_metrics_log(s.prior + s.history)
        log.log_epochs(s.prior + s.history)
        save_checkpoint(ctx.run.checkpoint, model.state_dict(), s.best_state, optimizer,
                        {"epoch": s.epoch, "best_epoch": s.best_epoch, "history": s.history,
                         "baseline": s.baseline, "prior": s.prior, "predicted": s.predicted,
                         "epochs": s.epochs},
                        s.baseline_state, s.out_of_fold, s.average)
    return on_epoch_end


def _write_marked_log(state: LoopState, ctx: RunContext) -> None:
    """metrics.jsonl once the kept weights are chosen: the row they were measured in says ``"kept": true``
    (a features head's row when the head won), every other row ``false``."""
    if not ctx.world.main:
        return
    kept = state.best_row
    key = None if kept is None else (kept.get("phase"), kept.get("epoch"))
    ctx.run.write_metrics_log([{**row, "kept": (row.get("phase"), row.get("epoch")) == key}
                           for row in state.prior + state.history])


def _features_phase(model, ctx: RunContext, settings: LoopSettings, feats=None) -> LoopState:
    """``transfer.features_phase`` on every rank: one process per machine fills the features cache first,
    and rank 0's head (and its history) is the one every rank keeps."""
    world = ctx.world
    with local_main_first(world) if ctx.cfg.cache else nullcontext():
        head_state = features_phase(model, ctx.plan, ctx.sets, settings, ctx.device, ctx.reporter, feats)
    broadcast_module(world, model.head)
    return dataclasses.replace(broadcast_object(world, dataclasses.replace(head_state, best_state=None)),
                               best_state=copy_state(model.head))


def _on_epoch_start(model, plan: Plan) -> Callable[[int], None]:
    """What changes before each epoch: gradual unfreezing of a backbone, or the model's own schedule of
    what trains (fast-cnn freezes its whitening bias after the first epochs)."""
    cfg = plan.config
    if cfg.unfreeze_epochs and finetune_part(plan.route) == "whole":
        return gradual_unfreezing(model, cfg.unfreeze_epochs)
    if hasattr(model, "on_epoch_start"):
        return lambda epoch: model.on_epoch_start(epoch, cfg.epochs)
    return lambda epoch: None


def _finetune_plan(baseline: dict, top: CachedTop | None) -> str:
    what = ("the whole network" if top is None else
            f"the last {stages(top.split.stages)} of {top.split.total} (from {top.split.cut} on)")
    if baseline["val_acc"] is None:
        return (f"fine-tuning {what}; with no val images to compare it with the features model, "
                "its last epoch is kept")
    return (f"fine-tuning {what}; it must beat the features model's val accuracy "
            f"({baseline['val_acc']:.2%}) by more than the val images can resolve to replace it")


def _say_what_was_kept(state: LoopState, ctx: RunContext) -> None:
    if state.decision is not None:  # None: no val images; _finetune_plan said the last epoch is kept
        ctx.reporter.info(f"[bold]kept[/bold]   {state.decision['words']}")


def _restore(model, optimizer, ctx: RunContext) -> LoopState:
    """The run's state from its checkpoint, read by rank 0 and sent to the others."""
    run, device = ctx.run, ctx.device
    model_state, best_state, optim_state, meta = broadcast_object(
        ctx.world, load_checkpoint(run.checkpoint) if ctx.world.main else None)
    model.load_state_dict(model_state)
    optimizer.load_state_dict(optim_state)
    ctx.reporter.info(f"resuming {run.path} after epoch {meta['epoch']}")
    on_device = lambda state: None if state is None else {k: v.to(device) for k, v in state.items()}
    return LoopState(epoch=meta["epoch"], history=meta["history"], best_state=on_device(best_state),
                     best_epoch=meta["best_epoch"], baseline=meta.get("baseline"), prior=meta.get("prior", []),
                     baseline_state=on_device(meta.get("baseline_state")), predicted=meta.get("predicted", {}),
                     out_of_fold=meta.get("out_of_fold"), average=_on_device_average(meta.get("average"), device),
                     epochs=meta.get("epochs"))


def _on_device_average(average: dict | None, device) -> dict | None:
    """A checkpoint's --ema average, its weights on the training device."""
    if average is None:
        return None
    return {"state": {k: v.to(device) for k, v in average["state"].items()}, "steps": average["steps"]}

