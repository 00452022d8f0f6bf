"""Model bundles: ``model.safetensors`` (weights) + ``model.json`` (everything needed to use them).

Loading never unpickles anything: safetensors holds plain tensors, JSON holds the rest. The JSON
records the SHA-256 of the weights file, so a tampered or swapped file is refused with a clear error,
and the architecture is rebuilt from its name and checked against every tensor's shape.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch.nn as nn
from safetensors.torch import load_file, save_file

from . import __version__
from .data.transforms import Preprocessing
from .errors import BundleError, OculiError
from .io import atomic_path, atomic_write_json

FORMAT = "oculi.bundle"
FORMAT_VERSION = 1
WEIGHTS_NAME, META_NAME = "model.safetensors", "model.json"


@dataclass
class ModelSpec:
    """How to rebuild the network: registry or timm name and the shape of its input and output."""

    name: str
    num_classes: int
    in_chans: int
    image_size: tuple[int, int]
    head: str
    classifier: str = "linear"  # the layers on a timm backbone's features: linear | mlp

    def to_dict(self) -> dict:
        return {"name": self.name, "num_classes": self.num_classes, "in_chans": self.in_chans,
                "image_size": list(self.image_size), "head": self.head, "classifier": self.classifier}

    @classmethod
    def from_dict(cls, d: dict) -> "ModelSpec":
        return cls(d["name"], int(d["num_classes"]), int(d["in_chans"]), tuple(d["image_size"]), d["head"],
                   d.get("classifier", "linear"))

    def build(self) -> nn.Module:
        from .models import create_model
        return create_model(self.name, self.num_classes, self.in_chans, self.image_size, self.head,
                            classifier=self.classifier)[0]


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def save_bundle(folder: Path, model: nn.Module, spec: ModelSpec, classes: list[str],
                preprocessing: Preprocessing, extra: dict | None = None) -> Path:
    """Write the weights, then the JSON that vouches for them (each atomically); returns model.json."""
    folder = Path(folder)
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    with atomic_path(folder / WEIGHTS_NAME) as tmp:
        save_file(state, str(tmp))
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "oculi_version": __version__,
            "model": spec.to_dict(), "classes": list(classes), "preprocessing": preprocessing.to_dict(),
            "weights_sha256": sha256_of(folder / WEIGHTS_NAME), **(extra or {})}
    atomic_write_json(folder / META_NAME, meta)
    return folder / META_NAME


def bundle_paths(path: str | Path) -> tuple[Path, Path]:
    """(model.json, model.safetensors) for a run folder or either file of a bundle."""
    path = Path(path).expanduser()
    folder = path if path.is_dir() else path.parent
    if not path.exists():
        raise OculiError(f"no such run folder or model: {path}")
    meta, weights = folder / META_NAME, folder / WEIGHTS_NAME
    for p in (meta, weights):
        if not p.is_file():
            raise BundleError(f"{folder}: no {p.name} (is this an oculi run folder?)")
    return meta, weights


def read_bundle_meta(meta_path: Path) -> dict:
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise BundleError(f"{meta_path}: not valid JSON ({err})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise BundleError(f"{meta_path}: not an oculi model bundle")
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise BundleError(f"{meta_path}: made by a newer oculi (bundle format {meta['format_version']})")
    return meta


def load_bundle(path: str | Path) -> tuple[nn.Module, dict]:
    """The model (eval mode, CPU) and its metadata; refuses tampered or mismatched files."""
    meta_path, weights_path = bundle_paths(path)
    meta = read_bundle_meta(meta_path)
    if sha256_of(weights_path) != meta.get("weights_sha256"):
        raise BundleError(f"{weights_path}: checksum does not match {meta_path.name} "
                          f"(the weights were changed or belong to another model)")
    try:
        spec = ModelSpec.from_dict(meta["model"])
        model = spec.build()
        model.load_state_dict(load_file(str(weights_path)), strict=True)
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        reason = str(err).strip().splitlines()[0][:200]
        raise BundleError(f"{weights_path}: does not match the architecture in {meta_path.name} ({reason})") from None
    return model.eval(), meta
