"""Training on several processes with PyTorch's own engine: torch.distributed, launched by torchrun
(torch.distributed.run) or by ``--nproc N``, which starts the same elastic launcher in-process.

Who this process is (``World``), its device, the process group, gathering and the launcher are in
``oculi.runtime.world``, which prediction shares. Here is what only training needs: the job's id across
restarts, which share of an epoch's images is this rank's (``shard_order``, ``part``), the collectives
the Learner and the run use (sums, row gathers, broadcasts), batch statistics over every process
(SyncBatchNorm, with a gloo twin for the CPU) and DistributedDataParallel. With one process every
function here is a no-op, so the single-process path stays what it was.
"""

from __future__ import annotations

import os
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Callable, ContextManager, Iterator

import torch
import torch.distributed as dist
import torch.nn as nn

from ..errors import OculiError
from ..runtime.world import World


def run_id() -> str | None:
    """The rendezvous id of this job, the same in every restart of it (None for a plain process or
    torchrun's default id "none", which every job shares)."""
    rid = os.environ.get("TORCHELASTIC_RUN_ID")
    return None if rid in (None, "", "none") else rid


# ---------------------------------------------------------------- data shards


def shard_order(order: torch.Tensor, per_rank: int, w: World) -> torch.Tensor:
    """This rank's indices of one epoch's global ``order`` (the same on every rank): the order cut into
    global steps of ``per_rank`` x ranks images, the last partial step dropped, and rank r taking the r-th
    slice of each step. Each image of the kept steps goes to exactly one rank; nothing is padded or
    repeated, and step s of all ranks together is step s of one process with the global batch."""
    if w.size == 1:
        return order
    per_rank = max(1, min(per_rank, len(order) // w.size))
    steps = max(1, len(order) // (per_rank * w.size))
    return order[:steps * per_rank * w.size].view(steps, w.size, per_rank)[:, w.rank].reshape(-1)


def rank_seed(seed: int, epoch: int, w: World) -> int:
    """The seed of this rank's augmentation and dropout draws in ``epoch``: one process's (seed, epoch) seed
    on rank 0, so that one process draws as before, and a seed of its own on every other rank (their
    images differ, so must their random crops)."""
    base = seed * 100_003 + epoch
    return base if w.rank == 0 else base * 7_919 + w.rank


@contextmanager
def local_main_first(w: World) -> Iterator[None]:
    """Local rank 0 runs the block first (filling this machine's cache); the other ranks wait at a barrier,
    then run it too and find the cache full. Every rank passes the barrier exactly once."""
    if w.size > 1 and not w.local_main:
        dist.barrier()
    yield
    if w.size > 1 and w.local_main:
        dist.barrier()


# ---------------------------------------------------------------- collectives


def _wire(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` where the backend can send it: NCCL sends from the GPU only, gloo from the CPU."""
    nccl = dist.get_backend() == "nccl"
    return tensor.to(torch.device("cuda", torch.cuda.current_device()) if nccl else "cpu")


def sum_numbers(w: World, *numbers: float) -> list[float]:
    """Each number summed over all ranks."""
    if w.size == 1:
        return list(numbers)
    t = _wire(torch.tensor(numbers, dtype=torch.float64))
    dist.all_reduce(t)
    return t.tolist()


def gather_rows(w: World, part: torch.Tensor, total: int) -> torch.Tensor:
    """Every rank's ``part`` (its ``World.part(total)`` rows) joined in rank order: the whole split's rows,
    on every rank. Shares differ in size by at most one row, so each is padded to the largest and trimmed."""
    if w.size == 1:
        return part
    sizes = [len(range(total)[World(r, 0, w.size).part(total)]) for r in range(w.size)]
    padded = _wire(part.new_zeros((max(sizes), *part.shape[1:])))
    padded[:len(part)] = part
    pieces = [torch.empty_like(padded) for _ in range(w.size)]
    dist.all_gather(pieces, padded)
    return torch.cat([piece[:n] for piece, n in zip(pieces, sizes)]).to(part.device)


def sharded_rows(w: World, compute: Callable[[slice], torch.Tensor], total: int) -> torch.Tensor:
    """``compute(share)`` (rows of the items in ``share``) for all ``total`` items, each rank computing its
    share; every rank computes everything when there are fewer items than ranks."""
    if w.size == 1 or total < w.size:
        return compute(slice(0, total))
    return gather_rows(w, compute(w.part(total)), total)


def broadcast_object(w: World, obj):
    """Rank 0's ``obj`` on every rank."""
    if w.size == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def broadcast_module(w: World, module: nn.Module, buffers_only: bool = False) -> None:
    """Rank 0's weights and buffers (or only its buffers) copied into ``module`` on every rank."""
    if w.size == 1:
        return
    tensors = list(module.buffers()) if buffers_only else list(module.state_dict().values())
    with torch.no_grad():
        for tensor in tensors:
            dist.broadcast(tensor, src=0)


@contextmanager
def claimed_by_main(w: World, claim: Callable[[], ContextManager[Path]]) -> Iterator[Path]:
    """``claim()``'s run folder: taken (and held) by rank 0 only, its path sent to the others. When rank 0
    cannot take it, every rank fails with rank 0's error."""
    if w.size == 1:
        with claim() as path:
            yield path
        return
    with ExitStack() as stack:
        path = error = None
        if w.main:
            try:
                path = str(stack.enter_context(claim()))
            except OculiError as err:
                error = err
        path, message = broadcast_object(w, (path, None if error is None else str(error)))
        if message is not None:
            raise error if error is not None else OculiError(message)
        yield Path(path)


# ---------------------------------------------------------------- models


def wrap(model: nn.Module, device: torch.device, w: World) -> nn.Module:
    """``model`` in DistributedDataParallel (gradients averaged over the ranks during backward), or as it
    is for one process. Wrapped afresh each epoch: gradual unfreezing changes which weights train."""
    if w.size == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel
    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)  # rank 0's buffers (BatchNorm's) at each forward


def use_sync_bn(asked: bool | None, per_rank_batch: int, w: World) -> bool:
    """--sync-bn, or by default: on with several processes and fewer than 32 images per process (batch
    statistics of a handful of images are noise; Wu & Johnson 2021, "Rethinking Batch in BatchNorm")."""
    if w.size == 1:
        return False
    return asked if asked is not None else per_rank_batch < 32


PLAIN_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def convert_sync_bn(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` with each BatchNorm computing its batch statistics over all ranks: on a GPU PyTorch's
    SyncBatchNorm, by timm's converter (which keeps the activation of timm's BatchNormAct2d); on the CPU
    ``GlooBatchNorm`` (PyTorch's needs a GPU) in place of the plain BatchNorm layers only: a subclass
    with more in its forward (BatchNormAct2d) stays as it is, per process. Same weights and names, so
    the checkpoint and the bundle do not change."""
    if device.type == "cuda":
        from timm.layers import convert_sync_batchnorm
        return convert_sync_batchnorm(model)
    for name, child in model.named_children():
        if type(child) in PLAIN_BATCHNORMS:
            setattr(model, name, GlooBatchNorm.like(child))
        else:
            convert_sync_bn(child, device)
    return model


class _SumOverRanks(torch.autograd.Function):
    """All-reduce (sum) that gradients flow back through: the gradient of a sum over ranks is the sum of
    every rank's gradient."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        tensor = tensor.clone()
        dist.all_reduce(tensor)
        return tensor

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class GlooBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training-time mean and variance are those of the global batch: per-channel sums,
    sums of squares and counts all-reduced (autograd-aware, so gradients flow through the other ranks'
    statistics as in SyncBatchNorm). In eval mode, and with one process, it is plain BatchNorm."""

    @classmethod
    def like(cls, bn: nn.modules.batchnorm._BatchNorm) -> "GlooBatchNorm":
        new = cls(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats)
        new.load_state_dict(bn.state_dict())
        new.train(bn.training)
        return new.to(next(bn.buffers(), torch.empty(0)).device)

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input, got {input.dim()}D")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        dims = [0] + list(range(2, x.dim()))
        xf = x.float()
        count = torch.tensor([x.numel() / x.shape[1]], dtype=torch.float32, device=x.device)
        stats = torch.cat([xf.sum(dims), (xf * xf).sum(dims), count])
        stats = _SumOverRanks.apply(stats)
        c = x.shape[1]
        n = stats[-1]
        mean = stats[:c] / n
        var = (stats[c:2 * c] / n - mean * mean).clamp_min(0)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.lerp_(mean.detach(), m)
                self.running_var.lerp_(var.detach() * n / (n - 1).clamp_min(1), m)
        shape = [1, c] + [1] * (x.dim() - 2)
        out = (xf - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out.to(x.dtype)


# ---------------------------------------------------------------- messages


def silence(reporter) -> None:
    """A rank other than 0 prints nothing (not even warnings: rank 0 says them once)."""
    reporter.quiet = True
    reporter.console.quiet = True

