"""Predicting through a run's gated ONNX (or OpenVINO) export with numpy, PIL and ONNX Runtime (or OpenVINO) alone: no torch, torchvision or
timm is imported (they take seconds to load, longer than predicting a few images). ``load_classifier`` is where
`oculi predict` chooses its engine: ``ExportClassifier`` when the export serves, else the torch ``Classifier``."""

from __future__ import annotations

import os
import platform
import sys
import warnings
from pathlib import Path

import numpy as np

from ..errors import BundleWarning, OculiError
from ..runtime.bundle import bundle_calibration, verified_meta, warn_of_format
from ..runtime.onnx import OnnxSession
from .answers import Answering
from .exported import ENGINES, find_export, run_batches


class ExportClassifier(Answering):
    """A bundle, verified without torch, predicting through ``file``, its ONNX export (checked to come from this
    very bundle and to be unchanged; or its OpenVINO IR, ``engine`` openvino): the graph applies normalisation, test-time views and the temperature and
    gives the OOD score; this applies the abstain threshold and the top-k, as ``Classifier`` does."""

    torch_free = True

    def __init__(self, meta: dict, file: Path, engine: str = "onnx"):
        super().__init__(meta, bundle_calibration(meta))
        # No spinning threads: the decoding workers share the cores with it.
        if engine == "openvino":
            from .targets import OpenVinoSession
            self.session = OpenVinoSession(file, spin=False)
        else:
            self.session = OnnxSession(file.read_bytes(), spin=False)
        self.engine, self.file = engine, file

    def prepared_outputs(self, batch: np.ndarray, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray | None]:
        return run_batches(self.session, batch, batch_size)


def load_classifier(path: str | Path, device: str = "auto", engine: str = "auto") -> Answering:
    """The classifier `oculi predict` runs: for ``engine`` onnx, onnx-int8, onnx-fp16, openvino that export (an error
    without one), for auto model.onnx when the device is the CPU and the export serves, without torch; else the
    torch ``Classifier``, its ``engine_note`` saying why (a refused export also warns: it was meant to be used)."""
    if engine not in ENGINES:
        raise OculiError(f"--engine: unknown engine '{engine}' (use {', '.join(ENGINES)})")
    if engine != "torch" and (engine != "auto" or _runs_on_cpu(device)):
        meta, meta_path, _ = verified_meta(path, warn=False)  # Classifier.load warns again: only one of them
        file, why_not = find_export(meta_path.parent, meta, *ENGINES[engine])
        if file is not None:
            warn_of_format(meta, meta_path)
            return ExportClassifier(meta, file, "onnx" if engine == "auto" else engine)
        if engine != "auto":
            raise OculiError(f"--engine {engine}: {why_not}")
        if (meta_path.parent / "model.onnx").exists():
            warnings.warn(f"{why_not}; predicting with torch", ExportWarning, stacklevel=2)
    from .predict import Classifier
    return Classifier.load(path, device=device, engine=engine)


class ExportWarning(BundleWarning):
    """An export that is there but cannot be used (changed, or from another bundle): one line, as the CLI
    shows a BundleWarning."""


def _runs_on_cpu(device: str) -> bool:
    """Whether ``device`` means the CPU, as ``runtime.engines.resolve_device`` would resolve it, asked without
    importing torch: "auto" is the CPU where no CUDA driver is visible (or CUDA_VISIBLE_DEVICES hides every GPU)
    and the machine is no Apple silicon Mac (MPS)."""
    if device == "cpu":
        return True
    if device != "auto":
        return False
    hidden = os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1")
    cuda = not hidden and (Path("/proc/driver/nvidia/version").exists() or Path("/dev/nvidia0").exists())
    mps = sys.platform == "darwin" and platform.machine() == "arm64"
    return not (cuda or mps)


def describe_engine(classifier: Answering) -> str:
    """The engine in one line, as predict and evaluate print it: "onnx (RUN/model.onnx, ONNX Runtime, no torch)"
    or "torch (cpu; no model.onnx in RUN ...)"."""
    if isinstance(classifier, ExportClassifier):
        return f"{classifier.engine} ({classifier.file}, {runtime_of(classifier.engine)}, no torch)"
    device = getattr(classifier, "device", None)
    runner = runtime_of(classifier.engine) if getattr(classifier, "runner", None) is not None else str(device)
    note = f"; {classifier.engine_note}" if classifier.engine == "torch" and classifier.engine_note else ""
    return f"{classifier.engine} ({runner}{note})"


def runtime_of(engine: str) -> str:
    """The runtime an export engine runs on, in words."""
    return "OpenVINO" if engine == "openvino" else "ONNX Runtime"
