"""How one signature tensor is stored: dense, low rank or sparse, each float32 or min-max quantised.

A signature tensor ``s`` (a kept layer's weight, bias or norm parameter) is stored in one *form*:

``dense``
    ``s`` itself, float32 or quantised (:mod:`analysis.rws.quant`): stored parts ``NAME`` or
    ``NAME::codes``, ``NAME::lo``, ``NAME::step`` (the layout of the first signatures, unchanged).
``lowrank``
    the truncated SVD of ``s`` as a matrix ``[out, rest]`` (a conv kernel ``[out, in, kh, kw]`` is
    reshaped to ``[out, in*kh*kw]``): ``left = U_r S_r`` ``[out, r]`` and ``right = V_r^T`` ``[r, rest]``,
    each float32 or quantised on its own (per channel: per output row of ``left``, per component of
    ``right``). Stored parts ``NAME::left[::codes|::lo|::step]`` and ``NAME::right[...]``. Decoded as
    ``sum_k left[:, k] right[k, :]`` in float64, component by component (the same order every time, so
    the decoded signature does not depend on the BLAS or the thread count), rounded to float32.
``sparse``
    the ``k = ceil(density * numel)`` entries of largest magnitude (ties: the lower flat index), the
    others zero: their values (float32 or quantised, min-max over the kept values) in flat-index order,
    and their positions either as a bit mask packed eight to a byte (``NAME::mask``, ``ceil(numel / 8)``
    bytes) or as flat indices (``NAME::index``, int16 when ``numel <= 32768``, else int32), whichever
    is smaller.

Error statements (tested):

* dense: ``|s - s_hat| <= step / 2`` per entry (``step`` of the entry's tensor or channel).
* lowrank, before quantisation: ``||s - L R||_F^2 = sum_{i > r} sigma_i^2`` (Eckart-Young: the best
  rank-r approximation); after quantising ``L`` and ``R`` (steps ``a_i`` per row of ``L`` or one ``a``,
  ``b_k`` per row of ``R`` or one ``b``), per entry
  ``|L R - L_hat R_hat|_ij <= sum_k (a_i / 2 |R_hat_kj| + |L_ik| b_k / 2)`` (:func:`lowrank_bound`).
* sparse, before quantisation: ``||s - s_k||_F^2`` = the sum of the dropped entries' squares; the kept
  values are within ``step / 2`` after quantisation, the dropped ones stay exactly zero.

Low rank is only used where it saves bytes, ``r (out + rest) < out * rest``; sparse and low rank apply
to weights (rank >= 2), vectors (biases, norm parameters) stay dense.

    f = encode(s, form="lowrank", rank=4, bits=8)      # or form="dense" / "sparse" (density=0.2)
    f.decode(), f.parts(), f.layout(), f.nbytes
    decode_parts(f.parts(), f.layout())                 # the same tensor, from the stored form
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from analysis.rws.quant import QTensor, check_bits, quantize
from zoo.errors import ConfigError, MismatchError

__all__ = ["FORMS", "Form", "Coded", "encode", "decode_parts", "lowrank_bound", "energy_rank", "check_rank",
           "check_density", "check_energy", "SEP"]  # fmt: skip

#: separates a tensor's name from its stored parts (``layers.0.weight::left::codes``)
SEP = "::"
FormName = Literal["dense", "lowrank", "sparse"]
FORMS: tuple[str, ...] = ("dense", "lowrank", "sparse")

#: a float32 tensor or its quantised form
Coded = Tensor | QTensor


def check_rank(rank: object, what: str = "rank") -> int:
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ConfigError(f"{what} must be a positive integer (the number of singular components kept), got {rank!r}")
    return rank


def check_energy(energy: object) -> float:
    if isinstance(energy, bool) or not isinstance(energy, int | float) or not 0 < energy <= 1:
        raise ConfigError(f"energy must be a number in (0, 1] (the share of the squared singular values kept), got {energy!r}")
    return float(energy)


def check_density(density: object) -> float:
    if isinstance(density, bool) or not isinstance(density, int | float) or not 0 < density <= 1:
        raise ConfigError(f"density must be a number in (0, 1] (the share of entries kept), got {density!r}")
    return float(density)


def _code(t: Tensor, bits: int | None, granularity: str) -> Coded:
    return t.float().contiguous() if bits is None else quantize(t, bits, granularity)


def _float(c: Coded) -> Tensor:
    return c.dequantize() if isinstance(c, QTensor) else c


def _nbytes(c: Coded) -> int:
    return c.nbytes if isinstance(c, QTensor) else c.numel() * c.element_size()


def _parts_of(prefix: str, c: Coded) -> dict[str, Tensor]:
    if isinstance(c, QTensor):
        return {f"{prefix}{SEP}{p}" if prefix else p: t for p, t in c.tensors().items()}
    return {prefix: c}


def _read(parts: Mapping[str, Tensor], prefix: str, shape: tuple[int, ...], bits: int | None, granularity: str) -> Coded:
    if bits is None:
        if prefix not in parts:
            raise MismatchError(f"stored part {prefix or 'value'!r} is missing")
        t = parts[prefix]
        if tuple(t.shape) != shape:
            raise MismatchError(f"stored part {prefix or 'value'!r} has shape {list(t.shape)}, expected {list(shape)}")
        return t.float()
    sub = {p: parts[f"{prefix}{SEP}{p}" if prefix else p] for p in ("codes", "lo", "step")
           if (f"{prefix}{SEP}{p}" if prefix else p) in parts}  # fmt: skip
    return QTensor.from_tensors(sub, shape=shape, bits=bits, granularity=granularity)


@dataclass(frozen=True)
class Form:
    """One stored signature tensor (see the module docstring).

    Shapes: ``shape`` is the tensor's; dense ``value``: ``shape``; lowrank ``left`` ``[out, r]``,
    ``right`` ``[r, rest]``; sparse ``values`` ``[k]`` and ``positions`` (``mask`` ``[ceil(numel/8)]``
    uint8 or ``index`` ``[k]`` int16/int32).
    """

    form: str
    shape: tuple[int, ...]
    bits: int | None
    granularity: str
    value: Coded | None = None  # dense
    left: Coded | None = None  # lowrank
    right: Coded | None = None
    values: Coded | None = None  # sparse
    positions: Tensor | None = None
    coding: str | None = None  # sparse: "mask" or "index"

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def rank(self) -> int | None:
        return None if self.left is None else int(self.left.shape[1])

    @property
    def count(self) -> int | None:
        """Sparse: the number of kept entries."""
        return None if self.values is None else int(self.values.shape[0])

    def decode(self) -> Tensor:
        """The float32 tensor this form stands for (deterministic, see the module docstring)."""
        if self.form == "dense":
            return _float(self.value).reshape(self.shape)  # type: ignore[arg-type]
        if self.form == "lowrank":
            L, R = _float(self.left).double(), _float(self.right).double()  # type: ignore[arg-type]
            out = torch.zeros(L.shape[0], R.shape[1], dtype=torch.float64)
            for k in range(L.shape[1]):
                out += L[:, k, None] * R[None, k, :]
            return out.float().reshape(self.shape)
        flat = torch.zeros(self.numel, dtype=torch.float32)
        flat[_positions(self)] = _float(self.values)  # type: ignore[arg-type]
        return flat.reshape(self.shape)

    def parts(self) -> dict[str, Tensor]:
        """The stored tensors, keyed by the suffix after ``NAME`` (``""`` for a dense float tensor)."""
        if self.form == "dense":
            return _parts_of("", self.value)  # type: ignore[arg-type]
        if self.form == "lowrank":
            return {**_parts_of("left", self.left), **_parts_of("right", self.right)}  # type: ignore[arg-type]
        return {**_parts_of("values", self.values), self.coding: self.positions}  # type: ignore[dict-item, arg-type]

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.parts().values())

    def layout(self) -> dict[str, Any]:
        """JSON-able description; with :meth:`parts` all :func:`decode_parts` needs."""
        out: dict[str, Any] = {"shape": list(self.shape), "form": self.form, "bits": self.bits,
                               "granularity": self._granularity()}  # fmt: skip
        if self.form == "lowrank":
            out["rank"] = self.rank
        if self.form == "sparse":
            out.update(count=self.count, coding=self.coding)
        return out

    def _granularity(self) -> str | None:
        if self.bits is None:
            return None
        coded = {"dense": self.value, "lowrank": self.left, "sparse": self.values}[self.form]
        return coded.granularity if isinstance(coded, QTensor) else None


def _positions(f: Form) -> Tensor:
    """The kept entries' flat indices (sorted) of a sparse form."""
    if f.coding == "index":
        return f.positions.to(torch.int64)  # type: ignore[union-attr]
    bits = (f.positions.to(torch.int64).unsqueeze(1) >> torch.arange(8)) & 1  # type: ignore[union-attr]
    return bits.reshape(-1)[: f.numel].nonzero().reshape(-1)


def energy_rank(matrix: Tensor, energy: float) -> int:
    """The smallest r whose first r singular values hold ``energy`` of the sum of their squares."""
    sv2 = torch.linalg.svdvals(matrix.double()).pow(2)
    total = float(sv2.sum())
    if total == 0.0:
        return 1
    cum = sv2.cumsum(0) / total
    return int((cum < energy - 1e-12).sum()) + 1


def saves_bytes(shape: tuple[int, ...], rank: int) -> bool:
    """True when a rank-``rank`` factorisation of a tensor of ``shape`` has fewer entries than the tensor."""
    out, rest = shape[0], math.prod(shape[1:])
    return rank * (out + rest) < out * rest


def encode(t: Tensor, *, form: str = "dense", bits: int | None = 8, granularity: str = "tensor",
           rank: int | None = None, energy: float | None = None, density: float | None = None) -> Form:  # fmt: skip
    """Store ``t`` in ``form`` (lowrank: ``rank`` or ``energy``; sparse: ``density``).

    A lowrank form of a vector, or one whose factors would not be smaller than ``t``, falls back to
    dense (the returned form says which); so does a sparse form of a vector.

    Shapes: t ``[*shape]``.
    """
    b = check_bits(bits)
    x = t.detach().float().contiguous()
    shape = tuple(x.shape)
    if form not in FORMS:
        raise ConfigError(f"unknown signature form {form!r}; valid: {', '.join(FORMS)}")
    if form != "dense" and x.dim() < 2:
        form = "dense"
    if form == "lowrank":
        m = x.reshape(shape[0], -1).double()
        if rank is None and energy is None:
            raise ConfigError("a low-rank signature needs rank=R or energy=E")
        r = check_rank(rank) if rank is not None else energy_rank(m, check_energy(energy))
        r = min(r, min(m.shape))
        if saves_bytes(shape, r):
            U, S, Vh = torch.linalg.svd(m, full_matrices=False)
            left, right = (U[:, :r] * S[:r]).float(), Vh[:r].float()
            return Form("lowrank", shape, b, granularity, left=_code(left, b, granularity), right=_code(right, b, granularity))
        form = "dense"
    if form == "sparse":
        d = check_density(density if density is not None else 1.0)
        flat = x.reshape(-1)
        k = max(1, math.ceil(d * flat.numel()))
        order = torch.sort(flat.abs(), descending=True, stable=True).indices[:k]
        idx = torch.sort(order).values
        n = flat.numel()
        mask_bytes, index_bytes = math.ceil(n / 8), k * (2 if n <= 32768 else 4)
        if mask_bytes <= index_bytes:
            bitmap = torch.zeros(mask_bytes * 8, dtype=torch.int64)
            bitmap[idx] = 1
            pos = (bitmap.view(-1, 8) << torch.arange(8)).sum(1).to(torch.uint8)
            coding = "mask"
        else:
            pos, coding = idx.to(torch.int16 if n <= 32768 else torch.int32), "index"
        return Form("sparse", shape, b, granularity, values=_code(flat[idx], b, "tensor"), positions=pos, coding=coding)
    return Form("dense", shape, b, granularity, value=_code(x, b, granularity))


def decode_parts(parts: Mapping[str, Tensor], layout: Mapping[str, Any], *, bits: int | None = None,
                 granularity: str | None = None) -> Form:  # fmt: skip
    """Rebuild a :class:`Form` from :meth:`Form.parts` and :meth:`Form.layout` (checked against each other).

    ``bits`` / ``granularity`` are the signature-wide values, used when ``layout`` lacks them (the
    layouts of signatures stored before forms existed: ``{"shape", "granularity"}``, dense).
    """
    shape = tuple(int(s) for s in layout["shape"])
    form = layout.get("form", "dense")
    b = layout["bits"] if "bits" in layout else bits
    gran = layout.get("granularity") or granularity or "tensor"
    if form == "dense":
        return Form("dense", shape, b, gran, value=_read(parts, "", shape, b, gran))
    if form == "lowrank":
        r = int(layout["rank"])
        out, rest = shape[0], math.prod(shape[1:])
        left, right = _read(parts, "left", (out, r), b, gran), _read(parts, "right", (r, rest), b, gran)
        return Form("lowrank", shape, b, gran, left=left, right=right)
    if form == "sparse":
        k, coding, n = int(layout["count"]), layout["coding"], math.prod(shape)
        if coding not in ("mask", "index") or coding not in parts:
            raise MismatchError(f"a sparse signature tensor needs its positions ({coding!r}); the stored form lacks them")
        pos = parts[coding]
        f = Form("sparse", shape, b, gran, values=_read(parts, "values", (k,), b, "tensor"), positions=pos, coding=coding)
        want = math.ceil(n / 8) if coding == "mask" else k
        if pos.dim() != 1 or pos.numel() != want or len(_positions(f)) != k:
            raise MismatchError(f"the positions of a sparse signature tensor of shape {list(shape)} do not fit its "
                                f"{k} kept entries")  # fmt: skip
        return f
    raise MismatchError(f"unknown signature form {form!r} in the stored layout; valid: {', '.join(FORMS)}")


def lowrank_bound(f: Form) -> Tensor:
    """Per-entry bound on ``|L R - decode()|`` from quantising the factors (zero for float factors).

    ``|L R - L_hat R_hat|_ij <= sum_k (a_i / 2 |R_hat_kj| + |L_ik| b_k / 2)``, with ``|L - L_hat| <= a / 2``
    and ``|R - R_hat| <= b / 2`` entrywise; ``|L_ik| <= |L_hat_ik| + a_i / 2`` as ``L`` is not stored.

    Shapes: returns ``[out, rest]``.
    """
    if f.form != "lowrank":
        raise ConfigError("lowrank_bound needs a low-rank form")
    L_hat, R_hat = _float(f.left).double(), _float(f.right).double()  # type: ignore[arg-type]

    def half(c: Coded, rows: int, cols: int) -> Tensor:
        if not isinstance(c, QTensor):
            return torch.zeros(rows, cols, dtype=torch.float64)
        s = c.step.double()
        return (s.view(-1, 1) if s.dim() else s).expand(rows, cols) / 2

    a, b = half(f.left, *L_hat.shape), half(f.right, *R_hat.shape)  # type: ignore[arg-type]
    return a @ R_hat.abs() + (L_hat.abs() + a) @ b
