"""A model's layers in forward order, shallowest first: what "keep the first k layers" counts.

A *layer* is one weight of rank >= 2 (a linear or conv weight) together with the float parameters
that follow it before the next such weight: its bias and the affine parameters of a norm after it
(BatchNorm ``weight``/``bias``). Running statistics (``running_mean``, ``running_var``,
``num_batches_tracked``) belong to no layer: a signature never carries them (they are recomputed on
data after patching, as in the authors' code).

The order is the forward order, read from a ``torch.fx`` trace of the family's module (so a CNN's
``norms.0`` follows ``convs.0`` although its state dict lists every conv first); when the module
cannot be traced (or the architecture has no builder), the state dict's order is used.

    layers_of(cfg, state)   # [Layer("layers.0", ("layers.0.weight", "layers.0.bias")), Layer("layers.1", ...)]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor

__all__ = ["Layer", "layers_of", "is_buffer"]

_BUFFER_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked")


def is_buffer(name: str) -> bool:
    """True for normalisation statistics (never part of a signature)."""
    return name.rsplit(".", 1)[-1] in _BUFFER_SUFFIXES


@dataclass(frozen=True)
class Layer:
    """One layer: its name (the module path of its weight) and its tensors, weight first."""

    name: str
    tensors: tuple[str, ...]


def _forward_order(config: Mapping[str, Any] | None) -> list[str] | None:
    """Parameter names in the order the module's forward pass uses them, or None."""
    from zoo.models.architectures import build_module, can_build

    if config is None or not can_build(config):
        return None
    module = build_module(config)
    try:
        import torch.fx

        graph = torch.fx.symbolic_trace(module).graph
    except Exception:  # an untraceable family: fall back to the state dict's order
        return None
    order: list[str] = []
    for node in graph.nodes:
        if node.op == "call_module":
            sub = module.get_submodule(str(node.target))
            order += [f"{node.target}.{n}" for n, _ in sub.named_parameters(recurse=False)]
        elif node.op == "get_attr":
            order.append(str(node.target))
    return list(dict.fromkeys(order))


def layers_of(config: Mapping[str, Any] | None, state: Mapping[str, Tensor] | Sequence[str],
              shapes: Mapping[str, Sequence[int]] | None = None) -> list[Layer]:  # fmt: skip
    """The layers of a model (see the module docstring), shallowest first.

    ``state`` is a state dict (or its names, with ``shapes``); ``config`` its architecture config
    (None or a raw config: the state dict's order).
    """
    names = list(state)
    dims = {k: len(shapes[k]) for k in names} if shapes is not None else {k: state[k].dim() for k in names}  # type: ignore[index]
    floats = [k for k in names if not is_buffer(k)]
    order = _forward_order(config)
    if order is not None:
        seen = [k for k in order if k in set(floats)]
        floats = seen + [k for k in floats if k not in set(seen)]
    layers: list[tuple[str, list[str]]] = []
    for k in floats:
        if dims[k] >= 2 or not layers:
            layers.append((k.rsplit(".", 1)[0] if dims[k] >= 2 else k, [k]))
        else:
            layers[-1][1].append(k)
    return [Layer(n, tuple(ts)) for n, ts in layers]
