"""The catalog: the database side of a zoo, shared by the store's facade and its helpers.

:class:`Catalog` owns the engine and the few things every write and read path needs: the write
lock with the generation counter (``with catalog.write() as conn``), id lookup by id or name,
the architecture cache, and the one metric write path. :class:`~zoo.facade.Zoo` composes it; the
store's helpers (derived tables, evaluation, maintenance, analytics) take ``zoo.store.catalog`` instead
of calling private methods of the facade.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, insert, select, update

from zoo.errors import NotFoundError
from zoo.names import encodable, safe_repr
from zoo.store import schema as S
from zoo.store.records import ModelRecord
from zoo.store.rows import metric_rows

__all__ = ["Catalog"]


class Catalog:
    """The engine of one zoo's catalog, and the operations every store path shares."""

    def __init__(self, engine: Engine, root: Path) -> None:
        self.engine = engine
        self.root = root  # for messages
        self._arch_cache: dict[int, tuple[str, dict[str, Any]]] = {}

    # -- writing -------------------------------------------------------------------------------------
    @staticmethod
    def bump(conn: Connection) -> None:
        """Take the catalog's write lock (the first statement of every write) and bump the generation."""
        conn.execute(update(S.CatalogState).where(S.CatalogState.id == 1).values(generation=S.CatalogState.generation + 1))

    @staticmethod
    def note_rewrite(conn: Connection) -> None:
        """Record that this write updates or deletes catalog rows (appending rows needs no note).

        SQL snapshots (:mod:`zoo.query.analytics`) refresh by reading only appended rows while this counter
        is unchanged, so every path that updates or deletes a row must call it in its transaction.
        """
        conn.execute(update(S.CatalogState).where(S.CatalogState.id == 1)
                     .values(rewrite_version=S.CatalogState.rewrite_version + 1))  # fmt: skip

    @contextlib.contextmanager
    def write(self) -> Iterator[Connection]:
        """A write transaction: the write lock taken, the generation bumped, committed on success."""
        with self.engine.begin() as conn:
            self.bump(conn)
            yield conn

    def add_metrics(self, conn: Connection, model_id: int, metrics: Any, step: int | None = None) -> int:
        """The one metric write path: validated rows (``{"test_acc": .9}`` or ``[(name, split, step,
        value)]``) for ``model_id`` inserted on ``conn``. Returns the number of rows."""
        return self.add_metrics_many(conn, [(model_id, metrics)], step)

    def add_metrics_many(self, conn: Connection, per_model: Iterable[tuple[int, Any]], step: int | None = None) -> int:
        """:meth:`add_metrics` for many ``(model_id, metrics)`` pairs, in one insert."""
        rows = [r for mid, metrics in per_model for r in metric_rows(mid, metrics, step)]
        if rows:
            conn.execute(insert(S.Metric), rows)
        return len(rows)

    # -- reading -------------------------------------------------------------------------------------
    def generation(self) -> int:
        """A counter bumped by every write (cheap change detection for caches)."""
        with self.engine.connect() as c:
            return int(c.execute(select(S.CatalogState.generation).where(S.CatalogState.id == 1)).scalar_one())

    def model_id(self, conn: Connection, key: int | str | ModelRecord) -> int:
        """The id of a model given by id, name or record; :class:`NotFoundError` if there is none."""
        if isinstance(key, ModelRecord):
            key = key.id
        if isinstance(key, str) and not encodable(key):
            raise NotFoundError(f"no model {safe_repr(key)}: the name is not valid UTF-8 text")
        if isinstance(key, int) or (isinstance(key, str) and key.isdigit()):
            mid = conn.execute(select(S.Model.id).where(S.Model.id == int(key))).scalar()
        else:
            mid = conn.execute(select(S.Model.id).where(S.Model.name == key)).scalar()
        if mid is None:
            raise NotFoundError(f"no model {key!r} in the zoo at {self.root}; find ids with `weightzoo ls`")
        return int(mid)

    def arch(self, conn: Connection, arch_id: int | None) -> tuple[str, dict[str, Any]] | None:
        """``(name, config)`` of an architecture row (cached: architecture rows never change)."""
        if arch_id is None:
            return None
        if arch_id not in self._arch_cache:
            row = conn.execute(select(S.Architecture.name, S.Architecture.config).where(S.Architecture.id == arch_id)).one()
            self._arch_cache[arch_id] = (row.name, json.loads(row.config))
        return self._arch_cache[arch_id]
