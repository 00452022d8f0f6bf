"""Frozen-backbone throughput on the CPU by engine: what feature extraction runs on.

    python benchmarks/backbone_engines.py [--model efficientnet_lite0] [--size 288] [--batch 32]

Random input, eval mode, the offline ImageNet weights when the model is efficientnet_lite0. Engines: eager
PyTorch, eager channels-last (how oculi trains), TorchScript traced and frozen, ONNX Runtime through
``oculi.runtime.onnx`` (what ``--mode features`` uses on a CPU). Each is warmed up once, then timed over 3 batches.
"""

from __future__ import annotations

import argparse
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--size", type=int, default=288)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()

    import torch
    from oculi.runtime.onnx import OnnxRunner, onnx_bytes
    from oculi.models import create_model

    torch.set_grad_enabled(False)
    model, _ = create_model(args.model, 2, 3, (args.size, args.size), pretrained=True)
    backbone = model.backbone.eval()
    x = torch.randn(args.batch, 3, args.size, args.size)
    print(f"{args.model}, {args.size}x{args.size}, batch {args.batch}, {torch.get_num_threads()} threads")
    rate("eager", backbone, x)
    rate("eager channels-last", backbone.to(memory_format=torch.channels_last),
         x.contiguous(memory_format=torch.channels_last))
    started = time.perf_counter()
    scripted = torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.trace(backbone, x[:1]).eval()))
    print(f"  TorchScript trace + freeze: {time.perf_counter() - started:.2f} s")
    rate("TorchScript frozen", scripted, x)
    started = time.perf_counter()
    runner = OnnxRunner(onnx_bytes(backbone, x[:1]))
    print(f"  ONNX export + session: {time.perf_counter() - started:.2f} s")
    rate("ONNX Runtime", runner, x)


def rate(name: str, forward, x, repeats: int = 3) -> None:
    forward(x)
    started = time.perf_counter()
    for _ in range(repeats):
        forward(x)
    print(f"{name:<22}{len(x) * repeats / (time.perf_counter() - started):8.1f} images/s")


if __name__ == "__main__":
    main()
