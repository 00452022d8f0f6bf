"""ONNX Runtime as the CPU engine for frozen modules: same outputs as eager PyTorch, and a clean fallback."""

import timm
import torch
import torch.nn as nn

from oculi.runtime.onnx import OnnxRunner, onnx_bytes
from oculi.training.frozen import FrozenForward


def test_onnx_runtime_matches_eager_pytorch_at_any_batch_size():
    torch.manual_seed(0)
    backbone = timm.create_model("test_resnet", num_classes=0).eval()
    forward = FrozenForward(backbone, torch.device("cpu"))
    for n in (1, 5, 32):  # the graph is exported from a batch of 1 and takes any batch size
        images = torch.randn(n, 3, 40, 48)
        with torch.no_grad():
            expected = backbone(images)
        assert torch.allclose(forward(images), expected, atol=1e-4)
    assert forward.runner is not None and forward.fallback_reason is None


def test_channels_last_input_gives_the_same_features():
    torch.manual_seed(0)
    backbone = timm.create_model("test_resnet", num_classes=0).eval()
    runner = OnnxRunner(onnx_bytes(backbone, torch.randn(1, 3, 32, 32)))
    images = torch.randn(4, 3, 32, 32)
    assert torch.equal(runner(images), runner(images.contiguous(memory_format=torch.channels_last)))


class Bessel(nn.Module):
    """An op ONNX has no counterpart for."""

    def forward(self, x):
        return torch.special.bessel_j0(x).mean((2, 3))


def test_a_module_that_does_not_export_runs_in_pytorch_and_says_why(capfd):
    forward = FrozenForward(Bessel(), torch.device("cpu"))
    images = torch.randn(3, 2, 8, 8)
    assert torch.equal(forward(images), Bessel()(images))
    assert forward.runner is None and "bessel_j0" in forward.fallback_reason
    out, err = capfd.readouterr()
    assert "graph" not in out + err  # the exporter's dump of its graph is not shown to the user
