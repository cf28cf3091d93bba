"""Content addresses for tensors.

A tensor's id is the SHA-256 of its dtype, its shape and its raw bytes (C order), so identical
tensors (frozen layers, re-ingested checkpoints) get the same id and are stored once.
"""

from __future__ import annotations

import hashlib

import torch

#: safetensors' dtype names, used in ids and in the catalog.
DTYPE_NAMES: dict[torch.dtype, str] = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}
DTYPES_BY_NAME: dict[str, torch.dtype] = {v: k for k, v in DTYPE_NAMES.items()}


def dtype_name(dtype: torch.dtype) -> str:
    """The safetensors name of a torch dtype (``torch.float32`` -> ``"F32"``)."""
    from zoo.errors import MismatchError

    try:
        return DTYPE_NAMES[dtype]
    except KeyError:
        raise MismatchError(
            f"tensors of dtype {dtype} cannot be stored; supported: {', '.join(str(d) for d in DTYPE_NAMES)}"
        ) from None


def tensor_bytes(t: torch.Tensor) -> memoryview:
    """The raw bytes of a CPU tensor in C order, without a copy when it is already contiguous."""
    t = t.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    t = t.contiguous()
    if t.dtype == torch.bfloat16:
        t = t.view(torch.int16)
    if t.dtype == torch.bool:
        t = t.view(torch.uint8)
    if t.numel() == 0:
        return memoryview(b"")
    return memoryview(t.numpy().reshape(-1).view("uint8"))


def tensor_id(t: torch.Tensor) -> str:
    """The content address of a tensor: sha256(dtype | shape | bytes) as 64 hex characters."""
    h = hashlib.sha256()
    h.update(f"{dtype_name(t.dtype)}|{','.join(map(str, t.shape))}|".encode())
    h.update(tensor_bytes(t))
    return h.hexdigest()
