"""Settings read at call time (never frozen at import), so tests and users can change them freely."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from zoo.errors import ConfigError


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


def packs_url() -> str | None:
    """Where a new zoo keeps its packs: ``$WEIGHTZOO_PACKS`` (``s3://bucket/prefix`` or a folder), else None
    (``<root>/packs``). A zoo records its pack location in its catalog; this only matters when creating one."""
    return os.environ.get("WEIGHTZOO_PACKS") or None


def storage_options() -> dict[str, Any]:
    """Options for the pack store's file system (fsspec/s3fs keyword arguments, e.g. ``{"endpoint_url": ...}``)
    from ``$WEIGHTZOO_STORAGE_OPTIONS`` (a JSON object); ``{}`` when unset. Credentials are best left to the
    file system's own settings (``AWS_ACCESS_KEY_ID``, ``AWS_ENDPOINT_URL``, ``~/.aws``)."""
    raw = os.environ.get("WEIGHTZOO_STORAGE_OPTIONS", "").strip()
    if not raw:
        return {}
    try:
        opts = json.loads(raw)
    except ValueError as e:
        raise ConfigError(f"WEIGHTZOO_STORAGE_OPTIONS is not valid JSON ({e}); give an object like "
                          '\'{"endpoint_url": "http://127.0.0.1:9000"}\'') from e  # fmt: skip
    if not isinstance(opts, dict):
        raise ConfigError("WEIGHTZOO_STORAGE_OPTIONS must be a JSON object of file-system options")
    return opts


def packs_cache() -> Path | None:
    """A local read-cache folder for packs kept in an object store: ``$WEIGHTZOO_PACKS_CACHE``, else None."""
    env = os.environ.get("WEIGHTZOO_PACKS_CACHE")
    return Path(env).expanduser() if env else None
