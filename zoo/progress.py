"""Progress for long work: live bars on a terminal, one line per stage in a log.

``progress_bar`` takes tqdm's arguments and returns a tqdm bar when stderr is a terminal. When it is
not (``weightzoo demo > log 2>&1``, CI, a job scheduler), redrawn bars would fill the log with
carriage-return noise, so it returns a small stand-in that prints one line when the stage ends,
with its count and timing, as pip and huggingface_hub do::

    build digits-mlp: 300/300 run in 41.2 s (loss=0.1234)

Stages that take long also print a line at most every ``WEIGHTZOO_PROGRESS_EVERY`` seconds (60 by
default). Nested, transient bars (``leave=False``) print nothing in a log. ``WEIGHTZOO_PROGRESS`` forces
the mode: ``bar``, ``lines`` or ``none``. Every command's ``--no-progress`` hides both.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator, Sized
from typing import Any

__all__ = ["progress_bar", "LineProgress"]


def _mode() -> str:
    forced = os.environ.get("WEIGHTZOO_PROGRESS", "").strip().lower()
    if forced in ("bar", "lines", "none"):
        return forced
    try:
        return "bar" if sys.stderr.isatty() else "lines"
    except (AttributeError, ValueError):  # a closed or replaced stderr
        return "lines"


def progress_bar(iterable: Iterable[Any] | None = None, **kwargs: Any) -> Any:
    """A tqdm bar on a terminal, a :class:`LineProgress` otherwise (same arguments as ``tqdm``)."""
    mode = _mode()
    if mode == "none":
        kwargs["disable"] = True
    if mode == "bar":
        from tqdm.auto import tqdm

        return tqdm(iterable, **kwargs)
    return LineProgress(iterable, **kwargs)


class LineProgress:
    """The subset of tqdm's interface weightzoo uses, printing whole lines instead of redrawing."""

    def __init__(
        self,
        iterable: Iterable[Any] | None = None,
        *,
        total: float | None = None,
        desc: str | None = None,
        unit: str = "it",
        disable: bool = False,
        leave: bool = True,
        file: Any = None,
        every: float | None = None,
        **_ignored: Any,
    ) -> None:
        self.iterable = iterable
        if total is None and isinstance(iterable, Sized):
            total = len(iterable)
        self.total, self.desc, self.unit = total, desc or "", unit
        self.n = 0
        self.disable = disable or not leave
        self._file = file
        self._postfix = ""
        self._start = self._last = time.monotonic()
        self._every = every if every is not None else float(os.environ.get("WEIGHTZOO_PROGRESS_EVERY", "60"))
        self._closed = False

    def __iter__(self) -> Iterator[Any]:
        if self.iterable is None:
            raise TypeError("LineProgress made without an iterable is not iterable")
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def update(self, n: float = 1) -> None:
        self.n += n
        now = time.monotonic()
        if not self.disable and now - self._last >= self._every:
            self._last = now
            self._print(f"{self._count()} after {now - self._start:.0f} s")

    def set_postfix(self, ordered_dict: Any = None, refresh: bool = True, **kwargs: Any) -> None:
        items = dict(ordered_dict or {}, **kwargs)
        self._postfix = ", ".join(f"{k}={v}" for k, v in items.items())

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        self._postfix = s

    def set_description(self, desc: str | None = None, refresh: bool = True) -> None:
        self.desc = desc or ""

    def refresh(self) -> None:
        pass

    def write(self, s: str) -> None:
        print(s, file=self._file or sys.stderr, flush=True)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if not self.disable:
            self._print(f"{self._count()} in {time.monotonic() - self._start:.1f} s")

    def _count(self) -> str:
        n = int(self.n) if float(self.n).is_integer() else round(self.n, 2)
        total = f"/{int(self.total)}" if self.total is not None else ""
        return f"{n}{total} {self.unit}"

    def _print(self, what: str) -> None:
        post = f" ({self._postfix})" if self._postfix else ""
        head = f"{self.desc}: " if self.desc else ""
        print(f"{head}{what}{post}", file=self._file or sys.stderr, flush=True)
