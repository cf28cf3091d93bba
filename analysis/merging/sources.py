"""Where merge inputs come from, read one tensor at a time.

A :class:`TensorSource` lists its tensor names, shapes and dtypes without loading anything and
loads a single tensor on demand, so a merge holds a few tensors in memory, never whole models:

* :class:`SafetensorsSource`: a ``.safetensors`` file, a sharded folder (``*.index.json``), or an
  HF-style folder. Headers are parsed up front; each tensor (or flat chunk) is read with positioned
  reads (``os.preadv``) into a fresh buffer or the caller's reused one (no memory map, so finished
  tensors do not linger in the resident set).
* :class:`StateDictSource`: any ``{name: tensor}`` mapping, e.g. the copy-on-write memory-map
  views of :meth:`zoo.Zoo.state_dict` (a zoo model), or a torch checkpoint.

:func:`open_source` resolves a reference: ``zoo:42``, ``42``, ``zoo:name`` (zoo models), a local
path, or a Hugging Face repo id (``org/name``, read from the local cache when offline).
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor

from zoo.errors import ConfigError, CorruptFileError, NotFoundError, UnsafeFileError
from zoo.store.hashing import DTYPES_BY_NAME, tensor_bytes

__all__ = ["SafetensorsSource", "StateDictSource", "TensorInfo", "TensorSource", "open_source", "read_safetensors_header"]


@dataclass(frozen=True)
class TensorInfo:
    shape: tuple[int, ...]
    dtype: torch.dtype


class TensorSource(Protocol):
    """A model whose tensors can be listed cheaply and loaded one by one."""

    label: str  #: how the user named it (for messages and lineage)
    config: dict[str, Any] | None  #: an HF ``config.json`` or a zoo architecture config
    zoo_id: int | None  #: the model id when it lives in the zoo

    def infos(self) -> dict[str, TensorInfo]: ...

    def get(self, name: str) -> Tensor: ...

    def get_flat(self, name: str, start: int, stop: int, out: Tensor | None = None) -> Tensor:
        """Entries ``start:stop`` of the flattened tensor (reads only those bytes).

        ``out``: a contiguous buffer of the tensor's dtype and at least ``stop - start`` entries
        that a file source may read into (so a chunked merge reuses its buffers). The result may
        be a view of ``out`` or of the source's own memory: never modify it in place.
        """
        ...

    def close(self) -> None: ...


# ------------------------------------------------------------------------------------ safetensors
def read_safetensors_header(path: Path) -> tuple[dict[str, tuple[TensorInfo, int, int]], dict[str, str]]:
    """``{name: (info, absolute start, end)}`` and the ``__metadata__`` of a safetensors file."""
    try:
        size = path.stat().st_size
        with path.open("rb") as fh:
            head = fh.read(8)
            if len(head) != 8:
                raise CorruptFileError(f"{path} is too short to be a safetensors file; re-copy it")
            (n,) = struct.unpack("<Q", head)
            if n > min(size - 8, 100_000_000):
                raise CorruptFileError(f"{path} has an impossible header length; it is truncated or not safetensors")
            header = json.loads(fh.read(n))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CorruptFileError(f"{path} is not a readable safetensors file ({e})") from e
    meta = header.pop("__metadata__", None) or {}
    out = {}
    for name, h in header.items():
        try:
            dtype = DTYPES_BY_NAME[h["dtype"]]
            a, b = h["data_offsets"]
            shape = tuple(int(x) for x in h["shape"])
        except KeyError as e:
            raise CorruptFileError(f"{path}: tensor {name!r} has an unsupported dtype or a bad header entry ({e})") from e
        if 8 + n + b > size:
            raise CorruptFileError(f"{path} is truncated: tensor {name!r} ends past the end of the file")
        out[name] = (TensorInfo(shape, dtype), 8 + n + a, 8 + n + b)
    return out, meta


class SafetensorsSource:
    """One safetensors file or a set of shards (an HF index), read tensor by tensor."""

    def __init__(self, files: list[Path], label: str, config: dict[str, Any] | None = None) -> None:
        self.label, self.config, self.zoo_id = label, config, None
        self._where: dict[str, tuple[Path, TensorInfo, int, int]] = {}
        for f in files:
            header, _ = read_safetensors_header(f)
            for name, (info, a, b) in header.items():
                self._where[name] = (f, info, a, b)
        self._handles: dict[Path, Any] = {}

    @classmethod
    def from_index(cls, index: Path, label: str, config: dict[str, Any] | None = None) -> SafetensorsSource:
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise CorruptFileError(f"{index} is not a shard index with a 'weight_map' ({e})") from e
        folder = index.parent.resolve()
        files = []
        for shard in sorted(set(weight_map.values())):
            p = (index.parent / shard).resolve()
            if not p.is_relative_to(folder):
                raise UnsafeFileError(f"{index} points at {shard!r}, outside its folder; refused")
            if not p.is_file():
                raise NotFoundError(f"{index} lists shard {shard} that is missing; copy every shard next to the index")
            if p.suffix != ".safetensors":
                raise ConfigError(f"{index}: shard {shard} is not safetensors; streaming merges read safetensors shards")
            files.append(p)
        src = cls(files, label, config)
        missing = sorted(set(weight_map) - set(src._where))
        if missing:
            raise CorruptFileError(f"{index} lists tensors its shards lack (e.g. {missing[:3]}); a shard is incomplete")
        return src

    def infos(self) -> dict[str, TensorInfo]:
        return {k: v[1] for k, v in self._where.items()}

    def _fd(self, path: Path) -> int:
        fh = self._handles.get(path)
        if fh is None:
            fh = self._handles[path] = path.open("rb", buffering=0)
        return fh.fileno()

    def _read(self, path: Path, name: str, t: Tensor, offset: int) -> Tensor:
        """Fill ``t`` (contiguous) with the bytes at ``offset``: positioned reads, no seek, no buffer copy."""
        view = tensor_bytes(t)
        fd, done, total = self._fd(path), 0, len(view)
        while done < total:
            got = os.preadv(fd, [view[done:]], offset + done)
            if got <= 0:
                raise CorruptFileError(f"{path}: tensor {name!r} is truncated")
            done += got
        return t

    def get(self, name: str) -> Tensor:
        path, info, a, _ = self._where[name]
        return self._read(path, name, torch.empty(info.shape, dtype=info.dtype), a)

    def get_flat(self, name: str, start: int, stop: int, out: Tensor | None = None) -> Tensor:
        path, info, a, _ = self._where[name]
        if out is not None and out.dtype == info.dtype and out.is_contiguous() and out.numel() >= stop - start:
            t = out.reshape(-1)[: stop - start]
        else:
            t = torch.empty(stop - start, dtype=info.dtype)
        return self._read(path, name, t, a + start * t.element_size())

    def close(self) -> None:
        for fh in self._handles.values():
            fh.close()
        self._handles.clear()


class StateDictSource:
    """A mapping of tensors (a zoo model's memory-map views, a torch checkpoint)."""

    def __init__(self, tensors: Mapping[str, Tensor], label: str, config: dict[str, Any] | None = None,
                 zoo_id: int | None = None) -> None:  # fmt: skip
        self.label, self.config, self.zoo_id = label, config, zoo_id
        self._t = tensors

    def infos(self) -> dict[str, TensorInfo]:
        return {k: TensorInfo(tuple(v.shape), v.dtype) for k, v in self._t.items()}

    def get(self, name: str) -> Tensor:
        return self._t[name]

    def get_flat(self, name: str, start: int, stop: int, out: Tensor | None = None) -> Tensor:
        return self._t[name].reshape(-1)[start:stop]  # a view: no copy (``out`` is not needed)

    def close(self) -> None:
        pass


# ------------------------------------------------------------------------------------- resolution
def zoo_key(ref: str | int) -> str | int | None:
    if isinstance(ref, int):
        return ref
    if ref.startswith("zoo:"):
        key = ref[4:]
        return int(key) if key.isdigit() else key
    if ref.isdigit():
        return int(ref)
    return None


def open_source(ref: str | int, *, zoo: Any = None, offline: bool | None = None) -> TensorSource:
    """Open a merge input: a zoo model (``zoo:42``, ``42``, ``zoo:name``), a local path, an HF repo id.

    Raises:
        NotFoundError: nothing by that reference (the message says where it looked).
        ConfigError: a zoo reference without a zoo, or a folder holding several models.
    """
    key = zoo_key(ref)
    if key is not None:
        if zoo is None:
            raise ConfigError(f"{ref!r} names a zoo model; open a zoo (--root) to merge zoo models")
        return _zoo_source(zoo, key, str(ref))
    ref = str(ref)
    path = Path(ref).expanduser()
    if path.exists():
        return _path_source(path, ref)
    if zoo is not None:
        try:
            return _zoo_source(zoo, ref, ref)
        except NotFoundError:
            pass
    from zoo.io.ingest import looks_like_hf_repo_id, resolve_hf

    if looks_like_hf_repo_id(ref):
        return _path_source(resolve_hf(ref, offline=offline), ref)
    raise NotFoundError(
        f"model {ref!r} is not a local path, a zoo model (zoo:ID or zoo:NAME) or a Hugging Face repo id (org/name)"
    )


def _zoo_source(zoo: Any, key: str | int, label: str) -> StateDictSource:
    rec = zoo.get(key)
    return StateDictSource(zoo.state_dict(rec.id), label, rec.arch_config, zoo_id=rec.id)


def _path_source(path: Path, label: str) -> TensorSource:
    from zoo.io.ingest import discover, read_checkpoint

    found = discover(path)
    if len(found) != 1:
        names = ", ".join(s.name for s in found[:5])
        raise ConfigError(f"{path} holds {len(found)} models ({names}); name one file or folder")
    src = found[0]
    config = src.config
    if src.kind == "sharded":
        if src.path.name.endswith(".safetensors.index.json"):
            return SafetensorsSource.from_index(src.path, label, config)
        return StateDictSource(read_checkpoint(src.path), label, config)
    file = src.path
    if src.kind == "hf_folder":
        file = next(p for p in (src.path / "model.safetensors", src.path / "pytorch_model.bin") if p.is_file())
    if file.suffix == ".safetensors" or src.kind == "safetensors":
        return SafetensorsSource([file], label, config)
    return StateDictSource(read_checkpoint(file), label, config)  # torch files: loaded with mmap where possible
