"""Moving models in and out of a zoo: ingest checkpoints (files, folders, sharded, Hugging Face) and
export HF-style folders. :meth:`zoo.Zoo.ingest` and :meth:`zoo.Zoo.export` call these."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zoo.errors import ConfigError, NotFoundError
from zoo.models import architectures as archs
from zoo.progress import progress_bar
from zoo.store.records import ModelRecord, NewModel
from zoo.store.rows import raw_config

if TYPE_CHECKING:
    from zoo.facade import Zoo


def ingest(
    zoo: Zoo,
    source: str | Path,
    *,
    population: str | None = None,
    arch: Mapping[str, Any] | str | None = None,
    tags: Sequence[str] = (),
    batch_size: int = 256,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    offline: bool | None = None,
    progress: bool = False,
    follow_symlinks: bool = False,
) -> list[ModelRecord]:
    """Ingest checkpoints: a file, a folder of them, a sharded checkpoint, or a Hugging Face repo.

    A Hugging Face repo id (``org/name``) is read from the local HF cache when offline (the
    default when ``HF_HUB_OFFLINE=1``), else downloaded with huggingface_hub. Symbolic links follow
    :mod:`zoo.io.ingest`'s policy (file links must stay inside the folder, or the HF cache repo; directory
    links are skipped) unless ``follow_symlinks``; every check runs before anything is written.
    """
    from zoo.io.ingest import discover, looks_like_hf_repo_id, resolve_hf

    src = str(source)
    if looks_like_hf_repo_id(src):
        folder = resolve_hf(src, revision=revision, cache_dir=cache_dir, offline=offline)
        sources, origin = discover(folder, follow_symlinks=follow_symlinks), f"hf://{src}" + (f"@{revision}" if revision else "")
    else:
        path = Path(src).expanduser()
        if not path.exists():
            raise NotFoundError(f"no file or folder {path}; give a checkpoint file, a folder of them or an HF repo id")
        sources, origin = discover(path, follow_symlinks=follow_symlinks), str(path.resolve())
    if not sources:
        raise NotFoundError(f"no checkpoints (.safetensors, .pt, .pth, .bin, sharded index) found in {src}")
    out: list[ModelRecord] = []
    it = iter(sources)
    bar = progress_bar(total=len(sources), desc="ingest", unit="ckpt", disable=not progress)
    try:
        _ingest_batches(zoo, it, sources, origin, arch, population, tags, batch_size, out, bar)
    except BaseException:
        # all or nothing: take back the batches already written (their tensors become garbage for gc)
        if out:
            zoo.remove([r.id for r in out], force=True)
        raise
    finally:
        bar.close()
    return out

def _ingest_batches(zoo: Zoo, it: Iterator[Any], sources: list[Any], origin: str, arch: Any, population: str | None,
                    tags: Sequence[str], batch_size: int, out: list[ModelRecord], bar: Any) -> None:  # fmt: skip
    from zoo.io.ingest import load_source

    while batch := list(islice(it, batch_size)):
        items = []
        for s in batch:
            sd = load_source(s)
            cfg: Mapping[str, Any] | str | None = arch
            if cfg is None and s.config is not None:
                own = {k: v for k, v in s.config.items() if k != "weightzoo"}  # metadata of our export
                cfg = own if archs.can_build(own) else None
                if cfg is None:
                    cfg = raw_config(sd, own)
            if cfg is not None and not isinstance(cfg, str) and not archs.can_build(cfg) and cfg.get("family") != archs.RAW_FAMILY:
                raise ConfigError(f"architecture config of {s.path} is not valid: {cfg}")
            where = origin if len(sources) == 1 else f"{origin}::{s.name}"
            items.append(NewModel(sd, arch=cfg, population=population, op="ingest", source=where, tags=tags,
                                  params={"source": where}))  # fmt: skip
        out += zoo.add_many(items)
        bar.update(len(batch))

def export(zoo: Zoo, model: int | str, out_dir: str | Path, *, overwrite: bool = False, max_shard_size: int | None = None) -> Path:
    """Write a model as a Hugging Face style folder: safetensors, config.json, README.md (card with lineage)."""
    from zoo.io.export import model_card, write_hf_folder
    from zoo.io.outpath import guard_output_dir

    guard_output_dir(out_dir, overwrite=overwrite, what="export folder", zoo_roots=[zoo.root])  # before any read
    rec = zoo.get(model)
    mets = zoo.metrics(rec.id)
    metrics = {(f"{r.split}_{r.name}" if r.split else r.name): r.value for r in mets.itertuples()}
    lineage = [
        {"child": e.child, "parent": e.parent, "op": e.op, "role": e.role, "params": e.params}
        for e in zoo.lineage(rec.id, direction="up")
    ]
    card = model_card(
        title=rec.name or f"weightzoo model {rec.id}",
        description=f"Exported from a weightzoo zoo. Population: {rec.population}; architecture: {rec.architecture}; made by `{rec.op}`.",
        metrics=metrics, hyperparameters=rec.hparams(), lineage=lineage, tags=rec.tags(),
    )  # fmt: skip
    config = dict(rec.arch_config or {})
    if config.get("family") == archs.RAW_FAMILY and "hf_config" in config:
        config = dict(config["hf_config"])
    config.setdefault("weightzoo", {"model_id": rec.id, "population": rec.population, "op": rec.op})
    return write_hf_folder(out_dir, rec.state_dict(), config=config, card=card, overwrite=overwrite,
                           max_shard_size=max_shard_size, metadata={"weightzoo_model_id": str(rec.id)})  # fmt: skip
