"""Catalog connection: engine creation (SQLite WAL or any SQLAlchemy URL) and Alembic migrations."""

from __future__ import annotations

import os
import weakref
from pathlib import Path

from sqlalchemy import Engine, create_engine, event, inspect, text

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def make_engine(url: str) -> Engine:
    """Create the catalog engine. SQLite gets WAL mode, a busy timeout and foreign keys."""
    if url.startswith("sqlite"):
        engine = create_engine(url, pool_size=4, max_overflow=16, connect_args={"timeout": 60, "check_same_thread": False})
        # a forked child must not reuse the parent's pooled connections
        ref = weakref.ref(engine)
        os.register_at_fork(after_in_child=lambda: (e := ref()) is not None and e.dispose(close=False))

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):  # noqa: ANN001
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=60000")
            cur.close()

        folder = Path(str(engine.url.database or ".")).parent

        @event.listens_for(engine, "handle_error")
        def _disk_errors(ctx):  # noqa: ANN001, ANN202
            # "disk I/O error" / "database or disk is full" (reads too: SQLite writes its WAL and
            # shared-memory files on open) -> a StorageError that names the folder and says what to do
            from zoo.store.diskerrors import is_disk_error, storage_error

            if is_disk_error(ctx.original_exception):
                raise storage_error(ctx.original_exception, folder) from ctx.original_exception

        return engine
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://") :]
    return create_engine(url, pool_pre_ping=True)


def _alembic_config(connection):  # noqa: ANN001
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["connection"] = connection
    return cfg


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    cfg = _alembic_config(None)
    return ScriptDirectory.from_config(cfg).get_current_head()


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        if not inspect(conn).has_table("alembic_version"):
            return None
        row = conn.execute(text("select version_num from alembic_version")).first()
        return row[0] if row else None


def migrate(engine: Engine) -> None:
    """Bring the catalog to the newest schema (no-op when it already is).

    Several processes may open a new zoo at once: on SQLite a lock file next to the catalog
    serialises them from their first connection on (switching a new database to WAL mode needs it
    alone, and SQLite does not wait for that), on PostgreSQL an advisory lock does.
    """
    if engine.dialect.name == "sqlite" and engine.url.database not in (None, "", ":memory:"):
        from filelock import FileLock

        with FileLock(str(engine.url.database) + ".migrate.lock", timeout=120):
            _upgrade(engine)
    else:
        _upgrade(engine)


def _upgrade(engine: Engine) -> None:
    if current_revision(engine) == head_revision():  # another process did it while we waited
        return
    from alembic import command

    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":  # one migrator at a time across processes
            conn.execute(text("select pg_advisory_xact_lock(7243911)"))
        command.upgrade(_alembic_config(conn), "head")
