"""The export targets beyond ONNX and TorchScript, each a writer (the gated graph -> its file) and a session
that runs the file on prepared uint8 images [N, C, H, W] (numpy arrays or tensors) and gives every output as
numpy arrays, as ``OnnxSession`` does:

- OpenVINO: IR (model.xml and its weights, model.bin) converted from the ONNX graph; OpenVINO's CPU runtime.
- TFLite / LiteRT: model.tflite converted from the torch graph by litert-torch (batch 1, NHWC: what TFLite
  consumers feed); the LiteRT interpreter.
- Core ML: model.mlpackage (an ML program, float32) converted from the TorchScript trace by coremltools. Its
  runtime exists only on macOS: elsewhere ``coreml_structure`` checks the converted program's inputs and
  outputs instead of running it.

Sessions import no torch (``--engine openvino`` predicts without it); writers import it when they run."""

from __future__ import annotations

import io
import logging
import sys
import tempfile
import warnings
from contextlib import ExitStack, contextmanager, redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np

from ..errors import OculiError
from ..runtime.onnx import onnx_bytes, silenced_fd, usable_cores
from .exported import optional_module

# The largest batch a Core ML program accepts (its batch dimension needs a bound).
COREML_MAX_BATCH = 1024


@contextmanager
def quiet():
    """Converters print progress and advice (from Python and from C++): the gate reports what matters."""
    chatter, disabled = io.StringIO(), logging.root.manager.disable
    logging.disable(logging.WARNING)  # coremltools warns through logging (at import: no macOS runtime here)
    with ExitStack() as stack:
        stack.callback(logging.disable, disabled)
        for context in (warnings.catch_warnings(), redirect_stdout(chatter), redirect_stderr(chatter),
                        silenced_fd(1), silenced_fd(2)):
            stack.enter_context(context)
        warnings.simplefilter("ignore")
        yield


# --- OpenVINO ---------------------------------------------------------------------------------------------

def write_openvino(graph, example, path: Path) -> None:
    """The graph's ONNX form converted to OpenVINO IR: ``path`` (model.xml) and model.bin beside it, weights
    kept in float32 (save_model would halve them by default)."""
    with tempfile.TemporaryDirectory(prefix="oculi-openvino-") as tmp, quiet():
        ov = optional_module("openvino", "--format openvino")
        source = Path(tmp) / "model.onnx"
        source.write_bytes(onnx_bytes(graph, example, output=graph.output_names))
        ov.save_model(ov.convert_model(str(source)), str(path), compress_to_fp16=False)


def openvino_weights(path: Path) -> Path:
    """model.xml's weights file, which OpenVINO looks for beside it under the same stem."""
    return Path(path).with_suffix(".bin")


class OpenVinoSession:
    """An IR compiled for OpenVINO's CPU plugin in float32 (a CPU with bf16 units would otherwise compute in
    bf16, which the gate did not check), on the cores this process may use; ``spin``: False makes its
    threads wait passively (the cores are shared with decoding workers)."""

    def __init__(self, path: Path, spin: bool = True):
        ov = optional_module("openvino", "--engine openvino")
        core = ov.Core()
        config = {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": usable_cores()}
        if not spin:
            config["PERFORMANCE_HINT"] = "LATENCY"
        model = core.read_model(str(path), str(openvino_weights(path)))
        self.compiled = core.compile_model(model, "CPU", config)

    def outputs(self, images) -> tuple[np.ndarray, ...]:
        result = self.compiled(np.ascontiguousarray(np.asarray(images)))
        return tuple(np.asarray(result[output]) for output in self.compiled.outputs)


# --- TFLite / LiteRT --------------------------------------------------------------------------------------

def write_tflite(graph, example, path: Path) -> None:
    """The graph, taking uint8 NHWC images, converted by litert-torch for a batch of one (its converter takes
    no variable batch: litert-torch 0.10 fails on a dynamic first dimension)."""
    nhwc = example[:1].permute(0, 2, 3, 1).contiguous()
    with quiet():
        litert_torch = optional_module("litert_torch", "--format tflite")
        litert_torch.convert(channels_last(graph), (nhwc,)).export(str(path))


# The scope (output tensor name) of the network's operations, as litert-torch names them: the module path,
# ChannelsLast's ``inner`` then ProbabilityGraph's ``model``. What is outside it stays float: the uint8 input's
# normalisation, the temperature, softmax or sigmoids, the energy and the thresholds.
NETWORK_SCOPE = r".*ProbabilityGraph_inner/[^/;]*_model/.*"
# Dense layers stay float too: the last one's logits set the energy, and in int8 the OOD score moved by up to
# 3.9 on hymenoptera's test photos (efficientnet_lite0; 0.6 with dense layers float). A convolutional network's
# dense layers are a small share of its work.
FLOAT_OPERATIONS = ("FULLY_CONNECTED",)


def tflite_int8_bytes(path: Path, calibration) -> bytes:
    """model.tflite (float32) with the network's convolutions in int8: ai-edge-quantizer's static quantisation
    (weights int8 per channel, activations int8 with ranges from running ``calibration``, uint8 NCHW training
    images, through it) of NETWORK_SCOPE but FLOAT_OPERATIONS, so that probabilities are not rounded to steps
    of 1/256. On efficientnet_lite0 at 288 px (2 cores): 231-251 images/s against float32's 141-161; dynamic
    range quantisation (no calibration images) ran at 60 (BENCHMARKS.md)."""
    with quiet():
        quantizer = optional_module("ai_edge_quantizer.quantizer", "--format tflite --int8")
        recipe = optional_module("ai_edge_quantizer.recipe", "--format tflite --int8")
        static = recipe.static_wi8_ai8()
        rules = [{**rule, "regex": NETWORK_SCOPE} for rule in static]  # a later rule wins where both match
        rules += [{**static[0], "operation": op, "algorithm_key": "no_quantize"} for op in FLOAT_OPERATIONS]
        job = quantizer.Quantizer(str(path))
        job.load_quantization_recipe(rules)
        name, nhwc = TfliteSession(path).input, _nhwc(calibration)
        ranges = job.calibrate({"serving_default": [{name: nhwc[i:i + 1]} for i in range(len(nhwc))]})
        quantised = bytes(job.quantize(ranges).quantized_model)
        interpreter = optional_module("ai_edge_litert.interpreter", "--format tflite")
        tensors = interpreter.Interpreter(model_content=quantised).get_tensor_details()
    if not any(_int8_weights(t) for t in tensors):
        raise OculiError("export --int8: this network has no operation that --format tflite quantises (dense "
                         "layers stay float); --format onnx --int8 quantises them")
    return quantised


def _int8_weights(tensor: dict) -> bool:
    """Whether a LiteRT tensor is int8 weights: a scale per channel (activations have one per tensor)."""
    return tensor["dtype"] == np.int8 and len(tensor["quantization_parameters"]["scales"]) > 1


def channels_last(graph):
    """A module taking NHWC images that runs ``graph`` (which takes NCHW) on them."""
    import torch.nn as nn

    class ChannelsLast(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = graph  # not "graph": torch.export's GraphModule has one

        def forward(self, images):
            return self.inner(images.permute(0, 3, 1, 2))
    return ChannelsLast().eval()


class TfliteSession:
    """model.tflite in the LiteRT interpreter, fed one NHWC image at a time from NCHW images (as oculi
    prepares them)."""

    def __init__(self, path: Path):
        interpreter = optional_module("ai_edge_litert.interpreter", "--format tflite")
        self.interpreter = interpreter.Interpreter(model_path=str(path), num_threads=usable_cores())
        self.runner = self.interpreter.get_signature_runner()
        self.input = next(iter(self.runner.get_input_details()))

    def outputs(self, images) -> tuple[np.ndarray, ...]:
        nhwc = _nhwc(images)
        rows = [self.runner(**{self.input: nhwc[i:i + 1]}) for i in range(len(nhwc))]
        # outputs are named output_0, output_1, ... in the graph's order
        names = sorted(rows[0], key=lambda name: int(name.rsplit("_", 1)[1])) if rows else []
        return tuple(np.concatenate([row[name] for row in rows]) for name in names)


def _nhwc(images) -> np.ndarray:
    """NCHW images (numpy or torch) as the contiguous NHWC array a TFLite file takes."""
    return np.ascontiguousarray(np.asarray(images).transpose(0, 2, 3, 1))


# --- Core ML ----------------------------------------------------------------------------------------------

def write_coreml(graph, example, path: Path) -> None:
    """The graph's TorchScript trace converted by coremltools to an ML program computing in float32. Its input
    is int32 [N, C, H, W] holding 0-255: Core ML's multi-arrays have no uint8 type (an 8-bit input exists only
    as an image, one at a time)."""
    import torch

    channels, height, width = example.shape[1:]
    with quiet():
        ct = optional_module("coremltools", "--format coreml")
        traced = torch.jit.trace(graph, (example.to(torch.int32),), check_trace=False)
        model = ct.convert(traced, convert_to="mlprogram", compute_precision=ct.precision.FLOAT32,
                           minimum_deployment_target=ct.target.iOS15,
                           inputs=[ct.TensorType(name="images", dtype=np.int32,
                                                 shape=(ct.RangeDim(1, COREML_MAX_BATCH, default=1),
                                                        channels, height, width))],
                           outputs=[ct.TensorType(name=name) for name in graph.output_names])
        model.save(str(path))


def coreml_structure(path: Path, output_names, classes: int, input_shape) -> dict:
    """What Linux can check of a converted Core ML program, without its runtime: its inputs and outputs (names,
    types, shapes) against what the graph promises; "passed" when they match."""
    with quiet():
        ct = optional_module("coremltools", "--format coreml")
        spec = ct.utils.load_spec(str(path))
    inputs = [_feature(f) for f in spec.description.input]
    outputs = [_feature(f) for f in spec.description.output]
    expected_in = [{"name": "images", "dtype": "INT32", "shape": [1, *input_shape]}]
    passed = (inputs == expected_in and [o["name"] for o in outputs] == list(output_names)
              and spec.WhichOneof("Type") == "mlProgram")
    return {"checked": False, "note": "parity: not checked on this platform (the Core ML runtime is macOS-only)",
            "program": spec.WhichOneof("Type"), "inputs": inputs, "outputs": outputs,
            "classes": classes, "passed": bool(passed)}


def _feature(feature) -> dict:
    """A Core ML feature description as name, element type and (default) shape."""
    from coremltools.proto.FeatureTypes_pb2 import ArrayFeatureType

    array = feature.type.multiArrayType
    return {"name": feature.name, "dtype": ArrayFeatureType.ArrayDataType.Name(array.dataType),
            "shape": list(array.shape)}


class CoreMLSession:
    """model.mlpackage run by Core ML itself (macOS only), fed int32 images."""

    def __init__(self, path: Path):
        ct = optional_module("coremltools", "--format coreml")
        self.model = ct.models.MLModel(str(path))
        self.names = [o.name for o in self.model.get_spec().description.output]

    def outputs(self, images) -> tuple[np.ndarray, ...]:
        result = self.model.predict({"images": np.asarray(images).astype(np.int32)})
        return tuple(np.asarray(result[name], dtype=np.float32) for name in self.names)


def coreml_runs_here() -> bool:
    return sys.platform == "darwin"
