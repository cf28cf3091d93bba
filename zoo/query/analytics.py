"""``Zoo.sql``: read-only DuckDB SQL over the live catalog, offline.

How (see docs/decisions.md): a *loader* DuckDB connection ATTACHes the catalog read-only with the
``sqlite`` (or ``postgres``) extension, whose binary ships in the PyPI package ``duckdb-ext-sqlite``
(``duckdb-ext-postgres``), so nothing is downloaded. It copies the catalog tables out as Arrow tables
whenever the catalog's generation counter has changed since the last query (one cheap SQL read per
query), and registers them on a separate *query* connection that has file access and configuration
changes disabled. User SQL therefore cannot touch the catalog or the file system, repeated queries
run on DuckDB's columnar engine at in-memory speed, and every query sees the latest committed writes.

Derived tables (:mod:`zoo.query.tables`) are registered the same way: the snapshot's ``derived_tables`` rows
name their Parquet files, which are read here with pyarrow (not by the query connection, which keeps
its file access disabled), only for tables a query names, and cached by file (files are immutable).

Only a single SELECT (or WITH ... SELECT) statement is accepted; anything else raises QueryError.

Limits (see :func:`resolve_limits`): every query runs under a memory limit (DuckDB's
``memory_limit``, no spilling to disk: ``temp_directory`` is empty and ``max_temp_directory_size``
0), a thread count, and a statement timeout. A watchdog thread interrupts the connection
(``con.interrupt()``) when the timeout passes or when the process's resident memory grows past the
limit (memory DuckDB does not track, e.g. a result being converted to pandas). The handful of
functions that build one huge value from a small input (``repeat``, ``lpad``, ``rpad``,
``list_resize``, ``array_resize``, ``printf``, ``format``, scalar ``range``/``generate_series``) are
shadowed by macros that refuse a single value over a cap derived from the memory limit, and
qualified calls that would bypass them (``system.main.repeat``) are refused.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb
import pandas as pd
from sqlalchemy import text

from zoo.errors import ConfigError, IntegrityError, QueryError
from zoo.query.tables import table_schema
from zoo.store.diskerrors import fmt_size, is_disk_error, storage_error
from zoo.store.schema import TABLES

if TYPE_CHECKING:
    from zoo.store.backend import Backend

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


# ------------------------------------------------------------------------------------ limits
#: Defaults of ``Zoo.sql`` (and ``weightzoo query``); the explorer's SQL box uses stricter ones.
DEFAULT_MEMORY = "25%"  # of physical RAM
DEFAULT_TIMEOUT = 60.0  # seconds
MEMORY_ENV, TIMEOUT_ENV, THREADS_ENV = "WEIGHTZOO_SQL_MEMORY", "WEIGHTZOO_SQL_TIMEOUT", "WEIGHTZOO_SQL_THREADS"
_MIN_MEMORY = 32 * 2**20
_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9, "t": 10**12,
          "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}  # fmt: skip


class QueryLimitError(QueryError):
    """A query stopped by a limit; ``limit`` is ``"memory"`` or ``"timeout"``."""

    def __init__(self, message: str, limit: str) -> None:
        super().__init__(message)
        self.limit = limit


def physical_memory() -> int:
    try:
        return int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 8 * 10**9


def parse_memory(value: str | int | float, what: str = "memory limit") -> int:
    """Bytes from ``2GB``, ``512MiB``, ``25%`` (of physical RAM) or a number of bytes."""
    if isinstance(value, bool):
        raise ConfigError(f"{what} must be a size like '2GB', '512MB' or '25%', not {value!r}")
    if isinstance(value, (int, float)):
        n = float(value)
    else:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(%|[a-zA-Z]*)\s*", str(value))
        if m is None or (m.group(2) != "%" and m.group(2).lower() not in _UNITS):
            raise ConfigError(f"{what} must be a size like '2GB', '512MB' or '25%' (of RAM), not {value!r}")
        num, unit = float(m.group(1)), m.group(2).lower()
        if unit == "%":
            if not 0 < num <= 100:
                raise ConfigError(f"{what} {value!r}: a percentage of RAM must be in (0, 100]")
            n = physical_memory() * num / 100
        else:
            n = num * _UNITS[unit]
    if not n >= _MIN_MEMORY or n != n:
        raise ConfigError(f"{what} {value!r} is too small; give at least 32MB")
    return int(n)


def parse_timeout(value: str | int | float | None, what: str = "timeout") -> float | None:
    """Seconds (> 0), or None for no timeout (given as 0, ``none`` or ``off``)."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("0", "none", "off", "")):
        return None
    try:
        t = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{what} must be a number of seconds (0 = none), not {value!r}") from None
    if t != t or t < 0 or t == float("inf"):
        raise ConfigError(f"{what} must be a finite number of seconds >= 0 (0 = none), not {value!r}")
    return t or None


@dataclass(frozen=True)
class Limits:
    memory: int  # bytes
    timeout: float | None  # seconds; None = none
    threads: int

    @property
    def value_cap(self) -> int:
        """Largest single value (bytes) the shadowed amplifying functions may build: a vector of
        2,048 of them per thread stays within the memory limit."""
        return max(2**20, self.memory // (2048 * self.threads))


def resolve_limits(
    memory_limit: str | int | None = None, timeout: float | str | None = None, threads: int | None = None,
    zoo: Any = None,
) -> Limits:  # fmt: skip
    """Each limit from the first that is set: the argument, the zoo's ``sql_memory_limit`` /
    ``sql_timeout`` / ``sql_threads``, the environment (``WEIGHTZOO_SQL_MEMORY``,
    ``WEIGHTZOO_SQL_TIMEOUT``, ``WEIGHTZOO_SQL_THREADS``), the default (25% of RAM, 60 s, up to 4
    threads). A timeout of 0 means none."""

    def pick(arg: Any, attr: str, env: str) -> tuple[Any, str]:
        if arg is not None:
            return arg, "argument"
        if zoo is not None and getattr(zoo, attr, None) is not None:
            return getattr(zoo, attr), f"Zoo.{attr}"
        if os.environ.get(env, "").strip():
            return os.environ[env], env
        return None, "default"

    mem, src = pick(memory_limit, "sql_memory_limit", MEMORY_ENV)
    memory = parse_memory(DEFAULT_MEMORY if mem is None else mem, f"SQL memory limit ({src})")
    tmo, src = pick(timeout, "sql_timeout", TIMEOUT_ENV)
    t = DEFAULT_TIMEOUT if tmo is None else parse_timeout(tmo, f"SQL timeout ({src})")
    thr, src = pick(threads, "sql_threads", THREADS_ENV)
    if thr is None:
        n = min(4, os.cpu_count() or 1)
    else:
        try:
            n = int(thr)
        except (TypeError, ValueError):
            raise ConfigError(f"SQL threads ({src}) must be a whole number >= 1, not {thr!r}") from None
        if not 1 <= n <= 1024:
            raise ConfigError(f"SQL threads ({src}) must be between 1 and 1024, not {thr!r}")
    return Limits(memory, t, n)


def _rss() -> int | None:
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


#: Functions that can build one huge value from small arguments (found by calling every scalar
#: function of duckdb_functions() with large integer / format-width arguments). Shadowed by macros.
AMPLIFIERS = ("repeat", "lpad", "rpad", "list_resize", "array_resize", "printf", "format", "range", "generate_series")


def _amplifier_macros(cap: int) -> list[str]:
    n_cap = max(1, cap // 8)  # list elements (8-byte numbers)

    def err(f: str) -> str:
        return (f"error('{f}(): the result would exceed {fmt_size(cap)} in one value; the SQL memory limit "
                "bounds a single value to 1/2048 of it per thread: raise memory_limit (Zoo.sql(..., memory_limit=), "
                f"{MEMORY_ENV}, weightzoo query --memory-limit) or build smaller values')")  # fmt: skip

    # a format string with a width/precision >= 1,000,000, a '*' width or a nested {} width
    bad_fmt = r"regexp_matches(fmt, '[0-9]{7,}|%[-+ #0-9.]*\*|\{[^{}]*\{')"
    fmt_args = ["fmt", *[f"a{i}" for i in range(1, 9)]]
    bad_fmt = bad_fmt.replace("{", "{{").replace("}", "}}")  # the bodies go through str.format
    fmt_over = ", ".join(
        f"({', '.join(fmt_args[:k])}) as case when {bad_fmt} then {{err}} else system.main.{{f}}({', '.join(fmt_args[:k])}) end"
        for k in range(1, len(fmt_args) + 1)
    )
    rng = (
        f"(a) as case when try_cast(a as bigint) > {n_cap} then {{err}} else system.main.{{f}}(a) end, "
        f"(a, b) as case when try_cast(b as bigint) - try_cast(a as bigint) > {n_cap} then {{err}} "
        "else system.main.{f}(a, b) end, "
        f"(a, b, c) as case when (try_cast(b as bigint) - try_cast(a as bigint)) / nullif(try_cast(c as bigint), 0) "
        f"> {n_cap} then {{err}} else system.main.{{f}}(a, b, c) end"
    )
    resize = (
        f"(l, n) as case when try_cast(n as bigint) > {n_cap} then {{err}} else system.main.{{f}}(l, n) end, "
        f"(l, n, v) as case when try_cast(n as bigint) > {n_cap} then {{err}} else system.main.{{f}}(l, n, v) end"
    )
    pad = f"(s, n, p) as case when try_cast(n as bigint) > {cap} then {{err}} else system.main.{{f}}(s, n, p) end"
    bodies = {
        "repeat": f"(s, n) as case when try_cast(n as bigint) * greatest(strlen(cast(s as varchar)), 1) > {cap} "
        "then {err} else system.main.{f}(s, n) end",
        "lpad": pad, "rpad": pad, "list_resize": resize, "array_resize": resize, "printf": fmt_over,
        "format": fmt_over, "range": rng, "generate_series": rng,
    }  # fmt: skip
    return [f"create macro {f} " + body.format(err=err(f), f=f) for f, body in bodies.items()]


def _qualified_amplifiers(node: Any) -> set[str]:
    """Names of shadowed functions called with a schema or catalog (bypassing the macros)."""
    out: set[str] = set()
    stack = [node]
    while stack:
        n = stack.pop()
        if isinstance(n, dict):
            if n.get("class") == "FUNCTION" and str(n.get("function_name", "")).lower() in AMPLIFIERS:
                if n.get("schema") or n.get("catalog"):
                    out.add(str(n["function_name"]).lower())
            stack.extend(n.values())
        elif isinstance(n, list):
            stack.extend(n)
    return out


_parser_lock = threading.Lock()
_parser: duckdb.DuckDBPyConnection | None = None


def _parse_json(sql: str) -> Any:
    global _parser
    with _parser_lock:
        if _parser is None:
            _parser = duckdb.connect(config={"enable_external_access": False, "threads": 1})
        return json.loads(_parser.execute("select json_serialize_sql(?)", [sql]).fetchone()[0])


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

    def __init__(self, backend: Backend, defaults: Any = None) -> None:
        self.b = backend
        self.defaults = defaults  # an object with sql_memory_limit / sql_timeout / sql_threads (the Zoo)
        self._lock = threading.Lock()
        self._generation: int | None = None
        self._query_con: duckdb.DuckDBPyConnection | None = None
        self._tables: dict[str, Any] = {}
        self._derived: dict[str, tuple[list[str], list[list[str]]]] = {}  # name -> (files, column types)
        self._derived_done: set[str] = set()
        self._file_cache: dict[str, Any] = {}  # parquet file name -> Arrow table
        self._con_limits: Limits | None = None  # the limits the query connection was made with
        # incremental snapshots (SQLite): a persistent loader connection, and what the snapshot holds:
        # each table's highest rowid and the catalog's (layout_version, rewrite_version) when it was taken
        self._loader: duckdb.DuckDBPyConnection | None = None
        self._reader: sqlite3.Connection | None = None
        self._rowids: dict[str, int] | None = None
        self._marks: tuple[int, int] | None = None
        self._pending: tuple[dict[str, int], tuple[int, int]] | None = None
        #: how the last snapshot was made: "full" or "appends" (for tests and benchmarks)
        self.last_refresh = ""

    def close(self) -> None:
        if self._query_con is not None:
            self._query_con.close()
            self._query_con = None
        if self._loader is not None:
            self._loader.close()
            self._loader = None
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    # ------------------------------------------------------------------ loading
    def _load_tables(self) -> dict[str, Any]:
        url = self.b.engine.url
        ext = _extension_dir()
        if ext is None:
            return self._load_via_sqlalchemy()
        if url.get_backend_name() == "sqlite":
            return self._load_sqlite()
        con = duckdb.connect(
            config={"extension_directory": ext, "autoinstall_known_extensions": False, "autoload_known_extensions": False}
        )
        try:
            if url.get_backend_name() == "postgresql":
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

    def _sqlite_loader(self) -> duckdb.DuckDBPyConnection:
        if self._loader is None:
            ext = _extension_dir()
            con = duckdb.connect(config={"extension_directory": ext, "autoinstall_known_extensions": False,
                                         "autoload_known_extensions": False})  # fmt: skip
            con.execute("LOAD sqlite")
            path = str(self.b.engine.url.database).replace("'", "''")
            con.execute(f"ATTACH '{path}' AS cat (TYPE sqlite, READ_ONLY)")
            con.execute("SET sqlite_all_varchar=false")
            self._loader = con
        return self._loader

    def _sqlite_reader(self) -> sqlite3.Connection:
        """A plain SQLite connection for what DuckDB's scanner does slowly: ``max(rowid)`` and rowid ranges."""
        if self._reader is None:
            self._reader = sqlite3.connect(str(self.b.engine.url.database), isolation_level=None,
                                           check_same_thread=False)  # fmt: skip
        return self._reader

    def _load_sqlite(self) -> dict[str, Any]:
        """The catalog's tables; only the rows appended since the last snapshot when nothing was updated
        or deleted since (the catalog's rewrite and layout versions are unchanged, see
        :meth:`zoo.store.catalog.Catalog.note_rewrite`), else every row. The highest rowids, the versions and
        the appended rows are read in one SQLite read transaction; whole tables are bounded by those
        rowids (the caller checks the generation, so one load holds the same commits)."""
        import pyarrow as pa

        sq = self._sqlite_reader()
        sq.execute("BEGIN")
        try:
            marks = tuple(int(v) for v in sq.execute(
                "select layout_version, rewrite_version from catalog_state where id = 1").fetchone())  # fmt: skip
            rowids = {t: int(sq.execute(f'select coalesce(max(rowid), 0) from "{t}"').fetchone()[0]) for t in TABLES}
            old = self._rowids or {}
            incremental = (
                bool(old) and self._marks == marks and bool(self._tables)
                and all(t in old and rowids[t] >= old[t] for t in TABLES)
            )  # fmt: skip
            deltas: dict[str, Any] = {}
            if incremental:
                for t in TABLES:
                    if t == "catalog_state":  # one row, updated by every write: read whole
                        deltas[t] = self._appended(sq, t, 0, rowids[t])
                    elif rowids[t] > old[t]:
                        deltas[t] = self._appended(sq, t, old[t], rowids[t])
        finally:
            sq.execute("COMMIT")
        def whole(t: str) -> Any:
            return self._sqlite_loader().execute(f'select * from cat."{t}" where rowid <= {rowids[t]}').fetch_arrow_table()

        out: dict[str, Any] = {}
        for t in TABLES:
            if not incremental or (t in deltas and deltas[t] is None):  # None: new rows did not fit the types
                out[t] = whole(t)
            elif t not in deltas:
                out[t] = self._tables[t]
            elif t == "catalog_state":  # read whole above
                out[t] = deltas[t]
            else:
                out[t] = pa.concat_tables([self._tables[t], deltas[t]])
        self._pending = (rowids, marks)  # taken by _connect when this load becomes the snapshot
        self.last_refresh = "appends" if incremental else "full"
        return out

    def _appended(self, sq: sqlite3.Connection, table: str, lo: int, hi: int) -> Any:
        """Rows ``lo < rowid <= hi`` of ``table`` as Arrow with the snapshot's schema (None if they do not cast)."""
        import pyarrow as pa

        schema = self._tables[table].schema
        cols = ", ".join(f'"{f.name}"' for f in schema)
        rows = sq.execute(f'select {cols} from "{table}" where rowid > ? and rowid <= ?', (lo, hi)).fetchall()
        try:
            arrays = [pa.array([r[i] for r in rows]) for i in range(len(schema))]
            return pa.table(arrays, names=schema.names).cast(schema)
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, OverflowError):
            return None

    def _load_via_sqlalchemy(self, consistent: bool = False) -> dict[str, Any]:
        import pyarrow as pa

        self._pending, self._rowids = None, None  # a whole load: the next SQLite refresh starts afresh
        out = {}
        with self.b.engine.begin() as c:
            if consistent:  # hold the write lock: one snapshot even under a stream of writers
                self.b.catalog.bump(c)
            for t in TABLES:
                out[t] = pa.Table.from_pandas(pd.read_sql(text(f'select * from "{t}"'), c), preserve_index=False)
        return out

    def _refresh(self, limits: Limits) -> duckdb.DuckDBPyConnection:
        try:
            return self._refresh_tables(limits)
        except (OSError, sqlite3.Error, duckdb.Error) as e:
            if is_disk_error(e):
                raise storage_error(e, self.b.root) from None
            raise
        except Exception as e:  # SQLAlchemy wraps the driver's errors
            if is_disk_error(e) or is_disk_error(getattr(e, "orig", None) or e):
                raise storage_error(e, self.b.root) from None
            raise

    def _refresh_tables(self, limits: Limits) -> duckdb.DuckDBPyConnection:
        gen = self.b.catalog.generation()
        if self._query_con is not None and gen == self._generation:
            if limits == self._con_limits:
                return self._query_con
            return self._connect(self._tables, gen, limits)
        # Every commit bumps the generation: tables loaded between two equal readings of it form
        # one consistent snapshot. Retry while writers commit in between.
        for _ in range(20):
            tables = self._load_tables()
            after = self.b.catalog.generation()
            if after == gen:
                break
            gen = after
        else:
            tables = self._load_via_sqlalchemy(consistent=True)
            gen = self.b.catalog.generation()  # the lock was held while loading: this is the snapshot's
        return self._connect(tables, gen, limits)

    def _connect(self, tables: dict[str, Any], gen: int, limits: Limits) -> duckdb.DuckDBPyConnection:
        if self._query_con is not None and limits == self._con_limits:
            con = self._query_con  # same limits: swap the tables in (views, macros and settings stay)
            for name in self._derived_done:
                con.unregister(name)
            for name in getattr(self, "_wide_done", ()):
                con.execute(f"drop table if exists {name}")
            for name, tbl in tables.items():
                con.register(name, tbl)
            return self._took(con, tables, gen, limits)
        # No spilling: an in-memory database would otherwise write to ./.tmp, and a runaway query
        # could fill the disk. The memory limit is the bound.
        con = duckdb.connect(
            config={
                "memory_limit": f"{limits.memory}B", "threads": limits.threads, "temp_directory": "",
                "max_temp_directory_size": "0B", "autoinstall_known_extensions": False,
                "autoload_known_extensions": False,
            }
        )  # fmt: skip
        for name, tbl in tables.items():
            con.register(name, tbl)
        for name, sql in VIEWS.items():
            con.execute(f"create view {name} as {sql}")
        for macro in _amplifier_macros(limits.value_cap):
            con.execute(macro)
        con.execute("SET enable_external_access=false")
        con.execute("SET lock_configuration=true")
        if self._query_con is not None:
            self._query_con.close()
        return self._took(con, tables, gen, limits)

    def _took(self, con: duckdb.DuckDBPyConnection, tables: dict[str, Any], gen: int, limits: Limits) -> duckdb.DuckDBPyConnection:
        """Make ``con`` with ``tables`` the current snapshot."""
        self._query_con, self._tables, self._generation, self._con_limits = con, tables, gen, limits
        if self._pending is not None:  # the tables of a _load_sqlite: remember what they hold
            self._rowids, self._marks = self._pending
            self._pending = None
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
            schema = table_schema(types)
            for f in files:
                if f not in self._file_cache:
                    self._file_cache[f] = self.b.table_files.read([f], schema)
            parts = [self._file_cache[f] for f in files]
            tbl = pa.concat_tables(parts) if len(parts) > 1 else parts[0] if parts else schema.empty_table()
            con.register(name, tbl)
            self._derived_done.add(name)

    def _ensure_wide(self, con: duckdb.DuckDBPyConnection, sql: str) -> None:
        low = sql.lower()
        for name, body in WIDE.items():
            if name in low and name not in self._wide_done:
                try:
                    con.execute(f"create table {name} as {body}")
                except (duckdb.InterruptException, duckdb.OutOfMemoryException):
                    raise
                except duckdb.Error:  # nothing to pivot yet: an empty table
                    con.execute(f"create table {name} as select null::integer as model_id where false")
                self._wide_done.add(name)

    # ------------------------------------------------------------------ query
    def query(
        self, sql: str, *, arrow: bool = False, memory_limit: str | int | None = None, timeout: float | str | None = None,
        threads: int | None = None,
    ) -> Any:  # fmt: skip
        limits = resolve_limits(memory_limit, timeout, threads, self.defaults)
        check_sql(sql)
        # The lock serialises queries on the one connection. A query holds it at most for its
        # timeout (the watchdog interrupts it); a waiter gives up after its own timeout.
        wait = -1 if limits.timeout is None else limits.timeout
        if not self._lock.acquire(timeout=wait):
            raise QueryLimitError(
                f"query not started: another query on this zoo handle kept it busy for the whole statement timeout "
                f"({wait:g} s); retry (the other query is stopped by its own timeout), raise the timeout (Zoo.sql(..., "
                f"timeout=SECONDS), {TIMEOUT_ENV}, --timeout), or open a second Zoo handle for concurrent queries",
                "timeout",
            )  # fmt: skip
        try:
            for _ in range(5):
                con = self._refresh(limits)
                dog = _Watchdog(con, limits)
                try:
                    with dog:
                        self._ensure_wide(con, sql)
                except duckdb.Error as e:  # interrupted or out of memory while materialising a wide view
                    raise self._error(e, dog, limits) from None
                try:
                    self._ensure_derived(con, sql)
                    break
                except FileNotFoundError:  # a writer replaced or dropped a table since our snapshot
                    self._generation, self._rowids = None, None
            else:
                raise IntegrityError("a derived table's file is missing; run `weightzoo verify`")
            dog = _Watchdog(con, limits)
            try:
                with dog:
                    rel = con.execute(sql)
                    return rel.fetch_arrow_table() if arrow else rel.fetchdf()
            except duckdb.Error as e:
                raise self._error(e, dog, limits) from None
        finally:
            self._lock.release()

    def _error(self, e: duckdb.Error, dog: _Watchdog, limits: Limits) -> QueryError:
        how_mem = (
            "Raise it with Zoo.sql(..., memory_limit='4GB'), zoo.sql_memory_limit, the environment variable "
            f"{MEMORY_ENV} or `weightzoo query --memory-limit 4GB` (sizes like 512MB, 4GB or 50%), or make the query "
            "leaner (filter before joining, aggregate instead of string_agg over a cross join)"
        )
        if dog.reason == "timeout" or (isinstance(e, duckdb.InterruptException) and dog.reason is None):
            return QueryLimitError(
                f"query stopped after {dog.elapsed:.1f} s: it hit the statement timeout of {limits.timeout:g} s. "
                f"Raise it with Zoo.sql(..., timeout=SECONDS), zoo.sql_timeout, the environment variable {TIMEOUT_ENV} "
                "or `weightzoo query --timeout SECONDS` (0 = no timeout), or make the query cheaper (filter first, add "
                "a LIMIT)", "timeout",
            )  # fmt: skip
        if dog.reason == "memory":
            return QueryLimitError(
                f"query stopped after {dog.elapsed:.1f} s: the process grew by more than the memory limit of "
                f"{fmt_size(limits.memory)} while it ran. {how_mem}", "memory",
            )  # fmt: skip
        if isinstance(e, duckdb.OutOfMemoryException):
            return QueryLimitError(
                f"query stopped: it needs more than the memory limit of {fmt_size(limits.memory)} "
                f"({_first_line(e)}). {how_mem}", "memory",
            )  # fmt: skip
        if "in one value; the SQL memory limit" in str(e):  # a shadowed amplifying function refused
            return QueryLimitError(f"query stopped: {_first_line(e).split('Error: ', 1)[-1]}", "memory")
        derived = f"; derived tables: {', '.join(self._derived)}" if self._derived else ""
        return QueryError(
            f"query failed: {_first_line(e)}. Tables: {', '.join(TABLES)}; views: {', '.join([*VIEWS, *WIDE])}"
            f"{derived}"
        )


class _Watchdog:
    """Interrupts ``con`` when the timeout passes or the process's RSS grows past the memory limit."""

    POLL = 0.01

    def __init__(self, con: duckdb.DuckDBPyConnection, limits: Limits) -> None:
        self.con, self.limits = con, limits
        self.reason: str | None = None
        self.elapsed = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> _Watchdog:
        self._t0 = time.monotonic()
        base = _rss()
        # DuckDB keeps its tracked memory under the limit; this catches what it does not track
        self._rss_cap = None if base is None else base + self.limits.memory + max(64 * 2**20, self.limits.memory // 4)
        self._thread = threading.Thread(target=self._run, name="weightzoo-sql-watchdog", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        deadline = None if self.limits.timeout is None else self._t0 + self.limits.timeout
        while not self._stop.wait(self.POLL):
            if deadline is not None and time.monotonic() >= deadline:
                self.reason = "timeout"
            elif self._rss_cap is not None and (r := _rss()) is not None and r > self._rss_cap:
                self.reason = "memory"
            if self.reason:
                self.con.interrupt()
                return

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.elapsed = time.monotonic() - self._t0


def check_sql(sql: Any) -> None:
    """The guard: one SELECT statement, no call bypassing the shadowed functions; QueryError otherwise."""
    if not isinstance(sql, str) or not sql.strip():
        raise QueryError("empty query; write a SELECT over models, metrics, hyperparameters, lineage, tags, ...")
    try:
        stmts = duckdb.extract_statements(sql)
    except duckdb.Error as e:
        raise QueryError(f"invalid SQL: {_first_line(e)}") from None
    except Exception as e:  # e.g. a string the parser cannot take (NUL, invalid surrogates)
        raise QueryError(f"invalid SQL: {type(e).__name__}: {_first_line(e)}") from None
    if not stmts:
        raise QueryError("empty query (only comments or semicolons); write one SELECT")
    types = [s.type for s in stmts]
    if len(stmts) == 2 and types[1] == duckdb.StatementType.SELECT and types[0] == duckdb.StatementType.CREATE \
            and re.search(r"\bpivot\b", sql, re.IGNORECASE):  # fmt: skip
        raise QueryError(
            "PIVOT without an explicit IN list is refused: DuckDB turns it into two statements (it first creates an "
            "enum type of the distinct values, a catalog change), and the query API runs one read-only SELECT. "
            "List the values (PIVOT metrics ON name IN ('acc', 'loss') USING first(value) GROUP BY model_id), or use "
            "the views metrics_wide / hparams_wide"
        )
    if len(stmts) != 1:
        raise QueryError(f"give exactly one statement (got {len(stmts)}); the query API is read-only")
    if types[0] != duckdb.StatementType.SELECT:
        raise QueryError(
            f"only SELECT queries are allowed (got {types[0].name}); the query API is read-only, "
            "change the zoo through the Python API or the CLI"
        )
    try:
        tree = _parse_json(sql)
    except (duckdb.Error, ValueError, TypeError) as e:
        raise QueryError(f"invalid SQL: {_first_line(e)}") from None
    if isinstance(tree, dict) and not tree.get("error"):
        bad = _qualified_amplifiers(tree)
        if bad:
            raise QueryError(
                f"call {', '.join(sorted(bad))}() without a schema or catalog prefix: the query API bounds the size "
                "of the values these functions build, and a qualified name would bypass that"
            )


def _first_line(e: Exception) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
