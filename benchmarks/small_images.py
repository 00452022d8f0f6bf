"""Small images from scratch: oculi's default against the tutorial way and timm's standard training.

All three train on the same folders (CIFAR-10 JPEGs: train/ and test/) and are scored on the same
10,000 test images. Each runs in its own process; the table gives test accuracy, end-to-end wall time
(process start to saved model, JPEG decoding included), training images/s, peak RAM and peak GPU memory.

- oculi: ``oculi train DIR`` with every default (fast-cnn and its recipe; ``--oculi-flags`` adds flags,
  e.g. "--model fast-cnn-wide --epochs 16"), into an empty cache (cold: JPEG decoding included);
  ``--warm`` runs it a second time on that cache. It holds 10% of train out for val. The wall time is
  the whole command's, report.html included (issue 18 counts it); ``--no-report`` leaves the report out,
  as the figures before issue 18 did ("process start to saved model").
- tutorial: torchvision ``ImageFolder`` + ``DataLoader`` (2 workers) + the ``vgg-mini`` CNN (the CIFAR
  tutorial's network, layer for layer), Adam 1e-3, batch 64, pixels rescaled to [0, 1], no augmentation.
- timm: timm's own pieces the standard way: ``create_dataset``/``create_loader`` with its default train
  transform at 32 px, ``resnet18``, ``create_optimizer_v2`` (SGD 0.1 nesterov, wd 5e-4),
  ``create_scheduler_v2`` (cosine, warmup 1 epoch), label smoothing 0.1, batch 128.

    python benchmarks/small_images.py [--data DIR] [--peer-epochs 14] [--device auto] [--warm] [--no-report]
                                      [--only oculi tutorial timm] [--oculi-flags "..."]
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
    parser.add_argument("--data", type=Path, help="a folder with train/ and test/ (default: CIFAR-10 JPEGs)")
    parser.add_argument("--peer-epochs", type=int, default=14, help="epochs of the two peers")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--only", nargs="*", default=["oculi", "tutorial", "timm"])
    parser.add_argument("--warm", action="store_true", help="oculi again, on the cache its cold run filled")
    parser.add_argument("--oculi-flags", default="", help="extra `oculi train` flags, one string")
    parser.add_argument("--no-report", action="store_true", help="oculi without report.html (timed to the saved model)")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # a peer, in its own process
    args = parser.parse_args()
    if args.child:
        return PEERS[args.child](args.data, args.peer_epochs, args.device)
    data = args.data or extract_shared("cifar10-jpg.tar.gz", "cifar10")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.only:
            runs = ["cold", "warm"] if args.warm else ["cold"]
            for row in ([run_oculi(data, Path(tmp), args, cache) for cache in runs] if name == "oculi"
                        else [run_peer(name, data, args)]):
                rows.append(row)
                print(json.dumps(row), flush=True)
    print_table(rows, data, args)


def timed(command: list[str], env: dict) -> tuple[float, float, str]:
    """Wall seconds, peak RSS (MiB) and stdout of a child process."""
    started = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True)
    out = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    if status != 0:
        raise SystemExit(f"failed: {' '.join(command)}")
    return time.perf_counter() - started, usage.ru_maxrss / 1024, out


def run_oculi(data: Path, tmp: Path, args, cache: str) -> dict:
    """One ``oculi train`` in its own process; ``cache`` cold: the cache folder is new and empty, warm: the
    cold run's."""
    run_dir = tmp / f"oculi-run-{cache}"
    env = {**os.environ, "OCULI_CACHE_DIR": str(tmp / "oculi-cache")}
    command = [sys.executable, "-m", "oculi", "train", str(data), "--out", str(run_dir), "--device", args.device,
               "--quiet", *(["--no-report"] if args.no_report else []), *args.oculi_flags.split()]
    seconds, peak, _ = timed(command, env)
    metrics = json.loads((run_dir / "test_metrics.json").read_text())
    history = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    config = json.loads((run_dir / "config.json").read_text())["config"]
    return {"name": f"oculi ({config['model']}, {len(history)} epochs, {cache})", "test_acc": metrics["accuracy"],
            "seconds": round(seconds, 1), "train_images_per_s": _mean(h["images_per_s"] for h in history),
            "peak_ram_mib": round(peak), "gpu_peak_mib": max((h.get("gpu_peak_mib", 0) for h in history), default=0)}


def run_peer(name: str, data: Path, args) -> dict:
    command = [sys.executable, __file__, "--child", name, "--data", str(data), "--peer-epochs",
               str(args.peer_epochs), "--device", args.device]
    seconds, peak, out = timed(command, dict(os.environ))
    result = json.loads(out.strip().splitlines()[-1])
    return {**result, "seconds": round(seconds, 1), "peak_ram_mib": round(peak)}


def _mean(values) -> float:
    values = list(values)
    return round(sum(values) / max(1, len(values)))


def print_table(rows: list[dict], data: Path, args) -> None:
    report = "without report.html" if args.no_report else "report.html included"
    print(f"\n{data}; oculi flags: '{args.oculi_flags}' ({report}); peers: {args.peer_epochs} epochs")
    print(f"{'contender':<44}{'test acc':>9}{'wall':>9}{'train img/s':>13}{'peak RAM':>11}{'peak GPU':>10}")
    for r in rows:
        print(f"{r['name']:<44}{r['test_acc']:>9.2%}{r['seconds']:>8.1f}s{r['train_images_per_s']:>13,}"
              f"{r['peak_ram_mib']:>7} MiB{r['gpu_peak_mib']:>6} MiB")


# ---- the peers, each run in a child process; each prints its result as JSON on its last line ------------

def _device(name: str):
    import torch
    return torch.device("cuda" if name == "auto" and torch.cuda.is_available() else "cpu" if name == "auto" else name)


def _evaluate(model, loader, device) -> float:
    import torch
    model.eval()
    correct = seen = 0
    with torch.no_grad():
        for images, labels in loader:
            correct += int((model(images.to(device)).argmax(1).cpu() == labels).sum())
            seen += len(labels)
    return correct / seen


def _gpu_peak(device) -> int:
    import torch
    return round(torch.cuda.max_memory_allocated() / 2**20) if device.type == "cuda" else 0


def tutorial_peer(data: Path, epochs: int, device_name: str) -> None:
    """The tutorial way, as such notebooks write it."""
    import torch
    import torch.nn.functional as F
    from torchvision import datasets, transforms
    from oculi.models import create_model

    torch.manual_seed(0)
    device = _device(device_name)
    to_tensor = transforms.ToTensor()  # the tutorials' Rescaling(1/255)
    train = datasets.ImageFolder(str(data / "train"), to_tensor)
    test = datasets.ImageFolder(str(data / "test"), to_tensor)
    loader = torch.utils.data.DataLoader(train, batch_size=64, shuffle=True, num_workers=2)
    test_loader = torch.utils.data.DataLoader(test, batch_size=256, num_workers=2)
    model, _ = create_model("vgg-mini", 10, 3, (32, 32))
    model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    started, seen = time.perf_counter(), 0
    for epoch in range(epochs):
        model.train()
        for images, labels in loader:
            loss = F.cross_entropy(model(images.to(device)), labels.to(device))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            seen += len(labels)
        print(f"epoch {epoch + 1}: {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    speed = seen / (time.perf_counter() - started)
    print(json.dumps({"name": f"tutorial (vgg-mini, Adam, {epochs} epochs)", "test_acc": _evaluate(model, test_loader, device),
                      "train_images_per_s": round(speed), "gpu_peak_mib": _gpu_peak(device)}))


def timm_peer(data: Path, epochs: int, device_name: str) -> None:
    """timm's standard pieces: its dataset, loader and transforms, model factory, optimizer and scheduler."""
    import timm
    import torch
    from timm.data import create_dataset, create_loader
    from timm.loss import LabelSmoothingCrossEntropy
    from timm.optim import create_optimizer_v2
    from timm.scheduler import create_scheduler_v2

    torch.manual_seed(0)
    device = _device(device_name)
    train = create_dataset("", root=str(data / "train"), split="train", is_training=True)
    test = create_dataset("", root=str(data / "test"), split="validation")
    mean, std = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
    common = dict(input_size=(3, 32, 32), mean=mean, std=std, num_workers=2, device=device,
                  use_prefetcher=device.type == "cuda")
    loader = create_loader(train, batch_size=128, is_training=True, **common)
    test_loader = create_loader(test, batch_size=256, is_training=False, crop_pct=1.0, **common)
    model = timm.create_model("resnet18", num_classes=10).to(device)
    optimizer = create_optimizer_v2(model, "sgd", lr=0.1, weight_decay=5e-4, momentum=0.9)
    scheduler, _ = create_scheduler_v2(optimizer, "cosine", num_epochs=epochs, warmup_epochs=1,
                                       updates_per_epoch=len(loader))
    criterion = LabelSmoothingCrossEntropy(0.1)
    started, seen = time.perf_counter(), 0
    for epoch in range(epochs):
        model.train()
        for step, (images, labels) in enumerate(loader):
            loss = criterion(model(images.to(device)), labels.to(device))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step_update(epoch * len(loader) + step + 1)
            seen += len(labels)
        scheduler.step(epoch + 1)
        print(f"epoch {epoch + 1}: {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    speed = seen / (time.perf_counter() - started)
    print(json.dumps({"name": f"timm (resnet18, SGD, {epochs} epochs)", "test_acc": _evaluate(model, test_loader, device),
                      "train_images_per_s": round(speed), "gpu_peak_mib": _gpu_peak(device)}))


PEERS = {"tutorial": tutorial_peer, "timm": timm_peer}

if __name__ == "__main__":
    main()
