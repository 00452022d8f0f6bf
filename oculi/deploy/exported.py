"""A run's exports as files, without torch: their names, finding one that was gated against this very bundle
and is unchanged (``find_export``), running one over prepared images in batches (``run_batches``), and the
optional packages some formats need (``optional_module``). ``deploy.export`` writes them; ``deploy.predict``
and ``deploy.lite`` run them."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np

from ..errors import OculiError
from ..runtime.bundle import sha256_of

FILES = {"onnx": "model.onnx", "torchscript": "model.torchscript", "openvino": "model.xml",
         "tflite": "model.tflite", "coreml": "model.mlpackage"}
# --engine's choices and the export each runs, (format, precision) (auto: model.onnx when there is one, else torch).
ENGINES = {"auto": ("onnx", "fp32"), "torch": None, "onnx": ("onnx", "fp32"), "onnx-int8": ("onnx", "int8"),
           "onnx-fp16": ("onnx", "fp16"), "openvino": ("openvino", "fp32")}
# The pip extra that brings each optional package (its import name -> the extra).
EXTRAS = {"openvino": "openvino", "litert_torch": "tflite", "ai_edge_litert": "tflite", "ai_edge_quantizer": "tflite",
          "coremltools": "coreml"}


def optional_module(name: str, purpose: str):
    """The module ``name`` imported, or a one-line OculiError naming the extra that installs it."""
    try:
        return importlib.import_module(name)
    except ImportError:
        raise OculiError(f"{purpose} needs the {name} package: pip install 'oculi[{EXTRAS[name]}]'") from None


def require_module(name: str, purpose: str) -> None:
    """``optional_module``'s one-line error when ``name`` is not installed, found without importing it (the
    converters are slow to import, and litert-torch's JAX warns at every later fork of the process)."""
    top = name.split(".")[0]
    if sys.modules.get(top, False) is None or importlib.util.find_spec(top) is None:
        optional_module(name, purpose)


def export_file(fmt: str, precision: str = "fp32") -> str:
    """The file an export writes: model.onnx, model.int8.onnx, model.fp16.onnx, model.torchscript, model.xml
    (with model.bin), model.tflite, model.int8.tflite, model.mlpackage (a folder)."""
    stem, suffix = FILES[fmt].split(".", 1)
    return FILES[fmt] if precision == "fp32" else f"{stem}.{precision}.{suffix}"


def artifact_sha256(path: Path) -> str:
    """The SHA-256 of a file, or of a folder (an .mlpackage): of each file's relative name and digest, in order."""
    path = Path(path)
    if not path.is_dir():
        return sha256_of(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(f"{file.relative_to(path).as_posix()}\0{sha256_of(file)}\n".encode())
    return digest.hexdigest()


def find_export(folder: Path, bundle_meta: dict, fmt: str = "onnx", precision: str = "fp32") -> tuple[Path | None, str]:
    """(the ``fmt`` file in ``folder``, "") when it was exported from this very bundle and it (and the files
    beside it that it needs, OpenVINO's weights) is unchanged, else (None, why not)."""
    file = Path(folder) / export_file(fmt, precision)
    meta_file = file.with_name(file.name + ".json")
    if not (file.exists() and meta_file.is_file()):
        flag = {"int8": " --int8", "fp16": " --half"}.get(precision, "")
        flag += f" --format {fmt}" if fmt != "onnx" else ""
        return None, f"no {file.name} in {folder} (`oculi export{flag}` makes one)"
    try:
        meta = json.loads(meta_file.read_text())
    except (ValueError, OSError):
        return None, f"{meta_file}: not valid JSON"
    if not isinstance(meta, dict) or any(meta.get(k) != bundle_meta.get(k) for k in ("bundle_sha256", "weights_sha256")):
        return None, f"{file} was exported from another bundle (export again)"
    digests = {file.name: meta.get("file_sha256"), **(meta.get("companions") or {})}
    for name, expected in digests.items():
        if not (file.parent / name).exists() or artifact_sha256(file.parent / name) != expected:
            return None, f"{file.parent / name}: checksum does not match {meta_file.name} (export again)"
    return file, ""


def run_batches(runner, images, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray | None]:
    """``runner`` (an ``OnnxSession`` on arrays, an OnnxRunner or TorchScriptRunner on tensors, or a session of
    ``deploy.targets``, on either) over uint8 images in batches: (probabilities [N, classes], energy [N],
    float32 arrays; energy None from a file exported before graphs gave it)."""
    parts = [runner.outputs(images[i:i + batch_size]) for i in range(0, len(images), batch_size)]
    if not parts:
        return np.zeros((0, 0), dtype=np.float32), None
    probs = np.concatenate([np.asarray(p[0]) for p in parts])
    return probs, (np.concatenate([np.asarray(p[1]) for p in parts]) if len(parts[0]) > 1 else None)
