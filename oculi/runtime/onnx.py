"""A model as an ONNX graph (``onnx_bytes``) and that graph run by ONNX Runtime on the CPU (``OnnxRunner``):
what training runs frozen backbones through (``oculi.training.frozen``), what ``oculi export`` writes and
checks (``oculi.deploy.export``) and what ``--engine onnx`` predicts with (``oculi.deploy.predict``).
``OnnxSession`` takes and gives numpy arrays and imports no torch: ``oculi.deploy.lite`` predicts with it alone."""

from __future__ import annotations

import io
import os
import sys
import warnings
from contextlib import contextmanager, redirect_stderr, redirect_stdout

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

OPSET = 17


def onnx_bytes(model: "torch.nn.Module", example: "torch.Tensor", output: str | tuple[str, ...] = "outputs") -> bytes:
    """``model`` (in eval mode) as an ONNX graph with a variable batch size, input ``images``, outputs named
    ``output`` (one name, or one per output of a model that returns a tuple)."""
    import torch
    outputs = [output] if isinstance(output, str) else list(output)
    buffer, chatter = io.BytesIO(), io.StringIO()
    # The TorchScript-based exporter warns (deprecation, tracer notes) and, on failure, prints its graph:
    # the caller reports what matters.
    with warnings.catch_warnings(), redirect_stdout(chatter), redirect_stderr(chatter), silenced_fd(1):
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (example,), buffer, input_names=["images"], output_names=outputs,
                          dynamic_axes={"images": {0: "batch"}, **{name: {0: "batch"} for name in outputs}},
                          opset_version=OPSET, dynamo=False)
    return buffer.getvalue()


class OnnxSession:
    """An ONNX Runtime CPU session over numpy arrays (uint8 stays uint8, anything else is float32): ``outputs``
    gives every output of the graph, as float32 arrays. ``threads``: default, the cores this process may use;
    ``spin``: False lets idle threads sleep rather than spin (the cores are shared with decoding workers)."""

    def __init__(self, graph: bytes, threads: int | None = None, spin: bool = True):
        import onnxruntime as ort
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or usable_cores()
        if not spin:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3  # errors only
        self.session = ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])

    def outputs(self, images: np.ndarray) -> tuple[np.ndarray, ...]:
        array = images if images.dtype == np.uint8 else images.astype(np.float32, copy=False)
        return tuple(self.session.run(None, {"images": np.ascontiguousarray(array)}))


class OnnxRunner(OnnxSession):
    """An ``OnnxSession`` that takes torch tensors and returns its first output as a float32 tensor
    (``outputs``: all of them); by default on as many threads as torch uses."""

    def __init__(self, graph: bytes, threads: int | None = None, spin: bool = True):
        import torch
        super().__init__(graph, threads or torch.get_num_threads(), spin)

    def __call__(self, images: "torch.Tensor") -> "torch.Tensor":
        return self.outputs(images)[0]

    def outputs(self, images: "torch.Tensor") -> tuple["torch.Tensor", ...]:
        import torch
        images = images.detach().cpu()
        array = (images if images.dtype == torch.uint8 else images.float()).numpy()
        return tuple(torch.from_numpy(out) for out in super().outputs(array))


def usable_cores() -> int:
    """The cores this process may run on (its affinity where the system tells it)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on macOS or Windows
        return os.cpu_count() or 1


@contextmanager
def silenced_fd(fd: int):
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
