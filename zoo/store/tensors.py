"""Tensor reads: one model's state dict and a population's stacked tensors.

:class:`TensorReader` keeps a per-zoo cache of blob locations (valid while the catalog's layout
version is unchanged: only gc and repack move blobs) and of the manifests of recent ``stack()``
selects (valid for one generation), so a stack is one catalog query and one copy per tensor name.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from operator import itemgetter
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
from sqlalchemy import Connection, func, select

from zoo.errors import MismatchError, NotFoundError
from zoo.store import schema as S
from zoo.store.manifests import Manifest, PopulationKey
from zoo.store.packs import BlobLocation
from zoo.store.rows import chunks

if TYPE_CHECKING:
    from zoo.store.backend import Backend

__all__ = ["TensorReader", "population_keys"]


def population_keys(c: Connection, population_ids: Sequence[int] | None = None) -> dict[int, PopulationKey]:
    """The current :class:`~zoo.store.manifests.PopulationKey` of each population (of those given)."""
    rewrite, layout = c.execute(select(S.CatalogState.rewrite_version, S.CatalogState.layout_version)
                                .where(S.CatalogState.id == 1)).one()  # fmt: skip
    q = select(S.Model.population_id, func.count(), func.max(S.Model.id)).where(S.Model.population_id.is_not(None))
    if population_ids is not None:
        q = q.where(S.Model.population_id.in_(list(population_ids)))
    return {int(pid): PopulationKey(int(pid), int(rewrite), int(layout), int(n), int(mx))
            for pid, n, mx in c.execute(q.group_by(S.Model.population_id))}  # fmt: skip

_SHAPES: dict[str, tuple[int, ...]] = {}


def _fetch_all(c: Connection, q: Any) -> list[tuple]:
    """All rows of ``q`` as plain tuples, straight from the DBAPI cursor (no Row objects)."""
    res = c.execute(q)
    cur = getattr(res, "cursor", None)
    return cur.fetchall() if cur is not None else [tuple(r) for r in res]


def _shape(text: str) -> tuple[int, ...]:
    """A blob's shape from its JSON text (parsed once per distinct shape)."""
    shp = _SHAPES.get(text)
    if shp is None:
        if len(_SHAPES) > 10_000:
            _SHAPES.clear()
        shp = _SHAPES[text] = tuple(int(x) for x in json.loads(text))
    return shp


class TensorReader:
    """Reads tensors of stored models from one zoo's packs (see :meth:`stack`)."""

    def __init__(self, backend: Backend) -> None:
        self.b = backend
        # blob id -> (pack, offset, dtype, shape): valid while the layout version is unchanged (only gc moves blobs)
        self._loc_index: dict[str, int] = {}  # blob id -> row of the columns below
        self._loc_cols: tuple[list[int], list[int], list[int]] = ([], [], [])  # pack code, offset, kind code
        self._loc_arrays: tuple[np.ndarray, ...] | None = None
        self._loc_packs: list[str] = []
        self._loc_pack_codes: dict[str, int] = {}
        self._loc_kinds: list[tuple[str, str]] = []  # (dtype, shape JSON)
        self._loc_kind_codes: dict[tuple[str, str], int] = {}
        self._loc_layout: int | None = None
        # manifests of recent stack() selects, keyed by (SQL, params, generation): any write invalidates
        self._manifests: dict[Any, tuple | None] = {}
        # whole population manifests by their versioned key (see zoo.store.manifests)
        self._pop_manifests: dict[PopulationKey, Manifest] = {}

    def _locations(self, model_ids_select: Any) -> list[tuple[int, str, BlobLocation]]:
        q = (
            select(S.TensorEntry.model_id, S.TensorEntry.name, S.TensorEntry.position, S.Blob.pack_id, S.Blob.offset,
                   S.Blob.nbytes, S.Blob.dtype, S.Blob.shape)
            .join(S.Blob, S.Blob.id == S.TensorEntry.blob_id)
            .where(S.TensorEntry.model_id.in_(model_ids_select))
            .order_by(S.TensorEntry.model_id, S.TensorEntry.position)
        )  # fmt: skip
        shapes: dict[str, tuple[int, ...]] = {}
        with self.b.engine.connect() as c:
            rows = c.execute(q).all()
        out = []
        for r in rows:
            shp = shapes.get(r.shape)
            if shp is None:
                shp = shapes[r.shape] = tuple(json.loads(r.shape))
            out.append((r.model_id, r.name, BlobLocation(r.pack_id, r.offset, r.nbytes, r.dtype, shp)))
        return out

    def state_dict(self, mid: int) -> dict[str, torch.Tensor]:
        """The tensors of model ``mid``, each in its own private copy-on-write map (writes to the result
        stay in it)."""
        locs = self._locations([mid])  # one private map per pack for this call: writes to the result stay in it
        return dict(zip((name for _, name, _ in locs), self.b.packs.read_many([loc for _, _, loc in locs]), strict=True))

    def _loc_clear(self) -> None:
        self._loc_index.clear()
        self._loc_cols = ([], [], [])
        self._loc_arrays = None
        self._loc_packs = []
        self._loc_pack_codes = {}
        self._loc_kinds = []
        self._loc_kind_codes = {}
        self._manifests.clear()

    def _pack_code(self, pack: str) -> int:
        pc = self._loc_pack_codes.get(pack)
        if pc is None:
            pc = self._loc_pack_codes[pack] = len(self._loc_packs)
            self._loc_packs.append(pack)
        return pc

    def _kind_code(self, kind: tuple[str, str]) -> int:
        kc = self._loc_kind_codes.get(kind)
        if kc is None:
            kc = self._loc_kind_codes[kind] = len(self._loc_kinds)
            self._loc_kinds.append(kind)
        return kc

    def _loc_add(self, bid: str, pack: str, offset: int, dtype: str, shape: str) -> None:
        pc, kc = self._pack_code(pack), self._kind_code((dtype, shape))
        self._loc_index[bid] = len(self._loc_cols[0])
        self._loc_cols[0].append(pc)
        self._loc_cols[1].append(int(offset))
        self._loc_cols[2].append(kc)
        self._loc_arrays = None

    def _manifest(self, c: Connection, q: Any) -> tuple | None:
        """The manifest of the models ``q`` selects as columns (one query; blob locations cached)."""
        index = self._loc_index
        if len(index) > 2_000_000:
            self._loc_clear()
        if not index:  # cold: the manifest and its blob locations in one query
            qj = q.add_columns(S.Blob.pack_id, S.Blob.offset, S.Blob.dtype, S.Blob.shape).join(
                S.Blob, S.Blob.id == S.TensorEntry.blob_id)
            rows = _fetch_all(c, qj)
            for r in rows:
                if r[2] not in index:
                    self._loc_add(r[2], r[4], r[5], r[6], r[7])
        else:
            rows = _fetch_all(c, q)
            unknown = list({r[2] for r in rows if r[2] not in index})
            for chunk in chunks(unknown, 5000):
                for bid, pack, off, dt, shp in c.execute(
                    select(S.Blob.id, S.Blob.pack_id, S.Blob.offset, S.Blob.dtype, S.Blob.shape).where(S.Blob.id.in_(chunk))
                ):
                    self._loc_add(bid, pack, off, dt, shp)
        if not rows:
            return None
        if self._loc_arrays is None:
            self._loc_arrays = tuple(np.asarray(col, dtype=np.int64) for col in self._loc_cols)
        mids, tnames, bids, poss = tuple(zip(*(r[:4] for r in rows), strict=False)) if len(rows[0]) > 4 else tuple(zip(*rows, strict=False))
        li = np.asarray(itemgetter(*bids)(index) if len(bids) > 1 else (index[bids[0]],), dtype=np.int64)
        ncode, uniq = pd.factorize(np.asarray(tnames, dtype=object))
        pc, of, kc = (a[li] for a in self._loc_arrays)
        return (np.asarray(mids, dtype=np.int64), ncode.astype(np.int64), np.asarray(poss, dtype=np.int64), pc, of, kc,
                [str(x) for x in uniq])  # fmt: skip

    def _population_manifest(self, c: Connection, key: PopulationKey, selected: int) -> Manifest | None:
        """Population ``key``'s whole manifest: from its file, else from the catalog (then saved) when the
        selection is at least a quarter of it; None to read just the selection from the catalog."""
        files = self.b.manifest_files
        m = self._pop_manifests.get(key)
        if m is None:
            m = files.load(key)
        if m is None and key.n_models >= files.min_models:
            m = self._grown_manifest(c, key)
        if m is not None or 4 * selected < key.n_models or key.n_models < files.min_models:
            if m is not None:
                self._remember(key, m)
            return m
        qp = select(S.TensorEntry.model_id, S.TensorEntry.name, S.TensorEntry.blob_id, S.TensorEntry.position).where(
            S.TensorEntry.model_id.in_(select(S.Model.id).where(S.Model.population_id == key.population_id)))
        cols = self._manifest(c, qp)
        if cols is None:
            return None
        mid, ncode, pos, pc, of, kc, names = cols
        used_p, pc2 = np.unique(pc, return_inverse=True)
        used_k, kc2 = np.unique(kc, return_inverse=True)
        m = Manifest(mid, ncode, pos, pc2.astype(np.int64), of, kc2.astype(np.int64), names,
                     [self._loc_packs[int(i)] for i in used_p], [self._loc_kinds[int(i)] for i in used_k])  # fmt: skip
        files.save(key, m)
        self._remember(key, m)
        return m

    def _grown_manifest(self, c: Connection, key: PopulationKey) -> Manifest | None:
        """The manifest of a population that only grew since an older manifest was saved: that file plus the
        catalog rows of the models added since (ids above its highest), saved under ``key`` once the added
        rows reach a tenth of the file's; None when there is no such file or the rows do not account for
        every added model (then the whole is read)."""
        files = self.b.manifest_files
        older = [k for k in (*self._pop_manifests, *(k for k in files.files().values() if k is not None))
                 if k.population_id == key.population_id and k.rewrite_version == key.rewrite_version
                 and k.layout_version == key.layout_version and k.n_models < key.n_models
                 and k.max_model_id < key.max_model_id]  # fmt: skip
        if not older:
            return None
        k0 = max(older, key=lambda k: k.n_models)
        old = self._pop_manifests.get(k0) or files.load(k0)
        if old is None:
            return None
        qd = select(S.TensorEntry.model_id, S.TensorEntry.name, S.TensorEntry.blob_id, S.TensorEntry.position).where(
            S.TensorEntry.model_id.in_(select(S.Model.id).where(S.Model.population_id == key.population_id,
                                                                S.Model.id > k0.max_model_id)))  # fmt: skip
        cols = self._manifest(c, qd)
        if cols is None:
            return None
        mid, ncode, pos, pc, of, kc, names = cols
        if np.unique(mid).size != key.n_models - k0.n_models:  # e.g. a concurrent writer's lower id landed late
            return None
        name_list, pack_list, kind_list = list(old.names), list(old.packs), list(old.kinds)

        def recode(codes: np.ndarray, values: list, table: list) -> tuple[np.ndarray, list]:
            """``codes`` (into ``values``) as codes into ``table``, extended with the values it lacks."""
            at = {v: i for i, v in enumerate(table)}
            used = np.unique(codes)
            lut = np.zeros(len(values), dtype=np.int64)
            lut[used] = [at.setdefault(values[int(u)], len(at)) for u in used]
            return lut[codes], list(at)

        ncode, name_list = recode(ncode, names, name_list)
        pc, pack_list = recode(pc, self._loc_packs, pack_list)
        kc, kind_list = recode(kc, self._loc_kinds, kind_list)
        m = Manifest(np.concatenate([old.model_id, mid]), np.concatenate([old.name_code, ncode]),
                     np.concatenate([old.position, pos]), np.concatenate([old.pack_code, pc]),
                     np.concatenate([old.offset, of]), np.concatenate([old.kind_code, kc]),
                     name_list, pack_list, kind_list).check()  # fmt: skip
        if 10 * mid.size >= old.model_id.size:  # saved once the growth reaches a tenth; until then each new
            files.save(key, m)  # process grows the older file again (a few rows), which costs less than a save
        self._remember(key, m)
        return m

    def _remember(self, key: PopulationKey, m: Manifest) -> None:
        """Keep a few population manifests in memory (keys are versioned: a stale one is never asked for)."""
        if key not in self._pop_manifests and len(self._pop_manifests) >= 4:
            self._pop_manifests.pop(next(iter(self._pop_manifests)))
        self._pop_manifests[key] = m

    def _from_population_manifests(self, c: Connection, ordered: list[int] | None, ids: Any,
                                   names: Sequence[str] | None) -> tuple | None:
        """The manifest of the selected models assembled from their populations' manifests (see
        :mod:`zoo.store.manifests`); None when a selected model has no population or a population is
        neither cached nor selected to at least a quarter (the caller reads the catalog then)."""
        idsel = ordered if ordered is not None else ids
        if ordered is not None and not ordered:
            return None
        per_pop = c.execute(select(S.Model.population_id, func.count()).where(S.Model.id.in_(idsel))
                            .group_by(S.Model.population_id)).all()  # fmt: skip
        if not per_pop or any(pid is None for pid, _ in per_pop):
            return None
        keys = population_keys(c, [int(pid) for pid, _ in per_pop])
        parts, whole = [], True
        for pid, selected in per_pop:
            key = keys[int(pid)]
            m = self._population_manifest(c, key, int(selected))
            if m is None:
                return None
            parts.append(m)
            whole = whole and int(selected) == key.n_models
        # into this reader's codes: one name list, packs and kinds interned
        name_codes: dict[str, int] = {}
        cols: list[list[np.ndarray]] = [[] for _ in range(6)]
        for m in parts:
            nmap = np.asarray([name_codes.setdefault(x, len(name_codes)) for x in m.names], dtype=np.int64)
            pmap = np.asarray([self._pack_code(x) for x in m.packs], dtype=np.int64)
            kmap = np.asarray([self._kind_code(x) for x in m.kinds], dtype=np.int64)
            for out, col in zip(cols, (m.model_id, nmap[m.name_code], m.position, pmap[m.pack_code], m.offset,
                                       kmap[m.kind_code]), strict=True):  # fmt: skip
                out.append(col)
        mid, ncode, pos, pc, of, kc = (np.concatenate(x) if len(x) > 1 else x[0] for x in cols)
        name_list = list(name_codes)
        keep = None
        if not whole or ordered is not None:
            sel = np.asarray(ordered if ordered is not None else c.execute(ids).scalars().all(), dtype=np.int64)
            keep = np.isin(mid, sel)
        if names is not None:
            wanted = np.asarray([name_codes[x] for x in set(names) if x in name_codes], dtype=np.int64)
            keep = np.isin(ncode, wanted) if keep is None else keep & np.isin(ncode, wanted)
        if keep is not None:
            mid, ncode, pos, pc, of, kc = (a[keep] for a in (mid, ncode, pos, pc, of, kc))
            if mid.size == 0:
                return None
            used, ncode = np.unique(ncode, return_inverse=True)
            ncode = ncode.astype(np.int64)
            name_list = [name_list[int(i)] for i in used]
        return mid, ncode, pos, pc, of, kc, name_list

    def stack(self, ids: Sequence[int] | Any, names: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        """Stack the tensors of many same-architecture models: ``{name: Tensor[N, ...]}``.

        ``ids`` is a list of model ids (order kept, duplicates allowed) or a SQLAlchemy select of model
        ids (sorted by id). The manifest is read with one catalog query for all the models (blob
        locations are cached per zoo until gc or compaction moves blobs). A population written together
        (or compacted) comes back as copy-on-write views of one memory map (no copy); otherwise each
        tensor name is one copy: runs of consecutive blobs as slices, scattered ones with one indexed
        copy per pack. No per-model file opens or copies.

        Shapes:
            output[name]: ``[N, *shape of name]``.
        """
        ordered = [int(i) for i in ids] if isinstance(ids, Sequence) else None
        q = (
            select(S.TensorEntry.model_id, S.TensorEntry.name, S.TensorEntry.blob_id, S.TensorEntry.position)
            .where(S.TensorEntry.model_id.in_(ordered if ordered is not None else ids))
        )
        if names is not None:
            q = q.where(S.TensorEntry.name.in_(list(names)))
        with self.b.engine.connect() as c:
            state = c.execute(select(S.CatalogState.generation, S.CatalogState.layout_version).where(S.CatalogState.id == 1)).one()
            generation, layout = int(state[0]), int(state[1])
            if layout != self._loc_layout:
                self._loc_clear()
                self._loc_layout = layout
            key = None
            if ordered is None:  # a select: the same query at the same generation has the same manifest
                try:
                    ck = q._generate_cache_key()  # SQLAlchemy's statement cache key, plus the bound values
                    key = (ck.key, tuple(repr(b.effective_value) for b in ck.bindparams), generation) if ck else None
                    hash(key)
                except Exception:  # noqa: BLE001 - an uncacheable select: no manifest cache
                    key = None
            cached = self._manifests.get(key) if key is not None else None
            if cached is None:
                cached = self._from_population_manifests(c, ordered, ids, names)
                if cached is None:
                    cached = self._manifest(c, q)
                if key is not None:
                    if len(self._manifests) >= 8:
                        self._manifests.pop(next(iter(self._manifests)))
                    self._manifests[key] = cached
        if cached is None or (ordered is not None and not ordered):
            if ordered is not None and not ordered:
                return {}
            if names is not None:
                raise NotFoundError(f"no tensor(s) {sorted(set(names))[:5]} in these models (or no such models)")
            if ordered:
                raise NotFoundError(f"no model(s) {sorted(set(ordered))[:5]} in the zoo (or they have no tensors)")
            return {}
        mid, ncode, pos, pcode, off, kcode, name_list = cached
        kinds = self._loc_kinds
        pack_list = self._loc_packs
        present = np.unique(mid)
        if ordered is not None:
            want = np.asarray(ordered, dtype=np.int64)
            missing = np.setdiff1d(want, present)
            if missing.size:
                raise NotFoundError(f"no model(s) {missing[:5].tolist()} in the zoo (or they have no tensors)")
        else:
            want = present
        if names is not None and (absent := set(names) - set(name_list)):
            raise NotFoundError(f"no tensor(s) {sorted(absent)[:5]} in these models")
        order = np.lexsort((mid, ncode))  # by tensor name, then model id
        cuts = np.flatnonzero(np.diff(ncode[order])) + 1
        groups = np.split(order, cuts)
        first_pos = {int(ncode[g[0]]): int(pos[g].min()) for g in groups}
        groups.sort(key=lambda g: (first_pos[int(ncode[g[0]])], int(ncode[g[0]])))  # state-dict order
        idx = np.searchsorted(present, want)  # rows of each group in the requested order
        identity = ordered is None or (want.shape[0] == present.shape[0] and bool(np.all(want == present)))
        requests: list[tuple[str, tuple]] = []
        for g in groups:
            name = name_list[int(ncode[g[0]])]
            if g.shape[0] != present.shape[0]:
                lacking = np.setdiff1d(present, mid[g])[:5].tolist()
                raise MismatchError(f"tensor {name!r} is missing from model(s) {lacking}; these models do not share one architecture")
            kc = kcode[g]
            if bool(np.any(kc != kc[0])):
                ks = sorted({kinds[int(k)] for k in np.unique(kc)})[:3]
                raise MismatchError(f"tensor {name!r} has different shapes/dtypes across models: {ks}")
            sel = g if identity else g[idx]
            dt, shp = kinds[int(kc[0])]
            requests.append((name, (pcode[sel], off[sel], dt, _shape(shp))))
        # all names at once: an object store fetches every byte range of the stack in one batch
        got = self.b.packs.gather_many(pack_list, [r for _, r in requests])
        return {name: t for (name, _), t in zip(requests, got, strict=True)}
