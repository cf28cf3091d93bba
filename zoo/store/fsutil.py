"""The one atomic file write of the store: temp file, flush, fsync, rename, fsync the folder.

Packs (:mod:`zoo.store.packs`) and derived-table files (:mod:`zoo.query.tables`) are written with
:func:`atomic_file`; folders written outside the zoo go through :mod:`zoo.io.outpath`, which stages a
whole folder the same way. A failure at any step (disk full, Ctrl-C, a bug) leaves no file behind;
an ``OSError`` becomes a :class:`~zoo.errors.StorageError` naming the file and the folder.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from zoo.errors import StorageError

__all__ = ["atomic_file", "fsync_dir", "ATOMIC_STEPS"]

#: the steps :func:`atomic_file` reports to ``on_step`` (fault-injection tests stop a writer at each)
ATOMIC_STEPS = ("temp_written", "fsynced", "renamed")


def fsync_dir(path: Path) -> None:
    """fsync a folder (so a rename into it survives a crash); best effort where the OS refuses."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_file(
    final: Path, tmp: Path, *, what: str, on_step: Callable[[str], None] | None = None
) -> Iterator[BinaryIO]:
    """Write ``final`` atomically through the temp path ``tmp`` (same file system).

    Yields a binary file open on ``tmp``; when the block ends the file is flushed and fsynced, renamed
    to ``final`` and its folder fsynced. ``on_step(step)`` is called after each of :data:`ATOMIC_STEPS`.
    On any exception (inside the block or in a step) ``tmp`` and, once renamed, ``final`` are removed.

    Raises:
        StorageError: an ``OSError`` while writing (disk full, permission denied), naming ``what``.
    """
    step = on_step or (lambda _s: None)
    renamed = False
    try:
        tmp.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            yield f
            f.flush()
            step("temp_written")
            os.fsync(f.fileno())
        step("fsynced")
        os.replace(tmp, final)
        renamed = True
        fsync_dir(final.parent)
        step("renamed")
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if renamed:
            final.unlink(missing_ok=True)
        if isinstance(e, OSError) and not isinstance(e, StorageError):
            raise StorageError(
                f"cannot write {what} in {final.parent}: {e.strerror or e}. "
                "Check free disk space and write permission on the zoo root; the store is unchanged."
            ) from e
        raise
