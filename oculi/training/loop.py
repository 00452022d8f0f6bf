"""The training loop: one Learner for every way oculi trains (from scratch, a head on cached features,
fine-tuning, the top of a cut backbone), over three kinds of data: uint8 images, augmented and normalised on
the device (``ImageData``); the feature vectors of a frozen backbone (``FeatureData``); the cached activation
maps of a cut backbone's frozen bottom (``ActivationData``, in training.partial).

Every random draw of epoch ``e`` comes from generators seeded with (seed, e), so a run resumed from
the checkpoint of epoch ``e - 1`` repeats exactly what the uninterrupted run would have done.
"""

from __future__ import annotations

import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field, replace
from typing import Callable, Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F
from sklearn.metrics import f1_score

from ..console import Reporter, Throughput
from ..data.loading import RowView, TensorSet, streamed_batches
from ..data.mixing import Mixed
from ..data.transforms import Augmentation, Preprocessing
from ..runtime.engines import autocast, logits_to_probs, model_input, predict_logits
from ..runtime.world import SINGLE, World
from ..multilabel import compare_map, mean_ap
from ..selection import compare, macro_f1
from .distributed import broadcast_module, broadcast_object, rank_seed, shard_order, sharded_rows, sum_numbers, wrap
from .ema import WeightAverage
from .optim import Lookahead, lr_factor, set_lr


@dataclass
class LoopSettings:
    epochs: int
    batch_size: int
    lr: float
    schedule: str
    warmup_epochs: float
    label_smoothing: float
    patience: int | None  # early stop after this many epochs without a better val accuracy; None: never
    head: str
    seed: int
    sampler: str = "shuffle"
    class_weights: torch.Tensor | None = None
    select_by: str = "accuracy"  # which val score picks the kept epoch: accuracy or macro-f1 (is_better)
    phase: str = "train"  # recorded in metrics.jsonl: train (from scratch), features or finetune
    lookahead: bool = False  # pull the weights back to a slow average every few steps (optim.Lookahead)
    mixed_precision: bool = True  # bfloat16 autocast on CUDA and bfloat16 CPUs (runtime.engines.autocast)
    accumulate: int = 1  # batches (of batch_size, on each rank) per optimizer step
    time_budget: float | None = None  # seconds: no epoch starts that would end past it (measured by the last)
    ema_decay: float | None = None  # --ema: validate and keep an average of the weights (training.ema); None: off
    epochs_from_budget: bool = False  # after the first epoch, epochs = what time_budget holds at its speed


@dataclass
class LoopState:
    """Everything that changes during training and must survive a restart."""

    epoch: int = 0  # completed epochs
    history: list[dict] = field(default_factory=list)
    best_state: dict | None = None
    best_epoch: int = 0  # 0: nothing beat the baseline (yet)
    baseline: dict | None = None  # val metrics of the starting weights, when they must be beaten
    prior: list[dict] = field(default_factory=list)  # history of an earlier phase (the features head)
    baseline_state: dict | None = None  # the starting weights, to fall back on when nothing beats them
    # Val predictions (class indices) of "baseline", "best" and "last": what the kept-weights test compares.
    predicted: dict[str, list[int]] = field(default_factory=dict)
    decision: dict | None = None  # how the kept weights were chosen (keep_with_margin), once training ended
    # A features head's out-of-fold logits of the training images, and their labels (what the temperature of
    # a kept head is fitted on: transfer.out_of_fold_logits); checkpointed, so a resumed run fits the same T.
    out_of_fold: dict | None = None
    # --ema: the average's weights and step count after the last epoch (WeightAverage.to_checkpoint)
    average: dict | None = None
    # --time-budget without --epochs: the epoch count the first epochs bought (fit_epochs_to_budget)
    epochs: int | None = None

    @property
    def best_row(self) -> dict | None:
        return self.history[self.best_epoch - 1] if self.best_epoch else self.baseline

    def epochs_since_best(self) -> int:
        return self.epoch - self.best_epoch


# --time-budget without --epochs: the epoch after which the budget's count is set (fit_epochs_to_budget).
BUDGET_MEASURED_AFTER = 2
# ...and the share of that count trained before early stopping counts: the schedule was stretched to end at
# the count, so an early stop before its last quarter cuts it at a high learning rate (onecycle warms up over
# 30% of it: digits, 40 s, quiet, stopped at epoch 60-74 of 307-363, still warming up). Loaded 2-core EPYC,
# 2026-12-07, `oculi train digits --time-budget 40s`, seeds 0/1: test 97.77%/98.32% stopped at epoch 60 of 148
# and 46 of 147 (lr at its peak) before; 99.44%/98.88% at 107 of 142 and 93 of 124 (lr 28% of it) with this.
# On a fixed 150-epoch schedule (deterministic), seeds 0-2: 97.21/100/98.88% stopped at 49-77, 98.32/99.44/
# 98.88% at 113 with this, 97.77/99.44/99.44% with no early stop: on 179 test images, 1-2 images either way.
ANNEALED_SHARE = 0.75


def epochs_in_budget(budget: float, elapsed: float, epoch_seconds: float, done: int = 1) -> int:
    """How many epochs, ``done`` of them trained (``elapsed`` seconds with their start-up), fit in ``budget``
    seconds at ``epoch_seconds`` each: at least those done, at most the config's bound."""
    more = int(max(0.0, budget - elapsed) // max(epoch_seconds, 1e-6))
    return int(min(done + more, 10_000))


def patience_counts(settings: LoopSettings, epoch: int) -> bool:
    """Whether early stopping may stop after ``epoch`` completed epochs: always, except that a schedule fitted to
    the time budget (``epochs_from_budget``) must first reach its last quarter (ANNEALED_SHARE of its count)."""
    return not settings.epochs_from_budget or epoch >= ANNEALED_SHARE * settings.epochs


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 100_003 + epoch)


def epoch_order(labels: torch.Tensor, settings: LoopSettings, generator: torch.Generator) -> torch.Tensor:
    """Indices of one epoch: a permutation, or with --sampler balanced, draws weighted so that every
    class is seen equally often. Drawn on the CPU, so that every device gets the same order."""
    labels = labels.cpu()
    if settings.sampler == "balanced" and labels.dim() == 1:  # multi-label sets refuse it in the plan
        counts = torch.bincount(labels).float()
        weights = (1.0 / counts)[labels]
        return torch.multinomial(weights, len(labels), replacement=True, generator=generator)
    return torch.randperm(len(labels), generator=generator)


def batch_indices(order: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
    """``order`` cut into full batches. The last partial batch is dropped: a batch of 1 breaks BatchNorm
    and skews the step size."""
    return [order[step * batch_size:(step + 1) * batch_size] for step in range(max(1, len(order) // batch_size))]


def loss_fn(logits: torch.Tensor, labels: torch.Tensor | Mixed, settings: LoopSettings) -> torch.Tensor:
    """Cross-entropy for one class an image; binary cross-entropy of each output for a sigmoid head and for
    multi-label sets (one sigmoid a class; ``class_weights`` there weigh each class's positives,
    ``pos_weight``), label smoothing pulling every target towards 1/2. A mixed batch's labels (MixUp,
    CutMix): against the soft targets ``mixed_targets``."""
    if isinstance(labels, Mixed):
        return mixed_loss(logits, labels, settings)
    if settings.head == "multilabel":
        target = labels * (1 - settings.label_smoothing) + 0.5 * settings.label_smoothing
        return F.binary_cross_entropy_with_logits(logits.float(), target, pos_weight=settings.class_weights)
    if settings.head == "sigmoid":
        target = labels.float() * (1 - settings.label_smoothing) + 0.5 * settings.label_smoothing
        weight = None if settings.class_weights is None else settings.class_weights[labels]
        return F.binary_cross_entropy_with_logits(logits[:, 0].float(), target, weight=weight)
    return F.cross_entropy(logits.float(), labels, weight=settings.class_weights,
                           label_smoothing=settings.label_smoothing)


def smoothed_targets(labels: torch.Tensor, head: str, classes: int, smoothing: float) -> torch.Tensor:
    """The float targets ``loss_fn`` trains towards: for softmax the one-hot labels with ``smoothing`` spread
    over every class (what F.cross_entropy's label_smoothing does), for sigmoid outputs 0/1 pulled towards 1/2."""
    if head == "softmax":
        return F.one_hot(labels, classes).float() * (1 - smoothing) + smoothing / classes
    return labels.float() * (1 - smoothing) + 0.5 * smoothing


def mixed_targets(labels: Mixed, head: str, classes: int, smoothing: float) -> torch.Tensor:
    """A mixed batch's soft targets: ``lam`` of its first labels' smoothed targets and ``1 - lam`` of its
    second's (rows sum to 1 for softmax; multi-label: the 0/1 sets mixed, then smoothed)."""
    first, second = (smoothed_targets(t, head, classes, smoothing) for t in (labels.first, labels.second))
    return first * labels.lam + second * (1 - labels.lam)


def mixed_loss(logits: torch.Tensor, labels: Mixed, settings: LoopSettings) -> torch.Tensor:
    """``loss_fn`` of a mixed batch; class weights (softmax, sigmoid) are mixed as the targets are."""
    s, logits = settings, logits.float()
    target = mixed_targets(labels, s.head, logits.shape[1], s.label_smoothing)
    if s.head == "multilabel":
        return F.binary_cross_entropy_with_logits(logits, target, pos_weight=s.class_weights)
    if s.head == "sigmoid":
        weight = None if s.class_weights is None else (s.class_weights[labels.first] * labels.lam
                                                       + s.class_weights[labels.second] * (1 - labels.lam))
        return F.binary_cross_entropy_with_logits(logits[:, 0], target, weight=weight)
    return F.cross_entropy(logits, target, weight=s.class_weights)


def validation_metrics(logits: torch.Tensor, labels: torch.Tensor, head: str) -> dict:
    if head == "multilabel":
        return multilabel_validation(logits, labels)
    probs = logits_to_probs(logits, head)
    nll = -torch.log(probs[torch.arange(len(labels)), labels].clamp_min(1e-7)).mean()
    predicted = probs.argmax(1)
    return {"val_loss": float(nll), "val_acc": float((predicted == labels).float().mean()),
            "val_macro_f1": macro_f1(predicted.cpu().numpy(), labels.cpu().numpy(), probs.shape[1]),
            "val_predicted": predicted.tolist()}


def multilabel_validation(logits: torch.Tensor, labels: torch.Tensor) -> dict:
    """A multi-label model's val row: mean BCE, mAP (what picks the epoch), and at thresholds 0.5 subset accuracy
    (as val_acc) and macro-F1; its probabilities (4 decimals) are what the kept-epoch test compares."""
    probs = torch.sigmoid(logits.float())
    loss = F.binary_cross_entropy_with_logits(logits.float(), labels.float())
    targets, scores = labels.cpu().numpy(), probs.cpu().numpy()
    predicted = scores >= 0.5
    return {"val_loss": float(loss), "val_acc": float((predicted == targets.astype(bool)).all(1).mean()),
            "val_map": mean_ap(targets, scores),
            "val_macro_f1": float(f1_score(targets, predicted, average="macro", zero_division=0)),
            "val_predicted": probs.round(decimals=4).tolist()}


def batch_hits(logits: torch.Tensor, labels: torch.Tensor | Mixed, head: str) -> int:
    """Images of a training batch the model gets right: its class, or (multi-label) its whole set at 0.5. In a
    mixed batch, counted against each image's dominant label (the one it holds more than half of)."""
    if isinstance(labels, Mixed):
        labels = labels.dominant
    if head == "multilabel":
        return int(((logits.detach() >= 0) == (labels >= 0.5)).all(1).sum())
    return int((logits_to_probs(logits.detach(), head).argmax(1) == labels).sum())


SCORE_KEYS = {"accuracy": ("val_acc", "accuracy"), "macro-f1": ("val_macro_f1", "macro-F1"), "map": ("val_map", "mAP")}


def score_key(select_by: str) -> tuple[str, str]:
    """The val row's key and the words for the score ``select_by`` keeps an epoch by ("auto": old plans)."""
    return SCORE_KEYS.get(select_by, SCORE_KEYS["accuracy"])


NO_VAL = {"val_loss": None, "val_acc": None, "val_macro_f1": None}

# ---------------------------------------------------------------- the kinds of data
# ImageData and FeatureData here, ActivationData in training.partial. What the Learner asks of its data:
# ``train`` (its length and labels), ``to(device)``, the batches of one epoch's order, and the val metrics
# of a model.


@dataclass
class ImageData:
    """uint8 images [N, C, H, W]: each batch augmented (training only) and normalised on the device."""

    train: TensorSet
    val: TensorSet
    preprocessing: Preprocessing
    augmentation: Augmentation | None

    def to(self, device: torch.device) -> ImageData:
        return replace(self, train=device_resident(self.train, device))

    def batches(self, order: torch.Tensor, batch_size: int, generator: torch.Generator,
                device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return training_batches(self.train, order, batch_size, self.augmentation, self.preprocessing, generator,
                                device)

    def validate(self, model: nn.Module, head: str, device: torch.device, world: World = SINGLE) -> dict:
        """Loss and accuracy on the val images (no augmentation), each rank predicting its share. Each image
        once, without the test-time views, which would double the cost of every epoch's validation (5,000
        CIFAR-10 images on a 2-core CPU under load: 6.4 s with flip views, 2.5 s without); the kept weights
        are calibrated and tested with them (training.finish)."""
        if len(self.val) == 0:
            return NO_VAL
        plain = replace(self.preprocessing, tta="none")
        logits = sharded_rows(world, lambda part: predict_logits(model, self.val.images[part], plain, device),
                              len(self.val))
        return validation_metrics(logits, self.val.labels, head)


def training_batches(data: TensorSet, order: torch.Tensor, batch_size: int, augmentation: Augmentation | None,
                     preprocessing: Preprocessing, generator: torch.Generator,
                     device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(normalised augmented images, labels) on ``device``, one full batch of ``order`` at a time; with MixUp or
    CutMix on, the normalised batch is mixed and its labels are their ``Mixed`` pair."""
    indices = batch_indices(order.to(data.images.device), batch_size)  # gather where the images are
    for index, images in zip(indices, uint8_batches(data, indices)):
        labels = data.labels[index].to(device, non_blocking=True)
        images = images.to(device, non_blocking=True)
        if augmentation is not None:
            images = augmentation(images, generator)
        images = preprocessing.normalize(images)
        if augmentation is not None and augmentation.mixes:
            images, labels = augmentation.mix(images, labels, generator)
        yield model_input(images), labels


def uint8_batches(data: TensorSet, indices: list[torch.Tensor]) -> Iterator[torch.Tensor]:
    """The images of each batch of ``indices``: gathered from memory, or, for a split that stays in the
    cache file, read ahead by worker processes."""
    if isinstance(data.images, RowView):
        return streamed_batches(data.images, indices)
    return (data.images[index] for index in indices)


def device_resident(data: TensorSet, device: torch.device, share: float = 0.25) -> TensorSet:
    """The training set moved to the GPU for the whole run when its uint8 images take at most ``share``
    of the free GPU memory (CIFAR-10: 150 MB), so no batch crosses PCIe; otherwise (and on the CPU) as it
    is, each batch copied over when it is drawn."""
    if device.type != "cuda" or data.images.device.type == "cuda":
        return data
    free, _ = torch.cuda.mem_get_info(device)
    if data.images.nbytes > share * free:
        return data
    resident = torch.empty(data.images.shape, dtype=data.images.dtype, device=device)
    for start in range(0, len(resident), 8192):  # a chunk at a time: a streamed split never sits in RAM whole
        resident[start:start + 8192] = data.images[start:start + 8192].to(device)
    return TensorSet(resident, data.labels.to(device), data.paths)


@dataclass
class FeatureSet:
    """Backbone features [N * views, D] (float32, CPU) and their labels."""

    features: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class FeatureData:
    """Feature vectors of a frozen backbone, for its head: a batch is rows of the float matrix."""

    train: FeatureSet
    val: FeatureSet

    def to(self, device: torch.device) -> FeatureData:
        return self  # a few MB on the CPU; each batch is copied over when it is drawn

    def batches(self, order: torch.Tensor, batch_size: int, generator: torch.Generator,
                device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for index in batch_indices(order, batch_size):
            yield self.train.features[index].to(device), self.train.labels[index].to(device)

    def validate(self, model: nn.Module, head: str, device: torch.device, world: World = SINGLE) -> dict:
        """Loss and accuracy of ``model`` (the head) on the val feature vectors."""
        if len(self.val) == 0:
            return NO_VAL
        model.eval()
        with torch.no_grad():
            logits = sharded_rows(world, lambda part: model(self.val.features[part].to(device)).float().cpu(),
                                  len(self.val))
        return validation_metrics(logits, self.val.labels, head)


# ---------------------------------------------------------------- the Learner


@dataclass
class Learner:
    """Trains ``model`` on ``data`` (ImageData, FeatureData or ActivationData) as ``settings`` say.

    ``progress`` shows it (EpochBars or HeadBar); ``on_epoch_start(epoch)`` may change what is trainable
    (gradual unfreezing); ``on_epoch_end(state)`` saves what must survive a restart (metrics.jsonl, the
    checkpoint); ``settings.patience`` stops it early. With several processes (``world``), each rank
    trains on its share of every step's images in DistributedDataParallel and the val metrics are of the
    whole val set; ``on_epoch_end`` runs on every rank (the run writes on rank 0 only)."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    settings: LoopSettings
    data: ImageData | FeatureData
    device: torch.device
    reporter: Reporter
    progress: EpochBars | HeadBar = field(default_factory=lambda: EpochBars())  # defined below
    on_epoch_start: Callable[[int], None] = lambda epoch: None
    on_epoch_end: Callable[[LoopState], None] = lambda state: None
    world: World = SINGLE

    def __post_init__(self):
        self.data = self.data.to(self.device)
        self.average: WeightAverage | None = None  # --ema's, made by fit

    @property
    def evaluated(self) -> nn.Module:
        """The weights each epoch is measured and kept by: the average's with --ema, else the model's."""
        return self.model if self.average is None else self.average.module

    def _weight_average(self, state: LoopState) -> WeightAverage | None:
        """--ema's average: a checkpoint's, or started at the model's weights."""
        decay = self.settings.ema_decay
        if decay is None:
            return None
        saved = state.average or {}
        return WeightAverage(self.model, decay, saved.get("state"), saved.get("steps", 0))

    @property
    def steps_per_epoch(self) -> int:
        """Optimizer steps per epoch, each on batch_size x ranks x accumulate images."""
        s = self.settings
        return len(self.data.train) // (s.batch_size * self.world.size * s.accumulate) or 1

    def fit(self, state: LoopState | None = None) -> LoopState:
        """Train from ``state.epoch`` (no state: from the start) to ``settings.epochs``, or to an early stop."""
        state = LoopState() if state is None else state
        self.average = self._weight_average(state)
        if state.epochs is not None:  # a resumed run keeps the count its first epoch bought
            self.settings = replace(self.settings, epochs=state.epochs)
        started = time.perf_counter()
        with self.progress.fit(self, state):
            while (state.epoch < self.settings.epochs and not self.early_stop(state)
                   and not self.out_of_time(state, time.perf_counter() - started)):
                self.on_epoch_start(state.epoch)
                row = self.epoch(state.epoch)
                if self.average is not None:
                    state.average = self.average.to_checkpoint()
                record(state, row, self.evaluated, self.settings.select_by)
                self.fit_epochs_to_budget(state, time.perf_counter() - started)
                self.progress.epoch_end(self, state)
                self.on_epoch_end(state)
                self.reporter.epoch(row)
            keep_with_margin(state, self.evaluated, self.data.val.labels, self.settings.select_by)
        return state

    def early_stop(self, state: LoopState) -> bool:
        """True, and said, after ``settings.patience`` epochs without a better val score (None: never), counted
        (``patience_counts``) only once a budget-fitted schedule has annealed."""
        patience = self.settings.patience
        if (patience is None or not patience_counts(self.settings, state.epoch)
                or state.epochs_since_best() < patience):
            return False
        score = score_key(self.settings.select_by)[1]
        self.reporter.info(f"early stop: no better val {score} for {patience} epochs")
        return True

    def fit_epochs_to_budget(self, state: LoopState, elapsed: float) -> None:
        """After the second epoch of a run whose budget sets its length: as many epochs as the budget holds at
        that epoch's speed (rank 0's, for every rank); the learning-rate schedule stretches or shrinks to
        them from then on, so the run ends its schedule instead of being cut in the middle. The second, not
        the first: the first pays one-time costs (fast-cnn on digits, quiet 2-core EPYC: 0.2 s, then 0.1 s an epoch)."""
        s = self.settings
        if (not s.epochs_from_budget or s.time_budget is None or state.epochs is not None
                or state.epoch != min(BUDGET_MEASURED_AFTER, s.epochs)):
            return
        epochs = broadcast_object(self.world, epochs_in_budget(s.time_budget, elapsed, state.history[-1]["seconds"],
                                                                   state.epoch))
        state.epochs, self.settings = epochs, replace(s, epochs=epochs)
        self.reporter.info(f"time budget: {state.epoch} epochs took {elapsed:.1f}s, so {epochs} fit in "
                           f"{s.time_budget:g}s (not the same on another machine; --epochs fixes the count)")

    def out_of_time(self, state: LoopState, elapsed: float) -> bool:
        """True, and said, when another epoch as long as the last would end past ``settings.time_budget``.
        With several processes rank 0's clock decides for all, so that every rank stops at the same epoch."""
        budget = self.settings.time_budget
        if budget is None or not state.history:
            return False
        over = broadcast_object(self.world, elapsed + state.history[-1]["seconds"] > budget)
        if over:
            self.reporter.info(f"time budget: stopped after epoch {state.epoch} of {self.settings.epochs} "
                               f"({elapsed:.0f}s of {budget:.0f}s; --time-budget sets it)")
        return over

    def epoch(self, epoch: int) -> dict:
        """Train one epoch, then measure the model on the val data: the epoch's row of metrics.jsonl."""
        started = time.perf_counter()
        with self.progress.epoch(self, epoch) as advance:
            row = self.train_epoch(epoch, advance)
        return {"epoch": epoch + 1, "phase": self.settings.phase, **row,
                **self.data.validate(self.evaluated, self.settings.head, self.device, self.world),
                "seconds": round(time.perf_counter() - started, 2), "time": round(time.time(), 2),
                **gpu_memory(self.device)}

    def train_epoch(self, epoch: int, advance: Callable = lambda n, **fields: None) -> dict:
        """One pass over the training data (this rank's share of it); returns mean loss and accuracy (on
        augmented images, over every rank; of a mixed batch, against each image's dominant label)."""
        model, optimizer, s, world = self.model, self.optimizer, self.settings, self.world
        generator = epoch_generator(s.seed, epoch)
        model.train()
        order = epoch_order(self.data.train.labels, s, generator)  # the same on every rank
        order = shard_order(order, s.batch_size * s.accumulate, world)
        if world.rank:  # rank 0 draws as one process does; the others on their own
            generator = torch.Generator().manual_seed(rank_seed(s.seed, epoch, world))
        torch.manual_seed(rank_seed(s.seed, epoch, world))  # dropout draws
        net = wrap(model, self.device, world)
        steps, batches = self.steps_per_epoch, max(1, len(order) // s.batch_size)
        total_steps, warmup_steps = steps * s.epochs, int(s.warmup_epochs * steps)
        lookahead = Lookahead(model) if s.lookahead else None
        loss_sum = correct = seen = 0
        speed = Throughput()
        for batch, (inputs, labels) in enumerate(self.data.batches(order, s.batch_size, generator, self.device)):
            step, micro = divmod(batch, s.accumulate)
            stepping = micro == s.accumulate - 1 or batch == batches - 1
            if micro == 0:
                set_lr(optimizer, s.lr * lr_factor(epoch * steps + step, total_steps, warmup_steps, s.schedule))
                optimizer.zero_grad(set_to_none=True)
            # Gradients are averaged over the ranks once per step, on its last batch.
            with nullcontext() if stepping or net is model else net.no_sync():
                with autocast(self.device, cpu=True) if s.mixed_precision else nullcontext():
                    logits = net(inputs)
                loss = loss_fn(logits, labels, s)
                (loss / s.accumulate).backward()
            if stepping:
                optimizer.step()
                if lookahead is not None:
                    lookahead.step(model, epoch * steps + step, total_steps, force=step == steps - 1)
                if self.average is not None:
                    self.average.update(model)
            loss_sum += float(loss.detach()) * len(labels)
            correct += batch_hits(logits, labels, s.head)
            seen += len(labels)
            rate = speed.add(len(labels)) * world.size
            if stepping:
                advance(1, loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.1%}", **{"img/s": f"{rate:.0f}"})
        # Each rank's BatchNorm statistics moved on its own batches after the last broadcast: rank 0's for all.
        broadcast_module(world, model, buffers_only=True)
        if self.average is not None:
            self.average.copy_buffers(model)
        loss_sum, correct, seen = sum_numbers(world, loss_sum, correct, seen)
        return {"train_loss": loss_sum / seen, "train_acc": correct / seen,
                "images_per_s": round(speed.add(0) * world.size, 1), "lr": optimizer.param_groups[0]["lr"]}


def record(state: LoopState, row: dict, model: nn.Module, select_by: str = "accuracy") -> None:
    """Add the epoch's ``row`` to ``state`` (its val predictions apart), and the model's weights when they are
    the best so far."""
    predicted = row.pop("val_predicted", None)
    state.history.append(row)
    state.epoch = row["epoch"]
    if predicted is not None:
        state.predicted["last"] = predicted
    if is_better(row, state, select_by):
        state.best_epoch, state.best_state = state.epoch, copy_state(model)
        if predicted is not None:
            state.predicted["best"] = predicted


def keep_with_margin(state: LoopState, model: nn.Module, labels: torch.Tensor, select_by: str = "accuracy") -> None:
    """The weights a finished fit keeps, by a test the val images can carry (``selection.compare``): the best
    epoch replaces the baseline (the features head, when fine-tuning must beat it) or, without one, the last
    epoch, only when it is significantly better, counting every epoch it was the best of. The last epoch is
    the default without a baseline because a schedule that decays to the end makes it the trained model; the
    maximum of many val scores is an optimistic pick (a head's 60 epochs on 153 hymenoptera val images: the
    best was 147 right, the last also 147). Sets ``state.decision``."""
    if not state.history or state.history[-1]["val_acc"] is None or "last" not in state.predicted:
        return  # no val images: the last epoch, which record already holds as the best
    labels, metric = labels.cpu().numpy(), select_by if select_by in SCORE_KEYS else "accuracy"
    if state.baseline is not None:
        state.decision = _against_baseline(state, labels, metric)
        if not state.decision["better"] and state.best_epoch:
            state.best_epoch, state.best_state = 0, state.baseline_state
    else:
        state.decision = _against_last(state, labels, metric)
        if not state.decision["better"]:
            state.best_epoch, state.best_state = state.epoch, copy_state(model)
            state.predicted["best"] = state.predicted["last"]


def _against_baseline(state: LoopState, labels, metric: str) -> dict:
    key, name = score_key(metric)
    if not state.best_epoch:
        top = max(state.history, key=lambda r: r[key])
        return {"better": False, "kept": "the features head",
                "words": f"no fine-tuned epoch beat the features head's val {name} {state.baseline[key]:.2%} "
                         f"(best: epoch {top['epoch']}, {top[key]:.2%}): kept the features head"}
    base = state.predicted.get("baseline")
    if base is None:  # a checkpoint written before val predictions were kept: the rule it trained under
        return {"better": True, "kept": f"fine-tuned epoch {state.best_epoch}",
                "words": f"kept fine-tuned epoch {state.best_epoch} (no val predictions of the head to test it on)"}
    verdict = _compare(state.predicted["best"], base, labels, metric, candidates=len(state.history))
    kept = f"fine-tuned epoch {state.best_epoch}" if verdict.better else "the features head"
    return {**verdict.to_dict(), "kept": kept,
            "words": verdict.words(f"fine-tuned epoch {state.best_epoch}", "the features head")}


def _against_last(state: LoopState, labels, metric: str) -> dict:
    if state.best_epoch == state.epoch:
        return {"better": False, "kept": f"epoch {state.epoch}", "words": f"kept the last epoch ({state.epoch}), "
                "also the best on val"}
    verdict = _compare(state.predicted["best"], state.predicted["last"], labels, metric,
                       candidates=len(state.history) - 1)
    kept = f"epoch {state.best_epoch}" if verdict.better else f"epoch {state.epoch}"
    return {**verdict.to_dict(), "kept": kept,
            "words": verdict.words(f"epoch {state.best_epoch}", f"the last epoch ({state.epoch})")}


def _compare(a, b, labels, metric: str, candidates: int):
    """``selection.compare``, or for multi-label models (``metric`` "map") ``multilabel.compare_map``."""
    if metric == "map":
        return compare_map(a, b, labels, candidates)
    return compare(a, b, labels, metric, candidates=candidates)


def is_better(row: dict, state: LoopState, select_by: str = "accuracy") -> bool:
    """Higher val accuracy (``select_by`` macro-f1: val macro-F1) wins; on a tie, lower val loss. Without a
    val set, the latest epoch."""
    best = state.best_row
    if row["val_acc"] is None or best is None:
        return True
    key = score_key(select_by)[0]
    return (row[key], -row["val_loss"]) > (best[key], -best["val_loss"])


def copy_state(model: nn.Module) -> dict:
    """A copy of ``model``'s weights that later training steps leave alone."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def gpu_memory(device: torch.device) -> dict:
    """Peak GPU memory so far (benchmarks report it), on CUDA only."""
    if device.type != "cuda":
        return {}
    return {"gpu_peak_mib": round(torch.cuda.max_memory_allocated(device) / 2**20)}


# ---------------------------------------------------------------- progress


class EpochBars:
    """Progress of training on images, where an epoch takes seconds to minutes: a bar over each epoch's
    steps (loss, accuracy, images/s), then the epoch's summary line."""

    @contextmanager
    def fit(self, learner: Learner, state: LoopState):
        yield

    def epoch(self, learner: Learner, epoch: int):
        return learner.reporter.bar(f"epoch {epoch + 1}/{learner.settings.epochs}", learner.steps_per_epoch)

    def epoch_end(self, learner: Learner, state: LoopState) -> None:
        learner.reporter.info(summary_line(state.history[-1], learner.settings.epochs,
                                           state.best_epoch == state.epoch))


class HeadBar:
    """Progress of a head on feature vectors, where an epoch takes milliseconds: one bar over all epochs,
    then one line for the epoch kept."""

    @contextmanager
    def fit(self, learner: Learner, state: LoopState):
        started = time.perf_counter()
        with learner.reporter.bar("training the head", learner.settings.epochs) as self.advance:
            yield
        best = state.best_row
        val = "" if best["val_acc"] is None else f"  val loss {best['val_loss']:.4f} {val_score(best)}"
        learner.reporter.info(f"head   {state.epoch} epochs on {len(learner.data.train)} feature vectors in "
                              f"{time.perf_counter() - started:.1f}s; kept epoch {state.best_epoch}: train loss "
                              f"{best['train_loss']:.4f} acc {best['train_acc']:.2%}{val}")

    @contextmanager
    def epoch(self, learner: Learner, epoch: int):
        yield lambda n=1, **fields: None

    def epoch_end(self, learner: Learner, state: LoopState) -> None:
        row = state.history[-1]
        self.advance(1, **{"val_mAP": f"{row['val_map']:.1%}"} if "val_map" in row else
                     {"val_acc": f"{row['val_acc'] or 0:.1%}"})


def val_score(row: dict) -> str:
    """"acc 96.08%", or for a multi-label model "mAP 91.20% (sets 80.00%)"."""
    if row.get("val_map") is not None:
        return f"mAP {row['val_map']:.2%} (sets {row['val_acc']:.2%})"
    return f"acc {row['val_acc']:.2%}"


def summary_line(row: dict, epochs: int, best: bool) -> str:
    val = "" if row["val_acc"] is None else f"  val loss {row['val_loss']:.4f} {val_score(row)}"
    mark = "  [green]best[/green]" if best else ""
    return (f"epoch {row['epoch']:>3}/{epochs}  train loss {row['train_loss']:.4f} acc {row['train_acc']:.2%}"
            f"{val}  {row['images_per_s']:.0f} img/s  {row['seconds']:.1f}s{mark}")
