"""Which JPEG decoder should fill the decoded-image cache: oculi's worker processes (PIL), torchvision's
batched ``decode_jpeg`` on the CPU, or the same on the GPU (nvJPEG), over one folder of JPEGs.

Each way decodes every file to uint8 [3, H, W] at the size oculi would train at (32x32 CIFAR images need
no resize); the time counts reading the files too. The GPU row runs only where CUDA is available, and
says how far its pixels are from PIL's (decoders may round differently).

    python benchmarks/jpeg_decoders.py [--data DIR] [--batch 1024]

``--data`` defaults to CIFAR-10's train folder from ../shared/data/cifar10-jpg.tar.gz (50,000 JPEGs).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from shared_data import extract_shared


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help="a folder of class folders of JPEGs (default: CIFAR-10 train)")
    parser.add_argument("--batch", type=int, default=1024, help="files per decode_jpeg call")
    args = parser.parse_args()
    data = args.data or extract_shared("cifar10-jpg.tar.gz", "cifar10") / "train"

    import torch
    from oculi.data.loading import decode_source
    from oculi.data.sources import open_source
    from oculi.data.transforms import Preprocessing

    source = open_source(str(data), val_split=0, test_split=0)
    paths = [source.root / r.path for r in source.records]
    rows = []

    # Read every file first: it times reading alone and leaves all of them in the page cache, so that no
    # decoder below pays for the disk and the others not.
    started = time.perf_counter()
    encoded = read_files(paths)
    read_seconds = time.perf_counter() - started
    rows.append(("reading the files' bytes alone (torchvision.io.read_file)", read_seconds, ""))

    started = time.perf_counter()
    decoded = decode_source(source, Preprocessing((32, 32), 3), cache=None)
    reference = decoded.images[[decoded.rows[r.path] for r in source.records]]
    rows.append(("oculi: forked worker processes, per-file checks (what `oculi train` does)",
                 time.perf_counter() - started, ""))

    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        decode_batches(encoded[: args.batch], device)  # warm-up: nvJPEG's first call initialises it
        started = time.perf_counter()
        images = decode_batches(encoded, device, args.batch)
        seconds = time.perf_counter() - started + read_seconds
        gap = (images.cpu().int() - reference.int()).abs().float().mean().item()
        rows.append((f"torchvision decode_jpeg on {device}, {args.batch} files a call", seconds,
                     f"mean |pixel - PIL's| {gap:.2f}"))

    print(f"{len(paths):,} JPEGs from {data} ({torch.__version__}, {torch.get_num_threads()} threads)")
    for name, seconds, note in rows:
        print(f"| {name} | {seconds:.2f} s | {len(paths) / seconds:,.0f} files/s | {note} |")


def read_files(paths: list[Path]) -> list:
    from torchvision.io import read_file
    return [read_file(str(p)) for p in paths]


def decode_batches(encoded: list, device: str, batch: int = 1024):
    """Every image of ``encoded`` decoded to RGB uint8, stacked [N, 3, H, W] on ``device``."""
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg
    out = []
    for start in range(0, len(encoded), batch):
        out += decode_jpeg(encoded[start:start + batch], mode=ImageReadMode.RGB, device=device)
    images = torch.stack(out)
    if images.is_cuda:
        torch.cuda.synchronize()
    return images


if __name__ == "__main__":
    main()
