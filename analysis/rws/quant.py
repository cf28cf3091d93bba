"""Min-max (affine) quantisation of signature tensors: 8, 4 or 2 bits, per tensor or per output channel.

As in the authors' code of Robust Weight Signatures (a per-tensor ``linear_quant`` between the
tensor's minimum and maximum), a tensor ``t`` becomes integer codes ``q`` in ``[0, 2**bits - 1]``::

    lo = min(t), step = (max(t) - min(t)) / (2**bits - 1), q = round((t - lo) / step)
    dequantise: t_hat = lo + q * step,            |t - t_hat| <= step / 2 for every entry

Per channel, ``lo`` and ``step`` are taken over each slice ``t[c]`` of the first (output) axis; only
tensors of rank >= 2 are quantised per channel (a bias per channel would store two floats per entry,
more than the float itself), smaller ones per tensor. A constant tensor (or channel) has ``step = 0``
and is restored exactly. Codes of 4 and 2 bits are packed two and four to a byte (little end first),
so the stored size is ``ceil(numel * bits / 8)`` bytes plus 8 bytes per ``(lo, step)`` pair.

    qt = quantize(t, bits=4, granularity="channel")
    t_hat = qt.dequantize()
    qt.nbytes            # what it takes in the store
    QTensor.from_tensors(qt.tensors(), shape=t.shape, bits=4, granularity="channel")   # round trip
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from zoo.errors import ConfigError, MismatchError

__all__ = ["BITS", "GRANULARITIES", "Granularity", "QTensor", "quantize", "check_bits", "check_granularity"]

#: the supported code widths (None or 32 keeps float32)
BITS: tuple[int, ...] = (8, 4, 2)
Granularity = Literal["tensor", "channel"]
GRANULARITIES: tuple[str, ...] = ("tensor", "channel")
#: the suffixes of a quantised tensor's three stored parts
PARTS = ("codes", "lo", "step")


def check_bits(bits: object) -> int | None:
    """``bits`` as stored: 8, 4 or 2, or None for float32 (32 is accepted as None)."""
    if bits is None or (isinstance(bits, int) and not isinstance(bits, bool) and bits == 32):
        return None
    if isinstance(bits, bool) or not isinstance(bits, int) or bits not in BITS:
        raise ConfigError(f"bits must be one of {', '.join(map(str, BITS))} (or 32 / None: unquantised), got {bits!r}")
    return bits


def check_granularity(granularity: object) -> str:
    if granularity not in GRANULARITIES:
        raise ConfigError(f"unknown quantisation granularity {granularity!r}; valid: {', '.join(GRANULARITIES)}")
    return str(granularity)


def _pack(q: Tensor, bits: int) -> Tensor:
    """Codes ``[n]`` (int64 in ``[0, 2**bits)``) -> bytes ``[ceil(n * bits / 8)]`` uint8."""
    per = 8 // bits
    n = q.numel()
    pad = (-n) % per
    q = torch.cat([q, q.new_zeros(pad)]).view(-1, per)
    shifts = torch.arange(per, dtype=torch.int64) * bits
    return (q << shifts).sum(1).to(torch.uint8)


def _unpack(b: Tensor, bits: int, n: int) -> Tensor:
    """The inverse of :func:`_pack`: bytes -> the first ``n`` codes (int64)."""
    per = 8 // bits
    shifts = torch.arange(per, dtype=torch.int64) * bits
    q = (b.to(torch.int64).unsqueeze(1) >> shifts) & ((1 << bits) - 1)
    return q.reshape(-1)[:n]


@dataclass(frozen=True)
class QTensor:
    """A quantised tensor: packed codes and the affine parameters to restore it.

    Shapes:
        codes: ``[ceil(numel * bits / 8)]`` uint8; lo, step: ``[]`` (per tensor) or ``[C]`` (per channel,
        ``C = shape[0]``), float32; ``shape`` is the original tensor's.
    """

    codes: Tensor
    lo: Tensor
    step: Tensor
    shape: tuple[int, ...]
    bits: int
    granularity: str

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        """Bytes it takes in the store (codes + lo + step)."""
        return sum(t.numel() * t.element_size() for t in (self.codes, self.lo, self.step))

    def dequantize(self) -> Tensor:
        """The float32 tensor ``lo + code * step`` in the original shape."""
        q = _unpack(self.codes, self.bits, self.numel).to(torch.float32)
        if self.lo.dim() == 0:
            return (self.lo + q * self.step).reshape(self.shape)
        rows = q.view(self.shape[0], -1)
        return (self.lo.unsqueeze(1) + rows * self.step.unsqueeze(1)).reshape(self.shape)

    def tensors(self) -> dict[str, Tensor]:
        """The three stored parts, keyed ``codes``, ``lo``, ``step``."""
        return {"codes": self.codes, "lo": self.lo, "step": self.step}

    @classmethod
    def from_tensors(cls, parts: Mapping[str, Tensor], *, shape: tuple[int, ...] | list[int], bits: int,
                     granularity: str) -> QTensor:  # fmt: skip
        """Rebuild from :meth:`tensors` (checks that the parts fit the shape and width)."""
        shape = tuple(int(s) for s in shape)
        missing = [p for p in PARTS if p not in parts]
        if missing:
            raise MismatchError(f"a quantised tensor needs parts {list(PARTS)}; missing {missing}")
        codes, lo, step = parts["codes"], parts["lo"], parts["step"]
        want = math.ceil(math.prod(shape) * bits / 8)
        if codes.dtype != torch.uint8 or codes.dim() != 1 or codes.numel() != want:
            raise MismatchError(f"codes of a {bits}-bit tensor of shape {list(shape)} must be {want} uint8 bytes, "
                                f"got {codes.dtype} of shape {list(codes.shape)}")  # fmt: skip
        if lo.shape != step.shape or lo.dim() > 1 or (lo.dim() == 1 and (not shape or lo.numel() != shape[0])):
            raise MismatchError(f"lo/step of shape {list(lo.shape)} do not fit a tensor of shape {list(shape)}")
        return cls(codes, lo.float(), step.float(), shape, int(bits), granularity)


def quantize(t: Tensor, bits: int, granularity: str = "tensor") -> QTensor:
    """Min-max quantise ``t`` to ``bits`` (8, 4, 2) per tensor or per output channel (rank >= 2 only).

    Shapes:
        t: any shape; see :class:`QTensor` for the result.
    """
    b = check_bits(bits)
    if b is None:
        raise ConfigError("quantize needs bits 8, 4 or 2; keep the float tensor for 32 bits")
    check_granularity(granularity)
    x = t.detach().to(torch.float32)
    if not torch.isfinite(x).all():
        raise MismatchError("cannot quantise a tensor holding NaN or infinite values")
    levels = (1 << b) - 1
    per_channel = granularity == "channel" and x.dim() >= 2
    rows = x.reshape(x.shape[0], -1) if per_channel else x.reshape(1, -1)
    lo = rows.amin(1)
    step = (rows.amax(1) - lo) / levels
    safe = torch.where(step > 0, step, torch.ones_like(step))
    q = torch.round((rows - lo.unsqueeze(1)) / safe.unsqueeze(1)).clamp_(0, levels)
    q = torch.where(step.unsqueeze(1) > 0, q, torch.zeros_like(q)).to(torch.int64).reshape(-1)
    if not per_channel:
        lo, step = lo.reshape(()), step.reshape(())
    return QTensor(_pack(q, b), lo.contiguous(), step.contiguous(), tuple(x.shape), b,
                   "channel" if per_channel else "tensor")  # fmt: skip
