"""Population manifests on disk: a cache that makes the first ``stack()`` in a new process cheap.

A population's manifest (for every model and tensor: model id, tensor name, position, pack, offset,
dtype and shape) is what ``stack()`` reads from the catalog before it copies any bytes; at 10,000
models that is 40,000 joined rows, slower than copying the 96 MB they describe. The first stack that
reads a population's manifest from the catalog also saves it under ``<root>/cache/manifests/`` as a
NumPy ``.npz`` (no pickles; loaded with ``allow_pickle=False``), written atomically; later processes
load it in milliseconds.

A file is named by its :class:`PopulationKey`, everything that can change a population's manifest:
the catalog's ``rewrite_version`` (bumped by every update or delete: removed models, cut lineage,
...), its ``layout_version`` (bumped when gc or repack moves blobs), and the population's model count
and highest model id (appends; a model's tensors never change after it is written). A file whose key
is not current is never read, and ``gc`` deletes it. A population that only grew since its file was
saved (same rewrite and layout versions, more models, a higher highest id) gets a new file made from
the old one plus the catalog rows of the models added since (``TensorReader._grown_manifest``), so the
first stack after a write reads those rows only. The cache is derived data: deleting the folder
is always safe, a corrupt file is ignored and removed, and a read-only zoo simply goes without.
"""

from __future__ import annotations

import contextlib
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from zoo.store.fsutil import atomic_file

__all__ = ["Manifest", "ManifestFiles", "PopulationKey"]

_FILE_RE = re.compile(r"^pop(\d+)-r(\d+)-l(\d+)-n(\d+)-m(\d+)\.npz$")


@dataclass(frozen=True)
class PopulationKey:
    """What identifies one version of a population's manifest."""

    population_id: int
    rewrite_version: int
    layout_version: int
    n_models: int
    max_model_id: int

    @property
    def file_name(self) -> str:
        return (f"pop{self.population_id}-r{self.rewrite_version}-l{self.layout_version}-n{self.n_models}"
                f"-m{self.max_model_id}.npz")  # fmt: skip

    @classmethod
    def from_file_name(cls, name: str) -> PopulationKey | None:
        m = _FILE_RE.match(name)
        return cls(*(int(g) for g in m.groups())) if m else None


@dataclass
class Manifest:
    """A manifest in column form, one row per (model, tensor); codes index the three lists.

    Shapes:
        model_id, name_code, position, pack_code, offset, kind_code: ``[rows]`` int64.
    """

    model_id: np.ndarray
    name_code: np.ndarray
    position: np.ndarray
    pack_code: np.ndarray
    offset: np.ndarray
    kind_code: np.ndarray
    names: list[str]
    packs: list[str]
    kinds: list[tuple[str, str]]  # (dtype, shape JSON)

    _COLUMNS = ("model_id", "name_code", "position", "pack_code", "offset", "kind_code")

    def check(self) -> Manifest:
        """Self-consistent columns and codes (a file that is not is refused, never used)."""
        cols = [getattr(self, c) for c in self._COLUMNS]
        n = cols[0].shape[0]
        if any(c.ndim != 1 or c.shape[0] != n or c.dtype != np.int64 for c in cols):
            raise ValueError("manifest columns differ in length or type")
        for codes, table in ((self.name_code, self.names), (self.pack_code, self.packs), (self.kind_code, self.kinds)):
            if n and (int(codes.min()) < 0 or int(codes.max()) >= len(table)):
                raise ValueError("manifest code out of range")
        if n and int(self.offset.min()) < 0:
            raise ValueError("negative offset in a manifest")
        return self


class ManifestFiles:
    """The folder of cached population manifests, ``<root>/cache/manifests/``.

    Populations under ``min_models`` models are not cached (their manifest reads from the catalog in a
    few milliseconds, and a small population that grows one model at a time would rewrite its file at
    every stack).
    """

    min_models: int = 256

    def __init__(self, directory: str | Path) -> None:
        self.dir = Path(directory)

    def load(self, key: PopulationKey) -> Manifest | None:
        """The manifest saved under ``key``, or None (absent, unreadable or inconsistent: then removed)."""
        path = self.dir / key.file_name
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as f:
                kinds = [(str(d), str(s)) for d, s in zip(f["kind_dtypes"], f["kind_shapes"], strict=True)]
                return Manifest(*(f[c].astype(np.int64, copy=False) for c in Manifest._COLUMNS),
                                names=[str(x) for x in f["names"]], packs=[str(x) for x in f["packs"]],
                                kinds=kinds).check()  # fmt: skip
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):  # corrupt or foreign: drop it
            with contextlib.suppress(OSError):
                path.unlink()
            return None

    def save(self, key: PopulationKey, m: Manifest) -> None:
        """Save ``m`` under ``key`` atomically, removing the population's older files; best effort (a
        read-only or full disk skips the cache). Populations under ``min_models`` are not saved."""
        if key.n_models < self.min_models:
            return
        final = self.dir / key.file_name
        arrays = {c: getattr(m, c) for c in Manifest._COLUMNS}
        arrays.update(names=np.asarray(m.names, dtype=str), packs=np.asarray(m.packs, dtype=str),
                      kind_dtypes=np.asarray([k[0] for k in m.kinds], dtype=str),
                      kind_shapes=np.asarray([k[1] for k in m.kinds], dtype=str))  # fmt: skip
        with contextlib.suppress(OSError):  # StorageError is an OSError too
            self.dir.mkdir(parents=True, exist_ok=True)
            with atomic_file(final, self.dir / f".{key.file_name}.part", what="population manifest") as f:
                np.savez(f, **arrays)
            for p, k in self.files().items():
                if k is not None and k.population_id == key.population_id and k != key:
                    p.unlink(missing_ok=True)

    def files(self) -> dict[Path, PopulationKey | None]:
        """Every file in the folder with its key (None: not a manifest file)."""
        if not self.dir.is_dir():
            return {}
        return {p: PopulationKey.from_file_name(p.name) for p in self.dir.iterdir()}

    def remove_stale(self, current: dict[int, PopulationKey], *, dry_run: bool = False) -> list[Path]:
        """Delete every file that is not the current manifest of a population in ``current``."""
        gone = [p for p, k in self.files().items() if k is None or current.get(k.population_id) != k]
        if not dry_run:
            for p in gone:
                with contextlib.suppress(OSError):
                    p.unlink()
        return gone
