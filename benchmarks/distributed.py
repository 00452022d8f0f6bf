"""One process against several (torch.distributed, `oculi train --nproc N`) on the CIFAR-10 JPEGs: the
same global batch either way, so the same learning rate and steps; what changes is who computes them.

    python benchmarks/distributed.py --data /tmp/oculi-bench-cifar10/cifar10 [--per-class 500] \
        [--epochs 4] [--batch 256] [--nproc 2] [--device cpu] [--flags "--augment none"] [--work DIR]

A subset of ``--per-class`` training images per class (and a fifth as many test images) is linked into
``--work``; a first run fills the decoded-image cache so that neither timed run pays for decoding. Then
``oculi train`` runs with 1 process and batch ``--batch``, and with ``--nproc`` processes of
``--batch / nproc`` each. Per run: the wall time of the command, the seconds of its epochs (training and
validation, from metrics.jsonl), training images/s, and the test accuracy. On a GPU node (``--device cuda
--nproc <GPUs>``) each process takes one GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("/tmp/oculi-bench-cifar10/cifar10"))
    parser.add_argument("--per-class", type=int, default=500, help="training images per class (0: all)")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch", type=int, default=256, help="the global batch")
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model", default="fast-cnn")
    parser.add_argument("--flags", default="", help="more `oculi train` flags for both runs")
    parser.add_argument("--threads", type=int, default=os.cpu_count(),
                        help="CPU threads in all: one process gets them all, N processes a share each")
    parser.add_argument("--work", type=Path)
    args = parser.parse_args()
    if args.batch % args.nproc:
        parser.error("--batch must divide among --nproc processes")
    work = args.work or Path(tempfile.mkdtemp(prefix="oculi-distributed-"))
    data = subset(args.data, work / "data", args.per_class)
    for run in ("warm", "one", "many"):  # the runs of an earlier call in the same --work
        shutil.rmtree(work / run, ignore_errors=True)
    env = {**os.environ, "OCULI_CACHE_DIR": str(work / "cache"), "OMP_NUM_THREADS": str(args.threads)}
    shared = {**env, "OMP_NUM_THREADS": str(max(1, args.threads // args.nproc))}  # same cores in all
    common = [str(data), "--model", args.model, "--epochs", str(args.epochs), "--device", args.device,
              "--val-split", "0.1", "--no-report", "-q", *args.flags.split()]
    print(f"{args.model}, {args.epochs} epochs, global batch {args.batch}, {args.device}, {args.threads} CPU "
          f"threads; data in {data}")
    train(common + ["--epochs", "1", "--out", str(work / "warm")], env)  # decodes once, into the cache
    rows = [measure(f"1 process x {args.batch}", common + ["--batch-size", str(args.batch)], work / "one", env),
            measure(f"{args.nproc} processes x {args.batch // args.nproc}",
                    common + ["--batch-size", str(args.batch // args.nproc), "--nproc", str(args.nproc)],
                    work / "many", shared)]
    print(f"{'run':<24} {'wall s':>7} {'epochs s':>9} {'train img/s':>12} {'test acc':>9}")
    for name, wall, epochs, speed, accuracy in rows:
        print(f"{name:<24} {wall:>7.1f} {epochs:>9.1f} {speed:>12.0f} {accuracy:>9.2%}")
    print(f"speed-up of the epochs: {rows[0][2] / rows[1][2]:.2f}x")
    return 0


def subset(source: Path, target: Path, per_class: int) -> Path:
    """train/ and test/ of ``source`` with the first ``per_class`` (test: a fifth as many) files of each
    class, as symbolic links."""
    for split, n in (("train", per_class), ("test", per_class // 5)):
        for folder in sorted((source / split).iterdir()):
            (target / split / folder.name).mkdir(parents=True, exist_ok=True)
            files = sorted(folder.iterdir())
            for file in files[:n] if n else files:
                link = target / split / folder.name / file.name
                if not link.exists():
                    link.symlink_to(file.resolve())
    return target


def train(args: list[str], env: dict) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "oculi", "train", *args], env=env, check=True)
    return time.perf_counter() - started


def measure(name: str, args: list[str], out: Path, env: dict) -> tuple:
    wall = train(args + ["--out", str(out)], env)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    accuracy = json.loads((out / "test_metrics.json").read_text())["accuracy"]
    speed = sum(r["images_per_s"] for r in rows[1:] or rows) / len(rows[1:] or rows)  # the first epoch warms up
    return name, wall, sum(r["seconds"] for r in rows), speed, accuracy


if __name__ == "__main__":
    sys.exit(main())
