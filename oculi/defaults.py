"""Choosing what the user left on "auto", from a cheap look at the data.

Small images (at most 64 px a side) train a from-scratch CNN at their own size; photos get a
pretrained backbone at its own input size when weights are available, else a from-scratch CNN.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch

from .config import IMBALANCE_RATIO, TrainConfig
from .data.decode import read_image_size
from .data.sources import DataSource
from .data.split import label_counts
from .errors import ImageDecodeError, OculiError
from .models import create_model, default_head, get_model_info, is_timm_model, offline_weights_file
from .models.cut import TopCost, top_costs
from .models.pretrained import pretrained_feed_size

SMALL_IMAGE_MAX_SIDE = 64
SMALL_DEFAULT_MODEL = "fast-cnn"
PHOTO_PRETRAINED_MODEL = "efficientnet_lite0"
PHOTO_SCRATCH_MODEL, PHOTO_SCRATCH_SIZE = "simple-cnn", (128, 128)
# After a head on features, a few epochs of fine-tuning: most of its gain comes early.
AUTO_FINETUNE_EPOCHS = 5
# On a CPU, auto fine-tunes the backbone's last stages only, from their cached inputs (training.partial): an epoch
# of the whole network at 288 px costs as much as the whole features phase (~0.07 s per image forward and
# backward on 2 cores). As many stages as the time budget affords for at least CPU_MIN_EPOCHS epochs, at most
# CPU_MAX_STAGES: on 2,000 CIFAR images enlarged to 128 px (5 classes) one stage gained 1.4 points of test
# accuracy over the features head, two stages 3.6, three (2 epochs in the budget) 3.2 (BENCHMARKS.md).
CPU_MAX_STAGES = 2
CPU_MIN_EPOCHS, CPU_PARTIAL_EPOCHS = 4, 8
# ...within a time budget that fits a laptop user's patience; the features model is ready before it starts.
CPU_TIME_BUDGET = 180.0
# What one multiply-accumulate of the top's forward pass costs per training image and epoch (forward,
# backward, and the val pass's share) on the 2-core development machine, quiet, bfloat16 steps:
# efficientnet_lite0's last two stages (232 MMAC at 288 px) took 28-33 s an epoch of 1,800 images (7.2e-11 s),
# 3.6-4.6 s on 221 (7-9e-11 s, the fixed costs of an epoch weighing more).
CPU_SECONDS_PER_MAC = 7.5e-11
# The activations of every training and val image stay in memory (float16): at most this much.
ACTIVATION_MEMORY = 2 * 2**30
# The learning rate of the head when the top stages train on their cached inputs (the stages: x --backbone-lr,
# 1e-4): on cifar5-128, two stages, 87.2% test with it against 84.4% with the general 3e-4 (same 84.5% val);
# on hymenoptera (exploration, two stages, BatchNorm frozen) 94.8% best val against 92.8% (BENCHMARKS.md).
CPU_PARTIAL_LR = 1e-3
# Fine-tuning from cached activations stops after this many epochs that do not beat the best so far.
CPU_FINETUNE_PATIENCE = 3
# A head on frozen features cannot augment: it sees augmented views only as extra cached vectors. A small set
# gets views until about FEATURE_HEAD_VECTORS vectors in all (at most MAX_AUTO_VIEWS a image; each view costs
# one backbone pass per image): on hymenoptera (221 training images, 8 views) +0.65 points of val accuracy
# on each of 3 seeds; on 300 CIFAR photos enlarged to 128 px (6 views) +0.4 points of test accuracy on the
# mean of 5 seeds (BENCHMARKS.md). A set of 2,000 images or more gets its plain features only.
FEATURE_HEAD_VECTORS, MAX_AUTO_VIEWS = 2000, 8


# Training recipes by model, for the knobs left on auto. fast-cnn's is built for time-to-accuracy (after
# airbench and Page's DAWNBench runs): large batches, Nesterov SGD with a high one-cycle learning rate,
# label smoothing 0.2, translations of at most 1/16 of the side (2 pixels at 32 px, airbench's; 4 pixels
# gave 84.49% test on CIFAR-10 JPEGs on the 2-core CPU, 2 pixels 85.21%: BENCHMARKS.md). 10 epochs of
# CIFAR-10 (450,000 images) stay: with bfloat16 steps and the whitening bias frozen after 3 they gave
# 85.15% test, and the val accuracy still rose 1.6 points in the 9th epoch: fewer epochs would likely fall
# under 85% (not measured: a CIFAR-10 run costs 10 minutes under load).
_FAST_RECIPE = dict(optimizer="sgd", lr=0.2, batch_size=512, schedule="onecycle", label_smoothing=0.2,
                    images_seen=450_000, reference_images=45_000, tta="flip", translate=0.0625)
RECIPES = {"fast-cnn": _FAST_RECIPE, "fast-cnn-wide": _FAST_RECIPE}
# How fast-cnn's budget grows with the data: images seen in all ~ n^0.6, the power law through the two
# sets its recipe was tuned on (CIFAR-10's 45,000 training images: 10 epochs, 85% test; sklearn's 1,437
# digits: 40 epochs, 99.4%). A fixed 450,000 images gave 40 epochs to 9,000 gray 28x28 digits (98.15% on
# an MNIST subset in 258 s, the filer); this gives 19: 99.70% test on the MNIST stand-in of
# benchmarks/make_digits28.py, whose val accuracy stopped rising after ~10 (BENCHMARKS.md, issue 18).
BUDGET_EXPONENT = 0.6
# Lookahead (--lookahead) stays off: fast-cnn on CIFAR-10, 10 epochs, CPU: 84.74% with it, 85.21% without.
# --ema's default decay: the average's horizon, 1 / (1 - decay) steps, is this share of the run's steps. A fixed
# decay (timm's 0.9998, a 5,000-step horizon, under 1% of a 300-epoch ImageNet run) would average nearly every
# step of a 1,000-step oculi run, early weights included, and too few of a long one: a share of the schedule
# means the same thing on every run. 5%: under a schedule that decays to the end, the last twentieth of the
# steps is where the weights move least (the learning rate is near its end), so it averages out their noise
# without reaching back to the weights of a high learning rate. Not measured against other shares.
EMA_HORIZON_SHARE = 0.05
DEFAULT_RECIPE = dict(optimizer="adamw", schedule="cosine", label_smoothing=0.0, images_seen=300_000, tta="none",
                      lookahead=False)


@dataclass(frozen=True)
class DataProbe:
    """Typical image size and colour of a dataset, from a sample of headers."""

    size: tuple[int, int]
    grayscale: bool

    @property
    def small(self) -> bool:
        return max(self.size) <= SMALL_IMAGE_MAX_SIDE


def probe_source(source: DataSource, max_files: int = 64) -> DataProbe:
    if source.arrays is not None:
        _, c, h, w = source.arrays.shape
        return DataProbe((h, w), c == 1)
    step = max(1, len(source.records) // max_files)
    shapes = []
    for record in source.records[::step][:max_files]:
        try:
            shapes.append(read_image_size(source.root / record.path))
        except ImageDecodeError:
            continue  # reported later, when every file is decoded
    if not shapes:
        return DataProbe((224, 224), False)
    arr = np.array(shapes)
    return DataProbe((int(np.median(arr[:, 1])), int(np.median(arr[:, 2]))), bool((arr[:, 0] == 1).all()))


def resolve(cfg: TrainConfig, source: DataSource, probe: DataProbe, device_type: str = "cpu") -> TrainConfig:
    """A copy of ``cfg`` with every "auto"/None knob replaced by a concrete value."""
    model = cfg.model if cfg.model != "auto" else _auto_model(probe)
    pretrained = cfg.pretrained
    if pretrained is None:
        pretrained = cfg.mode != "scratch" and get_model_info(model) is None and is_timm_model(model)
    pretrained = pretrained or cfg.weights is not None
    mode = _mode(cfg.mode, pretrained, probe)
    channels = 3 if pretrained else (cfg.channels or (1 if probe.grayscale else 3))
    image_size = cfg.image_size or _auto_size(model, pretrained, probe)
    n_train = sum(r.split == "train" for r in source.records)
    recipe = {**DEFAULT_RECIPE, **RECIPES.get(model, {})}
    epochs = cfg.epochs or _auto_epochs(pretrained, mode, n_train, recipe)
    views = cfg.feature_views or _auto_views(pretrained, mode, n_train)
    patience, unfreeze, budget = cfg.patience, cfg.unfreeze_stages, cfg.time_budget
    if mode == "auto" and device_type == "cpu" and get_model_info(model) is None:
        budget = budget if budget is not None else CPU_TIME_BUDGET
        # Every view's activations are held; an epoch of the top draws one view of each image.
        n_held = len(source.records) + n_train * (views - 1)
        top = _affordable_top(model, image_size, n_train, n_held, budget, cfg.unfreeze_stages)
        if top is None:
            mode = "features"
        else:
            unfreeze = top.stages
            epochs = cfg.epochs or int(np.clip(budget // (n_train * top.macs * CPU_SECONDS_PER_MAC),
                                               1, CPU_PARTIAL_EPOCHS))
            if not cfg.epochs:  # epochs asked for are trained as asked
                patience = min(patience or CPU_FINETUNE_PATIENCE, CPU_FINETUNE_PATIENCE)
    elif unfreeze is not None and mode in ("auto", "finetune") and get_model_info(model) is None:
        _affordable_top(model, image_size, n_train, len(source.records), 0, unfreeze)  # an ask out of range: now
    optimizer = cfg.optimizer if cfg.optimizer != "auto" else recipe["optimizer"]
    # --batch-size (or the recipe's) is the batch of one step over all processes, accumulate times: the recipe
    # does not change with the number of processes; each of world_size processes takes its share.
    asked_batch = (cfg.batch_size or _recipe_batch(recipe, n_train // cfg.accumulate)
                   or _auto_batch(pretrained, device_type))
    batch_size = per_process_batch(asked_batch, cfg.world_size)
    # The recipe's learning rate goes with the recipe's optimizer only, scaled with the step's batch size.
    partial_lr = CPU_PARTIAL_LR if mode == "auto" and device_type == "cpu" and unfreeze else None
    lr = cfg.lr or partial_lr or (recipe["lr"] * asked_batch * cfg.accumulate / recipe["batch_size"]
                    if "lr" in recipe and optimizer == recipe["optimizer"]
                    else _auto_lr(optimizer, pretrained))
    # A batch the processes cannot share evenly: each takes the floor, and the lr follows the smaller step.
    lr = scaled_lr(lr, optimizer, batch_size * cfg.world_size / asked_batch)
    steps = max(1, n_train // (asked_batch * cfg.accumulate)) * max(1, epochs)
    ema_decay = (cfg.ema_decay if cfg.ema_decay is not None else ema_decay_for(steps)) if cfg.ema else None
    return dataclasses.replace(
        cfg, model=model, pretrained=pretrained, mode=mode, channels=channels, image_size=tuple(image_size),
        head=_head(cfg, source, model),
        epochs=max(1, epochs), feature_views=views, optimizer=optimizer, lr=lr, patience=patience,
        unfreeze_stages=unfreeze,
        time_budget=budget,
        # Asked for a time, not a count: from scratch the first epoch's speed sets the count (training.loop).
        epochs_from_budget=mode == "scratch" and cfg.time_budget is not None and not cfg.epochs,
        batch_size=batch_size,
        schedule=cfg.schedule if cfg.schedule != "auto" else recipe["schedule"],
        label_smoothing=cfg.label_smoothing if cfg.label_smoothing is not None else recipe["label_smoothing"],
        lookahead=cfg.lookahead if cfg.lookahead is not None else recipe["lookahead"], ema_decay=ema_decay,
        augment=cfg.augment if cfg.augment != "auto" else "light",
        translate=cfg.translate if cfg.translate is not None or cfg.augment != "auto" else recipe.get("translate"),
        tta=cfg.tta if cfg.tta != "auto" else _auto_tta(recipe, source.flips_keep_class, device_type),
        select_by=chosen_select_by(cfg.select_by, source),
    )


def ema_decay_for(steps: int) -> float:
    """The decay whose horizon, 1 / (1 - decay) optimizer steps, is EMA_HORIZON_SHARE of ``steps`` (0: a horizon
    of one step, the average is the weights)."""
    horizon = max(1.0, EMA_HORIZON_SHARE * steps)
    return round(1 - 1 / horizon, 6)


def imbalance(source: DataSource) -> float:
    """Training images of the largest class over those of the smallest (inf when a class has none)."""
    counts = label_counts(source.split_records("train"), len(source.classes))
    return float(counts.max() / counts.min()) if counts.min() else float("inf")


def chosen_select_by(asked: str, source: DataSource) -> str:
    """The val score that keeps an epoch: ``asked`` (--select-by), or on auto what the data calls for."""
    return asked if asked != "auto" else _auto_select_by(source)


def _auto_select_by(source: DataSource) -> str:
    if source.multi_label:
        return "map"
    return "macro-f1" if imbalance(source) >= IMBALANCE_RATIO else "accuracy"


def _head(cfg: TrainConfig, source: DataSource, model: str) -> str:
    """The model's head: a sigmoid per class for label sets (the only head they can have), else --head or the
    model's default."""
    if source.multi_label:
        if cfg.head not in ("auto", "multilabel"):
            raise OculiError(f"--head {cfg.head}: the data has label sets (multi-label); its head is multilabel")
        if cfg.sampler == "balanced":
            raise OculiError("--sampler balanced: draws by class cannot balance label sets; use --class-weights "
                             "auto (each class's positives weighed against its negatives)")
        if cfg.select_by in ("accuracy", "macro-f1"):
            raise OculiError(f"--select-by {cfg.select_by}: a multi-label run keeps the epoch by val mAP (map)")
        return "multilabel"
    if cfg.head == "multilabel" or cfg.select_by == "map":
        flag = "--head multilabel" if cfg.head == "multilabel" else "--select-by map"
        raise OculiError(f"{flag}: the data has one label an image; label sets come from a table "
                         f"(--multi-label, --label-sep, --label-columns)")
    return cfg.head if cfg.head != "auto" else default_head(model, len(source.classes))


def _auto_tta(recipe: dict, flips_keep_class: bool, device_type: str) -> str:
    """The recipe's test-time views, without mirrors where a mirrored image is another class (digits).
    On a GPU, flip becomes flip-shift: +0.15 to +0.38 points of CIFAR-10 test accuracy over flip for 3x
    the test-time work (`benchmarks/tta_views.py`), which would cost a 2-core CPU run about 20 s more of
    a ~300 s budget (the val and test sets; each epoch's validation takes no views) and a GPU a small
    share of its run."""
    if not flips_keep_class:
        return "none"
    if recipe["tta"] == "flip" and device_type == "cuda":
        return "flip-shift"
    return recipe["tta"]


def _auto_model(probe: DataProbe) -> str:
    if probe.small:
        return SMALL_DEFAULT_MODEL
    return PHOTO_PRETRAINED_MODEL if offline_weights_file(PHOTO_PRETRAINED_MODEL) else PHOTO_SCRATCH_MODEL


def _mode(mode: str, pretrained: bool, probe: DataProbe) -> str:
    """auto: features then fine-tuning for photos on a pretrained backbone; fine-tuning alone for small
    images (a backbone's features of a 32 px image blown up are poor); whole-network training without
    pretrained weights ("scratch", the name config.json keeps, so that it says what happened)."""
    if not pretrained:
        if mode == "features":
            raise OculiError("--mode features needs a pretrained backbone (a timm model with weights, or --weights)")
        return "scratch"
    if mode == "scratch":
        raise OculiError("--mode scratch trains from random weights; it cannot take --pretrained or --weights")
    if mode == "auto" and probe.small:
        return "finetune"
    return mode


def _auto_views(pretrained: bool, mode: str, n_train: int) -> int:
    """Feature vectors per training image for a head on frozen features: about FEATURE_HEAD_VECTORS in all."""
    if not pretrained or mode not in ("features", "auto"):
        return 1
    return int(np.clip(FEATURE_HEAD_VECTORS // max(1, n_train), 1, MAX_AUTO_VIEWS))


def _affordable_top(model: str, image_size: tuple[int, int], n_train: int, n_images: int, budget: float,
                    asked: int | None) -> TopCost | None:
    """The top a CPU fine-tunes: ``asked`` stages, or the most (up to CPU_MAX_STAGES) whose CPU_MIN_EPOCHS
    epochs fit in ``budget`` seconds, else the last stage; None when even its activations would not fit in
    ACTIVATION_MEMORY. Counted on the architecture without its weights: the same data gets the same plan."""
    backbone = create_model(model, 2, 3, image_size)[0].backbone
    example = torch.zeros(1, 3, *image_size)
    if asked is not None:  # the user's choice, whatever it costs; a backbone that cannot be cut says so
        costs = top_costs(backbone, example, asked)
        if costs[-1].stages != asked:
            raise OculiError(f"--unfreeze-stages must be between 1 and {costs[-1].stages} for {model}; got {asked}")
        return costs[-1]
    try:
        costs = top_costs(backbone, example, CPU_MAX_STAGES)
    except OculiError:
        return None  # a backbone that cannot be cut: the features head alone
    costs = [c for c in costs if c.activation_bytes * n_images <= ACTIVATION_MEMORY]
    fitting = [c for c in costs if CPU_MIN_EPOCHS * n_train * c.macs * CPU_SECONDS_PER_MAC <= budget]
    return (fitting or costs or [None])[-1 if fitting else 0]


def _auto_size(model: str, pretrained: bool, probe: DataProbe) -> tuple[int, int]:
    if pretrained:
        return pretrained_feed_size(model)
    if probe.small:
        return probe.size
    return PHOTO_SCRATCH_SIZE


def _auto_epochs(pretrained: bool, mode: str, n_train: int, recipe: dict) -> int:
    if pretrained:
        return AUTO_FINETUNE_EPOCHS if mode == "auto" else 10
    return scratch_epochs(n_train, recipe["images_seen"], recipe.get("reference_images"))


def scratch_epochs(n_train: int, images_seen: int, reference_images: int | None = None) -> int:
    """Epochs from scratch: about ``images_seen`` images in all, between 10 and 40 epochs (enough for a
    small set to converge without making a large one slow). With ``reference_images``, ``images_seen`` is
    the budget of a set of that size, and a set of n images gets images_seen x (n / reference) ^
    BUDGET_EXPONENT: a smaller set needs fewer images in all, though more passes over each."""
    n_train = max(1, n_train)
    if reference_images:
        images_seen = images_seen * (n_train / reference_images) ** BUDGET_EXPONENT
    return int(np.clip(round(images_seen / n_train), 10, 40))


def per_process_batch(global_batch: int, world_size: int) -> int:
    """Each process's share of a step's ``global_batch``: the floor of an even share (at least 1 image), so a
    step over N processes takes what one process would, or (when N does not divide it) a little less."""
    return max(1, global_batch // world_size)


def scaled_lr(lr: float, optimizer: str, ratio: float) -> float:
    """The learning rate for a step's batch ``ratio`` times the one ``lr`` was set for: linear for SGD (Goyal
    et al. 2017, "Accurate, Large Minibatch SGD"), square root for the adaptive optimizers (Adam, AdamW,
    RMSprop: Malladi et al. 2022, "On the SDEs and Scaling Rules for Adaptive Gradient Algorithms")."""
    return lr * ratio if optimizer == "sgd" else lr * ratio ** 0.5


def _recipe_batch(recipe: dict, n_train: int) -> int | None:
    """The recipe's batch size, halved until an epoch has at least 16 steps: a small set (1,439 digits)
    then gets enough steps for BatchNorm's running statistics to follow (at batch 512, 97.8% test; at 64,
    99.4%)."""
    if "batch_size" not in recipe:
        return None
    batch = recipe["batch_size"]
    while batch > 16 and n_train // batch < 16:
        batch //= 2
    return batch


def _auto_batch(pretrained: bool, device_type: str) -> int:
    # Fine-tuning a backbone at 288 px holds ~0.2 GB of activations per image on a CPU (batch 32 peaked
    # at 8 GB on hymenoptera): 16 keeps a laptop comfortable at the same speed per image.
    if pretrained:
        return 16 if device_type == "cpu" else 32
    return 64


def _auto_lr(optimizer: str, pretrained: bool) -> float:
    if optimizer == "sgd":
        return 0.01 if pretrained else 0.05
    return 3e-4 if pretrained else 1e-3
