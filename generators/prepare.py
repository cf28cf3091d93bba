"""Preparing a population's weights for a generator, and the exact way back.

:class:`WeightPreparer` (scikit-learn style: constructor = configuration, learned state ends in ``_``):

1. **canonicalise**: align every model to one reference model with re-basin weight matching (reached
   through the ``weightzoo.aligners`` entry point, :func:`population_aligner`, so generators never
   import :mod:`analysis`), optionally re-aligning once more to the mean of the aligned population;
2. **normalise** each tensor by its population mean and std (scalars, stored), computed in float64;
3. **flat view** ``[N, D]`` (tensors concatenated in state-dict order) and **token view**
   ``[N, T, token_size]``: each tensor flattened and cut into fixed-size chunks (the last one of a
   tensor zero-padded), p-diff / "Efficient Training with Denoised Neural Weights" style, with each
   token's layer index in ``token_layer_``;
4. the **exact inverse** :meth:`inverse_transform` back to a stacked state dict (tensors the spec
   does not let vary, e.g. integer buffers, are taken from the reference).

With ``dtype="float64"``, ``inverse_transform(transform(X))`` returns the aligned population bit for bit;
with float32 (the default for training) it is exact up to float32 rounding of the normalised values.

Shapes: stacked ``name -> [N, *shape]``; flat ``[N, D]``; tokens ``[N, T, token_size]``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

from weightspace.spec import PermutationSpec, spec_for
from weightspace.views import check_stacked
from zoo.errors import ConfigError, MismatchError

__all__ = ["WeightPreparer", "population_aligner", "AlignFn"]

Stacked = Mapping[str, Tensor]
#: ``align(population {name: [N, ...]}, reference {name: [...]}) -> aligned population {name: [N, ...]}``
AlignFn = Callable[[Stacked, Mapping[str, Tensor]], Mapping[str, Tensor]]
_DTYPES = {"float32": torch.float32, "float64": torch.float64}


def population_aligner(spec: PermutationSpec, seed: int = 0, max_iter: int | None = None) -> AlignFn:
    """Weight matching of a stacked population to one reference under ``spec``, found through the
    ``weightzoo.aligners`` entry point ``population`` (``analysis.align:align_population``), so that
    generators keep DESIGN.md's dependency direction (they never import analysis)."""
    from importlib.metadata import entry_points

    found = [ep for ep in entry_points(group="weightzoo.aligners") if ep.name == "population"]
    if not found:
        raise ConfigError("no 'population' aligner is installed (entry-point group weightzoo.aligners); "
                          "reinstall weightzoo (pip install -e .) to register analysis.align")  # fmt: skip
    align_population = found[0].load()

    def align(population: Stacked, reference: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return align_population(dict(population), dict(reference), spec=spec, seed=seed, max_iter=max_iter).aligned

    return align


class WeightPreparer:
    """Canonicalise, normalise and flatten/tokenise a population; invert exactly.

    Args:
        canonicalize: align every model to the reference (``False``: keep the weights as they are).
        reference: index of the reference model in the training population.
        refine: re-align to the mean of the aligned population this many extra times (0: only to the
            reference model).
        token_size: numbers per token of the token view.
        dtype: ``"float32"`` or ``"float64"``: the dtype of the prepared vectors.
        seed: seeds weight matching's order of permutations.
    """

    def __init__(
        self,
        canonicalize: bool = True,
        reference: int = 0,
        refine: int = 1,
        token_size: int = 64,
        dtype: str = "float32",
        seed: int = 0,
    ) -> None:
        self.canonicalize = canonicalize
        self.reference = reference
        self.refine = refine
        self.token_size = token_size
        self.dtype = dtype
        self.seed = seed

    # -- fitting -----------------------------------------------------------------------------------

    def fit(
        self,
        X: Stacked,
        *,
        spec: PermutationSpec | None = None,
        config: Mapping[str, Any] | None = None,
        align: AlignFn | None = None,
    ) -> WeightPreparer:
        """Learn the reference, the per-tensor statistics and the layouts from a training population."""
        self.fit_transform(X, spec=spec, config=config, align=align)
        return self

    def fit_transform(
        self,
        X: Stacked,
        *,
        spec: PermutationSpec | None = None,
        config: Mapping[str, Any] | None = None,
        align: AlignFn | None = None,
    ) -> Tensor:
        """:meth:`fit` and return the prepared flat vectors ``[N, D]`` of the training population."""
        if self.dtype not in _DTYPES:
            raise ConfigError(f"dtype must be one of {', '.join(_DTYPES)}, not {self.dtype!r}")
        if int(self.token_size) < 1:
            raise ConfigError(f"token_size must be a positive integer, got {self.token_size!r}")
        n = check_stacked(X)
        if not 0 <= int(self.reference) < n:
            raise ConfigError(f"reference index {self.reference} is outside the population of {n} models")
        if spec is None:
            if config is None:
                raise ConfigError("give the architecture config (config=...) or its permutation spec (spec=...)")
            spec = spec_for(config)
        self.spec_ = spec
        self.names_ = [k for k, v in X.items() if v.is_floating_point()]
        self.shapes_ = {k: list(X[k].shape[1:]) for k in self.names_}
        self.fixed_ = {k: v[int(self.reference)].clone() for k, v in X.items() if not v.is_floating_point()}
        self.reference_ = {k: X[k][int(self.reference)].clone() for k in self.names_}
        aligned = self.align_to_reference(X, align)
        for _ in range(int(self.refine) if self.canonicalize else 0):
            self.reference_ = {k: aligned[k].mean(0).to(X[k].dtype) for k in self.names_}
            aligned = self.align_to_reference(X, align)
        self.mean_ = {k: float(aligned[k].double().mean()) for k in self.names_}
        std = {k: float(aligned[k].double().std()) if aligned[k].numel() > 1 else 1.0 for k in self.names_}
        self.std_ = {k: s if s > 1e-12 else 1.0 for k, s in std.items()}
        self._layout()
        return self.flat(aligned)

    def _layout(self) -> None:
        size = int(self.token_size)
        self.numels_ = [int(torch.Size(self.shapes_[k]).numel()) for k in self.names_]
        self.dim_ = sum(self.numels_)
        self.tokens_per_tensor_ = [-(-m // size) for m in self.numels_]
        self.token_layer_ = [i for i, t in enumerate(self.tokens_per_tensor_) for _ in range(t)]
        self.n_tokens_ = len(self.token_layer_)

    def _check_fitted(self) -> None:
        if not hasattr(self, "mean_"):
            raise ConfigError("this preparer is not fitted yet; call fit(training population) first")

    # -- the steps ---------------------------------------------------------------------------------

    def align_to_reference(self, X: Stacked, align: AlignFn | None = None) -> dict[str, Tensor]:
        """``X`` aligned to the reference (unchanged when ``canonicalize=False``), raw weights."""
        if not self.canonicalize:
            return {k: X[k] for k in self.names_}
        fn = align or population_aligner(self.spec_, seed=int(self.seed))
        full = {**{k: X[k] for k in self.names_}, **{k: v.expand(check_stacked(X), *v.shape) for k, v in self.fixed_.items()}}
        out = fn(full, {**self.reference_, **self.fixed_})
        return {k: out[k] for k in self.names_}

    def flat(self, aligned: Stacked) -> Tensor:
        """Normalised flat vectors ``[N, D]`` of an (already aligned) population."""
        self._check_fitted()
        check_stacked({k: aligned[k] for k in self.names_ if k in aligned}, self.shapes_)
        n = check_stacked(aligned)
        dt = _DTYPES[self.dtype]
        parts = [((aligned[k].double() - self.mean_[k]) / self.std_[k]).reshape(n, -1).to(dt) for k in self.names_]
        return torch.cat(parts, 1)

    def unflat(self, flat: Tensor) -> dict[str, Tensor]:
        """The exact inverse of :meth:`flat` (float32 weights out, plus the fixed tensors)."""
        self._check_fitted()
        if flat.dim() != 2 or flat.shape[1] != self.dim_:
            raise MismatchError(
                f"vectors of shape {tuple(flat.shape)} do not fit this preparer ({self.dim_} numbers per model); "
                "sample with the generator fitted on this architecture"
            )
        n, out, i = flat.shape[0], {}, 0
        for k, m in zip(self.names_, self.numels_, strict=True):
            v = flat[:, i : i + m].double() * self.std_[k] + self.mean_[k]
            out[k] = v.reshape(n, *self.shapes_[k]).to(self.reference_[k].dtype)
            i += m
        for k, v in self.fixed_.items():
            out[k] = v.expand(n, *v.shape).clone()
        return out

    def transform(self, X: Stacked, *, align: bool = True, aligner: AlignFn | None = None) -> Tensor:
        """Prepared flat vectors ``[N, D]`` of new models (aligned to the reference first)."""
        self.check_layout(X)
        return self.flat(self.align_to_reference(X, aligner) if align else X)

    def inverse_transform(self, flat: Tensor) -> dict[str, Tensor]:
        """Stacked state dicts ``name -> [N, *shape]`` of prepared flat vectors."""
        return self.unflat(flat)

    def to_tokens(self, flat: Tensor) -> Tensor:
        """Token view ``[N, T, token_size]``: each tensor's numbers in chunks, the last chunk zero-padded."""
        self._check_fitted()
        size, n, out, i = int(self.token_size), flat.shape[0], [], 0
        for m, t in zip(self.numels_, self.tokens_per_tensor_, strict=True):
            part = flat[:, i : i + m]
            pad = t * size - m
            if pad:
                part = torch.cat([part, part.new_zeros(n, pad)], 1)
            out.append(part.reshape(n, t, size))
            i += m
        return torch.cat(out, 1)

    def from_tokens(self, tokens: Tensor) -> Tensor:
        """The inverse of :meth:`to_tokens` (padding dropped): ``[N, T, token_size] -> [N, D]``."""
        self._check_fitted()
        size = int(self.token_size)
        if tokens.dim() != 3 or tokens.shape[1:] != (self.n_tokens_, size):
            raise MismatchError(f"tokens of shape {tuple(tokens.shape)} do not fit [N, {self.n_tokens_}, {size}]")
        out, j = [], 0
        for m, t in zip(self.numels_, self.tokens_per_tensor_, strict=True):
            out.append(tokens[:, j : j + t].reshape(tokens.shape[0], t * size)[:, :m])
            j += t
        return torch.cat(out, 1)

    def token_mask(self) -> Tensor:
        """``[T, token_size]`` bool: True where a token holds a weight (False on padding)."""
        return self.to_tokens(torch.ones(1, self.dim_)).bool()[0]

    # -- persistence -------------------------------------------------------------------------------

    def get_params(self) -> dict[str, Any]:
        return {"canonicalize": self.canonicalize, "reference": self.reference, "refine": self.refine,
                "token_size": self.token_size, "dtype": self.dtype, "seed": self.seed}  # fmt: skip

    def state(self) -> tuple[dict[str, Any], dict[str, Tensor]]:
        """``(JSON-able state, tensors)``: the statistics and layout, and the reference's weights."""
        self._check_fitted()
        doc = {"params": self.get_params(), "spec_": self.spec_.to_dict(), "names_": self.names_, "shapes_": self.shapes_,
               "mean_": self.mean_, "std_": self.std_, "fixed_": sorted(self.fixed_)}  # fmt: skip
        tensors = {f"ref.{k}": v.contiguous() for k, v in self.reference_.items()}
        tensors.update({f"fixed.{k}": v.contiguous() for k, v in self.fixed_.items()})
        return doc, tensors

    @classmethod
    def from_state(cls, doc: Mapping[str, Any], tensors: Mapping[str, Tensor]) -> WeightPreparer:
        out = cls(**doc["params"])
        out.spec_ = PermutationSpec.from_dict(doc["spec_"])
        out.names_ = list(doc["names_"])
        out.shapes_ = {k: list(v) for k, v in doc["shapes_"].items()}
        out.mean_, out.std_ = dict(doc["mean_"]), dict(doc["std_"])
        out.reference_ = {k: tensors[f"ref.{k}"] for k in out.names_}
        out.fixed_ = {k: tensors[f"fixed.{k}"] for k in doc["fixed_"]}
        out._layout()
        return out

    def check_layout(self, X: Stacked) -> None:
        """Raise :class:`MismatchError` unless ``X`` has the architecture this preparer was fitted on."""
        self._check_fitted()
        check_stacked({k: v for k, v in X.items() if v.is_floating_point()}, self.shapes_)
