"""Immutable tensor packs: safetensors files whose keys are tensor ids.

One pack is written per write batch, so a population written together loads from one memory map.

Writes are atomic: the pack is written under ``packs/.tmp/``, flushed and fsynced, then renamed to
``packs/<pack id>.safetensors`` (and the folder fsynced). Only then does the caller commit the
catalog transaction. A crash in between leaves an orphan pack that ``Zoo.verify`` reports and
``Zoo.gc`` removes.

Layout of a pack (the safetensors format): 8 bytes little-endian header length, a JSON header
``{tensor id: {dtype, shape, data_offsets}}`` padded with spaces to a multiple of 8, then the data.
Tensors are laid out by decreasing item size (so every tensor is aligned to its item size and can be
viewed in place from a memory map), then in the order the writer gives them. The store writes a batch
name-major (all models' ``layers.0.weight``, then all ``layers.0.bias``, ...), so stacking a population
written together is one contiguous slice of one memory map.
"""

from __future__ import annotations

import json
import os
import struct
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch

from zoo.errors import CorruptFileError, IntegrityError, NotFoundError
from zoo.store.fsutil import atomic_file
from zoo.store.hashing import DTYPES_BY_NAME, dtype_name, tensor_bytes

NP_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": np.int16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.uint8,
}  # fmt: skip
PACK_SUFFIX = ".safetensors"


@dataclass(frozen=True)
class BlobLocation:
    """Where a tensor lives: its pack, absolute byte offset, size, dtype name and shape."""

    pack_id: str
    offset: int
    nbytes: int
    dtype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class FileInfo:
    """A stored file's size in bytes and last-modified time (epoch seconds): what gc's grace period needs."""

    size: int
    mtime: float


def stat_files(paths: dict[str, Path]) -> dict[str, FileInfo]:
    """``{name: FileInfo}`` of local files (those that vanish meanwhile are left out)."""
    out = {}
    for name, p in paths.items():
        try:
            st = os.stat(p)
        except FileNotFoundError:
            continue
        out[name] = FileInfo(st.st_size, st.st_mtime)
    return out


class LocalFiles:
    """Listing and temp-file upkeep shared by the local folders of packs and of table files (which define
    ``list_files()`` and ``tmp_dir``)."""

    tmp_dir: Path

    def list_files(self) -> dict[str, Path]:
        raise NotImplementedError

    def list_temp(self) -> list[Path]:
        return sorted(self.tmp_dir.glob("*")) if self.tmp_dir.is_dir() else []

    def list_info(self) -> dict[str, FileInfo]:
        """Files present, ``{name: FileInfo(size, mtime)}`` (files that vanish meanwhile are left out)."""
        return stat_files(self.list_files())

    def temp_info(self) -> dict[str, FileInfo]:
        """Temp files of writers (in ``.tmp/``), ``{name: FileInfo}``."""
        return stat_files({p.name: p for p in self.list_temp()})

    def delete_temp(self, name: str) -> None:
        (self.tmp_dir / name).unlink(missing_ok=True)


@dataclass
class PackLayout:
    """The bytes of one pack as :meth:`PackStore.write` lays them out (header, then data by decreasing
    item size, in the order given): written to a local temp file or uploaded as one object."""

    pack_id: str
    header: bytes
    items: list[tuple[str, torch.Tensor]]
    locations: dict[str, BlobLocation]
    size: int

    @classmethod
    def of(cls, pack_id: str, tensors: dict[str, torch.Tensor]) -> PackLayout:
        items = sorted(tensors.items(), key=lambda kv: -kv[1].element_size())  # stable: keeps the given order
        header: dict[str, dict] = {}
        offset = 0
        sizes = []
        for tid, t in items:
            n = t.numel() * t.element_size()
            header[tid] = {"dtype": dtype_name(t.dtype), "shape": list(t.shape), "data_offsets": [offset, offset + n]}
            sizes.append(n)
            offset += n
        header["__metadata__"] = {"format": "pt", "weightzoo": "pack-v1"}
        hbytes = json.dumps(header, separators=(",", ":")).encode()
        hbytes += b" " * (-len(hbytes) % 8)
        base = 8 + len(hbytes)
        locs = {
            tid: BlobLocation(pack_id, base + header[tid]["data_offsets"][0], n, header[tid]["dtype"], tuple(t.shape))
            for (tid, t), n in zip(items, sizes, strict=True)
        }
        return cls(pack_id, hbytes, items, locs, base + offset)

    def write_to(self, f: BinaryIO) -> None:
        f.write(struct.pack("<Q", len(self.header)))
        f.write(self.header)
        for _tid, t in self.items:
            f.write(tensor_bytes(t))


#: the named steps of the write path, in order (see :func:`fault_hook`)
WRITE_STEPS: tuple[str, ...] = (
    "pack.temp_written",  # the pack's bytes are in packs/.tmp/<id>.safetensors.part (flushed, not fsynced)
    "pack.fsynced",  # the temp file is fsynced and closed
    "pack.renamed",  # renamed to packs/<id>.safetensors and the folder fsynced; not in the catalog yet
    "catalog.before_commit",  # every catalog row is inserted; the transaction is not committed
    "catalog.committed",  # the transaction is committed; add_many has not returned yet
)


def fault_hook(step: str) -> None:
    """A no-op called at each step of the write path (:data:`WRITE_STEPS`).

    A test seam: fault-injection tests replace it (``zoo.store.packs.fault_hook = ...``) to raise or to
    ``os._exit`` at one step, so a crash at each step is tested deterministically, not by timing.
    """


def new_pack_id() -> str:
    """A fresh, sortable, collision-free pack id (UTC time + random suffix)."""
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:12]


class PackStore(LocalFiles):
    """The folder of pack files. Reads are memory maps, cached per pack (LRU)."""

    def __init__(self, directory: str | Path, *, max_open: int = 256) -> None:
        self.dir = Path(directory)
        self.tmp_dir = self.dir / ".tmp"
        self._maps: OrderedDict[str, np.ndarray] = OrderedDict()
        self._max_open = max_open

    # ------------------------------------------------------------------ paths
    def path(self, pack_id: str) -> Path:
        if "/" in pack_id or "\\" in pack_id or pack_id.startswith("."):
            raise IntegrityError(f"invalid pack id {pack_id!r}")
        return self.dir / f"{pack_id}{PACK_SUFFIX}"

    def list_files(self) -> dict[str, Path]:
        """Pack files on disk, ``{pack id: path}``."""
        if not self.dir.is_dir():
            return {}
        return {p.name[: -len(PACK_SUFFIX)]: p for p in self.dir.glob(f"*{PACK_SUFFIX}")}

    # ------------------------------------------------------------------ write
    def write(self, tensors: dict[str, torch.Tensor], pack_id: str | None = None, *,
              step_prefix: str = "pack.") -> tuple[str, dict[str, BlobLocation], int]:  # fmt: skip
        """Write ``{tensor id: tensor}`` as one new pack, atomically.

        Returns ``(pack id, {tensor id: location}, file size)``. Raises :class:`StorageError` when the
        folder cannot be written (disk full, permission denied); then no pack file is left behind.
        """
        pack_id = pack_id or new_pack_id()
        final = self.path(pack_id)
        tmp = self.tmp_dir / f"{pack_id}{PACK_SUFFIX}.part"
        layout = PackLayout.of(pack_id, tensors)
        # disk full, Ctrl-C, ...: atomic_file leaves no file behind (the pack is not in the catalog yet)
        with atomic_file(final, tmp, what=f"pack {pack_id}", on_step=lambda step: fault_hook(f"{step_prefix}{step}")) as f:
            layout.write_to(f)
        return pack_id, layout.locations, layout.size

    def delete(self, pack_id: str) -> None:
        self.forget(pack_id)
        self.path(pack_id).unlink(missing_ok=True)

    # ------------------------------------------------------------------- read
    def map(self, pack_id: str) -> np.ndarray:
        """The pack file as a copy-on-write memory map of bytes (cached; a plain ndarray view)."""
        mm = self._maps.get(pack_id)
        if mm is not None:
            self._maps.move_to_end(pack_id)
            return mm
        p = self.path(pack_id)
        if not p.is_file():
            raise IntegrityError(
                f"pack file {p} is missing; the catalog refers to it. Run `weightzoo verify` to list the affected models."
            )
        mm = np.memmap(p, dtype=np.uint8, mode="c").view(np.ndarray)
        self._maps[pack_id] = mm
        if len(self._maps) > self._max_open:
            self._maps.popitem(last=False)
        return mm

    def private_map(self, pack_id: str) -> np.ndarray:
        """A new copy-on-write memory map of the pack, shared with nobody (not cached).

        Zero-copy results (stacked views, a model's tensors) are views of a private map, so writing
        into them changes neither the file nor what later reads in this process see.
        """
        p = self.path(pack_id)
        if not p.is_file():
            raise IntegrityError(
                f"pack file {p} is missing; the catalog refers to it. Run `weightzoo verify` to list the affected models."
            )
        return np.memmap(p, dtype=np.uint8, mode="c").view(np.ndarray)

    def forget(self, pack_id: str) -> None:
        self._maps.pop(pack_id, None)

    def close(self) -> None:
        self._maps.clear()

    def read(self, loc: BlobLocation, maps: dict[str, np.ndarray] | None = None) -> torch.Tensor:
        """One tensor, a copy-on-write view of a private memory map of its pack (no read until touched).

        ``maps`` holds the private maps of one call (one per pack, e.g. for a whole state dict); with
        None a new private map is made for this tensor.
        """
        if maps is None:
            maps = {}
        mm = maps.get(loc.pack_id)
        if mm is None:
            mm = maps[loc.pack_id] = self.private_map(loc.pack_id)
        if loc.offset + loc.nbytes > mm.shape[0]:
            raise IntegrityError(f"pack {loc.pack_id} is truncated: blob at {loc.offset}+{loc.nbytes} is past its end")
        arr = mm[loc.offset : loc.offset + loc.nbytes].view(NP_DTYPES[loc.dtype]).reshape(loc.shape)
        return _to_torch(arr, loc.dtype)

    def gather(self, locs: list[BlobLocation]) -> torch.Tensor:
        """Stack same-dtype, same-shape tensors into ``Tensor[N, *shape]`` (see :meth:`gather_raw`)."""
        if not locs:
            raise ValueError("gather needs at least one location")
        dtype, shape = locs[0].dtype, locs[0].shape
        if any(loc.dtype != dtype or loc.shape != shape for loc in locs):
            raise ValueError("gather needs locations of one dtype and shape")
        return self.gather_raw([loc.pack_id for loc in locs], [loc.offset for loc in locs], dtype, shape)

    def gather_raw(self, pack_ids: list[str], offsets: list[int], dtype: str, shape: tuple[int, ...]) -> torch.Tensor:
        """Stack N same-dtype, same-shape blobs into ``Tensor[N, *shape]`` (see :meth:`gather_rows`)."""
        codes: dict[str, int] = {}
        pc = np.fromiter((codes.setdefault(p, len(codes)) for p in pack_ids), dtype=np.int64, count=len(pack_ids))
        return self.gather_rows(list(codes), pc, np.asarray(offsets, dtype=np.int64), dtype, shape)

    def gather_rows(self, packs: list[str], pack_codes: np.ndarray, offsets: np.ndarray, dtype: str,
                    shape: tuple[int, ...]) -> torch.Tensor:  # fmt: skip
        """Stack N same-dtype, same-shape blobs into ``Tensor[N, *shape]``.

        Row ``i`` is the blob at byte ``offsets[i]`` of pack ``packs[pack_codes[i]]``. When all rows lie
        back to back in one pack, in order (a population written together, or compacted), the result is a
        copy-on-write view of the memory map: no copy, no read until touched. Otherwise the rows are
        copied into one new array: runs of consecutive blobs as slices (one memcpy each), scattered
        rows with one indexed copy (``np.take``) per (pack, stride phase). Never one copy per model.

        Shapes:
            pack_codes, offsets: ``[N]`` int64; output ``[N, *shape]``.
        """
        if int(offsets.shape[0]) == 0:
            raise ValueError("gather needs at least one location")
        maps = [self.map(p) for p in packs]
        return gather_from(maps, pack_codes, offsets, dtype, shape, names=packs,
                           private=lambda code: self.private_map(packs[code]))  # fmt: skip

    def gather_many(self, packs: list[str], requests: list[tuple[np.ndarray, np.ndarray, str, tuple[int, ...]]]
                    ) -> list[torch.Tensor]:  # fmt: skip
        """:meth:`gather_rows` for many ``(pack_codes, offsets, dtype, shape)`` requests over one pack list
        (a whole ``stack()``: one request per tensor name). An object store fetches all of them at once."""
        return [self.gather_rows(packs, *r) for r in requests]

    def read_many(self, locs: list[BlobLocation]) -> list[torch.Tensor]:
        """Many tensors (see :meth:`read`), sharing one private map per pack."""
        maps: dict[str, np.ndarray] = {}
        return [self.read(loc, maps) for loc in locs]

    def size(self, pack_id: str) -> int:
        """The size of a pack file in bytes (:class:`NotFoundError` when it is gone)."""
        try:
            return self.path(pack_id).stat().st_size
        except FileNotFoundError:
            raise NotFoundError(f"pack file {self.path(pack_id)} does not exist") from None

    @property
    def location(self) -> str:
        """Where the packs live, for messages (a folder or a URL)."""
        return str(self.dir)

    def read_header(self, pack_id: str) -> tuple[dict[str, dict], int]:
        """Parse a pack's safetensors header: ``({tensor id: entry}, data start offset)``."""
        p = self.path(pack_id)
        if not p.is_file():
            raise NotFoundError(f"pack file {p} does not exist")
        size = p.stat().st_size
        with open(p, "rb") as f:
            raw = f.read(8)
            if len(raw) < 8:
                raise CorruptFileError(f"pack {p} is truncated (no header)")
            (n,) = struct.unpack("<Q", raw)
            if n > size - 8:
                raise CorruptFileError(f"pack {p} is truncated (header of {n} bytes in a file of {size})")
            text = f.read(n)
        return parse_header(text, p, size), 8 + n


def parse_header(text: bytes, where: object, size: int) -> dict[str, dict]:
    """A pack's safetensors header ``{tensor id: entry}`` from its JSON bytes (``where`` names the pack in
    errors; ``size`` is the file's size): :class:`CorruptFileError` unless every entry's offsets fit."""
    try:
        header = json.loads(text)
    except (ValueError, RecursionError) as e:
        raise CorruptFileError(f"pack {where} has a corrupt header: {e}") from e
    if not isinstance(header, dict):
        raise CorruptFileError(f"pack {where} has a corrupt header: a JSON {type(header).__name__}, not an object")
    header.pop("__metadata__", None)
    for tid, entry in header.items():
        offs = entry.get("data_offsets") if isinstance(entry, dict) else None
        if not (isinstance(offs, list) and len(offs) == 2 and all(type(o) is int and 0 <= o <= size for o in offs)):
            raise CorruptFileError(f"pack {where} has a corrupt header entry for {tid[:16]!r}: {str(entry)[:80]}")
    return header


def gather_from(maps: list[np.ndarray], pack_codes: np.ndarray, offsets: np.ndarray, dtype: str, shape: tuple[int, ...],
                *, names: list[str], private: Callable[[int], np.ndarray]) -> torch.Tensor:  # fmt: skip
    """The core of :meth:`PackStore.gather_rows` over byte arrays: row ``i`` is the blob at ``offsets[i]`` of
    ``maps[pack_codes[i]]`` (whole packs as memory maps, or fetched byte ranges of an object store).
    ``private(code)`` gives the array a zero-copy result may be a view of; ``names`` name them in errors.

    Shapes:
        maps[k]: ``[bytes]`` uint8; pack_codes, offsets: ``[N]`` int64; output ``[N, *shape]``.
    """
    n = int(offsets.shape[0])
    np_dtype = np.dtype(NP_DTYPES[dtype])
    item = np_dtype.itemsize
    numel = int(np.prod(shape)) if shape else 1
    nbytes = numel * item
    if nbytes == 0:
        return _to_torch(np.empty((n, *shape), dtype=np_dtype), dtype)
    # runs: maximal stretches of rows that are consecutive blobs of one pack
    if n > 1:
        brk = np.flatnonzero((np.diff(pack_codes) != 0) | (np.diff(offsets) != nbytes)) + 1
    else:
        brk = np.empty(0, dtype=np.int64)
    starts = np.concatenate(([0], brk)).astype(np.int64)
    ends = np.concatenate((brk, [n])).astype(np.int64)
    # bounds: every blob must lie inside its pack (a truncated pack is an IntegrityError, never garbage)
    sizes = np.array([m.shape[0] for m in maps], dtype=np.int64)
    if int(offsets.min()) < 0 or bool(np.any(offsets + nbytes > sizes[pack_codes])):
        bad = names[int(pack_codes[int(np.argmax(offsets + nbytes > sizes[pack_codes]))])]
        raise IntegrityError(f"pack {bad} is truncated: a blob lies past its end; run `weightzoo verify`")
    if starts.shape[0] == 1 and int(offsets[0]) % item == 0:  # one slice: zero copy, of a private map
        o = int(offsets[0])
        view = private(int(pack_codes[0]))[o : o + n * nbytes]
        if not view.flags.writeable:  # bytes fetched from an object store: the result must be writable
            view = view.copy()
        return _to_torch(view.view(np_dtype).reshape((n, *shape)), dtype)
    out = np.empty((n, nbytes), dtype=np.uint8)
    if starts.shape[0] * 4 <= n:  # long runs: one memcpy per run
        for a, b in zip(starts.tolist(), ends.tolist(), strict=True):
            mm = maps[int(pack_codes[a])]
            o = int(offsets[a])
            out[a:b] = mm[o : o + (b - a) * nbytes].reshape(b - a, nbytes)
    else:  # scattered rows: one indexed copy per (pack, offset phase)
        phase = offsets % nbytes
        key = pack_codes * nbytes + phase
        order = np.argsort(key, kind="stable")
        ks = key[order]
        cut = np.flatnonzero(np.diff(ks)) + 1
        for grp in np.split(order, cut):
            mm = maps[int(pack_codes[grp[0]])]
            offs = offsets[grp]
            base = int(offs.min())
            k = (offs - base) // nbytes
            rows = int(k.max()) + 1
            src = mm[base : base + rows * nbytes].reshape(rows, nbytes)
            if grp.shape[0] == n:
                np.take(src, k, axis=0, out=out)
            elif int(grp[-1]) - int(grp[0]) + 1 == grp.shape[0]:  # a contiguous range of output rows
                np.take(src, k, axis=0, out=out[int(grp[0]) : int(grp[-1]) + 1])
            else:
                out[grp] = np.take(src, k, axis=0)
    return _to_torch(out.view(np_dtype).reshape((n, *shape)), dtype)


def _to_torch(arr: np.ndarray, dtype: str) -> torch.Tensor:
    t = torch.from_numpy(arr)
    if dtype == "BF16":
        t = t.view(torch.bfloat16)
    elif dtype == "BOOL":
        t = t.view(torch.bool)
    return t


def torch_dtype(name: str) -> torch.dtype:
    return DTYPES_BY_NAME[name]
