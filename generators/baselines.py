"""Memorisation baselines (Zeng et al. 2025, "Generative Modeling of Weights: Generalization or
Memorization?"), all built from the same aligned training population as the generator.

Every function works on prepared (canonicalised, per-tensor normalised) flat vectors ``train [N, D]``
and returns ``[n, D]``; :meth:`~generators.prepare.WeightPreparer.inverse_transform` makes them models.
In the normalised space every tensor has population std 1, so a noise level ``alpha`` is "alpha times
the spread of that tensor across the training models".

* :func:`noise_copies` -- a random training model plus Gaussian noise of std ``alpha``;
* :func:`averaged` -- the mean of ``k`` (16) random aligned training models;
* :func:`gaussian` -- a per-coordinate Gaussian fitted to the training set;
* :func:`pca_gaussian` -- a Gaussian in the span of the top principal components;
* :func:`interpolations` -- ``lam * a + (1 - lam) * b`` of random aligned pairs, ``lam ~ U(low, high)``.

Shapes: train ``[N, D]``; returns ``[n, D]``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from zoo.errors import ConfigError

__all__ = ["noise_copies", "averaged", "gaussian", "pca_gaussian", "interpolations", "BASELINES", "NOISE_LEVELS"]

#: Noise levels of the noise-copy baseline (relative to each tensor's population std).
NOISE_LEVELS = (0.0, 0.05, 0.1, 0.2, 0.4, 0.8)


def _check(train: Tensor, n: int) -> None:
    if train.dim() != 2 or train.shape[0] < 2:
        raise ConfigError(f"baselines need at least two training vectors [N, D], got shape {tuple(train.shape)}")
    if n < 1:
        raise ConfigError(f"ask for at least one baseline model, not {n}")


def noise_copies(train: Tensor, n: int, alpha: float, generator: torch.Generator | None = None) -> Tensor:
    """Random training models plus ``alpha`` * N(0, 1) noise. Returns ``(vectors [n, D])``."""
    _check(train, n)
    src = torch.randint(0, train.shape[0], (n,), generator=generator)
    return train[src] + float(alpha) * torch.randn(n, train.shape[1], generator=generator, dtype=train.dtype)


def averaged(train: Tensor, n: int, k: int = 16, generator: torch.Generator | None = None) -> Tensor:
    """The mean of ``k`` random distinct training models (all of them when fewer), ``n`` times."""
    _check(train, n)
    k = min(int(k), train.shape[0])
    idx = torch.stack([torch.randperm(train.shape[0], generator=generator)[:k] for _ in range(n)])
    return train[idx].mean(1)


def gaussian(train: Tensor, n: int, generator: torch.Generator | None = None) -> Tensor:
    """Independent per-coordinate Gaussians with the training set's means and stds."""
    _check(train, n)
    mean, std = train.mean(0), train.std(0)
    return mean + std * torch.randn(n, train.shape[1], generator=generator, dtype=train.dtype)


def pca_gaussian(train: Tensor, n: int, components: int = 32, generator: torch.Generator | None = None) -> Tensor:
    """A Gaussian over the top ``components`` principal components (their variances), plus the mean."""
    _check(train, n)
    mean = train.mean(0)
    centred = (train - mean).double()
    q = min(int(components), train.shape[0] - 1, train.shape[1])
    _, s, vh = torch.linalg.svd(centred, full_matrices=False)
    scale = s[:q] / (train.shape[0] - 1) ** 0.5
    z = torch.randn(n, q, generator=generator, dtype=torch.float64) * scale
    return (mean.double() + z @ vh[:q]).to(train.dtype)


def interpolations(train: Tensor, n: int, low: float = 0.25, high: float = 0.75,
                   generator: torch.Generator | None = None) -> Tensor:  # fmt: skip
    """``lam * a + (1 - lam) * b`` of random distinct aligned pairs, ``lam ~ U(low, high)``."""
    _check(train, n)
    a = torch.randint(0, train.shape[0], (n,), generator=generator)
    b = (a + torch.randint(1, train.shape[0], (n,), generator=generator)) % train.shape[0]
    lam = low + (high - low) * torch.rand(n, 1, generator=generator, dtype=train.dtype)
    return lam * train[a] + (1 - lam) * train[b]


def _noise_at(alpha: float):
    return lambda train, n, generator=None: noise_copies(train, n, alpha, generator)


#: name -> ``fn(train [N, D], n, generator) -> [n, D]``: every baseline a run is compared with.
BASELINES = {
    **{f"noise_{a:g}": _noise_at(a) for a in NOISE_LEVELS},
    "averaged": lambda train, n, generator=None: averaged(train, n, 16, generator),
    "gaussian": gaussian,
    "pca_gaussian": lambda train, n, generator=None: pca_gaussian(train, n, 32, generator),
    "interpolation": lambda train, n, generator=None: interpolations(train, n, generator=generator),
}
