"""Robust weight signatures: what a robust fine-tune changed, without what any fine-tune changes.

After Cai et al. 2023 (and their code): from a shared *base* (the pretrained / clean parent), a
*robust* fine-tune (trained on corrupted data) and a *clean* fine-tune of the same length, per tensor::

    d_r = robust - base,  d_c = clean - base
    signature = d_r - (<d_r, d_c> / <d_c, d_c>) d_c          (projection removed; d_r when d_c = 0)

Only the shallowest layers are kept (:mod:`analysis.rws.layers`): ``layers=k`` keeps the first k;
``norm_share=s`` keeps the fewest shallowest layers whose share of the signature's squared L2 norm
(summed over every layer) reaches ``s``. The kept layers' weights may be stored low rank (``rank=R``
or ``energy=E``: a truncated SVD) or sparse (``density=D``: the largest entries), see
:mod:`analysis.rws.forms`; every stored tensor is quantised (:mod:`analysis.rws.quant`: 8, 4 or 2
bits, per tensor or per channel; ``bits=None`` keeps float32).

    sig = extract(robust_sd, base_sd, clean_sd, config=cfg, norm_share=0.8, bits=8)
    sig = extract(robust_sd, base_sd, clean_sd, config=cfg, layers=2, rank=[8, None], bits=4)  # layer 1 rank 8
    sig.deltas             # {name: float32 tensor}: what patching adds (already decoded)
    sig.state_dict()       # the stored form (codes, lo, step per tensor or factor; or the float tensors)
    sig.meta()             # JSON: target architecture, kept layers, per-tensor forms, bits, projection, shares
    Signature.from_state_dict(sig.state_dict(), sig.meta())   # round trip
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from analysis.rws.forms import SEP, Form, check_density, check_energy, check_rank, decode_parts, encode
from analysis.rws.layers import Layer, is_buffer, layers_of
from analysis.rws.quant import check_bits, check_granularity
from zoo.errors import ConfigError, MismatchError
from zoo.models.architectures import normalize_config

__all__ = ["Signature", "extract", "project_out", "select_layers", "layer_ranks", "SEP"]

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
        deltas: ``name -> [*shape]`` float32, the decoded signature (what :func:`~analysis.rws.patch`
        adds); forms: ``name -> Form``, the stored form of each tensor (None for a signature that was
        moved in memory, e.g. permuted: it is then stored as float32).
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
    forms: dict[str, Form] | None = None
    #: the largest |approximation - decoded| over every kept entry: what quantisation changed (0 for float32)
    quantization_error: float = 0.0
    #: ||signature - approximation||_F / ||signature||_F over the kept tensors: what the low-rank truncation
    #: or the sparsification dropped (0 for dense signatures)
    approximation_error: float = 0.0
    #: ||signature - decoded||_F / ||signature||_F over the kept tensors (both together)
    relative_error: float = 0.0
    rank: Any = None  # as requested: an int, one per kept layer, or {layer: rank}
    energy: float | None = None
    density: float | None = None

    # --------------------------------------------------------------------------- storage
    def state_dict(self) -> dict[str, Tensor]:
        """The stored form: per tensor its parts ``name``, ``name::codes``, ``name::left::codes``, ..."""
        if self.forms is None:
            return {k: v.contiguous() for k, v in self.deltas.items()}
        out: dict[str, Tensor] = {}
        for k, f in self.forms.items():
            out.update({f"{k}{SEP}{part}" if part else k: t for part, t in f.parts().items()})
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
        if self.forms is not None:
            layout = {k: f.layout() for k, f in self.forms.items()}
        else:
            layout = {k: {"shape": list(v.shape), "form": "dense", "bits": None, "granularity": None} for k, v in self.deltas.items()}
        return {
            "kind": "rws", "target": self.target, "layers": list(self.layers), "tensors": layout,
            "bits": self.bits, "granularity": self.granularity, "projection": self.projection,
            "corruption": self.corruption, "severity": self.severity,
            "shares": {k: round(float(v), 6) for k, v in self.shares.items()}, "kept_share": round(self.kept_share, 6),
            "quantization_error": float(self.quantization_error), "approximation_error": float(self.approximation_error),
            "relative_error": float(self.relative_error), "rank": self.rank, "energy": self.energy, "density": self.density,
        }  # fmt: skip

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Tensor], meta: Mapping[str, Any]) -> Signature:
        """Rebuild a signature from its stored form and :meth:`meta` (also the layout before forms existed)."""
        try:
            layout, bits = meta["tensors"], meta["bits"]
            target = normalize_config(meta["target"])
        except (KeyError, TypeError) as e:
            raise MismatchError(f"not a robust weight signature (its metadata lacks {e}); "
                                "signatures are made by `weightzoo rws extract`") from None  # fmt: skip
        forms: dict[str, Form] = {}
        for name, info in layout.items():
            prefix = f"{name}{SEP}"
            parts = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
            if name in state:
                parts[""] = state[name]
            try:
                forms[name] = decode_parts(parts, info, bits=bits, granularity=meta.get("granularity"))
            except MismatchError as e:
                raise MismatchError(f"signature tensor {name!r}: {e}") from None
        return cls(deltas={k: f.decode() for k, f in forms.items()}, target=target, layers=list(meta.get("layers", [])),
                   bits=bits, granularity=meta.get("granularity", "tensor"), projection=bool(meta.get("projection", True)),
                   corruption=meta.get("corruption"), severity=meta.get("severity"),
                   shares=dict(meta.get("shares", {})), forms=forms,
                   quantization_error=float(meta.get("quantization_error", 0.0)),
                   approximation_error=float(meta.get("approximation_error", 0.0)),
                   relative_error=float(meta.get("relative_error", 0.0)), rank=meta.get("rank"),
                   energy=meta.get("energy"), density=meta.get("density"))  # fmt: skip


def layer_ranks(kept: Sequence[Layer], rank: Any) -> dict[str, int | None]:
    """Each kept layer's rank from ``rank``: one int for all, one per kept layer (None: dense), or {layer: rank}."""
    names = [lay.name for lay in kept]
    if rank is None:
        return dict.fromkeys(names)
    if isinstance(rank, Mapping):
        unknown = [k for k in rank if k not in names]
        if unknown:
            raise ConfigError(f"rank given for layer(s) {unknown} that the signature does not keep; kept layers: {names}")
        return {n: (None if rank.get(n) is None else check_rank(rank[n], f"rank of {n}")) for n in names}
    if isinstance(rank, Sequence) and not isinstance(rank, str):
        if len(rank) != len(names):
            raise ConfigError(f"give one rank per kept layer ({len(names)}: {names}) or one for all, got {len(rank)}")
        return {n: (None if r is None else check_rank(r, f"rank of {n}")) for n, r in zip(names, rank, strict=True)}
    return dict.fromkeys(names, check_rank(rank))


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
    rank: int | Sequence[int | None] | Mapping[str, int | None] | None = None,
    energy: float | None = None,
    density: float | None = None,
) -> Signature:
    """Extract the signature of ``robust`` against ``base`` (projection on ``clean - base`` removed).

    Args:
        robust, base, clean: state dicts of one architecture (``config``); ``clean`` is the clean
            fine-tune of ``base`` of the same length (needed unless ``projection=False``).
        layers / norm_share: which shallow layers to keep (see :func:`select_layers`).
        bits: 8, 4, 2 (min-max quantisation) or None (float32); granularity: "tensor" or "channel".
        rank: store each kept layer's weight as a truncated SVD of this rank (one int for all, one
            per kept layer or ``{layer: rank}``; None: dense); energy: instead, the smallest rank
            holding this share of the squared singular values, per weight; density: instead, keep
            this share of each weight's entries (largest magnitude). See :mod:`analysis.rws.forms`.
        corruption, severity: recorded with the signature (what the robust model was trained on).

    Shapes: every state dict ``name -> [*shape]``; the signature's deltas have the kept tensors' shapes.
    """
    cfg = normalize_config(config)
    b = check_bits(bits)
    check_granularity(granularity)
    given = [k for k, v in (("rank", rank), ("energy", energy), ("density", density)) if v is not None]
    if len(given) > 1:
        raise ConfigError(f"give one of rank, energy and density, not {' and '.join(given)}")
    if energy is not None:
        check_energy(energy)
    if density is not None:
        check_density(density)
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
    ranks = layer_ranks(kept, rank)
    forms: dict[str, Form] = {}
    for lay in kept:
        for k in lay.tensors:
            if ranks[lay.name] is not None or energy is not None:
                forms[k] = encode(full[k], form="lowrank", bits=b, granularity=granularity, rank=ranks[lay.name], energy=energy)
            elif density is not None:
                forms[k] = encode(full[k], form="sparse", bits=b, granularity=granularity, density=density)
            else:
                forms[k] = encode(full[k], form="dense", bits=b, granularity=granularity)
    deltas = {k: f.decode() for k, f in forms.items()}
    # the approximation before quantisation: the same forms in float32
    approx = {k: (deltas[k] if b is None else encode(full[k], form=f.form, bits=None, rank=f.rank,
                                                     density=density).decode()) for k, f in forms.items()}  # fmt: skip
    q_err = max((float((deltas[k] - approx[k]).abs().max()) for k in forms if deltas[k].numel()), default=0.0)
    norm = math.sqrt(sum(float(full[k].double().pow(2).sum()) for k in forms))

    def rel(x: Mapping[str, Tensor]) -> float:
        return math.sqrt(sum(float((full[k].double() - x[k].double()).pow(2).sum()) for k in forms)) / norm if norm > 0 else 0.0

    return Signature(deltas=deltas, target=cfg, layers=[lay.name for lay in kept], bits=b, granularity=granularity,
                     projection=projection, corruption=corruption, severity=severity, shares=shares, forms=forms,
                     quantization_error=q_err, approximation_error=rel(approx), relative_error=rel(deltas),
                     rank=rank if not isinstance(rank, Sequence) else list(rank), energy=energy,
                     density=density)  # fmt: skip
