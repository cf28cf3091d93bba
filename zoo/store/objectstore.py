"""Pack files and derived-table files on any fsspec file system: an S3-compatible bucket (s3fs), GCS, ...

The local folder (:class:`~zoo.store.packs.PackStore`, memory maps) stays the default; a zoo opened with
``packs="s3://bucket/prefix"`` keeps its packs under that prefix (``<prefix>/<pack id>.safetensors``) and
its derived-table files under ``<prefix>/tables/``, through :class:`ObjectPackStore` and
:class:`ObjectTableFiles`, which have the same methods as the local ones.

- **Writes are atomic** without a rename (object stores have none): a pack is laid out in memory and
  uploaded with one PUT under its unique, never reused key; a PUT is all or nothing (a multipart upload
  too: its parts are invisible until it completes). Only then does the catalog commit name it. A writer
  killed after the PUT leaves an orphan object: ``verify`` reports it, ``gc`` removes it after its grace
  period (the object's last-modified time), as for a local orphan file.
- **Reads are ranged**: ``stack()`` and ``state_dict()`` fetch only the byte ranges of the tensors asked
  for, all names of a stack in one batch of requests (``fs.cat_ranges``), with ranges less than
  ``max_gap`` apart coalesced into one request (``fsspec.utils.merge_offset_ranges``): a population
  written together is one request per pack. ``max_gap`` (512 KiB) is the break-even of a request's
  latency and the bytes it could carry meanwhile (10 ms x 50 MB/s; Arrow sizes its S3 read coalescing
  the same way); so a subset costs its bytes plus at most that much per gap, never a whole large pack.
- **An optional local read cache** (``cache_dir``): a pack of which a read asks for at least
  ``cache_fraction`` of the bytes is downloaded whole into the cache (temp name, size checked, renamed) and
  memory-mapped from then on, exactly like a local pack (zero-copy stacks). Reads of a smaller part of a
  pack stay ranged, so stacking a subset never downloads whole packs. Packs are immutable and their ids
  unique, so a cached pack never goes stale; deleting the folder is always safe.

Errors: an unreachable endpoint, a missing bucket or refused credentials raise
:class:`~zoo.errors.StorageError` naming the URL; a pack the catalog names that the bucket lost raises
:class:`~zoo.errors.IntegrityError` (``verify`` lists the models affected).
"""

from __future__ import annotations

import io
import os
import uuid
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from zoo.errors import ConfigError, CorruptFileError, IntegrityError, NotFoundError, StorageError, ZooError
from zoo.store import packs as packs_mod
from zoo.store.packs import (
    PACK_SUFFIX,
    BlobLocation,
    FileInfo,
    PackLayout,
    PackStore,
    gather_from,
    new_pack_id,
    parse_header,
)
from zoo.store.tablefiles import TABLE_SUFFIX, TableFiles

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = ["ObjectPackStore", "ObjectTableFiles", "filesystem", "is_remote", "remote_error"]

#: protocols that are a local folder (memory-mapped packs, the default store)
LOCAL_PROTOCOLS = ("file", "local")


def is_remote(url: str | os.PathLike | None) -> bool:
    """True when ``url`` names an fsspec file system other than the local disk (``s3://...``)."""
    if url is None or isinstance(url, os.PathLike):
        return False
    import fsspec.utils

    return fsspec.utils.get_protocol(str(url)) not in LOCAL_PROTOCOLS


def filesystem(url: str, storage_options: Mapping[str, Any] | None = None) -> tuple[Any, str]:
    """The fsspec file system and path of ``url`` (``ConfigError`` naming the extra to install when its
    implementation is missing, e.g. s3fs for ``s3://``)."""
    import fsspec.core

    opts = dict(storage_options or {})
    try:
        fs, path = fsspec.core.url_to_fs(url, **opts)
    except ImportError as e:
        extra = "s3" if url.startswith(("s3://", "s3a://")) else None
        hint = f"pip install 'weightzoo[{extra}]'" if extra else f"install the fsspec implementation it needs ({e})"
        raise ConfigError(f"packs at {url} need a file-system library that is not installed: {hint}") from e
    except (ValueError, TypeError) as e:
        raise ConfigError(f"cannot use {url!r} as the pack location: {e}") from e
    return fs, path.rstrip("/")


def remote_error(e: BaseException, url: str, what: str) -> ZooError:
    """The error to raise for a failed request to the store at ``url`` while doing ``what``."""
    if isinstance(e, ZooError):
        return e
    kind = type(e).__name__
    msg = str(e).strip().splitlines()[0][:300] if str(e).strip() else kind
    if isinstance(e, PermissionError):
        why = "access was refused (check the credentials: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or storage_options)"
    elif isinstance(e, FileNotFoundError):
        why = "the bucket or prefix does not exist (create the bucket first)"
    else:
        why = f"the store did not answer as expected ({kind}: {msg}); check the URL, the endpoint (AWS_ENDPOINT_URL) and the network"
    return StorageError(f"cannot {what} at {url}: {why}. The catalog is unchanged.")


class ObjectPackStore(PackStore):
    """Pack files under a prefix of an fsspec file system (see the module docstring).

    ``dir`` is the local read-cache folder (None: no cache); ``prefix`` the store path of the packs.
    """

    def __init__(self, url: str, fs: Any, prefix: str, *, cache_dir: str | Path | None = None,
                 cache_fraction: float = 0.5, max_gap: int = 512 * 1024, max_block: int = 256 * 2**20) -> None:  # fmt: skip
        super().__init__(cache_dir if cache_dir is not None else os.devnull, max_open=8)
        self.url = url.rstrip("/")
        self.fs = fs
        self.prefix = prefix
        self.cache = Path(cache_dir) if cache_dir is not None else None
        self.cache_fraction = cache_fraction
        self.max_gap = max_gap
        self.max_block = max_block
        self._sizes: OrderedDict[str, int] = OrderedDict()  # pack id -> size (packs never change)
        self._cache_maps: OrderedDict[str, np.ndarray] = OrderedDict()  # pack id -> map of its cached copy
        #: bytes fetched with ranged reads / downloaded whole into the cache (for tests and benchmarks)
        self.bytes_ranged = 0
        self.bytes_downloaded = 0
        self.requests = 0

    # ------------------------------------------------------------------ paths, listing
    @property
    def location(self) -> str:
        return self.url

    def path(self, pack_id: str) -> str:  # type: ignore[override]
        super().path(pack_id)  # the same id check as the local store
        return f"{self.prefix}/{pack_id}{PACK_SUFFIX}"

    def _cached(self, pack_id: str) -> Path | None:
        return self.cache / f"{pack_id}{PACK_SUFFIX}" if self.cache is not None else None

    def check(self) -> None:
        """Raise :class:`StorageError` (naming the URL) unless the prefix can be listed."""
        self.list_info()

    def list_info(self) -> dict[str, FileInfo]:
        try:
            self.fs.invalidate_cache(self.prefix)
            entries = self.fs.ls(self.prefix, detail=True, refresh=True)
        except FileNotFoundError:
            bucket = self.prefix.split("/", 1)[0]
            try:
                self.fs.ls(bucket, detail=False, refresh=True)
            except Exception as e:  # noqa: BLE001 - any failure of the store is reported with its URL
                raise remote_error(e, self.url, "list the packs") from e
            return {}  # the bucket is there; no pack written under the prefix yet
        except Exception as e:  # noqa: BLE001
            raise remote_error(e, self.url, "list the packs") from e
        out = {}
        for ent in entries:
            name = ent["name"].rsplit("/", 1)[-1]
            if ent.get("type") == "file" and name.endswith(PACK_SUFFIX) and not name.startswith("."):
                out[name[: -len(PACK_SUFFIX)]] = FileInfo(int(ent["size"]), _mtime(ent))
        for pid, info in out.items():
            self._remember_size(pid, info.size)
        return out

    def list_files(self) -> dict[str, str]:  # type: ignore[override]
        return {pid: self.path(pid) for pid in self.list_info()}

    def list_temp(self) -> list[Path]:
        return []  # an upload is one PUT: nothing is ever half-visible

    def temp_info(self) -> dict[str, FileInfo]:
        return {}

    def size(self, pack_id: str) -> int:
        if pack_id in self._sizes:
            return self._sizes[pack_id]
        try:
            n = int(self.fs.info(self.path(pack_id))["size"])
        except FileNotFoundError:
            raise NotFoundError(f"pack {pack_id} does not exist at {self.url}") from None
        except Exception as e:  # noqa: BLE001
            raise remote_error(e, self.url, f"read pack {pack_id}") from e
        self._remember_size(pack_id, n)
        return n

    def _remember_size(self, pack_id: str, n: int) -> None:
        self._sizes[pack_id] = n
        if len(self._sizes) > 100_000:
            self._sizes.popitem(last=False)

    # ------------------------------------------------------------------ write
    def write(self, tensors: dict[str, torch.Tensor], pack_id: str | None = None, *,
              step_prefix: str = "pack.") -> tuple[str, dict[str, BlobLocation], int]:  # fmt: skip
        """Upload ``{tensor id: tensor}`` as one new pack object (one PUT under a fresh key)."""
        pack_id = pack_id or new_pack_id()
        key = self.path(pack_id)
        layout = PackLayout.of(pack_id, tensors)
        buf = io.BytesIO()
        layout.write_to(buf)
        data = buf.getbuffer()
        packs_mod.fault_hook(f"{step_prefix}temp_written")  # laid out in memory; nothing in the bucket
        packs_mod.fault_hook(f"{step_prefix}fsynced")
        uploaded = False
        try:
            try:
                self.fs.pipe_file(key, bytes(data))
            except Exception as e:  # noqa: BLE001 - any failure of the store: a StorageError naming the URL
                raise remote_error(e, self.url, f"upload pack {pack_id}") from e
            uploaded = True
            self._remember_size(pack_id, layout.size)
            packs_mod.fault_hook(f"{step_prefix}renamed")  # in the bucket; not in the catalog yet
        except BaseException:
            if uploaded:
                self.delete(pack_id)
            raise
        return pack_id, layout.locations, layout.size

    def delete(self, pack_id: str) -> None:
        self.forget(pack_id)
        self._cache_maps.pop(pack_id, None)
        self._sizes.pop(pack_id, None)
        cached = self._cached(pack_id)
        if cached is not None:
            cached.unlink(missing_ok=True)
        try:
            self.fs.rm_file(self.path(pack_id))
        except FileNotFoundError:
            pass
        except Exception:  # noqa: BLE001 - left in the bucket: an orphan that gc removes later
            pass

    # ------------------------------------------------------------------ read
    def _download(self, pack_id: str) -> Path:
        """Fetch a whole pack into the read cache (temp name, size checked, rename); its path."""
        assert self.cache is not None
        final = self._cached(pack_id)
        assert final is not None
        if final.is_file():
            return final
        tmp = self.cache / f".{pack_id}.{uuid.uuid4().hex[:8]}.part"
        try:
            self.cache.mkdir(parents=True, exist_ok=True)
            self.fs.get_file(self.path(pack_id), str(tmp))
            size = tmp.stat().st_size
            self._remember_size(pack_id, size)
            os.replace(tmp, final)
        except FileNotFoundError as e:
            tmp.unlink(missing_ok=True)
            raise _missing(pack_id, self.url) from e
        except BaseException as e:
            tmp.unlink(missing_ok=True)
            if isinstance(e, Exception):
                raise remote_error(e, self.url, f"download pack {pack_id}") from e
            raise
        self.bytes_downloaded += size
        self.requests += 1
        return final

    def map(self, pack_id: str) -> np.ndarray:
        """The whole pack's bytes as stored (downloaded into memory, read-only): what ``verify`` re-hashes.
        Never the read cache's copy, which could hide damage to the stored one, and never cached there."""
        mm = self._maps.get(pack_id)
        if mm is not None:
            self._maps.move_to_end(pack_id)
            return mm
        try:
            raw = self.fs.cat_file(self.path(pack_id))
        except FileNotFoundError as e:
            raise _missing(pack_id, self.url) from e
        except Exception as e:  # noqa: BLE001
            raise remote_error(e, self.url, f"read pack {pack_id}") from e
        self.bytes_ranged += len(raw)
        self.requests += 1
        mm = np.frombuffer(raw, dtype=np.uint8)
        self._maps[pack_id] = mm
        if len(self._maps) > self._max_open:
            self._maps.popitem(last=False)
        return mm

    def close(self) -> None:
        super().close()
        self._cache_maps.clear()

    def _cache_map(self, pack_id: str) -> np.ndarray:
        """The shared memory map of a pack's cached copy (downloaded first when missing; LRU like the local
        store's maps). Copies read from it; zero-copy results view a private map instead."""
        mm = self._cache_maps.get(pack_id)
        if mm is None:
            mm = self._cache_maps[pack_id] = np.memmap(self._download(pack_id), dtype=np.uint8, mode="c").view(np.ndarray)
            if len(self._cache_maps) > 256:
                self._cache_maps.popitem(last=False)
        else:
            self._cache_maps.move_to_end(pack_id)
        return mm

    def private_map(self, pack_id: str) -> np.ndarray:
        if self.cache is not None:
            return np.memmap(self._download(pack_id), dtype=np.uint8, mode="c").view(np.ndarray)
        return self.map(pack_id).copy()

    def read(self, loc: BlobLocation, maps: dict[str, np.ndarray] | None = None) -> torch.Tensor:
        return self.read_many([loc])[0]

    def read_many(self, locs: list[BlobLocation]) -> list[torch.Tensor]:
        """Many tensors with one batch of ranged reads (each result a writable array of its own)."""
        if not locs:
            return []
        packs = list(dict.fromkeys(loc.pack_id for loc in locs))
        code = {p: i for i, p in enumerate(packs)}
        got = self.gather_many(packs, [(np.asarray([code[loc.pack_id]], dtype=np.int64),
                                        np.asarray([loc.offset], dtype=np.int64), loc.dtype, loc.shape)
                                       for loc in locs])  # fmt: skip
        return [t[0] for t in got]  # each request is one row

    def gather_rows(self, packs: list[str], pack_codes: np.ndarray, offsets: np.ndarray, dtype: str,
                    shape: tuple[int, ...]) -> torch.Tensor:  # fmt: skip
        return self.gather_many(packs, [(pack_codes, offsets, dtype, shape)])[0]

    def gather_many(self, packs: list[str], requests: list[tuple[np.ndarray, np.ndarray, str, tuple[int, ...]]]
                    ) -> list[torch.Tensor]:  # fmt: skip
        """Every request's rows from one batch of coalesced ranged reads (cached packs from their maps).

        Shapes:
            request: pack_codes, offsets ``[N]`` int64; output ``[N, *shape]``.
        """
        if not requests:
            return []
        item = [np.dtype(packs_mod.NP_DTYPES[dt]).itemsize * (int(np.prod(shp)) if shp else 1)
                for _, _, dt, shp in requests]  # fmt: skip
        codes = np.concatenate([r[0] for r in requests]).astype(np.int64)
        starts = np.concatenate([r[1] for r in requests]).astype(np.int64)
        ends = starts + np.concatenate([np.full(r[0].shape[0], n, dtype=np.int64) for r, n in zip(requests, item, strict=True)])
        blocks, block_pack, block_start = self._fetch(packs, codes, starts, ends)
        out = []
        names = [packs[int(p)] for p in block_pack.tolist()]

        def private(b: int) -> np.ndarray:  # a zero-copy result: a private map of a cached pack, or its block
            return self.private_map(names[b]) if blocks[b] is self._cache_maps.get(names[b]) else blocks[b]

        for pc, off, dt, shp in requests:
            if pc.shape[0] == 0:
                raise ValueError("gather needs at least one location")
            bcode = np.empty(pc.shape[0], dtype=np.int64)
            for p in np.unique(pc):  # each row's block: the last block of its pack starting at or before it
                rows = np.flatnonzero(pc == p)
                mine = np.flatnonzero(block_pack == p)
                k = np.searchsorted(block_start[mine], off[rows], side="right") - 1
                bcode[rows] = mine[k]
            rel = off.astype(np.int64) - block_start[bcode]
            out.append(gather_from(blocks, bcode, rel, dt, shp, names=names, private=private))
        return out

    def _fetch(self, packs: list[str], codes: np.ndarray, starts: np.ndarray, ends: np.ndarray
               ) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:  # fmt: skip
        """Blocks of bytes covering every range: ``(blocks, pack code of each, start offset of each)``.

        Packs in the read cache (or that this read mostly covers, when there is a cache) come as one
        block: their memory map. The rest are fetched with coalesced ranged reads.
        """
        from fsspec.utils import merge_offset_ranges

        blocks: list[np.ndarray] = []
        bpack: list[int] = []
        bstart: list[int] = []
        remote = np.ones(codes.shape[0], dtype=bool)
        if self.cache is not None:
            for p in np.unique(codes).tolist():
                pid = packs[p]
                cached = self._cached(pid)
                assert cached is not None
                sel = codes == p
                if pid not in self._cache_maps and not cached.is_file():
                    wanted = _covered_bytes(starts[sel], ends[sel])
                    if wanted < self.cache_fraction * self.size(pid):
                        continue
                blocks.append(self._cache_map(pid))
                bpack.append(p)
                bstart.append(0)
                remote &= ~sel
        if remote.any():
            pc, st, en = codes[remote], starts[remote], ends[remote]
            key_of = {int(c): self.path(packs[int(c)]) for c in np.unique(pc).tolist()}
            keys = [key_of[c] for c in pc.tolist()]
            mpaths, mstarts, mends = merge_offset_ranges(keys, st.tolist(), en.tolist(), max_gap=self.max_gap,
                                                         max_block=self.max_block, sort=True)  # fmt: skip
            try:
                data = self.fs.cat_ranges(mpaths, mstarts, mends, on_error="return")
            except Exception as e:  # noqa: BLE001
                raise remote_error(e, self.url, "read packs") from e
            key_code = {k: c for c, k in key_of.items()}
            self.requests += len(mpaths)
            for path, a, b, d in zip(mpaths, mstarts, mends, data, strict=True):
                pid = packs[key_code[path]]
                if isinstance(d, FileNotFoundError):
                    raise _missing(pid, self.url) from d
                if isinstance(d, BaseException):
                    raise remote_error(d, self.url, f"read pack {pid}") from d
                if len(d) != b - a:
                    raise IntegrityError(f"pack {pid} at {self.url} is truncated: a blob lies past its end; "
                                         "run `weightzoo verify`")  # fmt: skip
                self.bytes_ranged += len(d)
                blocks.append(np.frombuffer(d, dtype=np.uint8))
                bpack.append(key_code[path])
                bstart.append(int(a))
        order = sorted(range(len(blocks)), key=lambda i: (bpack[i], bstart[i]))
        return ([blocks[i] for i in order], np.asarray([bpack[i] for i in order], dtype=np.int64),
                np.asarray([bstart[i] for i in order], dtype=np.int64))  # fmt: skip

    def read_header(self, pack_id: str) -> tuple[dict[str, dict], int]:
        """Parse a pack's safetensors header with two ranged reads."""
        import struct

        key = self.path(pack_id)
        try:
            size = self.size(pack_id)
            raw = self.fs.cat_file(key, start=0, end=min(8, size))
            if len(raw) < 8:
                raise CorruptFileError(f"pack {key} is truncated (no header)")
            (n,) = struct.unpack("<Q", raw)
            if n > size - 8:
                raise CorruptFileError(f"pack {key} is truncated (header of {n} bytes in a file of {size})")
            text = self.fs.cat_file(key, start=8, end=8 + n)
        except FileNotFoundError:
            raise NotFoundError(f"pack {pack_id} does not exist at {self.url}") from None
        except ZooError:
            raise
        except Exception as e:  # noqa: BLE001
            raise remote_error(e, self.url, f"read pack {pack_id}") from e
        return parse_header(text, key, size), 8 + n


class ObjectTableFiles(TableFiles):
    """Derived-table Parquet files under ``<prefix>/tables/`` of an fsspec file system (one PUT each)."""

    def __init__(self, url: str, fs: Any, prefix: str) -> None:
        super().__init__(os.devnull)
        self.url = url.rstrip("/") + "/tables"
        self.fs = fs
        self.prefix = prefix.rstrip("/") + "/tables"

    def path(self, file: str) -> str:  # type: ignore[override]
        super().path(file)  # the same name check as the local folder
        return f"{self.prefix}/{file}"

    def list_info(self) -> dict[str, FileInfo]:
        try:
            self.fs.invalidate_cache(self.prefix)
            entries = self.fs.ls(self.prefix, detail=True, refresh=True)
        except FileNotFoundError:
            return {}
        except Exception as e:  # noqa: BLE001
            raise remote_error(e, self.url, "list the table files") from e
        out = {}
        for ent in entries:
            name = ent["name"].rsplit("/", 1)[-1]
            if ent.get("type") == "file" and name.endswith(TABLE_SUFFIX):
                out[name] = FileInfo(int(ent["size"]), _mtime(ent))
        return out

    def list_files(self) -> dict[str, str]:  # type: ignore[override]
        return {f: f"{self.prefix}/{f}" for f in self.list_info()}

    def list_temp(self) -> list[Path]:
        return []

    def temp_info(self) -> dict[str, FileInfo]:
        return {}

    def exists(self, file: str) -> bool:
        try:
            return bool(self.fs.exists(self.path(file)))
        except Exception:  # noqa: BLE001 - unknown: treat as present (never collect what may be live)
            return True

    def write(self, name: str, table: pa.Table) -> tuple[str, int]:
        import pyarrow.parquet as pq

        file = f"{name}.{uuid.uuid4().hex[:16]}{TABLE_SUFFIX}"
        buf = io.BytesIO()
        pq.write_table(table, buf)
        data = buf.getvalue()
        try:
            self.fs.pipe_file(self.path(file), data)
        except Exception as e:  # noqa: BLE001
            raise remote_error(e, self.url, f"upload table file {file}") from e
        return file, len(data)

    def read_one(self, file: str) -> pa.Table:
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            raw = self.fs.cat_file(self.path(file))
        except FileNotFoundError:
            raise
        except Exception as e:  # noqa: BLE001
            raise remote_error(e, self.url, f"read table file {file}") from e
        return pq.read_table(pa.BufferReader(raw))

    def num_rows(self, file: str, *, full: bool) -> int:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if full:
            return self.read_one(file).num_rows
        with self.fs.open(self.path(file), "rb") as f:
            return pq.read_metadata(pa.PythonFile(f, mode="r")).num_rows

    def delete(self, file: str) -> None:
        try:
            self.fs.rm_file(self.path(file))
        except Exception:  # noqa: BLE001 - left for gc
            pass


def _covered_bytes(starts: np.ndarray, ends: np.ndarray) -> int:
    """Bytes covered by the union of the ranges (rows of a stack may repeat)."""
    if starts.size == 0:
        return 0
    order = np.argsort(starts, kind="stable")
    s, e = starts[order], ends[order]
    reach = np.maximum.accumulate(e)
    gaps = np.concatenate(([True], s[1:] >= reach[:-1]))  # a new disjoint stretch starts here
    stretch = np.cumsum(gaps) - 1
    lo = s[gaps]
    hi = np.zeros(lo.shape[0], dtype=np.int64)
    np.maximum.at(hi, stretch, e)
    return int((hi - lo).sum())


def _mtime(ent: Mapping[str, Any]) -> float:
    t = ent.get("LastModified") or ent.get("mtime") or ent.get("last_modified")
    if t is None:
        return 0.0
    return float(t.timestamp()) if hasattr(t, "timestamp") else float(t)


def _missing(pack_id: str, url: str) -> IntegrityError:
    return IntegrityError(f"pack {pack_id} is missing from {url}; the catalog refers to it. Run `weightzoo verify` "
                          "to list the affected models.")  # fmt: skip
