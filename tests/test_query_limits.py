"""Zoo.sql's limits (memory, statement timeout, threads, no spilling), the PIVOT refusal and disk errors on read paths.

The fixture zoo has 400 metric rows, so the cross join of issue 16
(``string_agg(a.name||b.name||c.name)`` over metrics x metrics x metrics) builds a multi-GB string
without limits; here it must stop within a 200 MB limit.
"""

from __future__ import annotations

import errno
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest

from tests.conftest import MLP_CFG, catalog_counts, mlp_state
from zoo import ConfigError, NewModel, QueryError, StorageError, Zoo
from zoo.query.analytics import Analytics, QueryLimitError, _rss, parse_memory, parse_timeout, resolve_limits

ISSUE_QUERY = "select length(string_agg(a.name||b.name||c.name, ',')) from metrics a, metrics b, metrics c"
SLOW_QUERY = "select count(*) from metrics a, metrics b, metrics c, metrics d"  # 2.56e10 rows
MEM, TMO = "200MB", 2.0


@pytest.fixture(scope="module")
def lzoo(tmp_path_factory) -> Iterator[Zoo]:
    z = Zoo.open(tmp_path_factory.mktemp("limits") / "zoo")
    z.add_many([
        NewModel(mlp_state(i), arch=MLP_CFG, population="big", name=f"model_{i:04d}",
                 metrics={f"test_metric_{k}": 0.1 * k for k in range(10)})
        for i in range(40)
    ])  # fmt: skip
    assert z.sql("select count(*) as n from metrics")["n"][0] == 400
    yield z
    z.close()


class Peak:
    """Samples this process's RSS while a block runs."""

    def __enter__(self) -> Peak:
        self.base = self.peak = _rss() or 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        self.t0 = time.monotonic()
        return self

    def _run(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, _rss() or 0)

    def __exit__(self, *exc: object) -> None:
        self.elapsed = time.monotonic() - self.t0
        self._stop.set()
        self._t.join()

    @property
    def growth_mb(self) -> float:
        return (self.peak - self.base) / 2**20


def still_works(z: Zoo) -> None:
    assert z.sql("select count(*) as n from models")["n"][0] == 40
    assert z.sql("select count(*) as n from metrics_wide")["n"][0] == 40


def test_issue_query_stops_at_the_memory_limit(lzoo: Zoo) -> None:
    with Peak() as p, pytest.raises(QueryLimitError) as e:
        lzoo.sql(ISSUE_QUERY, memory_limit=MEM, timeout=30)
    assert e.value.limit == "memory"
    msg = str(e.value)
    assert "memory limit of 200MB" in msg and "--memory-limit" in msg and "WEIGHTZOO_SQL_MEMORY" in msg
    assert p.elapsed < 10, p.elapsed
    assert p.growth_mb < 200 + 250, p.growth_mb  # the limit plus allocator slack, not GBs
    still_works(lzoo)


def test_timeout_interrupts_and_the_connection_still_works(lzoo: Zoo) -> None:
    t0 = time.monotonic()
    with pytest.raises(QueryLimitError) as e:
        lzoo.sql(SLOW_QUERY, memory_limit=MEM, timeout=1)
    took = time.monotonic() - t0
    assert e.value.limit == "timeout" and 1 <= took < 4, took
    msg = str(e.value)
    assert "statement timeout of 1 s" in msg and "--timeout" in msg and "WEIGHTZOO_SQL_TIMEOUT" in msg
    still_works(lzoo)


def test_untracked_memory_is_caught_by_the_watchdog(lzoo: Zoo) -> None:
    # a 2.4 GB result converted to pandas: memory DuckDB does not count against its limit
    with Peak() as p, pytest.raises(QueryLimitError) as e:
        lzoo.sql("select * from range(300000000)", memory_limit=MEM, timeout=30)
    assert e.value.limit == "memory"
    assert p.growth_mb < 200 + 400, p.growth_mb
    still_works(lzoo)


@pytest.mark.parametrize(
    "query",
    [
        "select length(repeat('x', 2000000000))",
        "select length(repeat([1, 2, 3], 500000000))",
        "select len(range(0, 500000000))",
        "select len(range(0, 5000000000, 2))",
        "select len(generate_series(500000000))",
        "select length(lpad('x', 200000000, 'y'))",
        "select length(rpad('x', 200000000, 'y'))",
        "select length(printf('%200000000d', 1))",
        "select length(printf('%*d', 200000000, 1))",
        "select length(format('{:>200000000}', 'x'))",
        "select length(format('{:>{}}', 'x', 200000000))",
        "select len(list_resize([1], 200000000))",
        "select len(array_resize([1], 200000000, 0))",
        "select length(repeat('x', (select count(*) from metrics) * 1000000))",
    ],
)
def test_functions_that_build_one_huge_value_are_bounded(lzoo: Zoo, query: str) -> None:
    with Peak() as p, pytest.raises(QueryLimitError) as e:
        lzoo.sql(query, memory_limit=MEM, timeout=10)
    assert e.value.limit == "memory" and "in one value" in str(e.value)
    assert p.growth_mb < 150, p.growth_mb


def test_qualified_calls_cannot_bypass_the_bounds(lzoo: Zoo) -> None:
    for q in ("select system.main.repeat('x', 3)", 'select "system"."main"."lpad"(\'x\', 3, \'y\')',
              "select main.range(3)", "select system.range(3)"):  # fmt: skip
        with pytest.raises(QueryError, match="without a schema or catalog prefix"):
            lzoo.sql(q)


def test_bounded_functions_still_work_normally(lzoo: Zoo) -> None:
    r = lzoo.sql(
        "select repeat('ab', 3) as a, range(3) as b, range(1, 7, 2) as c, generate_series(1, 3) as d, lpad('7', 3, '0') as e, "
        "rpad('7', 3, '0') as f, printf('%05.1f|%s', 7.25, 'x') as g, format('{}-{:>3}', 1, 2) as h, "
        "len(list_resize([1], 3)) as i, len(array_resize([1, 2], 5, 0)) as j, repeat([1], 2) as k, "
        "len(range(timestamp '2020-01-01', timestamp '2020-01-03', interval 1 day)) as l"
    ).iloc[0]  # fmt: skip
    assert (r.a, list(r.b), list(r.c), list(r.d), r.e, r.f, r.g, r.h, r.i, r.j, list(r.k), r.l) == (
        "ababab", [0, 1, 2], [1, 3, 5], [1, 2, 3], "007", "700", "007.2|x", "1-  2", 3, 5, [1, 1], 2
    )  # fmt: skip
    assert len(lzoo.sql("select * from range(100000)")) == 100000  # the table function streams: not bounded


def test_a_runaway_query_releases_the_lock(lzoo: Zoo) -> None:
    """Queries on one handle run one at a time (the app shares one): the timeout frees the lock."""
    errors: list[BaseException] = []

    def runaway() -> None:
        try:
            lzoo.sql(SLOW_QUERY, timeout=1.5)
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    t = threading.Thread(target=runaway)
    t.start()
    time.sleep(0.3)
    t0 = time.monotonic()
    assert lzoo.sql("select count(*) as n from models", timeout=10)["n"][0] == 40
    assert time.monotonic() - t0 < 5
    t.join(10)
    assert len(errors) == 1 and isinstance(errors[0], QueryLimitError) and errors[0].limit == "timeout"


def test_a_waiting_query_gives_up_after_its_own_timeout(lzoo: Zoo) -> None:
    lzoo.sql("select 1")
    lock = lzoo._analytics._lock
    assert lock.acquire(timeout=5)
    try:
        t0 = time.monotonic()
        with pytest.raises(QueryLimitError, match="another query") as e:
            lzoo.sql("select 1", timeout=0.3)
        assert e.value.limit == "timeout" and time.monotonic() - t0 < 2
    finally:
        lock.release()
    assert lzoo.sql("select 1 as x")["x"][0] == 1


def test_no_spilling_no_files(lzoo: Zoo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    before = sorted(p for p in lzoo.root.rglob("*") if "-shm" not in p.name and "-wal" not in p.name)
    r = lzoo.sql(
        "select current_setting('memory_limit') as m, current_setting('threads') as t, current_setting('temp_directory') as d, "
        "current_setting('max_temp_directory_size') as s, current_setting('enable_external_access') as x",
        memory_limit="300MB", threads=1,
    ).iloc[0]  # fmt: skip
    assert r.m.startswith("286.1 MiB") and int(r.t) == 1 and r.d == "" and r.s == "0 bytes" and r.x in (False, "false")
    with pytest.raises(QueryLimitError):
        lzoo.sql("select a.name||b.name||c.name as s from metrics a, metrics b, metrics c order by s", memory_limit=MEM)
    assert list(tmp_path.iterdir()) == []  # no .tmp spill folder in the working directory
    after = sorted(p for p in lzoo.root.rglob("*") if "-shm" not in p.name and "-wal" not in p.name)
    assert before == after


# ------------------------------------------------------------------------------------------ settings
def test_limits_come_from_argument_then_zoo_then_environment_then_default(lzoo: Zoo, monkeypatch) -> None:
    for env in ("WEIGHTZOO_SQL_MEMORY", "WEIGHTZOO_SQL_TIMEOUT", "WEIGHTZOO_SQL_THREADS"):
        monkeypatch.delenv(env, raising=False)
    d = resolve_limits(zoo=lzoo)
    assert d.timeout == 60 and abs(d.memory - parse_memory("25%")) < 2 and 1 <= d.threads <= 4
    monkeypatch.setenv("WEIGHTZOO_SQL_MEMORY", "300MB")
    monkeypatch.setenv("WEIGHTZOO_SQL_TIMEOUT", "7")
    monkeypatch.setenv("WEIGHTZOO_SQL_THREADS", "1")
    assert resolve_limits(zoo=lzoo) == type(d)(300 * 10**6, 7.0, 1)
    monkeypatch.setattr(lzoo, "sql_memory_limit", "400MB", raising=False)
    monkeypatch.setattr(lzoo, "sql_timeout", 0, raising=False)  # 0 = no timeout
    assert resolve_limits(zoo=lzoo) == type(d)(400 * 10**6, None, 1)
    assert resolve_limits("1GiB", 3, 2, zoo=lzoo) == type(d)(2**30, 3.0, 2)
    assert lzoo.sql("select current_setting('memory_limit') as m")["m"][0] == "381.4 MiB"


@pytest.mark.parametrize("bad", ["lots", "0%", "150%", "-1GB", "1 parsec", "1KB", True, ""])
def test_bad_memory_limits_are_config_errors(lzoo: Zoo, bad) -> None:
    with pytest.raises(ConfigError, match="memory limit"):
        lzoo.sql("select 1", memory_limit=bad)


@pytest.mark.parametrize("bad", ["soon", -1, "nan", float("inf")])
def test_bad_timeouts_are_config_errors(lzoo: Zoo, bad) -> None:
    with pytest.raises(ConfigError, match="timeout"):
        lzoo.sql("select 1", timeout=bad)
    assert parse_timeout("off") is None and parse_timeout(0) is None and parse_timeout("2.5") == 2.5


def test_cli_flags(lzoo: Zoo, capsys) -> None:
    from zoo.cli import main

    assert main(["query", "--root", str(lzoo.root), "--memory-limit", MEM, "--timeout", "30", ISSUE_QUERY]) == 2
    err = capsys.readouterr().err
    assert "memory limit of 200MB" in err and "Traceback" not in err
    assert main(["query", "--root", str(lzoo.root), "--timeout", "1", SLOW_QUERY]) == 2
    assert "statement timeout of 1 s" in capsys.readouterr().err
    assert main(["query", "--root", str(lzoo.root), "--memory-limit", "lots", "select 1"]) == 2
    assert "memory limit" in capsys.readouterr().err
    assert main(["query", "--root", str(lzoo.root), "--threads", "1", "--timeout", "0", "select 42 as x"]) == 0
    assert "42" in capsys.readouterr().out


def test_app_sql_box_uses_the_stricter_limits(lzoo: Zoo, monkeypatch) -> None:
    pytest.importorskip("streamlit")
    from streamlit.testing.v1 import AppTest

    from tests.conftest import REPO_ROOT

    monkeypatch.setenv("WEIGHTZOO_HOME", str(lzoo.root))
    monkeypatch.delenv("WEIGHTZOO_URL", raising=False)
    monkeypatch.setenv("WEIGHTZOO_APP_SQL_TIMEOUT", "1")
    at = AppTest.from_file(str(REPO_ROOT / "app" / "pages" / "1_Models.py"), default_timeout=120)
    at.run()
    at.text_area(key="sql_text").input(SLOW_QUERY)
    next(b for b in at.button if b.label == "Run query").click().run()
    assert not at.exception
    assert at.error and "statement timeout of 1 s" in at.error[0].value and "WEIGHTZOO_APP_SQL_TIMEOUT" in at.error[0].value
    from app.common import APP_SQL_MEMORY, APP_SQL_TIMEOUT

    assert (APP_SQL_MEMORY, APP_SQL_TIMEOUT) == ("1GB", 15.0)


# ------------------------------------------------------------------------------------------ PIVOT
def test_pivot_refusal_says_why_and_pivot_with_values_works(lzoo: Zoo) -> None:
    for q in ("pivot metrics on name using first(value)", "select * from (pivot metrics on name using first(value))"):
        with pytest.raises(QueryError) as e:
            lzoo.sql(q)
        assert "PIVOT" in str(e.value) and "IN" in str(e.value) and "got 2 statements" not in str(e.value)
    r = lzoo.sql("pivot metrics on name in ('test_metric_1', 'test_metric_2') using first(value) group by model_id")
    assert len(r) == 40 and {"test_metric_1", "test_metric_2"} <= set(r.columns)


# ------------------------------------------------------------------------------------------ disk errors
def test_disk_full_while_copying_the_catalog_is_a_storage_error(zoo: Zoo, monkeypatch) -> None:
    zoo.add(mlp_state(0), arch=MLP_CFG, population="p", name="a")
    before = catalog_counts(zoo)

    def full(self):  # noqa: ANN001, ANN202
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Analytics, "_load_tables", full)
    with pytest.raises(StorageError) as e:
        zoo.sql("select count(*) from models")
    msg = str(e.value)
    assert str(zoo.root) in msg and "is full" in msg and "Free some space" in msg
    monkeypatch.setattr(Analytics, "_load_tables", lambda self: (_ for _ in ()).throw(duckdb.IOException("IO Error: disk I/O error")))
    with pytest.raises(StorageError, match="Free some space"):
        zoo.sql("select count(*) from models")
    monkeypatch.undo()
    assert zoo.sql("select count(*) as n from models")["n"][0] == 1
    assert catalog_counts(zoo) == before


def test_disk_io_error_on_opening_the_catalog_is_a_storage_error(zoo: Zoo, zoo_root: Path, monkeypatch) -> None:
    zoo.add(mlp_state(0), arch=MLP_CFG, population="p", name="a")
    import sqlite3.dbapi2 as dbapi2  # what SQLAlchemy's pysqlite dialect calls

    def failing(*a, **k):  # noqa: ANN002, ANN003, ANN202
        raise sqlite3.OperationalError("disk I/O error")  # what SQLite says when it cannot grow its -shm file

    monkeypatch.setattr(dbapi2, "connect", failing)
    zoo.engine.dispose()  # the next read opens a new connection
    for read in (lambda: Zoo.open(zoo_root, create=False), zoo.generation, lambda: zoo.get("a"),
                 lambda: zoo.sql("select * from models")):  # fmt: skip
        with pytest.raises(StorageError) as e:
            read()
        assert str(zoo_root) in str(e.value) and "disk" in str(e.value) and "disk I/O error" in str(e.value)
    monkeypatch.undo()
    assert zoo.get("a").name == "a"
