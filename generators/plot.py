"""Writing a run's accuracy-vs-novelty plot as a PNG file, guarded.

:func:`save_png` is the one place a user-given file path is written. ``zoo.outpath`` guards output
*folders* (exports, saved encoders) and has no single-file guard yet; until it has, this function
applies the same rules to a file: no path inside (or being) a zoo root, not a symbolic link, not the
name of something that is not a PNG already (a PNG is replaced only with ``overwrite``); the file is
written with the store's one atomic file write (:func:`zoo.fsutil.atomic_file`: temp, fsync, rename).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from zoo.errors import DuplicateError, OutputPathError, StorageError

__all__ = ["save_png", "check_png_path"]

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _inside_zoo(real: Path, roots: Iterable[Path]) -> Path | None:
    for r in roots:
        if real == r or r in real.parents:
            return r
    for p in real.parents:
        if (p / "catalog.db").exists():
            return p
    return None


def check_png_path(path: str | os.PathLike[str], *, overwrite: bool = False, zoo_roots: Iterable[Any] = ()) -> Path:
    """Raise unless ``path`` may be written (the rules of the module docstring); call it before any work."""
    from zoo.settings import default_root

    p = Path(path).expanduser()
    if p.suffix.lower() != ".png":
        raise OutputPathError(f"the plot is written as a PNG file; give a path ending in .png, not {str(p)!r}")
    if p.is_symlink():
        raise OutputPathError(f"refusing to write the plot to {str(p)!r}: it is a symbolic link; give another path")
    real = p.resolve()
    roots = [Path(r).resolve() for r in zoo_roots if r is not None] + [Path(default_root()).resolve()]
    zoo = _inside_zoo(real, roots)
    if zoo is not None:
        raise OutputPathError(f"refusing to write the plot to {str(p)!r}: it is inside the zoo at {zoo}; "
                              "write it outside any zoo")  # fmt: skip
    if real.exists():
        if real.is_dir():
            raise OutputPathError(f"{str(p)!r} is a folder; give a file name ending in .png")
        with open(real, "rb") as fh:
            is_png = fh.read(8) == _PNG_MAGIC
        if not is_png:
            raise OutputPathError(f"refusing to replace {str(p)!r}: it exists and is not a PNG image")
        if not overwrite:
            raise DuplicateError(f"{str(p)!r} exists; pass --overwrite (overwrite=True) to replace it")
    if not real.parent.is_dir():
        raise StorageError(f"cannot write the plot {str(p)!r}: folder {str(real.parent)!r} does not exist")
    return real


def save_png(fig: Any, path: str | os.PathLike[str], *, overwrite: bool = False, zoo_roots: Iterable[Any] = ()) -> Path:
    """Save a matplotlib figure to ``path`` (a ``.png`` file) under the rules of the module docstring."""
    p = Path(path).expanduser()
    real = check_png_path(path, overwrite=overwrite, zoo_roots=zoo_roots)
    from zoo.fsutil import atomic_file

    with atomic_file(real, real.with_name(f".{real.name}.tmp-{os.getpid()}"), what=f"the plot {real.name}") as fh:
        fig.savefig(fh, format="png")
    return p
