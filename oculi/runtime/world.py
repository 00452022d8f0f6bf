"""The processes a job runs on, as training and prediction both see them: who this process is (``World``,
read from the RANK / LOCAL_RANK / WORLD_SIZE that torchrun sets), its device (``rank_device``), the process
group (NCCL on CUDA, gloo on the CPU), gathering every rank's results (``gather_objects``) and the launcher
behind ``--nproc N`` (``launch``: torch.distributed's elastic launcher, in-process). With one process every
function here is a no-op.

What only training needs (data shards, sums and broadcasts, DistributedDataParallel, SyncBatchNorm) is in
``oculi.training.distributed``; ``oculi predict --nproc`` uses this module alone.
"""

from __future__ import annotations

import os
import sys
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Callable, Iterator

import torch
import torch.distributed as dist

from ..errors import OculiError


@dataclass(frozen=True)
class World:
    """This process's place among the processes of one job, training or predicting (one process: rank 0 of 1)."""

    rank: int = 0
    local_rank: int = 0  # its index on its own machine: the GPU it uses
    size: int = 1

    @property
    def main(self) -> bool:
        """Rank 0: the one process that writes the run folder and prints."""
        return self.rank == 0

    @property
    def local_main(self) -> bool:
        """Local rank 0: the one process of each machine that fills that machine's caches."""
        return self.local_rank == 0

    def part(self, n: int) -> slice:
        """This rank's contiguous share of ``n`` items (evaluation, prediction): every item in exactly one
        rank's share, the shares in rank order, sizes differing by at most one, no padding."""
        return slice(n * self.rank // self.size, n * (self.rank + 1) // self.size)


SINGLE = World()


def world() -> World:
    """This process's World, from the variables torchrun (or ``--nproc``) sets; a plain process is SINGLE."""
    env = os.environ
    try:
        return World(int(env.get("RANK", 0)), int(env.get("LOCAL_RANK", 0)), int(env.get("WORLD_SIZE", 1)))
    except ValueError:
        raise OculiError("RANK, LOCAL_RANK and WORLD_SIZE must be whole numbers (torchrun sets them)") from None


def restart_count() -> int:
    """How many times torchrun's agent has restarted this group after a worker died (0: first start)."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", 0))


def rank_device(device: torch.device, w: World) -> torch.device:
    """The device of this rank: its own GPU (cuda:LOCAL_RANK) when the run asks for CUDA without an index."""
    if device.type != "cuda" or w.size == 1:
        return device
    device = torch.device("cuda", w.local_rank) if device.index is None else device
    if device.index >= torch.cuda.device_count():
        raise OculiError(f"process {w.local_rank} of this machine has no GPU of its own (it has "
                         f"{torch.cuda.device_count()}): give --nproc (--nproc-per-node) at most that many")
    torch.cuda.set_device(device)
    return device


@contextmanager
def process_group(w: World, device: torch.device | None) -> Iterator[None]:
    """The default process group for the block: NCCL between GPUs, gloo between CPU processes.
    Nothing for one process, or when the caller already made one."""
    if w.size == 1 or dist.is_initialized():
        yield
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    timeout = timedelta(minutes=30)
    dist.init_process_group(backend, store=_attempt_store(w, timeout), rank=w.rank, world_size=w.size,
                            timeout=timeout)
    try:
        yield
    finally:
        dist.destroy_process_group()


def _attempt_store(w: World, timeout: timedelta) -> dist.Store:
    """The key-value store the ranks meet in (MASTER_ADDR:MASTER_PORT, torchrun's agent's own store when
    it says so), its keys prefixed by this attempt. torchrun keeps the agent's store across a restart,
    and with plain env:// the restarted ranks read the dead ones' addresses from it and never connect
    (seen with torch 2.14 and gloo); a prefix per attempt gives each attempt keys of its own."""
    env = os.environ
    agent = env.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    try:
        address, port = env["MASTER_ADDR"], int(env["MASTER_PORT"])
    except (KeyError, ValueError):
        raise OculiError("several processes need MASTER_ADDR and MASTER_PORT (torchrun sets them)") from None
    store = dist.TCPStore(address, port, w.size, is_master=w.main and not agent, timeout=timeout)
    return dist.PrefixStore(f"oculi/attempt_{restart_count()}", store)


def gather_objects(w: World, obj) -> list:
    """Every rank's ``obj`` (picklable), in rank order, on every rank."""
    if w.size == 1:
        return [obj]
    out = [None] * w.size
    dist.all_gather_object(out, obj)
    return out


def oversubscribed(nproc: int, cores: int, cuda: bool) -> str | None:
    """The warning for ``--nproc`` on a CPU with fewer cores than processes, else None: each process then gets
    less than a core, and the steps that wait on every process (the gradients' all-reduce) wait on a process
    that is not running. Measured (2 cores, fast-cnn on digits, gloo): an epoch took 0.2 s on one process,
    1.3 s on two and 4.5 s on four."""
    if cuda or nproc <= cores:
        return None
    return (f"--nproc {nproc} on {cores} CPU cores: each process gets less than a core, so this runs slower than one "
            f"process would (fast-cnn on 2 cores: 4.5 s an epoch on 4 processes, 0.2 s on one); --nproc is for "
            f"GPUs, or for CPUs with a core for every process")


def worker_threads(nproc: int) -> int:
    """Threads for each of ``nproc`` worker processes: the cores this process may use (its affinity, which a
    container or ``taskset`` narrows, where os.cpu_count() counts the machine's), shared out, at least one."""
    from .onnx import usable_cores
    return max(1, usable_cores() // nproc)


def launch(nproc: int, entrypoint: Callable, *args, max_restarts: int = 0):
    """Run ``entrypoint(*args)`` in ``nproc`` worker processes on this machine through torch.distributed's
    elastic launcher, as ``torchrun --standalone --nproc-per-node N`` would (a c10d rendezvous on a free
    local port, RANK / LOCAL_RANK / WORLD_SIZE set for each worker); returns rank 0's return value."""
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=str(uuid.uuid4()),
                          rdzv_backend="c10d", rdzv_endpoint="127.0.0.1:0", max_restarts=max_restarts,
                          monitor_interval=0.5, start_method="spawn")
    from .onnx import usable_cores
    warning = oversubscribed(nproc, usable_cores(), torch.cuda.is_available())
    if warning:
        print(f"warning: {warning}", file=sys.stderr, flush=True)
    os.environ.setdefault("OMP_NUM_THREADS", str(worker_threads(nproc)))
    return elastic_launch(config, entrypoint)(*args)[0]
