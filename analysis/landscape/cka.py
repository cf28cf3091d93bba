"""Linear CKA between models' activations: two models, or every model of a population against a reference.

Linear centred kernel alignment (Kornblith et al. 2019) of two activation matrices ``X [n, p]`` and
``Y [n, q]`` on the same ``n`` inputs, with columns centred::

    CKA(X, Y) = ||Y^T X||_F^2 / (||X^T X||_F * ||Y^T Y||_F)

It lies in [0, 1], is 1 for ``Y = X Q s`` (any orthogonal ``Q``, scale ``s > 0``: so a model and a
copy with permuted hidden neurons have CKA 1 at every layer) and compares layers of different widths.
When features outnumber samples it is computed from the ``n x n`` Gram matrices instead (the same
value: ``||Y^T X||_F^2 = <X X^T, Y Y^T>_F``).

Activations come from the family's batched forward with activation taps
(``zoo.build.evaluate.functional_forward(..., taps=...)``, :mod:`kernels.batched`): every hidden
activation, named by its permutation group (``layers.0``, ``convs.1``, ``stages.0``; a group with
several taps, as a ResNet stage, gives ``stages.0#0``, ``stages.0#1``, ...), plus the output
``logits``. Convolutional activations are flattened over channels and positions (``C * H * W``
features), as Kornblith et al. do.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import Tensor

from zoo.build.evaluate import functional_forward
from zoo.errors import ConfigError, MismatchError
from zoo.models.architectures import get_family, input_shape, normalize_config

__all__ = ["linear_cka", "activations", "population_cka", "model_cka"]

LOGITS = "logits"


def linear_cka(X: Tensor, Y: Tensor) -> Tensor:
    """Linear CKA of activation matrices over the same samples (see the module docstring).

    Shapes:
        X: ``[..., n, p]``; Y: ``[..., n, q]`` (leading axes broadcast). Returns ``[...]`` (float64).
        A constant activation (zero variance) gives NaN.
    """
    if X.shape[-2] != Y.shape[-2]:
        raise MismatchError(f"CKA needs activations on the same samples; got {X.shape[-2]} and {Y.shape[-2]} rows")
    X = X.double()
    Y = Y.double()
    X = X - X.mean(-2, keepdim=True)
    Y = Y - Y.mean(-2, keepdim=True)
    n, p, q = X.shape[-2], X.shape[-1], Y.shape[-1]
    if max(p, q) <= n:  # feature space: [p, q] cross-covariances
        xy = (Y.transpose(-1, -2) @ X).square().sum((-1, -2))
        xx = (X.transpose(-1, -2) @ X).square().sum((-1, -2)).sqrt()
        yy = (Y.transpose(-1, -2) @ Y).square().sum((-1, -2)).sqrt()
    else:  # sample space: [n, n] Gram matrices
        K, L = X @ X.transpose(-1, -2), Y @ Y.transpose(-1, -2)
        xy = (K * L).sum((-1, -2))
        xx = K.square().sum((-1, -2)).sqrt()
        yy = L.square().sum((-1, -2)).sqrt()
    return xy / (xx * yy)


def _check(config: Mapping) -> dict:
    cfg = normalize_config(config)
    fam = get_family(cfg)  # raw state dicts: ConfigError saying they cannot be run
    if fam.forward is None:
        raise ConfigError(f"architecture family {fam.name!r} has no batched forward; CKA needs its activations")
    return cfg


def activations(config: Mapping, params: Mapping[str, Tensor], X: Tensor) -> dict[str, Tensor]:
    """Every tapped hidden activation and the logits of ``N`` stacked models on a shared batch.

    Shapes:
        params: ``name -> [N, *shape]``; X: ``[B, *in]``. Returns ``{tap: [N, B, features]}``.
    """
    cfg = _check(config)
    want = input_shape(cfg)
    if tuple(X.shape[1:]) != tuple(want):
        raise MismatchError(f"the models take inputs of shape {list(want)}, the batch has {list(X.shape[1:])}")
    taps: dict[str, list[Tensor]] = {}
    with torch.no_grad():
        out = functional_forward(cfg, params, X.float(), taps=taps)
    n, b = out.shape[0], out.shape[1]
    acts: dict[str, Tensor] = {}
    for group, tensors in taps.items():
        for i, t in enumerate(tensors):
            name = group if len(tensors) == 1 else f"{group}#{i}"
            if t.dim() == 3:  # dense, feature-major [N, features, B]
                acts[name] = t.transpose(1, 2)
            else:  # conv, grouped [B, N*C, H, W]
                acts[name] = t.reshape(b, n, -1).transpose(0, 1)
    acts[LOGITS] = out
    return acts


def population_cka(
    config: Mapping,
    params: Mapping[str, Tensor],
    ref_config: Mapping,
    ref_state: Mapping[str, Tensor],
    X: Tensor,
    *,
    model_chunk: int = 64,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Tensor]:
    """Linear CKA of every model of a population against one reference model, layer by layer.

    The reference may have another architecture (another width): layers are matched by tap name
    and only the common ones are compared (:class:`MismatchError` when there are none).

    Shapes:
        params: ``name -> [N, *shape]``; ref_state: the reference's state dict ``name -> [*shape]``;
        X: ``[B, *in]``. Returns ``{layer: [N]}`` (float64), in tap order.
    """
    ref_cfg = _check(ref_config)
    ref = {k: v[0] for k, v in activations(ref_cfg, {k: v.unsqueeze(0) for k, v in ref_state.items()}, X).items()}
    n = next(iter(params.values())).shape[0]
    out: dict[str, list[Tensor]] = {}
    for c0 in range(0, n, max(1, model_chunk)):
        sl = slice(c0, min(n, c0 + max(1, model_chunk)))
        acts = activations(config, {k: v[sl] for k, v in params.items()}, X)
        common = [k for k in acts if k in ref]
        if not common:
            raise MismatchError(
                f"the population's layers ({', '.join(acts)}) and the reference's ({', '.join(ref)}) have no "
                "activation in common; compare models of the same family and depth"
            )
        for k in common:
            out.setdefault(k, []).append(linear_cka(acts[k], ref[k]))
        if progress is not None:
            progress(sl.stop - sl.start)
    return {k: torch.cat(v) for k, v in out.items()}


def model_cka(
    config_a: Mapping, state_a: Mapping[str, Tensor], config_b: Mapping, state_b: Mapping[str, Tensor], X: Tensor
) -> dict[str, float]:
    """Linear CKA between two models (state dicts), layer by layer: ``{layer: cka}``."""
    res = population_cka(config_a, {k: v.unsqueeze(0) for k, v in state_a.items()}, config_b, state_b, X)
    return {k: float(v[0]) for k, v in res.items()}
