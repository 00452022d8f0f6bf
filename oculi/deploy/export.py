"""A model as a portable graph: ONNX (run by ONNX Runtime on the CPU; training runs frozen backbones through
it, ``oculi.train.frozen``) and TorchScript, and ``export_classifier``: a bundle as a self-contained file
that takes uint8 images [N, C, H, W] at the bundle's size and returns class probabilities [N, classes],
written only once it agrees with the bundle itself on real images (the parity gate)."""

from __future__ import annotations

import copy
import io
import json
import os
import sys
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Callable
import warnings

import numpy as np
import torch
import torch.nn as nn

from ..errors import OculiError
from ..io import atomic_path, atomic_write_json
from ..version import __version__
from .bundle import sha256_of
from .engines import logits_to_probs, tta_logits

OPSET = 17
EXPORT_FORMAT, EXPORT_FORMAT_VERSION = "oculi.export", 1
MIN_AGREEMENT = 0.999  # top-1 agreement with the bundle below which an export is refused
# Test hook: when set, the exported graph swaps its class columns, so that tests can show the gate refuses it.
FAULT_ENV = "OCULI_EXPORT_FAULT"


def onnx_bytes(model: nn.Module, example: torch.Tensor, output: str = "outputs") -> bytes:
    """``model`` (in eval mode) as an ONNX graph with a variable batch size, input ``images``."""
    buffer, chatter = io.BytesIO(), io.StringIO()
    # The TorchScript-based exporter warns (deprecation, tracer notes) and, on failure, prints its graph:
    # the caller reports what matters.
    with warnings.catch_warnings(), redirect_stdout(chatter), redirect_stderr(chatter), _silenced_fd(1):
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (example,), buffer, input_names=["images"], output_names=[output],
                          dynamic_axes={"images": {0: "batch"}, output: {0: "batch"}},
                          opset_version=OPSET, dynamo=False)
    return buffer.getvalue()


class OnnxRunner:
    """An ONNX Runtime CPU session that takes torch tensors (uint8 stays uint8, anything else is float32) and
    returns a float32 tensor."""

    def __init__(self, graph: bytes, threads: int | None = None):
        import onnxruntime as ort
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.log_severity_level = 3  # errors only
        self.session = ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        images = images.detach().cpu()
        array = np.ascontiguousarray((images if images.dtype == torch.uint8 else images.float()).numpy())
        return torch.from_numpy(self.session.run(None, {"images": array})[0])


def torchscript_bytes(model: nn.Module, example: torch.Tensor) -> bytes:
    """``model`` traced with ``example`` and saved as TorchScript (any batch size: nothing in oculi's
    graphs depends on it)."""
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer and deprecation notes: the parity gate judges the result
        torch.jit.save(torch.jit.trace(model, (example,), check_trace=False), buffer)
    return buffer.getvalue()


class TorchScriptRunner:
    """A saved TorchScript module on the CPU, called like ``OnnxRunner``."""

    def __init__(self, path: Path):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # TorchScript's deprecation: it still loads
            self.module = torch.jit.load(str(path), map_location="cpu").eval()

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return self.module(images.cpu()).float()


@dataclass(frozen=True)
class Format:
    """An export format: its file name, how a graph is written and how the written file is run."""
    name: str
    file: str
    serialise: Callable[[nn.Module, torch.Tensor], bytes]
    runner: Callable[[Path], Callable[[torch.Tensor], torch.Tensor]]


FORMATS = {
    "onnx": Format("onnx", "model.onnx", lambda m, x: onnx_bytes(m, x, output="probabilities"),
                   lambda path: OnnxRunner(path.read_bytes())),
    "torchscript": Format("torchscript", "model.torchscript", torchscript_bytes, TorchScriptRunner),
}


class ParityError(OculiError):
    """An export whose output differs from the bundle's: nothing was written (the CLI exits 1)."""


class ProbabilityGraph(nn.Module):
    """uint8 images [N, C, H, W] at the bundle's size -> class probabilities [N, classes]: the bundle's
    normalisation, test-time views, temperature and softmax or sigmoid, as ``Classifier.prepared_probs``
    applies them."""

    def __init__(self, model: nn.Module, preprocessing, head: str, temperature: float = 1.0):
        super().__init__()
        self.model, self.preprocessing, self.head, self.temperature = model, preprocessing, head, temperature

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        logits = tta_logits(self.model, self.preprocessing.normalize(images), self.preprocessing.tta)
        probs = logits_to_probs(logits / self.temperature, self.head)
        return probs.roll(1, dims=1) if os.environ.get(FAULT_ENV) else probs


def probability_graph(classifier) -> ProbabilityGraph:
    """The classifier's network (a float32 CPU copy in the default memory layout) inside a ProbabilityGraph."""
    pre = classifier.preprocessing
    if pre.filter is not None:
        # The graph starts after resizing; a filter there would be one more step for every consumer to copy.
        raise OculiError(f"export: the bundle filters its images ({pre.filter}) after resizing, which the "
                         f"exported graph cannot do for its consumers")
    model = copy.deepcopy(classifier.model).float().cpu().to(memory_format=torch.contiguous_format).eval()
    return ProbabilityGraph(model, pre, classifier.head, classifier.calibration.temperature).eval()


@torch.no_grad()
def run_batches(runner: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor,
                batch_size: int = 256) -> np.ndarray:
    """``runner`` over uint8 images in batches: probabilities [N, classes] as a float32 array."""
    return torch.cat([runner(images[i:i + batch_size]) for i in range(0, len(images), batch_size)]).numpy()


def parity(reference: np.ndarray, candidate: np.ndarray) -> dict:
    """How closely ``candidate`` probabilities follow ``reference``: top-1 agreement and the largest
    difference of any probability."""
    return {"images": len(reference),
            "top1_agreement": float(np.mean(reference.argmax(1) == candidate.argmax(1))),
            "max_abs_diff": float(np.abs(reference - candidate).max())}


def export_classifier(classifier, images: torch.Tensor, fmt: str, folder: str | Path, source: str) -> dict:
    """Export ``classifier`` (loaded on the CPU) as ``fmt`` into ``folder``: the model file and, next to it,
    ``<file>.json`` (returned) with the classes, preprocessing, bundle digest and parity figures.

    The file is written under a temporary name and run on ``images`` (uint8, prepared by the bundle's
    preprocessing; ``source`` says what they are) next to the bundle; below ``MIN_AGREEMENT`` a ParityError
    is raised and nothing is left behind. Only then are the files moved into place."""
    if len(images) == 0:
        raise OculiError("export: no images to check the export on")
    form = FORMATS[fmt]
    pre = classifier.preprocessing
    graph = probability_graph(classifier)
    # A batch of 2 to trace, so that no size is taken for a constant of 1.
    example = torch.zeros(2, pre.channels, *pre.image_size, dtype=torch.uint8)
    target = Path(folder).expanduser() / form.file
    reference = classifier.prepared_probs(images)
    with _made_for(target.parent), atomic_path(target) as tmp:
        tmp.write_bytes(_serialised(form, graph, example))
        figures = {**parity(reference, run_batches(form.runner(tmp), images)), "source": source}
        if figures["top1_agreement"] < MIN_AGREEMENT:
            raise ParityError(f"export: {fmt} disagrees with the bundle on {describe_parity(figures)} "
                              f"(needs {MIN_AGREEMENT:.1%}); nothing written")
        meta = _export_meta(classifier, form, sha256_of(tmp), figures)
    atomic_write_json(target.with_name(target.name + ".json"), meta)  # last: it vouches for the file
    return meta


def _serialised(form: Format, graph: nn.Module, example: torch.Tensor) -> bytes:
    try:
        return form.serialise(graph, example)
    except Exception as err:  # an operator the format lacks, say: the user's answer is another format
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise OculiError(f"export: this model cannot be exported as {form.name} ({first})") from None


@contextmanager
def _made_for(folder: Path):
    """Remove ``folder`` again if the block fails and it did not exist before (``--out`` of a refused export)."""
    existed = folder.exists()
    try:
        yield
    except BaseException:
        if not existed and folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
        raise


def describe_parity(figures: dict) -> str:
    """``parity``'s figures in one line."""
    return (f"{figures['images']} images: top-1 agreement {figures['top1_agreement']:.2%}, "
            f"max |probability difference| {figures['max_abs_diff']:.2e}")


def _export_meta(classifier, form: Format, file_sha256: str, figures: dict) -> dict:
    pre = classifier.preprocessing
    return {"format": EXPORT_FORMAT, "format_version": EXPORT_FORMAT_VERSION, "oculi_version": __version__,
            "export_format": form.name, "file": form.file, "file_sha256": file_sha256,
            "bundle_sha256": classifier.meta.get("bundle_sha256"),
            "weights_sha256": classifier.meta.get("weights_sha256"),
            "classes": classifier.classes, "preprocessing": pre.to_dict(),
            "input": {"name": "images", "dtype": "uint8", "layout": "NCHW",
                      "shape": ["N", pre.channels, *pre.image_size],
                      "note": "decoded and resized as preprocessing says; normalisation and test-time "
                              "views are in the graph"},
            "output": {"name": "probabilities", "dtype": "float32", "shape": ["N", len(classifier.classes)]},
            "calibration": classifier.calibration.to_dict(),  # the temperature is in the graph; the threshold is not
            **({"opset": OPSET} if form.name == "onnx" else {}),
            "parity": figures}


def find_export(folder: Path, bundle_meta: dict, fmt: str = "onnx") -> tuple[Path | None, str]:
    """(the ``fmt`` file in ``folder``, "") when it was exported from this very bundle and is unchanged,
    else (None, why not)."""
    file = Path(folder) / FORMATS[fmt].file
    meta_file = file.with_name(file.name + ".json")
    if not (file.is_file() and meta_file.is_file()):
        return None, f"no {file.name} in {folder} (`oculi export` makes one)"
    try:
        meta = json.loads(meta_file.read_text())
    except (ValueError, OSError):
        return None, f"{meta_file}: not valid JSON"
    if not isinstance(meta, dict) or any(meta.get(k) != bundle_meta.get(k) for k in ("bundle_sha256", "weights_sha256")):
        return None, f"{file} was exported from another bundle (export again)"
    if sha256_of(file) != meta.get("file_sha256"):
        return None, f"{file}: checksum does not match {meta_file.name} (export again)"
    return file, ""


@contextmanager
def _silenced_fd(fd: int):
    """Send what C++ code writes to file descriptor ``fd`` to /dev/null (the exporter prints its graph on
    failure from C++, past Python's sys.stdout)."""
    sys.stdout.flush()
    saved, devnull = os.dup(fd), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
        yield
    finally:
        os.dup2(saved, fd)
        os.close(saved)
        os.close(devnull)
