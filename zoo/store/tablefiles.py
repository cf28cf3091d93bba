"""The folder of derived-table files, ``<root>/tables/``: immutable Parquet files written atomically
(temp file in ``tables/.tmp/``, fsync, rename). The catalog's ``derived_tables`` rows name them;
:mod:`zoo.query.tables` owns what a derived table is."""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from zoo.errors import IntegrityError
from zoo.store.fsutil import atomic_file
from zoo.store.packs import LocalFiles

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = ["TABLE_SUFFIX", "TableFiles"]

TABLE_SUFFIX = ".parquet"
_FILE_RE = re.compile(r"^[a-z][a-z0-9_]{0,62}\.[0-9a-f]{16}\.parquet$")


class TableFiles(LocalFiles):
    """The folder of derived-table files, ``<root>/tables/`` (temp files in ``tables/.tmp/``)."""

    def __init__(self, directory: str | Path) -> None:
        self.dir = Path(directory)
        self.tmp_dir = self.dir / ".tmp"

    def path(self, file: str) -> Path:
        """The path of a file named by the catalog (refusing any name that could leave the folder)."""
        if not isinstance(file, str) or not _FILE_RE.match(file):
            raise IntegrityError(f"invalid table file name {file!r} in the catalog; run `weightzoo verify`")
        return self.dir / file

    def list_files(self) -> dict[str, Path]:
        if not self.dir.is_dir():
            return {}
        return {p.name: p for p in self.dir.glob(f"*{TABLE_SUFFIX}")}

    def exists(self, file: str) -> bool:
        return self.path(file).exists()

    def num_rows(self, file: str, *, full: bool) -> int:
        """A file's row count: read in full (``full``, every page decoded) or from its footer.
        ``FileNotFoundError`` when it is gone; ``OSError``/``ArrowException`` when it is corrupt."""
        import pyarrow.parquet as pq

        p = self.path(file)
        return pq.read_table(p).num_rows if full else pq.read_metadata(p).num_rows

    def write(self, name: str, table: pa.Table) -> tuple[str, int]:
        """Write ``table`` as a new Parquet file for table ``name``, atomically: ``(file name, size)``."""
        import pyarrow.parquet as pq

        file = f"{name}.{uuid.uuid4().hex[:16]}{TABLE_SUFFIX}"
        final = self.path(file)
        tmp = self.tmp_dir / f"{file}.part"
        with atomic_file(final, tmp, what=f"table file {file}") as f:
            pq.write_table(table, f)
        return file, final.stat().st_size

    def read(self, files: Sequence[str], schema: pa.Schema) -> pa.Table:
        """The rows of a table: its files concatenated, cast to ``schema`` (``FileNotFoundError`` when
        one is gone, :class:`IntegrityError` when one is corrupt or does not match)."""
        import pyarrow as pa

        parts = []
        for f in files:
            try:
                parts.append(self.read_one(f))
            except FileNotFoundError:
                raise
            except (OSError, pa.ArrowException) as e:
                raise IntegrityError(f"table file {f} is corrupt ({e}); run `weightzoo verify`") from e
        if not parts:
            return schema.empty_table()
        try:
            return pa.concat_tables([p.select(schema.names).cast(schema) for p in parts])
        except (KeyError, pa.ArrowException) as e:
            raise IntegrityError(f"table files {list(files)} do not match their catalog schema ({e})") from e

    def read_one(self, file: str) -> pa.Table:
        """One file's rows (memory-mapped)."""
        import pyarrow.parquet as pq

        return pq.read_table(self.path(file), memory_map=True)

    def delete(self, file: str) -> None:
        try:
            self.path(file).unlink(missing_ok=True)
        except OSError:  # left for gc
            pass
