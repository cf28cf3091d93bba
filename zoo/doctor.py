"""``weightzoo doctor``: what is installed and usable, and the state of the zoo at hand.

weightzoo has several optional parts (the explorer, PostgreSQL catalogs, graph encoders, Ray, S3
packs); this says which of them work on this machine and how to get the missing ones, without
changing anything: it never creates or migrates a zoo.
"""

from __future__ import annotations

import importlib.metadata as md
import importlib.util
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Check", "EXTRAS", "version", "checks"]


@dataclass(frozen=True)
class Check:
    """One line of the report: a part, whether it is usable, and what is there or what to do."""

    part: str
    ok: bool
    detail: str


#: extra -> (what it enables, the import names it needs, the install hint)
EXTRAS: dict[str, tuple[str, tuple[str, ...], str]] = {
    "app": ("Streamlit explorer (`weightzoo app`)", ("streamlit", "plotly"), "pip install 'weightzoo[app]'"),
    "postgres": ("catalog on PostgreSQL (--url postgresql://...)", ("psycopg",), "pip install 'weightzoo[postgres]'"),
    "graph": ("graph metanetwork encoder (gmn)", ("torch_geometric",), "pip install 'weightzoo[graph]'"),
    "hub": ("Hugging Face Hub ingest/push", ("huggingface_hub",), "pip install 'weightzoo[hub]'"),
    "ray": ("jobs on Ray", ("ray",), "pip install ray"),
    "s3": ("packs on object storage", ("s3fs", "fsspec"), "pip install s3fs"),
}


def version() -> str:
    """The installed weightzoo version ("unknown" when run from a source tree that is not installed)."""
    try:
        return md.version("weightzoo")
    except md.PackageNotFoundError:
        return "unknown (not installed; pip install -e .)"


def _dist_version(module: str) -> str:
    for dist in (module, module.replace("_", "-")):
        try:
            return md.version(dist)
        except md.PackageNotFoundError:
            continue
    return "installed"


def checks(root: str | Path | None = None, url: str | None = None) -> list[Check]:
    """Every check, in report order; reads only (no zoo is created or migrated)."""
    import torch

    out = [
        Check("weightzoo", True, version()),
        Check("python", sys.version_info >= (3, 11), sys.version.split()[0]),
        Check("torch", True, f"{torch.__version__} (threads {torch.get_num_threads()}, "
              f"{'CUDA' if torch.cuda.is_available() else 'CPU only'})"),
    ]
    for extra, (what, modules, hint) in EXTRAS.items():
        missing = [m for m in modules if importlib.util.find_spec(m) is None]
        detail = f"{what}: " + (f"missing {', '.join(missing)}; {hint}" if missing
                                else ", ".join(f"{m} {_dist_version(m)}" for m in modules))
        out.append(Check(f"extra [{extra}]", not missing, detail))
    out.append(_sql_check())
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    out.append(Check("chromium (app end-to-end test)", bool(chromium),
                     chromium or "not found: apt-get install chromium (only the app's browser test needs it)"))
    pg = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    out.append(Check("postgresql server (its tests)", bool(pg) or shutil.which("initdb") is not None,
                     str(pg[-1].parent.parent.name) if pg else "not found: apt-get install postgresql"))
    out.append(_zoo_check(root, url))
    return out


def _sql_check() -> Check:
    """Run one real query on a throw-away zoo: DuckDB must ATTACH the SQLite catalog offline."""
    import tempfile

    from zoo.facade import Zoo

    try:
        with tempfile.TemporaryDirectory(prefix="weightzoo-doctor-") as tmp:
            z = Zoo.open(tmp)
            try:
                z.sql("select count(*) as n from models")
            finally:
                z.close()
        import duckdb

        return Check("sql over the catalog", True, f"DuckDB {duckdb.__version__} attaches the catalog offline")
    except Exception as e:  # noqa: BLE001 - report, never raise
        return Check("sql over the catalog", False, f"{type(e).__name__}: {e}; "
                     "pip install duckdb==1.4.4 duckdb-ext-sqlite==1.4.4.20260205")


def _zoo_check(root: str | Path | None, url: str | None) -> Check:
    from sqlalchemy import create_engine

    from zoo.settings import default_root
    from zoo.store.db import current_revision, head_revision

    base = Path(root).expanduser() if root is not None else default_root()
    head = head_revision()
    if url is None:
        db = base / "catalog.db"
        if not db.exists():
            return Check("zoo", True, f"no zoo at {base} yet (`weightzoo demo` builds one); schema head {head}")
        url = f"sqlite:///{db}"
    try:
        engine = create_engine(url)
        try:
            rev = current_revision(engine)
        finally:
            engine.dispose()
    except Exception as e:  # noqa: BLE001 - report, never raise: doctor must run on a broken setup
        return Check("zoo", False, f"{base}: catalog unreadable ({type(e).__name__}: {e})")
    if rev == head:
        return Check("zoo", True, f"{base}: schema {rev} (current)")
    if rev is None:
        return Check("zoo", False, f"{base}: the catalog has no schema version; is it a weightzoo catalog?")
    return Check("zoo", True, f"{base}: schema {rev}, newest is {head} (upgraded when weightzoo next opens it)")
