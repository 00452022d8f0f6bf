"""One fast-cnn training step on the CPU, in each variant issue 18 weighed: float32 or bfloat16 autocast,
channels-last or not, the whitening bias trained or frozen, and a plain prediction batch.

Random CIFAR-sized inputs (batch 512, 3x32x32), SGD Nesterov as the recipe; each variant runs a few
warm-up steps, then the median of ``--steps`` is printed with the images/s it means. An epoch of CIFAR-10
(45,000 images) is 87 such steps.

    python benchmarks/cpu_step.py [--threads 2] [--steps 8] [--compile]

``--compile`` adds torch.compile of the bfloat16 channels-last variant, with its compile time.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from oculi.models.speed import FastCNN

BATCH = 512


def step_seconds(model: torch.nn.Module, net, bfloat16: bool, channels_last: bool, steps: int) -> list[float]:
    """Seconds of each of ``steps`` training steps (forward, backward, SGD update) of ``net``."""
    layout = torch.channels_last if channels_last else torch.contiguous_format
    images = torch.randn(BATCH, 3, 32, 32).contiguous(memory_format=layout)
    labels = torch.randint(0, 10, (BATCH,))
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1, momentum=0.9,
                                nesterov=True)
    times = []
    for _ in range(steps):
        began = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bfloat16):
            logits = net(images)
        loss = F.cross_entropy(logits.float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - began)
    return times


def prediction_seconds(model: torch.nn.Module, bfloat16: bool) -> float:
    images = torch.randn(BATCH, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    model.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bfloat16):
        model(images)
        began = time.perf_counter()
        model(images)
        return time.perf_counter() - began


def variant(bfloat16: bool, channels_last: bool, bias_frozen: bool, steps: int) -> None:
    torch.manual_seed(0)
    model = FastCNN(10)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.whiten.bias.requires_grad_(not bias_frozen)
    median = statistics.median(step_seconds(model, model, bfloat16, channels_last, steps + 2)[2:])
    print(f"{'bfloat16' if bfloat16 else 'float32':<10}{'channels-last' if channels_last else 'NCHW':<15}"
          f"{'frozen' if bias_frozen else 'trained':<9}{median:>8.3f} s{BATCH / median:>8.0f} img/s"
          f"{prediction_seconds(model, bfloat16):>9.3f} s", flush=True)


def compiled(steps: int) -> None:
    torch.manual_seed(0)
    model = FastCNN(10).to(memory_format=torch.channels_last)
    model.whiten.bias.requires_grad_(False)
    times = step_seconds(model, torch.compile(model), True, True, steps + 2)
    median = statistics.median(times[2:])
    print(f"torch.compile (bfloat16, channels-last, frozen): first step {times[0]:.1f} s (compiling), then "
          f"{median:.3f} s a step ({BATCH / median:.0f} img/s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--compile", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{args.threads} threads, batch {BATCH}; bfloat16 native: {torch.ops.mkldnn._is_mkldnn_bf16_supported()}")
    print(f"{'precision':<10}{'layout':<15}{'bias':<9}{'step':>10}{'':>14}{'predict':>9}")
    for bfloat16, channels_last, frozen in [(False, False, False), (False, True, False), (True, False, False),
                                            (True, True, False), (True, True, True)]:
        variant(bfloat16, channels_last, frozen, args.steps)
    if args.compile:
        compiled(args.steps)


if __name__ == "__main__":
    main()
