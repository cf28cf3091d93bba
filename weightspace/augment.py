"""Weight-space augmentations of stacked populations (as in "Data Augmentations in Deep Weight Spaces").

Every function takes a stacked population ``{name: [N, *shape]}`` and the architecture's
:class:`~weightspace.spec.PermutationSpec` and returns new tensors (inputs are never modified):

* :func:`permute` -- a random hidden-neuron permutation per model (function preserved exactly);
* :func:`rescale` -- positive rescaling of ReLU units: unit ``j`` of a layer has its incoming weights
  and bias multiplied by ``c_j > 0`` and its outgoing weights divided by ``c_j``. The function is
  preserved for positively homogeneous activations (ReLU, leaky ReLU), *not* for SIREN's sine;
* :func:`gaussian_noise` -- additive noise, relative to each tensor's per-model std;
* :func:`weight_dropout` -- zero each weight with probability ``p``;
* :func:`mixup` -- ``lam * a + (1 - lam) * b`` of *aligned* pairs (align first: weight matching,
  see :mod:`analysis.align`). This module never imports :mod:`analysis` (it sits above weightspace):
  callers pass an ``align`` callable to :class:`Augmenter` / the encoders' ``fit``.

:class:`Augmenter` composes them from a JSON-able list (``["permute", {"name": "noise", "std": 0.05}]``),
which is how encoders store their augmentation config.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from weightspace.spec import PermutationSpec, apply_permutation, random_permutation
from zoo.errors import ConfigError, MismatchError

__all__ = [
    "permute",
    "rescale",
    "gaussian_noise",
    "weight_dropout",
    "mixup",
    "Augmenter",
    "AUGMENTATIONS",
    "AlignFn",
]

Stacked = Mapping[str, Tensor]
#: ``align(population {name: [N, ...]}, reference {name: [...]}, spec) -> aligned population {name: [N, ...]}``
AlignFn = Callable[[Stacked, Mapping[str, Tensor], PermutationSpec], Mapping[str, Tensor]]


def _n(stacked: Stacked) -> int:
    return int(next(iter(stacked.values())).shape[0])


def permute(stacked: Stacked, spec: PermutationSpec, generator: torch.Generator | None = None) -> dict[str, Tensor]:
    """Each model permuted by its own uniformly random permutation from ``spec``."""
    perms = random_permutation(spec, stacked, generator, batch=_n(stacked))
    return apply_permutation(spec, perms, stacked)


def rescale(
    stacked: Stacked,
    spec: PermutationSpec,
    low: float = 0.5,
    high: float = 2.0,
    generator: torch.Generator | None = None,
) -> dict[str, Tensor]:
    """Positive rescaling of hidden units: ``c ~ logUniform[low, high]`` per model and unit.

    For every tensor and every axis carrying a hidden permutation ``p``: axis 0 (a layer's output
    neurons: weight rows, bias) is multiplied by ``c_p``, axis 1 (the next layer's inputs) divided by
    it. Exactly function-preserving for dense/conv chains with ReLU activations (up to float rounding).

    Shapes:
        stacked: ``name -> [N, *shape]``; returns the same shapes.
    """
    if not 0 < low <= high:
        raise ConfigError(f"rescale needs 0 < low <= high, got low={low}, high={high}")
    n = _n(stacked)
    sizes = spec.sizes(stacked)
    lo, hi = torch.log(torch.tensor(float(low))), torch.log(torch.tensor(float(high)))
    scales = {p: torch.exp(lo + (hi - lo) * torch.rand(n, k, generator=generator)) for p, k in sizes.items()}
    out = {}
    for name, t in stacked.items():
        axes = spec.axes.get(name)
        if axes is None:
            raise MismatchError(f"tensor {name!r} is not in the permutation spec; use the spec of this architecture")
        if not t.is_floating_point():
            out[name] = t
            continue
        for i, p in enumerate(axes):
            if p is None:
                continue
            c = scales[p].to(t.dtype)
            view = [n] + [1] * (t.dim() - 1)
            view[i + 1] = c.shape[1]
            t = t * c.view(view) if i == 0 else t / c.view(view)
        out[name] = t
    return out


def gaussian_noise(stacked: Stacked, std: float = 0.05, generator: torch.Generator | None = None) -> dict[str, Tensor]:
    """Add ``N(0, (std * per-model std of the tensor)^2)`` noise to every floating tensor."""
    out = {}
    for k, t in stacked.items():
        if not t.is_floating_point():
            out[k] = t
            continue
        flat = t.reshape(t.shape[0], -1)
        s = flat.std(1, keepdim=True) if flat.shape[1] > 1 else flat.abs().clamp_min(1e-3)
        noise = torch.randn(flat.shape, generator=generator, dtype=t.dtype) * s * std
        out[k] = (flat + noise).reshape(t.shape)
    return out


def weight_dropout(stacked: Stacked, p: float = 0.05, generator: torch.Generator | None = None) -> dict[str, Tensor]:
    """Zero each floating entry independently with probability ``p`` (no rescaling)."""
    if not 0 <= p < 1:
        raise ConfigError(f"weight dropout needs 0 <= p < 1, got {p}")
    return {
        k: t * (torch.rand(t.shape, generator=generator) >= p).to(t.dtype) if t.is_floating_point() else t
        for k, t in stacked.items()
    }


def mixup(a: Stacked, b: Stacked, lam: Tensor | float) -> dict[str, Tensor]:
    """``lam * a + (1 - lam) * b`` per model (``lam``: a float or ``[N]``). Align ``b`` to ``a`` first.

    Shapes:
        a, b: ``name -> [N, *shape]``; lam: ``[]`` or ``[N]``.
    """
    lam = torch.as_tensor(lam, dtype=torch.float32)
    out = {}
    for k, x in a.items():
        if tuple(b[k].shape) != tuple(x.shape):
            raise MismatchError(f"mixup of tensors of different shapes: {k!r} {tuple(x.shape)} vs {tuple(b[k].shape)}")
        lk = lam.view(-1, *([1] * (x.dim() - 1))) if lam.dim() else lam
        out[k] = lk * x + (1 - lk) * b[k]
    return out


# ----------------------------------------------------------------------------------------------
# Composition (the JSON-able form encoders store)

#: name -> (function, default keyword arguments). "mixup" is handled by :class:`Augmenter` itself.
AUGMENTATIONS: dict[str, tuple[Callable[..., dict[str, Tensor]] | None, dict[str, Any]]] = {
    "permute": (permute, {}),
    "rescale": (rescale, {"low": 0.5, "high": 2.0}),
    "noise": (gaussian_noise, {"std": 0.05}),
    "dropout": (weight_dropout, {"p": 0.05}),
    "mixup": (None, {"alpha": 0.2, "prob": 0.5}),
}
_NEEDS_SPEC = {"permute", "rescale"}


class Augmenter:
    """Apply a list of augmentations to training batches.

    ``steps``: names or dicts ``{"name": ..., **kwargs}`` from :data:`AUGMENTATIONS`, applied in order
    (``mixup`` first whatever its position: it mixes the batch with aligned partners, then the others
    apply). Mixup needs ``aligned`` partners: a copy of the training population aligned to one reference
    (see :meth:`prepare`), and mixes targets too (``y`` float for regression, soft labels otherwise).
    """

    def __init__(self, steps: Sequence[str | Mapping[str, Any]] = ()) -> None:
        self.steps: list[dict[str, Any]] = []
        for s in steps:
            d = {"name": s} if isinstance(s, str) else dict(s)
            name = d.get("name")
            if name not in AUGMENTATIONS:
                raise ConfigError(f"unknown augmentation {name!r}; valid: {', '.join(AUGMENTATIONS)}")
            unknown = set(d) - {"name"} - set(AUGMENTATIONS[name][1])
            if unknown:
                raise ConfigError(f"augmentation {name!r} has no option(s) {sorted(unknown)}; options: {sorted(AUGMENTATIONS[name][1])}")
            self.steps.append({**AUGMENTATIONS[name][1], **d})
        self.aligned_: dict[str, Tensor] | None = None
        self._y_all: Tensor | None = None

    @property
    def uses_mixup(self) -> bool:
        return any(s["name"] == "mixup" for s in self.steps)

    def __bool__(self) -> bool:
        return bool(self.steps)

    def prepare(self, stacked: Stacked, align: AlignFn | None, spec: PermutationSpec | None = None) -> Augmenter:
        """Align the training population once (reference: its first model) by its permutation
        ``spec``, for mixup partners."""
        if self.uses_mixup:
            if align is None:
                raise ConfigError(
                    "mixup mixes aligned pairs: pass align=... (e.g. weightspace.cli.weight_matching_align(), "
                    "which uses analysis.align weight matching) or drop 'mixup' from the augmentations"
                )
            if spec is None:
                raise ConfigError("mixup aligns the population by its permutation spec: pass spec=... to prepare")
            ref = {k: v[0] for k, v in stacked.items()}
            self.aligned_ = {k: torch.as_tensor(v) for k, v in align(stacked, ref, spec).items()}
        return self

    def __call__(
        self,
        batch: Stacked,
        y: Tensor,
        spec: PermutationSpec,
        *,
        index: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[dict[str, Tensor], Tensor]:
        """Augment a batch (``index``: its rows in the prepared training population, for mixup).

        Returns ``(batch, y)``; with mixup, ``y`` becomes the mixed targets (for classification, ``y``
        must already be soft labels ``[B, C]``).
        """
        out = dict(batch)
        for s in self.steps:
            if s["name"] != "mixup":
                continue
            if self.aligned_ is None or index is None or self._y_all is None:
                raise ConfigError("mixup needs Augmenter.prepare(training population, align), set_targets(y) and batch indices")
            n = _n(out)
            use = torch.rand(n, generator=generator) < s["prob"]
            if use.any():
                partner = torch.randint(0, _n(self.aligned_), (n,), generator=generator)
                lam = torch.distributions.Beta(s["alpha"], s["alpha"]).sample((n,)).float()
                lam = torch.maximum(lam, 1 - lam)  # the batch model dominates
                lam = torch.where(use, lam, torch.ones_like(lam))
                mine = {k: v[index] for k, v in self.aligned_.items()}
                theirs = {k: v[partner] for k, v in self.aligned_.items()}
                mixed = mixup(mine, theirs, lam)
                out = {k: torch.where(use.view(-1, *([1] * (v.dim() - 1))), mixed[k], out[k]) for k, v in out.items()}
                y_partner = self._y_all[partner]
                ly = lam.view(-1, *([1] * (y.dim() - 1))).to(y.dtype)
                y = ly * y + (1 - ly) * y_partner
        for s in self.steps:
            name = s["name"]
            if name == "mixup":
                continue
            fn, _ = AUGMENTATIONS[name]
            kwargs = {k: v for k, v in s.items() if k != "name"}
            out = fn(out, spec, generator=generator, **kwargs) if name in _NEEDS_SPEC else fn(out, generator=generator, **kwargs)
        return out, y

    def set_targets(self, y_all: Tensor) -> None:
        """The training targets (as the model consumes them), for mixing with mixup partners."""
        self._y_all = y_all

    def to_config(self) -> list[dict[str, Any]]:
        return [dict(s) for s in self.steps]
