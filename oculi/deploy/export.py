"""A model as a portable graph: ONNX (written and run by ``oculi.runtime.onnx``, which training shares),
TorchScript, and OpenVINO, TFLite and Core ML (``deploy.targets``); and ``export_classifier``: a bundle as a self-contained file that takes uint8 images [N, C, H, W]
at the bundle's size and returns class probabilities [N, classes], written only once it agrees with the
bundle itself on real images (the parity gate)."""

from __future__ import annotations

import copy
import io
import json
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable
import warnings

import numpy as np
import torch
import torch.nn as nn

from ..errors import OculiError, first_line
from ..io import atomic_write_json, staging_folder
from ..runtime.engines import head_class_logits, logits_to_probs, tta_logits
from ..runtime.onnx import OPSET, OnnxRunner, onnx_bytes
from ..version import __version__
from . import targets
from .exported import (FILES, artifact_sha256, export_file, find_export,  # noqa: F401 (find_export: callers import it here)
                       require_module, run_batches)

EXPORT_FORMAT, EXPORT_FORMAT_VERSION = "oculi.export", 1
MIN_AGREEMENT = 0.999  # top-1 agreement with the bundle below which an export is refused
# ...and, in float32, the largest difference of the OOD score (energy, on the logits' scale) allowed, relative
# to 1 + its largest size: the same network in another runtime differs by float rounding only (~1e-6).
ENERGY_TOLERANCE = 1e-3
# The gate of an ONNX graph of lower precision (--int8, --half): at most REDUCED_MAX_CHANGED of the check
# images (and never less than one image: a set of 24 test photos would otherwise allow none) change their
# top-1 class, and, where the check images carry labels (the run's own test split), an accuracy at most
# MAX_ACCURACY_DROP below the bundle's. int8 changes the class of images that lie near the boundary: 0 of 200
# photos, 1 of 24 test images of hymenoptera (BENCHMARKS.md, "Batch prediction").
PRECISIONS = ("fp32", "int8", "fp16")
REDUCED_MAX_CHANGED = 0.02
MAX_ACCURACY_DROP = 0.005  # half a point
CALIBRATION_IMAGES = 128  # training images that calibrate int8's activation ranges
REFUSED_FILE = "export_refused.json"
# Test hook: when set, the exported graph swaps its class columns, so that tests can show the gate refuses it.


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

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return self.outputs(images)[0]

    @torch.no_grad()
    def outputs(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.module(images.cpu())
        return tuple(t.float() for t in (out if isinstance(out, (tuple, list)) else (out,)))


@dataclass(frozen=True)
class Format:
    """An export format: its file name, how the graph is written there (``write(graph, example, path)``), how
    the written file is run (None: not on this platform, and ``inspect`` checks what can be), the files written
    beside it, the packages it needs, and its input as the platform takes it."""
    name: str
    file: str
    write: Callable[[nn.Module, torch.Tensor, Path], None]
    runner: Callable[[Path], object] | None
    # (written file, calibration images) -> the int8 file's bytes; None: the format has no int8 form
    int8: Callable[[Path, torch.Tensor | None], bytes] | None = None
    companions: tuple[str, ...] = ()  # suffixes of files written beside it, with the same stem (.bin)
    needs: tuple[str, ...] = ()  # optional modules (``exported.EXTRAS`` names their extras)
    layout: str = "NCHW"
    dtype: str = "uint8"
    batch: str = "N"  # or 1, where the converter fixes it
    inspect: Callable[..., dict] | None = None  # (path, output names, classes, input shape) -> figures
    names: str = ""  # where the file names its input and outputs otherwise than images, probabilities, ...

    def require(self) -> None:
        """A one-line error naming the extra to install when a package this format needs is missing."""
        for module in self.needs:
            require_module(module, f"--format {self.name}")


def _write_bytes(serialise):
    """A Format's ``write`` from a function of (graph, example) -> bytes."""
    return lambda graph, example, path: Path(path).write_bytes(serialise(graph, example))


FORMATS = {
    "onnx": Format("onnx", FILES["onnx"], _write_bytes(lambda m, x: onnx_bytes(m, x, output=m.output_names)),
                   lambda path: OnnxRunner(path.read_bytes()),
                   int8=lambda path, calibration: int8_bytes(path.read_bytes(), calibration)),
    "torchscript": Format("torchscript", FILES["torchscript"], _write_bytes(torchscript_bytes), TorchScriptRunner),
    "openvino": Format("openvino", FILES["openvino"], targets.write_openvino, targets.OpenVinoSession,
                       companions=(".bin",), needs=("openvino",)),
    "tflite": Format("tflite", FILES["tflite"], targets.write_tflite, targets.TfliteSession,
                     int8=targets.tflite_int8_bytes, needs=("litert_torch", "ai_edge_litert"), layout="NHWC", batch=1,
                     names="signature serving_default: input args_0; outputs output_0 (probabilities), output_1 "
                           "(energy), output_2 (labels, multi-label only)"),
    "coreml": Format("coreml", FILES["coreml"], targets.write_coreml,
                     targets.CoreMLSession if targets.coreml_runs_here() else None,
                     needs=("coremltools",), dtype="int32", inspect=targets.coreml_structure,
                     names="labels (multi-label only) is int32"),
}


class ParityError(OculiError):
    """An export whose output differs from the bundle's: nothing was written (the CLI exits 1). ``figures``:
    the gate's measurements, for ``save_refusal``."""

    def __init__(self, message: str, figures: dict | None = None):
        super().__init__(message)
        self.figures = figures or {}


class ProbabilityGraph(nn.Module):
    """uint8 images [N, C, H, W] at the bundle's size -> (class probabilities [N, classes], energy [N]): the
    bundle's normalisation, test-time views, temperature and softmax or sigmoid, as
    ``Classifier.prepared_outputs`` applies them, and its out-of-distribution score (``energy_score`` of the
    class logits at T = 1: higher = less like the training images)."""

    def __init__(self, model: nn.Module, preprocessing, head: str, temperature: float = 1.0,
                 thresholds: list[float] | None = None, class_temperatures: tuple[float, ...] | None = None):
        super().__init__()
        self.model, self.preprocessing, self.head, self.temperature = model, preprocessing, head, temperature
        # A multi-label graph also answers with each image's label set: 1 where a class reaches its threshold.
        self.register_buffer("thresholds", None if thresholds is None else torch.tensor(thresholds))
        # ...and may divide each class's logit by its own temperature (float32, as the probabilities are).
        self.register_buffer("class_temperatures", None if class_temperatures is None else
                             torch.tensor(class_temperatures, dtype=torch.float32))

    @property
    def output_names(self) -> tuple[str, ...]:
        return ("probabilities", "energy") + ("labels",) * (self.thresholds is not None)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = self.preprocessing.normalize(images)
        logits = tta_logits(self.model, x.to(next(self.model.parameters()).dtype), self.preprocessing.tta).float()
        divisor = self.temperature if self.class_temperatures is None else self.class_temperatures
        probs = logits_to_probs(logits / divisor, self.head)  # float32 whatever the network's precision
        energy = -stable_logsumexp(head_class_logits(logits, self.head))
        if self.thresholds is None:
            return probs, energy
        return probs, energy, (probs >= self.thresholds).to(torch.uint8)


def stable_logsumexp(logits: torch.Tensor) -> torch.Tensor:
    """logsumexp over dim 1 spelt out (max + log of the shifted sum), not ONNX's ReduceLogSumExp: OpenVINO
    2026.4 converts that over every axis, giving one number for the whole batch."""
    top = logits.amax(dim=1, keepdim=True)
    return top.squeeze(1) + torch.log(torch.exp(logits - top).sum(dim=1))


def probability_graph(classifier, half: bool = False) -> ProbabilityGraph:
    """The classifier's network (a float32 CPU copy in the default memory layout; float16 weights and
    activations with ``half``) inside a ProbabilityGraph."""
    pre = classifier.preprocessing
    if pre.filter is not None:
        # The graph starts after resizing; a filter there would be one more step for every consumer to copy.
        raise OculiError(f"export: the bundle filters its images ({pre.filter}) after resizing, which the "
                         f"exported graph cannot do for its consumers")
    model = copy.deepcopy(classifier.model).float().cpu().to(memory_format=torch.contiguous_format).eval()
    model = model.half() if half else model
    c = classifier.calibration
    return ProbabilityGraph(model, pre, classifier.head, c.temperature, classifier.thresholds,
                            c.class_temperatures).eval()


def parity(reference: np.ndarray, candidate: np.ndarray, thresholds=None) -> dict:
    """How closely ``candidate`` probabilities follow ``reference``: top-1 agreement (of a multi-label model,
    ``thresholds`` given: the share of images given the very same label set, ``set_agreement``) and the
    largest difference of any probability."""
    figures = {"images": len(reference), "top1_agreement": float(np.mean(reference.argmax(1) == candidate.argmax(1))),
               "max_abs_diff": float(np.abs(reference - candidate).max())}
    if thresholds is not None:
        figures["set_agreement"] = float(np.mean(~changed_sets(reference, candidate, thresholds)))
    return figures


def changed_sets(reference: np.ndarray, candidate: np.ndarray, thresholds) -> np.ndarray:
    """Which images a multi-label model gives another label set."""
    t = np.asarray(thresholds)[None, :]
    return ((reference >= t) != (candidate >= t)).any(1)


def agreement(figures: dict) -> float:
    """The agreement the gate holds an export to: of label sets for a multi-label model, else of the top class."""
    return figures.get("set_agreement", figures["top1_agreement"])


def export_classifier(classifier, images: torch.Tensor, fmt: str, folder: str | Path, source: str,
                      precision: str = "fp32", labels: np.ndarray | None = None,
                      calibration: torch.Tensor | None = None) -> dict:
    """Export ``classifier`` (loaded on the CPU) as ``fmt`` into ``folder``: the model file and, next to it,
    ``<file>.json`` (returned) with the classes, preprocessing, bundle digest and parity figures.

    The file is written in a staging folder beside its place and run on ``images`` (uint8, prepared by the bundle's
    preprocessing; ``source`` says what they are) next to the bundle; below ``MIN_AGREEMENT`` a ParityError
    is raised and nothing is left behind. Only then are the files moved into place. A format this platform
    cannot run (Core ML off macOS) is checked as far as it can be (``Format.inspect``) and marked unverified.

    ``precision`` int8 (static quantisation, calibrated on ``calibration``: training images) or fp16 (an
    ONNX graph in float16) passes a gate of its own: ``REDUCED_MAX_CHANGED`` and, when ``labels`` (of
    ``images``) are given, an accuracy at most ``MAX_ACCURACY_DROP`` below the bundle's."""
    if len(images) == 0:
        raise OculiError("export: no images to check the export on")
    check_precision(fmt, precision)
    if precision == "int8" and (calibration is None or len(calibration) == 0):
        raise OculiError("export --int8: no training images to calibrate on")
    form = FORMATS[fmt]
    form.require()
    pre = classifier.preprocessing
    graph = probability_graph(classifier, half=precision == "fp16")
    # A batch of 2 to trace, so that no size is taken for a constant of 1.
    example = torch.zeros(2, pre.channels, *pre.image_size, dtype=torch.uint8)
    target = Path(folder).expanduser() / export_file(fmt, precision)
    reference, reference_energy = classifier.prepared_outputs(images)
    with _made_for(target.parent), staging_folder(target.parent) as stage:
        written = stage / target.name
        _write(form, graph, example, written, precision, calibration)
        if form.runner is None:  # a runtime this platform lacks: check what can be, call it unverified
            figures = form.inspect(written, graph.output_names, len(classifier.classes), example.shape[1:])
        else:
            candidate, energy = _run_written(form, written, images, reference.shape)
            figures = gate_figures(reference, candidate, labels, source, precision, (reference_energy, energy),
                                   classifier.thresholds)
        if not figures["passed"]:
            raise ParityError(f"export: {target.name} disagrees with the bundle on {describe_parity(figures)} "
                              f"(needs {describe_gate(precision, form)}); nothing written",
                              {"file": target.name, "precision": precision, "parity": figures})
        meta = _export_meta(classifier, form, target.name, _digests(form, written), figures, precision)
    atomic_write_json(target.with_name(target.name + ".json"), meta)  # last: it vouches for the file
    return meta


def check_precision(fmt: str, precision: str) -> None:
    """Refuse a precision the format does not offer (int8: ONNX and TFLite; fp16: ONNX)."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision '{precision}'")
    if precision == "int8" and FORMATS[fmt].int8 is None:
        raise OculiError("--int8: only for --format onnx or tflite")
    if precision == "fp16" and fmt != "onnx":
        raise OculiError("--half: only for --format onnx")


def gate_figures(reference: np.ndarray, candidate: np.ndarray, labels: np.ndarray | None, source: str,
                 precision: str = "fp32", energies: tuple[np.ndarray, np.ndarray | None] | None = None,
                 thresholds=None) -> dict:
    """``parity``'s figures, the accuracy of both on ``labels`` when given (a multi-label model's: of whole
    label sets at ``thresholds``), the OOD scores' largest difference (``energies``: the bundle's and the
    export's), and whether the gate passes."""
    figures = {**parity(reference, candidate, thresholds), "source": source, "precision": precision}
    energy_ok = True
    if energies is not None:
        expected, got = energies
        energy_ok = got is not None  # a graph without its OOD score is no copy of the bundle
        if got is not None:
            figures["energy_max_abs_diff"] = float(np.abs(expected - got).max())
            energy_ok = figures["energy_max_abs_diff"] <= ENERGY_TOLERANCE * (1 + float(np.abs(expected).max()))
    if labels is not None and precision != "fp32":
        right = _right_answers(np.asarray(labels), thresholds)
        figures["accuracy_bundle"] = float(np.mean(right(reference)))
        figures["accuracy_export"] = float(np.mean(right(candidate)))
        figures["accuracy_change"] = figures["accuracy_export"] - figures["accuracy_bundle"]
    if precision == "fp32":
        passed = agreement(figures) >= MIN_AGREEMENT and energy_ok
    else:
        changed = int(np.sum(changed_sets(reference, candidate, thresholds) if thresholds is not None
                             else reference.argmax(1) != candidate.argmax(1)))
        figures["changed"] = changed
        # 1e-9: a float tolerance, so that a drop of exactly the limit passes
        passed = (changed <= max(1, int(REDUCED_MAX_CHANGED * len(reference)))
                  and figures.get("accuracy_change", 0.0) >= -MAX_ACCURACY_DROP - 1e-9)
    return {**figures, "passed": bool(passed)}


def _right_answers(labels: np.ndarray, thresholds):
    """probabilities -> whether each image's answer is right: its class, or (multi-label) its whole label set."""
    if thresholds is None:
        return lambda probs: probs.argmax(1) == labels
    return lambda probs: ((probs >= np.asarray(thresholds)[None, :]) == labels.astype(bool)).all(1)


def describe_gate(precision: str, form: Format | None = None) -> str:
    if form is not None and form.runner is None:
        return "the converted program's inputs and outputs as the graph has them"
    if precision == "fp32":
        return f"{MIN_AGREEMENT:.1%} agreement and the OOD scores within {ENERGY_TOLERANCE:g} x (1 + their size)"
    return (f"at most {REDUCED_MAX_CHANGED:.0%} of the images (or one) changing class and test accuracy at most "
            f"{100 * MAX_ACCURACY_DROP:.1f} points below the bundle's")


def save_refusal(run_dir: str | Path, err: ParityError) -> Path:
    """The refused export's figures as ``export_refused.json`` in the run folder (written atomically)."""
    path = Path(run_dir) / REFUSED_FILE
    atomic_write_json(path, {"oculi_version": __version__, "refused": str(err), **err.figures})
    return path


def clear_refusal(run_dir: str | Path, file: str) -> None:
    """Remove ``export_refused.json`` once ``file`` has been exported after all: it no longer holds."""
    path = Path(run_dir) / REFUSED_FILE
    try:
        if json.loads(path.read_text()).get("file") == file:
            path.unlink()
    except (OSError, ValueError, AttributeError):  # none, or not ours to judge
        pass


def int8_bytes(graph: bytes, calibration: torch.Tensor) -> bytes:
    """``graph`` (float32 ONNX) quantised to int8 by ONNX Runtime: static quantisation in QDQ form, weights
    int8 per channel, activations uint8 with ranges from running ``calibration`` (uint8 images) through it.
    Static, not dynamic: on efficientnet_lite0 dynamic quantisation was 2.7x slower than float32 (its
    convolutions re-quantise every input at run time) and agreed on 96.5 % of photos (BENCHMARKS.md)."""
    import logging
    import tempfile

    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType, quant_pre_process,
                                          quantize_static)

    class Batches(CalibrationDataReader):
        def __init__(self):
            self.batches = iter(calibration[i:i + 16].numpy() for i in range(0, len(calibration), 16))

        def get_next(self):
            batch = next(self.batches, None)
            return None if batch is None else {"images": batch}

    with tempfile.TemporaryDirectory(prefix="oculi-int8-") as tmp, _quiet_logging(logging.getLogger()):
        fp32, prepared, quantised = (Path(tmp) / name for name in ("fp32.onnx", "pre.onnx", "int8.onnx"))
        fp32.write_bytes(graph)
        quant_pre_process(str(fp32), str(prepared))  # shape inference and graph clean-up quantisation wants
        quantize_static(str(prepared), str(quantised), Batches(), quant_format=QuantFormat.QDQ,
                        per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        nodes_to_exclude=_after_last_matmul(prepared))
        return quantised.read_bytes()


def _after_last_matmul(path: Path) -> list[str]:
    """The nodes after the classifier's last matrix product (softmax or sigmoid and their arithmetic): kept in
    float, so that probabilities are not rounded to steps of 1/255 and still sum to 1."""
    import onnx

    nodes = list(onnx.load(str(path)).graph.node)  # in topological order
    last = max((i for i, node in enumerate(nodes) if node.op_type in ("MatMul", "Gemm")), default=len(nodes) - 1)
    return [node.name for node in nodes[last + 1:]]


@contextmanager
def _quiet_logging(logger):
    """ONNX Runtime's quantiser logs advice at WARNING through the root logger: not for oculi's users."""
    level = logger.level
    logger.setLevel(40)
    try:
        yield
    finally:
        logger.setLevel(level)


def _write(form: Format, graph: nn.Module, example: torch.Tensor, path: Path, precision: str = "fp32",
           calibration: torch.Tensor | None = None) -> None:
    """``graph`` written as ``form`` at ``path`` (int8: the ONNX graph quantised); a converter's failure is one
    line (an OculiError of its own, a missing package, stays as it is)."""
    try:
        form.write(graph, example, path)
        if precision == "int8":
            path.write_bytes(form.int8(path, calibration))
    except OculiError:
        raise
    except Exception as err:  # an operator the format lacks, say: the user's answer is another format
        first = first_line(err)
        raise OculiError(f"export: this model cannot be exported as {form.name} ({first})") from None


def _run_written(form: Format, path: Path, images: torch.Tensor, shape: tuple) -> tuple[np.ndarray, np.ndarray | None]:
    """The written file run on the check images; one that fails to run, or answers in other shapes than the
    bundle (probabilities ``shape``, an energy per image), is refused like one that disagrees."""
    def refused(why: str):
        return ParityError(f"export: {path.name} {why}; nothing written",
                           {"file": path.name, "parity": {"passed": False, "error": why}})
    try:
        candidate, energy = run_batches(form.runner(path), images)
    except OculiError:
        raise
    except Exception as err:
        raise refused(f"fails on the check images ({first_line(err)})")
    if candidate.shape != shape or (energy is not None and energy.shape != shape[:1]):
        got = f"{list(candidate.shape)}" + ("" if energy is None else f" and {list(energy.shape)}")
        raise refused(f"answers in shapes {got}, not {list(shape)} and {list(shape[:1])}")
    return candidate, energy


def _digests(form: Format, path: Path) -> tuple[str, dict[str, str]]:
    """The SHA-256 of the written file (or folder) and of each file beside it that it needs, by name."""
    return artifact_sha256(path), {path.with_suffix(suffix).name: artifact_sha256(path.with_suffix(suffix))
                                   for suffix in form.companions}


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
    """``parity``'s figures in one line (with the accuracy change, when measured); of an export this platform
    cannot run, what was checked instead."""
    if figures.get("checked") is False:
        inputs = ", ".join(f"{f['name']} {f['dtype']} {f['shape']}" for f in figures["inputs"])
        return f"{figures['note']}; program inputs {inputs}, outputs {', '.join(f['name'] for f in figures['outputs'])}"
    agreed = (f"label-set agreement {figures['set_agreement']:.2%}" if "set_agreement" in figures
              else f"top-1 agreement {figures['top1_agreement']:.2%}")
    line = (f"{figures['images']} images: {agreed}, "
            f"max |probability difference| {figures['max_abs_diff']:.2e}")
    if "energy_max_abs_diff" in figures:
        line += f", max |OOD score difference| {figures['energy_max_abs_diff']:.2e}"
    if "accuracy_change" in figures:
        line += (f", accuracy {figures['accuracy_export']:.2%} against the bundle's "
                 f"{figures['accuracy_bundle']:.2%} ({100 * figures['accuracy_change']:+.2f} points)")
    return line


def _export_meta(classifier, form: Format, file: str, digests: tuple[str, dict], figures: dict,
                 precision: str) -> dict:
    pre = classifier.preprocessing
    size = [pre.channels, *pre.image_size]
    return {"format": EXPORT_FORMAT, "format_version": EXPORT_FORMAT_VERSION, "oculi_version": __version__,
            "export_format": form.name, "precision": precision, "file": file, "file_sha256": digests[0],
            **({"companions": digests[1]} if digests[1] else {}),
            # verified: run next to the bundle and found to agree (not so where the platform lacks the runtime)
            "verified": form.runner is not None,
            "bundle_sha256": classifier.meta.get("bundle_sha256"),
            "weights_sha256": classifier.meta.get("weights_sha256"),
            "classes": classifier.classes, "preprocessing": pre.to_dict(),
            "input": {"name": "images", "dtype": form.dtype, "layout": form.layout,
                      "shape": [form.batch, *(size[1:] + size[:1] if form.layout == "NHWC" else size)],
                      "note": "decoded and resized as preprocessing says, pixels 0-255; normalisation and "
                              "test-time views are in the graph"},
            **({"names": form.names} if form.names else {}),
            "output": {"name": "probabilities", "dtype": "float32", "shape": ["N", len(classifier.classes)]},
            "ood_output": {"name": "energy", "dtype": "float32", "shape": ["N"],
                           "note": "-logsumexp of the class logits at T = 1 (oculi predict's ood_score): higher = "
                                   "less like the training images"},
            "calibration": classifier.calibration.to_dict(),  # the temperature is in the graph; the threshold is not
            **({} if classifier.thresholds is None else {
                "thresholds": classifier.thresholds,
                "labels_output": {"name": "labels", "dtype": "uint8", "shape": ["N", len(classifier.classes)],
                                  "note": "multi-label: 1 where a class's probability reaches its threshold"}}),
            **({"opset": OPSET} if form.name == "onnx" else {}),
            "parity": figures}
