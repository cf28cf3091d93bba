"""The checkpoint store: :class:`Zoo`, the one write path and the read paths.

A zoo is a root folder holding ``catalog.db`` (SQLite, WAL; or any SQLAlchemy URL given as
``url=``) and ``packs/`` (immutable safetensors files of content-addressed tensors)::

    from zoo import Zoo
    z = Zoo.open()                                   # $WEIGHTZOO_HOME or ~/.weightzoo
    m = z.add(state_dict, arch={"family": "mlp", "hidden": [32]}, population="mine",
              metrics={"test_acc": 0.93}, hparams={"lr": 1e-3})
    child = z.add(sd2, parents=[m.id], op="finetune", params={"epochs": 3})
    pop = z.population("mine"); W = pop.stack()      # {tensor name: Tensor[N, ...]}
    df = z.sql("select * from models")               # DuckDB over the live catalog, read-only
    z.write_table("preds", pd.DataFrame({"model_id": ids, "pred": p}))   # learner outputs, queryable by z.sql

Every write goes through :meth:`Zoo.add_many` (``add`` is one item of it): tensors are hashed,
the catalog's write lock is taken, tensors not stored yet are written as one new pack (temp file,
fsync, rename), then one transaction records the pack, blobs, models, manifests, metrics,
hyperparameters, lineage and tags. If anything fails, the transaction rolls back and the new pack is
removed: the store is unchanged.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from operator import itemgetter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
from sqlalchemy import Connection, Engine, delete, func, insert, select, update

from zoo import architectures as archs
from zoo import packs as packs_mod
from zoo import schema as S
from zoo.catalog import Catalog
from zoo.db import make_engine, migrate
from zoo.errors import (
    ConfigError,
    DuplicateError,
    MismatchError,
    NotFoundError,
    ZooError,
)
from zoo.hashing import tensor_id
from zoo.jsonlimits import check_value
from zoo.names import check_name, encodable, safe_repr
from zoo.packs import BlobLocation, PackStore
from zoo.progress import progress_bar
from zoo.records import ArchitectureInfo, Edge, ModelRecord, NewModel, PopulationInfo, TableInfo
from zoo.rows import (
    _arch_mismatch_message,
    _blob_row,
    _check_name,
    _check_tag,
    _chunks,
    _hparam_row,
    metric_rows,
    raw_config,
    split_metric_name,
)
from zoo.settings import default_root

__all__ = ["Zoo", "raw_config", "split_metric_name"]

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

if TYPE_CHECKING:
    import pyarrow as pa

    from zoo.query import ModelQuery, Population
    from zoo.tables import TableFiles

class _Prepared:
    __slots__ = ("item", "names", "ids", "tensors", "config", "chash", "n_params", "nbytes", "model_id",
                 "hp_rows", "metric_rows", "tag_list", "params_json")


class Zoo:
    """A checkpoint store: a catalog (SQL) plus content-addressed tensor packs.

    Open with :meth:`Zoo.open`. Safe for several processes at once (the app and the CLI): writers
    serialise on the catalog's write lock; readers never block writers.
    """

    def __init__(self, root: Path, engine: Engine, url: str) -> None:
        self.root = root
        self.url = url
        self.engine = engine
        self.packs = PackStore(root / "packs")
        self._analytics = None
        self._table_files: TableFiles | None = None
        self.catalog = Catalog(engine, root)
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

    # ------------------------------------------------------------------------------ open/close
    @classmethod
    def open(cls, root: str | Path | None = None, *, url: str | None = None, create: bool = True) -> Zoo:
        """Open (and by default create) a zoo.

        Args:
            root: folder holding the packs (and the SQLite catalog when no ``url`` is given);
                default ``$WEIGHTZOO_HOME`` or ``~/.weightzoo``.
            url: a SQLAlchemy URL for the catalog (e.g. ``postgresql://user@host/db``); default
                ``sqlite:///<root>/catalog.db``.
            create: create the root and catalog when missing (else :class:`NotFoundError`).
        """
        root = Path(root).expanduser() if root is not None else default_root()
        if root.exists() and not root.is_dir():
            raise NotFoundError(f"zoo root {root} exists but is not a folder; give a folder path")
        if not root.exists():
            if not create:
                raise NotFoundError(f"no zoo at {root}; create one with `weightzoo demo` or Zoo.open(create=True)")
            root.mkdir(parents=True, exist_ok=True)
        if url is None:
            db = root / "catalog.db"
            if not db.exists() and not create:
                raise NotFoundError(f"no catalog at {db}; create one with Zoo.open({str(root)!r})")
            url = f"sqlite:///{db}"
        (root / "packs").mkdir(exist_ok=True)
        engine = make_engine(url)
        try:
            migrate(engine)
        except Exception as e:
            engine.dispose()
            from zoo.analytics import is_disk_error, storage_error

            if isinstance(e, ZooError) and isinstance(e, OSError):  # a StorageError: disk full / unwritable
                raise
            if is_disk_error(e):  # e.g. the migration lock file on a full disk
                raise storage_error(e, root) from e
            raise ZooError(f"cannot open the catalog at {url}: {e}") from e
        return cls(root, engine, url)

    @property
    def table_files(self) -> TableFiles:
        """The folder of derived-table Parquet files, ``<root>/tables/``."""
        if self._table_files is None:
            from zoo.tables import TableFiles

            self._table_files = TableFiles(self.root / "tables")
        return self._table_files

    def close(self) -> None:
        if self._analytics is not None:
            self._analytics.close()
            self._analytics = None
        self.packs.close()
        self.engine.dispose()

    def __enter__(self) -> Zoo:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Zoo(root={str(self.root)!r}, url={self.url!r})"

    # ------------------------------------------------------------------------------ catalog helpers
    def generation(self) -> int:
        """A counter bumped by every write (cheap change detection for caches)."""
        return self.catalog.generation()

    def register_architecture(self, config: Mapping[str, Any], name: str | None = None) -> ArchitectureInfo:
        """Store an architecture config (idempotent: the same config returns the existing row)."""
        if name is not None:
            check_name(name, "architecture", allow_digits=False)
        cfg = archs.normalize_config(config)
        with self.engine.begin() as conn:
            self.catalog.bump(conn)
            aid = self._ensure_arch(conn, cfg, name)
        return self.architecture(aid)

    def architecture(self, key: int | str) -> ArchitectureInfo:
        """An architecture by id or name."""
        if isinstance(key, str) and not encodable(key):
            raise NotFoundError(f"no architecture {safe_repr(key)}: the name is not valid UTF-8 text")
        col = S.Architecture.id if isinstance(key, int) else S.Architecture.name
        with self.engine.connect() as c:
            row = c.execute(select(S.Architecture).where(col == key)).first()
        if row is None:
            raise NotFoundError(f"no architecture {key!r}; list them with `weightzoo ls --architectures`")
        return ArchitectureInfo(row.id, row.name, row.family, json.loads(row.config))

    def architectures(self) -> list[ArchitectureInfo]:
        with self.engine.connect() as c:
            rows = c.execute(select(S.Architecture).order_by(S.Architecture.id)).all()
        return [ArchitectureInfo(r.id, r.name, r.family, json.loads(r.config)) for r in rows]

    def _ensure_arch(self, conn: Connection, cfg: dict[str, Any], name: str | None = None) -> int:
        h = archs.config_hash(cfg)
        row = conn.execute(select(S.Architecture.id, S.Architecture.name).where(S.Architecture.config_hash == h)).first()
        if row is not None:
            if name is not None and name != row.name:
                raise DuplicateError(f"this architecture is already registered as {row.name!r}; use that name")
            return int(row.id)
        fam = cfg["family"]
        if name is None:
            name = f"{fam}-{h[:10]}"
        elif conn.execute(select(S.Architecture.id).where(S.Architecture.name == name)).first() is not None:
            raise DuplicateError(f"architecture name {name!r} is taken by a different config; pick another name")
        canon = json.dumps(cfg, sort_keys=True, separators=(",", ":"))
        return int(
            conn.execute(
                insert(S.Architecture).values(name=name, family=fam, config=canon, config_hash=h).returning(S.Architecture.id)
            ).scalar_one()
        )

    def create_population(
        self, name: str, arch: Mapping[str, Any] | str | None = None, description: str = "", *, exist_ok: bool = False
    ) -> PopulationInfo:
        """Create a named population, optionally bound to an architecture (config or name)."""
        _check_name(name, "population")
        with self.engine.begin() as conn:
            self.catalog.bump(conn)
            row = conn.execute(select(S.Population.id).where(S.Population.name == name)).first()
            if row is not None:
                if not exist_ok:
                    raise DuplicateError(f"population {name!r} already exists; pick another name or use exist_ok=True")
            else:
                aid = None
                if isinstance(arch, str):
                    aid = self.architecture(arch).id
                elif arch is not None:
                    aid = self._ensure_arch(conn, archs.normalize_config(arch))
                conn.execute(insert(S.Population).values(name=name, architecture_id=aid, description=description))
        return self.population_info(name)

    def population_info(self, name: str) -> PopulationInfo:
        for p in self.populations():
            if p.name == name:
                return p
        raise NotFoundError(f"no population {name!r}; list them with `weightzoo ls`")

    def populations(self) -> list[PopulationInfo]:
        """All populations with their model counts."""
        counts = (
            select(S.Model.population_id, func.count().label("n")).group_by(S.Model.population_id).subquery()
        )
        q = (
            select(S.Population, S.Architecture.name.label("arch"), func.coalesce(counts.c.n, 0).label("n"))
            .outerjoin(S.Architecture, S.Architecture.id == S.Population.architecture_id)
            .outerjoin(counts, counts.c.population_id == S.Population.id)
            .order_by(S.Population.id)
        )
        with self.engine.connect() as c:
            rows = c.execute(q).all()
        return [PopulationInfo(r.id, r.name, r.arch, r.description, int(r.n)) for r in rows]

    def population(self, name: str) -> Population:
        """A named population as a lazy, filterable :class:`~zoo.query.Population`."""
        from zoo.query import Population

        self.population_info(name)  # NotFoundError with a hint
        return Population(self, name)

    def models(self) -> ModelQuery:
        """A fluent query over all models (``z.models().metric("acc", ">", .9, split="test").ids()``)."""
        from zoo.query import ModelQuery

        return ModelQuery(self)

    # ------------------------------------------------------------------------------ writing
    def add(self, state_dict: Mapping[str, torch.Tensor], **kwargs: Any) -> ModelRecord:
        """Store one model. Keyword arguments are those of :class:`~zoo.records.NewModel`:

        ``arch`` (config dict, architecture name, or None: the population's, else a raw signature),
        ``population``, ``name``, ``parents`` (ids/names, or ``{id: role}``), ``op``, ``params``,
        ``metrics`` (``{"test_acc": .9}`` or ``[(name, split, step, value)]``), ``hparams``, ``tags``,
        ``run``, ``step``, ``source``.
        """
        return self.add_many([NewModel(state_dict, **kwargs)])[0]

    def add_many(self, items: Iterable[NewModel], *, progress: bool = False) -> list[ModelRecord]:
        """Store many models in one pack and one transaction (all or nothing)."""
        items = list(items)
        if not items:
            return []
        with self.engine.connect() as conn:
            pops = {
                r.name: (r.id, r.architecture_id)
                for r in conn.execute(select(S.Population.name, S.Population.id, S.Population.architecture_id))
            }
            prepared = [
                self._prepare(conn, it, pops)
                for it in progress_bar(items, desc="hashing", unit="model", disable=not progress, leave=False)
            ]
        written: list[str] = []  # the new pack's id, known as soon as it is on disk
        try:
            with self.engine.begin() as conn:
                self.catalog.bump(conn)
                self._commit(conn, prepared, written)
                packs_mod._fault_hook("catalog.before_commit")
        except BaseException:
            for pack_id in written:
                self.packs.delete(pack_id)
            raise
        packs_mod._fault_hook("catalog.committed")
        return self.records([p.model_id for p in prepared])

    def _prepare(self, conn: Connection, it: NewModel, pops: dict[str, tuple[int, int | None]]) -> _Prepared:
        if not isinstance(it.state_dict, Mapping) or not it.state_dict:
            raise MismatchError("a model needs a non-empty state dict {name: tensor}")
        tensors: dict[str, torch.Tensor] = {}
        for k, v in it.state_dict.items():
            check_name(k, "tensor", max_len=1000)
            if not isinstance(v, torch.Tensor):
                raise MismatchError(f"state dict entry {k!r} is a {type(v).__name__}, not a tensor")
            if v.is_sparse or v.layout != torch.strided:
                raise MismatchError(f"tensor {k!r} is sparse; store a dense tensor")
            tensors[k] = v.detach().cpu().contiguous()
        if it.name is not None:
            _check_name(it.name, "model")
        if it.population is not None:
            _check_name(it.population, "population")
        # architecture
        pop_arch = pops.get(it.population, (None, None))[1] if it.population else None
        if isinstance(it.arch, str):
            cfg = self.architecture(it.arch).config
        elif it.arch is not None:
            cfg = archs.normalize_config(it.arch)
        elif pop_arch is not None:
            cfg = self.catalog.arch(conn, pop_arch)[1]
            if cfg.get("family") == archs.RAW_FAMILY:  # compare the tensors' own signature with it
                cfg = raw_config(tensors, cfg.get("hf_config"))
        else:
            cfg = raw_config(tensors)
        if archs.can_build(cfg):
            archs.check_state_dict(cfg, tensors)
        chash = archs.config_hash(cfg)
        if pop_arch is not None:
            pname, pcfg = self.catalog.arch(conn, pop_arch)
            if archs.config_hash(pcfg) != chash:
                raise MismatchError(_arch_mismatch_message(it.population, pname, pcfg, cfg))
        p = _Prepared()
        p.item, p.config, p.chash = it, cfg, chash
        # validate all metadata now, before anything is written
        if not isinstance(it.hparams or {}, Mapping):
            raise ConfigError("hparams must be a mapping {name: value}")
        p.hp_rows = [_hparam_row(0, k, v) for k, v in (it.hparams or {}).items()]
        p.metric_rows = metric_rows(0, it.metrics, it.step)
        if isinstance(it.tags, str):
            raise ConfigError(f"tags must be a list of strings, not the string {it.tags!r}")
        p.tag_list = [_check_tag(t) for t in dict.fromkeys(it.tags)]
        if not isinstance(it.params or {}, Mapping):
            raise ConfigError(f"params must be a mapping {{name: value}}, got {type(it.params).__name__}")
        p.params_json = check_value(dict(it.params or {}), "params")  # JSON-able, bounded in size and depth
        check_name(it.op, "lineage op", max_len=200)
        if it.run is not None:
            check_name(it.run, "run")
        par = it.parents
        for role in (par.values() if isinstance(par, Mapping) else ()):
            check_name(role, "lineage role", max_len=200)
        p.names = list(tensors)
        p.tensors = tensors
        p.ids = [tensor_id(t) for t in tensors.values()]
        p.n_params = sum(t.numel() for t in tensors.values())
        p.nbytes = sum(t.numel() * t.element_size() for t in tensors.values())
        return p

    def _commit(self, conn: Connection, prepared: list[_Prepared], written: list[str]) -> None:
        # architectures and populations (created on first use)
        arch_ids: dict[str, int] = {}
        for p in prepared:
            if p.chash not in arch_ids:
                arch_ids[p.chash] = self._ensure_arch(conn, p.config)
        pop_ids: dict[str, int] = {}
        for p in prepared:
            pname = p.item.population
            if pname is None or pname in pop_ids:
                continue
            row = conn.execute(select(S.Population.id, S.Population.architecture_id).where(S.Population.name == pname)).first()
            if row is None:
                pop_ids[pname] = int(
                    conn.execute(
                        insert(S.Population).values(name=pname, architecture_id=arch_ids[p.chash], description="")
                        .returning(S.Population.id)
                    ).scalar_one()
                )
            else:
                if row.architecture_id is not None and row.architecture_id != arch_ids[p.chash]:
                    name, cfg = self.catalog.arch(conn, row.architecture_id)
                    raise MismatchError(_arch_mismatch_message(pname, name, cfg, p.config))
                if row.architecture_id is None:
                    self.catalog.note_rewrite(conn)
                    conn.execute(update(S.Population).where(S.Population.id == row.id).values(architecture_id=arch_ids[p.chash]))
                pop_ids[pname] = int(row.id)
        for p in prepared:
            if p.item.population is not None:
                got = arch_ids[p.chash]
                want = conn.execute(select(S.Population.architecture_id).where(S.Population.id == pop_ids[p.item.population])).scalar_one()
                if want != got:
                    name, cfg = self.catalog.arch(conn, want)
                    raise MismatchError(_arch_mismatch_message(p.item.population, name, cfg, p.config))
        # names must be new
        names = [p.item.name for p in prepared if p.item.name is not None]
        if len(set(names)) != len(names):
            dup = sorted({n for n in names if names.count(n) > 1})
            raise DuplicateError(f"model name(s) {dup[:5]} appear twice in one write; names must be unique")
        for chunk in _chunks(names):
            taken = conn.execute(select(S.Model.name).where(S.Model.name.in_(chunk))).scalars().all()
            if taken:
                raise DuplicateError(f"model name(s) {sorted(taken)[:5]} already exist; pick new names (or leave name=None)")
        # parents must exist
        parent_ids = self._resolve_parents(conn, prepared)
        # blobs: write only what is not stored yet
        unique: dict[str, torch.Tensor] = {}
        # name-major: every model's first tensor, then every model's second, ... so that a
        # population written together stacks as one contiguous slice per tensor name
        for j in range(max(len(p.ids) for p in prepared)):
            for p in prepared:
                if j < len(p.ids):
                    unique.setdefault(p.ids[j], p.tensors[p.names[j]])
        existing: set[str] = set()
        keys = list(unique)
        for chunk in _chunks(keys):
            existing.update(conn.execute(select(S.Blob.id).where(S.Blob.id.in_(chunk))).scalars())
        new = {tid: t for tid, t in unique.items() if tid not in existing}
        if new:
            pack_id, locs, size = self.packs.write(new)
            written.append(pack_id)
            conn.execute(insert(S.Pack).values(id=pack_id, nbytes=size, n_blobs=len(new)))
            conn.execute(insert(S.Blob), [_blob_row(tid, t, locs[tid]) for tid, t in new.items()])
        # models
        rows = [
            {
                "name": p.item.name,
                "population_id": pop_ids.get(p.item.population) if p.item.population else None,
                "architecture_id": arch_ids[p.chash],
                "run": p.item.run,
                "step": p.item.step,
                "op": p.item.op,
                "source": p.item.source,
                "n_params": p.n_params,
                "nbytes": p.nbytes,
            }
            for p in prepared
        ]
        ids = conn.execute(insert(S.Model).returning(S.Model.id, sort_by_parameter_order=True), rows).scalars().all()
        tensors, hps, mets, edges, tags = [], [], [], [], []
        for p, mid in zip(prepared, ids, strict=True):
            p.model_id = mid
            tensors += [
                {"model_id": mid, "name": n, "blob_id": t, "position": i} for i, (n, t) in enumerate(zip(p.names, p.ids, strict=True))
            ]
            hps += [{**r, "model_id": mid} for r in p.hp_rows]
            mets += [{**r, "model_id": mid} for r in p.metric_rows]
            edges += [
                {"child_id": mid, "parent_id": pid, "role": role, "op": p.item.op, "params": p.params_json}
                for pid, role in parent_ids[id(p)]
            ]
            tags += [{"model_id": mid, "tag": t} for t in p.tag_list]
        for table, rows_ in ((S.TensorEntry, tensors), (S.Hyperparameter, hps), (S.Metric, mets), (S.LineageEdge, edges), (S.Tag, tags)):
            if rows_:
                conn.execute(insert(table), rows_)

    def _resolve_parents(self, conn: Connection, prepared: list[_Prepared]) -> dict[int, list[tuple[int, str]]]:
        out: dict[int, list[tuple[int, str]]] = {}
        for p in prepared:
            par = p.item.parents
            pairs = list(par.items()) if isinstance(par, Mapping) else [(x, "parent") for x in par]
            resolved = []
            for key, role in pairs:
                resolved.append((self.catalog.model_id(conn, key), str(role)))
            out[id(p)] = resolved
        return out

    def add_metrics(self, model: int | str, metrics: Mapping[str, float] | Sequence[tuple], step: int | None = None) -> None:
        """Record more metrics for a stored model (e.g. after evaluating it on a new data set)."""
        with self.engine.begin() as conn:
            self.catalog.bump(conn)
            mid = self.catalog.model_id(conn, model)
            self.catalog.add_metrics(conn, mid, metrics, step)

    def add_metrics_many(self, per_model: Iterable[tuple[int | str, Mapping[str, float] | Sequence[tuple]]],
                         step: int | None = None) -> int:  # fmt: skip
        """:meth:`add_metrics` for many models in one transaction (all or nothing); returns the rows written."""
        items = list(per_model)
        with self.catalog.write() as conn:
            ids = {int(m) for m, _ in items if isinstance(m, int)}
            known = {i for chunk in _chunks(sorted(ids)) for i in conn.execute(select(S.Model.id).where(S.Model.id.in_(chunk))).scalars()}
            pairs = [(int(m) if isinstance(m, int) and m in known else self.catalog.model_id(conn, m), metrics)
                     for m, metrics in items]  # fmt: skip
            return self.catalog.add_metrics_many(conn, pairs, step)

    def tag(self, model: int | str, *tags: str) -> None:
        with self.engine.begin() as conn:
            self.catalog.bump(conn)
            mid = self.catalog.model_id(conn, model)
            have = set(conn.execute(select(S.Tag.tag).where(S.Tag.model_id == mid)).scalars())
            new = [{"model_id": mid, "tag": _check_tag(t)} for t in dict.fromkeys(tags) if t not in have]
            if new:
                conn.execute(insert(S.Tag), new)

    def untag(self, model: int | str, *tags: str) -> None:
        with self.engine.begin() as conn:
            self.catalog.bump(conn)
            mid = self.catalog.model_id(conn, model)
            self.catalog.note_rewrite(conn)
            conn.execute(delete(S.Tag).where(S.Tag.model_id == mid, S.Tag.tag.in_(tags)))

    def remove(self, models: Iterable[int | str], *, force: bool = False) -> int:
        """Delete models from the catalog (their tensors become garbage for :meth:`gc`).

        Refuses to delete a model that has children (its lineage would be cut) unless ``force``.
        Rows of derived tables that name a removed model are kept (they are data; joins with
        ``models`` drop them), and tables it produced keep their rows with ``produced_by`` cleared.
        """
        with self.engine.begin() as conn:
            self.catalog.bump(conn)
            ids = [self.catalog.model_id(conn, m) for m in models]
            if not force:
                kids = conn.execute(
                    select(S.LineageEdge.parent_id).where(S.LineageEdge.parent_id.in_(ids), S.LineageEdge.child_id.not_in(ids))
                ).scalars().all()
                if kids:
                    raise ZooError(f"model(s) {sorted(set(kids))[:5]} have children in the zoo; pass force=True to cut their lineage")
            self.catalog.note_rewrite(conn)
            for table in (S.TensorEntry, S.Hyperparameter, S.Metric, S.Tag):
                conn.execute(delete(table).where(table.model_id.in_(ids)))
            conn.execute(update(S.DerivedTable).where(S.DerivedTable.produced_by.in_(ids)).values(produced_by=None))
            conn.execute(delete(S.LineageEdge).where(S.LineageEdge.child_id.in_(ids) | S.LineageEdge.parent_id.in_(ids)))
            conn.execute(delete(S.Model).where(S.Model.id.in_(ids)))
        return len(ids)

    # ------------------------------------------------------------------------------ reading
    def get(self, model: int | str) -> ModelRecord:
        """A model by id or unique name."""
        with self.engine.connect() as conn:
            mid = self.catalog.model_id(conn, model)
        return self.records([mid])[0]

    def records(self, ids: Sequence[int]) -> list[ModelRecord]:
        """Records for many model ids, in the given order."""
        q = (
            select(S.Model, S.Population.name.label("pop"))
            .outerjoin(S.Population, S.Population.id == S.Model.population_id)
        )
        out: dict[int, ModelRecord] = {}
        with self.engine.connect() as c:
            for chunk in _chunks(list(ids)):
                for row in c.execute(q.where(S.Model.id.in_(chunk))):
                    arch = self.catalog.arch(c, row.architecture_id)
                    out[row.id] = ModelRecord(
                        id=row.id, name=row.name, population=row.pop, architecture=arch[0] if arch else None,
                        arch_config=arch[1] if arch else None, run=row.run, step=row.step, op=row.op,
                        source=row.source, n_params=row.n_params, nbytes=row.nbytes, created_at=row.created_at, zoo=self,
                    )  # fmt: skip
        return [out[i] for i in ids]

    def _locations(self, model_ids_select: Any) -> list[tuple[int, str, BlobLocation]]:
        q = (
            select(S.TensorEntry.model_id, S.TensorEntry.name, S.TensorEntry.position, S.Blob.pack_id, S.Blob.offset,
                   S.Blob.nbytes, S.Blob.dtype, S.Blob.shape)
            .join(S.Blob, S.Blob.id == S.TensorEntry.blob_id)
            .where(S.TensorEntry.model_id.in_(model_ids_select))
            .order_by(S.TensorEntry.model_id, S.TensorEntry.position)
        )  # fmt: skip
        shapes: dict[str, tuple[int, ...]] = {}
        with self.engine.connect() as c:
            rows = c.execute(q).all()
        out = []
        for r in rows:
            shp = shapes.get(r.shape)
            if shp is None:
                shp = shapes[r.shape] = tuple(json.loads(r.shape))
            out.append((r.model_id, r.name, BlobLocation(r.pack_id, r.offset, r.nbytes, r.dtype, shp)))
        return out

    def state_dict(self, model: int | str) -> dict[str, torch.Tensor]:
        """A model's tensors by id or name."""
        with self.engine.connect() as conn:
            mid = self.catalog.model_id(conn, model)
        maps: dict[str, Any] = {}  # one private map per pack for this call: writes to the result stay in it
        return {name: self.packs.read(loc, maps) for _, name, loc in self._locations([mid])}

    def _loc_clear(self) -> None:
        self._loc_index.clear()
        self._loc_cols = ([], [], [])
        self._loc_arrays = None
        self._loc_packs = []
        self._loc_pack_codes = {}
        self._loc_kinds = []
        self._loc_kind_codes = {}
        self._manifests.clear()

    def _loc_add(self, bid: str, pack: str, offset: int, dtype: str, shape: str) -> None:
        pc = self._loc_pack_codes.get(pack)
        if pc is None:
            pc = self._loc_pack_codes[pack] = len(self._loc_packs)
            self._loc_packs.append(pack)
        kc = self._loc_kind_codes.get((dtype, shape))
        if kc is None:
            kc = self._loc_kind_codes[(dtype, shape)] = len(self._loc_kinds)
            self._loc_kinds.append((dtype, shape))
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
            for chunk in _chunks(unknown, 5000):
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
        with self.engine.connect() as c:
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
        out: dict[str, torch.Tensor] = {}
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
            out[name] = self.packs.gather_rows(pack_list, pcode[sel], off[sel], dt, _shape(shp))
        return out

    def metrics(self, model: int | str | None = None) -> pd.DataFrame:
        """Metrics in long form (model_id, name, split, step, value), for one model or all."""
        q = select(S.Metric.model_id, S.Metric.name, S.Metric.split, S.Metric.step, S.Metric.value).order_by(S.Metric.id)
        with self.engine.connect() as conn:
            if model is not None:
                q = q.where(S.Metric.model_id == self.catalog.model_id(conn, model))
            rows = conn.execute(q).all()
        return pd.DataFrame(rows, columns=["model_id", "name", "split", "step", "value"])

    def hparams(self, model: int | str) -> dict[str, Any]:
        with self.engine.connect() as conn:
            mid = self.catalog.model_id(conn, model)
            rows = conn.execute(select(S.Hyperparameter.name, S.Hyperparameter.value).where(S.Hyperparameter.model_id == mid)).all()
        return {r.name: json.loads(r.value) for r in rows}

    def tags(self, model: int | str) -> list[str]:
        with self.engine.connect() as conn:
            mid = self.catalog.model_id(conn, model)
            return sorted(conn.execute(select(S.Tag.tag).where(S.Tag.model_id == mid)).scalars())

    def lineage(self, model: int | str, *, direction: str = "up", max_depth: int | None = None) -> list[Edge]:
        """Lineage edges reachable from a model: ``"up"`` (ancestors), ``"down"`` (descendants) or ``"both"``."""
        if direction not in ("up", "down", "both"):
            raise ConfigError(f"direction must be 'up', 'down' or 'both', not {direction!r}")
        with self.engine.connect() as conn:
            start = self.catalog.model_id(conn, model)
            edges: dict[int, Edge] = {}
            for d in (["up", "down"] if direction == "both" else [direction]):
                frontier, seen, depth = {start}, {start}, 0
                while frontier and (max_depth is None or depth < max_depth):
                    col = S.LineageEdge.child_id if d == "up" else S.LineageEdge.parent_id
                    rows = []
                    for chunk in _chunks(sorted(frontier)):
                        rows += conn.execute(select(S.LineageEdge).where(col.in_(chunk))).all()
                    nxt = set()
                    for r in rows:
                        e = r
                        edges[e.id] = Edge(e.child_id, e.parent_id, e.role, e.op, json.loads(e.params), e.created_at)
                        other = e.parent_id if d == "up" else e.child_id
                        if other not in seen:
                            seen.add(other)
                            nxt.add(other)
                    frontier, depth = nxt, depth + 1
        return [edges[k] for k in sorted(edges)]

    # ------------------------------------------------------------------------------ evaluation
    def evaluate(
        self,
        models: Sequence[int | str],
        *,
        dataset: str = "digits",
        splits: Sequence[str] = ("test",),
        dataset_root: str | None = None,
        seed: int = 0,
        record: bool = True,
        step: int | None = None,
    ) -> pd.DataFrame:
        """Evaluate stored classifiers (one batched pass per architecture) and record the metrics.

        Returns a DataFrame (model_id, split, loss, acc); see :func:`zoo.evaluate.evaluate_models`.
        """
        from zoo.evaluate import evaluate_models

        return evaluate_models(self, models, dataset=dataset, splits=splits, dataset_root=dataset_root, seed=seed,
                               record=record, step=step)  # fmt: skip

    # ------------------------------------------------------------------------------ stats
    def summary(self) -> dict[str, Any]:
        """Counts and sizes: models, populations, blobs, packs, logical vs stored bytes (dedup ratio)."""
        with self.engine.connect() as c:
            n_models = c.execute(select(func.count()).select_from(S.Model)).scalar_one()
            logical = c.execute(select(func.coalesce(func.sum(S.Model.nbytes), 0))).scalar_one()
            n_blobs = c.execute(select(func.count()).select_from(S.Blob)).scalar_one()
            stored = c.execute(select(func.coalesce(func.sum(S.Blob.nbytes), 0))).scalar_one()
            n_packs = c.execute(select(func.count()).select_from(S.Pack)).scalar_one()
            on_disk = c.execute(select(func.coalesce(func.sum(S.Pack.nbytes), 0))).scalar_one()
        return {
            "root": str(self.root), "url": self.url, "models": int(n_models), "populations": len(self.populations()),
            "blobs": int(n_blobs), "packs": int(n_packs), "logical_bytes": int(logical), "stored_bytes": int(stored),
            "pack_bytes": int(on_disk), "dedup_ratio": (logical / stored) if stored else 1.0,
        }  # fmt: skip

    # ------------------------------------------------------------------------------ SQL
    #: Zoo-level defaults of :meth:`sql`'s limits (None: ``$WEIGHTZOO_SQL_MEMORY`` /
    #: ``$WEIGHTZOO_SQL_TIMEOUT`` / ``$WEIGHTZOO_SQL_THREADS``, else 25% of RAM, 60 s, up to 4 threads).
    sql_memory_limit: str | int | None = None
    sql_timeout: float | None = None
    sql_threads: int | None = None

    def sql(
        self, query: str, *, arrow: bool = False, memory_limit: str | int | None = None, timeout: float | None = None,
        threads: int | None = None,
    ) -> pd.DataFrame:  # fmt: skip
        """Run a read-only SQL query (DuckDB) over the live catalog; pandas out (Arrow with ``arrow=True``).

        Tables: models, populations, architectures, metrics, hyperparameters, lineage, tags,
        tensors, blobs, packs, derived_tables, and every derived table by its name (see
        :meth:`write_table`). Views: ``model_overview`` (one row per model with population and
        architecture), ``metrics_wide``, ``hparams_wide``. Anything but a single SELECT is refused
        with :class:`~zoo.errors.QueryError`.

        Limits: ``memory_limit`` (``"2GB"``, ``"512MB"``, ``"25%"`` of RAM, or bytes), ``timeout``
        (seconds, 0 = none) and ``threads``; each unset one comes from the zoo's
        ``sql_memory_limit`` / ``sql_timeout`` / ``sql_threads``, then the environment, then the
        default (25% of RAM, 60 s, up to 4 threads). A query over a limit is stopped with a
        :class:`~zoo.analytics.QueryLimitError` (a QueryError) naming the limit.
        """
        from zoo.analytics import Analytics

        if self._analytics is None:
            self._analytics = Analytics(self)
        return self._analytics.query(query, arrow=arrow, memory_limit=memory_limit, timeout=timeout, threads=threads)

    # ------------------------------------------------------------------------------ derived tables
    def write_table(
        self,
        name: str,
        frame: pd.DataFrame,
        *,
        mode: str = "replace",
        description: str | None = None,
        produced_by: int | str | None = None,
    ) -> TableInfo:
        """Store learner outputs (predictions, embeddings, statistics) as a derived table ``name``.

        ``Zoo.sql`` can then query it and join it with the catalog
        (``select m.name, p.pred from model_overview m join preds p on p.model_id = m.id``).

        Args:
            name: 1-63 lower-case letters, digits and ``_``, starting with a letter; not a catalog
                table or view name (``models``, ``model_overview``, ...) nor an SQL keyword.
            frame: a DataFrame of numbers, strings, bools, datetimes, or vector cells (equal-length
                1-D arrays/lists/tensors, stored as ``FLOAT[d]``/``DOUBLE[d]``). A column
                ``model_id`` must hold ids of models in the zoo. A named index is kept as columns.
            mode: ``"replace"`` (the default; creates or overwrites) or ``"append"`` (adds rows
                with the same columns, creating the table if needed; ints/floats are cast to the
                stored numeric types).
            description: free text; None keeps the table's current one.
            produced_by: the model (id or name) that produced the table, e.g. the stored encoder,
                recorded for lineage; None keeps the current one.

        The write is atomic (Parquet file fsynced and renamed, then the catalog commits); bad
        input raises a :class:`~zoo.errors.ZooError` and leaves the store unchanged.
        """
        from zoo.tables import write_table

        return write_table(self, name, frame, mode=mode, description=description, produced_by=produced_by)

    def table(self, name: str, *, arrow: bool = False) -> pd.DataFrame | pa.Table:
        """A derived table's rows as pandas (vector cells as numpy arrays); Arrow with ``arrow=True``."""
        from zoo.tables import read_table

        t = read_table(self, name)
        return t if arrow else t.to_pandas()

    def tables(self) -> list[TableInfo]:
        """All derived tables (name, rows, column types, description, producer, times), by name."""
        from zoo.tables import list_tables

        return list_tables(self)

    def table_info(self, name: str) -> TableInfo:
        """One derived table's :class:`~zoo.records.TableInfo` (:class:`NotFoundError` if none)."""
        from zoo.tables import table_info

        return table_info(self, name)

    def drop_table(self, name: str) -> None:
        """Delete a derived table (its catalog row, then its files)."""
        from zoo.tables import drop_table

        drop_table(self, name)

    # ------------------------------------------------------------------------------ maintenance
    def verify(self, *, rehash: bool = True, progress: bool = False) -> Any:
        """Check the store: every pack present, every blob where the catalog says, hashes right."""
        from zoo.maintenance import verify

        return verify(self, rehash=rehash, progress=progress)

    def gc(self, *, grace_seconds: float = 3600.0, compact_below: float = 0.5, dry_run: bool = False,
           repack: bool = False) -> Any:  # fmt: skip
        """Remove unreferenced blobs, empty packs, old orphans and temp files; compact sparse packs.

        ``repack=True`` also rewrites every population spread over several packs (or out of order)
        into one pack in stacking order (:meth:`repack`); the report's ``repacked`` lists them.
        """
        from zoo.maintenance import gc

        return gc(self, grace_seconds=grace_seconds, compact_below=compact_below, dry_run=dry_run, repack=repack)

    def repack(self, population: str | None = None, *, dry_run: bool = False) -> Any:
        """Rewrite each population (or the one named) written in many batches into one pack in stacking
        order, so ``stack()`` is one slice per tensor name again. Atomic, keeps every content hash;
        returns a :class:`~zoo.repack.RepackReport`."""
        from zoo.repack import repack

        return repack(self, population, dry_run=dry_run)

    # ------------------------------------------------------------------------------ ingest/export
    def ingest(
        self,
        source: str | Path,
        *,
        population: str | None = None,
        arch: Mapping[str, Any] | str | None = None,
        tags: Sequence[str] = (),
        batch_size: int = 256,
        revision: str | None = None,
        cache_dir: str | Path | None = None,
        offline: bool | None = None,
        progress: bool = False,
        follow_symlinks: bool = False,
    ) -> list[ModelRecord]:
        """Ingest checkpoints: a file, a folder of them, a sharded checkpoint, or a Hugging Face repo.

        All or nothing: if any checkpoint fails, the models already written by this call are removed.
        A Hugging Face repo id (``org/name``) is read from the local HF cache when offline (the
        default when ``HF_HUB_OFFLINE=1``), else downloaded with huggingface_hub. A file link leading out
        of the folder (or out of the HF cache repo ``models--org--name/``) is refused and directory links
        are skipped with a warning, unless ``follow_symlinks=True``.
        """
        from zoo.transfer import ingest

        return ingest(self, source, population=population, arch=arch, tags=tags, batch_size=batch_size,
                      revision=revision, cache_dir=cache_dir, offline=offline, progress=progress,
                      follow_symlinks=follow_symlinks)  # fmt: skip

    def export(self, model: int | str, out_dir: str | Path, *, overwrite: bool = False, max_shard_size: int | None = None) -> Path:
        """Write a model as a Hugging Face style folder: safetensors, config.json, README.md (card with lineage)."""
        from zoo.transfer import export

        return export(self, model, out_dir, overwrite=overwrite, max_shard_size=max_shard_size)
