"""Running a model over prepared uint8 images: the one path shared by validation, evaluation and
prediction, so all three give the same probabilities for the same image."""

from __future__ import annotations

from contextlib import nullcontext

import torch
import torch.nn as nn

from ..data.transforms import Preprocessing
from ..errors import OculiError


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' picks CUDA when present, then Apple's MPS, else the CPU."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise OculiError(f"--device: unknown device '{name}' (use auto, cpu, cuda, cuda:N or mps)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise OculiError(f"--device {name}: CUDA is not available on this machine")
    return device


def place_model(model: nn.Module, device: torch.device) -> nn.Module:
    """Move the model to ``device`` in channels-last layout: measured 2x faster training for
    efficientnet_lite0 and 1.2x for vgg-mini on a 2-core CPU, and what tensor cores want on CUDA."""
    return model.to(device=device, memory_format=torch.channels_last)


def model_input(batch: torch.Tensor) -> torch.Tensor:
    """A normalised batch in the layout ``place_model`` gives the weights."""
    return batch.contiguous(memory_format=torch.channels_last)


def autocast(device: torch.device, cpu: bool = False):
    """bfloat16 autocast on CUDA (no loss scaling needed, unlike float16); with ``cpu`` (training steps) also
    on a CPU with native bfloat16 instructions (AVX512-BF16 or AMX, through oneDNN): fast-cnn's training
    step at batch 512 on 2 cores took 0.31 s instead of 0.45 s (BENCHMARKS.md). Prediction on the CPU stays
    float32, so that validation, evaluation, prediction and the export's parity check see the same numbers;
    elsewhere, full precision (emulated bfloat16 is slower than float32)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    if cpu and device.type == "cpu" and cpu_has_bfloat16():
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return nullcontext()


def cpu_has_bfloat16() -> bool:
    """Whether this CPU computes in bfloat16 natively (oneDNN's own test)."""
    return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def logits_to_probs(logits: torch.Tensor, head: str) -> torch.Tensor:
    """[N, outputs] logits -> [N, classes] probabilities; a sigmoid head's one output is P(class 1)."""
    logits = logits.float()
    if head == "multilabel":  # one independent probability a class
        return torch.sigmoid(logits)
    if head == "sigmoid":
        p = torch.sigmoid(logits[:, 0])
        return torch.stack([1 - p, p], dim=1)
    return torch.softmax(logits, dim=1)


def head_class_logits(logits: torch.Tensor, head: str) -> torch.Tensor:
    """[N, outputs] logits -> [N, classes] logits whose softmax is the head's probabilities: a sigmoid's one
    output z becomes [-z/2, z/2] (``calibration.class_logits``, in torch for exported graphs)."""
    if head == "sigmoid":
        z = logits[:, :1]
        return torch.cat([-z / 2, z / 2], dim=1)
    return logits


def tta_logits(model: nn.Module, batch: torch.Tensor, tta: str = "none") -> torch.Tensor:
    """float32 logits of a normalised batch, averaged over the test-time views ``tta`` names:
    none; flip: the image and its mirror; flip-shift: those two (weight 1/2) and both shifted by one pixel
    up-left and down-right (1/4 each), airbench's multi-crop. Measured on CIFAR-10 test (BENCHMARKS.md)."""
    def with_mirror(x: torch.Tensor) -> torch.Tensor:
        return (model(x).float() + model(x.flip(-1)).float()) / 2

    if tta == "none":
        return model(batch).float()
    if tta == "flip":
        return with_mirror(batch)
    if tta == "flip-shift":
        return (with_mirror(batch) / 2 + with_mirror(shift_image(batch, -1, -1)) / 4
                + with_mirror(shift_image(batch, 1, 1)) / 4)
    raise ValueError(f"unknown test-time augmentation '{tta}'")


def shift_image(batch: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """The batch moved by (dy, dx) pixels (|d| <= 1), the border filled by reflection."""
    padded = torch.nn.functional.pad(batch, (1, 1, 1, 1), mode="reflect")
    h, w = batch.shape[-2:]
    return padded[..., 1 - dy:1 - dy + h, 1 - dx:1 - dx + w]


@torch.no_grad()
def predict_logits(model: nn.Module, images: torch.Tensor, preprocessing: Preprocessing,
                   device: torch.device, batch_size: int = 256) -> torch.Tensor:
    """Logits (float32, on the CPU) for uint8 images [N, C, H, W], in batches, model in eval mode."""
    was_training = model.training
    model.eval()
    outputs = []
    for start in range(0, len(images), batch_size):
        batch = model_input(preprocessing.normalize(images[start:start + batch_size].to(device, non_blocking=True)))
        with autocast(device):
            outputs.append(tta_logits(model, batch, preprocessing.tta).cpu())
    model.train(was_training)
    if not outputs:
        return torch.empty(0, 0)
    return torch.cat(outputs)

