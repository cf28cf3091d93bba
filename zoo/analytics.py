"""``Zoo.sql``: read-only DuckDB SQL over the live catalog, offline.

How (see docs/decisions.md): a *loader* DuckDB connection ATTACHes the catalog read-only with the
``sqlite`` (or ``postgres``) extension, whose binary ships in the PyPI package ``duckdb-ext-sqlite``
(``duckdb-ext-postgres``), so nothing is downloaded. It copies the catalog tables out as Arrow tables
whenever the catalog's generation counter has changed since the last query (one cheap SQL read per
query), and registers them on a separate *query* connection that has file access and configuration
changes disabled. User SQL therefore cannot touch the catalog or the file system, repeated queries
run on DuckDB's columnar engine at in-memory speed, and every query sees the latest committed writes.

Derived tables (:mod:`zoo.tables`) are registered the same way: the snapshot's ``derived_tables`` rows
name their Parquet files, which are read here with pyarrow (not by the query connection, which keeps
its file access disabled), only for tables a query names, and cached by file (files are immutable).

Only a single SELECT (or WITH ... SELECT) statement is accepted; anything else raises QueryError.
"""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb
import pandas as pd
from sqlalchemy import text

from zoo.errors import IntegrityError, QueryError
from zoo.schema import TABLES

if TYPE_CHECKING:
    from zoo.store import Zoo

#: Views defined on top of the catalog tables, for common questions.
VIEWS = {
    "model_overview": """
        select m.id, m.name, p.name as population, a.name as architecture, a.family, m.run, m.step, m.op,
               m.n_params, m.nbytes, m.created_at
        from models m left join populations p on p.id = m.population_id
        left join architectures a on a.id = m.architecture_id
    """,
}

#: Wide tables (one row per model, one column per metric / hyperparameter). DuckDB cannot keep a
#: data-dependent PIVOT in a view, so these are materialised, only when a query names them.
WIDE = {
    "metrics_wide": """
        pivot (select model_id, case when split = '' then name else split || '_' || name end as metric, value
               from metrics) on metric using last(value) group by model_id
    """,
    "hparams_wide": """
        pivot (select model_id, name, coalesce(cast(value_num as varchar), value_text, value) as v
               from hyperparameters) on name using first(v) group by model_id
    """,
}


def _extension_dir() -> str | None:
    try:
        import duckdb_ext  # the namespace package shipped by duckdb-ext-sqlite / -postgres
    except ImportError:
        return None
    for p in getattr(duckdb_ext, "__path__", []):
        d = Path(p) / "extensions"
        if d.is_dir():
            return str(d)
    return None


class Analytics:
    """Holds the loader and query DuckDB connections of one zoo."""

    def __init__(self, zoo: Zoo) -> None:
        self.zoo = zoo
        self._lock = threading.Lock()
        self._generation: int | None = None
        self._query_con: duckdb.DuckDBPyConnection | None = None
        self._tables: dict[str, Any] = {}
        self._derived: dict[str, tuple[list[str], list[list[str]]]] = {}  # name -> (files, column types)
        self._derived_done: set[str] = set()
        self._file_cache: dict[str, Any] = {}  # parquet file name -> Arrow table

    def close(self) -> None:
        if self._query_con is not None:
            self._query_con.close()
            self._query_con = None

    # ------------------------------------------------------------------ loading
    def _load_tables(self) -> dict[str, Any]:
        url = self.zoo.engine.url
        ext = _extension_dir()
        if ext is None:
            return self._load_via_sqlalchemy()
        con = duckdb.connect(
            config={"extension_directory": ext, "autoinstall_known_extensions": False, "autoload_known_extensions": False}
        )
        try:
            if url.get_backend_name() == "sqlite":
                con.execute("LOAD sqlite")
                path = str(url.database).replace("'", "''")
                con.execute(f"ATTACH '{path}' AS cat (TYPE sqlite, READ_ONLY)")
                con.execute("SET sqlite_all_varchar=false")
            elif url.get_backend_name() == "postgresql":
                try:
                    con.execute("LOAD postgres")
                except duckdb.Error:
                    return self._load_via_sqlalchemy()
                dsn = " ".join(
                    f"{k}={v}"
                    for k, v in {
                        "host": url.host, "port": url.port, "dbname": url.database, "user": url.username,
                        "password": url.password,
                    }.items() if v is not None
                )  # fmt: skip
                dsn = dsn.replace("'", "''")
                con.execute(f"ATTACH '{dsn}' AS cat (TYPE postgres, READ_ONLY)")
            else:
                return self._load_via_sqlalchemy()
            return {t: con.execute(f'select * from cat."{t}"').fetch_arrow_table() for t in TABLES}
        finally:
            con.close()

    def _load_via_sqlalchemy(self, consistent: bool = False) -> dict[str, Any]:
        import pyarrow as pa

        out = {}
        with self.zoo.engine.begin() as c:
            if consistent:  # hold the write lock: one snapshot even under a stream of writers
                self.zoo._bump(c)
            for t in TABLES:
                out[t] = pa.Table.from_pandas(pd.read_sql(text(f'select * from "{t}"'), c), preserve_index=False)
        return out

    def _refresh(self) -> duckdb.DuckDBPyConnection:
        gen = self.zoo.generation()
        if self._query_con is not None and gen == self._generation:
            return self._query_con
        # Every commit bumps the generation: tables loaded between two equal readings of it form
        # one consistent snapshot. Retry while writers commit in between.
        for _ in range(20):
            tables = self._load_tables()
            after = self.zoo.generation()
            if after == gen:
                break
            gen = after
        else:
            tables = self._load_via_sqlalchemy(consistent=True)
            gen = self.zoo.generation()  # the lock was held while loading: this is the snapshot's
        con = duckdb.connect()
        for name, tbl in tables.items():
            con.register(name, tbl)
        for name, sql in VIEWS.items():
            con.execute(f"create view {name} as {sql}")
        con.execute("SET enable_external_access=false")
        con.execute("SET lock_configuration=true")
        if self._query_con is not None:
            self._query_con.close()
        self._query_con, self._tables, self._generation = con, tables, gen
        self._wide_done: set[str] = set()
        self._derived = {
            r["name"]: (json.loads(r["files"]), json.loads(r["column_types"])) for r in tables["derived_tables"].to_pylist()
        }
        self._derived_done = set()
        live = {f for files, _ in self._derived.values() for f in files}
        self._file_cache = {f: t for f, t in self._file_cache.items() if f in live}
        return con

    def _ensure_derived(self, con: duckdb.DuckDBPyConnection, sql: str) -> None:
        """Register the derived tables the query names (raises FileNotFoundError on a stale snapshot)."""
        import pyarrow as pa

        low = sql.lower()
        for name, (files, types) in self._derived.items():
            if name in self._derived_done or not re.search(rf"\b{name}\b", low):
                continue
            missing = [f for f in files if f not in self._file_cache]
            if missing:
                for f in missing:
                    self._file_cache[f] = self.zoo.table_files.read([f], types)
            parts = [self._file_cache[f] for f in files]
            tbl = pa.concat_tables(parts) if len(parts) > 1 else parts[0] if parts else self.zoo.table_files.read([], types)
            con.register(name, tbl)
            self._derived_done.add(name)

    def _ensure_wide(self, con: duckdb.DuckDBPyConnection, sql: str) -> None:
        low = sql.lower()
        for name, body in WIDE.items():
            if name in low and name not in self._wide_done:
                try:
                    con.execute(f"create table {name} as {body}")
                except duckdb.Error:  # nothing to pivot yet: an empty table
                    con.execute(f"create table {name} as select null::integer as model_id where false")
                self._wide_done.add(name)

    # ------------------------------------------------------------------ query
    def query(self, sql: str, *, arrow: bool = False) -> Any:
        if not isinstance(sql, str) or not sql.strip():
            raise QueryError("empty query; write a SELECT over models, metrics, hyperparameters, lineage, tags, ...")
        try:
            stmts = duckdb.extract_statements(sql)
        except duckdb.Error as e:
            raise QueryError(f"invalid SQL: {_first_line(e)}") from None
        if len(stmts) != 1:
            raise QueryError(f"give exactly one statement (got {len(stmts)}); the query API is read-only")
        if stmts[0].type != duckdb.StatementType.SELECT:
            raise QueryError(
                f"only SELECT queries are allowed (got {stmts[0].type.name}); the query API is read-only, "
                "change the zoo through the Python API or the CLI"
            )
        with self._lock:
            for _ in range(5):
                con = self._refresh()
                self._ensure_wide(con, sql)
                try:
                    self._ensure_derived(con, sql)
                    break
                except FileNotFoundError:  # a writer replaced or dropped a table since our snapshot
                    self._generation = None
            else:
                raise IntegrityError("a derived table's file is missing; run `weightzoo verify`")
            try:
                rel = con.execute(sql)
                return rel.fetch_arrow_table() if arrow else rel.fetchdf()
            except duckdb.Error as e:
                derived = f"; derived tables: {', '.join(self._derived)}" if self._derived else ""
                raise QueryError(
                    f"query failed: {_first_line(e)}. Tables: {', '.join(TABLES)}; views: {', '.join([*VIEWS, *WIDE])}"
                    f"{derived}"
                ) from None


def _first_line(e: Exception) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
