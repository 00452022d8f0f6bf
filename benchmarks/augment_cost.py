"""What the modern recipe's augmentations cost on the CPU: images/s of each on a 64-image uint8 batch at 32 and
224 px (issue 28). The per-image policies (RandAugment, TrivialAugmentWide) run image by image
(``transforms.auto_augment``); the rest is batched. Median of ``--repeats`` timed calls after one warm-up.

    python benchmarks/augment_cost.py [--repeats 7]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from oculi.data.mixing import mix_batch
from oculi.data.transforms import AUGMENT_PRESETS, Augmentation

CASES = {
    "light (flip + translate, batched)": AUGMENT_PRESETS["light"],
    "randaugment (per image)": Augmentation(flip=False, translate=0.0, auto_augment="randaugment"),
    "trivialaugment (per image)": Augmentation(flip=False, translate=0.0, auto_augment="trivialaugment"),
    "erasing 0.25 (batched)": Augmentation(flip=False, translate=0.0, erasing=0.25),
    "modern's per-image part (light + trivialaugment + erasing 0.25)": Augmentation(auto_augment="trivialaugment",
                                                                                    erasing=0.25),
}


def images_per_second(apply, batch: torch.Tensor, repeats: int) -> float:
    apply(batch)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        apply(batch)
        times.append(time.perf_counter() - started)
    return len(batch) / statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for side in (32, 224):
        batch = torch.randint(0, 256, (64, 3, side, side), dtype=torch.uint8)
        generator = torch.Generator().manual_seed(0)
        print(f"\n64 images at {side} px: images/s")
        for name, aug in CASES.items():
            print(f"  {name:<66} {images_per_second(lambda b: aug(b, generator), batch, args.repeats):>9,.0f}")
        floats = batch.float()
        labels = torch.arange(64) % 10
        for name, (mixup, cutmix) in {"mixup 0.8 (batched)": (0.8, 0.0), "cutmix 1.0 (batched)": (0.0, 1.0)}.items():
            rate = images_per_second(lambda b: mix_batch(b, labels, mixup, cutmix, generator), floats, args.repeats)
            print(f"  {name:<66} {rate:>9,.0f}")


if __name__ == "__main__":
    main()
