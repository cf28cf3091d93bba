"""Patching models with robust weight signatures, composing several, and taking them off again.

As in Cai et al. 2023, ``K`` signatures at strength ``alpha`` patch a clean model by::

    patched = model + sum_k c_k * signature_k,      c_k = alpha_k / K   (normalize=True, the paper's)
                                                     c_k = alpha_k       (normalize=False)

``alpha`` is one number (every signature) or one per signature. Only the signatures' tensors change;
everything else (the head, BatchNorm statistics) is the model's own.

Unpatching subtracts the very same float32 sum, ``unpatched = patched - sum_k c_k * signature_k``, so
it restores the model whatever the quantisation (the dequantised signature is added and taken off
alike) up to float32 rounding: per entry ``|unpatched - model| <= 2**-23 * (|model| + |sum|)``, one
rounding of the addition and one of the subtraction (tested; typically 0 or 1 ulp). What the
quantisation does change is the patch itself: ``|signature - dequantised| <= step / 2`` per entry.

    from analysis.rws import patch, unpatch
    p = patch(clean_sd, [sig_blur, sig_noise], alpha=1.0, config=cfg)    # each at 1/2
    back = unpatch(p, [sig_blur, sig_noise], alpha=1.0, config=cfg)     # == clean_sd within rounding

A state may also be a stacked population (``name -> [N, *shape]``): every model gets the same patch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor

from analysis.rws.signature import Signature
from zoo.errors import ConfigError, MismatchError
from zoo.models.architectures import config_hash, normalize_config

__all__ = ["check_alpha", "alpha_list", "coefficients", "check_applicable", "combined_delta", "patch", "unpatch", "permute_signature"]


def check_alpha(alpha: Any, what: str = "alpha") -> float:
    """``alpha`` as a finite float, else :class:`ConfigError`."""
    if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not math.isfinite(float(alpha)):
        raise ConfigError(f"{what} must be a finite number (the signature's scale, e.g. 1.0), got {alpha!r}")
    return float(alpha)


def alpha_list(n: int, alpha: float | Sequence[float] = 1.0) -> list[float]:
    """One validated alpha per signature (``alpha`` is one number for all, or ``n`` numbers)."""
    if n < 1:
        raise ConfigError("give at least one signature to patch with")
    if isinstance(alpha, str) or not isinstance(alpha, Sequence):
        return [check_alpha(alpha)] * n
    if len(alpha) != n:
        raise ConfigError(f"give one alpha for all signatures or one per signature ({n}), got {len(alpha)}")
    return [check_alpha(a, f"alpha[{i}]") for i, a in enumerate(alpha)]


def coefficients(n: int, alpha: float | Sequence[float] = 1.0, *, normalize: bool = True) -> list[float]:
    """The scale of each of ``n`` signatures: ``alpha_k / n`` (``normalize``) or ``alpha_k``."""
    alphas = alpha_list(n, alpha)
    return [a / n for a in alphas] if normalize else alphas


def check_applicable(sig: Signature, state: Mapping[str, Tensor], config: Mapping[str, Any] | None = None, *,
                     strict: bool = True, label: str = "the signature") -> None:  # fmt: skip
    """Raise :class:`MismatchError` unless ``sig`` fits the model ``state`` (of architecture ``config``).

    ``strict``: the model's architecture must be the signature's (its ``target``); otherwise only the
    kept tensors' names and shapes must match (e.g. a signature of the first layer applied to a model
    with other deeper layers). A stacked state ``[N, *shape]`` is accepted.
    """
    if strict and config is not None and config_hash(normalize_config(config)) != config_hash(sig.target):
        raise MismatchError(
            f"{label} was extracted for {_describe(sig.target)} but the model is {_describe(normalize_config(config))}; "
            "patch a model of the signature's architecture (or, when only the kept layers must match, strict=False / "
            "--any-arch)"
        )
    for k, d in sig.deltas.items():
        if k not in state:
            raise MismatchError(f"{label} changes tensor {k!r}, which the model does not have "
                                f"(it has {sorted(state)[:6]}); patch a model of the signature's architecture")  # fmt: skip
        s = tuple(state[k].shape)
        if s != tuple(d.shape) and s[1:] != tuple(d.shape):
            raise MismatchError(f"{label} changes tensor {k!r} of shape {list(d.shape)}, but the model's has shape "
                                f"{list(s)}; patch a model of the signature's architecture")  # fmt: skip
        if not state[k].is_floating_point():
            raise MismatchError(f"tensor {k!r} of the model is {state[k].dtype}, not a float tensor")


def _describe(cfg: Mapping[str, Any]) -> str:
    keys = ", ".join(f"{k}={v}" for k, v in cfg.items() if k != "family" and k != "tensors")
    return f"{cfg.get('family')}({keys[:160]})"


def combined_delta(signatures: Sequence[Signature], coefs: Sequence[float]) -> dict[str, Tensor]:
    """``sum_k coefs[k] * signatures[k].deltas`` per tensor, float32, summed in the given order."""
    total: dict[str, Tensor] = {}
    for sig, c in zip(signatures, coefs, strict=True):
        for k, d in sig.deltas.items():
            term = d.float() * c
            total[k] = total[k] + term if k in total else term
    return total


def _apply(state: Mapping[str, Tensor], signatures: Sequence[Signature], alpha: float | Sequence[float],
           normalize: bool, config: Mapping[str, Any] | None, strict: bool, sign: float) -> dict[str, Tensor]:  # fmt: skip
    sigs = list(signatures)
    coefs = coefficients(len(sigs), alpha, normalize=normalize)
    for i, s in enumerate(sigs):
        check_applicable(s, state, config, strict=strict, label=f"signature {i}" if len(sigs) > 1 else "the signature")
    total = combined_delta(sigs, coefs)
    out = dict(state)
    for k, d in total.items():
        v = state[k]
        out[k] = (v.float() + d if sign > 0 else v.float() - d).to(v.dtype)
    return out


def patch(state: Mapping[str, Tensor], signatures: Signature | Sequence[Signature], *, alpha: float | Sequence[float] = 1.0,
          normalize: bool = True, config: Mapping[str, Any] | None = None, strict: bool = True) -> dict[str, Tensor]:  # fmt: skip
    """``state`` with ``sum_k c_k * signature_k`` added (see the module docstring); a new dict.

    Shapes: state ``name -> [*shape]`` or ``[N, *shape]``; returns the same shapes.
    """
    sigs = [signatures] if isinstance(signatures, Signature) else list(signatures)
    return _apply(state, sigs, alpha, normalize, config, strict, +1.0)


def unpatch(state: Mapping[str, Tensor], signatures: Signature | Sequence[Signature], *,
            alpha: float | Sequence[float] = 1.0, normalize: bool = True, config: Mapping[str, Any] | None = None,
            strict: bool = True) -> dict[str, Tensor]:  # fmt: skip
    """Take off what :func:`patch` with the same arguments added (exact up to float32 rounding)."""
    sigs = [signatures] if isinstance(signatures, Signature) else list(signatures)
    return _apply(state, sigs, alpha, normalize, config, strict, -1.0)


def permute_signature(sig: Signature, spec: Any, perms: Mapping[str, Tensor]) -> Signature:
    """The signature with its neurons reordered by ``perms`` (a permutation of ``spec``, see
    :func:`weightspace.spec.apply_permutation`): to patch a model ``m`` aligned as ``P(m) ~ base``,
    use ``permute_signature(sig, spec, invert_permutation(P))`` on ``m`` itself, so the patched model
    keeps ``m``'s neuron order.
    """
    from dataclasses import replace

    from weightspace.spec import apply_permutation

    moved = apply_permutation(spec, {p: v for p, v in perms.items() if p in spec.perms}, sig.deltas)
    return replace(sig, deltas={k: v.contiguous() for k, v in moved.items()}, forms=None)
