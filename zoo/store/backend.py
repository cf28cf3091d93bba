"""The parts of one opened zoo: its root folder, catalog, tensor packs and table files.

:class:`Backend` is what the store's paths work on (writes, reads, lineage, maintenance, derived
tables, SQL); :class:`zoo.Zoo` composes one and adds the user-facing API. Nothing here knows the
facade::

    b = Backend.open("/data/zoo")               # or url="postgresql://..."
    with b.catalog.write() as conn: ...         # the write lock + generation
    b.packs.write({tensor_id: tensor})          # an immutable pack
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import Engine

from zoo.errors import NotFoundError, ZooError
from zoo.settings import default_root
from zoo.store.catalog import Catalog
from zoo.store.db import make_engine, migrate
from zoo.store.diskerrors import is_disk_error, storage_error
from zoo.store.manifests import ManifestFiles
from zoo.store.packs import PackStore
from zoo.store.tablefiles import TableFiles

__all__ = ["Backend"]


@dataclass(eq=False)
class Backend:
    """One zoo's storage: ``root`` (packs, table files, the SQLite catalog by default), the catalog at
    ``url``, the pack folder, the derived-table folder and the cache of population manifests."""

    root: Path
    url: str
    catalog: Catalog
    packs: PackStore
    table_files: TableFiles = field(init=False)
    manifest_files: ManifestFiles = field(init=False)

    def __post_init__(self) -> None:
        self.table_files = TableFiles(self.root / "tables")
        self.manifest_files = ManifestFiles(self.root / "cache" / "manifests")

    @property
    def engine(self) -> Engine:
        return self.catalog.engine

    @classmethod
    def open(cls, root: str | Path | None = None, *, url: str | None = None, create: bool = True) -> Backend:
        """Open (and by default create) the storage of a zoo; see :meth:`zoo.Zoo.open`."""
        root = Path(root).expanduser() if root is not None else default_root()
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
        (root / "packs").mkdir(exist_ok=True)
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
        return cls(root, url, Catalog(engine, root), PackStore(root / "packs"))

    def close(self) -> None:
        self.packs.close()
        self.engine.dispose()
