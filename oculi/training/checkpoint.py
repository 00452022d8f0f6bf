"""Training checkpoints for ``--resume``: one safetensors file, written atomically every epoch.

Tensors (model, best model, optimizer state) go in the safetensors body; everything else (epoch,
history, the optimizer's non-tensor state) goes in its JSON metadata, so one rename publishes a
consistent checkpoint and nothing is ever unpickled when it is read back.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..errors import OculiError
from ..io import atomic_path


def save_checkpoint(path: Path, model_state: dict, best_state: dict, optimizer: torch.optim.Optimizer,
                    meta: dict, baseline_state: dict | None = None, out_of_fold: dict | None = None,
                    average: dict | None = None) -> None:
    """``baseline_state``: the weights fine-tuning must beat (the features head's), to fall back on;
    ``out_of_fold``: the head's out-of-fold logits and labels (numpy), what its temperature is fitted on;
    ``average``: --ema's weights and step count (``WeightAverage.to_checkpoint``)."""
    tensors = {f"model/{k}": v for k, v in model_state.items()}
    tensors.update({f"best/{k}": v for k, v in best_state.items()})
    tensors.update({f"base/{k}": v for k, v in (baseline_state or {}).items()})
    tensors.update({f"oof/{k}": torch.as_tensor(v) for k, v in (out_of_fold or {}).items()})
    if average is not None:
        tensors.update({f"ema/{k}": v for k, v in average["state"].items()})
        meta = {**meta, "ema_steps": average["steps"]}
    optim_json, optim_tensors = _split_optimizer_state(optimizer.state_dict())
    tensors.update(optim_tensors)
    # safetensors refuses tensors that share memory, so every entry gets its own contiguous copy.
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    metadata = {"oculi_checkpoint": json.dumps({**meta, "optimizer": optim_json})}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


def load_checkpoint(path: Path) -> tuple[dict, dict, dict, dict]:
    """(model state, best model state, optimizer state dict, meta) from a checkpoint file; meta's
    ``baseline_state`` holds the weights to fall back on (None when the checkpoint has none)."""
    if not path.is_file():
        raise OculiError(f"--resume: no checkpoint in {path.parent} (expected {path.name})")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads(f.metadata()["oculi_checkpoint"])
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as err:
        raise OculiError(f"--resume: {path} is not a readable oculi checkpoint ({err})") from None
    model = {k[6:]: v for k, v in tensors.items() if k.startswith("model/")}
    best = {k[5:]: v for k, v in tensors.items() if k.startswith("best/")}
    meta["baseline_state"] = {k[5:]: v for k, v in tensors.items() if k.startswith("base/")} or None
    meta["out_of_fold"] = {k[4:]: v.numpy() for k, v in tensors.items() if k.startswith("oof/")} or None
    average = {k[4:]: v for k, v in tensors.items() if k.startswith("ema/")}
    meta["average"] = {"state": average, "steps": meta.pop("ema_steps")} if "ema_steps" in meta else None
    optim = _join_optimizer_state(meta.pop("optimizer"), tensors)
    return model, best, optim, meta


def _split_optimizer_state(state_dict: dict) -> tuple[dict, dict]:
    """Optimizer state -> (JSON-able part, {"optim/<param>/<name>": tensor})."""
    tensors, values = {}, {}
    for param_id, param_state in state_dict["state"].items():
        values[str(param_id)] = {}
        for name, value in param_state.items():
            if torch.is_tensor(value):
                tensors[f"optim/{param_id}/{name}"] = value
            else:
                values[str(param_id)][name] = value
    return {"param_groups": state_dict["param_groups"], "values": values}, tensors


def _join_optimizer_state(optim_json: dict, tensors: dict) -> dict:
    state: dict = {int(pid): dict(values) for pid, values in optim_json["values"].items()}
    for key, value in tensors.items():
        if key.startswith("optim/"):
            _, pid, name = key.split("/", 2)
            state.setdefault(int(pid), {})[name] = value
    return {"state": state, "param_groups": optim_json["param_groups"]}
