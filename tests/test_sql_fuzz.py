"""Property-based tests of the SQL guard of Zoo.sql (hypothesis).

Statements are drawn from DuckDB's own function list (``duckdb_functions()``) and from keywords
and arguments that would write, read files or change the configuration (ATTACH, COPY, INSTALL,
LOAD, PRAGMA, SET, EXPORT, CREATE, read_csv, read_parquet, glob, '/etc/passwd', the catalog file,
...). Whatever the statement, Zoo.sql either returns a result that holds nothing read from a file,
or raises QueryError (nothing else); the catalog is unchanged, and no file appears under the zoo
root, the working directory or a watched temporary folder. Peak memory stays bounded.
"""

from __future__ import annotations

import hashlib
import os
import resource
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from tests.conftest import MLP_CFG, catalog_counts, mlp_state  # noqa: E402
from zoo import NewModel, QueryError, Zoo  # noqa: E402

FUNCTIONS = sorted(
    {r[0] for r in duckdb.connect().execute("select function_name from duckdb_functions()").fetchall()} - {""}
)
FILE_FUNCTIONS = [
    "read_csv", "read_csv_auto", "read_parquet", "parquet_scan", "parquet_metadata", "parquet_schema", "read_json",
    "read_json_auto", "read_ndjson", "read_text", "read_blob", "glob", "sniff_csv", "sqlite_scan", "sqlite_attach",
    "query_table", "query", "checkpoint", "force_checkpoint", "pragma_database_list", "duckdb_databases",
    "duckdb_settings", "which_secret", "load_extension", "install_extension",
]  # fmt: skip
KEYWORDS = [
    "ATTACH", "ATTACH DATABASE", "DETACH", "COPY", "COPY models TO", "COPY models FROM", "INSTALL", "FORCE INSTALL",
    "LOAD", "PRAGMA", "SET", "SET GLOBAL", "RESET", "EXPORT DATABASE", "IMPORT DATABASE", "CREATE TABLE t AS SELECT",
    "CREATE SECRET", "CREATE MACRO", "CREATE VIEW v AS SELECT", "CREATE OR REPLACE MACRO repeat(s, n) AS", "CALL",
    "USE", "CHECKPOINT", "VACUUM", "DROP TABLE", "INSERT INTO models SELECT", "UPDATE models SET name =",
    "DELETE FROM", "ALTER TABLE models RENAME TO", "SUMMARIZE", "DESCRIBE", "EXPLAIN ANALYZE", "PIVOT", "UNPIVOT",
    "WITH RECURSIVE r AS (SELECT 1 AS n UNION ALL SELECT n + 1 FROM r) SELECT", "FROM", "SELECT", "SELECT * FROM",
]  # fmt: skip
SECRET = "root:x:0:0"  # the first line of /etc/passwd


@pytest.fixture(scope="module")
def fuzz_env(tmp_path_factory) -> Iterator[dict]:
    base = tmp_path_factory.mktemp("fuzz")
    z = Zoo.open(base / "zoo")
    z.add_many([NewModel(mlp_state(i), arch=MLP_CFG, population="p", name=f"m{i}", metrics={"test_acc": i / 10},
                         hparams={"lr": 0.1}, tags=["t"]) for i in range(4)])  # fmt: skip
    watched = base / "watched"
    watched.mkdir()
    cwd = base / "cwd"
    cwd.mkdir()
    old = os.getcwd()
    os.chdir(cwd)
    try:
        yield {"zoo": z, "watched": watched, "cwd": cwd, "counts": catalog_counts(z), "files": _files(z.root),
               "db": _digest(z.root / "catalog.db")}  # fmt: skip
    finally:
        os.chdir(old)
        z.close()


def _files(root: Path) -> set[str]:
    # SQLite's -wal/-shm files come and go with connections; everything else must stay as it is
    return {str(p.relative_to(root)) for p in root.rglob("*") if not p.name.endswith(("-wal", "-shm"))}


def _digest(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _args(env_paths: list[str]) -> st.SearchStrategy[str]:
    paths = [f"'{p}'" for p in env_paths] + [
        "'/etc/passwd'", "'/etc/*'", "'/tmp/*'", "'*'", "'catalog.db'", "'../catalog.db'", "'httpfs'", "'sqlite'",
        "'s3://bucket/x.parquet'", "'http://127.0.0.1:9/x.csv'", "':memory:'", "'~/.duckdb'",
    ]  # fmt: skip
    return st.one_of(
        st.sampled_from(paths),
        st.integers(-3, 10**8).map(str),
        st.sampled_from(["name", "models", "metrics", "*", "null", "'x'", "[1, 2]", "{'a': 1}", "true", "1.5",
                         "(select name from models limit 1)", "current_setting('threads')", "interval 1 day"]),
        st.text("abc%{}:*0123456789 ", max_size=12).map(lambda s: "'" + s.replace("'", "''") + "'"),
    )  # fmt: skip


@st.composite
def statements(draw: st.DrawFn, env_paths: list[str]) -> str:
    arg = _args(env_paths)
    f = draw(st.one_of(st.sampled_from(FUNCTIONS), st.sampled_from(FILE_FUNCTIONS)))
    args = ", ".join(draw(st.lists(arg, max_size=3)))
    kw = draw(st.sampled_from(KEYWORDS))
    a = draw(arg)
    shape = draw(st.integers(0, 11))
    return [
        f"select {f}({args})",
        f"select * from {f}({args})",
        f"{kw} {a}",
        f"{kw} {f}({args})",
        f"select 1; {kw} {a}",
        f"with t as (select {f}({args}) as v) select * from t",
        f"copy (select {f}({args})) to {a}",
        f"select * from {a}",
        f"from {f}({args}) limit 3",
        f"select {f}({args}) from models, metrics",
        f"{kw} {a} {draw(st.sampled_from(KEYWORDS))} {f}({args})",
        f"select * from models where name in (select {f}({args}))",
    ][shape]


def test_guard_holds_under_random_statements(fuzz_env: dict) -> None:
    z: Zoo = fuzz_env["zoo"]
    watched: Path = fuzz_env["watched"]
    env_paths = [str(watched / "out.csv"), str(z.root / "catalog.db"), str(z.root / "x.parquet"), str(watched / "db.duckdb")]
    peak0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB
    seen: list[str] = []

    n = int(os.environ.get("WEIGHTZOO_FUZZ_EXAMPLES", "200"))  # more for a longer hunt (then not derandomized)
    @settings(max_examples=n, deadline=None, derandomize=n == 200, database=None,
              suppress_health_check=list(HealthCheck))  # fmt: skip
    @given(statements(env_paths))
    def check(sql: str) -> None:
        seen.append(sql)
        try:
            res = z.sql(sql, memory_limit="200MB", timeout=2)
        except QueryError:
            pass
        else:
            shown = res.head(50).to_string()
            assert SECRET not in shown and "SQLite format 3" not in shown, sql
        assert list(watched.iterdir()) == [], sql
        assert list(fuzz_env["cwd"].iterdir()) == [], sql
        assert _files(z.root) == fuzz_env["files"], sql

    check()
    assert len(seen) >= min(n, 100)
    assert catalog_counts(z) == fuzz_env["counts"]
    assert _digest(z.root / "catalog.db") == fuzz_env["db"]
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak0) / 1024
    assert grown_mb < 1024, grown_mb
    assert z.sql("select count(*) as n from models")["n"][0] == 4


@pytest.mark.parametrize("sql", [
    "select * from read_csv('/etc/passwd')", "select * from '/etc/passwd'", "copy models to '/tmp/x.csv'",
    "attach 'x.db' as x", "install httpfs", "load sqlite", "pragma enable_profiling", "set threads = 64",
    "set memory_limit = '100GB'", "reset memory_limit", "export database '/tmp/x'", "create macro repeat(s, n) as 1",
    "call pragma_version()", "select system.main.repeat('x', 3)", "select 1; select 2", "checkpoint",
    "select * from sqlite_scan('catalog.db', 'models')", "select * from glob('*')", "select query('drop table models')",
    "select * from query('select 1')", "select * from query_table('models')", "select * from duckdb_databases()",
])  # fmt: skip
def test_known_escapes_are_refused_or_harmless(fuzz_env: dict, sql: str) -> None:
    z: Zoo = fuzz_env["zoo"]
    try:
        res = z.sql(sql)
    except QueryError:
        pass
    else:  # allowed: then it read nothing from a file
        assert SECRET not in res.head(50).to_string()
    s = z.sql("select current_setting('threads') as t, current_setting('enable_external_access') as x").iloc[0]
    assert int(s.t) <= 4 and s.x in (False, "false")
    assert z.sql("select repeat('ab', 2) as r")["r"][0] == "abab"  # the bound macro was not replaced
    assert catalog_counts(z) == fuzz_env["counts"] and _files(z.root) == fuzz_env["files"]
