"""Settings read at call time (never frozen at import), so tests and users can change them freely."""

from __future__ import annotations

import os
from pathlib import Path


def default_root() -> Path:
    """The default zoo root: ``$WEIGHTZOO_HOME`` if set, else ``~/.weightzoo``."""
    env = os.environ.get("WEIGHTZOO_HOME")
    return Path(env).expanduser() if env else Path.home() / ".weightzoo"


def offline() -> bool:
    """True when network access must not be attempted (``HF_HUB_OFFLINE`` or ``WEIGHTZOO_OFFLINE``)."""
    for var in ("WEIGHTZOO_OFFLINE", "HF_HUB_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in {"1", "true", "yes", "on"}:
            return True
    return False
