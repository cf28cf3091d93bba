"""Sharpness of a whole population at once: Hessian trace (Hutchinson) and top eigenvalue (power iteration).

The loss is each model's mean cross-entropy on one data batch (an INR's: the mean squared error of its
fit of its own image), in evaluation mode (BatchNorm uses its running statistics, no dropout), as the
model is evaluated. Its Hessian is taken with respect to the
trainable tensors (``zoo.models.architectures.parameter_names``; BatchNorm buffers are constants).

Batched over models without a loop: the population's summed loss ``sum_n L_n(theta_n)`` is computed
by the family's batched forward (``zoo.build.evaluate.functional_forward``, stacked weights), and since the
models do not interact its Hessian is block diagonal, so ONE Hessian-vector product of the sum with a
stacked direction ``v = [v_1, ..., v_N]`` is ``[H_1 v_1, ..., H_N v_N]``. The gradient is linearised
once with ``torch.func.vjp(torch.func.grad(loss), params)`` and every product is one pass back through
it (:func:`hvp_operator`).

- **Trace** (Hutchinson 1989): ``tr(H) = E[z^T H z]`` for Rademacher ``z`` (entries +-1). With ``P``
  probes the estimate is the mean of ``z_p^T H z_p`` and its standard error ``std / sqrt(P)``. By
  default the Hutch++ variant (Meyer et al. 2021) spends a third of the products on a sketch of the
  dominant eigenspace, whose trace it takes exactly, and applies Hutchinson to the rest: unbiased, and
  several times more accurate on trained networks at the same cost. A layer's trace (the trace of its
  diagonal block ``H_LL``) comes from the same products (``E[z_L^T (H z)_L] = tr(H_LL)``).
- **Top eigenvalue** (power iteration, as PyHessian): ``v <- H v / ||H v||`` from a random start, the
  Rayleigh quotient ``v^T H v`` as the estimate, until its relative change is below ``tol`` for every
  model. This finds the eigenvalue of largest magnitude. The residual ``||H v - lambda v||`` bounds
  the error: some eigenvalue of ``H`` lies within it of the estimate. A layer's top eigenvalue is
  that of its diagonal block ``H_LL`` (power iteration on the layer's tensors alone).

Seeding: probes and start vectors come from :func:`kernels.batched.keyed_uniform` keyed by each
model's key (its zoo id) and the seed, so a model's estimates do not depend on which other models
share its batch.

A *layer* here is a layer of :mod:`analysis.landscape.spectral` (a weight of 2+ dimensions) with its
bias; other trainable tensors (BatchNorm's affine parameters) count in the whole-model numbers only.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from analysis.landscape.spectral import layer_names
from kernels.batched import keyed_uniform
from zoo.build.evaluate import functional_forward, per_sample_loss
from zoo.errors import ConfigError, MismatchError
from zoo.models.architectures import get_family, normalize_config, parameter_names

__all__ = [
    "SharpnessEstimate",
    "split_params",
    "layer_groups",
    "population_loss",
    "hvp",
    "hutchinson_trace",
    "top_eigenvalue",
    "sharpness",
]

Params = dict[str, Tensor]


@dataclass
class SharpnessEstimate:
    """Hessian trace and top eigenvalue of ``N`` models, whole and per layer.

    Shapes:
        trace, trace_se, top_eig, top_eig_residual: ``[N]``; ``layers[name]`` holds the same four keys
        for the layer's diagonal block. ``probes``/``iters`` record the work done.
    """

    trace: Tensor
    trace_se: Tensor
    top_eig: Tensor
    top_eig_residual: Tensor
    layers: dict[str, dict[str, Tensor]] = field(default_factory=dict)
    probes: int = 0
    iters: int = 0
    n_samples: int = 0


def _check_runnable(config: Mapping) -> dict:
    """The config, normalised, if its models have a loss here: classifiers (cross-entropy), INRs (MSE)."""
    cfg = normalize_config(config)
    fam = get_family(cfg)  # raw state dicts: ConfigError saying they cannot be run
    if not (fam.is_classifier or fam.head == "inr"):
        raise ConfigError(
            f"the Hessian needs a loss: a classifier's cross-entropy or an INR's fit of its image; architecture "
            f"family {fam.name!r} is a {fam.head}. Use the spectral metrics for such models."
        )
    if fam.forward is None:
        raise ConfigError(f"architecture family {fam.name!r} has no batched forward; its Hessian cannot be computed")
    return cfg


def split_params(config: Mapping, params: Mapping[str, Tensor]) -> tuple[Params, Params]:
    """``(trainable, buffers)`` of a stacked population (buffers: BatchNorm running statistics...)."""
    names = set(parameter_names(config))
    missing = names - set(params)
    if missing:
        raise MismatchError(f"the stacked population lacks trainable tensor(s) {sorted(missing)[:5]}")
    trainable = {k: v.detach().float() for k, v in params.items() if k in names}
    buffers = {k: v.detach() for k, v in params.items() if k not in names}
    return trainable, buffers


def layer_groups(trainable: Mapping[str, Tensor]) -> dict[str, list[str]]:
    """``{layer: [weight name, bias name if trainable]}`` for the layers of :func:`layer_names`."""
    groups = {}
    for layer, tname in layer_names(trainable).items():
        bias = f"{layer}.bias"
        groups[layer] = [tname] + ([bias] if bias in trainable and tname.endswith(".weight") else [])
    return groups


def population_loss(config: Mapping, buffers: Params, X: Tensor, y: Tensor) -> Callable[[Params], Tensor]:
    """``loss(trainable) = sum_n mean_b loss_n(x_b, y_b)``: the population's summed loss.

    Classifiers: cross-entropy. INRs (family head ``inr``): the squared error averaged over pixels and
    channels, the loss they were fitted with (``zoo.build.evaluate.per_sample_loss``).

    Shapes:
        X: ``[B, *in]`` shared by all models; y: classifiers ``[B]`` int64, INRs ``[B, C]`` shared or
        ``[N, B, C]`` (each model's own image); trainable: ``name -> [N, *shape]``.
    """
    cfg = normalize_config(config)
    task = "classification" if get_family(cfg).is_classifier else "regression"

    def loss(trainable: Params) -> Tensor:
        out = functional_forward(cfg, {**buffers, **trainable}, X)  # [N, B, K]
        return per_sample_loss(out, y, task)[0].mean(1).sum()

    return loss


def hvp_operator(loss: Callable[[Params], Tensor], params: Params) -> Callable[[Params], Params]:
    """``v -> H v``, the Hessian of ``loss`` at ``params`` as a linear operator (torch.func, reverse over reverse).

    The gradient is linearised once (``torch.func.vjp(torch.func.grad(loss), params)``); each product is
    then one backward pass through it (``v^T H = (H v)^T``, H symmetric). For a population's summed loss
    this is every model's own ``H_n v_n`` (the Hessian is block diagonal). Measured here 1.5-5x faster per
    product than forward-over-reverse ``jvp(grad(loss))``, which re-runs the forward for every product.
    """
    from torch.func import grad, vjp

    _, pullback = vjp(grad(loss), params)
    return lambda v: pullback(v)[0]


def hvp(loss: Callable[[Params], Tensor], params: Params, v: Params) -> Params:
    """One Hessian-vector product ``H v`` of ``loss`` at ``params`` (see :func:`hvp_operator`)."""
    return hvp_operator(loss, params)(v)


def _dot(a: Params, b: Params) -> Tensor:
    """Per-model inner product. Shapes: ``name -> [N, ...]`` each; returns ``[N]``."""
    return sum((a[k] * b[k]).flatten(1).sum(1) for k in a)  # type: ignore[return-value]


def _keyed(keys: Tensor, like: Params, salt: int) -> Params:
    """Per-model uniform [0, 1) numbers shaped like ``like`` (``keyed_uniform``: one salt per tensor)."""
    return {k: keyed_uniform(keys, tuple(t.shape[1:]), salt * 1009 + i).to(t.dtype) for i, (k, t) in enumerate(like.items())}


def _as_keys(keys: Sequence[int] | Tensor | None, n: int) -> Tensor:
    """The models' keys as int64 ``[N]`` (their positions when None)."""
    if keys is None:
        return torch.arange(n, dtype=torch.int64)
    k = keys.to(torch.int64) if isinstance(keys, Tensor) else torch.tensor([int(x) for x in keys], dtype=torch.int64)
    if k.shape != (n,):
        raise MismatchError(f"{k.numel()} model keys for {n} models")
    return k


def _model_keys(keys: Sequence[int] | Tensor | None, n: int, seed: int) -> Tensor:
    return _as_keys(keys, n) * 1_000_003 + int(seed)


TRACE_METHODS = ("hutch++", "hutchinson")


def _rademacher(keys: Tensor, like: Params, salt: int) -> Params:
    return {name: torch.where(u < 0.5, -1.0, 1.0).to(u.dtype) for name, u in _keyed(keys, like, salt).items()}


def _flat(v: Params) -> Tensor:
    """Shapes: ``name -> [N, ...]`` to ``[N, D]`` (float64)."""
    return torch.cat([t.reshape(t.shape[0], -1).double() for t in v.values()], 1)


def _unflat(x: Tensor, like: Params) -> Params:
    """Shapes: ``[N, D]`` to ``name -> [N, ...]`` shaped and typed like ``like``."""
    out, i = {}, 0
    for name, t in like.items():
        size = t[0].numel()
        out[name] = x[:, i : i + size].reshape(t.shape).to(t.dtype)
        i += size
    return out


def check_trace_options(probes: int, method: str) -> None:
    """Raise :class:`ConfigError` for an unknown trace method or too few probes for a standard error."""
    if method not in TRACE_METHODS:
        raise ConfigError(f"unknown trace method {method!r}; choose from {', '.join(TRACE_METHODS)}")
    least = 2 if method == "hutchinson" else 4
    if isinstance(probes, bool) or not isinstance(probes, int) or probes < least:
        raise ConfigError(f"the {method} estimator needs at least {least} probes for a standard error, got {probes!r}")


def hutchinson_trace(
    loss: Callable[[Params], Tensor],
    params: Params,
    *,
    probes: int = 100,
    method: str = "hutch++",
    seed: int = 0,
    keys: Sequence[int] | Tensor | None = None,
    groups: Mapping[str, Sequence[str]] | None = None,
) -> tuple[Tensor, Tensor, dict[str, tuple[Tensor, Tensor]]]:
    """Every model's Hessian trace (and each group's diagonal-block trace) from ``probes`` Hessian-vector products.

    ``method="hutchinson"``: the mean of ``z^T H z`` over Rademacher probes ``z``, standard error
    ``std / sqrt(probes)``. ``method="hutch++"`` (Meyer, Musco, Musco & Woodruff 2021): a third of the
    products sketch the dominant subspace (``Q = qr(H S)``, ``S`` Rademacher), a third give its exact part
    ``tr(Q^T H Q)``, the last third estimate the rest by Hutchinson on the deflated probes ``(I - Q Q^T) z``.
    Unbiased like Hutchinson; its error is that of the deflated remainder, much smaller when a few
    eigenvalues dominate (trained networks: 2-7x lower error at the same cost, measured in
    docs/benchmarks.md). The standard error is that of the remainder's probes given ``Q``. A group's trace
    ``tr(P H)`` uses ``tr(P H Q Q^T)`` (exact) plus the mean of ``(P z)^T H (I - Q Q^T) z``.

    Returns ``(trace, standard error, {group: (trace, standard error)})``.

    Shapes:
        params: ``name -> [N, *shape]``; keys: ``[N]`` (seeds the probes per model). Returns ``[N]`` tensors.
    """
    check_trace_options(probes, method)
    n = next(iter(params.values())).shape[0]
    k = _model_keys(keys, n, seed)
    groups = dict(groups or {})
    H = hvp_operator(loss, params)
    sketch = probes // 3 if method == "hutch++" else 0
    exact = torch.zeros(n, dtype=torch.float64)
    exact_g = {g: torch.zeros(n, dtype=torch.float64) for g in groups}
    Q = None
    if sketch:
        hs = torch.stack([_flat(H(_rademacher(k, params, 10_000 + j))) for j in range(sketch)], 2)
        Q = torch.linalg.qr(hs).Q  # [N, D, sketch]
        for j in range(sketch):
            q = _unflat(Q[:, :, j], params)
            hq = H(q)
            exact += _dot(q, hq).double()
            for g, names in groups.items():
                exact_g[g] += _dot({m: q[m] for m in names}, {m: hq[m] for m in names}).double()
    whole, per = [], {g: [] for g in groups}
    for p in range(probes - 2 * sketch):
        z = _rademacher(k, params, p)
        g_ = z
        if Q is not None:
            zf = _flat(z)
            g_ = _unflat(zf - torch.einsum("ndk,nk->nd", Q, torch.einsum("ndk,nd->nk", Q, zf)), params)
        hz = H(g_)
        whole.append(_dot(g_, hz))
        for g, names in groups.items():
            per[g].append(_dot({m: z[m] for m in names}, {m: hz[m] for m in names}))

    def mean_se(samples: list[Tensor], base: Tensor) -> tuple[Tensor, Tensor]:
        s = torch.stack(samples).double()  # [P, N]
        return base + s.mean(0), s.std(0) / math.sqrt(len(samples))

    tr, se = mean_se(whole, exact)
    return tr, se, {g: mean_se(v, exact_g[g]) for g, v in per.items()}


def top_eigenvalue(
    loss: Callable[[Params], Tensor],
    params: Params,
    *,
    iters: int = 100,
    tol: float = 1e-4,
    seed: int = 0,
    keys: Sequence[int] | Tensor | None = None,
) -> tuple[Tensor, Tensor, int]:
    """Power iteration for every model's largest-magnitude Hessian eigenvalue.

    Returns ``(eigenvalue, residual ||H v - lambda v||, iterations run)``; iteration stops when every
    model's Rayleigh quotient changed by less than ``tol`` (relative) or after ``iters`` steps.

    Shapes:
        params: ``name -> [N, *shape]``; returns ``[N]``, ``[N]``, int.
    """
    if iters < 1:
        raise ConfigError(f"power iteration needs at least one iteration, got {iters}")
    n = next(iter(params.values())).shape[0]
    k = _model_keys(keys, n, seed)
    H = hvp_operator(loss, params)
    v = {name: u - 0.5 for name, u in _keyed(k, params, 1_000_000).items()}
    v = _normalise(v)
    lam = torch.full((n,), math.nan, dtype=torch.float64)
    resid = lam.clone()
    it = 0
    for it in range(1, iters + 1):
        hv = H(v)
        new = _dot(v, hv).double()
        resid = _norm({m: hv[m] - new.view(-1, *[1] * (hv[m].dim() - 1)).to(hv[m].dtype) * v[m] for m in hv})
        done = bool(torch.all((new - lam).abs() <= tol * new.abs().clamp_min(1e-12))) if it > 1 else False
        lam = new
        if done:
            break
        v = _normalise(hv)
    return lam, resid.double(), it


def _norm(v: Params) -> Tensor:
    return torch.sqrt(_dot(v, v))


def _normalise(v: Params) -> Params:
    norm = _norm(v).clamp_min(1e-30)
    return {k: t / norm.view(-1, *[1] * (t.dim() - 1)) for k, t in v.items()}


def sharpness(
    config: Mapping,
    params: Mapping[str, Tensor],
    X: Tensor,
    y: Tensor,
    *,
    probes: int = 100,
    method: str = "hutch++",
    iters: int = 100,
    tol: float = 1e-4,
    seed: int = 0,
    keys: Sequence[int] | Tensor | None = None,
    per_layer: bool = True,
    model_chunk: int = 64,
    progress: Callable[[int], None] | None = None,
) -> SharpnessEstimate:
    """Hessian trace and top eigenvalue of every model of a stacked population, whole and per layer.

    Models are processed ``model_chunk`` at a time (each chunk batched; fewer when Hutch++'s sketch
    ``[chunk, parameters, probes / 3]`` would exceed ~256 MB); ``progress(k)`` is called after each chunk
    with the number of models done. ``method``: see :func:`hutchinson_trace`.

    Shapes:
        params: ``name -> [N, *shape]`` (a stacked population, buffers included); X: ``[B, *in]``;
        y: classifiers ``[B]``, INRs ``[B, C]`` or ``[N, B, C]``; keys: ``[N]`` (the models' ids: seeds
        per model). Returns ``[N]`` tensors.
    """
    cfg = _check_runnable(config)
    trainable, buffers = split_params(cfg, params)
    n = next(iter(trainable.values())).shape[0]
    per_model_y = not get_family(cfg).is_classifier and y.dim() == 3
    if per_model_y and y.shape[0] != n:
        raise MismatchError(f"{y.shape[0]} target images for {n} models; give one per model or one shared")
    key_t = _as_keys(keys, n)
    groups = layer_groups(trainable) if per_layer else {}
    parts: list[SharpnessEstimate] = []
    done_iters = 0
    n_params = sum(v[0].numel() for v in trainable.values())
    chunk = max(1, min(model_chunk, (1 << 25) // max(1, n_params * max(1, probes // 3))))
    for c0 in range(0, n, chunk):
        sl = slice(c0, min(n, c0 + chunk))
        tr_c = {k: v[sl] for k, v in trainable.items()}
        buf_c = {k: v[sl].clone() for k, v in buffers.items()}
        kc = key_t[sl]
        loss = population_loss(cfg, buf_c, X, y[sl] if per_model_y else y)
        tr, se, per = hutchinson_trace(loss, tr_c, probes=probes, method=method, seed=seed, keys=kc, groups=groups)
        lam, res, it = top_eigenvalue(loss, tr_c, iters=iters, tol=tol, seed=seed, keys=kc)
        done_iters = max(done_iters, it)
        layers: dict[str, dict[str, Tensor]] = {}
        for g, names in groups.items():
            rest = {k: v for k, v in tr_c.items() if k not in names}

            def block_loss(sub: Params, rest: Params = rest, loss: Callable[[Params], Tensor] = loss) -> Tensor:
                return loss({**rest, **sub})

            glam, gres, git = top_eigenvalue(block_loss, {m: tr_c[m] for m in names}, iters=iters, tol=tol,
                                             seed=seed, keys=kc)  # fmt: skip
            done_iters = max(done_iters, git)
            layers[g] = {"trace": per[g][0], "trace_se": per[g][1], "top_eig": glam, "top_eig_residual": gres}
        parts.append(SharpnessEstimate(tr, se, lam, res, layers))
        if progress is not None:
            progress(sl.stop - sl.start)
    cat = torch.cat
    return SharpnessEstimate(
        cat([p.trace for p in parts]), cat([p.trace_se for p in parts]), cat([p.top_eig for p in parts]),
        cat([p.top_eig_residual for p in parts]),
        {g: {m: cat([p.layers[g][m] for p in parts]) for m in ("trace", "trace_se", "top_eig", "top_eig_residual")}
         for g in groups},
        probes=probes, iters=done_iters, n_samples=int(X.shape[0]),
    )  # fmt: skip
