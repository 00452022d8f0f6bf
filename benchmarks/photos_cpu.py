"""Photos on a CPU: the features head, fine-tuning the top stages from cached activations, and fine-tuning
the whole network, as accuracy against end-to-end wall time (issue 18).

Each variant is one ``oculi train`` process (report included, as a user runs it) into an empty cache, so the
wall time is cold: decoding, the backbone's pass over every image, training, test scoring and report.html.
The table gives the kept model's val accuracy (what the run chose it by), its test accuracy, what the run
fine-tuned, its epochs and the wall time; the figure draws test accuracy against wall time per data set.

Data sets: hymenoptera-256 (2 classes, 153 val images; test: 10% of train held out) and, where the features
head is weak, a 5-class set made from CIFAR-10 JPEGs enlarged to 128 px (``--cifar5``, made with
``--make-cifar5 FROM``: airplane, automobile, bird, cat, deer; 400 train and 100 test images a class).

    python benchmarks/photos_cpu.py [--hymenoptera DIR] [--cifar5 DIR] [--make-cifar5 CIFAR_DIR]
                                    [--variants features auto k1 k2 full] [--out benchmarks/results]
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

VARIANTS = {  # name: (what it is, oculi train flags)
    "features": ("features head only", ["--mode", "features"]),
    "auto": ("default (auto)", []),
    "k1": ("top 1 stage", ["--unfreeze-stages", "1", "--time-budget", "1h"]),
    "k2": ("top 2 stages", ["--unfreeze-stages", "2", "--time-budget", "1h"]),
    "full": ("whole network, 3 epochs", ["--mode", "finetune", "--epochs", "3"]),
}
CIFAR5 = ("airplane", "automobile", "bird", "cat", "deer")


def make_cifar5(cifar: Path, out: Path, size: int = 128, train: int = 400, test: int = 100) -> Path:
    """The first ``train``/``test`` JPEGs of five CIFAR-10 classes, enlarged to ``size`` px (bicubic)."""
    from PIL import Image
    for split, n in (("train", train), ("test", test)):
        for name in CIFAR5:
            folder = out / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for file in sorted((cifar / split / name).iterdir())[:n]:
                image = Image.open(file).convert("RGB").resize((size, size), Image.BICUBIC)
                image.save(folder / f"{file.stem}.jpg", quality=90)
    return out


def run_variant(data: Path, flags: list[str], work: Path) -> dict:
    """One cold ``oculi train``: wall time, the kept model's val and test accuracy, what it trained."""
    env = {**os.environ, "OCULI_CACHE_DIR": str(work / "cache")}
    out = work / "run"
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "oculi", "train", str(data), "--out", str(out), "-q", *flags],
                          env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode:
        raise SystemExit(f"oculi train {' '.join(flags)} failed:\n{done.stderr[-2000:]}")
    config = json.loads((out / "config.json").read_text())["config"]
    metrics = json.loads((out / "test_metrics.json").read_text())
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    meta = json.loads((out / "model.json").read_text())
    tuned = [r for r in rows if r["phase"] == "finetune"]
    head = max((r["val_acc"] for r in rows if r["phase"] == "features"), default=None)
    kept = tuned[meta["metrics"]["best_epoch"] - 1]["val_acc"] if meta["training"] == "finetune" else head
    return {"wall_s": round(wall, 1), "test_acc": metrics["accuracy"], "val_acc": kept, "kept": meta["training"],
            "unfreeze_stages": config["unfreeze_stages"], "finetune_epochs": len(tuned), "features_val_acc": head}


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}%"


def plot(results: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(results), figsize=(5.5 * len(results), 4.2), squeeze=False)
    for ax, (name, rows) in zip(axes[0], results.items()):
        for i, (variant, r) in enumerate(rows.items()):
            ax.scatter(r["wall_s"], 100 * r["test_acc"], s=40)
            ax.annotate(VARIANTS[variant][0], (r["wall_s"], 100 * r["test_acc"]), textcoords="offset points",
                        xytext=(5, 4 - 11 * (i % 3)), fontsize=8)  # staggered: equal scores sit on one line
        ax.set(title=name, xlabel="wall time, cold, end to end (s)", ylabel="test accuracy (%)")
        ax.grid(alpha=0.3)
    fig.suptitle("Photos on a 2-core CPU: accuracy against time")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hymenoptera", type=Path, help="hymenoptera_data folder (default: ../shared's tar)")
    parser.add_argument("--cifar5", type=Path, help="the 5-class 128 px set (see --make-cifar5)")
    parser.add_argument("--make-cifar5", type=Path, metavar="CIFAR_DIR", help="make --cifar5 from CIFAR-10 JPEGs")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--replot", action="store_true", help="draw the figure again from --out's JSON")
    args = parser.parse_args()
    if args.replot:
        return plot(json.loads((args.out / "photos_cpu.json").read_text()), args.out / "photos_cpu.png")
    sets = {"hymenoptera-256": args.hymenoptera or extract_shared("hymenoptera-256.tar", "hymenoptera_data")}
    if args.make_cifar5:
        args.cifar5 = make_cifar5(args.make_cifar5, args.cifar5 or Path(tempfile.mkdtemp()) / "cifar5-128")
    if args.cifar5:
        sets["cifar5-128"] = args.cifar5
    results = {}
    for name, data in sets.items():
        results[name] = {}
        for variant in args.variants:
            with tempfile.TemporaryDirectory() as work:
                r = results[name][variant] = run_variant(data, VARIANTS[variant][1], Path(work))
            print(f"| {name} | {VARIANTS[variant][0]} | {r['unfreeze_stages'] or '-'} | {r['finetune_epochs']} | "
                  f"{r['kept']} | {_pct(r['features_val_acc'])} | {100 * r['val_acc']:.2f}% | "
                  f"{100 * r['test_acc']:.2f}% | {r['wall_s']:.0f} s |", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "photos_cpu.json").write_text(json.dumps(results, indent=1))
    plot(results, args.out / "photos_cpu.png")


if __name__ == "__main__":
    main()
