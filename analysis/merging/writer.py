"""A safetensors folder written tensor by tensor, as a merge produces them.

Every output name, shape and dtype is known before the first tensor is merged (from the inputs'
headers), so each shard's header is written up front and each merged tensor's bytes go straight to
disk: the writer holds no tensor. The folder is assembled under a temporary name next to
``out_dir`` and renamed into place at the end (like :func:`zoo.io.export.write_hf_folder`); an error or
an interrupt removes it and leaves ``out_dir`` untouched. Where it may write and what ``overwrite``
may replace is :func:`zoo.io.outpath.guard_output_dir`'s decision (never a zoo, never a folder weightzoo
did not write).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import struct
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import torch
from torch import Tensor

from analysis.merging.sources import TensorInfo
from zoo.errors import ConfigError, MismatchError, StorageError
from zoo.io.outpath import commit_output_dir, guard_output_dir, make_staging_dir
from zoo.store.hashing import dtype_name, tensor_bytes

__all__ = ["StreamingWriter", "parse_size"]

WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12, "K": 10**3, "M": 10**6, "G": 10**9,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}  # fmt: skip


def parse_size(size: int | str | None) -> int | None:
    """``"2GB"`` / ``"500MB"`` / ``1_000_000`` -> bytes (``None`` stays ``None``: one file)."""
    if size is None:
        return None
    if isinstance(size, int) and not isinstance(size, bool):
        if size <= 0:
            raise ConfigError(f"bad size {size!r}; the largest shard must be a positive number of bytes")
        return size
    s = str(size).strip().upper().replace(" ", "")
    num = s.rstrip("KMGTIB")
    unit = s[len(num) :]
    try:
        value = float(num)
    except ValueError:
        raise ConfigError(f"bad size {size!r}; write e.g. 2GB, 500MB or a number of bytes") from None
    if unit not in _UNITS or not math.isfinite(value) or value <= 0:
        raise ConfigError(f"bad size {size!r}; write e.g. 2GB, 500MB or a number of bytes")
    return int(value * _UNITS[unit])


class StreamingWriter:
    """Write ``plan`` (name -> shape/dtype, in write order) as an HF-style safetensors folder."""

    def __init__(
        self,
        out_dir: str | Path,
        plan: Mapping[str, TensorInfo],
        *,
        max_shard_size: int | str | None = None,
        metadata: Mapping[str, str] | None = None,
        overwrite: bool = False,
        zoo_roots: Sequence[str | Path] = (),
    ) -> None:
        self.out_dir = guard_output_dir(out_dir, overwrite=overwrite, what="merge output folder", zoo_roots=zoo_roots)
        self.zoo_roots = tuple(zoo_roots)
        if not plan:
            raise ConfigError("nothing to write: the merge has no tensors")
        self.plan = dict(plan)
        self.meta = {"format": "pt", **{str(k): str(v) for k, v in (metadata or {}).items()}}
        limit = parse_size(max_shard_size)
        shards: list[list[str]] = [[]]
        size = 0
        for name, info in self.plan.items():
            nbytes = _nbytes(info)
            if limit is not None and shards[-1] and size + nbytes > limit:
                shards.append([])
                size = 0
            shards[-1].append(name)
            size += nbytes
        self.shards = shards
        n = len(shards)
        self.files = [WEIGHTS_NAME] if n == 1 else [f"model-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)]
        self.shard_of = {name: i for i, names in enumerate(shards) for name in names}
        self.tmp = make_staging_dir(self.out_dir, what="merge output folder")
        self._order = list(self.plan)
        self._next = 0
        self._done = 0  # bytes of the current tensor written so far
        self._fh: BinaryIO | None = None
        self._open_shard: int | None = None
        self.overwrite = overwrite

    # -------------------------------------------------------------------------------- writing
    def _start_shard(self, i: int) -> None:
        if self._fh is not None:
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._fh.close()
        header: dict[str, Any] = {"__metadata__": self.meta}
        off = 0
        for name in self.shards[i]:
            info = self.plan[name]
            nb = _nbytes(info)
            header[name] = {"dtype": dtype_name(info.dtype), "shape": list(info.shape), "data_offsets": [off, off + nb]}
            off += nb
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)
        try:
            self._fh = (self.tmp / self.files[i]).open("wb")
            self._fh.write(struct.pack("<Q", len(raw)))
            self._fh.write(raw)
        except OSError as e:
            raise self._storage_error(e) from e
        self._open_shard = i

    def _storage_error(self, e: OSError) -> StorageError:
        return StorageError(f"cannot write the merge output folder {self.out_dir}: {e.strerror or e}; "
                            "check free disk space and write permission (nothing was moved into place)")  # fmt: skip

    def write(self, name: str, tensor: Tensor) -> None:
        """Append the next tensor of the plan (tensors must come in plan order)."""
        info = self.plan.get(name)
        if info is not None and tuple(tensor.shape) != info.shape:
            raise MismatchError(f"{name}: merged tensor is {tuple(tensor.shape)}, planned {info.shape}")
        self.write_chunk(name, tensor)

    def write_chunk(self, name: str, chunk: Tensor) -> None:
        """Append the next flat chunk of the current tensor (a whole tensor is one chunk)."""
        if self._next >= len(self._order) or self._order[self._next] != name:
            want = self._order[self._next] if self._next < len(self._order) else "(none: all written)"
            raise MismatchError(f"writer expected tensor {want!r} next, got {name!r}")
        info = self.plan[name]
        if chunk.dtype != info.dtype:
            raise MismatchError(f"{name}: merged tensor is {chunk.dtype}, planned {info.dtype}")
        shard = self.shard_of[name]
        if shard != self._open_shard:
            self._start_shard(shard)
        assert self._fh is not None
        data = tensor_bytes(chunk.detach().cpu())
        self._done += len(data)
        total = _nbytes(info)
        if self._done > total:
            raise MismatchError(f"{name}: more data than its planned {info.shape}")
        try:
            self._fh.write(data)
        except OSError as e:
            raise self._storage_error(e) from e
        if self._done == total:
            self._next += 1
            self._done = 0

    def finish(self, *, config: Mapping[str, Any] | None = None, card: str | None = None) -> Path:
        """Close the last shard, write the index, ``config.json`` and ``README.md``; move into place."""
        while self._next < len(self._order) and _nbytes(self.plan[self._order[self._next]]) == 0:
            self.write(self._order[self._next], torch.empty(self.plan[self._order[self._next]].shape,
                                                           dtype=self.plan[self._order[self._next]].dtype))  # fmt: skip
        if self._next != len(self._order):
            raise MismatchError(f"only {self._next} of {len(self._order)} tensors were written")
        try:
            if self._fh is not None:
                self._fh.flush()
                os.fsync(self._fh.fileno())
                self._fh.close()
                self._fh = None
            if len(self.files) > 1:
                weight_map = {name: self.files[self.shard_of[name]] for name in self._order}
                total = sum(_nbytes(i) for i in self.plan.values())
                index = {"metadata": {"total_size": total}, "weight_map": weight_map}
                (self.tmp / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
            (self.tmp / "config.json").write_text(json.dumps(dict(config or {}), indent=2, sort_keys=True, default=str)
                                                  + "\n", encoding="utf-8")  # fmt: skip
            (self.tmp / "README.md").write_text(card or f"# {self.out_dir.name}\n\nWritten by weightzoo merge.\n",
                                                encoding="utf-8")  # fmt: skip
        except OSError as e:
            if isinstance(e, StorageError):
                raise
            raise self._storage_error(e) from e
        commit_output_dir(self.tmp, self.out_dir, overwrite=self.overwrite, what="merge output folder",
                          zoo_roots=self.zoo_roots)  # fmt: skip
        return self.out_dir

    def abort(self) -> None:
        """Drop everything written so far (``out_dir`` is untouched)."""
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        shutil.rmtree(self.tmp, ignore_errors=True)

    def file_views(self) -> dict[str, Tensor]:
        """After :meth:`finish`: the written tensors as read-only memory-map views (no copy)."""
        import numpy as np

        from analysis.merging.sources import read_safetensors_header

        out: dict[str, Tensor] = {}
        for f in self.files:
            path = self.out_dir / f
            header, _ = read_safetensors_header(path)
            mm = np.memmap(path, dtype=np.uint8, mode="c")
            for name, (info, a, b) in header.items():
                flat = torch.from_numpy(mm[a:b]) if b > a else torch.empty(0, dtype=torch.uint8)
                out[name] = flat.view(info.dtype).reshape(info.shape) if b > a else torch.empty(info.shape, dtype=info.dtype)
        return {name: out[name] for name in self._order}


def _nbytes(info: TensorInfo) -> int:
    n = 1
    for s in info.shape:
        n *= s
    return n * torch.empty((), dtype=info.dtype).element_size()
