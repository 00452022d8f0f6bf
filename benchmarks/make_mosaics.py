"""A multi-label photo set made from a folder of class folders: each image a 2x2 mosaic of one or two photos of
different classes (the other tiles gray), labelled with both, in a labels.csv (issue 26's end-to-end set).

    python benchmarks/make_mosaics.py ../shared/cifar10/train /tmp/mosaics --images 2000 --classes 5 --seed 0
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
from PIL import Image


def make_mosaics(source: Path, out: Path, images: int, classes: int, seed: int, two_share: float = 0.5) -> Path:
    """Write ``images`` mosaics and ``out``/labels.csv (path,label with ';' between labels); returns the CSV."""
    rng = np.random.default_rng(seed)
    names = sorted(p.name for p in source.iterdir() if p.is_dir())[:classes]
    files = {n: sorted((source / n).iterdir()) for n in names}
    side = Image.open(files[names[0]][0]).size[0]
    (out / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(images):
        picked = rng.choice(len(names), 2 if rng.random() < two_share else 1, replace=False)
        canvas = Image.new("RGB", (2 * side, 2 * side), (128, 128, 128))
        for tile, c in zip(rng.permutation(4), picked):
            photo = Image.open(files[names[c]][rng.integers(len(files[names[c]]))]).convert("RGB")
            canvas.paste(photo.resize((side, side)), (int(tile % 2) * side, int(tile // 2) * side))
        name = f"images/{i:05d}.png"
        canvas.save(out / name)
        rows.append((name, ";".join(sorted(names[c] for c in picked))))
    table = out / "labels.csv"
    with open(table, "w", newline="") as f:
        csv.writer(f).writerows([("path", "label"), *rows])
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--classes", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(make_mosaics(args.source, args.out, args.images, args.classes, args.seed))


if __name__ == "__main__":
    main()
