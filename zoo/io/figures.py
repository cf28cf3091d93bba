"""Writing a figure (a generator run's accuracy-vs-novelty plot, a landscape phase map, ...) as a PNG
file, guarded.

:func:`save_png` is the one place a user-given figure path is written, through the store's output guard
(:func:`zoo.io.outpath.guard_output_file`: no path inside a zoo, not a symbolic link, not the name of
something that is not a PNG already, a PNG replaced only with ``overwrite``) and its one atomic file
write (:func:`zoo.store.fsutil.atomic_file`: temp, fsync, rename).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from zoo.errors import OutputPathError
from zoo.io.outpath import guard_output_file

__all__ = ["save_png", "check_png_path"]

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _is_png(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(8) == _PNG_MAGIC


def check_png_path(path: str | os.PathLike[str], *, overwrite: bool = False, zoo_roots: Iterable[Any] = ()) -> Path:
    """Raise unless ``path`` may be written (the rules of the module docstring); call it before any work."""
    p = Path(path).expanduser()
    if p.suffix.lower() != ".png":
        raise OutputPathError(f"the plot is written as a PNG file; give a path ending in .png, not {str(p)!r}")
    return guard_output_file(p, overwrite=overwrite, what="PNG image", zoo_roots=zoo_roots, replaceable=_is_png)


def save_png(fig: Any, path: str | os.PathLike[str], *, overwrite: bool = False, zoo_roots: Iterable[Any] = ()) -> Path:
    """Save a matplotlib figure to ``path`` (a ``.png`` file) under the rules of the module docstring."""
    p = Path(path).expanduser()
    real = check_png_path(path, overwrite=overwrite, zoo_roots=zoo_roots)
    from zoo.store.fsutil import atomic_file

    with atomic_file(real, real.with_name(f".{real.name}.tmp-{os.getpid()}"), what=f"the plot {real.name}") as fh:
        fig.savefig(fh, format="png")
    return p
