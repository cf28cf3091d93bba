"""The one guard for every folder weightzoo writes outside a zoo (exports, merges, saved encoders).

A command given an output folder must never destroy something it did not make. The rules, checked
by :func:`guard_output_dir` before any input is read:

* the folder may not be, contain or sit inside a zoo root (a folder holding ``catalog.db``, or a
  root the caller names: the open zoo's and the default ``$WEIGHTZOO_HOME``), symlinks resolved;
* it may not be the filesystem root, the current directory or one of its ancestors, or the
  user's home or one of its ancestors, and it may not itself be a symbolic link;
* a missing or empty folder is used as is; an existing non-empty one is replaced only with
  ``overwrite``, and only when it carries :data:`MARKER`, the file weightzoo writes into every
  folder it creates. Anything else (a file, a folder weightzoo did not write) is refused.

The folder is then written under a temporary name next to it (:func:`make_staging_dir`) and
moved into place by :func:`commit_output_dir`, which checks the rules again right before it
replaces anything. :func:`staged_output_dir` wraps the three steps. An ``OSError`` on the way
(a name too long, a read-only or virtual file system, a full disk) becomes a
:class:`~zoo.errors.StorageError` naming the path and the reason.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from zoo.errors import DuplicateError, OutputPathError, StorageError
from zoo.settings import default_root

__all__ = [
    "CATALOG_FILE",
    "MARKER",
    "commit_output_dir",
    "guard_output_dir",
    "guard_output_file",
    "is_weightzoo_output",
    "make_staging_dir",
    "staged_output_dir",
]

#: the file weightzoo leaves in every folder it writes; ``overwrite`` replaces only such folders
MARKER = ".weightzoo-output"
#: a folder holding this file is a zoo root (see :meth:`zoo.facade.Zoo.open`)
CATALOG_FILE = "catalog.db"

PathLike = str | os.PathLike[str]


def _show(path: object) -> str:
    """``path`` for a message, shortened when absurdly long (a 10k-character name stays readable)."""
    s = str(path)
    return s if len(s) <= 200 else f"{s[:120]}...{s[-40:]} ({len(s)} characters)"


def _storage_error(what: str, path: object, e: OSError) -> StorageError:
    reason = e.strerror or str(e)
    return StorageError(
        f"cannot write the {what} {_show(path)}: {reason}. Choose a folder on a writable disk "
        "with a shorter path, or fix the permissions"
    )


def is_weightzoo_output(folder: Path) -> bool:
    """True when ``folder`` carries weightzoo's marker file (a regular file, not a link)."""
    marker = folder / MARKER
    return marker.is_file() and not marker.is_symlink()


def _real(path: Path) -> Path:
    return Path(os.path.realpath(path))


def _self_and_ancestors(p: Path) -> list[Path]:
    return [p, *p.parents]


def _known_roots(zoo_roots: Iterable[PathLike | None]) -> list[Path]:
    roots = [default_root(), *(Path(r).expanduser() for r in zoo_roots if r is not None)]
    return [_real(r) for r in roots]


def _check_location(real: Path, shown: str, what: str, roots: list[Path]) -> None:
    """Refuse the places no output may go (see the module docstring)."""

    def refuse(why: str) -> OutputPathError:
        return OutputPathError(f"refusing to write the {what} {shown}: {why}; choose a new or empty folder of its own "
                               "(e.g. a subfolder such as ./out/model)")  # fmt: skip

    if real == Path(real.anchor):
        raise refuse("it is the filesystem root")
    if real in _self_and_ancestors(_real(Path.cwd())):
        raise refuse("it is the current directory or one of its ancestors")
    try:
        home = _real(Path.home())
    except (KeyError, RuntimeError):  # no home directory known
        home = None
    if home is not None and real in _self_and_ancestors(home):
        raise refuse(f"it is your home folder ({home}) or one of its ancestors")
    for anc in _self_and_ancestors(real):
        if (anc / CATALOG_FILE).exists() or anc in roots:
            where = "it is the zoo root" if anc == real else f"it is inside the zoo at {anc}"
            raise refuse(f"{where}; a zoo is only changed through weightzoo's own commands")
    for root in roots:
        if real in root.parents:
            raise refuse(f"it contains the zoo at {root}")


def _nested_zoo(real: Path) -> Path | None:
    """A zoo root anywhere below ``real`` (links are not followed: replacing a folder removes links, not targets)."""
    for dirpath, dirnames, filenames in os.walk(real, followlinks=False):
        if CATALOG_FILE in filenames:
            return Path(dirpath)
        dirnames[:] = [d for d in dirnames if not os.path.islink(os.path.join(dirpath, d))]
    return None


def _check_contents(path: Path, real: Path, shown: str, what: str, overwrite: bool) -> None:
    """What is at ``path`` now may be written over: nothing, an empty folder, or (``overwrite``) a marked one."""
    if not os.path.lexists(path):
        return
    if not path.is_dir():
        raise OutputPathError(f"refusing to write the {what} {shown}: it exists and is not a folder; "
                              "choose another path or remove it yourself")  # fmt: skip
    if not any(path.iterdir()):
        return
    if not overwrite:
        raise DuplicateError(
            f"the {what} {shown} already exists and is not empty; choose another folder, or pass "
            "overwrite=True (--overwrite) to replace a folder weightzoo wrote"
        )
    if not is_weightzoo_output(path):
        raise OutputPathError(
            f"refusing to replace the {what} {shown}: weightzoo did not write it (it has no {MARKER} file), "
            "and --overwrite only replaces folders weightzoo wrote. Choose another folder, or empty or "
            "remove this one yourself"
        )
    nested = _nested_zoo(real)
    if nested is not None:
        raise OutputPathError(f"refusing to replace the {what} {shown}: it contains the zoo at {nested}; "
                              "move the zoo out first or choose another folder")  # fmt: skip


def _nearest_existing(real: Path) -> Path:
    for anc in _self_and_ancestors(real):
        if os.path.lexists(anc):
            return anc
    return Path(real.anchor)  # pragma: no cover - the anchor always exists


def guard_output_dir(
    path: PathLike,
    *,
    overwrite: bool,
    what: str = "output folder",
    zoo_roots: Iterable[PathLike | None] = (),
) -> Path:
    """Check that weightzoo may write (or, with ``overwrite``, replace) the folder ``path``; return it.

    Call it before reading any input. The returned path is ``path`` with ``~`` expanded; nothing is
    created. ``zoo_roots`` names zoos to protect besides those found by their catalog file (a
    zoo whose catalog is on a server has none); ``$WEIGHTZOO_HOME`` (or ``~/.weightzoo``) is
    always protected.

    Raises:
        OutputPathError: the path is, contains or sits inside a zoo; it is the filesystem root,
            the current directory, the home folder or an ancestor of either; it is a symbolic
            link or a file; or it is a non-empty folder weightzoo did not write.
        DuplicateError: it is a non-empty folder and ``overwrite`` is False.
        StorageError: the path cannot be examined or created (too long, not a folder above it,
            not writable).
    """
    if not isinstance(path, str | os.PathLike) or not str(path).strip():
        raise OutputPathError(f"the {what} must be a folder path, got {path!r}")
    p = Path(path).expanduser()
    shown = _show(p)
    try:
        if p.is_symlink():
            raise OutputPathError(f"refusing to write the {what} {shown}: it is a symbolic link; give the folder "
                                  f"it points to ({_show(_real(p))}) or another path")  # fmt: skip
        real = _real(p)
        _check_location(real, shown, what, _known_roots(zoo_roots))
        _check_contents(p, real, shown, what, overwrite)
        above = _nearest_existing(real.parent)
        if not above.is_dir():
            raise StorageError(f"cannot write the {what} {shown}: {_show(above)} is a file, not a folder; "
                               "choose a path under a folder")  # fmt: skip
        if not os.access(above, os.W_OK | os.X_OK):
            raise StorageError(f"cannot write the {what} {shown}: {_show(above)} is not writable; "
                               "choose a folder you can write to")  # fmt: skip
    except OSError as e:
        if isinstance(e, StorageError):
            raise
        raise _storage_error(what, p, e) from e
    return p


def guard_output_file(
    path: PathLike,
    *,
    overwrite: bool,
    what: str = "output file",
    zoo_roots: Iterable[PathLike | None] = (),
    replaceable: Callable[[Path], bool] | None = None,
) -> Path:
    """:func:`guard_output_dir` for a single file (a plot, a report): the same places are refused (a zoo,
    links); an existing file is replaced only with ``overwrite`` and only when ``replaceable(path)``
    says it is one weightzoo could have written (e.g. a PNG for a plot). Returns the resolved path;
    nothing is created. Write it with :func:`zoo.store.fsutil.atomic_file`."""
    if not isinstance(path, str | os.PathLike) or not str(path).strip():
        raise OutputPathError(f"the {what} must be a file path, got {path!r}")
    p = Path(path).expanduser()
    shown = _show(p)
    try:
        if p.is_symlink():
            raise OutputPathError(f"refusing to write the {what} {shown}: it is a symbolic link; give another path")
        real = _real(p)
        _check_location(real, shown, what, _known_roots(zoo_roots))
        if real.exists():
            if real.is_dir():
                raise OutputPathError(f"refusing to write the {what} {shown}: it is a folder; give a file name")
            if replaceable is not None and not replaceable(real):
                raise OutputPathError(f"refusing to replace {shown}: it exists and is not a {what}")
            if not overwrite:
                raise DuplicateError(f"{shown} exists; pass --overwrite (overwrite=True) to replace it")
        if not real.parent.is_dir():
            raise StorageError(f"cannot write the {what} {shown}: folder {_show(real.parent)} does not exist")
    except OSError as e:
        if isinstance(e, StorageError):
            raise
        raise _storage_error(what, p, e) from e
    return real


def make_staging_dir(out_dir: Path, *, what: str = "output folder") -> Path:
    """Create the temporary folder next to ``out_dir`` that is written and then renamed into place.

    It already holds :data:`MARKER`. ``OSError`` becomes :class:`~zoo.errors.StorageError`.
    """
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = out_dir.parent / f".{out_dir.name[:100]}.tmp-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
    except OSError as e:
        raise _storage_error(what, out_dir, e) from e
    try:
        (tmp / MARKER).write_text(
            json.dumps({"written_by": "weightzoo", "note": "weightzoo may replace this folder with --overwrite"}) + "\n",
            encoding="utf-8",
        )
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise _storage_error(what, out_dir, e) from e
    return tmp


def _fsync_path(path: Path, flags: int = os.O_RDONLY) -> None:
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def commit_output_dir(
    tmp: Path,
    out_dir: Path,
    *,
    overwrite: bool,
    what: str = "output folder",
    zoo_roots: Iterable[PathLike | None] = (),
) -> Path:
    """fsync the finished staging folder ``tmp`` and move it to ``out_dir``, atomically.

    The rules of :func:`guard_output_dir` are checked again first (the target may have changed
    since). A folder being replaced is renamed aside, the new one renamed in, then the old one
    deleted; if the second rename fails the old folder is put back. ``tmp`` is left for the
    caller to remove when this raises.
    """
    guard_output_dir(out_dir, overwrite=overwrite, what=what, zoo_roots=zoo_roots)
    old: Path | None = None
    try:
        for f in tmp.iterdir():
            if f.is_file():
                _fsync_path(f)
        if out_dir.is_dir() and not any(out_dir.iterdir()):
            out_dir.rmdir()
        elif os.path.lexists(out_dir):  # a marked folder (checked above)
            old = out_dir.parent / f".{out_dir.name[:100]}.old-{uuid.uuid4().hex[:8]}"
            os.replace(out_dir, old)
        try:
            os.replace(tmp, out_dir)
        except OSError:
            if old is not None:
                os.replace(old, out_dir)
                old = None
            raise
    except OSError as e:
        raise _storage_error(what, out_dir, e) from e
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    with contextlib.suppress(OSError):  # make the rename durable (not supported everywhere)
        _fsync_path(out_dir.parent)
    return out_dir


@contextlib.contextmanager
def staged_output_dir(
    out_dir: PathLike,
    *,
    overwrite: bool,
    what: str = "output folder",
    zoo_roots: Iterable[PathLike | None] = (),
) -> Iterator[Path]:
    """Guard ``out_dir``, yield a staging folder to write into, then move it into place.

    On an error (or an interrupt) inside the block the staging folder is removed and ``out_dir``
    is left as it was::

        with staged_output_dir(out, overwrite=False, what="export folder") as tmp:
            (tmp / "config.json").write_text("{}")
    """
    target = guard_output_dir(out_dir, overwrite=overwrite, what=what, zoo_roots=zoo_roots)
    tmp = make_staging_dir(target, what=what)
    try:
        yield tmp
        commit_output_dir(tmp, target, overwrite=overwrite, what=what, zoo_roots=zoo_roots)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
