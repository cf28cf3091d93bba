"""The built-in merge methods. Each is one function over the tensors of one parameter name.

Conventions (see :mod:`analysis.merging.registry`): ``tensors`` are the models' tensors, ``base``
the base model's (or ``None``); keyword-only arguments are the typed configuration; names in
``per_model`` take one value per model. Arithmetic runs in float32 (float64 when the inputs are
float64); the registry casts the result back to the inputs' dtype.

Defaults follow the papers and mergekit (the de facto reference implementation):

==================  ===========================================================================
linear              sum_i w_i x_i / sum_i w_i (``normalize``, default on); w_i = 1: uniform soup
metric_weighted     linear with w = softmax(-loss / temperature) (default) or 1 / loss
slerp               spherical interpolation base -> model at ``t``, lerp when |cos| > 0.9995
task_arithmetic     base + lambda * sum_i w_i (x_i - base)
ties                trim to top-``density`` magnitude, elect sign by summed mass, disjoint mean
dare_linear         drop with prob 1 - density, rescale 1/density, then task arithmetic
dare_ties           DARE drop + TIES sign election (no normalisation by default, as mergekit)
breadcrumbs         drop the top ``gamma`` and the bottom entries (keep ``density``), then sum
breadcrumbs_ties    breadcrumbs + TIES sign election
model_stock         base + t (mean_i x_i - base), t = k cos / (1 + (k - 1) cos)
opcm                sequential orthogonal-projection merging with adaptive norm scaling
==================  ===========================================================================
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from analysis.merging.registry import (
    Chunking,
    Fraction,
    MergeMethod,
    NonNegative,
    ParamSpec,
    PerModel,
    Positive,
    TensorContext,
    Unit,
    merge_method,
    register,
    split_range,
)
from analysis.merging.sparsify import (
    RANDOM_BLOCK,
    Consensus,
    RescaleNorm,
    Sparsification,
    consensus_mask,
    sparsify,
)
from zoo.errors import ConfigError


def _work_dtype(*ts: Tensor | None) -> torch.dtype:
    return torch.float64 if any(t is not None and t.dtype == torch.float64 for t in ts) else torch.float32


def _check_count(method: str, values: list[float], tensors: list[Tensor], what: str) -> None:
    if len(values) != len(tensors):
        raise ConfigError(f"{method}: {len(values)} {what} value(s) for {len(tensors)} models")


def _need_base(method: str, base: Tensor | None) -> Tensor:
    if base is None:
        raise ConfigError(f"{method} needs a base model (the common ancestor the models were fine-tuned from)")
    return base


# ---------------------------------------------------------------------------------------- averages
def weighted_average(tensors: list[Tensor], weights: list[float], normalize: bool = True) -> Tensor:
    """sum_i w_i x_i (/ sum_i w_i). The shared core of linear soups and metric weighting."""
    dt = _work_dtype(*tensors)
    out = torch.zeros(tensors[0].shape, dtype=dt)
    for t, w in zip(tensors, weights, strict=True):
        out.add_(t.to(dt), alpha=float(w))
    if normalize:
        total = math.fsum(weights)
        if abs(total) < 1e-12:
            raise ConfigError("the merge weights sum to zero; change them or set normalize: false")
        out.div_(total)
    return out


@merge_method("linear", base="ignored", chunking="elementwise", reference="https://arxiv.org/abs/2203.05482")
def linear(tensors: list[Tensor], base: Tensor | None, *, weight: PerModel[float] = 1.0, normalize: bool = True) -> Tensor:
    """Weighted average of the models (a model soup); equal weights give the uniform soup.

    ``normalize`` divides by the sum of the weights (mergekit's default); off, the weights are used
    as given (e.g. for extrapolation). The base model, if any, is not used.
    """
    _check_count("linear", weight, tensors, "weight")
    return weighted_average(tensors, weight, normalize)


def metric_weights(loss: list[float], scheme: str = "softmax", temperature: float = 1.0) -> list[float]:
    """Normalised averaging weights from each model's loss (lower loss, larger weight).

    ``softmax``: w_i = exp(-loss_i / T) / sum_j exp(-loss_j / T); ``inverse``: w_i = (1/loss_i) / sum_j 1/loss_j.
    """
    if any(not math.isfinite(x) for x in loss):
        raise ConfigError(f"metric_weighted: every loss must be finite, got {loss}")
    if scheme == "softmax":
        if temperature <= 0:
            raise ConfigError(f"metric_weighted: temperature must be > 0, got {temperature}")
        lo = min(loss)
        e = [math.exp(-(x - lo) / temperature) for x in loss]
        s = math.fsum(e)
        return [x / s for x in e]
    if scheme == "inverse":
        if any(x <= 0 for x in loss):
            raise ConfigError(f"metric_weighted: scheme 'inverse' needs positive losses, got {loss}")
        inv = [1.0 / x for x in loss]
        s = math.fsum(inv)
        return [x / s for x in inv]
    raise ConfigError(f"metric_weighted: scheme must be 'softmax' or 'inverse', got {scheme!r}")


@merge_method("metric_weighted", base="ignored", chunking="elementwise", from_metrics={"loss": "loss"})
def metric_weighted(
    tensors: list[Tensor],
    base: Tensor | None,
    *,
    loss: PerModel[float],
    scheme: Literal["softmax", "inverse"] = "softmax",
    temperature: Positive = 1.0,
) -> Tensor:
    """Average weighted by each model's stored loss: softmax(-loss / temperature) or 1 / loss.

    When merging zoo models, ``loss`` is read from each model's stored ``loss`` metric (the val split,
    else test, else train: ``from_metrics``); it can also be given per model.
    """
    _check_count("metric_weighted", loss, tensors, "loss")
    return weighted_average(tensors, metric_weights(loss, scheme, temperature), normalize=True)


# ---------------------------------------------------------------------------------------- SLERP
#: SLERP accumulates its dot product and norms over blocks of this many entries (the engine's chunk)
SLERP_BLOCK = RANDOM_BLOCK


@dataclass
class SlerpStats:
    """Dot product and squared norms of two flat tensors, accumulated in float64 block by block.

    The engine feeds a large tensor's chunks in one pass, then merges chunk by chunk with the
    coefficients these give; :func:`slerp_tensors` feeds blocks of :data:`SLERP_BLOCK` entries of
    a whole tensor, so both paths compute the same numbers.
    """

    dot: float = 0.0
    aa: float = 0.0
    bb: float = 0.0

    def add(self, v0: Tensor, v1: Tensor) -> None:
        a, b = v0.reshape(-1), v1.reshape(-1)
        for i in range(0, a.numel(), _SLERP_SUB):  # float64 copies of a slice at a time
            x, y = a[i : i + _SLERP_SUB].to(torch.float64), b[i : i + _SLERP_SUB].to(torch.float64)
            self.dot += float(torch.dot(x, y))
            self.aa += float(torch.dot(x, x))
            self.bb += float(torch.dot(y, y))


_SLERP_SUB = 1 << 16


def slerp_coefficients(t: float, stats: SlerpStats, dot_threshold: float = 0.9995, eps: float = 1e-8) -> tuple[float, float]:
    """``(c0, c1)`` with slerp(v0, v1) = c0 v0 + c1 v1, as mergekit: the angle between the
    normalised vectors (a norm <= ``eps`` counts as 1), lerp when |cos| > ``dot_threshold``."""
    na, nb = math.sqrt(stats.aa), math.sqrt(stats.bb)
    na = na if na > eps else 1.0
    nb = nb if nb > eps else 1.0
    dot = min(1.0, max(-1.0, stats.dot / (na * nb)))
    if abs(dot) > dot_threshold:
        return 1 - t, t
    theta = math.acos(dot)
    s = math.sin(theta)
    return math.sin((1 - t) * theta) / s, math.sin(t * theta) / s


def slerp_tensors(t: float, v0: Tensor, v1: Tensor, dot_threshold: float = 0.9995, eps: float = 1e-8,
                  stats: SlerpStats | None = None) -> Tensor:  # fmt: skip
    """Spherical interpolation between two tensors seen as flat vectors (one angle per tensor).

    Falls back to linear interpolation when the normalised vectors are nearly colinear
    (|cos| > ``dot_threshold``), where the spherical formula is ill-conditioned. The original
    (unnormalised) tensors are interpolated. ``stats``: the whole tensors' :class:`SlerpStats`
    when ``v0``/``v1`` are chunks of larger tensors.
    """
    dt = _work_dtype(v0, v1)
    a, b = v0.reshape(-1), v1.reshape(-1)
    if stats is None:
        stats = SlerpStats()
        for i in range(0, a.numel(), SLERP_BLOCK):
            stats.add(a[i : i + SLERP_BLOCK], b[i : i + SLERP_BLOCK])
    c0, c1 = slerp_coefficients(t, stats, dot_threshold, eps)
    out = a.to(dt) * c0
    out += b.to(dt) * c1
    return out.reshape(v0.shape)


@merge_method("slerp", base="optional", min_models=1, max_models=2, chunking="slerp", reference="https://en.wikipedia.org/wiki/Slerp")
def slerp(
    tensors: list[Tensor], base: Tensor | None, *, t: Unit = 0.5, dot_threshold: Unit = 0.9995, eps: NonNegative = 1e-8,
    ctx: TensorContext | None = None,
) -> Tensor:  # fmt: skip
    """Spherical linear interpolation from the base (t = 0) to the other model (t = 1), per tensor.

    Give a base and one model (mergekit's form) or two models and no base (from the first).
    ``ctx.stats``: the whole tensors' :class:`SlerpStats` (chunked merges of large tensors).
    """
    v0, v1 = slerp_pair(tensors, base)
    return slerp_tensors(t, v0, v1, dot_threshold, eps, stats=ctx.stats if ctx is not None else None)


def slerp_pair(tensors: list[Tensor], base: Tensor | None) -> tuple[Tensor, Tensor]:
    """(from, to) of a SLERP: (base, the model) or, without a base, the two models."""
    if base is not None:
        if len(tensors) != 1:
            raise ConfigError(f"slerp merges a base and exactly one other model, got {len(tensors)} others")
        return base, tensors[0]
    if len(tensors) != 2:
        raise ConfigError(f"slerp without a base merges exactly two models, got {len(tensors)}")
    return tensors[0], tensors[1]


# ------------------------------------------------------------------- generalised task arithmetic
def task_arithmetic_merge(
    tensors: list[Tensor],
    base: Tensor,
    *,
    weight: list[float],
    density: list[float] | None = None,
    gamma: list[float] | None = None,
    sparsification: Sparsification | None = None,
    consensus: Consensus | None = None,
    normalize: bool = False,
    rescale: bool = False,
    rescale_norm: RescaleNorm = "density",
    lambda_: float = 1.0,
    ctx: TensorContext | None = None,
) -> Tensor:
    """The generalised task-arithmetic merge: sparsify each task vector, weight it, optionally keep
    only entries agreeing with the elected sign, sum (or average over the agreeing weights), scale.

    ``ctx.stats`` may hold one precomputed :class:`~analysis.merging.sparsify.Selection` per model
    and ``ctx.offset`` the chunk's flat position: the engine then calls this on flat chunks of a
    large tensor and gets the same result as on the whole tensor.

    Shapes:
        tensors: k tensors of shape S; base: S; output: S.
    """
    _check_count("task arithmetic", weight, tensors, "weight")
    ctx = ctx or TensorContext()
    dt = _work_dtype(base, *tensors)
    b = base.to(dt)
    deltas = torch.empty((len(tensors), *b.shape), dtype=dt)
    for i, t in enumerate(tensors):
        d = torch.sub(t.to(dt), b, out=deltas[i])
        if sparsification is not None:
            sel = ctx.stats[i] if ctx.stats is not None else None
            r = sparsify(d, sparsification, density[i] if density else 1.0, gamma=gamma[i] if gamma else 0.01,
                         rescale=rescale_norm if rescale else None, seed=ctx.seed + 7919 * (i + 1),
                         offset=ctx.offset, sel=sel, inplace=True)  # fmt: skip
            if r.data_ptr() != d.data_ptr():
                d.copy_(r)
        if weight[i] != 1:
            d.mul_(weight[i])
    if consensus is not None:
        mask = consensus_mask(deltas, consensus)
        mixed = deltas.mul_(mask).sum(0)
        if normalize:
            w = torch.tensor(weight, dtype=dt).reshape(-1, *([1] * b.dim()))
            divisor = (mask * w).sum(0)
            divisor[divisor == 0] = 1
            mixed /= divisor
        del mask
    else:
        mixed = deltas.sum(0)
        if normalize:
            total = math.fsum(weight)
            mixed /= total if abs(total) >= 1e-8 else 1.0
    del deltas
    if lambda_ != 1:
        mixed *= lambda_
    return mixed.add_(b)


_TA = "https://arxiv.org/abs/2212.04089"
_TIES = "https://arxiv.org/abs/2306.01708"
_DARE = "https://arxiv.org/abs/2311.03099"
_BREAD = "https://arxiv.org/abs/2312.06795"


@dataclass(frozen=True)
class TaskArithmeticVariant:
    """One member of the task-arithmetic family: :func:`task_arithmetic_merge` with a fixed
    sparsification and sign consensus, and its defaults (as mergekit declares its generalised
    task-arithmetic methods). Registering a variant is one row of :data:`TASK_ARITHMETIC_FAMILY`."""

    name: str
    summary: str
    reference: str
    sparsification: Sparsification | None = None
    consensus: Consensus | None = None
    chunking: Chunking = "elementwise"
    #: defaults of the shared parameters that differ per variant
    normalize: bool = False
    rescale: bool = False
    rescale_norm: RescaleNorm = "density"
    density: float = 1.0
    gamma: float = 0.01
    #: merging k identical copies returns that model (true where the merge averages, not sums)
    copies_give_model: bool = False

    def params(self) -> tuple[ParamSpec, ...]:
        """The typed configuration schema: what the variant's sparsification uses, nothing more."""
        frac, unit = split_range(Fraction)[1], split_range(Unit)[1]
        out = [ParamSpec("weight", float, 1.0, per_model=True, arg="weight")]
        if self.sparsification is not None:
            out.append(ParamSpec("density", float, self.density, per_model=True, arg="density", range=frac))
        if self.sparsification == "magnitude_outliers":
            out.append(ParamSpec("gamma", float, self.gamma, per_model=True, arg="gamma", range=unit))
        out.append(ParamSpec("normalize", bool, self.normalize, arg="normalize"))
        if self.sparsification is not None:
            out += [ParamSpec("rescale", bool, self.rescale, arg="rescale"),
                    ParamSpec("rescale_norm", RescaleNorm, self.rescale_norm, arg="rescale_norm")]  # fmt: skip
        out += [ParamSpec("lambda", float, 1.0, arg="lambda_"), ParamSpec("int8_mask", bool, False, arg="int8_mask")]
        return tuple(out)

    def method(self) -> MergeMethod:
        """The registrable :class:`MergeMethod` of this variant."""

        def fn(tensors: list[Tensor], base: Tensor | None, *, int8_mask: bool = False, ctx: TensorContext | None = None,
               **params: Any) -> Tensor:  # fmt: skip
            return task_arithmetic_merge(tensors, _need_base(self.name, base), sparsification=self.sparsification,
                                         consensus=self.consensus, ctx=ctx, **params)  # fmt: skip

        fn.__doc__ = self.summary
        return MergeMethod(
            name=self.name, fn=fn, params=self.params(), base="required", reference=self.reference,
            summary=self.summary, copies_give_model=self.copies_give_model, chunking=self.chunking, takes_ctx=True,
        )  # fmt: skip


#: the generalised task-arithmetic methods, one row each (name, sparsification, consensus, defaults)
TASK_ARITHMETIC_FAMILY: tuple[TaskArithmeticVariant, ...] = (
    TaskArithmeticVariant(
        "task_arithmetic", "Task arithmetic: base + lambda * sum_i w_i (model_i - base) (normalize: divide by sum_i w_i).",
        _TA),
    TaskArithmeticVariant(
        "ties", "TIES: trim each task vector to its top-``density`` magnitudes, elect the sign with the larger total "
        "mass, average the entries that agree with it (disjoint mean), scale by lambda.",
        _TIES, sparsification="magnitude", consensus="sum", chunking="magnitude", normalize=True, rescale_norm="l1",
        copies_give_model=True),
    TaskArithmeticVariant(
        "dare_linear", "DARE + task arithmetic: drop each delta entry with probability 1 - density, rescale the "
        "survivors by 1/density (``rescale_norm: l1`` matches the L1 norm instead, as mergekit does), then sum.",
        _DARE, sparsification="random", rescale=True),
    TaskArithmeticVariant(
        "dare_ties", "DARE drop-and-rescale followed by TIES sign election (no normalisation by default, as mergekit).",
        _DARE, sparsification="random", consensus="sum", rescale=True),
    TaskArithmeticVariant(
        "breadcrumbs", "Model Breadcrumbs: per task vector, mask the ``gamma`` fraction of largest-magnitude entries "
        "(outliers) and the smallest ones so that a ``density`` fraction remains, then task arithmetic.",
        _BREAD, sparsification="magnitude_outliers", chunking="magnitude_outliers", rescale_norm="l1", density=0.9),
    TaskArithmeticVariant(
        "breadcrumbs_ties", "Model Breadcrumbs sparsification with TIES sign election.",
        _BREAD, sparsification="magnitude_outliers", consensus="sum", chunking="magnitude_outliers", rescale_norm="l1",
        density=0.9),
)
for _variant in TASK_ARITHMETIC_FAMILY:
    register(_variant.method())


# ------------------------------------------------------------------------------------ Model Stock
@merge_method("model_stock", base="required", min_models=2, reference="https://arxiv.org/abs/2403.19522")
def model_stock(tensors: list[Tensor], base: Tensor | None, *, filter_wise: bool = False) -> Tensor:
    """Model Stock: interpolate from the base towards the average of k fine-tunes with
    t = k cos(theta) / (1 + (k - 1) cos(theta)), theta the mean pairwise angle between their deltas.

    ``filter_wise`` computes one angle per output row instead of one per tensor.
    """
    b0 = _need_base("model_stock", base)
    if len(tensors) < 2:
        raise ConfigError("model_stock needs at least two fine-tuned models besides the base")
    dt = _work_dtype(b0, *tensors)
    shape = b0.shape
    if filter_wise and b0.dim() > 0:
        rows = lambda x: x.to(dt).reshape(shape[0], -1)  # noqa: E731
    else:
        rows = lambda x: x.to(dt).reshape(1, -1)  # noqa: E731
    b = rows(b0)
    deltas = [rows(t) - b for t in tensors]
    cos = []
    for i in range(len(deltas)):
        for j in range(i + 1, len(deltas)):
            denom = (deltas[i].norm(dim=-1) * deltas[j].norm(dim=-1)).clamp(min=1e-6)
            cos.append(((deltas[i] * deltas[j]).sum(-1) / denom).clamp(-1, 1))
    c = torch.stack(cos).mean(0).unsqueeze(-1)
    k = len(tensors)
    den = 1 + (k - 1) * c
    singular = den.abs() < 1e-6
    t = torch.where(singular, torch.zeros_like(c), k * c / torch.where(singular, torch.ones_like(den), den))
    avg = sum(deltas) / k
    return (b + t * avg).reshape(shape)


# --------------------------------------------------------------- sequential orthogonal projection
def _project_out(task: Tensor, merged: Tensor, alpha: float) -> Tensor:
    """Remove from ``task`` its components along the dominant singular directions of ``merged``.

    With merged = U S V^T (reduced SVD, p = min(m, n)) and r the first index where the cumulative
    share of singular values exceeds ``alpha``: drop the block U_r^T task V_r (r x r) and the
    diagonal entries u_i^T task v_i for every i < p, as the OPCM reference implementation does.
    """
    m2 = merged.reshape(merged.shape[0], -1)
    t2 = task.reshape(task.shape[0], -1)
    u, s, vh = torch.linalg.svd(m2, full_matrices=False)
    total = s.sum()
    if total <= 0:
        return task
    r = int(((s.cumsum(0) / total) > alpha).float().argmax())
    v = vh.transpose(0, 1)
    tv = t2 @ v  # [m, p]
    coef = u.transpose(0, 1) @ tv  # [p, p] = U^T task V
    removed = torch.zeros_like(coef)
    removed[:r, :r] = coef[:r, :r]
    idx = torch.arange(coef.shape[0])
    removed[idx, idx] = coef[idx, idx]
    return (t2 - u @ removed @ vh).reshape(task.shape)


@merge_method("opcm", base="required", reference="https://arxiv.org/abs/2501.09522")
def opcm(tensors: list[Tensor], base: Tensor | None, *, alpha: Unit = 0.5) -> Tensor:
    """Sequential orthogonal-projection merging ("Merging Models on the Fly", Tang et al. 2025).

    Models are merged one at a time in the given order. For matrices (2-D and up, flattened to
    [rows, -1]) each new task vector is projected off the dominant singular subspace of the merged
    task vector so far (``alpha``: the share of singular-value mass that subspace holds); vectors
    are added unchanged. The running sum is rescaled so the merged task vector's norm equals the
    mean norm of the task vectors seen so far (the paper's adaptive lambda_t). This implementation
    measures norms per tensor (the paper: over the whole model) so it streams tensor by tensor.
    """
    b0 = _need_base("opcm", base)
    if not 0 <= alpha <= 1:
        raise ConfigError(f"opcm: alpha must be in [0, 1], got {alpha}")
    dt = _work_dtype(b0, *tensors)
    b = b0.to(dt)
    total = tensors[0].to(dt) - b  # lambda_t * merged task vector
    norms = [float(total.norm())]
    lam = 1.0
    for x in tensors[1:]:
        tau = x.to(dt) - b
        norms.append(float(tau.norm()))
        merged = total / lam
        clean = _project_out(tau, merged, alpha) if b.dim() >= 2 and b.shape[0] > 1 else tau
        total = total + clean
        n = float(total.norm())
        avg = sum(norms) / len(norms)
        lam = n / avg if n > 0 and avg > 0 else 1.0
    return b + total / lam
