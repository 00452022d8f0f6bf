"""What a run says about its plan before it trains: the data, the model, the route and its settings, in
the few lines the user reads first."""

from __future__ import annotations

from ..config import TrainConfig
from ..data.sources import DataSource, split_folders
from ..defaults import imbalance
from ..models import count_parameters
from ..data.transforms import Augmentation
from ..route import finetune_part, head_first, plan_words
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
    recipe = describe_recipe(plan.augmentation, cfg.ema_decay)
    if recipe:
        reporter.info(f"       {recipe}")
    for warning in recipe_warnings(plan.augmentation, cfg.ema_decay, route):
        reporter.warn(warning)
    if cfg.select_by == "macro-f1" or cfg.class_weights != "none" or cfg.sampler != "shuffle":
        reporter.info(f"       {describe_balance(cfg, source)}")


def describe_recipe(augmentation: Augmentation | None, ema_decay: float | None) -> str:
    """The modern recipe's parts a run uses (per-image policy, erasing, batch mixing, EMA); "" for none."""
    aug = augmentation or Augmentation(flip=False, translate=0.0)
    parts = [f"{aug.auto_augment} per image" if aug.auto_augment != "none" else "",
             f"random erasing {aug.erasing:g}" if aug.erasing else "",
             f"MixUp {aug.mixup:g}" if aug.mixup else "", f"CutMix {aug.cutmix:g}" if aug.cutmix else "",
             f"EMA of the weights (decay {ema_decay:g}, a {1 / (1 - ema_decay):.0f}-step horizon)"
             if ema_decay is not None else ""]
    return ", ".join(p for p in parts if p)


def recipe_warnings(augmentation: Augmentation | None, ema_decay: float | None, route: str) -> list[str]:
    """What the route cannot do of what was asked, said rather than silently left out: MixUp and CutMix mix
    batches of images, which a head on cached features and the top on cached activations never see; --ema
    averages the training of a network, not of a features head."""
    warnings, part = [], finetune_part(route)
    if augmentation is not None and augmentation.mixes and part not in ("whole", "scratch"):
        warnings.append("MixUp/CutMix are not applied: this run trains on cached features or activations, "
                        "not on batches of images (--mode finetune with --unfreeze-stages unset, or scratch, do)")
    elif augmentation is not None and augmentation.mixes and head_first(route):
        warnings.append("MixUp/CutMix apply to fine-tuning only, not to the head on cached features before it")
    if ema_decay is not None and part is None:
        warnings.append("--ema is not applied: a head on cached features trains alone (fine-tuning or scratch "
                        "runs average their weights)")
    return warnings


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
