"""The training loop: epochs over in-memory uint8 tensors, augmented and normalised on the device.

Every random draw of epoch ``e`` comes from generators seeded with (seed, e), so a run resumed from
the checkpoint of epoch ``e - 1`` repeats exactly what the uninterrupted run would have done.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..console import Reporter, Throughput
from ..data.loading import RowView, TensorSet, streamed_batches
from ..data.transforms import Augmentation, Preprocessing
from ..deploy.engines import autocast, logits_to_probs, model_input, predict_logits
from .optim import Lookahead, lr_factor, set_lr


@dataclass
class LoopSettings:
    epochs: int
    batch_size: int
    lr: float
    schedule: str
    warmup_epochs: float
    label_smoothing: float
    patience: int | None
    head: str
    seed: int
    sampler: str = "shuffle"
    class_weights: torch.Tensor | None = None
    phase: str = "train"  # recorded in metrics.jsonl: train (from scratch), features or finetune
    lookahead: bool = False  # pull the weights back to a slow average every few steps (optim.Lookahead)


@dataclass
class LoopState:
    """Everything that changes during training and must survive a restart."""

    epoch: int = 0  # completed epochs
    history: list[dict] = field(default_factory=list)
    best_state: dict | None = None
    best_epoch: int = 0  # 0: nothing beat the baseline (yet)
    baseline: dict | None = None  # val metrics of the starting weights, when they must be beaten
    prior: list[dict] = field(default_factory=list)  # history of an earlier phase (the features head)

    @property
    def best_row(self) -> dict | None:
        return self.history[self.best_epoch - 1] if self.best_epoch else self.baseline

    def epochs_since_best(self) -> int:
        return self.epoch - self.best_epoch


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 100_003 + epoch)


def epoch_order(labels: torch.Tensor, settings: LoopSettings, generator: torch.Generator) -> torch.Tensor:
    """Indices of one epoch: a permutation, or with --sampler balanced, draws weighted so that every
    class is seen equally often. Drawn on the CPU, so that every device gets the same order."""
    labels = labels.cpu()
    if settings.sampler == "balanced":
        counts = torch.bincount(labels).float()
        weights = (1.0 / counts)[labels]
        return torch.multinomial(weights, len(labels), replacement=True, generator=generator)
    return torch.randperm(len(labels), generator=generator)


def loss_fn(logits: torch.Tensor, labels: torch.Tensor, settings: LoopSettings) -> torch.Tensor:
    if settings.head == "sigmoid":
        target = labels.float() * (1 - settings.label_smoothing) + 0.5 * settings.label_smoothing
        weight = None if settings.class_weights is None else settings.class_weights[labels]
        return F.binary_cross_entropy_with_logits(logits[:, 0].float(), target, weight=weight)
    return F.cross_entropy(logits.float(), labels, weight=settings.class_weights,
                           label_smoothing=settings.label_smoothing)


def training_batches(data: TensorSet, order: torch.Tensor, batch_size: int, augmentation: Augmentation | None,
                     preprocessing: Preprocessing, generator: torch.Generator,
                     device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(normalised augmented images, labels) on ``device``, one full batch of ``order`` at a time.
    The last partial batch is dropped: a batch of 1 breaks BatchNorm and skews the step size."""
    order = order.to(data.images.device)  # gather where the images are (the GPU when resident there)
    steps = max(1, len(order) // batch_size)
    indices = [order[step * batch_size:(step + 1) * batch_size] for step in range(steps)]
    for index, images in zip(indices, uint8_batches(data, indices)):
        labels = data.labels[index].to(device, non_blocking=True)
        images = images.to(device, non_blocking=True)
        if augmentation is not None:
            images = augmentation(images, generator)
        yield model_input(preprocessing.normalize(images)), labels


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


def train_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, data: TensorSet, preprocessing: Preprocessing,
                augmentation: Augmentation | None, settings: LoopSettings, epoch: int, device: torch.device,
                advance: Callable) -> dict:
    """One pass over the training set; returns mean loss and accuracy (on augmented images)."""
    generator = epoch_generator(settings.seed, epoch)
    torch.manual_seed(settings.seed * 100_003 + epoch)  # dropout draws
    model.train()
    order = epoch_order(data.labels, settings, generator)
    steps_per_epoch = len(order) // settings.batch_size or 1
    total_steps = steps_per_epoch * settings.epochs
    warmup_steps = int(settings.warmup_epochs * steps_per_epoch)
    loss_sum = correct = seen = 0
    speed = Throughput()
    batches = training_batches(data, order, settings.batch_size, augmentation, preprocessing, generator, device)
    lookahead = Lookahead(model) if settings.lookahead else None
    for step, (inputs, labels) in enumerate(batches):
        set_lr(optimizer, settings.lr * lr_factor(epoch * steps_per_epoch + step, total_steps, warmup_steps,
                                                  settings.schedule))
        with autocast(device):
            logits = model(inputs)
        loss = loss_fn(logits, labels, settings)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if lookahead is not None:
            lookahead.step(model, epoch * steps_per_epoch + step, total_steps, force=step == steps_per_epoch - 1)
        predicted = logits_to_probs(logits.detach(), settings.head).argmax(1)
        loss_sum += float(loss.detach()) * len(labels)
        correct += int((predicted == labels).sum())
        seen += len(labels)
        advance(1, loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.1%}",
                **{"img/s": f"{speed.add(len(labels)):.0f}"})
    return {"train_loss": loss_sum / seen, "train_acc": correct / seen,
            "images_per_s": round(speed.add(0), 1), "lr": optimizer.param_groups[0]["lr"]}


def validate(model: nn.Module, data: TensorSet, preprocessing: Preprocessing, head: str,
             device: torch.device) -> dict:
    """Loss and accuracy on the validation set (no augmentation)."""
    if len(data) == 0:
        return {"val_loss": None, "val_acc": None}
    return validation_metrics(predict_logits(model, data.images, preprocessing, device), data.labels, head)


def validation_metrics(logits: torch.Tensor, labels: torch.Tensor, head: str) -> dict:
    probs = logits_to_probs(logits, head)
    nll = -torch.log(probs[torch.arange(len(labels)), labels].clamp_min(1e-7)).mean()
    return {"val_loss": float(nll), "val_acc": float((probs.argmax(1) == labels).float().mean())}


def is_better(row: dict, state: LoopState) -> bool:
    """Higher val accuracy wins; on a tie, lower val loss. Without a val set, the latest epoch."""
    best = state.best_row
    if row["val_acc"] is None or best is None:
        return True
    return (row["val_acc"], -row["val_loss"]) > (best["val_acc"], -best["val_loss"])


def fit(model: nn.Module, optimizer: torch.optim.Optimizer, train: TensorSet, val: TensorSet,
        preprocessing: Preprocessing, augmentation: Augmentation | None, settings: LoopSettings,
        device: torch.device, reporter: Reporter, state: LoopState,
        on_epoch_end: Callable[[LoopState], None],
        on_epoch_start: Callable[[int], None] = lambda epoch: None) -> LoopState:
    """Train from ``state.epoch`` to ``settings.epochs`` (or early stop); ``on_epoch_end`` checkpoints,
    ``on_epoch_start(epoch)`` may change what is trainable (gradual unfreezing)."""
    steps = len(train) // settings.batch_size or 1
    train = device_resident(train, device)
    while state.epoch < settings.epochs:
        if settings.patience is not None and state.epochs_since_best() >= settings.patience:
            reporter.info(f"early stop: no better val accuracy for {settings.patience} epochs")
            break
        epoch = state.epoch
        on_epoch_start(epoch)
        started = time.perf_counter()
        with reporter.bar(f"epoch {epoch + 1}/{settings.epochs}", steps) as advance:
            row = train_epoch(model, optimizer, train, preprocessing, augmentation, settings, epoch, device,
                              advance)
        row = {"epoch": epoch + 1, "phase": settings.phase, **row, **validate(model, val, preprocessing, settings.head, device),
               "seconds": round(time.perf_counter() - started, 2), "time": round(time.time(), 2), **gpu_memory(device)}
        state.history.append(row)
        state.epoch = epoch + 1
        if is_better(row, state):
            state.best_epoch = state.epoch
            state.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        reporter.info(summary_line(row, settings.epochs, state.best_epoch == state.epoch))
        on_epoch_end(state)
    return state


def gpu_memory(device: torch.device) -> dict:
    """Peak GPU memory so far (benchmarks report it), on CUDA only."""
    if device.type != "cuda":
        return {}
    return {"gpu_peak_mib": round(torch.cuda.max_memory_allocated(device) / 2**20)}


def summary_line(row: dict, epochs: int, best: bool) -> str:
    val = "" if row["val_acc"] is None else f"  val loss {row['val_loss']:.4f} acc {row['val_acc']:.2%}"
    mark = "  [green]best[/green]" if best else ""
    return (f"epoch {row['epoch']:>3}/{epochs}  train loss {row['train_loss']:.4f} acc {row['train_acc']:.2%}"
            f"{val}  {row['images_per_s']:.0f} img/s  {row['seconds']:.1f}s{mark}")
