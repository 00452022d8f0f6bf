"""Partial fine-tuning on cached activations: is it worth it on a CPU? (exploration for issue 18)

efficientnet_lite0 (the offline ImageNet weights, mean = std = 0.5) on hymenoptera-256 (244 train /
153 val). The first stages are frozen and run once per image and per augmented view; their output
activations are cached (fp16). The last K stages (timm's ``blocks[7-K:]`` + ``conv_head``/``bn2``) and
a linear head are then trained on the cache for several epochs, so an epoch costs only the top of the
network. Augmentation in the cached space: a random horizontal flip and a random crop of the activation
map (the pooled head accepts any map size; val uses the whole map).

Variants:
- features head: the frozen network's pooled features (plain view) and a linear head, 60 epochs of
  AdamW (oculi's ``--mode features`` recipe, re-implemented here so that every variant shares one
  decoding and one set of views);
- K = 1, 2, 3 stages unfrozen, BatchNorm of the unfrozen stages in train mode ("bn train") or kept at
  its pretrained statistics ("bn frozen"). The head starts from the features head (linear probing then
  fine-tuning); AdamW, lr 1e-4 for the stages and 1e-3 for the head, cosine schedule, label smoothing 0.1.

Each epoch draws one cached view per training image (244 samples per epoch, batch 32).
Timings are wall seconds of this process; run it with OMP_NUM_THREADS=2 on the 2-core CPU.

    OMP_NUM_THREADS=2 python benchmarks/partial_finetune.py [--size 224] [--epochs 12] [--ks 1,2,3]
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image
from torchvision.transforms import v2 as T

from oculi.models.pretrained import create_timm_model

DATA = Path("/tmp/hym/hymenoptera_data")
CLASSES = ("ants", "bees")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def load_split(root: Path, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images [N, 3, size, size] (squashed, as oculi resizes by default) and labels."""
    images, labels = [], []
    for label, name in enumerate(CLASSES):
        for file in sorted((root / name).iterdir()):
            image = Image.open(file).convert("RGB").resize((size, size), Image.BILINEAR)
            images.append(torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1))
            labels.append(label)
    return torch.stack(images), torch.tensor(labels)


def train_views(images: torch.Tensor, size: int, crops: int) -> list[torch.Tensor]:
    """The plain images, their mirror images, and ``crops`` random-resized crops (random flip too)."""
    crop = T.Compose([T.RandomResizedCrop(size, scale=(0.35, 1.0), antialias=True), T.RandomHorizontalFlip()])
    views = [images, images.flip(-1)]
    views += [torch.stack([crop(image) for image in images]) for _ in range(crops)]
    return views


def normalize(batch: torch.Tensor) -> torch.Tensor:
    return (batch.float() / 255 - 0.5) / 0.5  # these weights' statistics: mean = std = 0.5


def stem(backbone: nn.Module) -> nn.Module:
    return nn.Sequential(backbone.conv_stem, backbone.bn1)


def top(backbone: nn.Module, k: int) -> nn.Module:
    """The last ``k`` stages and the final 1x1 conv, pooled: activations entering blocks[7-k] -> features."""
    return nn.Sequential(*backbone.blocks[7 - k:], backbone.conv_head, backbone.bn2, nn.AdaptiveAvgPool2d(1),
                         nn.Flatten())


@torch.no_grad()
def cache_prefixes(backbone: nn.Module, views: list[torch.Tensor], k_max: int,
                   batch: int = 32) -> tuple[dict[int, torch.Tensor], dict[int, float]]:
    """Activations entering blocks[7-k] for every k <= k_max (fp16, [views, N, C, H, W]) and the cumulative
    seconds it took to compute each from the images (the cost of caching for that k)."""
    first = 7 - k_max
    prefix = nn.Sequential(stem(backbone), *backbone.blocks[:first]).eval()
    acts = {k: [] for k in range(1, k_max + 1)}
    seconds = {k: 0.0 for k in acts}
    for view in views:
        parts = {k: [] for k in acts}
        for start in range(0, len(view), batch):
            t = time.perf_counter()
            x = prefix(normalize(view[start:start + batch]))
            spent = time.perf_counter() - t
            for k in range(k_max, 0, -1):  # k_max first: its input is the prefix's output
                if k < k_max:
                    t = time.perf_counter()
                    x = backbone.blocks[6 - k](x)
                    spent += time.perf_counter() - t
                seconds[k] += spent
                parts[k].append(x.half())
        for k in acts:
            acts[k].append(torch.cat(parts[k]))
    return {k: torch.stack(v) for k, v in acts.items()}, seconds


def random_map_crop(x: torch.Tensor, fraction: float = 0.85) -> torch.Tensor:
    """A random window (``fraction`` of each side, same for the batch) and a random flip of activation maps:
    valid augmentation for the convolutions that follow (translation equivariant, mirror symmetric data)."""
    h, w = x.shape[-2:]
    ch, cw = max(1, round(h * fraction)), max(1, round(w * fraction))
    top_, left = random.randint(0, h - ch), random.randint(0, w - cw)
    x = x[..., top_:top_ + ch, left:left + cw]
    flip = torch.rand(len(x)) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


@torch.no_grad()
def pooled(network: nn.Module, acts: torch.Tensor, batch: int = 64) -> torch.Tensor:
    network.eval()
    return torch.cat([network(acts[i:i + batch].float()) for i in range(0, len(acts), batch)])


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return (logits.argmax(1) == labels).float().mean().item()


def features_head(train_x: torch.Tensor, train_y: torch.Tensor, val_x: torch.Tensor, val_y: torch.Tensor,
                  epochs: int = 60) -> tuple[nn.Linear, float, int]:
    """oculi's features recipe: a linear head, AdamW lr 1e-3, wd 5e-4, batch 32, best val epoch kept."""
    head = nn.Linear(train_x.shape[1], len(CLASSES))
    opt = torch.optim.AdamW(head.parameters(), lr=1e-3, weight_decay=5e-4)
    best, best_state, best_epoch = -1.0, None, 0
    for epoch in range(1, epochs + 1):
        for idx in torch.randperm(len(train_x)).split(32):
            loss = F.cross_entropy(head(train_x[idx]), train_y[idx], label_smoothing=0.1)
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            acc = accuracy(head(val_x), val_y)
        if acc > best:
            best, best_state, best_epoch = acc, copy.deepcopy(head.state_dict()), epoch
    head.load_state_dict(best_state)
    return head, best, best_epoch


def freeze_norm(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._NormBase):
            m.eval()


def finetune(top_net: nn.Module, head: nn.Linear, train_acts: torch.Tensor, train_y: torch.Tensor,
             val_acts: torch.Tensor, val_y: torch.Tensor, epochs: int, bn_train: bool, lr_stages: float,
             lr_head: float) -> list[dict]:
    """Train ``top_net`` and ``head`` on cached activations [views, N, ...]; one random view per image per
    epoch. Returns per epoch: seconds (training only), cumulative seconds (with val), val accuracy."""
    model = nn.Sequential(top_net, head)
    decay = [p for n, p in top_net.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in top_net.named_parameters() if p.ndim <= 1]
    opt = torch.optim.AdamW([{"params": decay, "lr": lr_stages, "weight_decay": 0.01},
                             {"params": no_decay, "lr": lr_stages, "weight_decay": 0.0},
                             {"params": head.parameters(), "lr": lr_head, "weight_decay": 5e-4}])
    views, n = train_acts.shape[:2]
    steps = epochs * math.ceil(n / 32)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    curve, started = [], time.perf_counter()
    for epoch in range(1, epochs + 1):
        t = time.perf_counter()
        model.train()
        if not bn_train:
            freeze_norm(model)
        view = torch.randint(views, (n,))
        for idx in torch.randperm(n).split(32):
            if len(idx) < 2 and bn_train:
                continue  # BatchNorm in train mode needs more than one sample
            x = random_map_crop(train_acts[view[idx], idx].float())
            loss = F.cross_entropy(model(x), train_y[idx], label_smoothing=0.1)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        train_s = time.perf_counter() - t
        acc = accuracy(pooled(model, val_acts), val_y)
        curve.append({"epoch": epoch, "train_s": train_s, "elapsed_s": time.perf_counter() - started, "val_acc": acc})
        print(f"    epoch {epoch:2d}  {train_s:5.1f} s  val {acc:.4f}", flush=True)
    return curve


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--ks", default="1,2,3", help="numbers of last stages to unfreeze")
    parser.add_argument("--bn", default="train,frozen", help="BatchNorm modes to try: train, frozen")
    parser.add_argument("--crops", type=int, default=2, help="random-resized-crop views per train image")
    parser.add_argument("--lr-stages", type=float, default=1e-4)
    parser.add_argument("--lr-head", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    ks = [int(k) for k in args.ks.split(",")]
    modes = args.bn.split(",")
    print(f"load average at start: {load_average()}  (all timings under load)  threads {torch.get_num_threads()}")
    wall = time.perf_counter()
    seed_everything(args.seed)

    t = time.perf_counter()
    train_images, train_y = load_split(args.data / "train", args.size)
    val_images, val_y = load_split(args.data / "val", args.size)
    decode_s = time.perf_counter() - t
    t = time.perf_counter()
    views = train_views(train_images, args.size, args.crops)
    views_s = time.perf_counter() - t
    print(f"decode {decode_s:.1f} s, {len(views)} train views {views_s:.1f} s, size {args.size}")

    model, _ = create_timm_model("efficientnet_lite0", len(CLASSES), 3, pretrained=True)
    backbone = model.backbone.eval()
    for p in backbone.parameters():
        p.requires_grad_(False)

    # Baseline: the whole frozen network on the plain train view and val, then a head (timed on its own).
    t = time.perf_counter()
    with torch.no_grad():
        plain_x = torch.cat([backbone(normalize(train_images[i:i + 32])) for i in range(0, len(train_images), 32)])
        val_x = torch.cat([backbone(normalize(val_images[i:i + 32])) for i in range(0, len(val_images), 32)])
    extract_s = time.perf_counter() - t
    t = time.perf_counter()
    _, base_acc, base_epoch = features_head(plain_x, train_y, val_x, val_y)
    head_s = time.perf_counter() - t
    rows = [{"variant": "features head (plain view)", "cache_s": extract_s, "epoch_s": head_s / 60,
             "best": base_acc, "best_epoch": base_epoch, "best_at_s": extract_s + head_s * base_epoch / 60,
             "total_s": extract_s + head_s, "mb": 0.0}]
    print(f"features head: extract {extract_s:.1f} s, head {head_s:.1f} s, val {base_acc:.4f} (epoch {base_epoch})")

    t = time.perf_counter()
    train_acts, train_cache_s = cache_prefixes(backbone, views, max(ks))
    val_acts, val_cache_s = cache_prefixes(backbone, [val_images], max(ks))
    print(f"cached activations of {len(views)} train views + val in {time.perf_counter() - t:.1f} s")

    for k in ks:
        cache_s = train_cache_s[k] + val_cache_s[k]
        mb = (train_acts[k].numel() + val_acts[k].numel()) * 2 / 2**20
        tr, va = train_acts[k], val_acts[k][0]
        print(f"K={k}: input {tuple(tr.shape[2:])}, cache {cache_s:.1f} s, {mb:.1f} MB")
        # The features head for this K, from the cached plain view through the frozen top (the start of LP-FT).
        t = time.perf_counter()
        frozen_top = top(backbone, k)
        head, probe_acc, _ = features_head(pooled(frozen_top, tr[0]), train_y, pooled(frozen_top, va), val_y)
        probe_s = time.perf_counter() - t
        print(f"  probe head from the cache: val {probe_acc:.4f} in {probe_s:.1f} s")
        for mode in modes:
            seed_everything(args.seed)
            top_net = copy.deepcopy(frozen_top)
            for p in top_net.parameters():
                p.requires_grad_(True)
            print(f"  K={k}, bn {mode}")
            curve = finetune(top_net, copy.deepcopy(head), tr, train_y, va, val_y, args.epochs, mode == "train",
                             args.lr_stages, args.lr_head)
            best = max(curve, key=lambda c: c["val_acc"])
            train_s = curve[-1]["elapsed_s"]
            rows.append({"variant": f"K={k}, bn {mode}", "cache_s": cache_s, "epoch_s": train_s / len(curve),
                         "best": best["val_acc"], "best_epoch": best["epoch"],
                         "best_at_s": cache_s + probe_s + best["elapsed_s"],
                         "total_s": cache_s + probe_s + train_s, "mb": mb,
                         "curve": " ".join(f"{c['val_acc']:.3f}" for c in curve)})

    print(f"\nefficientnet_lite0 {args.size} px, hymenoptera-256, {len(views)} cached train views, "
          f"{args.epochs} epochs, lr stages {args.lr_stages:g} head {args.lr_head:g}, seed {args.seed} (under load; load average at end: {load_average()})")
    print(f"decode {decode_s:.1f} s + train views {views_s:.1f} s not included below; total wall "
          f"{time.perf_counter() - wall:.0f} s")
    print("| variant | cache s | s/epoch | best val | at epoch | best at s | total s | cache MB |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['variant']} | {r['cache_s']:.1f} | {r['epoch_s']:.2f} | {r['best']:.4f} | {r['best_epoch']} | "
              f"{r['best_at_s']:.1f} | {r['total_s']:.1f} | {r['mb']:.1f} |")
    print("\nval accuracy per epoch:")
    for r in rows[1:]:
        print(f"  {r['variant']}: {r['curve']}")


if __name__ == "__main__":
    main()
