"""Batched power-law fits of eigenvalue spectra, with the cutoff chosen by the Kolmogorov-Smirnov distance.

The heavy-tail exponent ``alpha`` of WeightWatcher (Martin & Mahoney 2021) is the exponent of a
power law ``p(x) ~ x^-alpha`` fitted to the tail ``x >= xmin`` of a layer's empirical spectral density
(the eigenvalues of ``W^T W``), by the method of Clauset, Shalizi & Newman (2009), which the
``powerlaw`` package and WeightWatcher implement:

- for every candidate cutoff ``xmin = x_i`` (each eigenvalue in turn, ascending), the maximum-likelihood
  exponent of the continuous power law on the ``n_i`` eigenvalues ``x_j >= x_i`` is
  ``alpha_i = 1 + n_i / sum_j log(x_j / x_i)``;
- its Kolmogorov-Smirnov distance is ``D_i = max_j |F_fit(x_j) - F_emp(x_j)|`` with the fitted CDF
  ``F_fit(x) = 1 - (x / x_i)^(1 - alpha_i)`` and the empirical CDF ``(j - i) / n_i`` over the tail;
- the fit is the candidate with the smallest ``D_i`` (``alpha_i > 1`` required).

Small spectra. Digits layers have 10-128 eigenvalues. Below ``small_n`` (20) eigenvalues the fit
uses the bias-corrected estimator ``alpha_i = 1 + (n_i - 1) / sum_j log(x_j / x_i)`` and only
tails of at least ``min_tail_small`` (8) eigenvalues, as WeightWatcher (>= 0.7.7) does for small
layers; such fits get the status ``small_sample`` rather than ``ok``. (WeightWatcher additionally
rewards longer tails there, minimising ``D_i - 0.868 / sqrt(n_i)``; this module keeps Clauset's plain
KS criterion, so its small-layer alphas can differ from WeightWatcher's: see docs/landscape.md.)
Spectra with fewer than ``min_evals`` eigenvalues above ``thresh`` are not fitted and get the status
``too_few_eigenvalues``; spectra where no cutoff gives a finite ``alpha > 1`` (all eigenvalues equal,
e.g. an orthogonal matrix) get ``failed``. Nothing is skipped silently: every spectrum has a status.

Uncertainty: ``sigma = (alpha - 1) / sqrt(n_tail)`` (the asymptotic standard error of the MLE) and a
bootstrap confidence interval: the spectrum's eigenvalues resampled with replacement ``bootstrap``
times and refitted, cutoff search included (Clauset et al. 2009, section 3.4), percentiles of the
refitted alphas.

Every fit is batched: ``B`` spectra (models x layers, or models x bootstrap replicates) are fitted
at once with tensor operations, no Python loop over spectra.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import Tensor

from zoo.errors import ConfigError

__all__ = ["STATUS", "STATUS_NAMES", "PowerLawFit", "fit_power_law"]

#: fit status -> the code stored as a metric (``esd_alpha_status``)
STATUS: dict[str, int] = {"ok": 0, "small_sample": 1, "too_few_eigenvalues": 2, "failed": 3}
STATUS_NAMES: dict[int, str] = {v: k for k, v in STATUS.items()}

#: elements of one ``[rows, candidates, M]`` block of the KS search (bounds its memory: 4 bytes each)
_BLOCK = 1 << 18


@dataclass
class PowerLawFit:
    """Power-law fits of ``B`` spectra.

    Shapes:
        every field ``[B]``: ``alpha``, ``sigma``, ``xmin``, ``ks`` (the KS distance ``D``) and the
        bootstrap interval ``alpha_lo``/``alpha_hi`` are float (NaN where there is no fit or no
        bootstrap); ``n_evals`` (eigenvalues above the threshold), ``n_tail`` (eigenvalues >= xmin)
        and ``status`` (codes of :data:`STATUS`) are int64.
    """

    alpha: Tensor
    sigma: Tensor
    xmin: Tensor
    ks: Tensor
    n_tail: Tensor
    n_evals: Tensor
    status: Tensor
    alpha_lo: Tensor
    alpha_hi: Tensor

    def status_names(self) -> list[str]:
        return [STATUS_NAMES[int(s)] for s in self.status.tolist()]

    def view(self, *shape: int) -> PowerLawFit:
        """The same fits with the batch axis reshaped (e.g. ``[N * L]`` -> ``[N, L]``)."""
        return PowerLawFit(**{f.name: getattr(self, f.name).view(*shape) for f in fields(self)})


def fit_power_law(
    evals: Tensor,
    *,
    thresh: float = 1e-5,
    min_evals: int = 8,
    small_n: int = 20,
    min_tail_small: int = 8,
    bootstrap: int = 0,
    ci: float = 0.95,
    seed: int = 0,
) -> PowerLawFit:
    """Fit a power law to the tail of each of ``B`` spectra (see the module docstring).

    Args:
        evals: the eigenvalues, any order; entries ``<= thresh`` (and NaN) are ignored, as
            WeightWatcher ignores eigenvalues below ``1e-5``.
        min_evals: spectra with fewer eigenvalues above ``thresh`` are not fitted (status
            ``too_few_eigenvalues``).
        small_n, min_tail_small: below ``small_n`` eigenvalues, the bias-corrected estimator on
            tails of at least ``min_tail_small`` eigenvalues (status ``small_sample``).
        bootstrap: replicates for the confidence interval (0: none; ``alpha_lo``/``alpha_hi`` NaN).
        ci: the interval's coverage (0.95: the 2.5 and 97.5 percentiles).
        seed: seeds the bootstrap's resampling.

    Shapes:
        evals: ``[B, M]`` (or ``[M]`` for one spectrum). Returns fields of shape ``[B]`` (``[]``).
    """
    if evals.dim() not in (1, 2):
        raise ConfigError(f"evals must be [B, M] or [M], got shape {tuple(evals.shape)}")
    if not 0 < ci < 1:
        raise ConfigError(f"ci must be in (0, 1), got {ci!r}")
    if min_evals < 2 or min_tail_small < 2:
        raise ConfigError("min_evals and min_tail_small must be at least 2 (a tail needs two eigenvalues)")
    if isinstance(bootstrap, bool) or not isinstance(bootstrap, int) or bootstrap < 0:
        raise ConfigError(f"bootstrap must be a non-negative number of replicates, got {bootstrap!r}")
    one = evals.dim() == 1
    x = _prepare(evals.reshape(1, -1) if one else evals, thresh)
    n_valid = (~torch.isnan(x)).sum(1)
    small = n_valid < small_n
    alpha, xmin, ks, n_tail = _fit_sorted(x, n_valid, small, min_tail_small)
    status = torch.full_like(n_valid, STATUS["ok"])
    status[small] = STATUS["small_sample"]
    status[~torch.isfinite(alpha)] = STATUS["failed"]
    status[n_valid < min_evals] = STATUS["too_few_eigenvalues"]
    fitted = status <= STATUS["small_sample"]
    nan = torch.tensor(math.nan, dtype=x.dtype)
    alpha, xmin, ks = (torch.where(fitted, t, nan) for t in (alpha, xmin, ks))
    n_tail = torch.where(fitted, n_tail, torch.zeros_like(n_tail))
    sigma = (alpha - 1) / n_tail.clamp_min(1).to(x.dtype).sqrt()
    lo = hi = torch.full_like(alpha, math.nan)
    if bootstrap and bool(fitted.any()):
        lo, hi = _bootstrap(x, n_valid, small, fitted, min_tail_small, bootstrap, ci, seed)
    fit = PowerLawFit(alpha, sigma, xmin, ks, n_tail, n_valid, status, lo, hi)
    return fit.view(()) if one else fit


def _prepare(evals: Tensor, thresh: float) -> Tensor:
    """Eigenvalues as float64, ascending, with ignored entries as NaN at the front. Shapes: ``[B, M]``."""
    x = evals.detach().to(torch.float64)
    x = torch.where(x > thresh, x, torch.tensor(-math.inf, dtype=x.dtype))  # NaN compares False: dropped too
    x = torch.sort(x, dim=1).values
    return torch.where(torch.isinf(x), torch.tensor(math.nan, dtype=x.dtype), x)


def _fit_sorted(x: Tensor, n_valid: Tensor, small: Tensor, min_tail_small: int, precise: bool = True
                ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The KS-optimal fit of every row of ``x`` (ascending; ignored entries NaN at the front).

    Shapes:
        x: ``[B, M]``; n_valid, small: ``[B]``. Returns alpha, xmin, ks ``[B]`` float64 (alpha NaN
        when no candidate is valid) and n_tail ``[B]`` int64.
    """
    b, m = x.shape
    logx = torch.log(x)
    valid = ~torch.isnan(logx)
    logx0 = torch.where(valid, logx, torch.zeros_like(logx))
    suffix = torch.flip(torch.cumsum(torch.flip(logx0, [1]), 1), [1])  # sum_{j >= i} log x_j
    n_i = torch.arange(m, 0, -1, dtype=x.dtype)  # tail sizes M - i
    s = suffix - n_i * logx0  # sum_{j >= i} log(x_j / x_i)
    min_tail = torch.where(small, min_tail_small, 2).unsqueeze(1)
    effective_min = torch.minimum(min_tail, n_valid.unsqueeze(1).clamp_min(2))
    numer = torch.where(small.unsqueeze(1), n_i - 1, n_i)
    with torch.no_grad():
        alpha_i = 1 + numer / s
    cand = valid & (n_i >= effective_min) & (s > 1e-12) & torch.isfinite(alpha_i) & (alpha_i > 1)
    ks = torch.full((b, m), math.inf, dtype=x.dtype)
    j = torch.arange(m)
    dt = torch.float64 if precise else torch.float32
    one_minus_emp = 1 - (j.unsqueeze(0) - j.unsqueeze(1)).to(dt) / n_i.to(dt).unsqueeze(1)  # [i, j]: 1 - F_emp
    one_minus_emp = torch.where(j.unsqueeze(0) >= j.unsqueeze(1), one_minus_emp, torch.ones((), dtype=dt))
    # ignored entries at -inf: their log ratio to any candidate clamps to 0 below (they are never in a tail)
    lx = torch.where(valid, logx, torch.tensor(-math.inf, dtype=x.dtype)).to(dt)
    expo = (1 - alpha_i).nan_to_num(0.0, 0.0, 0.0).to(dt)
    # D_i in blocks of [rows, candidates, M] that stay cache-sized; in place: |exp((1 - a_i) log(x_j / x_i))
    # - (1 - F_emp)| = |F_fit - F_emp| over the tail j >= i (j < i: log ratio clamped to 0 and 1 - F_emp
    # set to 1, so those entries are 0)
    rows = max(1, _BLOCK // (m * m))
    cols = m if rows > 1 else max(1, _BLOCK // m)
    for r0 in range(0, b, rows):
        r = slice(r0, min(b, r0 + rows))
        for c0 in range(0, m, cols):
            c = slice(c0, min(m, c0 + cols))
            d = lx[r].unsqueeze(1) - lx[r, c].unsqueeze(2)  # [R, C, M]
            d.clamp_min_(0).mul_(expo[r, c].unsqueeze(2)).exp_().sub_(one_minus_emp[c]).abs_()
            ks[r, c] = d.amax(2).to(x.dtype)
    ks = torch.where(cand, ks, torch.tensor(math.inf, dtype=x.dtype))
    best = ks.argmin(1)
    rowi = torch.arange(b)
    ok = torch.isfinite(ks[rowi, best])
    nan = torch.tensor(math.nan, dtype=x.dtype)
    alpha = torch.where(ok, alpha_i[rowi, best], nan)
    xmin = torch.where(ok, x[rowi, best], nan)
    n_tail = torch.where(ok, (m - best), torch.zeros_like(best))
    return alpha, xmin, torch.where(ok, ks[rowi, best], nan), n_tail


def _bootstrap(x: Tensor, n_valid: Tensor, small: Tensor, fitted: Tensor, min_tail_small: int, reps: int, ci: float,
               seed: int) -> tuple[Tensor, Tensor]:  # fmt: skip
    """Percentile interval of alpha over ``reps`` resamples (with replacement) of each spectrum.

    Shapes:
        x: ``[B, M]`` (ascending, NaN-padded at the front); n_valid, small, fitted: ``[B]``.
        Returns lo, hi ``[B]`` (NaN where not fitted).
    """
    b, m = x.shape
    rows = torch.nonzero(fitted).squeeze(1)
    gen = torch.Generator().manual_seed(int(seed))
    nv = n_valid[rows]
    u = torch.rand((len(rows), reps, m), generator=gen, dtype=torch.float64)
    # row k draws from its valid entries x[m - nv_k :]; positions past its count are padding (NaN)
    idx = (m - nv).view(-1, 1, 1) + (u * nv.view(-1, 1, 1)).long().clamp_max(m - 1)
    pad = torch.arange(m).view(1, 1, m) < (m - nv).view(-1, 1, 1)
    sample = torch.gather(x[rows].unsqueeze(1).expand(-1, reps, -1), 2, idx.clamp(0, m - 1))
    sample = torch.where(pad, torch.tensor(math.nan, dtype=x.dtype), sample)
    sample = _prepare(torch.nan_to_num(sample, nan=-1.0).reshape(-1, m), 0.0)
    rep_alpha, _, _, _ = _fit_sorted(sample, nv.repeat_interleave(reps), small[rows].repeat_interleave(reps),
                                     min_tail_small, precise=False)  # fmt: skip
    rep_alpha = rep_alpha.view(len(rows), reps)
    q = torch.tensor([(1 - ci) / 2, (1 + ci) / 2], dtype=x.dtype)
    bounds = torch.nanquantile(rep_alpha, q, dim=1)  # [2, R]
    lo = torch.full((b,), math.nan, dtype=x.dtype)
    hi = lo.clone()
    lo[rows], hi[rows] = bounds[0], bounds[1]
    return lo, hi


def describe(fit: PowerLawFit) -> list[dict[str, Any]]:
    """One dict per spectrum (alpha, interval, xmin, ks, n_tail, n_evals, status name) for printing."""
    out = []
    for k in range(fit.alpha.numel()):
        out.append({f.name: (fit.status_names()[k] if f.name == "status" else getattr(fit, f.name).reshape(-1)[k].item())
                    for f in fields(fit)})  # fmt: skip
    return out
