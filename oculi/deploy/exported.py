"""A run's exports as files, without torch: their names, finding one that was gated against this very bundle
and is unchanged (``find_export``), and running one over prepared images in batches (``run_batches``).
``deploy.export`` writes them; ``deploy.predict`` and ``deploy.lite`` run them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..runtime.bundle import sha256_of

FILES = {"onnx": "model.onnx", "torchscript": "model.torchscript"}
# --engine's choices and the precision of the export each runs (auto: fp32 when there is one, else torch).
ENGINES = {"auto": "fp32", "torch": None, "onnx": "fp32", "onnx-int8": "int8", "onnx-fp16": "fp16"}


def export_file(fmt: str, precision: str = "fp32") -> str:
    """The file an export writes: model.onnx, model.int8.onnx, model.fp16.onnx, model.torchscript."""
    return FILES[fmt] if precision == "fp32" else f"model.{precision}.onnx"


def find_export(folder: Path, bundle_meta: dict, fmt: str = "onnx", precision: str = "fp32") -> tuple[Path | None, str]:
    """(the ``fmt`` file in ``folder``, "") when it was exported from this very bundle and is unchanged,
    else (None, why not)."""
    file = Path(folder) / export_file(fmt, precision)
    meta_file = file.with_name(file.name + ".json")
    if not (file.is_file() and meta_file.is_file()):
        flag = {"int8": " --int8", "fp16": " --half"}.get(precision, "")
        return None, f"no {file.name} in {folder} (`oculi export{flag}` makes one)"
    try:
        meta = json.loads(meta_file.read_text())
    except (ValueError, OSError):
        return None, f"{meta_file}: not valid JSON"
    if not isinstance(meta, dict) or any(meta.get(k) != bundle_meta.get(k) for k in ("bundle_sha256", "weights_sha256")):
        return None, f"{file} was exported from another bundle (export again)"
    if sha256_of(file) != meta.get("file_sha256"):
        return None, f"{file}: checksum does not match {meta_file.name} (export again)"
    return file, ""


def run_batches(runner, images, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray | None]:
    """``runner`` (an ``OnnxSession`` on arrays, or an OnnxRunner or TorchScriptRunner on tensors) over uint8
    images in batches: (probabilities [N, classes], energy [N], float32 arrays; energy None from a file
    exported before graphs gave it)."""
    parts = [runner.outputs(images[i:i + batch_size]) for i in range(0, len(images), batch_size)]
    if not parts:
        return np.zeros((0, 0), dtype=np.float32), None
    probs = np.concatenate([np.asarray(p[0]) for p in parts])
    return probs, (np.concatenate([np.asarray(p[1]) for p in parts]) if len(parts[0]) > 1 else None)
