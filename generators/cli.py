"""``weightzoo generate``: weight generators from the shell (filled in below)."""

from __future__ import annotations

from typing import Any


def register(sub: Any, common: Any) -> None:
    """Add ``generate`` to the ``weightzoo`` subcommands."""
