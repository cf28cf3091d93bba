"""The one write path of the store: models in (``add_many``), architectures and populations created on
first use, metrics, tags, and removal.

:func:`add_many` validates everything first (names, JSON, architectures, shapes), hashes the
tensors, takes the catalog's write lock, writes the tensors not stored yet as one new pack (temp file,
fsync, rename), then records the pack, blobs, models, manifests, metrics, hyperparameters, lineage and
tags in one transaction. If anything fails the transaction rolls back and the new pack is removed.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from sqlalchemy import Connection, delete, insert, select, update

from zoo.errors import ConfigError, DuplicateError, MismatchError, ZooError
from zoo.jsonlimits import check_value
from zoo.models import architectures as archs
from zoo.names import check_name
from zoo.progress import progress_bar
from zoo.store import packs as packs_mod
from zoo.store import schema as S

if TYPE_CHECKING:
    from zoo.store.backend import Backend
    from zoo.store.packs import BlobLocation
from zoo.store.hashing import tensor_id
from zoo.store.read import architecture
from zoo.store.records import NewModel
from zoo.store.rows import (
    arch_mismatch_message,
    blob_row,
    check_entity_name,
    check_tag,
    chunks,
    hparam_row,
    metric_rows,
    raw_config,
)

__all__ = ["add_many", "add_metrics", "add_metrics_many", "create_population", "ensure_arch", "register_architecture", "remove", "tag",
           "untag"]  # fmt: skip


class _Prepared:
    __slots__ = ("item", "names", "ids", "tensors", "config", "chash", "n_params", "nbytes", "model_id",
                 "hp_rows", "metric_rows", "tag_list", "params_json")


def ensure_arch(conn: Connection, cfg: dict[str, Any], name: str | None = None) -> int:
    """The id of the architecture row of ``cfg`` (inserted when new; ``name`` must match an existing one)."""
    h = archs.config_hash(cfg)
    row = conn.execute(select(S.Architecture.id, S.Architecture.name).where(S.Architecture.config_hash == h)).first()
    if row is not None:
        if name is not None and name != row.name:
            raise DuplicateError(f"this architecture is already registered as {row.name!r}; use that name")
        return int(row.id)
    fam = cfg["family"]
    if name is None:
        name = f"{fam}-{h[:10]}"
    elif conn.execute(select(S.Architecture.id).where(S.Architecture.name == name)).first() is not None:
        raise DuplicateError(f"architecture name {name!r} is taken by a different config; pick another name")
    canon = json.dumps(cfg, sort_keys=True, separators=(",", ":"))
    return int(
        conn.execute(
            insert(S.Architecture).values(name=name, family=fam, config=canon, config_hash=h).returning(S.Architecture.id)
        ).scalar_one()
    )


def register_architecture(b: Backend, config: Mapping[str, Any], name: str | None = None) -> int:
    """Store an architecture config; its id (idempotent: the same config returns the existing row)."""
    if name is not None:
        check_name(name, "architecture", allow_digits=False)
    cfg = archs.normalize_config(config)
    with b.catalog.write() as conn:
        return ensure_arch(conn, cfg, name)


def create_population(
    b: Backend, name: str, arch: Mapping[str, Any] | str | None = None, description: str = "", *, exist_ok: bool = False
) -> None:
    """Create a named population, optionally bound to an architecture (config or name)."""
    check_entity_name(name, "population")
    with b.catalog.write() as conn:
        row = conn.execute(select(S.Population.id).where(S.Population.name == name)).first()
        if row is not None:
            if not exist_ok:
                raise DuplicateError(f"population {name!r} already exists; pick another name or use exist_ok=True")
        else:
            aid = None
            if isinstance(arch, str):
                aid = architecture(b, arch).id
            elif arch is not None:
                aid = ensure_arch(conn, archs.normalize_config(arch))
            conn.execute(insert(S.Population).values(name=name, architecture_id=aid, description=description))


def add_many(b: Backend, items: Iterable[NewModel], *, progress: bool = False) -> list[int]:
    """Store many models in one pack and one transaction (all or nothing); their new ids, in order."""
    items = list(items)
    if not items:
        return []
    with b.engine.connect() as conn:
        pops = {
            r.name: (r.id, r.architecture_id)
            for r in conn.execute(select(S.Population.name, S.Population.id, S.Population.architecture_id))
        }
        prepared = [
            _prepare(b, conn, it, pops)
            for it in progress_bar(items, desc="hashing", unit="model", disable=not progress, leave=False)
        ]
        # the tensors not stored yet, written as one pack *before* the write lock is taken: the upload (slow
        # on an object store) overlaps other writers' commits. Checked again under the lock (_commit).
        unique = _unique_tensors(prepared)
        stored = _stored(conn, list(unique))
    written: list[str] = []  # ids of packs written by this call, known as soon as they are on disk
    discard: list[str] = []
    new = {tid: t for tid, t in unique.items() if tid not in stored}
    try:
        pack = None
        if new:
            pack = b.packs.write(new)
            written.append(pack[0])
        with b.catalog.write() as conn:
            _commit(b, conn, prepared, unique, pack, written, discard)
            packs_mod.fault_hook("catalog.before_commit")
    except BaseException:
        for pack_id in written:
            b.packs.delete(pack_id)
        raise
    for pack_id in discard:  # every tensor in it was committed by another writer meanwhile: never referenced
        b.packs.delete(pack_id)
    packs_mod.fault_hook("catalog.committed")
    return [p.model_id for p in prepared]


def _unique_tensors(prepared: list[_Prepared]) -> dict[str, torch.Tensor]:
    """``{tensor id: tensor}`` of a write, name-major (every model's first tensor, then every model's second,
    ...) so that a population written together stacks as one contiguous slice per tensor name."""
    unique: dict[str, torch.Tensor] = {}
    for j in range(max(len(p.ids) for p in prepared)):
        for p in prepared:
            if j < len(p.ids):
                unique.setdefault(p.ids[j], p.tensors[p.names[j]])
    return unique


def _stored(conn: Connection, tensor_ids: list[str]) -> set[str]:
    """Which of these tensors the catalog already has."""
    out: set[str] = set()
    for chunk in chunks(tensor_ids):
        out.update(conn.execute(select(S.Blob.id).where(S.Blob.id.in_(chunk))).scalars())
    return out


def _prepare(b: Backend, conn: Connection, it: NewModel, pops: dict[str, tuple[int, int | None]]) -> _Prepared:
    if not isinstance(it.state_dict, Mapping) or not it.state_dict:
        raise MismatchError("a model needs a non-empty state dict {name: tensor}")
    tensors: dict[str, torch.Tensor] = {}
    for k, v in it.state_dict.items():
        check_name(k, "tensor", max_len=1000)
        if not isinstance(v, torch.Tensor):
            raise MismatchError(f"state dict entry {k!r} is a {type(v).__name__}, not a tensor")
        if v.is_sparse or v.layout != torch.strided:
            raise MismatchError(f"tensor {k!r} is sparse; store a dense tensor")
        tensors[k] = v.detach().cpu().contiguous()
    if it.name is not None:
        check_entity_name(it.name, "model")
    if it.population is not None:
        check_entity_name(it.population, "population")
    # architecture
    pop_arch = pops.get(it.population, (None, None))[1] if it.population else None
    if isinstance(it.arch, str):
        cfg = architecture(b, it.arch).config
    elif it.arch is not None:
        cfg = archs.normalize_config(it.arch)
    elif pop_arch is not None:
        cfg = b.catalog.arch(conn, pop_arch)[1]
        if cfg.get("family") == archs.RAW_FAMILY:  # compare the tensors' own signature with it
            cfg = raw_config(tensors, cfg.get("hf_config"))
    else:
        cfg = raw_config(tensors)
    if archs.can_build(cfg):
        archs.check_state_dict(cfg, tensors)
    chash = archs.config_hash(cfg)
    if pop_arch is not None:
        pname, pcfg = b.catalog.arch(conn, pop_arch)
        if archs.config_hash(pcfg) != chash:
            raise MismatchError(arch_mismatch_message(it.population, pname, pcfg, cfg))
    p = _Prepared()
    p.item, p.config, p.chash = it, cfg, chash
    # validate all metadata now, before anything is written
    if not isinstance(it.hparams or {}, Mapping):
        raise ConfigError("hparams must be a mapping {name: value}")
    p.hp_rows = [hparam_row(0, k, v) for k, v in (it.hparams or {}).items()]
    p.metric_rows = metric_rows(0, it.metrics, it.step)
    if isinstance(it.tags, str):
        raise ConfigError(f"tags must be a list of strings, not the string {it.tags!r}")
    p.tag_list = [check_tag(t) for t in dict.fromkeys(it.tags)]
    if not isinstance(it.params or {}, Mapping):
        raise ConfigError(f"params must be a mapping {{name: value}}, got {type(it.params).__name__}")
    p.params_json = check_value(dict(it.params or {}), "params")  # JSON-able, bounded in size and depth
    check_name(it.op, "lineage op", max_len=200)
    if it.run is not None:
        check_name(it.run, "run")
    par = it.parents
    for role in (par.values() if isinstance(par, Mapping) else ()):
        check_name(role, "lineage role", max_len=200)
    p.names = list(tensors)
    p.tensors = tensors
    p.ids = [tensor_id(t) for t in tensors.values()]
    p.n_params = sum(t.numel() for t in tensors.values())
    p.nbytes = sum(t.numel() * t.element_size() for t in tensors.values())
    return p


def _commit(b: Backend, conn: Connection, prepared: list[_Prepared], unique: dict[str, torch.Tensor],
            pack: tuple[str, dict[str, BlobLocation], int] | None, written: list[str], discard: list[str]) -> None:  # fmt: skip
    # architectures and populations (created on first use)
    arch_ids: dict[str, int] = {}
    for p in prepared:
        if p.chash not in arch_ids:
            arch_ids[p.chash] = ensure_arch(conn, p.config)
    pop_ids: dict[str, int] = {}
    for p in prepared:
        pname = p.item.population
        if pname is None or pname in pop_ids:
            continue
        row = conn.execute(select(S.Population.id, S.Population.architecture_id).where(S.Population.name == pname)).first()
        if row is None:
            pop_ids[pname] = int(
                conn.execute(
                    insert(S.Population).values(name=pname, architecture_id=arch_ids[p.chash], description="")
                    .returning(S.Population.id)
                ).scalar_one()
            )
        else:
            if row.architecture_id is not None and row.architecture_id != arch_ids[p.chash]:
                name, cfg = b.catalog.arch(conn, row.architecture_id)
                raise MismatchError(arch_mismatch_message(pname, name, cfg, p.config))
            if row.architecture_id is None:
                b.catalog.note_rewrite(conn)
                conn.execute(update(S.Population).where(S.Population.id == row.id).values(architecture_id=arch_ids[p.chash]))
            pop_ids[pname] = int(row.id)
    for p in prepared:
        if p.item.population is not None:
            got = arch_ids[p.chash]
            want = conn.execute(select(S.Population.architecture_id).where(S.Population.id == pop_ids[p.item.population])).scalar_one()
            if want != got:
                name, cfg = b.catalog.arch(conn, want)
                raise MismatchError(arch_mismatch_message(p.item.population, name, cfg, p.config))
    # names must be new
    names = [p.item.name for p in prepared if p.item.name is not None]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise DuplicateError(f"model name(s) {dup[:5]} appear twice in one write; names must be unique")
    for chunk in chunks(names):
        taken = conn.execute(select(S.Model.name).where(S.Model.name.in_(chunk))).scalars().all()
        if taken:
            raise DuplicateError(f"model name(s) {sorted(taken)[:5]} already exist; pick new names (or leave name=None)")
    # parents must exist
    parent_ids = _resolve_parents(b, conn, prepared)
    # blobs: under the lock the catalog's answer is exact. Rows for the tensors of our pack that are still
    # new; a tensor another writer committed meanwhile stays a dead copy in our pack (gc compacts it away);
    # one that was stored when we looked but collected by gc since is written now, in a second pack
    existing = _stored(conn, list(unique))
    in_pack = pack[1] if pack is not None else {}
    late = {tid: t for tid, t in unique.items() if tid not in existing and tid not in in_pack}
    packs = [pack] if pack is not None else []
    if late:
        packs.append(b.packs.write(late))
        written.append(packs[-1][0])
    for pack_id, locs, size in packs:
        rows = [blob_row(tid, unique[tid], loc) for tid, loc in locs.items() if tid not in existing]
        if not rows:
            discard.append(pack_id)
            continue
        conn.execute(insert(S.Pack).values(id=pack_id, nbytes=size, n_blobs=len(locs)))
        conn.execute(insert(S.Blob), rows)
    # models
    rows = [
        {
            "name": p.item.name,
            "population_id": pop_ids.get(p.item.population) if p.item.population else None,
            "architecture_id": arch_ids[p.chash],
            "run": p.item.run,
            "step": p.item.step,
            "op": p.item.op,
            "source": p.item.source,
            "n_params": p.n_params,
            "nbytes": p.nbytes,
        }
        for p in prepared
    ]
    ids = conn.execute(insert(S.Model).returning(S.Model.id, sort_by_parameter_order=True), rows).scalars().all()
    tensors, hps, mets, edges, tags = [], [], [], [], []
    for p, mid in zip(prepared, ids, strict=True):
        p.model_id = mid
        tensors += [
            {"model_id": mid, "name": n, "blob_id": t, "position": i} for i, (n, t) in enumerate(zip(p.names, p.ids, strict=True))
        ]
        hps += [{**r, "model_id": mid} for r in p.hp_rows]
        mets += [{**r, "model_id": mid} for r in p.metric_rows]
        edges += [
            {"child_id": mid, "parent_id": pid, "role": role, "op": p.item.op, "params": p.params_json}
            for pid, role in parent_ids[id(p)]
        ]
        tags += [{"model_id": mid, "tag": t} for t in p.tag_list]
    for table, rows_ in ((S.TensorEntry, tensors), (S.Hyperparameter, hps), (S.Metric, mets), (S.LineageEdge, edges), (S.Tag, tags)):
        if rows_:
            conn.execute(insert(table), rows_)


def _resolve_parents(b: Backend, conn: Connection, prepared: list[_Prepared]) -> dict[int, list[tuple[int, str]]]:
    out: dict[int, list[tuple[int, str]]] = {}
    for p in prepared:
        par = p.item.parents
        pairs = list(par.items()) if isinstance(par, Mapping) else [(x, "parent") for x in par]
        resolved = []
        for key, role in pairs:
            resolved.append((b.catalog.model_id(conn, key), str(role)))
        out[id(p)] = resolved
    return out


def add_metrics(b: Backend, model: int | str, metrics: Mapping[str, float] | Sequence[tuple], step: int | None = None) -> None:
    """Record more metrics for a stored model (e.g. after evaluating it on a new data set)."""
    with b.catalog.write() as conn:
        mid = b.catalog.model_id(conn, model)
        b.catalog.add_metrics(conn, mid, metrics, step)


def add_metrics_many(b: Backend, per_model: Iterable[tuple[int | str, Mapping[str, float] | Sequence[tuple]]],
                     step: int | None = None) -> int:  # fmt: skip
    """:func:`add_metrics` for many models in one transaction (all or nothing); returns the rows written."""
    items = list(per_model)
    with b.catalog.write() as conn:
        ids = sorted({int(m) for m, _ in items if isinstance(m, int)})
        known = {i for chunk in chunks(ids) for i in conn.execute(select(S.Model.id).where(S.Model.id.in_(chunk))).scalars()}
        pairs = [(int(m) if isinstance(m, int) and m in known else b.catalog.model_id(conn, m), metrics)
                 for m, metrics in items]  # fmt: skip
        return b.catalog.add_metrics_many(conn, pairs, step)


def tag(b: Backend, model: int | str, *tags: str) -> None:
    """Add tags to a model (tags it has already are kept once)."""
    with b.catalog.write() as conn:
        mid = b.catalog.model_id(conn, model)
        have = set(conn.execute(select(S.Tag.tag).where(S.Tag.model_id == mid)).scalars())
        new = [{"model_id": mid, "tag": check_tag(t)} for t in dict.fromkeys(tags) if t not in have]
        if new:
            conn.execute(insert(S.Tag), new)


def untag(b: Backend, model: int | str, *tags: str) -> None:
    """Remove tags from a model."""
    with b.catalog.write() as conn:
        mid = b.catalog.model_id(conn, model)
        b.catalog.note_rewrite(conn)
        conn.execute(delete(S.Tag).where(S.Tag.model_id == mid, S.Tag.tag.in_(tags)))


def remove(b: Backend, models: Iterable[int | str], *, force: bool = False) -> int:
    """Delete models from the catalog (their tensors become garbage for :meth:`gc`).

    Refuses to delete a model that has children (its lineage would be cut) unless ``force``.
    Rows of derived tables that name a removed model are kept (they are data; joins with
    ``models`` drop them), and tables it produced keep their rows with ``produced_by`` cleared.
    """
    with b.catalog.write() as conn:
        ids = [b.catalog.model_id(conn, m) for m in models]
        if not force:
            kids = conn.execute(
                select(S.LineageEdge.parent_id).where(S.LineageEdge.parent_id.in_(ids), S.LineageEdge.child_id.not_in(ids))
            ).scalars().all()
            if kids:
                raise ZooError(f"model(s) {sorted(set(kids))[:5]} have children in the zoo; pass force=True to cut their lineage")
        b.catalog.note_rewrite(conn)
        for table in (S.TensorEntry, S.Hyperparameter, S.Metric, S.Tag):
            conn.execute(delete(table).where(table.model_id.in_(ids)))
        conn.execute(update(S.DerivedTable).where(S.DerivedTable.produced_by.in_(ids)).values(produced_by=None))
        conn.execute(delete(S.LineageEdge).where(S.LineageEdge.child_id.in_(ids) | S.LineageEdge.parent_id.in_(ids)))
        conn.execute(delete(S.Model).where(S.Model.id.in_(ids)))
    return len(ids)

