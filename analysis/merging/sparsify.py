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

import struct
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor

from zoo.errors import ConfigError

__all__ = [
    "Consensus",
    "Cut",
    "RadixSelect",
    "Selection",
    "SelectionBuilder",
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
    """The ``k`` largest (or, ``lower``, smallest) entries of a flat score vector, applicable chunk by chunk.

    Entries above ``thr`` (``lower``: below) are in; of the ``ties`` entries equal to ``thr``,
    ``quota`` are in: the first ones by position (``first=True``) or the last ones.
    """

    thr: float
    quota: int
    ties: int
    first: bool = True
    everything: bool = False
    nothing: bool = False
    lower: bool = False

    def mask(self, scores: Tensor, ties_before: int = 0) -> tuple[Tensor, int]:
        """Membership of a chunk whose preceding chunks held ``ties_before`` tied entries."""
        if self.everything:
            return torch.ones_like(scores, dtype=torch.bool), ties_before
        if self.nothing:
            return torch.zeros_like(scores, dtype=torch.bool), ties_before
        if self.quota == self.ties:  # every tie is in (the usual case: one entry at the threshold)
            return (scores <= self.thr if self.lower else scores >= self.thr), ties_before
        if self.quota == 0:
            return (scores < self.thr if self.lower else scores > self.thr), ties_before
        m = scores < self.thr if self.lower else scores > self.thr
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

    ``keep``: the kept set is ``keep`` minus ``drop_small`` and ``drop_large`` (``None``: no
    constraint). Built by :func:`selection` (or :class:`SelectionBuilder`, from chunks) from the
    whole tensor's magnitudes; applied chunk by chunk in order.
    """

    keep: Cut | None = None
    drop_small: Cut | None = None
    drop_large: Cut | None = None
    _seen: list[int] = field(default_factory=lambda: [0, 0, 0])

    def mask(self, a: Tensor) -> Tensor:
        m: Tensor | None = None
        for j, (cut, keep) in enumerate(((self.keep, True), (self.drop_small, False), (self.drop_large, False))):
            if cut is None:
                continue
            cm, self._seen[j] = cut.mask(a, self._seen[j])
            if not keep:
                cm = cm.logical_not_()
            m = cm if m is None else m.logical_and_(cm)
        return m if m is not None else torch.ones_like(a, dtype=torch.bool)


# ------------------------------------------------------------------------ streamed radix select
_HI_BINS = 1 << 15  # magnitudes are >= 0: the sign bit is 0, so (bits >> 16) < 2**15
_LO_BINS = 1 << 16


class RadixSelect:
    """Exact order statistics of non-negative float32 values seen in chunks, in O(chunk) memory.

    For ``x >= 0`` the int32 bit pattern of a float32 is monotone in ``x``, so the ``r``-th largest
    value is found digit by digit: pass 1 histograms the top 16 bits of every entry
    (``torch.bincount``), which names the bin holding rank ``r``; pass 2 histograms the low 16 bits
    of the entries in that bin, which gives the exact value, how many entries are above it and how
    many equal it. The caller feeds every chunk to :meth:`add` once per pass and calls
    :meth:`next_pass` between passes while :attr:`passes_left` is true.
    """

    def __init__(self, n: int, ranks: Sequence[int]) -> None:
        self.n = n
        self.ranks = sorted({r for r in ranks if 1 <= r <= n})  # ranks from the top, 1 = the largest
        self.stage = 1 if self.ranks else 3
        self.hi = torch.zeros(_HI_BINS, dtype=torch.int64)
        self._bin: dict[int, tuple[int, int]] = {}  # rank -> (high bits, entries in higher bins)
        self._lo: dict[int, Tensor] = {}  # high bits -> histogram of the low bits
        self._stat: dict[int, tuple[float, int, int]] = {}  # rank -> (value, entries above, entries equal)

    @property
    def passes_left(self) -> bool:
        return self.stage < 3

    def add(self, a: Tensor) -> None:
        """Feed the next chunk (float32, ``>= 0``) of the current pass."""
        bits = a.reshape(-1).view(torch.int32)
        if self.stage == 1:
            self.hi += torch.bincount(bits >> 16, minlength=_HI_BINS)
        elif self.stage == 2:
            top = bits >> 16
            for hb, hist in self._lo.items():
                inside = bits[top == hb]
                if inside.numel():
                    hist += torch.bincount(inside.bitwise_and_(0xFFFF), minlength=_LO_BINS)

    def next_pass(self) -> None:
        if self.stage == 1:
            if int(self.hi.sum()) != self.n:
                raise ValueError(f"radix select saw {int(self.hi.sum())} entries, expected {self.n}")
            from_top = self.hi.flip(0).cumsum(0)
            for r in self.ranks:
                j = int(torch.searchsorted(from_top, r))
                hb = _HI_BINS - 1 - j
                self._bin[r] = (hb, int(from_top[j]) - int(self.hi[hb]))
                self._lo.setdefault(hb, torch.zeros(_LO_BINS, dtype=torch.int64))
        elif self.stage == 2:
            for r in self.ranks:
                hb, above = self._bin[r]
                hist = self._lo[hb]
                from_top = hist.flip(0).cumsum(0)
                j = int(torch.searchsorted(from_top, r - above))
                lb = _LO_BINS - 1 - j
                ties = int(hist[lb])
                value = struct.unpack("<f", struct.pack("<i", (hb << 16) | lb))[0]
                self._stat[r] = (value, above + int(from_top[j]) - ties, ties)
            self._lo.clear()
        self.stage += 1

    def stat(self, r: int) -> tuple[float, int, int]:
        """The ``r``-th largest value, how many entries are larger, how many equal it."""
        return self._stat[r]

    def largest(self, k: int, *, first: bool = True) -> Cut:
        """The :class:`Cut` of the ``k`` largest entries (as :func:`top_cut`)."""
        if k >= self.n:
            return Cut(0.0, 0, 0, first, everything=True)
        if k <= 0:
            return Cut(0.0, 0, 0, first, nothing=True)
        value, greater, ties = self._stat[k]
        return Cut(value, k - greater, ties, first)

    def smallest(self, k: int, *, first: bool = True) -> Cut:
        """The :class:`Cut` of the ``k`` smallest entries (a ``lower`` cut)."""
        if k >= self.n:
            return Cut(0.0, 0, 0, first, everything=True, lower=True)
        if k <= 0:
            return Cut(0.0, 0, 0, first, nothing=True, lower=True)
        value, greater, ties = self._stat[self.n - k + 1]
        return Cut(value, k - (self.n - greater - ties), ties, first, lower=True)


def _selection_counts(method: Sparsification, density: float, gamma: float, n: int) -> tuple[int, int, int]:
    """(keep the k largest, drop the k smallest, drop the k largest) of a magnitude sparsification."""
    if method == "magnitude":
        return keep_count(density, n), 0, 0
    keep = int(density * n)
    bottom = max(0, n - keep - int(gamma * n))
    return 0, bottom, n - bottom - keep


class SelectionBuilder:
    """Build the :class:`Selection` of one task vector from its magnitudes fed chunk by chunk.

    ``while b.passes_left: (feed every chunk's |delta| to b.add); b.next_pass()`` then
    :meth:`selection`. Memory: two histograms (a few hundred KB), whatever the tensor size.
    """

    def __init__(self, method: Sparsification | None, density: float, gamma: float, n: int) -> None:
        self.method, self.n = method, n
        self.trivial = method is None or method == "random" or density >= 1
        if not self.trivial and method not in ("magnitude", "magnitude_outliers"):
            raise ConfigError(f"unknown sparsification {method!r}; valid: magnitude, random, magnitude_outliers")
        self.counts = (0, 0, 0) if self.trivial else _selection_counts(method, density, gamma, n)  # type: ignore[arg-type]
        keep, bottom, top = self.counts
        ranks = [r for r, k in ((keep, keep), (n - bottom + 1, bottom), (top, top)) if 0 < k < n]
        self.radix = RadixSelect(n, ranks)

    @property
    def passes_left(self) -> bool:
        return self.radix.passes_left

    def add(self, a: Tensor) -> None:
        self.radix.add(a)

    def next_pass(self) -> None:
        self.radix.next_pass()

    def selection(self) -> Selection | None:
        if self.trivial:
            return None
        keep, bottom, top = self.counts
        if self.method == "magnitude":
            return Selection(keep=self.radix.largest(keep))
        return Selection(drop_small=self.radix.smallest(bottom, first=True), drop_large=self.radix.largest(top, first=False))


def selection(a: Tensor, method: Sparsification | None, density: float, gamma: float = 0.01) -> Selection | None:
    """The :class:`Selection` of a magnitude sparsification of a task vector with magnitudes ``a``.

    float32 magnitudes go through the streamed radix select (in slices, so the same code and the
    same cuts as a chunked merge); other dtypes through :func:`top_cut`.
    """
    n = a.numel()
    if method is None or method == "random" or density >= 1:
        return None
    if a.dtype == torch.float32:
        b = SelectionBuilder(method, density, gamma, n)
        flat = a.reshape(-1)
        while b.passes_left:
            for i in range(0, n, _SCAN):
                b.add(flat[i : i + _SCAN])
            b.next_pass()
        return b.selection()
    keep, bottom, top = _selection_counts(method, density, gamma, n) if method in ("magnitude", "magnitude_outliers") else (0, 0, 0)
    if method == "magnitude":
        return Selection(keep=top_cut(a, keep))
    if method == "magnitude_outliers":
        small = top_cut(-a, bottom, first=True)
        small = Cut(-small.thr, small.quota, small.ties, small.first, small.everything, small.nothing, lower=True)
        return Selection(drop_small=small, drop_large=top_cut(a, top, first=False))
    raise ConfigError(f"unknown sparsification {method!r}; valid: magnitude, random, magnitude_outliers")


def _norm(t: Tensor, norm: RescaleNorm) -> Tensor:
    if norm == "l1":
        return t.abs().sum()
    if norm == "l2":
        return t.norm()
    raise ConfigError(f"rescale_norm must be 'density', 'l1' or 'l2', got {norm!r}")


def _keep(delta: Tensor, mask: Tensor, density: float, norm: RescaleNorm | None, inplace: bool) -> Tensor:
    """``delta`` times the keep ``mask``, rescaled (``density``: by 1/density; ``l1``/``l2``: to the
    norm ``delta`` had); ``inplace`` overwrites ``delta``."""
    before = _norm(delta, norm) if norm is not None and norm != "density" else None
    kept = delta.mul_(mask) if inplace else delta * mask
    if norm is None:
        return kept
    if norm == "density":
        if density <= 0:
            return kept
        return kept.div_(density) if inplace else kept / density
    after = _norm(kept, norm)
    assert before is not None
    if before < 1e-7 or after < 1e-7:
        return kept
    return kept.mul_(before / after) if inplace else kept * (before / after)


def magnitude(delta: Tensor, density: float, rescale: RescaleNorm | None = None, sel: Selection | None = None,
              inplace: bool = False) -> Tensor:  # fmt: skip
    """Keep the ``density`` fraction of entries largest in magnitude (TIES "trim"); zero the rest.

    ``inplace``: overwrite ``delta`` (the merge's own scratch) instead of allocating the result.
    """
    if density >= 1:
        return delta
    a = delta.abs()
    sel = sel or selection(a, "magnitude", density)
    if sel is None:
        return delta
    return _keep(delta, sel.mask(a), density, rescale, inplace)


def magnitude_outliers(delta: Tensor, density: float, gamma: float = 0.01, rescale: RescaleNorm | None = None,
                       sel: Selection | None = None, inplace: bool = False) -> Tensor:  # fmt: skip
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
    if sel is None:
        return delta
    return _keep(delta, sel.mask(a), density, rescale, inplace)


#: DARE draws its random numbers in blocks of this many entries, each from its own seed, so a
#: tensor merged whole or in chunks (multiples of the block) gets the same drops.
RANDOM_BLOCK = 1 << 20

_scratch = threading.local()


def _uniform(n: int, generator: torch.Generator) -> Tensor:
    """``torch.rand(n, generator=generator)`` into a per-thread reused buffer (valid until the next call)."""
    buf = getattr(_scratch, "uniform", None)
    if buf is None or buf.numel() < n:
        buf = _scratch.uniform = torch.empty(max(n, RANDOM_BLOCK))
    return torch.rand(n, generator=generator, out=buf[:n])


def random_keep(n: int, density: float, seed: int, offset: int = 0) -> Tensor:
    """Bernoulli(density) keep-mask of entries ``offset .. offset + n`` of a tensor, seeded per block."""
    out = torch.empty(n, dtype=torch.bool)
    pos = 0
    while pos < n:
        flat = offset + pos
        block, within = divmod(flat, RANDOM_BLOCK)
        take = min(n - pos, RANDOM_BLOCK - within)
        g = torch.Generator().manual_seed((seed * 1_000_003 + block) % (2**63 - 1))
        r = _uniform(within + take, g)[within:]
        torch.lt(r, density, out=out[pos : pos + take])
        pos += take
    return out


def random_drop(delta: Tensor, density: float, seed: int = 0, rescale: RescaleNorm | None = "density", offset: int = 0,
                inplace: bool = False) -> Tensor:  # fmt: skip
    """DARE: drop each entry with probability ``1 - density`` (seeded), rescale the rest (default 1/density)."""
    if density >= 1:
        return delta
    if density <= 0:
        return delta.zero_() if inplace else torch.zeros_like(delta)
    keep = random_keep(delta.numel(), density, seed, offset).reshape(delta.shape)
    return _keep(delta, keep, density, rescale, inplace)


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
    inplace: bool = False,
) -> Tensor:
    """Dispatch to one sparsification (``None``: the delta unchanged).

    ``seed``/``offset``: DARE's per-tensor seed and the chunk's position in the flat tensor;
    ``sel``: a precomputed magnitude :class:`Selection` (for chunked merges); ``inplace``:
    overwrite ``delta`` with the result (which is then ``delta`` itself).
    """
    if not 0 <= density <= 1:
        raise ConfigError(f"density must be in [0, 1], got {density}")
    if method is None:
        return delta
    if method == "magnitude":
        return magnitude(delta, density, rescale, sel, inplace)
    if method == "random":
        return random_drop(delta, density, seed, rescale, offset, inplace)
    if method == "magnitude_outliers":
        if not 0 <= gamma <= 1:
            raise ConfigError(f"gamma must be in [0, 1], got {gamma}")
        return magnitude_outliers(delta, density, gamma, rescale, sel, inplace)
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
