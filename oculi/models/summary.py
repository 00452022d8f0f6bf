"""A model's layers as a table, in the manner of Keras' ``model.summary()``: what each layer is, its output
shape and its parameters."""

from __future__ import annotations

import torch
import torch.nn as nn

MAX_LAYER_ROWS = 40


def layer_rows(model: nn.Module, input_shape: tuple[int, ...], frozen: dict[str, int]) -> list[list]:
    """Keras-summary-like rows (name, type, output shape, parameters, frozen parameters) for the modules at
    the deepest nesting level that still gives at most MAX_LAYER_ROWS rows."""
    chosen = _summary_modules(model, MAX_LAYER_ROWS)
    shapes = _output_shapes(model, chosen, input_shape)
    rows = []
    for name, module in chosen:
        params = sum(p.numel() for p in module.parameters())
        fixed = sum(n for k, n in frozen.items() if k.startswith(name + "."))
        rows.append([name, type(module).__name__, shapes.get(name, "-"), f"{params:,}", f"{fixed:,}" if fixed else ""])
    return rows


def _summary_modules(model: nn.Module, limit: int) -> list[tuple[str, nn.Module]]:
    best: list[tuple[str, nn.Module]] = []
    for depth in range(1, 8):
        frontier = list(_frontier(model, "", depth))
        if len(frontier) > limit or (best and len(frontier) == len(best)):
            break
        best = frontier
    return best


def _frontier(module: nn.Module, prefix: str, depth: int):
    """Submodules ``depth`` levels down, stopping early at layers: modules without children, or with
    parameters of their own (timm's BatchNormAct2d holds its weights and an activation child)."""
    for name, child in module.named_children():
        own = next(child.parameters(recurse=False), None) is not None
        if depth == 1 or own or not any(child.children()):
            yield prefix + name, child
        else:
            yield from _frontier(child, f"{prefix}{name}.", depth - 1)


@torch.no_grad()
def _output_shapes(model: nn.Module, modules: list[tuple[str, nn.Module]], input_shape) -> dict[str, str]:
    """Each module's output shape (batch dimension left out) for one zero input."""
    shapes: dict[str, str] = {}

    def hook(name):
        def record(module, inputs, output):
            if torch.is_tensor(output):
                shapes.setdefault(name, " x ".join(str(s) for s in output.shape[1:]))
        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in modules]
    was_training = model.training
    try:
        model.eval()(torch.zeros(input_shape))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return shapes
