"""How fast oculi's training loader feeds a model: augmented, normalised batches per second, no model.

Runs the exact batch path of the training loop (``oculi.training.loop.training_batches``: gather a batch of
cached uint8 images, augment it on the device, normalise) over a folder's decoded images, read from the
decoded-image cache (decoding it first if needed, which is timed separately).

    python benchmarks/loader_throughput.py [--data DIR] [--batch-size 512] [--epochs 3] [--device cpu] [--stream]

``--stream`` leaves the images in the cache file, as a run does for data larger than half the free
memory: worker processes read each batch's rows ahead of the loop; peak memory is printed.

``--data`` defaults to CIFAR-10 extracted from ../shared/data/cifar10-jpg.tar.gz (train split, 50,000 images).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from shared_data import extract_shared



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help="a folder of class folders (default: CIFAR-10 train)")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--augment", default="light", help="light (flip + translate) or none")
    parser.add_argument("--cold", action="store_true", help="decode into an empty cache first (times decoding)")
    parser.add_argument("--stream", action="store_true", help="read batches from the cache file (data larger than RAM)")
    args = parser.parse_args()
    data = args.data or extract_shared("cifar10-jpg.tar.gz", "cifar10") / "train"

    import torch
    from oculi.data import loading
    from oculi.data.cache import ArrayCache
    from oculi.data.loading import decode_source
    if args.stream:  # every split streams from the cache file
        loading.stream_threshold = lambda: 0.0
    from oculi.data.sources import open_source
    from oculi.data.transforms import Augmentation, Preprocessing, channel_stats
    from oculi.training.loop import LoopSettings, epoch_generator, epoch_order, training_batches

    source = open_source(str(data), val_split=0, test_split=0)
    cache = ArrayCache("images", root=Path(tempfile.mkdtemp()) if args.cold else None)
    if args.cold:
        for label, use in (("decoding into memory (--no-cache)", None), ("decoding into the empty cache", cache)):
            started = time.perf_counter()
            decode_source(source, Preprocessing((32, 32), 3), cache=use)
            print(f"{label}: {len(source.records)} files in {time.perf_counter() - started:.1f} s")
    started = time.perf_counter()
    decoded = decode_source(source, Preprocessing((32, 32), 3), cache=cache)
    train = decoded.select(source.records)
    print(f"{len(train)} images {tuple(train.images.shape[1:])} ready in {time.perf_counter() - started:.1f} s "
          f"(decoded or read from the cache)")
    preprocessing = Preprocessing((32, 32), 3, "squash", *channel_stats(train.images))
    augmentation = Augmentation(flip=True, translate=0.125) if args.augment == "light" else None
    device = torch.device(args.device)
    settings = LoopSettings(epochs=args.epochs, batch_size=args.batch_size, lr=0.1, schedule="constant",
                            warmup_epochs=0, label_smoothing=0, patience=None, head="softmax", seed=0)
    before = resident_mib()
    for epoch in range(args.epochs):
        generator = epoch_generator(0, epoch)
        order = epoch_order(train.labels, settings, generator)
        started, seen, checksum = time.perf_counter(), 0, 0.0
        for inputs, labels in training_batches(train, order, args.batch_size, augmentation, preprocessing,
                                               generator, device):
            checksum += float(inputs[:, :, 0, 0].sum())  # the no-op model: touch the batch, wait for it
            seen += len(labels)
        seconds = time.perf_counter() - started
        print(f"epoch {epoch + 1}: {seen} augmented images in {seconds:.2f} s = {seen / seconds:,.0f} images/s "
              f"(batch {args.batch_size}, augment {args.augment}, {device}, "
              f"{'streamed from the cache file' if args.stream else 'in memory'})")
    print(f"memory of this process: {before:,.0f} MiB before the epochs, {resident_mib():,.0f} MiB after "
          f"(the training images: {train.images.nbytes / 2**20:,.0f} MiB)")


def resident_mib() -> float:
    """This process's resident memory now, file pages it has mapped and touched included (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


if __name__ == "__main__":
    main()
