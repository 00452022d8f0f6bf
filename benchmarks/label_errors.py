"""Label errors: how many of the labels flipped on purpose ``oculi check --labels`` puts at the top.

Each data set is copied into /tmp with a seeded fraction of its images moved into another class's folder
(a random other class), then checked as a user would (``oculi.check``, the code of ``oculi check DATA
--labels``) into an empty cache (cold: decoding and backbone features included). With k = the number
flipped: precision@k = flipped images among the first k listed in label_issues.csv (all listed when fewer
are), recall = flipped images among everything listed / k. The originals' own label errors (hymenoptera has
a few: flowers in ants/) count against precision.

- hymenoptera: the 398 photos of /tmp/hym/hymenoptera_data (train/ and val/ kept), efficientnet_lite0
  features at 224 px.
- cifar2000: 200 images per class of CIFAR-10 train (32 px JPEGs), in class folders: oculi's plan for small
  images trains from scratch, so labels are judged on the photo backbone's features of the enlarged images.

    python benchmarks/label_errors.py [--fraction 0.1] [--seed 0] [--only hymenoptera cifar2000]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

HYM = Path("/tmp/hym/hymenoptera_data")
CIFAR = Path("/tmp/oculi-bench-cifar10/cifar10/train")
RESULTS = Path(__file__).parent / "results" / "label_errors.json"


def hymenoptera_files() -> list[tuple[str, str, str]]:
    """(source file, split folder or "", class) of every image."""
    return [(str(p), split.name, p.parent.name) for split in sorted(HYM.iterdir()) if split.is_dir()
            for p in sorted(split.glob("*/*.jpg"))]


def cifar_files(per_class: int = 200) -> list[tuple[str, str, str]]:
    return [(str(p), "", c.name) for c in sorted(CIFAR.iterdir()) for p in sorted(c.glob("*.jpg"))[:per_class]]


def flipped_copy(files: list[tuple[str, str, str]], dest: Path, fraction: float, seed: int) -> set[str]:
    """Copy ``files`` into ``dest``/[split/]class/, a ``fraction`` of them into another class; returns the
    paths (relative to ``dest``) of the flipped ones."""
    rng = random.Random(seed)
    classes = sorted({c for _, _, c in files})
    flip = set(rng.sample(range(len(files)), round(fraction * len(files))))
    flipped = set()
    for i, (src, split, label) in enumerate(files):
        if i in flip:
            label = rng.choice([c for c in classes if c != label])
        rel = Path(split, label, f"{i:05d}_{Path(src).name}").as_posix().lstrip("/")  # names unique across classes
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dest / rel)
        if i in flip:
            flipped.add(rel)
    return flipped


def measure(name: str, files, fraction: float, seed: int) -> dict:
    from oculi.api import check
    from oculi.console import Reporter
    work = Path(tempfile.mkdtemp(prefix=f"oculi-labels-{name}-"))
    flipped = flipped_copy(files, work / name, fraction, seed)
    os.environ["OCULI_CACHE_DIR"] = str(work / "cache")  # cold: nothing decoded or computed before
    start = time.perf_counter()
    result, _ = check(str(work / name), labels=True, out=work / "out", reporter=Reporter(quiet=True))
    seconds = time.perf_counter() - start
    listed = [row["path"] for row in result.label_issues]
    k = len(flipped)
    top = listed[:k]
    row = {"data": name, "images": len(files), "flipped": k, "listed": len(listed),
           "precision_at_k": round(sum(p in flipped for p in top) / max(len(top), 1), 3),
           "recall": round(sum(p in flipped for p in listed) / max(k, 1), 3),
           "seconds": round(seconds, 1), "method": result.label_method}
    shutil.rmtree(work, ignore_errors=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fraction", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", nargs="*", default=["hymenoptera", "cifar2000"])
    args = parser.parse_args()
    sets = {"hymenoptera": hymenoptera_files, "cifar2000": cifar_files}
    rows = []
    for name in args.only:
        row = measure(name, sets[name](), args.fraction, args.seed)
        print(json.dumps(row), file=sys.stderr)
        rows.append(row)
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps({"fraction": args.fraction, "seed": args.seed, "rows": rows}, indent=2) + "\n")
    print("| data | images | flipped | listed | precision@k | recall | time (cold) | judged on |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for r in rows:
        print(f"| {r['data']} | {r['images']} | {r['flipped']} | {r['listed']} | {r['precision_at_k']:.2f} | "
              f"{r['recall']:.2f} | {r['seconds']:.0f} s | {r['method']} |")


if __name__ == "__main__":
    main()
