"""What a run says about its plan before it trains: the data, the model, the route and its settings, in
the few lines the user reads first."""

from __future__ import annotations

from ..config import TrainConfig
from ..data.sources import DataSource, split_folders
from ..defaults import imbalance
from ..models import count_parameters
from ..route import plan_words
from .context import RunContext


def print_plan(ctx: RunContext, model) -> None:
    """The plan lines: data and split sizes, the model and its weights, the route, the loop's settings."""
    plan, source, sets, weights, reporter = ctx.plan, ctx.source, ctx.sets, ctx.weights, ctx.reporter
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
                  f"seed {cfg.seed}, device {ctx.device}")
    if cfg.select_by == "macro-f1" or cfg.class_weights != "none" or cfg.sampler != "shuffle":
        reporter.info(f"       {describe_balance(cfg, source)}")


def describe_balance(cfg: TrainConfig, source: DataSource) -> str:
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
    test/ folder (the user may expect every image in train/ to be trained on). A table's rows are not
    folders: its data line gives the split."""
    folders = split_folders(source.root) if source.root is not None and source.table is None else {}
    if "train" not in folders or "test" in folders or not source.split_records("test"):
        return None
    return folders["train"].name
