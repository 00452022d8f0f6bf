"""One training run, start to finish: data -> model -> fit -> evaluate -> bundle and plots. report.html is
written after it by the caller (the CLI and the API), so that training never depends on reporting.

Everything a run writes lives in its run folder; every file there is written atomically, and a
checkpoint after each epoch lets ``--resume`` finish a killed run with the same result. model.json is
the last file of a run, so a folder that has it is complete. A run holds its folder (``_claimed``) for
its whole life, so two runs never write into one folder.
"""

from __future__ import annotations

import dataclasses
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ContextManager, Iterator

import torch

from ..check.run import check_at_train_start, without
from ..config import TrainConfig
from ..console import Reporter
from ..data.cache import ArrayCache
from ..data.loading import LoadedSource, RowView, TensorSet, load_source
from ..data.sources import DataSource, open_source, split_folders
from ..data.split import Record, write_manifest
from ..data.transforms import Preprocessing, channel_stats
from ..defaults import imbalance, per_process_batch, scaled_lr
from ..errors import OculiError, WeightsUnavailable
from ..io import atomic_write_csv, atomic_write_json, exclusive_lock, remove_temp_files
from ..models import Weights, count_parameters
from ..plan import Plan, resolve_plan
from ..route import finetune_part, head_first, plan_words, stages, trains_backbone
from ..rundir import RunDir
from ..runtime.engines import place_model, resolve_device
from ..runtime.world import World, process_group, rank_device, restart_count, world as this_world
from ..version import __version__
from .checkpoint import load_checkpoint, save_checkpoint
from .distributed import (broadcast_module, broadcast_object, claimed_by_main, convert_sync_bn, local_main_first,
                          run_id, silence, use_sync_bn)
from .finish import finish
from .loop import ImageData, Learner, LoopSettings, LoopState, copy_state
from .optim import build_optimizer
from .partial import CachedTop, TopOfModel, cached_top, trainable_top
from .trackers import RunLog, check_trackers, run_log
from .transfer import features_phase, freeze, gradual_unfreezing


@dataclass
class RunResult:
    run_dir: Path
    config: TrainConfig
    classes: list[str]
    history: list[dict]
    test_metrics: dict | None  # None: no held-out images to evaluate on
    skipped: list[tuple[str, str]]
    # The data the run read, still open: what comes next (the report) reads its images without a new scan.
    source: DataSource | None = field(default=None, repr=False, compare=False)
    # No load() here: training sits below deploy (predict), so oculi.load(result.run_dir) loads the model.


def train(cfg: TrainConfig, reporter: Reporter | None = None) -> RunResult:
    """Train a new run from ``cfg`` (on every process of a torchrun job: see training.distributed)."""
    cfg.validate()
    world = this_world()
    cfg = dataclasses.replace(cfg, world_size=world.size)
    reporter = reporter or _reporter(cfg, world)
    given = cfg.data
    cfg = _with_absolute_paths(cfg)
    with process_group(world, resolve_device(cfg.device)):
        # After a worker died, torchrun starts the group again: it goes on from the run's checkpoint.
        restarted = broadcast_object(world, _restarted_run(cfg) if world.main else None)
        if restarted is not None:
            reporter.info(f"restart {restart_count()} of this job: going on with {restarted}")
            return _resume(Path(restarted), reporter, world)
        if cfg.out:
            _check_new_run_dir(Path(cfg.out))  # now, before minutes of data loading; again once claimed

        def claim() -> ContextManager[Path]:
            run_dir = _make_dir(Path(cfg.out)) if cfg.out else next_run_dir(Path("runs"), _data_name(cfg.data))
            return _claimed(run_dir, fresh=True)

        return _run(cfg, claim, reporter, resume=False, given=given)


def resume(run_dir: str | Path, reporter: Reporter | None = None) -> RunResult:
    """Continue a run from its last checkpoint (same config, same split), with as many processes as this
    job has (which may differ from the run's)."""
    run_dir, world = Path(run_dir), this_world()
    run = RunDir(run_dir)
    if not run.config.is_file():
        raise OculiError(f"--resume: {run_dir} is not a run folder (no {run.config.name})")
    # The backend follows the run's device; one process needs none (and reads the plan under its lock).
    device = resolve_device(_saved_plan(run).config.device) if world.size > 1 else None
    with process_group(world, device):
        return _resume(run_dir, reporter, world)


def _resume(run_dir: Path, reporter: Reporter | None, world: World) -> RunResult:
    run = RunDir(run_dir)
    with claimed_by_main(world, lambda: _claimed(run_dir, fresh=False)):
        if run.model_json.is_file():
            raise OculiError(f"--resume: {run_dir} already finished (it has {run.model_json.name}); "
                             f"start a new run to train again")
        plan = _saved_plan(run)
        cfg = dataclasses.replace(plan.config, split_manifest=str(run.split))
        reporter = reporter or _reporter(cfg, world)
        cfg = _for_world(cfg, world, reporter)
        plan = dataclasses.replace(plan, config=cfg)
        if not run.checkpoint.is_file():
            # Killed before its first epoch ended (or a features run, which keeps none): training again
            # from the start gives what the uninterrupted run would have, so do it, but say so.
            reporter.warn(f"{run_dir} has no checkpoint ({run.checkpoint.name}): training it again from the start")
        return _run(cfg, lambda: nullcontext(run_dir), reporter, resume=True, saved=plan)


def _reporter(cfg: TrainConfig, world: World) -> Reporter:
    """What this process prints: rank 0 everything (``cfg.progress``), the other ranks nothing."""
    reporter = Reporter(quiet=not cfg.progress)
    if not world.main:
        silence(reporter)
    return reporter


def _restarted_run(cfg: TrainConfig) -> str | None:
    """After torchrun restarted this job's workers, the unfinished run it had started: --out, or the
    runs/<data>* folder whose config.json names this job's rendezvous id; None on a first start."""
    if restart_count() == 0:
        return None
    folders = [Path(cfg.out)] if cfg.out else sorted(Path("runs").glob(f"{_data_name(cfg.data)}*"))
    for folder in folders:
        run = RunDir(folder)
        if not run.config.is_file() or run.model_json.is_file():
            continue
        if cfg.out or (run_id() is not None and run.read_config().get("torchrun_job") == run_id()):
            return str(folder)
    return None


def _for_world(cfg: TrainConfig, world: World, reporter: Reporter) -> TrainConfig:
    """A resumed run's config for this job's number of processes: the same step's batch shared among them
    (when it does not divide, each takes the floor and the lr follows the smaller step, as a new run's would)."""
    if cfg.world_size == world.size:
        return cfg
    global_batch = cfg.batch_size * cfg.world_size
    batch = per_process_batch(global_batch, world.size)
    lr = scaled_lr(cfg.lr, cfg.optimizer, batch * world.size / global_batch)
    reporter.info(f"resuming with {world.size} process{'es' * (world.size > 1)} (the run had {cfg.world_size}): "
                  f"batch {batch} per process, global batch {batch * world.size} (was {global_batch})"
                  + (f", lr {lr:g} (was {cfg.lr:g})" if lr != cfg.lr else ""))
    return dataclasses.replace(cfg, world_size=world.size, batch_size=batch, lr=lr)


def _saved_plan(run: RunDir) -> Plan:
    """The plan a run saved, or a one-line OculiError naming the file."""
    path = run.config
    try:
        saved = run.read_config()
    except OculiError as err:
        raise OculiError(f"--resume: {err}") from None
    try:
        TrainConfig.from_dict(saved["config"]).validate()  # a bad setting named before a missing part
        return Plan.from_dict(saved)
    except OculiError as err:
        raise OculiError(f"--resume: {path}: {err}") from None
    except (KeyError, TypeError, ValueError) as err:
        raise OculiError(f"--resume: {path} is not a whole run plan ({type(err).__name__}: {err})") from None


def next_run_dir(parent: Path, name: str) -> Path:
    """runs/<name>, then runs/<name>-2, -3, ...: the first one this call creates. mkdir either creates a
    folder or fails, in one step, so two runs started together never get the same one."""
    parent.mkdir(parents=True, exist_ok=True)
    n = 1
    while True:
        candidate = parent / (name if n == 1 else f"{name}-{n}")
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            n += 1


def _check_new_run_dir(run_dir: Path, held: bool = False) -> None:
    if run_dir.exists() and not run_dir.is_dir():
        raise OculiError(f"--out {run_dir} is a file, not a folder; choose a folder for the run")
    run = RunDir(run_dir)
    if run.model_json.exists():
        raise OculiError(f"--out {run_dir} already holds a finished run; choose another folder")
    if run.checkpoint.exists():
        if not held:  # a checkpoint may be a live run's: then "in use" is what the user needs to hear
            with exclusive_lock(run.lock, _busy_message(run_dir)):
                pass
        raise OculiError(f"--out {run_dir} holds an unfinished run; --resume it or choose another folder")


def _make_dir(run_dir: Path) -> Path:
    _check_new_run_dir(run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OculiError(f"--out {run_dir}: cannot create the folder ({err.strerror or err})") from None
    return run_dir


@contextmanager
def _claimed(run_dir: Path, fresh: bool) -> Iterator[Path]:
    """``run_dir``, held by this process until the block ends: a second run or resume of the same folder
    fails at once instead of overwriting this one's files."""
    with exclusive_lock(RunDir(run_dir).lock, _busy_message(run_dir)):
        if fresh:  # checked again under the lock: a run may have finished here since the first check
            _check_new_run_dir(run_dir, held=True)
        yield run_dir


def _busy_message(run_dir: Path) -> Callable[[str], OculiError]:
    def busy(holder: str) -> OculiError:
        return OculiError(f"{run_dir} is in use by another oculi run ({holder}); wait for it to finish "
                          f"or use another folder")
    return busy


def _data_name(data: str) -> str:
    return Path(data).expanduser().resolve().name if Path(data).expanduser().exists() else data


def _run(cfg: TrainConfig, claim: Callable[[], ContextManager[Path]], reporter: Reporter, resume: bool,
         given: str | None = None, saved: Plan | None = None) -> RunResult:
    """Open the data, plan the run (or take the ``saved`` plan of a resumed one), build the model, then
    train in the folder ``claim()`` holds for the rest of the run."""
    check_trackers(cfg.log, cfg.mlflow_uri)  # a missing tracker package, named before minutes of work
    world = this_world()
    device = rank_device(resolve_device(cfg.device), world)
    # A built-in set is downloaded by one process per machine; the others then find it there.
    with local_main_first(world), reporter.download(f"downloading {cfg.data}") as progress:
        source = open_source(cfg.data, cfg.val_split, cfg.test_split, cfg.seed, cfg.split_manifest,
                             cfg.data_dir, progress)
    for warning in source.warnings:
        reporter.warn(warning)
    plan = saved or resolve_plan(cfg, source, device.type)
    # Built before any image is decoded: weights that cannot be had change the plan (and so the pixels).
    model, weights, plan = _build_model(plan, cfg, source, device.type, reporter)
    with claimed_by_main(world, claim) as run_dir:
        return _train_in(run_dir, plan, model, weights, source, device, reporter, resume, given, world)


def _train_in(run_dir: Path, plan: Plan, model, weights: Weights | None, source: DataSource, device,
              reporter: Reporter, resume: bool, given: str | None, world: World) -> RunResult:
    """Train in ``run_dir``; with several processes, every rank trains and rank 0 alone writes."""
    run = RunDir(run_dir)
    cfg = plan.config
    if world.main:
        remove_temp_files(run_dir)  # a killed run's half-written files: nobody else writes here while we hold it
    # One process per machine decodes into the cache; the others then read it.
    with local_main_first(world) if cfg.cache else nullcontext():
        loaded = _load_sets(source, plan.preprocessing, cfg.cache, reporter)
    sets, skipped = loaded.sets, loaded.skipped
    if world.main:
        _report_skipped(skipped, run, reporter)
    sets = _checked(source, loaded, cfg.drop_leaks, run_dir, reporter, world)
    _check_trainable(sets["train"], source)
    plan = plan.with_statistics(*_statistics(weights, sets["train"]))
    # A resume without a checkpoint (killed before its first epoch ended) starts like a new run.
    restoring = resume and run.checkpoint.is_file()
    if hasattr(model, "init_from_data") and not restoring:
        _init_from_data(model, sets["train"], plan.preprocessing, cfg.seed)
    if not resume and world.main:
        write_manifest(run.split, _used_records(sets), source.classes)
        job = {"torchrun_job": run_id()} if world.size > 1 else {}  # how a restarted job finds its run
        atomic_write_json(run.config, {"oculi_version": __version__, "data_as_given": given, **job,
                                       **plan.to_dict()})
    _print_plan(plan, source, sets, model, device, weights, reporter)
    # --log: TensorBoard, MLflow (rank 0's; the others log nothing)
    with run_log(cfg if world.main else dataclasses.replace(cfg, log="none"), run.path, source.name, reporter) as log:
        state = _fit(model, plan, sets, source, device, run, reporter, restoring, log, world)
        model.load_state_dict(state.best_state)
        metrics = finish(model, plan, source, sets, weights, state, device, run, reporter, world)
        result = RunResult(run.path, cfg, source.classes, state.prior + state.history, metrics, skipped, source)
        log.log_results(result.test_metrics)
    return result


def _checked(source: DataSource, loaded: LoadedSource, drop_leaks: bool, run_dir: Path, reporter: Reporter,
             world: World) -> dict[str, TensorSet]:
    """The data check at train start, by rank 0 (it writes check.json); with --drop-leaks every rank leaves
    out the val/test images it found copying a training image."""
    leaks = check_at_train_start(source, loaded, drop_leaks, run_dir, reporter) if world.main else set()
    leaks = broadcast_object(world, leaks)
    return {split: without(data, leaks) for split, data in loaded.sets.items()}


def _with_absolute_paths(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` with its paths made absolute, so that config.json still finds them when ``--resume`` runs
    from another working directory."""
    return dataclasses.replace(cfg, data=_absolute(cfg.data), data_dir=_absolute(cfg.data_dir),
                               weights=_absolute(cfg.weights), split_manifest=_absolute(cfg.split_manifest))


def _absolute(path: str | None) -> str | None:
    """An existing path, absolute; anything else (a built-in dataset's name, None) as it is."""
    if path is None or not Path(path).expanduser().exists():
        return path
    return str(Path(path).expanduser().resolve())


def _load_sets(source: DataSource, preprocessing: Preprocessing, cache: bool, reporter: Reporter) -> LoadedSource:
    """Decode and prepare every image once; bad files are collected, not fatal."""
    with reporter.bar("decoding images", len({r.path for r in source.records})) as advance:
        loaded = load_source(source, preprocessing, advance, ArrayCache("images") if cache else None)
    for split, data in loaded.sets.items():
        if isinstance(data.images, RowView):
            reporter.info(f"{split} images ({data.images.nbytes / 2**30:.1f} GiB, more than half the free memory) "
                          f"are read from the decoded-image cache as batches need them")
    return loaded


def _report_skipped(skipped: list[tuple[str, str]], run: RunDir, reporter: Reporter) -> None:
    atomic_write_csv(run.skipped, ["path", "reason"], skipped)
    if skipped:
        first = "; ".join(f"{p} ({r})" for p, r in skipped[:3])
        more = f" and {len(skipped) - 3} more" if len(skipped) > 3 else ""
        reporter.warn(f"skipped {len(skipped)} file{'s' if len(skipped) > 1 else ''}: {first}{more} "
                      f"(full list: {run.skipped})")


def _check_trainable(train: TensorSet, source: DataSource) -> None:
    counts = torch.bincount(train.labels, minlength=len(source.classes))
    empty = [c for c, n in zip(source.classes, counts.tolist()) if n == 0]
    if empty:
        raise OculiError(f"class '{empty[0]}' has no readable training images")


def _build_model(plan: Plan, asked: TrainConfig, source: DataSource, device_type: str, reporter: Reporter):
    """The model, its weights' origin, and the plan: planned again for from-scratch training when no
    weights could be had and the user had not asked for them."""
    def build(p: Plan):
        torch.manual_seed(p.config.seed)  # the same initial weights on every run of this seed
        model, weights = p.model.create(p.config.pretrained, p.config.weights)
        if p.route == "features":
            freeze(model.backbone)
        return model, weights, p
    try:
        return build(plan)
    except WeightsUnavailable as err:
        if (asked.pretrained, asked.weights, asked.mode) != (None, None, "auto"):
            raise
        reporter.warn(f"{err}; training {plan.model.name} from scratch")
        return build(resolve_plan(dataclasses.replace(asked, model=plan.model.name, pretrained=False), source,
                                  device_type))


def _statistics(weights: Weights | None, train: TensorSet) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The normalising mean and std: pretrained weights bring their own, from scratch the training set's."""
    return (weights.mean, weights.std) if weights is not None else channel_stats(train.images)


def _init_from_data(model, train: TensorSet, preprocessing: Preprocessing, seed: int, sample: int = 5000) -> None:
    """Layers set from the data before training (fast-cnn's patch whitening), from a seeded sample."""
    index = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[:sample]
    model.init_from_data(preprocessing.normalize(train.images[index]))


def _used_records(sets: dict[str, TensorSet]) -> list[Record]:
    """The records that were actually decoded, in order: the split manifest a resume reuses."""
    return [Record(path, label, split) for split, s in sets.items()
            for path, label in zip(s.paths, s.labels.tolist())]


def _print_plan(plan: Plan, source, sets, model, device, weights, reporter) -> None:
    cfg, route = plan.config, plan.route
    sizes = ", ".join(f"{len(s)} {k}" for k, s in sets.items())
    reporter.info(f"[bold]data[/bold]   {source.name}: {len(source.classes)} classes, {sizes}")
    train_folder = _train_folder_split_for_test(source)
    if train_folder:
        reporter.info(f"       no test/ folder: {cfg.test_split:.0%} of {train_folder}/ held out as test; "
                      f"--test-split 0 to keep all")
    origin = f"pretrained ({weights.source})" if weights else "from scratch"
    reporter.info(f"[bold]model[/bold]  {cfg.model}, {origin}, {count_parameters(model):,} trainable parameters, "
                  f"input {cfg.channels}x{cfg.image_size[0]}x{cfg.image_size[1]} ({cfg.resize}), {cfg.head} head")
    reporter.info(f"[bold]train[/bold]  {plan_words(cfg, route)}")
    reporter.info(f"       batch {_describe_batch(cfg)}, {cfg.optimizer}, {cfg.schedule} schedule, augment {cfg.augment}, "
                  f"test-time augmentation {cfg.tta}, "
                  f"seed {cfg.seed}, device {device}")
    if cfg.select_by == "macro-f1" or cfg.class_weights != "none" or cfg.sampler != "shuffle":
        reporter.info(f"       {_describe_balance(cfg, source)}")


def _describe_balance(cfg: TrainConfig, source: DataSource) -> str:
    """How the run treats unequal classes: which val score keeps the epoch, how the loss and draws weigh them."""
    ratio = imbalance(source)
    weighting = [w for w, on in (("class-weighted loss", cfg.class_weights == "auto"),
                                 ("balanced sampling", cfg.sampler == "balanced")) if on]
    return (f"classes {ratio:.1f}:1 (largest:smallest in train); keeps the epoch with the best val "
            f"{'macro-F1' if cfg.select_by == 'macro-f1' else 'accuracy'}; "
            + (", ".join(weighting) if weighting else "--class-weights auto or --sampler balanced weigh the small classes up"))


def _describe_batch(cfg: TrainConfig) -> str:
    """The batch size, and with several processes or accumulation what a step takes in all."""
    if cfg.world_size == 1 and cfg.accumulate == 1:
        return str(cfg.batch_size)
    per = f"{cfg.batch_size} per process x {cfg.world_size}" + (f" x {cfg.accumulate} accumulated"
                                                                 if cfg.accumulate > 1 else "")
    return f"{per} = {cfg.batch_size * cfg.world_size * cfg.accumulate} per step"


def _train_folder_split_for_test(source: DataSource) -> str | None:
    """The name of the train/ folder the test images were taken out of, when the data has one but no
    test/ folder (the user may expect every image in train/ to be trained on)."""
    folders = split_folders(source.root) if source.root is not None else {}
    if "train" not in folders or "test" in folders or not source.split_records("test"):
        return None
    return folders["train"].name


def _loop_settings(cfg: TrainConfig, train: TensorSet, num_classes: int, device) -> LoopSettings:
    """The Learner's settings; the batch is each process's (every process has at least one image)."""
    weights = None
    if cfg.class_weights == "auto":
        counts = torch.bincount(train.labels, minlength=num_classes).float().clamp_min(1)
        weights = (len(train) / (num_classes * counts)).to(device)
    return LoopSettings(epochs=cfg.epochs, batch_size=max(1, min(cfg.batch_size, len(train) // cfg.world_size)),
                        lr=cfg.lr, accumulate=cfg.accumulate,
                        schedule=cfg.schedule, warmup_epochs=cfg.warmup_epochs,
                        label_smoothing=cfg.label_smoothing, patience=cfg.patience, head=cfg.head,
                        lookahead=bool(cfg.lookahead), mixed_precision=cfg.mixed_precision,
                        seed=cfg.seed, sampler=cfg.sampler, class_weights=weights,
                        select_by=cfg.select_by,  # "auto" only in plans from before it existed: accuracy
                        time_budget=cfg.time_budget)


def _fit(model, plan: Plan, sets, source, device, run: RunDir, reporter, restoring: bool, log: RunLog,
         world: World) -> LoopState:
    """Train ``model`` as the plan's mode says: a head on frozen features, then (or only) the whole network;
    ``restoring``: from the run's checkpoint. ``log`` gets every epoch's row as metrics.jsonl does."""
    cfg, preprocessing = plan.config, plan.preprocessing
    settings = _loop_settings(cfg, sets["train"], len(source.classes), device)
    # A features run never trains a BatchNorm: nothing to synchronise.
    if trains_backbone(plan.route) and use_sync_bn(cfg.sync_bn, settings.batch_size, world):
        model = convert_sync_bn(model, device)
    place_model(model, device)
    state = LoopState()
    top = cached_top(model, plan, sets, device, reporter) if finetune_part(plan.route) == "top" else None
    # A resumed run past its features phase finds that phase's result in the checkpoint.
    if head_first(plan.route) and not restoring:
        feats = top.features(device) if top is not None else None
        head_state = _features_phase(model, plan, sets, settings, device, reporter, world, feats)
        if plan.route == "features":
            log.log_epochs(head_state.history)
            head_state = dataclasses.replace(head_state, best_state=copy_state(model))
            _write_marked_log(head_state, run, world)
            return head_state
        state = LoopState(best_state=copy_state(model), baseline=head_state.best_row, prior=head_state.history,
                          baseline_state=copy_state(model), out_of_fold=head_state.out_of_fold,
                          predicted={"baseline": head_state.predicted["best"]} if "best" in head_state.predicted else {})
        reporter.info(_finetune_plan(state.baseline, top))
    optimizer = build_optimizer(model, cfg.optimizer, cfg.lr, cfg.weight_decay, cfg.momentum,
                                cfg.backbone_lr if plan.route != "scratch" else 1.0)
    if restoring:
        state = _restore(model, optimizer, run, device, reporter, world)

    def on_epoch_end(s: LoopState) -> None:
        if not world.main:
            return
        run.write_metrics_log(s.prior + s.history)
        log.log_epochs(s.prior + s.history)
        save_checkpoint(run.checkpoint, model.state_dict(), s.best_state, optimizer,
                        {"epoch": s.epoch, "best_epoch": s.best_epoch, "history": s.history,
                         "baseline": s.baseline, "prior": s.prior, "predicted": s.predicted},
                        s.baseline_state, s.out_of_fold)

    if plan.route != "scratch":
        model.frozen_norm = True
    on_epoch_start = _on_epoch_start(model, plan)
    settings = dataclasses.replace(settings, phase="finetune" if plan.route != "scratch" else "train")
    if top is not None:  # the top stages on their cached inputs; the state dicts stay the whole model's
        trainable_top(model, top.split)
        net, data = TopOfModel(model, top.split), top.data(plan.augmentation)
    else:
        net, data = model, ImageData(sets["train"], sets["val"], preprocessing, plan.augmentation)
    learner = Learner(net, optimizer, settings, data, device, reporter, on_epoch_start=on_epoch_start,
                      on_epoch_end=on_epoch_end, world=world)
    state = learner.fit(state)
    if state.baseline is not None:
        _say_what_was_kept(state, reporter)
    _write_marked_log(state, run, world)
    return state


def _write_marked_log(state: LoopState, run: RunDir, world: World) -> None:
    """metrics.jsonl once the kept weights are chosen: the row they were measured in says ``"kept": true``
    (a features head's row when the head won), every other row ``false``."""
    if not world.main:
        return
    kept = state.best_row
    key = None if kept is None else (kept.get("phase"), kept.get("epoch"))
    run.write_metrics_log([{**row, "kept": (row.get("phase"), row.get("epoch")) == key}
                           for row in state.prior + state.history])


def _features_phase(model, plan: Plan, sets, settings, device, reporter, world: World, feats=None) -> LoopState:
    """``transfer.features_phase`` on every rank: one process per machine fills the features cache first,
    and rank 0's head (and its history) is the one every rank keeps."""
    with local_main_first(world) if plan.config.cache else nullcontext():
        head_state = features_phase(model, plan, sets, settings, device, reporter, feats)
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


def _say_what_was_kept(state: LoopState, reporter: Reporter) -> None:
    if state.decision is not None:  # None: no val images; _finetune_plan said the last epoch is kept
        reporter.info(f"[bold]kept[/bold]   {state.decision['words']}")


def _restore(model, optimizer, run: RunDir, device, reporter, world: World) -> LoopState:
    """The run's state from its checkpoint, read by rank 0 and sent to the others."""
    model_state, best_state, optim_state, meta = broadcast_object(
        world, load_checkpoint(run.checkpoint) if world.main else None)
    model.load_state_dict(model_state)
    optimizer.load_state_dict(optim_state)
    reporter.info(f"resuming {run.path} after epoch {meta['epoch']}")
    on_device = lambda state: None if state is None else {k: v.to(device) for k, v in state.items()}
    return LoopState(epoch=meta["epoch"], history=meta["history"], best_state=on_device(best_state),
                     best_epoch=meta["best_epoch"], baseline=meta.get("baseline"), prior=meta.get("prior", []),
                     baseline_state=on_device(meta.get("baseline_state")), predicted=meta.get("predicted", {}),
                     out_of_fold=meta.get("out_of_fold"))
