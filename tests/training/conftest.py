"""Fixtures of the transfer-learning tests: a tiny timm backbone's "pretrained" weights in a local file, and
photo-sized colour classes."""

import pytest
import timm
import torch
from safetensors.torch import save_file

from tests.conftest import make_class_folder


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "test_resnet.safetensors"
    save_file({k: v.contiguous() for k, v in timm.create_model("test_resnet").state_dict().items()}, str(path))
    return path


@pytest.fixture(scope="module")
def colours(tmp_path_factory):
    return make_class_folder(tmp_path_factory.mktemp("data") / "colours", per_class=16, size=(80, 72))  # photos (> 64 px): auto runs both phases
