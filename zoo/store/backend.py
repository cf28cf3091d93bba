"""The parts of one opened zoo: its root folder, catalog, tensor packs and table files.

:class:`Backend` is what the store's paths work on (writes, reads, lineage, maintenance, derived
tables, SQL); :class:`zoo.Zoo` composes one and adds the user-facing API. Nothing here knows the
facade::

    b = Backend.open("/data/zoo")               # or url="postgresql://...", packs="s3://bucket/zoo"
    with b.catalog.write() as conn: ...         # the write lock + generation
    b.packs.write({tensor_id: tensor})          # an immutable pack
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, func, select, update

from zoo import settings
from zoo.errors import ConfigError, NotFoundError, ZooError
from zoo.settings import default_root
from zoo.store import schema as S
from zoo.store.catalog import Catalog
from zoo.store.db import make_engine, migrate
from zoo.store.diskerrors import is_disk_error, storage_error
from zoo.store.manifests import ManifestFiles
from zoo.store.objectstore import ObjectPackStore, ObjectTableFiles, filesystem, is_remote
from zoo.store.packs import PackStore
from zoo.store.tablefiles import TableFiles

__all__ = ["Backend"]


@dataclass(eq=False)
class Backend:
    """One zoo's storage: ``root`` (the SQLite catalog by default, caches; packs and table files unless they
    live elsewhere), the catalog at ``url``, the pack store (a local folder, or an object store: see
    :mod:`zoo.store.objectstore`), the derived-table files and the cache of population manifests."""

    root: Path
    url: str
    catalog: Catalog
    packs: PackStore
    table_files: TableFiles = None  # type: ignore[assignment]  # default: <root>/tables
    manifest_files: ManifestFiles = field(init=False)

    def __post_init__(self) -> None:
        if self.table_files is None:
            self.table_files = TableFiles(self.root / "tables")
        self.manifest_files = ManifestFiles(self.root / "cache" / "manifests")

    @property
    def engine(self) -> Engine:
        return self.catalog.engine

    @classmethod
    def open(cls, root: str | Path | None = None, *, url: str | None = None, create: bool = True,
             packs: str | Path | None = None, storage_options: Mapping[str, Any] | None = None,
             packs_cache: str | Path | None = None) -> Backend:  # fmt: skip
        """Open (and by default create) the storage of a zoo; see :meth:`zoo.Zoo.open`."""
        root = Path(root).expanduser() if root is not None else default_root()
        given = packs if packs is not None else settings.packs_url()
        opts = dict(storage_options) if storage_options is not None else settings.storage_options()
        cache = packs_cache if packs_cache is not None else settings.packs_cache()
        store = None
        if given is not None and is_remote(given):  # unreachable or refused: fail before creating anything
            store = _object_store(str(given), opts, cache)
        if root.exists() and not root.is_dir():
            raise NotFoundError(f"zoo root {root} exists but is not a folder; give a folder path")
        if not root.exists():
            if not create:
                raise NotFoundError(f"no zoo at {root}; create one with `weightzoo demo` or Zoo.open(create=True)")
            root.mkdir(parents=True, exist_ok=True)
        if url is None:
            db = root / "catalog.db"
            if not db.exists() and not create:
                raise NotFoundError(f"no catalog at {db}; create one with Zoo.open({str(root)!r})")
            url = f"sqlite:///{db}"
        engine = make_engine(url)
        try:
            migrate(engine)
        except Exception as e:
            engine.dispose()
            if isinstance(e, ZooError) and isinstance(e, OSError):  # a StorageError: disk full / unwritable
                raise
            if is_disk_error(e):  # e.g. the migration lock file on a full disk
                raise storage_error(e, root) from e
            raise ZooError(f"cannot open the catalog at {url}: {e}") from e
        catalog = Catalog(engine, root)
        try:
            location = _packs_location(catalog, root, given)
            if location is None:
                (root / "packs").mkdir(exist_ok=True)
                return cls(root, url, catalog, PackStore(root / "packs"))
            if is_remote(location):
                store = store if store is not None and store.url == location else _object_store(location, opts, cache)
                return cls(root, url, catalog, store, ObjectTableFiles(store.url, store.fs, store.prefix))
            folder = Path(location)  # another folder (e.g. a shared file system): packs in it, tables beside
            folder.mkdir(parents=True, exist_ok=True)
            return cls(root, url, catalog, PackStore(folder), TableFiles(folder / "tables"))
        except BaseException:
            engine.dispose()
            raise

    def close(self) -> None:
        self.packs.close()
        self.engine.dispose()


def _normalise(root: Path, packs: str | Path | None) -> str | None:
    """The pack location as recorded: a URL without a trailing slash, an absolute folder, or None for the
    default ``<root>/packs``."""
    if packs is None:
        return None
    if is_remote(packs):
        return str(packs).rstrip("/")
    text = str(packs)
    if text.startswith("file://"):
        text = text[len("file://") :]
    folder = Path(text).expanduser().resolve()
    return None if folder == (root / "packs").resolve() else str(folder)


def _packs_location(catalog: Catalog, root: Path, given: str | Path | None) -> str | None:
    """Where this zoo's packs are: as recorded in its catalog; a location given for a zoo with no pack yet
    is recorded. A location that differs from the recorded one is refused."""
    want = _normalise(root, given)
    with catalog.engine.connect() as c:
        recorded = c.execute(select(S.CatalogState.packs_url).where(S.CatalogState.id == 1)).scalar_one()
        n_packs = int(c.execute(select(func.count()).select_from(S.Pack)).scalar_one())
    if given is None or want == recorded:
        return recorded
    here = recorded or str(root / "packs")
    if recorded is not None or n_packs:
        raise ConfigError(f"this zoo's packs live at {here} ({n_packs} packs); it cannot switch to {want or root / 'packs'}. "
                          "Open it without packs=/--packs (the catalog records where they are), or copy the zoo "
                          "with `weightzoo export`/`ingest` into a new one")  # fmt: skip
    with catalog.write() as conn:
        conn.execute(update(S.CatalogState).where(S.CatalogState.id == 1).values(packs_url=want))
    return want


def _object_store(location: str, opts: Mapping[str, Any], cache: str | Path | None) -> ObjectPackStore:
    fs, prefix = filesystem(location, opts)
    store = ObjectPackStore(location, fs, prefix, cache_dir=cache)
    store.check()
    return store
