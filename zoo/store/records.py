"""Plain records returned by the store API (dataclasses; no database handles inside but the zoo)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    import pandas as pd
    from torch import nn

    from zoo.facade import Zoo


@dataclass
class NewModel:
    """One model to write with :meth:`Zoo.add_many` (the arguments of :meth:`Zoo.add`)."""

    state_dict: Mapping[str, torch.Tensor]
    arch: Mapping[str, Any] | str | None = None
    population: str | None = None
    name: str | None = None
    parents: Sequence[int | str] | Mapping[int | str, str] = ()
    op: str = "add"
    params: Mapping[str, Any] | None = None
    metrics: Mapping[str, float] | Sequence[tuple] | None = None
    hparams: Mapping[str, Any] | None = None
    tags: Sequence[str] = ()
    run: str | None = None
    step: int | None = None
    source: str | None = None


@dataclass(frozen=True)
class ArchitectureInfo:
    id: int
    name: str
    family: str
    config: dict[str, Any]


@dataclass(frozen=True)
class PopulationInfo:
    id: int
    name: str
    architecture: str | None
    description: str
    n_models: int


@dataclass(frozen=True)
class Edge:
    """A lineage edge: ``parent -> child`` made by ``op`` with ``params``."""

    child: int
    parent: int
    role: str
    op: str
    params: dict[str, Any]
    created_at: datetime | None = None


@dataclass
class ModelRecord:
    """A stored model. Tensors are loaded on demand (``state_dict()``, ``module()``)."""

    id: int
    name: str | None
    population: str | None
    architecture: str | None
    arch_config: dict[str, Any] | None
    run: str | None
    step: int | None
    op: str
    source: str | None
    n_params: int
    nbytes: int
    created_at: datetime | None
    zoo: Zoo | None = field(default=None, repr=False, compare=False)

    def _z(self) -> Zoo:
        if self.zoo is None:
            raise RuntimeError("this record is detached from its zoo")
        return self.zoo

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The model's tensors, in their stored order (copy-on-write views of the pack)."""
        return self._z().state_dict(self.id)

    def module(self) -> nn.Module:
        """The model rebuilt as an ``nn.Module`` with its weights (needs a buildable architecture)."""
        from zoo.models.architectures import instantiate

        if self.arch_config is None:
            from zoo.errors import ConfigError

            raise ConfigError(f"model {self.id} has no architecture config; it can be loaded as a state dict only")
        return instantiate(self.arch_config, self.state_dict())

    def metrics(self) -> pd.DataFrame:
        """Metrics in long form: name, split, step, value."""
        return self._z().metrics(self.id)

    def metric(self, name: str, split: str = "") -> float | None:
        df = self.metrics()
        df = df[(df["name"] == name) & (df["split"] == split)]
        return None if df.empty else float(df["value"].iloc[-1])

    def hparams(self) -> dict[str, Any]:
        return self._z().hparams(self.id)

    def tags(self) -> list[str]:
        return self._z().tags(self.id)

    def parents(self) -> list[Edge]:
        return self._z().lineage(self.id, direction="up", max_depth=1)

    def children(self) -> list[Edge]:
        return self._z().lineage(self.id, direction="down", max_depth=1)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id, "name": self.name, "population": self.population, "architecture": self.architecture,
            "run": self.run, "step": self.step, "op": self.op, "source": self.source, "n_params": self.n_params,
            "nbytes": self.nbytes, "created_at": self.created_at.isoformat() if self.created_at else None,
        }  # fmt: skip


@dataclass(frozen=True)
class TableInfo:
    """A derived table (learner outputs written with :meth:`Zoo.write_table`).

    ``columns`` maps each column, in order, to its SQL (DuckDB) type: ``BIGINT``, ``DOUBLE``,
    ``FLOAT``, ``BOOLEAN``, ``VARCHAR``, ``TIMESTAMP``, ``TIMESTAMP WITH TIME ZONE``, or a vector
    type such as ``FLOAT[16]``. ``produced_by`` is the id of the model (e.g. the stored encoder) that
    wrote it, or None. ``n_files`` is the number of Parquet files holding its rows (one per append).
    """

    name: str
    n_rows: int
    columns: dict[str, str]
    description: str
    produced_by: int | None
    nbytes: int
    n_files: int
    created_at: datetime | None
    updated_at: datetime | None

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        for k in ("created_at", "updated_at"):
            d[k] = d[k].isoformat() if d[k] else None
        return d


@dataclass
class VerifyReport:
    """What ``Zoo.verify`` found. ``ok`` is False when data is missing or corrupt."""

    n_packs: int = 0
    n_blobs: int = 0
    n_models: int = 0
    missing_packs: list[str] = field(default_factory=list)
    corrupt_blobs: list[str] = field(default_factory=list)
    missing_blobs: list[str] = field(default_factory=list)
    orphan_packs: list[str] = field(default_factory=list)
    temp_files: list[str] = field(default_factory=list)
    unreferenced_blobs: int = 0
    affected_models: list[int] = field(default_factory=list)
    n_tables: int = 0
    missing_table_files: list[str] = field(default_factory=list)
    corrupt_table_files: list[str] = field(default_factory=list)
    orphan_table_files: list[str] = field(default_factory=list)
    affected_tables: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (
            self.missing_packs or self.corrupt_blobs or self.missing_blobs or self.missing_table_files
            or self.corrupt_table_files
        )  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["ok"] = self.ok
        return d

    def __str__(self) -> str:
        lines = [
            f"{'OK' if self.ok else 'PROBLEMS FOUND'}: {self.n_models} models, {self.n_blobs} blobs in {self.n_packs} packs"
            + (f", {self.n_tables} derived tables" if self.n_tables else ""),
        ]
        for label, items in [
            ("missing pack files", self.missing_packs),
            ("corrupt blobs (hash mismatch)", self.corrupt_blobs),
            ("blobs missing from their pack", self.missing_blobs),
            ("orphan packs (not in the catalog; `weightzoo gc` removes them)", self.orphan_packs),
            ("unfinished temp files (`weightzoo gc` removes them)", self.temp_files),
            ("missing table files", self.missing_table_files),
            ("corrupt table files", self.corrupt_table_files),
            ("orphan table files (not in the catalog; `weightzoo gc` removes them)", self.orphan_table_files),
        ]:
            if items:
                lines.append(f"  {label}: {len(items)}: {', '.join(map(str, items[:5]))}{' ...' if len(items) > 5 else ''}")
        if self.unreferenced_blobs:
            lines.append(f"  unreferenced blobs (garbage, `weightzoo gc` removes them): {self.unreferenced_blobs}")
        if self.affected_models:
            lines.append(f"  models affected: {json.dumps(self.affected_models[:20])}")
        if self.affected_tables:
            lines.append(f"  derived tables affected: {', '.join(self.affected_tables[:20])}")
        return "\n".join(lines)


@dataclass
class GcReport:
    """What ``Zoo.gc`` removed (or would remove, with ``dry_run``)."""

    blobs_removed: int = 0
    packs_removed: list[str] = field(default_factory=list)
    packs_compacted: list[str] = field(default_factory=list)
    orphans_removed: list[str] = field(default_factory=list)
    temp_removed: list[str] = field(default_factory=list)
    table_files_removed: list[str] = field(default_factory=list)
    cache_files_removed: list[str] = field(default_factory=list)  # stale population manifests (a cache)
    bytes_freed: int = 0
    dry_run: bool = False

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def __str__(self) -> str:
        verb = "would remove" if self.dry_run else "removed"
        return (
            f"gc {verb}: {self.blobs_removed} unreferenced blobs, {len(self.packs_removed)} empty packs, "
            f"{len(self.orphan_packs_str())} orphan packs, {len(self.table_files_removed)} orphan table files, "
            f"{len(self.temp_removed)} temp files, {len(self.cache_files_removed)} stale cache files; "
            f"compacted {len(self.packs_compacted)} packs; {self.bytes_freed / 1e6:.2f} MB freed"
        )

    def orphan_packs_str(self) -> list[str]:
        return self.orphans_removed
