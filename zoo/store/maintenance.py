"""``verify`` (re-hash everything, find orphans) and ``gc`` (collect garbage, compact packs).

Like git's object store: ``verify`` re-hashes every blob against its content address; ``gc`` keeps
everything a model references and removes orphan pack files and temp files only once they are older
than a grace period, so a writer that is still committing is not robbed of what it just wrote.
``gc`` takes the catalog's write lock for its catalog changes, and deletes files only after commit.
Derived tables' Parquet files (``<root>/tables/``) are checked and collected the same way: a file the
catalog names must exist and read back with the recorded row count; a file no table names is an orphan.
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import TYPE_CHECKING

from sqlalchemy import delete, exists, func, insert, select, update

from zoo.errors import CorruptFileError, IntegrityError
from zoo.progress import progress_bar
from zoo.store import schema as S
from zoo.store.records import GcReport, VerifyReport
from zoo.store.tensors import population_keys

if TYPE_CHECKING:
    from collections.abc import Callable

    from zoo.store.backend import Backend
    from zoo.store.packs import FileInfo


def verify(backend: Backend, *, rehash: bool = True, progress: bool = False) -> VerifyReport:
    """Check every pack and blob the catalog knows; list orphans. Changes nothing."""
    rep = VerifyReport()
    files = backend.packs.list_info()
    with backend.engine.connect() as c:
        packs = c.execute(select(S.Pack.id)).scalars().all()
        rep.n_models = int(c.execute(select(func.count()).select_from(S.Model)).scalar_one())
        rep.n_packs = len(packs)
        rep.n_blobs = int(c.execute(select(func.count()).select_from(S.Blob)).scalar_one())
        rep.unreferenced_blobs = int(
            c.execute(
                select(func.count()).select_from(S.Blob).where(~exists().where(S.TensorEntry.blob_id == S.Blob.id))
            ).scalar_one()
        )
        bad_blobs: set[str] = set()
        for pack_id in progress_bar(packs, desc="verify", unit="pack", disable=not progress):
            blobs = c.execute(
                select(S.Blob.id, S.Blob.offset, S.Blob.nbytes, S.Blob.dtype, S.Blob.shape).where(S.Blob.pack_id == pack_id)
            ).all()
            if pack_id not in files:
                rep.missing_packs.append(pack_id)
                bad_blobs.update(b.id for b in blobs)
                continue
            try:
                header, base = backend.packs.read_header(pack_id)
            except CorruptFileError:
                rep.missing_packs.append(pack_id)
                bad_blobs.update(b.id for b in blobs)
                continue
            backend.packs.forget(pack_id)  # re-map: the file may have changed on disk
            size = files[pack_id].size
            for b in blobs:
                entry = header.get(b.id)
                if entry is None or base + entry["data_offsets"][0] != b.offset or b.offset + b.nbytes > size:
                    rep.missing_blobs.append(b.id)
                    bad_blobs.add(b.id)
                    continue
                if rehash:
                    mm = backend.packs.map(pack_id)
                    h = hashlib.sha256()
                    h.update(f"{b.dtype}|{','.join(map(str, json.loads(b.shape)))}|".encode())
                    h.update(memoryview(mm[b.offset : b.offset + b.nbytes]))
                    if h.hexdigest() != b.id:
                        rep.corrupt_blobs.append(b.id)
                        bad_blobs.add(b.id)
            backend.packs.forget(pack_id)
        if bad_blobs:
            ids: set[int] = set()
            bl = sorted(bad_blobs)
            for i in range(0, len(bl), 500):
                ids.update(c.execute(select(S.TensorEntry.model_id).where(S.TensorEntry.blob_id.in_(bl[i : i + 500]))).scalars())
            rep.affected_models = sorted(ids)
    known = set(packs)
    rep.orphan_packs = sorted(p for p in files if p not in known)
    rep.temp_files = sorted(backend.packs.temp_info())
    _verify_tables(backend, rep, rehash=rehash)
    return rep


def _verify_tables(backend: Backend, rep: VerifyReport, *, rehash: bool) -> None:
    import pyarrow as pa

    tf = backend.table_files
    on_disk = tf.list_info()
    with backend.engine.connect() as c:
        rows = c.execute(select(S.DerivedTable.name, S.DerivedTable.files, S.DerivedTable.n_rows)).all()
    rep.n_tables = len(rows)
    referenced: set[str] = set()
    missing: dict[str, str] = {}  # file -> table
    corrupt: dict[str, str] = {}
    for r in rows:
        files = json.loads(r.files)
        referenced.update(files)
        n, bad = 0, False
        for f in files:
            try:
                if f not in on_disk:
                    raise FileNotFoundError(f)
                n += tf.num_rows(f, full=rehash)
            except FileNotFoundError:
                missing[f], bad = r.name, True
            except (OSError, pa.ArrowException):
                corrupt[f], bad = r.name, True
        if not bad and n != int(r.n_rows):  # the files do not hold the rows the catalog counts
            corrupt.update(dict.fromkeys(files, r.name))
    if missing or corrupt:  # a writer may have replaced a table meanwhile: keep what is still referenced
        with backend.engine.connect() as c:
            now = {f for files in c.execute(select(S.DerivedTable.files)).scalars() for f in json.loads(files)}
        missing = {f: t for f, t in missing.items() if f in now and not tf.exists(f)}
        corrupt = {f: t for f, t in corrupt.items() if f in now}
    rep.missing_table_files = sorted(missing)
    rep.corrupt_table_files = sorted(corrupt)
    rep.affected_tables = sorted({*missing.values(), *corrupt.values()})
    rep.orphan_table_files = sorted(f for f in on_disk if f not in referenced and tf.exists(f))
    rep.temp_files += ["tables/.tmp/" + name for name in tf.temp_info()]


def gc(backend: Backend, *, grace_seconds: float = 3600.0, compact_below: float = 0.5, dry_run: bool = False,
       repack: bool = False) -> GcReport:  # fmt: skip
    """Collect garbage.

    - blobs no model references: their catalog rows are deleted;
    - packs left with no live blob: deleted;
    - packs whose live bytes are below ``compact_below`` of their size: live blobs are copied into
      one new pack and the old packs deleted;
    - orphan pack files (not in the catalog) and temp files older than ``grace_seconds``: deleted;
    - cached population manifests that are no longer current (:mod:`zoo.store.manifests`): deleted;
    - with ``repack``: every population spread over several packs or out of stacking order is
      rewritten into one pack in stacking order (:func:`zoo.store.repack.repack`); ``report.repacked``
      lists them and the packs it emptied are in ``packs_removed``.
    """
    rep = GcReport(dry_run=dry_run)
    now = time.time()
    to_unlink: list[str] = []
    written: str | None = None
    try:
        with backend.engine.begin() as c:
            backend.catalog.bump(c)  # write lock: no writer is between its dedup check and its commit now
            dead = select(S.Blob.id).where(~exists().where(S.TensorEntry.blob_id == S.Blob.id))
            dead_ids = c.execute(dead).scalars().all()
            rep.blobs_removed = len(dead_ids)
            for i in range(0, len(dead_ids), 500):
                c.execute(delete(S.Blob).where(S.Blob.id.in_(dead_ids[i : i + 500])))
            live = {
                r[0]: (int(r[1]), int(r[2]))
                for r in c.execute(
                    select(S.Blob.pack_id, func.count(), func.sum(S.Blob.nbytes)).group_by(S.Blob.pack_id)
                ).all()
            }
            compact: list[str] = []
            compact_bytes = 0
            for p in c.execute(select(S.Pack.id, S.Pack.nbytes, S.Pack.n_blobs)).all():
                n_live, lb = live.get(p.id, (0, 0))
                if n_live == 0:
                    rep.packs_removed.append(p.id)
                    rep.bytes_freed += int(p.nbytes)
                    to_unlink.append(p.id)
                elif n_live < p.n_blobs and lb < compact_below * p.nbytes:  # lost blobs, mostly garbage
                    compact.append(p.id)
                    compact_bytes += int(p.nbytes)
                    if dry_run:
                        rep.bytes_freed += int(p.nbytes) - lb
            if compact and not dry_run:
                rows = c.execute(
                    select(S.Blob.id, S.Blob.pack_id, S.Blob.offset, S.Blob.nbytes, S.Blob.dtype, S.Blob.shape)
                    .where(S.Blob.pack_id.in_(compact))
                ).all()  # fmt: skip
                from zoo.store.packs import BlobLocation

                got = backend.packs.read_many(
                    [BlobLocation(r.pack_id, r.offset, r.nbytes, r.dtype, tuple(json.loads(r.shape))) for r in rows])
                tensors = {r.id: t for r, t in zip(rows, got, strict=True)}
                written, locs, size = backend.packs.write(tensors)
                rep.bytes_freed += compact_bytes - size
                c.execute(insert(S.Pack).values(id=written, nbytes=size, n_blobs=len(tensors)))
                for tid, loc in locs.items():
                    c.execute(update(S.Blob).where(S.Blob.id == tid).values(pack_id=written, offset=loc.offset))
            rep.packs_compacted = compact
            to_unlink += compact
            if not dry_run:
                gone = rep.packs_removed + compact
                for i in range(0, len(gone), 500):
                    c.execute(delete(S.Pack).where(S.Pack.id.in_(gone[i : i + 500])))
            if dry_run:
                c.rollback()
            elif dead_ids or compact or rep.packs_removed:  # blob locations changed: invalidate caches
                c.execute(update(S.CatalogState).where(S.CatalogState.id == 1)
                          .values(layout_version=S.CatalogState.layout_version + 1))  # fmt: skip
    except BaseException:
        if written is not None:
            backend.packs.delete(written)
        raise
    if not dry_run:
        for pid in to_unlink:
            backend.packs.delete(pid)
    if repack:
        from zoo.store.repack import repack as repack_populations

        rr = repack_populations(backend, dry_run=dry_run)
        rep.repacked = rr.repacked  # type: ignore[attr-defined]
        rep.packs_removed += rr.packs_removed
    # orphan files and temp files (outside the transaction: they are not in the catalog)
    with backend.engine.connect() as c:
        known = set(c.execute(select(S.Pack.id)).scalars())
    removed, freed = _remove_stale(backend.packs.list_info(), known, now - grace_seconds, dry_run, backend.packs.delete)
    rep.orphans_removed += removed
    rep.bytes_freed += freed
    # derived tables' orphan files (a writer that crashed before its commit, or a failed delete)
    with backend.engine.connect() as c:
        referenced = {f for files in c.execute(select(S.DerivedTable.files)).scalars() for f in json.loads(files)}
    removed, freed = _remove_stale(backend.table_files.list_info(), referenced, now - grace_seconds, dry_run,
                                   backend.table_files.delete)  # fmt: skip
    rep.table_files_removed += removed
    rep.bytes_freed += freed
    # cached population manifests that are no longer current (any write to their population, gc, repack)
    with backend.engine.connect() as c:
        current = population_keys(c)
    for path in backend.manifest_files.remove_stale(current, dry_run=dry_run):
        rep.cache_files_removed.append(path.name)
    for store in (backend.packs, backend.table_files):
        for name, info in store.temp_info().items():
            if now - info.mtime >= grace_seconds:
                rep.temp_removed.append(name)
                rep.bytes_freed += info.size
                if not dry_run:
                    store.delete_temp(name)
    return rep


__all__ = ["verify", "gc", "IntegrityError"]


def _remove_stale(
    files: dict[str, FileInfo], keep: set[str], older_than: float, dry_run: bool, delete: Callable[[str], None]
) -> tuple[list[str], int]:
    """Delete (unless ``dry_run``) the files not in ``keep`` last modified before ``older_than`` (epoch
    seconds); returns their names and total size."""
    removed, freed = [], 0
    for name, info in files.items():
        if name in keep:
            continue
        if info.mtime <= older_than:
            removed.append(name)
            freed += info.size
            if not dry_run:
                delete(name)
    return removed, freed
