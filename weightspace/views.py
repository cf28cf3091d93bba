"""Views of a population: stacked per-layer tensors, their normalisation, flat vectors, dense chains.

A population comes out of the zoo as stacked tensors (``Zoo.stack`` / ``Population.stack``):
``{name: Tensor[N, *shape]}``. Learners see it through these helpers:

* :class:`LayerNormalizer` -- per-tensor standardisation with statistics fitted on a *training*
  population (scikit-learn style ``fit`` / ``transform`` / ``inverse_transform``). One mean and one
  standard deviation per tensor name (a scalar each), so the transform commutes with every neuron
  permutation: an equivariant encoder stays equivariant on normalised inputs.
* :func:`flatten` / :func:`unflatten` -- one vector per model ``[N, D]`` for baselines;
  :class:`FlatNormalizer` standardises each coordinate (not permutation-equivariant; baselines only).
* :func:`dense_chain` -- the ordered ``(weight, bias)`` names of a chain of dense layers (MLP, SIREN),
  read from the permutation spec; the layout the NP encoder and the augmentations use.

Shapes: ``stacked[name]`` is ``[N, *shape]`` throughout; normaliser statistics are scalars per name.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from weightspace.spec import ChainLayer, PermutationSpec, layer_chain
from zoo.errors import ConfigError, MismatchError

__all__ = [
    "LayerNormalizer",
    "FlatNormalizer",
    "DenseLayer",
    "dense_chain",
    "mlp_spec_from_names",
    "flatten",
    "unflatten",
    "check_stacked",
    "n_models",
]

Stacked = Mapping[str, Tensor]


def n_models(stacked: Stacked) -> int:
    """The population size N of a stacked state (every tensor ``[N, ...]``)."""
    if not stacked:
        raise MismatchError("an empty population (no tensors); load it with Population.stack()")
    return int(next(iter(stacked.values())).shape[0])


def check_stacked(stacked: Stacked, reference: Mapping[str, Sequence[int]] | None = None) -> int:
    """Check that every tensor has the same leading N (and, given, the reference per-model shapes)."""
    n = n_models(stacked)
    for k, v in stacked.items():
        if v.dim() == 0 or v.shape[0] != n:
            raise MismatchError(f"tensor {k!r} has shape {tuple(v.shape)}; expected a stacked population [N={n}, ...]")
    if reference is not None:
        missing = [k for k in reference if k not in stacked]
        extra = [k for k in stacked if k not in reference]
        if missing or extra:
            raise MismatchError(
                f"these weights do not fit the fitted layout: missing {missing[:5]}, unexpected {extra[:5]}; "
                "use models of the architecture the learner was fitted on"
            )
        for k, shape in reference.items():
            if tuple(stacked[k].shape[1:]) != tuple(shape):
                raise MismatchError(f"tensor {k!r}: got per-model shape {tuple(stacked[k].shape[1:])}, fitted on {tuple(shape)}")
    return n


# ----------------------------------------------------------------------------------------------
# Per-tensor normalisation


class LayerNormalizer:
    """Standardise each tensor by its population mean and std (scalars), fitted on training models.

    ``fit`` learns ``mean_[name]``, ``std_[name]`` and ``shapes_[name]``; ``transform`` returns
    ``(x - mean) / std`` per tensor. Scalar statistics keep permutation equivariance.
    """

    def __init__(self, eps: float = 1e-8) -> None:
        self.eps = eps

    def fit(self, stacked: Stacked) -> LayerNormalizer:
        check_stacked(stacked)
        self.mean_ = {k: float(v.double().mean()) for k, v in stacked.items() if v.is_floating_point()}
        self.std_ = {k: float(v.double().std()) if v.numel() > 1 else 1.0 for k, v in stacked.items() if v.is_floating_point()}
        self.std_ = {k: s if s > self.eps else 1.0 for k, s in self.std_.items()}
        self.shapes_ = {k: list(v.shape[1:]) for k, v in stacked.items() if v.is_floating_point()}
        return self

    def _check(self, stacked: Stacked) -> None:
        if not hasattr(self, "mean_"):
            raise ConfigError("this normalizer is not fitted yet; call fit(training population) first")
        check_stacked({k: v for k, v in stacked.items() if k in self.shapes_}, self.shapes_)

    def transform(self, stacked: Stacked) -> dict[str, Tensor]:
        self._check(stacked)
        return {k: ((stacked[k].float() - m) / self.std_[k]) for k, m in self.mean_.items()}

    def inverse_transform(self, stacked: Stacked) -> dict[str, Tensor]:
        return {k: stacked[k] * self.std_[k] + m for k, m in self.mean_.items()}

    def fit_transform(self, stacked: Stacked) -> dict[str, Tensor]:
        return self.fit(stacked).transform(stacked)

    def state(self) -> dict[str, Any]:
        """JSON-able learned state."""
        return {"mean_": self.mean_, "std_": self.std_, "shapes_": self.shapes_}

    @classmethod
    def from_state(cls, state: Mapping[str, Any], eps: float = 1e-8) -> LayerNormalizer:
        out = cls(eps)
        out.mean_, out.std_, out.shapes_ = dict(state["mean_"]), dict(state["std_"]), dict(state["shapes_"])
        return out


# ----------------------------------------------------------------------------------------------
# Flat vectors


def flatten(stacked: Stacked, names: Sequence[str] | None = None) -> Tensor:
    """One vector per model: ``[N, D]``, tensors concatenated in ``names`` (default: dict) order."""
    n = check_stacked(stacked)
    names = list(names) if names is not None else list(stacked)
    return torch.cat([stacked[k].reshape(n, -1).float() for k in names], dim=1)


def unflatten(flat: Tensor, shapes: Mapping[str, Sequence[int]]) -> dict[str, Tensor]:
    """The inverse of :func:`flatten`: ``[N, D]`` -> ``{name: [N, *shape]}``."""
    out, i = {}, 0
    total = sum(int(torch.Size(s).numel()) for s in shapes.values())
    if flat.dim() != 2 or flat.shape[1] != total:
        raise MismatchError(f"flat vectors of shape {tuple(flat.shape)} do not fit these shapes ({total} numbers per model)")
    for k, s in shapes.items():
        m = int(torch.Size(s).numel())
        out[k] = flat[:, i : i + m].reshape(flat.shape[0], *s)
        i += m
    return out


class FlatNormalizer:
    """Per-coordinate standardisation of flat vectors ``[N, D]`` (for non-equivariant baselines)."""

    def __init__(self, eps: float = 1e-6) -> None:
        self.eps = eps

    def fit(self, x: Tensor) -> FlatNormalizer:
        self.mean_ = x.mean(0)
        self.std_ = x.std(0).clamp_min(self.eps) if x.shape[0] > 1 else torch.ones(x.shape[1])
        return self

    def transform(self, x: Tensor) -> Tensor:
        if not hasattr(self, "mean_"):
            raise ConfigError("this normalizer is not fitted yet; call fit(training vectors) first")
        if x.shape[1:] != self.mean_.shape:
            raise MismatchError(f"vectors of dimension {x.shape[1:]} do not fit the fitted dimension {tuple(self.mean_.shape)}")
        return (x - self.mean_) / self.std_

    def fit_transform(self, x: Tensor) -> Tensor:
        return self.fit(x).transform(x)


# ----------------------------------------------------------------------------------------------
# Chains of dense layers


#: one dense layer of a chain (the spec's :class:`~weightspace.spec.ChainLayer`)
DenseLayer = ChainLayer


_LAYER = re.compile(r"^layers\.(\d+)\.(weight|bias)$")


def mlp_spec_from_names(names: Sequence[str]) -> PermutationSpec:
    """The spec of an mlp/siren-layout state (``layers.{i}.weight/bias``), read from the names alone."""
    idx = sorted({int(m.group(1)) for k in names if (m := _LAYER.match(k))})
    if not idx or any(not _LAYER.match(k) for k in names) or idx != list(range(len(idx))):
        raise ConfigError(
            f"cannot read a dense chain from tensor names {list(names)[:6]}; give the permutation spec "
            "(spec=spec_for(arch config)) -- the NP encoder supports chains of dense layers (mlp, siren)"
        )
    from weightspace.spec import dense

    axes: dict[str, Any] = {}
    depth = len(idx)
    for i in idx:
        axes.update(dense(f"layers.{i}", f"layers.{i - 1}" if i else None, f"layers.{i}" if i < depth - 1 else None,
                          bias=f"layers.{i}.bias" in names))
    return PermutationSpec(axes)


def dense_chain(spec: PermutationSpec, stacked: Stacked | None = None) -> list[DenseLayer]:
    """The spec's dense layers in forward order (input layer first).

    Raises :class:`ConfigError` unless the spec is a chain of 2-D weights with optional biases, the
    first layer's input and the last layer's output fixed, and each hidden permutation shared by
    exactly one layer's output and the next layer's input (mlp, siren).
    """
    others = [k for k, ax in spec.axes.items() if len(ax) not in (1, 2)]
    if others:
        raise ConfigError(
            f"the NP view needs a chain of dense layers (mlp, siren); this spec has tensors {others[:3]} of other ranks"
        )
    chain = layer_chain(spec, what="the NP view needs a single chain of dense layers (mlp, siren)")
    unused = set(spec.axes) - {x for lay in chain for x in (lay.weight, lay.bias) if x}
    if unused:
        raise ConfigError(f"the spec is not a single chain of dense layers; left over: {sorted(unused)[:5]}")
    if chain[-1].p_out is not None:
        raise ConfigError("the last dense layer's outputs are permuted; the chain must end in fixed outputs")
    if stacked is not None:
        spec.sizes(stacked)
    return chain
