"""Robust weight signatures: what a robust fine-tune changed, without what any fine-tune changes.

After Cai et al. 2023 (and their code): from a shared *base* (the pretrained / clean parent), a
*robust* fine-tune (trained on corrupted data) and a *clean* fine-tune of the same length, per tensor::

    d_r = robust - base,  d_c = clean - base
    signature = d_r - (<d_r, d_c> / <d_c, d_c>) d_c          (projection removed; d_r when d_c = 0)

Only the shallowest layers are kept (:mod:`analysis.rws.layers`): ``layers=k`` keeps the first k;
``norm_share=s`` keeps the fewest shallowest layers whose share of the signature's squared L2 norm
(summed over every layer) reaches ``s``. The kept tensors are quantised (:mod:`analysis.rws.quant`:
8, 4 or 2 bits, per tensor or per channel; ``bits=None`` keeps float32).

    sig = extract(robust_sd, base_sd, clean_sd, config=cfg, norm_share=0.8, bits=8)
    sig.deltas             # {name: float32 tensor}: what patching adds (already dequantised)
    sig.state_dict()       # the stored form (codes, lo, step per tensor; or the float tensors)
    sig.meta()             # JSON: target architecture, kept layers, shapes, bits, projection, shares
    Signature.from_state_dict(sig.state_dict(), sig.meta())   # round trip
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from analysis.rws.layers import Layer, is_buffer, layers_of
from analysis.rws.quant import QTensor, check_bits, check_granularity, quantize
from zoo.errors import ConfigError, MismatchError
from zoo.models.architectures import normalize_config

__all__ = ["Signature", "extract", "project_out", "select_layers", "SEP"]

#: separates a tensor's name from its quantised part in the stored state dict (``layers.0.weight::codes``)
SEP = "::"
#: default layer selection: the shallowest layers holding 80% of the signature's squared norm
DEFAULT_NORM_SHARE = 0.8


def project_out(d_r: Tensor, d_c: Tensor) -> Tensor:
    """``d_r`` minus its projection on ``d_c`` (flattened inner products; ``d_r`` itself when ``d_c`` is 0).

    Computed in float64 and returned as float32. Shapes: ``d_r``, ``d_c``: the same shape; returns it.
    """
    a, c = d_r.double().reshape(-1), d_c.double().reshape(-1)
    cc = float(c @ c)
    if cc == 0.0:
        return d_r.float().clone()
    return (a - (float(a @ c) / cc) * c).reshape(d_r.shape).float()


def select_layers(layers: Sequence[Layer], sq_norms: Mapping[str, float], *, count: int | None = None,
                  norm_share: float | None = None) -> tuple[list[Layer], dict[str, float]]:  # fmt: skip
    """The kept layers (shallowest first) and every layer's share of the squared norm.

    Exactly one of ``count`` (keep the first ``count`` layers) and ``norm_share`` (keep layers from the
    shallowest until their cumulative share reaches it) is used; neither given means
    ``norm_share=0.8``.
    """
    if count is not None and norm_share is not None:
        raise ConfigError("give either layers (a count) or norm_share, not both")
    total = sum(sq_norms[t] for lay in layers for t in lay.tensors)
    shares = {lay.name: (sum(sq_norms[t] for t in lay.tensors) / total if total > 0 else 0.0) for lay in layers}
    if count is not None:
        if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= len(layers):
            raise ConfigError(f"layers must be an integer from 1 to {len(layers)} (this model has {len(layers)} layers), "
                              f"got {count!r}")  # fmt: skip
        return list(layers[:count]), shares
    s = DEFAULT_NORM_SHARE if norm_share is None else norm_share
    if isinstance(s, bool) or not isinstance(s, int | float) or not 0 < s <= 1:
        raise ConfigError(f"norm_share must be a number in (0, 1], got {norm_share!r}")
    kept, acc = [], 0.0
    for lay in layers:
        kept.append(lay)
        acc += shares[lay.name]
        if acc >= s - 1e-12:
            break
    return kept, shares


@dataclass
class Signature:
    """A robust weight signature: the deltas it adds to the kept tensors of models of one architecture.

    Shapes:
        deltas: ``name -> [*shape]`` float32, the dequantised signature (what :func:`~analysis.rws.patch`
        adds); quantized: ``name -> QTensor`` when ``bits`` is not None.
    """

    deltas: dict[str, Tensor]
    target: dict[str, Any]  # the normalised architecture config of the models it patches
    layers: list[str]
    bits: int | None = 8
    granularity: str = "tensor"
    projection: bool = True
    corruption: str | None = None
    severity: int | None = None
    shares: dict[str, float] = field(default_factory=dict)  # every layer's share of the squared norm
    quantized: dict[str, QTensor] | None = None
    #: the largest |signature - dequantised| over every kept entry (0 for float32)
    quantization_error: float = 0.0

    # --------------------------------------------------------------------------- storage
    def state_dict(self) -> dict[str, Tensor]:
        """The stored form: ``name::codes``, ``name::lo``, ``name::step`` per tensor, or the float tensors."""
        if self.quantized is None:
            return {k: v.contiguous() for k, v in self.deltas.items()}
        out: dict[str, Tensor] = {}
        for k, q in self.quantized.items():
            out.update({f"{k}{SEP}{part}": t for part, t in q.tensors().items()})
        return out

    @property
    def nbytes(self) -> int:
        """Bytes of the stored form."""
        return sum(t.numel() * t.element_size() for t in self.state_dict().values())

    @property
    def kept_share(self) -> float:
        """The kept layers' share of the signature's squared norm."""
        return float(sum(self.shares.get(n, 0.0) for n in self.layers))

    def meta(self) -> dict[str, Any]:
        """Everything but the tensors, JSON-able (stored as the ``rws.extract`` lineage params)."""
        layout = {k: {"shape": list(v.shape), "granularity": (self.quantized[k].granularity if self.quantized else None)}
                  for k, v in self.deltas.items()}  # fmt: skip
        return {
            "kind": "rws", "target": self.target, "layers": list(self.layers), "tensors": layout,
            "bits": self.bits, "granularity": self.granularity, "projection": self.projection,
            "corruption": self.corruption, "severity": self.severity,
            "shares": {k: round(float(v), 6) for k, v in self.shares.items()}, "kept_share": round(self.kept_share, 6),
            "quantization_error": float(self.quantization_error),
        }  # fmt: skip

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Tensor], meta: Mapping[str, Any]) -> Signature:
        """Rebuild a signature from its stored form and :meth:`meta`."""
        try:
            layout, bits = meta["tensors"], meta["bits"]
            target = normalize_config(meta["target"])
        except (KeyError, TypeError) as e:
            raise MismatchError(f"not a robust weight signature (its metadata lacks {e}); "
                                "signatures are made by `weightzoo rws extract`") from None  # fmt: skip
        deltas: dict[str, Tensor] = {}
        quantized: dict[str, QTensor] | None = {} if bits is not None else None
        for name, info in layout.items():
            if bits is None:
                if name not in state:
                    raise MismatchError(f"signature tensor {name!r} is missing from the stored state dict")
                deltas[name] = state[name].float()
            else:
                parts = {p: state[f"{name}{SEP}{p}"] for p in ("codes", "lo", "step") if f"{name}{SEP}{p}" in state}
                q = QTensor.from_tensors(parts, shape=info["shape"], bits=int(bits), granularity=info.get("granularity") or "tensor")
                quantized[name] = q  # type: ignore[index]
                deltas[name] = q.dequantize()
        return cls(deltas=deltas, target=target, layers=list(meta.get("layers", [])), bits=bits,
                   granularity=meta.get("granularity", "tensor"), projection=bool(meta.get("projection", True)),
                   corruption=meta.get("corruption"), severity=meta.get("severity"),
                   shares=dict(meta.get("shares", {})), quantized=quantized,
                   quantization_error=float(meta.get("quantization_error", 0.0)))  # fmt: skip


def _check_states(config: Mapping[str, Any], **states: Mapping[str, Tensor] | None) -> dict[str, Tensor]:
    """The float tensors every given state shares, after checking names and shapes agree."""
    named = {k: v for k, v in states.items() if v is not None}
    first_name, first = next(iter(named.items()))
    for other_name, other in named.items():
        if set(other) != set(first):
            diff = sorted(set(other) ^ set(first))[:4]
            raise MismatchError(f"the {other_name} and {first_name} models have different tensors ({diff}); "
                                "a signature needs three models of one architecture")  # fmt: skip
        for k, v in other.items():
            if tuple(v.shape) != tuple(first[k].shape):
                raise MismatchError(f"tensor {k!r}: {other_name} has shape {list(v.shape)}, {first_name} "
                                    f"{list(first[k].shape)}; a signature needs three models of one architecture")  # fmt: skip
    return {k: v for k, v in first.items() if v.is_floating_point() and not is_buffer(k)}


def extract(
    robust: Mapping[str, Tensor],
    base: Mapping[str, Tensor],
    clean: Mapping[str, Tensor] | None = None,
    *,
    config: Mapping[str, Any],
    layers: int | None = None,
    norm_share: float | None = None,
    bits: int | None = 8,
    granularity: str = "tensor",
    projection: bool = True,
    corruption: str | None = None,
    severity: int | None = None,
) -> Signature:
    """Extract the signature of ``robust`` against ``base`` (projection on ``clean - base`` removed).

    Args:
        robust, base, clean: state dicts of one architecture (``config``); ``clean`` is the clean
            fine-tune of ``base`` of the same length (needed unless ``projection=False``).
        layers / norm_share: which shallow layers to keep (see :func:`select_layers`).
        bits: 8, 4, 2 (min-max quantisation) or None (float32); granularity: "tensor" or "channel".
        corruption, severity: recorded with the signature (what the robust model was trained on).

    Shapes: every state dict ``name -> [*shape]``; the signature's deltas have the kept tensors' shapes.
    """
    cfg = normalize_config(config)
    b = check_bits(bits)
    check_granularity(granularity)
    if projection and clean is None:
        raise ConfigError("removing the projection needs the clean fine-tune of the base (clean=...); "
                          "or pass projection=False to keep the raw difference robust - base")  # fmt: skip
    floats = _check_states(cfg, robust=robust, base=base, clean=clean if projection else None)
    if not floats:
        raise MismatchError("the models have no float parameters to take a signature of")
    full: dict[str, Tensor] = {}
    for k in floats:
        d_r = robust[k].float() - base[k].float()
        full[k] = project_out(d_r, clean[k].float() - base[k].float()) if projection else d_r  # type: ignore[index]
    if not all(torch.isfinite(v).all() for v in full.values()):
        raise MismatchError("the weight difference holds NaN or infinite values; check the models")
    lays = layers_of(cfg, {k: robust[k] for k in floats})
    kept, shares = select_layers(lays, {k: float(v.double().pow(2).sum()) for k, v in full.items()},
                                 count=layers, norm_share=norm_share)  # fmt: skip
    names = [t for lay in kept for t in lay.tensors]
    deltas = {k: full[k] for k in names}
    quantized, err = None, 0.0
    if b is not None:
        quantized = {k: quantize(v, b, granularity) for k, v in deltas.items()}
        deq = {k: q.dequantize() for k, q in quantized.items()}
        err = max((float((deq[k] - deltas[k]).abs().max()) for k in names if deltas[k].numel()), default=0.0)
        deltas = deq
    return Signature(deltas=deltas, target=cfg, layers=[lay.name for lay in kept], bits=b, granularity=granularity,
                     projection=projection, corruption=corruption, severity=severity, shares=shares,
                     quantized=quantized, quantization_error=err)  # fmt: skip
