"""Leakage: how many planted copies of training images in val/ ``oculi check`` (without --labels: the cheap
checks that also run at train start) finds, and how many images it calls a leak that are none.

A data set is copied into /tmp as train/ and val/; then, for a seeded sample of training images, a copy goes
into val/ under the same class: a third exact, a third at half size re-encoded as JPEG quality 60, a third
cropped to the central 90% and re-encoded (a harder near copy). precision = planted copies among the images
reported as leaks; recall = planted copies reported / planted. Cold: an empty cache (decoding included).

- hymenoptera: /tmp/hym/hymenoptera_data as it is (train/ and val/), 30 copies planted.
- cifar2000: 200 images per class of CIFAR-10 train (32 px), 160 of each class in train/ and 40 in val/,
  60 copies planted.

``--labels``: ``oculi check --labels`` instead, which also pairs images whose backbone features are almost
parallel (cosine >= 0.90): slower (the backbone runs on every image), and it finds crops.

    python benchmarks/leakage.py [--seed 0] [--only hymenoptera cifar2000] [--labels]
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

from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from label_errors import cifar_files, hymenoptera_files  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def split_copy(files, dest: Path) -> list[Path]:
    """Copy ``files`` into dest/{train,val}/<class>/ (CIFAR: every fifth image to val); the train files."""
    train = []
    for i, (src, split, label) in enumerate(files):
        split = split or ("val" if i % 5 == 0 else "train")
        target = dest / split / label / f"{i:05d}_{Path(src).name}"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, target)
        if split == "train":
            train.append(target)
    return train


def plant(train: list[Path], dest: Path, n: int, seed: int) -> set[str]:
    """``n`` copies of training images into val/; their paths relative to ``dest``."""
    planted = set()
    for k, src in enumerate(random.Random(seed).sample(train, n)):
        target = dest / "val" / src.parent.name / f"copy_{src.stem}.jpg"
        with Image.open(src) as image:
            image = image.convert("RGB")
            if k % 3 == 0:
                shutil.copy2(src, target := target.with_suffix(src.suffix))
            elif k % 3 == 1:
                image.resize((max(1, image.width // 2), max(1, image.height // 2))).save(target, "JPEG", quality=60)
            else:
                w, h = image.size
                image.crop((w // 20, h // 20, w - w // 20, h - h // 20)).save(target, "JPEG", quality=85)
        planted.add(target.relative_to(dest).as_posix())
    return planted


def measure(name: str, files, n: int, seed: int, labels: bool) -> dict:
    from oculi.api import check
    from oculi.console import Reporter
    work = Path(tempfile.mkdtemp(prefix=f"oculi-leaks-{name}-"))
    planted = plant(split_copy(files, work / name), work / name, n, seed)
    os.environ["OCULI_CACHE_DIR"] = str(work / "cache")
    start = time.perf_counter()
    result, _ = check(str(work / name), labels, out=work / "out", reporter=Reporter(quiet=True))
    seconds = time.perf_counter() - start
    found = result.leaks()
    kinds = {}
    for d in result.duplicates:
        if d.path in planted:
            kinds[d.kind] = kinds.get(d.kind, 0) + 1
    row = {"data": name, "labels": labels, "images": result.profile["images"], "planted": len(planted), "reported": len(found),
           "precision": round(len(found & planted) / max(len(found), 1), 3),
           "recall": round(len(found & planted) / len(planted), 3), "found_by_kind": kinds,
           "missed": sorted(planted - found), "seconds": round(seconds, 1)}
    shutil.rmtree(work, ignore_errors=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", nargs="*", default=["hymenoptera", "cifar2000"])
    parser.add_argument("--labels", action="store_true")
    args = parser.parse_args()
    sets = {"hymenoptera": (hymenoptera_files, 30), "cifar2000": (cifar_files, 60)}
    rows = [measure(name, sets[name][0](), sets[name][1], args.seed, args.labels) for name in args.only]
    for row in rows:
        print(json.dumps(row), file=sys.stderr)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"leakage{'_labels' * args.labels}.json").write_text(json.dumps({"seed": args.seed, "rows": rows}, indent=2) + "\n")
    print("| data | check | images | planted | reported | precision | recall | time (cold) |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['data']} | {'--labels' if r['labels'] else 'hashes'} | {r['images']} | {r['planted']} | {r['reported']} | {r['precision']:.2f} | "
              f"{r['recall']:.2f} | {r['seconds']:.0f} s |")


if __name__ == "__main__":
    main()
