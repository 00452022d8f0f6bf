"""One training run, start to finish: data -> model -> fit -> evaluate -> bundle and plots. report.html is
written after it by the caller (the CLI and the API), so that training never depends on reporting.

Everything a run writes lives in its run folder; every file there is written atomically, and a
checkpoint after each epoch lets ``--resume`` finish a killed run with the same result. model.json is
the last file of a run, so a folder that has it is complete. A run holds its folder (``folder.claimed``)
for its whole life, so two runs never write into one folder.

The steps live beside it: ``folder`` (choosing and claiming the run folder), ``plan_line`` (what the run says
before it trains), ``fitting`` (the route's phases and what is kept), ``finish`` (calibration, test figures,
the bundle); once the data is loaded they share one ``RunContext``.
"""

from __future__ import annotations

import dataclasses
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ContextManager

import torch

from ..check.run import check_at_train_start, set_records, without
from ..config import TrainConfig
from ..console import Reporter
from ..data.loading import LoadedSource, RowView, TensorSet, class_counts, load_with_progress
from ..data.sources import DataSource, open_configured
from ..data.split import write_manifest
from ..data.transforms import Preprocessing, channel_stats
from ..defaults import per_process_batch, scaled_lr
from ..errors import OculiError, WeightsUnavailable
from ..io import atomic_write_csv, atomic_write_json, remove_temp_files
from ..models import Weights
from ..plan import Plan, resolve_plan
from ..rundir import RunDir
from ..runtime.engines import resolve_device
from ..runtime.world import World, process_group, rank_device, restart_count, world as this_world
from ..version import __version__
from .context import RunContext
from .distributed import broadcast_object, claimed_by_main, local_main_first, run_id, silence
from .finish import finish
from .fitting import fit
from .folder import check_new_run_dir, claimed, data_name, make_run_dir, next_run_dir, restarted_run, saved_plan
from .plan_line import print_plan
from .trackers import check_trackers, run_log
from .transfer import freeze


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
        restarted = broadcast_object(world, restarted_run(cfg) if world.main else None)
        if restarted is not None:
            reporter.info(f"restart {restart_count()} of this job: going on with {restarted}")
            return _resume(Path(restarted), reporter, world)
        if cfg.out:
            check_new_run_dir(Path(cfg.out))  # now, before minutes of data loading; again once claimed

        def claim() -> ContextManager[Path]:
            run_dir = make_run_dir(Path(cfg.out)) if cfg.out else next_run_dir(Path("runs"), data_name(cfg.data))
            return claimed(run_dir, fresh=True)

        return _run(cfg, claim, reporter, resume=False, given=given)


def resume(run_dir: str | Path, reporter: Reporter | None = None) -> RunResult:
    """Continue a run from its last checkpoint (same config, same split), with as many processes as this
    job has (which may differ from the run's)."""
    run_dir, world = Path(run_dir), this_world()
    run = RunDir(run_dir)
    if not run.config.is_file():
        raise OculiError(f"--resume: {run_dir} is not a run folder (no {run.config.name})")
    # The backend follows the run's device; one process needs none (and reads the plan under its lock).
    device = resolve_device(saved_plan(run).config.device) if world.size > 1 else None
    with process_group(world, device):
        return _resume(run_dir, reporter, world)


def _resume(run_dir: Path, reporter: Reporter | None, world: World) -> RunResult:
    run = RunDir(run_dir)
    with claimed_by_main(world, lambda: claimed(run_dir, fresh=False)):
        if run.model_json.is_file():
            raise OculiError(f"--resume: {run_dir} already finished (it has {run.model_json.name}); "
                             f"start a new run to train again")
        plan = saved_plan(run)
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


def _run(cfg: TrainConfig, claim: Callable[[], ContextManager[Path]], reporter: Reporter, resume: bool,
         given: str | None = None, saved: Plan | None = None) -> RunResult:
    """Open the data, plan the run (or take the ``saved`` plan of a resumed one), build the model, then
    train in the folder ``claim()`` holds for the rest of the run."""
    check_trackers(cfg.log, cfg.mlflow_uri)  # a missing tracker package, named before minutes of work
    world = this_world()
    device = rank_device(resolve_device(cfg.device), world)
    # A built-in set is downloaded by one process per machine; the others then find it there.
    with local_main_first(world), reporter.download(f"downloading {cfg.data}") as progress:
        source = open_configured(cfg, progress, cfg.split_manifest)
    for warning in source.warnings:
        reporter.data_warning(warning)
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
    if world.main:
        _report_skipped(loaded.skipped, run, reporter)
    sets = _checked(source, loaded, cfg.drop_leaks, run_dir, reporter, world)
    _check_trainable(sets["train"], source)
    plan = plan.with_statistics(*_statistics(weights, sets["train"]))
    ctx = RunContext(plan, source, sets, device, run, reporter, world, weights)
    # A resume without a checkpoint (killed before its first epoch ended) starts like a new run.
    restoring = resume and run.checkpoint.is_file()
    if hasattr(model, "init_from_data") and not restoring:
        _init_from_data(model, sets["train"], plan.preprocessing, cfg.seed)
    if not resume and world.main:
        _write_plan(ctx, given)
    print_plan(ctx, model)
    # --log: TensorBoard, MLflow (rank 0's; the others log nothing)
    with run_log(cfg if world.main else dataclasses.replace(cfg, log="none"), run.path, source.name, reporter) as log:
        state = fit(model, ctx, restoring, log)
        model.load_state_dict(state.best_state)
        metrics = finish(model, ctx, state)
        result = RunResult(run.path, cfg, source.classes, state.prior + state.history, metrics, loaded.skipped,
                           source)
        log.log_results(result.test_metrics)
    return result


def _write_plan(ctx: RunContext, given: str | None) -> None:
    """split.csv (the records a resume reuses) and config.json (the whole plan), written once by a new run."""
    write_manifest(ctx.run.split, set_records(ctx.sets), ctx.source.classes)
    job = {"torchrun_job": run_id()} if ctx.world.size > 1 else {}  # how a restarted job finds its run
    atomic_write_json(ctx.run.config, {"oculi_version": __version__, "data_as_given": given, **job,
                                       **ctx.plan.to_dict()})


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
    return dataclasses.replace(cfg, data=_absolute(cfg.data), data_dir=_absolute(cfg.data_dir), images=_absolute(cfg.images),
                               weights=_absolute(cfg.weights), split_manifest=_absolute(cfg.split_manifest))


def _absolute(path: str | None) -> str | None:
    """An existing path, absolute; anything else (a built-in dataset's name, None) as it is."""
    if path is None or not Path(path).expanduser().exists():
        return path
    return str(Path(path).expanduser().resolve())


def _load_sets(source: DataSource, preprocessing: Preprocessing, cache: bool, reporter: Reporter) -> LoadedSource:
    """Decode and prepare every image once; bad files are collected, not fatal."""
    loaded = load_with_progress(source, preprocessing, reporter, cache)
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
        said = f"skipped {len(skipped)} file{'s' if len(skipped) > 1 else ''}: {first}{more}"
        reporter.data_warning(f"{said} (full list: {run.skipped})", key=said)


def _check_trainable(train: TensorSet, source: DataSource) -> None:
    counts = class_counts(train.labels, len(source.classes))
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


