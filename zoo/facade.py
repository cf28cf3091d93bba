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

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import torch
from sqlalchemy import Engine

from zoo.store import lineage as lineage_mod
from zoo.store import read, write
from zoo.store.backend import Backend
from zoo.store.catalog import Catalog
from zoo.store.packs import PackStore
from zoo.store.records import ArchitectureInfo, Edge, ModelRecord, NewModel, PopulationInfo, TableInfo
from zoo.store.rows import raw_config, split_metric_name
from zoo.store.tablefiles import TableFiles
from zoo.store.tensors import TensorReader

if TYPE_CHECKING:
    import pyarrow as pa

    from zoo.query.analytics import Analytics
    from zoo.query.fluent import ModelQuery, Population

__all__ = ["Zoo", "raw_config", "split_metric_name"]


class Zoo:
    """A checkpoint store: a catalog (SQL) plus content-addressed tensor packs.

    Open with :meth:`Zoo.open`. Safe for several processes at once (the app and the CLI): writers
    serialise on the catalog's write lock; readers never block writers. The work is done by
    :mod:`zoo.store` (writes, reads, tensors, lineage, maintenance) and :mod:`zoo.query` (queries, SQL,
    derived tables); this class composes them and holds no SQL.
    """

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self._tensors = TensorReader(backend)
        self._analytics: Analytics | None = None

    # ------------------------------------------------------------------------------ open/close
    @classmethod
    def open(cls, root: str | Path | None = None, *, url: str | None = None, create: bool = True,
             packs: str | Path | None = None, storage_options: Mapping[str, Any] | None = None,
             packs_cache: str | Path | None = None) -> Zoo:  # fmt: skip
        """Open (and by default create) a zoo.

        Args:
            root: folder holding the packs (and the SQLite catalog when no ``url`` is given);
                default ``$WEIGHTZOO_HOME`` or ``~/.weightzoo``.
            url: a SQLAlchemy URL for the catalog (e.g. ``postgresql://user@host/db``); default
                ``sqlite:///<root>/catalog.db``.
            create: create the root and catalog when missing (else :class:`NotFoundError`).
            packs: where a new zoo keeps its packs and table files: ``s3://bucket/prefix`` (any fsspec
                URL) or a folder; default ``$WEIGHTZOO_PACKS``, else ``<root>/packs``. Recorded in the
                catalog, so later opens find them without it (see docs/scale-out.md).
            storage_options: options of that file system (s3fs: ``endpoint_url``, ``key``, ``secret``,
                ...); default ``$WEIGHTZOO_STORAGE_OPTIONS`` (JSON), else the file system's own settings.
            packs_cache: a local read-cache folder for packs in an object store (default
                ``$WEIGHTZOO_PACKS_CACHE``, else none: every read is a ranged read).
        """
        return cls(Backend.open(root, url=url, create=create, packs=packs, storage_options=storage_options,
                                packs_cache=packs_cache))  # fmt: skip

    @property
    def root(self) -> Path:
        return self.backend.root

    @property
    def url(self) -> str:
        return self.backend.url

    @property
    def engine(self) -> Engine:
        return self.backend.engine

    @property
    def catalog(self) -> Catalog:
        return self.backend.catalog

    @property
    def packs(self) -> PackStore:
        return self.backend.packs

    @property
    def table_files(self) -> TableFiles:
        """The folder of derived-table Parquet files, ``<root>/tables/``."""
        return self.backend.table_files

    def close(self) -> None:
        if self._analytics is not None:
            self._analytics.close()
            self._analytics = None
        self.backend.close()

    def __enter__(self) -> Zoo:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Zoo(root={str(self.root)!r}, url={self.url!r})"

    # ------------------------------------------------------------------------------ architectures, populations
    def generation(self) -> int:
        """A counter bumped by every write (cheap change detection for caches)."""
        return self.catalog.generation()

    def register_architecture(self, config: Mapping[str, Any], name: str | None = None) -> ArchitectureInfo:
        """Store an architecture config (idempotent: the same config returns the existing row)."""
        return self.architecture(write.register_architecture(self.backend, config, name))

    def architecture(self, key: int | str) -> ArchitectureInfo:
        """An architecture by id or name."""
        return read.architecture(self.backend, key)

    def architectures(self) -> list[ArchitectureInfo]:
        """Every stored architecture, by id."""
        return read.architectures(self.backend)

    def create_population(
        self, name: str, arch: Mapping[str, Any] | str | None = None, description: str = "", *, exist_ok: bool = False
    ) -> PopulationInfo:
        """Create a named population, optionally bound to an architecture (config or name)."""
        write.create_population(self.backend, name, arch, description, exist_ok=exist_ok)
        return self.population_info(name)

    def population_info(self, name: str) -> PopulationInfo:
        """One population with its model count."""
        return read.population_info(self.backend, name)

    def populations(self) -> list[PopulationInfo]:
        """All populations with their model counts."""
        return read.populations(self.backend)

    def population(self, name: str) -> Population:
        """A named population as a lazy, filterable :class:`~zoo.query.fluent.Population`."""
        from zoo.query.fluent import Population

        self.population_info(name)  # NotFoundError with a hint
        return Population(self, name)

    def models(self) -> ModelQuery:
        """A fluent query over all models (``z.models().metric("acc", ">", .9, split="test").ids()``)."""
        from zoo.query.fluent import ModelQuery

        return ModelQuery(self)

    # ------------------------------------------------------------------------------ writing
    def add(self, state_dict: Mapping[str, torch.Tensor], **kwargs: Any) -> ModelRecord:
        """Store one model. Keyword arguments are those of :class:`~zoo.store.records.NewModel`:

        ``arch`` (config dict, architecture name, or None: the population's, else a raw signature),
        ``population``, ``name``, ``parents`` (ids/names, or ``{id: role}``), ``op``, ``params``,
        ``metrics`` (``{"test_acc": .9}`` or ``[(name, split, step, value)]``), ``hparams``, ``tags``,
        ``run``, ``step``, ``source``.
        """
        return self.add_many([NewModel(state_dict, **kwargs)])[0]

    def add_many(self, items: Iterable[NewModel], *, progress: bool = False) -> list[ModelRecord]:
        """Store many models in one pack and one transaction (all or nothing); see :mod:`zoo.store.write`."""
        return self.records(write.add_many(self.backend, items, progress=progress))

    def add_metrics(self, model: int | str, metrics: Mapping[str, float] | Sequence[tuple], step: int | None = None) -> None:
        """Record more metrics for a stored model (e.g. after evaluating it on a new data set)."""
        write.add_metrics(self.backend, model, metrics, step)

    def add_metrics_many(self, per_model: Iterable[tuple[int | str, Mapping[str, float] | Sequence[tuple]]],
                         step: int | None = None) -> int:  # fmt: skip
        """:meth:`add_metrics` for many ``(model, metrics)`` pairs in one transaction (all or nothing);
        returns the number of rows written."""
        return write.add_metrics_many(self.backend, per_model, step)

    def tag(self, model: int | str, *tags: str) -> None:
        """Add tags to a model."""
        write.tag(self.backend, model, *tags)

    def untag(self, model: int | str, *tags: str) -> None:
        """Remove tags from a model."""
        write.untag(self.backend, model, *tags)

    def remove(self, models: Iterable[int | str], *, force: bool = False) -> int:
        """Delete models from the catalog (their tensors become garbage for :meth:`gc`).

        Refuses to delete a model that has children (its lineage would be cut) unless ``force``.
        Rows of derived tables that name a removed model are kept (they are data; joins with
        ``models`` drop them), and tables it produced keep their rows with ``produced_by`` cleared.
        """
        return write.remove(self.backend, models, force=force)

    # ------------------------------------------------------------------------------ reading
    def get(self, model: int | str) -> ModelRecord:
        """A model by id or unique name."""
        return self.records([read.model_id(self.backend, model)])[0]

    def records(self, ids: Sequence[int]) -> list[ModelRecord]:
        """Records for many model ids, in the given order."""
        return read.records(self.backend, ids, owner=self)

    def state_dict(self, model: int | str) -> dict[str, torch.Tensor]:
        """A model's tensors by id or name."""
        return self._tensors.state_dict(read.model_id(self.backend, model))

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
        return self._tensors.stack(ids, names)

    def metrics(self, model: int | str | None = None) -> pd.DataFrame:
        """Metrics in long form (model_id, name, split, step, value), for one model or all."""
        return read.metrics(self.backend, model)

    def hparams(self, model: int | str) -> dict[str, Any]:
        """A model's hyperparameters ``{name: value}``."""
        return read.hparams(self.backend, model)

    def tags(self, model: int | str) -> list[str]:
        """A model's tags, sorted."""
        return read.tags(self.backend, model)

    def lineage(self, model: int | str, *, direction: str = "up", max_depth: int | None = None) -> list[Edge]:
        """Lineage edges reachable from a model: ``"up"`` (ancestors), ``"down"`` (descendants) or ``"both"``."""
        return lineage_mod.lineage(self.backend, model, direction=direction, max_depth=max_depth)

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
        workers: int = 1,
        executor: Any = None,
        address: str | None = None,
        timeout: float = 30.0,
    ) -> pd.DataFrame:
        """Evaluate stored classifiers (one batched pass per architecture) and record the metrics.

        Returns a DataFrame (model_id, split, loss, acc); see :func:`zoo.build.evaluate.evaluate_models`
        (``workers``/``executor``/``address``/``timeout``: in shards on a process pool or Ray, docs/scale-out.md).
        """
        from zoo.build.evaluate import evaluate_models

        return evaluate_models(self, models, dataset=dataset, splits=splits, dataset_root=dataset_root, seed=seed,
                               record=record, step=step, workers=workers, executor=executor, address=address,
                               timeout=timeout)  # fmt: skip

    # ------------------------------------------------------------------------------ stats
    def summary(self) -> dict[str, Any]:
        """Counts and sizes: models, populations, blobs, packs, logical vs stored bytes (dedup ratio)."""
        return read.summary(self.backend)

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
        :class:`~zoo.query.analytics.QueryLimitError` (a QueryError) naming the limit.
        """
        from zoo.query.analytics import Analytics

        if self._analytics is None:
            self._analytics = Analytics(self.backend, defaults=self)
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
        from zoo.query.tables import write_table

        return write_table(self.backend, name, frame, mode=mode, description=description, produced_by=produced_by)

    def table(self, name: str, *, arrow: bool = False) -> pd.DataFrame | pa.Table:
        """A derived table's rows as pandas (vector cells as numpy arrays); Arrow with ``arrow=True``."""
        from zoo.query.tables import read_table

        t = read_table(self.backend, name)
        return t if arrow else t.to_pandas()

    def tables(self) -> list[TableInfo]:
        """All derived tables (name, rows, column types, description, producer, times), by name."""
        from zoo.query.tables import list_tables

        return list_tables(self.backend)

    def table_info(self, name: str) -> TableInfo:
        """One derived table's :class:`~zoo.store.records.TableInfo` (:class:`NotFoundError` if none)."""
        from zoo.query.tables import table_info

        return table_info(self.backend, name)

    def drop_table(self, name: str) -> None:
        """Delete a derived table (its catalog row, then its files)."""
        from zoo.query.tables import drop_table

        drop_table(self.backend, name)

    # ------------------------------------------------------------------------------ maintenance
    def verify(self, *, rehash: bool = True, progress: bool = False) -> Any:
        """Check the store: every pack present, every blob where the catalog says, hashes right."""
        from zoo.store.maintenance import verify

        return verify(self.backend, rehash=rehash, progress=progress)

    def gc(self, *, grace_seconds: float = 3600.0, compact_below: float = 0.5, dry_run: bool = False,
           repack: bool = False) -> Any:  # fmt: skip
        """Remove unreferenced blobs, empty packs, old orphans and temp files; compact sparse packs.

        ``repack=True`` also rewrites every population spread over several packs (or out of order)
        into one pack in stacking order (:meth:`repack`); the report's ``repacked`` lists them.
        """
        from zoo.store.maintenance import gc

        return gc(self.backend, grace_seconds=grace_seconds, compact_below=compact_below, dry_run=dry_run, repack=repack)

    def repack(self, population: str | None = None, *, dry_run: bool = False) -> Any:
        """Rewrite each population (or the one named) written in many batches into one pack in stacking
        order, so ``stack()`` is one slice per tensor name again. Atomic, keeps every content hash;
        returns a :class:`~zoo.store.repack.RepackReport`."""
        from zoo.store.repack import repack

        return repack(self.backend, population, dry_run=dry_run)

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
        from zoo.io.transfer import ingest

        return ingest(self, source, population=population, arch=arch, tags=tags, batch_size=batch_size,
                      revision=revision, cache_dir=cache_dir, offline=offline, progress=progress,
                      follow_symlinks=follow_symlinks)  # fmt: skip

    def export(self, model: int | str, out_dir: str | Path, *, overwrite: bool = False, max_shard_size: int | None = None) -> Path:
        """Write a model as a Hugging Face style folder: safetensors, config.json, README.md (card with lineage)."""
        from zoo.io.transfer import export

        return export(self, model, out_dir, overwrite=overwrite, max_shard_size=max_shard_size)
