"""Linear mode connectivity: loss and accuracy along the straight line between two models.

For models ``a`` and ``b`` and ``t`` in [0, 1], ``theta(t) = (1 - t) * a + t * b``. All points of the
path (and, in :func:`lmc_curves`, all points of many pairs) are evaluated as ONE stacked
population through :func:`zoo.build.evaluate.evaluate_population`.

Barriers (Frankle et al. 2020; Git Re-Basin):

* loss barrier ``max_t [loss(t) - ((1 - t) loss(0) + t loss(1))]``;
* accuracy barrier ``max_t [((1 - t) acc(0) + t acc(1)) - acc(t)]``.

BatchNorm. Interpolating BN running statistics does not give the statistics of the interpolated
network, so by default (``bn_data`` given, as :func:`linear_mode_connectivity` does with the training
split) every point, the endpoints included, gets its running statistics recomputed: reset to zero,
one training-mode forward pass over ``bn_data``, exact batch statistics stored (Git Re-Basin's
"reset BN stats"; REPAIR's further rescaling of neurons is not done). With ``bn_data=None`` the
interpolated running statistics are used as they are.

    from analysis.lmc import linear_mode_connectivity
    rep = linear_mode_connectivity(zoo, a_id, b_id, align=True)
    rep.naive.loss_barrier, rep.aligned.loss_barrier
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from kernels.batched import BN_MOMENTUM
from zoo.build.evaluate import evaluate_population, functional_forward
from zoo.errors import ConfigError, MismatchError
from zoo.models.architectures import is_classifier, known_families, normalize_config

__all__ = [
    "LMCCurve",
    "LMCReport",
    "interpolate",
    "interpolate_pairs",
    "reset_bn_stats",
    "barrier",
    "lmc_curve",
    "lmc_curves",
    "linear_mode_connectivity",
    "has_batchnorm",
]


@dataclass
class LMCCurve:
    """Loss and accuracy along one linear path, and its barriers.

    Shapes:
        t, loss, acc: ``[P]`` (``acc`` is NaN for regression).
    """

    t: Tensor
    loss: Tensor
    acc: Tensor
    loss_barrier: float
    acc_barrier: float
    bn_reset: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "t": self.t.tolist(), "loss": self.loss.tolist(), "acc": self.acc.tolist(),
            "loss_barrier": self.loss_barrier, "acc_barrier": self.acc_barrier, "bn_reset": self.bn_reset,
        }  # fmt: skip


@dataclass
class LMCReport:
    """The naive path between two models and, with alignment, the path after aligning ``b`` to ``a``."""

    a: int | str
    b: int | str
    split: str
    naive: LMCCurve
    aligned: LMCCurve | None = None
    align_params: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "a": self.a, "b": self.b, "split": self.split, "naive": self.naive.to_dict(),
            "aligned": None if self.aligned is None else self.aligned.to_dict(), "align": self.align_params,
        }  # fmt: skip


def has_batchnorm(state: Mapping[str, Tensor]) -> bool:
    return any(k.endswith("running_mean") for k in state)


def interpolate(a: Mapping[str, Tensor], b: Mapping[str, Tensor], t: Tensor) -> dict[str, Tensor]:
    """Points ``(1 - t) a + t b`` as one stacked population; non-float tensors are taken from ``a``.

    Shapes:
        a, b: ``name -> [*shape]``; t: ``[P]``. Returns ``name -> [P, *shape]``.
    """
    if set(a) != set(b):
        raise MismatchError(f"the two models have different tensors: {sorted(set(a) ^ set(b))[:5]}")
    out = {}
    t = t.float()
    for k, va in a.items():
        vb = b[k]
        if va.shape != vb.shape:
            raise MismatchError(f"tensor {k!r} has shapes {tuple(va.shape)} and {tuple(vb.shape)}")
        tv = t.view(-1, *([1] * va.dim()))
        if va.is_floating_point():
            out[k] = torch.lerp(va.float().unsqueeze(0), vb.float().unsqueeze(0), tv).to(va.dtype)
        else:
            out[k] = va.unsqueeze(0).expand(len(t), *va.shape).clone()
    return out


def interpolate_pairs(a: Mapping[str, Tensor], b: Mapping[str, Tensor], t: Tensor) -> dict[str, Tensor]:
    """Every point of K paths as one population, pair-major: model ``k * P + j`` is pair ``k`` at ``t[j]``.

    Shapes:
        a, b: ``name -> [K, *shape]``; t: ``[P]``. Returns ``name -> [K * P, *shape]``.
    """
    out = {}
    p = len(t)
    for k, va in a.items():
        vb = b[k]
        if va.shape != vb.shape:
            raise MismatchError(f"tensor {k!r} has shapes {tuple(va.shape)} and {tuple(vb.shape)}")
        n = va.shape[0]
        if va.is_floating_point():
            tv = t.float().view(1, p, *([1] * (va.dim() - 1)))
            v = torch.lerp(va.float().unsqueeze(1), vb.float().unsqueeze(1), tv).to(va.dtype)
        else:
            v = va.unsqueeze(1).expand(n, p, *va.shape[1:])
        out[k] = v.reshape(n * p, *va.shape[1:]).contiguous()
    return out


def reset_bn_stats(config: Mapping[str, Any], params: Mapping[str, Tensor], X: Tensor, *, chunk: int = 32) -> dict[str, Tensor]:
    """A copy of a stacked population with every BatchNorm's running statistics recomputed on ``X``.

    Running means/variances are zeroed, one training-mode forward pass over ``X`` (no dropout) is
    run, and the exact batch statistics are stored (the momentum update undone; ``num_batches_tracked``
    is left as it was). Layers downstream
    see batch-normalised inputs during that pass, as in ``reset_bn_stats`` of Git Re-Basin.

    Shapes:
        params: ``name -> [N, *shape]``; X: ``[B, *in]``. Returns the same shapes as ``params``.
    """
    out = {k: v.clone() for k, v in params.items()}
    stats = [k for k in out if k.endswith("running_mean") or k.endswith("running_var")]
    if not stats:
        return out
    for k in stats:
        out[k].zero_()
    n = next(iter(out.values())).shape[0]
    with torch.no_grad():
        for s in range(0, n, chunk):
            part = {k: v[s : s + chunk] for k, v in out.items()}  # views: BN updates land in ``out``
            functional_forward(config, part, X.float(), training=True, dropout=torch.zeros(len(next(iter(part.values())))))
    for k in stats:
        out[k].div_(BN_MOMENTUM)
    for k, v in params.items():  # the pass counted a batch: keep the models' own counters
        if k.endswith("num_batches_tracked"):
            out[k].copy_(v)
    return out


def barrier(t: Tensor, values: Tensor, *, higher_is_better: bool = False) -> Tensor:
    """The barrier along paths: the largest excess over the line between the endpoints.

    ``values`` are losses (``higher_is_better=False``) or accuracies (``True``, measuring the drop).

    Shapes:
        t: ``[P]`` sorted, from 0 to 1; values: ``[P]`` or ``[K, P]``. Returns ``[]`` or ``[K]``.
    """
    v = values.double()
    line = (1 - t.double()) * v[..., :1] + t.double() * v[..., -1:]
    excess = (line - v) if higher_is_better else (v - line)
    return excess.amax(-1)


def _check_t(points: int | None, t: Tensor | None) -> Tensor:
    if t is None:
        if points is None or points < 2:
            raise ConfigError(f"an LMC curve needs at least 2 points (the endpoints), got {points}")
        return torch.linspace(0.0, 1.0, int(points))
    t = torch.as_tensor(t, dtype=torch.float32)
    if t.dim() != 1 or len(t) < 2 or float(t[0]) != 0.0 or float(t[-1]) != 1.0 or bool((t.diff() <= 0).any()):
        raise ConfigError("t must be increasing from 0 to 1 (endpoints included)")
    return t


def lmc_curves(
    config: Mapping[str, Any],
    a: Mapping[str, Tensor],
    b: Mapping[str, Tensor],
    X: Tensor,
    y: Tensor,
    *,
    points: int = 25,
    t: Tensor | None = None,
    bn_data: Tensor | None = None,
    batch_size: int = 4096,
) -> list[LMCCurve]:
    """The LMC curves of K pairs ``(a[k], b[k])``: all ``K * P`` points in one population, one evaluation.

    ``bn_data`` (training inputs): recompute BatchNorm statistics at every point (see the module
    docstring); ignored for models without BatchNorm.

    Shapes:
        a, b: ``name -> [K, *shape]``; X: ``[n, *in]``; y: ``[n]``. Returns K curves of P points.
    """
    cfg = normalize_config(config)
    t = _check_t(points, t)
    pop = interpolate_pairs(a, b, t)
    reset = bn_data is not None and has_batchnorm(pop)
    if reset:
        pop = reset_bn_stats(cfg, pop, bn_data)
    res = evaluate_population(cfg, pop, X, y, batch_size=batch_size)
    k = next(iter(a.values())).shape[0]
    loss = res.loss.view(k, len(t))
    acc = res.accuracy.view(k, len(t))
    lb = barrier(t, loss)
    ab = barrier(t, acc, higher_is_better=True)
    return [LMCCurve(t.clone(), loss[i].clone(), acc[i].clone(), float(lb[i]), float(ab[i]), reset) for i in range(k)]


def lmc_curve(
    config: Mapping[str, Any],
    a: Mapping[str, Tensor],
    b: Mapping[str, Tensor],
    X: Tensor,
    y: Tensor,
    *,
    points: int = 25,
    t: Tensor | None = None,
    bn_data: Tensor | None = None,
) -> LMCCurve:
    """Loss and accuracy along the line from state dict ``a`` to ``b`` (one batched evaluation)."""
    return lmc_curves(config, {k: v[None] for k, v in a.items()}, {k: v[None] for k, v in b.items()}, X, y,
                      points=points, t=t, bn_data=bn_data)[0]  # fmt: skip


def linear_mode_connectivity(
    zoo: Any,
    a: int | str,
    b: int | str,
    *,
    align: bool = False,
    method: str = "weight_matching",
    seed: int = 0,
    points: int = 25,
    split: str = "test",
    dataset: str = "digits",
    dataset_root: str | None = None,
    bn_reset: bool = True,
) -> LMCReport:
    """The LMC curve between two stored classifiers, and with ``align`` the curve after aligning ``b`` to ``a``.

    Evaluated on ``split`` of ``dataset``; BatchNorm statistics are recomputed on its training split
    unless ``bn_reset=False``. Nothing is written to the zoo (use :func:`analysis.align.align_and_store`).
    """
    from analysis.align import align_population, check_same_arch, default_data
    from zoo.models.datasets import load_dataset

    ra, rb = zoo.get(a), zoo.get(b)
    cfg = check_same_arch([rb], ra)
    if not is_classifier(cfg):
        raise ConfigError(f"LMC evaluates classifiers ({', '.join(f for f in known_families() if is_classifier({'family': f}))}), "
                          f"not {cfg['family']!r}")  # fmt: skip
    ds = load_dataset(dataset, root=dataset_root).for_architecture(cfg)
    X, y = ds.split(split)
    sa, sb = ra.state_dict(), rb.state_dict()
    bn_data = ds.X_train if bn_reset and has_batchnorm(sa) else None
    if not align:
        naive = lmc_curve(cfg, sa, sb, X, y, points=points, bn_data=bn_data)
        return LMCReport(ra.id, rb.id, split, naive)
    data = default_data(cfg, dataset, dataset_root) if method == "activation_matching" else None
    res = align_population({k: v[None] for k, v in sb.items()}, sa, method=method, config=cfg, data=data, seed=seed)
    stacked_a = {k: torch.stack([v, v]) for k, v in sa.items()}
    stacked_b = {k: torch.stack([sb[k], res.aligned[k][0]]) for k in sa}
    naive, aligned = lmc_curves(cfg, stacked_a, stacked_b, X, y, points=points, bn_data=bn_data)
    return LMCReport(ra.id, rb.id, split, naive, aligned, dict(res.params(0), seconds=res.seconds))
