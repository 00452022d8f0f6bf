"""Transfer learning on hymenoptera-256: oculi against the PyTorch tutorial's fine-tuning recipe.

Both use the same backbone and weights (timm efficientnet_lite0, the offline ImageNet weights) and the
same 153 val images. Each contender runs in its own process; the table gives its best val accuracy,
when it was first reached (seconds from process start), the end-to-end wall time and peak RAM.

The peer is the PyTorch "Transfer Learning for Computer Vision" tutorial's fine-tuning recipe, as
written there: ImageFolder, RandomResizedCrop 224 + horizontal flip, Resize 256 + CenterCrop 224 for
val, batch 4, SGD lr 0.001 momentum 0.9, StepLR(7, 0.1), 25 epochs, best val epoch kept. It normalises
with the backbone's own statistics (mean = std = 0.5 for these weights), which is fair to it.

    python benchmarks/transfer_hymenoptera.py [--data DIR] [--peer-epochs 25] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from shared_data import extract_shared



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help="hymenoptera_data folder (default: extract ../shared's tar)")
    parser.add_argument("--peer-epochs", type=int, default=25)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--peer-only", action="store_true", help=argparse.SUPPRESS)  # the child process
    args = parser.parse_args()
    if args.peer_only:
        return tutorial_recipe(args.data, args.peer_epochs)
    data = args.data or extract_shared("hymenoptera-256.tar", "hymenoptera_data")
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, flags in (("oculi --mode features", ["--mode", "features"]), ("oculi (default: auto)", [])):
            run_dir = Path(tmp) / name.split()[-1].strip("():")
            # Each contender starts with a cold cache: its features are computed, not read.
            cache = {**os.environ, "OCULI_CACHE_DIR": str(run_dir) + "-cache"}
            command = ["oculi", "train", str(data), "--out", str(run_dir), "--quiet", *flags]
            started, seconds, peak = timed(command, cache)
            rows.append(oculi_row(name, run_dir, started, seconds, peak))
        command = [sys.executable, __file__, "--peer-only", "--data", str(data), "--peer-epochs", str(args.peer_epochs)]
        _, seconds, peak = timed(command, os.environ, capture=args.out / "peer_curve.json")
        rows.append(peer_row(args.out / "peer_curve.json", seconds, peak))
    print_table(rows)
    (args.out / "transfer_hymenoptera.json").write_text(json.dumps(rows, indent=1))
    plot(rows, args.out / "transfer_hymenoptera.png")


def timed(command: list[str], env: dict, capture: Path | None = None) -> tuple[float, float, float]:
    """Start (unix time), wall seconds and peak RSS (MiB) of a child process."""
    unix_start, started = time.time(), time.perf_counter()
    out = open(capture, "w") if capture else subprocess.DEVNULL
    process = subprocess.Popen(command, env=env, stdout=out)
    _, status, usage = os.wait4(process.pid, 0)
    if status != 0:
        sys.exit(f"failed: {' '.join(command)}")
    return unix_start, time.perf_counter() - started, usage.ru_maxrss / 1024


def oculi_row(name: str, run_dir: Path, started: float, seconds: float, peak: float) -> dict:
    """The run's val-accuracy curve in seconds from process start: each metrics row carries the wall
    time it was written. The features phase counts as one point, when its head finished; the kept model
    is what the run's val accuracy is at any moment (the best so far, as auto keeps it)."""
    history = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    meta = json.loads((run_dir / "model.json").read_text())
    head = [h for h in history if h.get("phase") == "features"]
    finetune = [h for h in history if h.get("phase") == "finetune"]
    curve = [(round(head[-1]["time"] - started, 1), max(h["val_acc"] for h in head))] if head else []
    curve += [(round(h["time"] - started, 1), h["val_acc"]) for h in finetune]
    return {"name": name, "best_val_acc": max(acc for _, acc in curve), "kept": meta["training"],
            "seconds": round(seconds, 1), "peak_ram_mib": round(peak), "curve": curve}


def peer_row(curve_file: Path, seconds: float, peak: float) -> dict:
    curve = json.loads(curve_file.read_text())
    return {"name": "PyTorch tutorial recipe", "best_val_acc": max(acc for _, acc in curve), "kept": "finetune",
            "seconds": round(seconds, 1), "peak_ram_mib": round(peak), "curve": curve}


def first_reach(curve: list, target: float) -> float | None:
    return next((t for t, acc in curve if acc >= target - 1e-9), None)


def print_table(rows: list[dict]) -> None:
    target = rows[-1]["best_val_acc"]
    print(f"\nhymenoptera-256, efficientnet_lite0 (offline ImageNet weights); target = peer's best val {target:.2%}")
    peer_reach = first_reach(rows[-1]["curve"], target)
    print(f"{'contender':<26}{'best val':>9}{'kept':>10}{'reached target at':>19}{'sooner':>8}{'wall':>8}"
          f"{'peak RAM':>11}")
    for r in rows:
        reach = first_reach(r["curve"], target)
        sooner = f"{peer_reach / reach:.1f}x" if reach else "-"
        print(f"{r['name']:<26}{r['best_val_acc']:>9.2%}{r['kept']:>10}"
              f"{(f'{reach:.1f} s' if reach is not None else 'never'):>19}{sooner:>8}{r['seconds']:>7.0f}s"
              f"{r['peak_ram_mib']:>7} MiB")


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(8, 4.5), layout="constrained")
    for r in rows:
        t, acc = zip(*r["curve"])
        single = len(t) == 1  # a features-only run is one point: drawn large so no curve hides it
        ax.plot(t, acc, marker="*" if single else "o", ms=14 if single else 4, zorder=3 if single else 2,
                label=f"{r['name']} (best {r['best_val_acc']:.1%})")
    ax.set_xlabel("seconds from process start (2-core CPU)")
    ax.set_ylabel("val accuracy")
    ax.set_title("hymenoptera-256: val accuracy against wall time")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.savefig(path, dpi=110)


def tutorial_recipe(data: Path, epochs: int) -> None:
    """The tutorial's fine-tuning loop, kept as written; prints [(seconds, val_acc), ...] as JSON."""
    started = time.perf_counter()
    import torch
    import torch.nn as nn
    from torchvision import datasets, transforms
    from oculi.models import create_model

    torch.manual_seed(0)
    norm = transforms.Normalize([0.5, 0.5, 0.5], [0.5, 0.5, 0.5])
    tf = {"train": transforms.Compose([transforms.RandomResizedCrop(224), transforms.RandomHorizontalFlip(),
                                       transforms.ToTensor(), norm]),
          "val": transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor(), norm])}
    sets = {s: datasets.ImageFolder(str(data / s), tf[s]) for s in ("train", "val")}
    loaders = {s: torch.utils.data.DataLoader(sets[s], batch_size=4, shuffle=s == "train", num_workers=2)
               for s in sets}
    model, _ = create_model("efficientnet_lite0", 2, 3, (224, 224), pretrained=True)
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.001, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=7, gamma=0.1)
    curve = []
    for epoch in range(epochs):
        model.train()
        for inputs, labels in loaders["train"]:
            optimizer.zero_grad()
            loss = criterion(model(inputs), labels)
            loss.backward()
            optimizer.step()
        scheduler.step()
        model.eval()
        correct = 0
        with torch.no_grad():
            for inputs, labels in loaders["val"]:
                correct += int((model(inputs).argmax(1) == labels).sum())
        curve.append((round(time.perf_counter() - started, 1), correct / len(sets["val"])))
        print(f"epoch {epoch + 1}: val {curve[-1][1]:.4f} at {curve[-1][0]} s", file=sys.stderr)
    print(json.dumps(curve))


if __name__ == "__main__":
    main()
