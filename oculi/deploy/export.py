"""ONNX: a model as a portable graph, and ONNX Runtime to run it on the CPU (training runs frozen backbones
through it: ``oculi.train.frozen``)."""

from __future__ import annotations

import io
import os
import sys
from contextlib import contextmanager, redirect_stderr, redirect_stdout
import warnings

import numpy as np
import torch
import torch.nn as nn

OPSET = 17


def onnx_bytes(model: nn.Module, example: torch.Tensor) -> bytes:
    """``model`` (in eval mode) as an ONNX graph with a variable batch size, input ``images``."""
    buffer, chatter = io.BytesIO(), io.StringIO()
    # The TorchScript-based exporter warns (deprecation, tracer notes) and, on failure, prints its graph:
    # the caller reports what matters.
    with warnings.catch_warnings(), redirect_stdout(chatter), redirect_stderr(chatter), _silenced_fd(1):
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (example,), buffer, input_names=["images"], output_names=["outputs"],
                          dynamic_axes={"images": {0: "batch"}, "outputs": {0: "batch"}},
                          opset_version=OPSET, dynamo=False)
    return buffer.getvalue()


class OnnxRunner:
    """An ONNX Runtime CPU session that takes and returns float32 torch tensors."""

    def __init__(self, graph: bytes, threads: int | None = None):
        import onnxruntime as ort
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.log_severity_level = 3  # errors only
        self.session = ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        array = np.ascontiguousarray(images.detach().cpu().float().numpy())
        return torch.from_numpy(self.session.run(None, {"images": array})[0])


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
