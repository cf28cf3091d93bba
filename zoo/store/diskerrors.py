"""A full or unwritable disk, recognised wherever it surfaces (SQLite, DuckDB, the OS) and turned into
one :class:`~zoo.errors.StorageError` that names the folder and says what to do."""

from __future__ import annotations

import errno
import shutil
import sqlite3
import sys
from pathlib import Path

from zoo.errors import StorageError

__all__ = ["fmt_size", "is_disk_error", "storage_error"]

_DISK_MARKERS = ("disk i/o error", "database or disk is full", "no space left", "disk is full", "read-only file system",
                 "attempt to write a readonly database", "unable to open database file", "could not write")  # fmt: skip


def fmt_size(n: float) -> str:
    """A byte count for people: ``1.5MB`` (powers of 1000)."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.3g}{unit}"
        n /= 1000
    return f"{n}B"


def is_disk_error(e: BaseException | None) -> bool:
    """An error of SQLite, DuckDB or the OS that means the disk is full or cannot be written/read."""
    if e is None:
        return False
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO, errno.EACCES):
        return True
    duckdb = sys.modules.get("duckdb")  # only loaded when SQL ran; never imported for this check
    db_errors: tuple[type, ...] = (sqlite3.OperationalError,) + ((duckdb.Error,) if duckdb is not None else ())
    if isinstance(e, db_errors) or type(e).__module__.startswith("sqlalchemy"):
        low = str(e).lower()
        return any(m in low for m in _DISK_MARKERS)
    return False


def storage_error(e: BaseException, folder: Path | str) -> StorageError:
    """A StorageError naming the folder, saying whether its disk is full, and what to do."""
    folder = Path(folder)
    try:
        free = shutil.disk_usage(folder).free
        space = f"{fmt_size(free)} free"
    except OSError:
        free, space = None, "free space unknown"
    full = (free is not None and free < 64 * 2**20) or (isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT))
    what = "is full" if full else "cannot be read or written"
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return StorageError(
        f"the disk holding the zoo folder {folder} {what} ({space}; {first}). Free some space on it (or fix its "
        "permissions) and retry: even read-only commands need a little room there, SQLite writes its WAL and "
        "shared-memory files next to catalog.db when it opens the catalog"
    )
