"""Shared maths of the task-arithmetic family: sparsification of a delta and sign consensus.

TIES, DARE and Model Breadcrumbs are one generalised task-arithmetic merge (as in mergekit)::

    delta_i   = sparsify(model_i - base, density_i)        # magnitude | random | outliers | none
    delta_i  *= weight_i
    mask_i    = sign(delta_i) == elected sign               # consensus "sum" | "count" | none
    merged    = base + lambda * sum_i(mask_i * delta_i) / (sum_i(mask_i * weight_i) if normalize else 1)

Every function here takes and returns float tensors of one parameter and knows nothing of models.
Rank selections are exact (``k`` elements, ties broken by position) and use ``kthvalue`` (linear
time) instead of a full sort.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor

from zoo.errors import ConfigError

__all__ = [
    "Consensus",
    "Cut",
    "Selection",
    "random_keep",
    "selection",
    "top_cut",
    "RescaleNorm",
    "Sparsification",
    "consensus_mask",
    "keep_count",
    "magnitude",
    "magnitude_outliers",
    "random_drop",
    "sparsify",
    "top_k_mask",
]

Sparsification = Literal["magnitude", "random", "magnitude_outliers"]
Consensus = Literal["sum", "count"]
RescaleNorm = Literal["density", "l1", "l2"]


def keep_count(density: float, n: int) -> int:
    """How many of ``n`` entries a density keeps (mergekit's rule: ``int(density * n)``, at least 1)."""
    if density >= 1:
        return n
    if density <= 0 or n == 0:
        return 0
    return max(1, int(density * n))


@dataclass
class Cut:
    """The ``k`` largest entries of a flat score vector, applicable chunk by chunk.

    Entries above ``thr`` are in; of the ``ties`` entries equal to ``thr``, ``quota`` are in: the
    first ones by position (``first=True``) or the last ones.
    """

    thr: float
    quota: int
    ties: int
    first: bool = True
    everything: bool = False
    nothing: bool = False

    def mask(self, scores: Tensor, ties_before: int = 0) -> tuple[Tensor, int]:
        """Membership of a chunk whose preceding chunks held ``ties_before`` tied entries."""
        if self.everything:
            return torch.ones_like(scores, dtype=torch.bool), ties_before
        if self.nothing:
            return torch.zeros_like(scores, dtype=torch.bool), ties_before
        if self.quota == self.ties:  # every tie is in (the usual case: one entry at the threshold)
            return scores >= self.thr, ties_before
        if self.quota == 0:
            return scores > self.thr, ties_before
        m = scores > self.thr
        tied = scores == self.thr
        n_tied = int(torch.count_nonzero(tied))
        if n_tied:
            idx = tied.reshape(-1).nonzero().squeeze(1)  # this chunk's ties hold ranks ties_before+1 .. +n_tied
            if self.first:
                idx = idx[: max(0, self.quota - ties_before)]
            else:
                idx = idx[max(0, self.ties - self.quota - ties_before) :]
            m.reshape(-1)[idx] = True
        return m, ties_before + n_tied


_SCAN = 1 << 20  # entries per slice when scanning a large score vector


def top_cut(scores: Tensor, k: int, *, first: bool = True) -> Cut:
    """The :class:`Cut` of the ``k`` largest ``scores`` (exact: ties broken by position).

    The threshold is found in linear time: a sample brackets the k-th largest value, then only the
    entries inside the bracket are ranked (``kthvalue``); a full ``kthvalue`` is the fallback.
    """
    flat = scores.reshape(-1)
    n = flat.numel()
    if k >= n:
        return Cut(0.0, 0, 0, first, everything=True)
    if k <= 0:
        return Cut(0.0, 0, 0, first, nothing=True)
    thr = None
    if n > 1_000_000:
        g = torch.Generator().manual_seed(n)
        sample = flat[torch.randint(0, n, (65_536,), generator=g)]
        q = 1 - k / n
        m = sample.numel()
        srt = sample.float().kthvalue(max(1, int(max(0.0, q - 0.01) * m))).values, sample.float().kthvalue(
            max(1, min(m, int(min(1.0, q + 0.01) * m) + 1))).values  # fmt: skip
        lo, hi = float(srt[0]), float(srt[1])
        above, parts = 0, []
        for i in range(0, n, _SCAN):  # in slices: no full-size boolean temporaries
            part = flat[i : i + _SCAN]
            above += int(torch.count_nonzero(part > hi))
            parts.append(part[(part >= lo) & (part <= hi)])
        band = torch.cat(parts)
        del parts
        need = k - above  # rank (from the top) of the threshold inside the band
        if 0 < need <= band.numel():
            thr = band.kthvalue(band.numel() - need + 1).values
    if thr is None:
        thr = flat.kthvalue(n - k + 1).values
    greater = ties = 0
    for i in range(0, n, _SCAN):
        part = flat[i : i + _SCAN]
        greater += int(torch.count_nonzero(part > thr))
        ties += int(torch.count_nonzero(part == thr))
    return Cut(float(thr), k - greater, ties, first)


def top_k_mask(scores: Tensor, k: int, *, ties: Literal["first", "last"] = "first") -> Tensor:
    """Boolean mask of the ``k`` largest entries of ``scores`` (exactly ``k``; ties by position).

    Shapes:
        scores: any; output: same shape, ``torch.bool``.
    """
    return top_cut(scores, k, first=ties == "first").mask(scores)[0]


@dataclass
class Selection:
    """Which entries of one task vector a magnitude sparsification keeps, streamable by chunks.

    ``keep``: the kept set is ``keep`` minus ``drop`` (``None``: no constraint). Built by
    :func:`selection` from the whole tensor's magnitudes; applied chunk by chunk in order.
    """

    keep: Cut | None = None
    drop_small: Cut | None = None
    drop_large: Cut | None = None
    _seen: list[int] = field(default_factory=lambda: [0, 0, 0])

    def mask(self, a: Tensor) -> Tensor:
        m = torch.ones_like(a, dtype=torch.bool)
        for j, (cut, sign, keep) in enumerate(((self.keep, 1, True), (self.drop_small, -1, False), (self.drop_large, 1, False))):
            if cut is None:
                continue
            cm, self._seen[j] = cut.mask(a if sign > 0 else -a, self._seen[j])
            m &= cm if keep else ~cm
        return m


def selection(a: Tensor, method: Sparsification | None, density: float, gamma: float = 0.01) -> Selection | None:
    """The :class:`Selection` of a magnitude sparsification of a task vector with magnitudes ``a``."""
    n = a.numel()
    if method is None or method == "random" or density >= 1:
        return None
    if method == "magnitude":
        return Selection(keep=top_cut(a, keep_count(density, n)))
    if method == "magnitude_outliers":
        keep = int(density * n)
        bottom = max(0, n - keep - int(gamma * n))
        top = n - bottom - keep
        return Selection(drop_small=top_cut(-a, bottom, first=True), drop_large=top_cut(a, top, first=False))
    raise ConfigError(f"unknown sparsification {method!r}; valid: magnitude, random, magnitude_outliers")


def _rescale(delta: Tensor, kept: Tensor, density: float, norm: RescaleNorm | None) -> Tensor:
    if norm is None:
        return kept
    if norm == "density":
        return kept / density if density > 0 else kept
    if norm == "l1":
        before, after = delta.abs().sum(), kept.abs().sum()
    elif norm == "l2":
        before, after = delta.norm(), kept.norm()
    else:
        raise ConfigError(f"rescale_norm must be 'density', 'l1' or 'l2', got {norm!r}")
    if before < 1e-7 or after < 1e-7:
        return kept
    return kept * (before / after)


def magnitude(delta: Tensor, density: float, rescale: RescaleNorm | None = None, sel: Selection | None = None) -> Tensor:
    """Keep the ``density`` fraction of entries largest in magnitude (TIES "trim"); zero the rest."""
    if density >= 1:
        return delta
    a = delta.abs()
    sel = sel or selection(a, "magnitude", density)
    kept = delta * sel.mask(a) if sel is not None else delta
    return _rescale(delta, kept, density, rescale)


def magnitude_outliers(delta: Tensor, density: float, gamma: float = 0.01, rescale: RescaleNorm | None = None,
                       sel: Selection | None = None) -> Tensor:  # fmt: skip
    """Model Breadcrumbs: drop the ``gamma`` fraction largest in magnitude (outliers) and the smallest,
    keeping a ``density`` fraction in between.

    With ``n`` entries: ``keep = int(density n)``, ``top = int(gamma n)``, ``bottom = max(0, n - keep - top)``
    (the top cut shrinks when density + gamma > 1), the ``keep`` entries ranked just above the
    bottom cut survive (mergekit's convention).
    """
    if density >= 1:
        return delta
    a = delta.abs()
    sel = sel or selection(a, "magnitude_outliers", density, gamma)
    kept = delta * sel.mask(a) if sel is not None else delta
    return _rescale(delta, kept, density, rescale)


#: DARE draws its random numbers in blocks of this many entries, each from its own seed, so a
#: tensor merged whole or in chunks (multiples of the block) gets the same drops.
RANDOM_BLOCK = 1 << 20


def random_keep(n: int, density: float, seed: int, offset: int = 0) -> Tensor:
    """Bernoulli(density) keep-mask of entries ``offset .. offset + n`` of a tensor, seeded per block."""
    out = torch.empty(n, dtype=torch.bool)
    pos = 0
    while pos < n:
        flat = offset + pos
        block, within = divmod(flat, RANDOM_BLOCK)
        take = min(n - pos, RANDOM_BLOCK - within)
        g = torch.Generator().manual_seed((seed * 1_000_003 + block) % (2**63 - 1))
        r = torch.rand(within + take, generator=g)[within:]
        out[pos : pos + take] = r < density
        pos += take
    return out


def random_drop(delta: Tensor, density: float, seed: int = 0, rescale: RescaleNorm | None = "density", offset: int = 0) -> Tensor:
    """DARE: drop each entry with probability ``1 - density`` (seeded), rescale the rest (default 1/density)."""
    if density >= 1:
        return delta
    if density <= 0:
        return torch.zeros_like(delta)
    keep = random_keep(delta.numel(), density, seed, offset).reshape(delta.shape)
    kept = delta * keep
    return _rescale(delta, kept, density, rescale)


def sparsify(
    delta: Tensor,
    method: Sparsification | None,
    density: float,
    *,
    gamma: float = 0.01,
    rescale: RescaleNorm | None = None,
    seed: int = 0,
    offset: int = 0,
    sel: Selection | None = None,
) -> Tensor:
    """Dispatch to one sparsification (``None``: the delta unchanged).

    ``seed``/``offset``: DARE's per-tensor seed and the chunk's position in the flat tensor;
    ``sel``: a precomputed magnitude :class:`Selection` (for chunked merges).
    """
    if not 0 <= density <= 1:
        raise ConfigError(f"density must be in [0, 1], got {density}")
    if method is None:
        return delta
    if method == "magnitude":
        return magnitude(delta, density, rescale, sel)
    if method == "random":
        return random_drop(delta, density, seed, rescale, offset)
    if method == "magnitude_outliers":
        if not 0 <= gamma <= 1:
            raise ConfigError(f"gamma must be in [0, 1], got {gamma}")
        return magnitude_outliers(delta, density, gamma, rescale, sel)
    raise ConfigError(f"unknown sparsification {method!r}; valid: magnitude, random, magnitude_outliers")


def consensus_mask(deltas: Tensor, method: Consensus = "sum") -> Tensor:
    """TIES sign election: which entries of each (weighted) delta agree with the elected sign.

    ``"sum"`` elects the sign of the summed deltas (the paper's "total magnitude" rule), ``"count"``
    the sign held by more models. A zero sum elects ``+``; zero entries never agree.

    Shapes:
        deltas: ``[k, ...]``; output: ``[k, ...]`` bool.
    """
    sign = deltas.sign()
    if method == "sum":
        elected = torch.where(deltas.sum(0) >= 0, 1.0, -1.0).to(deltas.dtype)
    elif method == "count":
        elected = torch.where(sign.sum(0) >= 0, 1.0, -1.0).to(deltas.dtype)
    else:
        raise ConfigError(f"consensus must be 'sum' or 'count', got {method!r}")
    return sign == elected
