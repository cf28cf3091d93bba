"""Repack: rewrite a population's tensors as one pack in stacking order.

A population written in many small batches (a builder writes one batch per checkpoint epoch and
shard; resumed builds and later additions add more) has its tensors spread over many packs, so
``stack()`` copies one run per (tensor name, pack) or gathers scattered rows. :func:`repack` writes
the population's blobs into one new pack, name-major in stacking order (every model's first tensor
by model id, then every model's second, ...), so that ``stack()`` of the whole population is one
slice of one memory map per tensor name again (zero copy), and filtered subsets gather from one pack.

Content hashes do not change (a blob's id is the hash of its dtype, shape and bytes; only its pack and
offset move), so manifests, lineage and dedup are untouched.

Atomic, in the same steps as every write: under the catalog's write lock the new pack is written
through :func:`zoo.store.fsutil.atomic_file` (temp, fsync, rename), then one transaction moves the blobs'
locations, records the new pack, drops the rows of packs left empty and bumps the layout version;
only after the commit are the emptied pack files deleted. A crash before the commit leaves the old
packs in use and the new pack an orphan (``verify`` reports it, ``gc`` removes it after the grace
period); a crash after it leaves the old files as orphans, likewise. Fault-injection steps (see
:func:`zoo.store.packs.fault_hook`): :data:`REPACK_STEPS`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import bindparam, delete, func, insert, select, update

from zoo.errors import NotFoundError
from zoo.store import packs as packs_mod
from zoo.store import schema as S
from zoo.store.packs import NP_DTYPES, BlobLocation

if TYPE_CHECKING:
    from zoo.store.backend import Backend

__all__ = ["repack", "RepackReport", "REPACK_STEPS", "stack_runs"]

#: the named steps of a repack, in order (fault-injection tests stop at each)
REPACK_STEPS: tuple[str, ...] = (
    "repack.pack.temp_written",
    "repack.pack.fsynced",
    "repack.pack.renamed",
    "repack.catalog.before_commit",
    "repack.catalog.committed",
    "repack.old_removed",
)


@dataclass
class RepackReport:
    """What :func:`repack` did (or would do, with ``dry_run``), per population."""

    dry_run: bool = False
    populations: dict[str, dict[str, Any]] = field(default_factory=dict)
    packs_written: list[str] = field(default_factory=list)
    packs_removed: list[str] = field(default_factory=list)
    bytes_written: int = 0

    @property
    def repacked(self) -> list[str]:
        return [p for p, d in self.populations.items() if d["repacked"]]

    def to_dict(self) -> dict[str, Any]:
        return {"dry_run": self.dry_run, "populations": self.populations, "packs_written": self.packs_written,
                "packs_removed": self.packs_removed, "bytes_written": self.bytes_written}  # fmt: skip

    def __str__(self) -> str:
        lines = []
        for name, d in self.populations.items():
            verb = ("would repack" if self.dry_run else "repacked") if d["repacked"] else "kept"
            lines.append(f"{name}: {verb} ({d['models']} models, {d['blobs']} blobs, {d['runs_before']} -> "
                         f"{d['runs_after']} slices to stack, {d['packs_before']} pack(s) before)")  # fmt: skip
        if not lines:
            lines.append("no population to repack")
        if self.packs_written:
            lines.append(f"wrote {len(self.packs_written)} pack(s), {self.bytes_written / 1e6:.1f} MB; "
                         f"removed {len(self.packs_removed)} emptied pack(s)")  # fmt: skip
        return "\n".join(lines)


def _manifest(c: Any, pop_id: int) -> list[tuple]:
    """(model id, tensor name, position, blob id, pack, offset, nbytes, dtype, shape) of a population."""
    q = (
        select(S.TensorEntry.model_id, S.TensorEntry.name, S.TensorEntry.position, S.Blob.id, S.Blob.pack_id,
               S.Blob.offset, S.Blob.nbytes, S.Blob.dtype, S.Blob.shape)
        .join(S.Blob, S.Blob.id == S.TensorEntry.blob_id)
        .join(S.Model, S.Model.id == S.TensorEntry.model_id)
        .where(S.Model.population_id == pop_id)
    )  # fmt: skip
    return [tuple(r) for r in c.execute(q).all()]


def _stacking_order(rows: list[tuple]) -> list[list[tuple]]:
    """The rows grouped by tensor name (state-dict order), each group by model id."""
    by_name: dict[str, list[tuple]] = {}
    first: dict[str, int] = {}
    for r in rows:
        by_name.setdefault(r[1], []).append(r)
        first[r[1]] = min(first.get(r[1], r[2]), r[2])
    return [sorted(by_name[n], key=lambda r: r[0]) for n in sorted(by_name, key=lambda n: (first[n], n))]


def stack_runs(groups: list[list[tuple]], loc: dict[str, tuple[str, int]]) -> int:
    """How many contiguous slices stacking these groups takes, with blobs at ``loc[blob] = (pack, offset)``."""
    runs = 0
    for g in groups:
        prev = None
        for r in g:
            pack, off = loc[r[3]]
            if prev is None or prev[0] != pack or prev[1] + r[6] != off:
                runs += 1
            prev = (pack, off)
    return runs


def _planned(groups: list[list[tuple]]) -> tuple[list[tuple], dict[str, tuple[str, int]]]:
    """The unique blobs in stacking order, as :meth:`PackStore.write` lays them out, and their offsets."""
    unique: dict[str, tuple] = {}
    for g in groups:
        for r in g:
            unique.setdefault(r[3], r)
    items = sorted(unique.values(), key=lambda r: -np.dtype(NP_DTYPES[r[7]]).itemsize)  # stable, as write() does
    loc, off = {}, 0
    for r in items:
        loc[r[3]] = ("<new>", off)
        off += int(r[6])
    return items, loc


def repack(backend: Backend, population: str | None = None, *, dry_run: bool = False, min_gain: int = 1) -> RepackReport:
    """Rewrite each population (or the one named) into one pack in stacking order, when it helps.

    A population is rewritten when the new layout stacks it in at least ``min_gain`` fewer contiguous
    slices than now (it is spread over packs, or out of order); one already in stacking order is kept.
    Returns a :class:`RepackReport`. Atomic per population (see the module docstring).
    """
    rep = RepackReport(dry_run=dry_run)
    with backend.engine.connect() as c:
        pops = c.execute(select(S.Population.id, S.Population.name).order_by(S.Population.id)).all()
    if population is not None:
        pops = [p for p in pops if p.name == population]
        if not pops:
            raise NotFoundError(f"no population {population!r}; list them with `weightzoo ls`")
    for pop_id, name in pops:
        _repack_one(backend, int(pop_id), name, rep, dry_run=dry_run, min_gain=min_gain)
    return rep


def _repack_one(backend: Backend, pop_id: int, name: str, rep: RepackReport, *, dry_run: bool, min_gain: int) -> None:
    written: str | None = None
    emptied: list[str] = []
    try:
        with backend.engine.begin() as c:
            backend.catalog.bump(c)  # the write lock first: no writer or gc moves these blobs meanwhile
            rows = _manifest(c, pop_id)
            if not rows:
                c.rollback()
                return
            groups = _stacking_order(rows)
            now = {r[3]: (r[4], int(r[5])) for r in rows}
            runs_before = stack_runs(groups, now)
            items, planned = _planned(groups)
            runs_after = stack_runs(groups, planned)
            old_packs = sorted({r[4] for r in rows})
            info = {"models": len({r[0] for r in rows}), "blobs": len(items), "packs_before": len(old_packs),
                    "runs_before": runs_before, "runs_after": runs_after, "repacked": False}  # fmt: skip
            rep.populations[name] = info
            if runs_before - runs_after < max(1, min_gain):
                info["runs_after"] = runs_before
                c.rollback()
                return
            info["repacked"] = True
            if dry_run:
                c.rollback()
                return
            got = backend.packs.read_many([BlobLocation(r[4], int(r[5]), int(r[6]), r[7], tuple(json.loads(r[8])))
                                           for r in items])  # fmt: skip
            tensors = {r[3]: t for r, t in zip(items, got, strict=True)}
            written, locs, size = backend.packs.write(tensors, step_prefix="repack.pack.")
            c.execute(insert(S.Pack).values(id=written, nbytes=size, n_blobs=len(tensors)))
            t = S.Blob.__table__
            c.execute(
                update(t).where(t.c.id == bindparam("bid")).values(pack_id=bindparam("pk"), offset=bindparam("off")),
                [{"bid": bid, "pk": written, "off": loc.offset} for bid, loc in locs.items()],
            )
            live = set(
                c.execute(select(S.Blob.pack_id).where(S.Blob.pack_id.in_(old_packs)).group_by(S.Blob.pack_id).having(func.count() > 0))
                .scalars()
            )  # fmt: skip
            emptied = [p for p in old_packs if p not in live]
            if emptied:
                c.execute(delete(S.Pack).where(S.Pack.id.in_(emptied)))
            c.execute(update(S.CatalogState).where(S.CatalogState.id == 1)
                      .values(layout_version=S.CatalogState.layout_version + 1))  # fmt: skip
            packs_mod.fault_hook("repack.catalog.before_commit")
    except BaseException:
        if written is not None:
            backend.packs.delete(written)
        raise
    if written is None:
        return
    packs_mod.fault_hook("repack.catalog.committed")
    rep.packs_written.append(written)
    rep.bytes_written += size
    for p in emptied:  # no longer in the catalog: safe to delete (a crash here leaves orphans for gc)
        backend.packs.delete(p)
        rep.packs_removed.append(p)
    packs_mod.fault_hook("repack.old_removed")
