"""Catalog reads: architectures, populations, model records, metrics, hyperparameters, tags and
the store's counts. (Tensors are read by :mod:`zoo.store.tensors`, lineage by :mod:`zoo.store.lineage`.)"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import pandas as pd
from sqlalchemy import func, select

from zoo.errors import NotFoundError
from zoo.names import encodable, safe_repr
from zoo.store import schema as S
from zoo.store.records import ArchitectureInfo, ModelRecord, PopulationInfo
from zoo.store.rows import chunks

if TYPE_CHECKING:
    from zoo.store.backend import Backend

__all__ = ["architecture", "architectures", "hparams", "metrics", "model_id", "population_info", "populations", "records",
           "summary", "tags"]  # fmt: skip


def architecture(b: Backend, key: int | str) -> ArchitectureInfo:
    """An architecture by id or name."""
    if isinstance(key, str) and not encodable(key):
        raise NotFoundError(f"no architecture {safe_repr(key)}: the name is not valid UTF-8 text")
    col = S.Architecture.id if isinstance(key, int) else S.Architecture.name
    with b.engine.connect() as c:
        row = c.execute(select(S.Architecture).where(col == key)).first()
    if row is None:
        raise NotFoundError(f"no architecture {key!r}; list them with `weightzoo ls --architectures`")
    return ArchitectureInfo(row.id, row.name, row.family, json.loads(row.config))


def architectures(b: Backend) -> list[ArchitectureInfo]:
    """Every stored architecture, by id."""
    with b.engine.connect() as c:
        rows = c.execute(select(S.Architecture).order_by(S.Architecture.id)).all()
    return [ArchitectureInfo(r.id, r.name, r.family, json.loads(r.config)) for r in rows]


def populations(b: Backend) -> list[PopulationInfo]:
    """All populations with their model counts."""
    counts = select(S.Model.population_id, func.count().label("n")).group_by(S.Model.population_id).subquery()
    q = (
        select(S.Population, S.Architecture.name.label("arch"), func.coalesce(counts.c.n, 0).label("n"))
        .outerjoin(S.Architecture, S.Architecture.id == S.Population.architecture_id)
        .outerjoin(counts, counts.c.population_id == S.Population.id)
        .order_by(S.Population.id)
    )
    with b.engine.connect() as c:
        rows = c.execute(q).all()
    return [PopulationInfo(r.id, r.name, r.arch, r.description, int(r.n)) for r in rows]


def population_info(b: Backend, name: str) -> PopulationInfo:
    """One population with its model count (:class:`NotFoundError` with a hint if there is none)."""
    for p in populations(b):
        if p.name == name:
            return p
    raise NotFoundError(f"no population {name!r}; list them with `weightzoo ls`")


def model_id(b: Backend, key: int | str) -> int:
    """The id of a model given by id or unique name (:class:`NotFoundError` with a hint if none)."""
    with b.engine.connect() as conn:
        return b.catalog.model_id(conn, key)


def records(b: Backend, ids: Sequence[int], owner: Any = None) -> list[ModelRecord]:
    """Records for many model ids, in the given order (:class:`NotFoundError` naming any unknown id);
    ``owner`` (the :class:`zoo.Zoo`) backs their lazy accessors (``record.state_dict()``, ...)."""
    q = select(S.Model, S.Population.name.label("pop")).outerjoin(S.Population, S.Population.id == S.Model.population_id)
    out: dict[int, ModelRecord] = {}
    with b.engine.connect() as c:
        for chunk in chunks(list(ids)):
            for row in c.execute(q.where(S.Model.id.in_(chunk))):
                arch = b.catalog.arch(c, row.architecture_id)
                out[row.id] = ModelRecord(
                    id=row.id, name=row.name, population=row.pop, architecture=arch[0] if arch else None,
                    arch_config=arch[1] if arch else None, run=row.run, step=row.step, op=row.op,
                    source=row.source, n_params=row.n_params, nbytes=row.nbytes, created_at=row.created_at, zoo=owner,
                )  # fmt: skip
    missing = [i for i in dict.fromkeys(ids) if i not in out]
    if missing:
        raise NotFoundError(f"no model(s) {missing[:5]} in the zoo at {b.root}; find ids with `weightzoo ls`")
    return [out[i] for i in ids]


def metrics(b: Backend, model: int | str | None = None) -> pd.DataFrame:
    """Metrics in long form (model_id, name, split, step, value), for one model or all."""
    q = select(S.Metric.model_id, S.Metric.name, S.Metric.split, S.Metric.step, S.Metric.value).order_by(S.Metric.id)
    with b.engine.connect() as conn:
        if model is not None:
            q = q.where(S.Metric.model_id == b.catalog.model_id(conn, model))
        rows = conn.execute(q).all()
    return pd.DataFrame(rows, columns=["model_id", "name", "split", "step", "value"])


def hparams(b: Backend, model: int | str) -> dict[str, Any]:
    """A model's hyperparameters ``{name: value}``."""
    with b.engine.connect() as conn:
        mid = b.catalog.model_id(conn, model)
        rows = conn.execute(select(S.Hyperparameter.name, S.Hyperparameter.value).where(S.Hyperparameter.model_id == mid)).all()
    return {r.name: json.loads(r.value) for r in rows}


def tags(b: Backend, model: int | str) -> list[str]:
    """A model's tags, sorted."""
    with b.engine.connect() as conn:
        mid = b.catalog.model_id(conn, model)
        return sorted(conn.execute(select(S.Tag.tag).where(S.Tag.model_id == mid)).scalars())


def summary(b: Backend) -> dict[str, Any]:
    """Counts and sizes: models, populations, blobs, packs, logical vs stored bytes (dedup ratio)."""
    with b.engine.connect() as c:
        n_models = c.execute(select(func.count()).select_from(S.Model)).scalar_one()
        n_pops = c.execute(select(func.count()).select_from(S.Population)).scalar_one()
        logical = c.execute(select(func.coalesce(func.sum(S.Model.nbytes), 0))).scalar_one()
        n_blobs = c.execute(select(func.count()).select_from(S.Blob)).scalar_one()
        stored = c.execute(select(func.coalesce(func.sum(S.Blob.nbytes), 0))).scalar_one()
        n_packs = c.execute(select(func.count()).select_from(S.Pack)).scalar_one()
        on_disk = c.execute(select(func.coalesce(func.sum(S.Pack.nbytes), 0))).scalar_one()
    return {
        "root": str(b.root), "url": b.url, "models": int(n_models), "populations": int(n_pops),
        "blobs": int(n_blobs), "packs": int(n_packs), "logical_bytes": int(logical), "stored_bytes": int(stored),
        "pack_bytes": int(on_disk), "dedup_ratio": (logical / stored) if stored else 1.0,
    }  # fmt: skip
