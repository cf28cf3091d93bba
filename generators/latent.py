"""A linear latent space for the generators: whitened principal components of the prepared weights.

:class:`PCALatent` (scikit-learn style: constructor = configuration, learned state ends in ``_``) is
the linear "weight autoencoder": ``transform`` projects prepared (canonicalised, normalised) flat
vectors on the top ``dim`` principal directions of the training population and divides each
coordinate by its standard deviation; ``inverse_transform`` maps latent vectors back. A generator
with ``latent_dim=k`` learns and samples in these ``k`` coordinates (p-diff learns a non-linear
autoencoder for the same purpose; with a few hundred training models the linear one is exact on the
training set and has nothing to fit).

Why: 200 independently seeded models span at most 199 directions of a 2,410-dimensional weight space,
so a denoiser over the flat view spends its capacity on directions in which the training set does not
vary at all (measured: samples kept 1.3-1.6x the training spread, median accuracy 0.54). In the latent
the denoiser only sees the directions the data spans, scaled to unit variance.

With ``dim = N - 1`` (the most there are) the training vectors are reproduced exactly (up to float
rounding); with fewer, the remainder is dropped (``explained_`` says how much of the variance is kept).

Shapes: flat ``[N, D]``; latent ``[N, dim]``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from zoo.errors import ConfigError, MismatchError

__all__ = ["PCALatent"]


class PCALatent:
    """Whitened principal-component coordinates of prepared flat vectors (see the module docstring).

    Args:
        dim: the number of components kept (capped at the training set's rank, at most ``N - 1``).
        whiten: divide each coordinate by its standard deviation over the training set.
    """

    def __init__(self, dim: int = 32, whiten: bool = True) -> None:
        self.dim = dim
        self.whiten = whiten

    def get_params(self) -> dict[str, Any]:
        return {"dim": self.dim, "whiten": self.whiten}

    def fit(self, flat: Tensor) -> PCALatent:
        """Learn the mean, the principal directions and their scales from training vectors ``[N, D]``."""
        if int(self.dim) < 1:
            raise ConfigError(f"latent dim must be a positive integer, got {self.dim!r}")
        if flat.dim() != 2 or flat.shape[0] < 2:
            raise ConfigError(f"a latent needs at least two training vectors [N, D], got shape {tuple(flat.shape)}")
        x = flat.double()
        self.mean_ = x.mean(0)
        _, s, vh = torch.linalg.svd(x - self.mean_, full_matrices=False)
        tol = float(s[0]) * max(x.shape) * torch.finfo(flat.dtype).eps if len(s) else 0.0  # numpy's matrix_rank tolerance
        rank = int((s > tol).sum()) if len(s) and s[0] > 0 else 0
        k = max(1, min(int(self.dim), x.shape[0] - 1, x.shape[1], rank))  # no direction without variance
        sd = s[:k] / (x.shape[0] - 1) ** 0.5
        self.components_ = vh[:k].contiguous()  # [k, D], orthonormal rows
        self.scale_ = sd.clamp_min(1e-12) if self.whiten else torch.ones(k, dtype=torch.float64)
        total = float(s.pow(2).sum())
        self.explained_ = float(s[:k].pow(2).sum()) / total if total > 0 else 1.0
        self.dim_ = k
        return self

    def _check(self, x: Tensor, what: str) -> None:
        if not hasattr(self, "mean_"):
            raise ConfigError("this latent is not fitted yet; call fit(training vectors) first")
        width = self.dim_ if what.startswith("latent") else self.mean_.shape[0]
        if x.dim() != 2 or x.shape[1] != width:
            raise MismatchError(f"{what} of shape {tuple(x.shape)} do not fit this latent ([N, {width}])")

    def transform(self, flat: Tensor) -> Tensor:
        """Latent coordinates ``[N, dim]`` of prepared flat vectors ``[N, D]`` (float32 out)."""
        self._check(flat, "vectors")
        return (((flat.double() - self.mean_) @ self.components_.T) / self.scale_).float()

    def inverse_transform(self, z: Tensor) -> Tensor:
        """Prepared flat vectors ``[N, D]`` of latent coordinates ``[N, dim]`` (float32 out)."""
        self._check(z, "latent vectors")
        return (self.mean_ + (z.double() * self.scale_) @ self.components_).float()

    def state(self) -> tuple[dict[str, Any], dict[str, Tensor]]:
        """``(JSON-able state, tensors)``; rebuilt by :meth:`from_state`."""
        if not hasattr(self, "mean_"):
            raise ConfigError("this latent is not fitted yet; call fit(training vectors) first")
        doc = {"params": self.get_params(), "dim_": self.dim_, "explained_": self.explained_}
        return doc, {"mean": self.mean_, "components": self.components_, "scale": self.scale_}

    @classmethod
    def from_state(cls, doc: Mapping[str, Any], tensors: Mapping[str, Tensor]) -> PCALatent:
        out = cls(**doc["params"])
        out.dim_, out.explained_ = int(doc["dim_"]), float(doc["explained_"])
        out.mean_, out.components_, out.scale_ = (tensors[k].double() for k in ("mean", "components", "scale"))
        if out.components_.shape != (out.dim_, out.mean_.shape[0]) or out.scale_.shape != (out.dim_,):
            raise MismatchError("the saved latent's tensors do not fit its dimensions; the generator is damaged")
        return out
