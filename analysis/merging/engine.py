"""The streaming merge: tensor by tensor, from any sources, into a folder and/or the zoo.

For each tensor name (in the base's, else the first model's, order) the engine loads that one
tensor from every input, calls the method, casts, and hands the result to the writer, which puts
its bytes straight on disk. Peak memory is a few tensors of the largest size (the inputs, the
method's float32 scratch and the result), not k models.

    from analysis.merging import MergeConfig, merge
    cfg = MergeConfig.from_dict({"merge_method": "ties", "base_model": "zoo:3",
                                 "models": [{"model": "zoo:4", "parameters": {"density": .5}}, "zoo:5"]})
    res = merge(cfg, zoo=z, to_zoo=True, population="merged")   # lineage: parents 3 (base), 4, 5
    res = merge(cfg, out_dir="merged/", zoo=z, max_shard_size="2GB")
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from analysis.merging.config import MergeConfig, ModelRef, parse_dtype
from analysis.merging.methods import SlerpStats, slerp_pair
from analysis.merging.registry import MergeMethod, TensorContext, get_method
from analysis.merging.sources import StateDictSource, TensorInfo, TensorSource, open_source
from analysis.merging.sparsify import RANDOM_BLOCK, Selection, SelectionBuilder
from analysis.merging.writer import StreamingWriter, parse_size
from zoo.errors import ConfigError, MismatchError
from zoo.io.outpath import guard_output_dir
from zoo.models.architectures import is_classifier
from zoo.progress import progress_bar
from zoo.threads import torch_threads

__all__ = ["MergeResult", "check_config", "merge", "merge_state_dicts"]

#: where a ``from_metrics`` parameter is read from, in order: the first split that has the metric
METRIC_SPLITS = ("val", "test", "train", "")


@dataclass
class MergeResult:
    """What a merge produced: the folder, the zoo record, metrics of the merged model."""

    method: str
    params: dict[str, Any]
    n_tensors: int
    seconds: float
    out_dir: Path | None = None
    model_id: int | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def merge_state_dicts(
    method: str | MergeMethod,
    models: Sequence[Mapping[str, Tensor]],
    base: Mapping[str, Tensor] | None = None,
    *,
    seed: int = 0,
    **params: Any,
) -> dict[str, Tensor]:
    """Merge in-memory state dicts (the small-model convenience; same methods, same checks).

    ``params`` are the method's parameters; per-model ones may be a list (one value per model).
    """
    m = method if isinstance(method, MergeMethod) else get_method(method)
    sources: list[TensorSource] = [StateDictSource(sd, f"model_{i}") for i, sd in enumerate(models)]
    base_src = StateDictSource(base, "base") if base is not None else None
    plan = _plan(m.name, sources, base_src, None)
    _check_contract(m, len(sources), base_src is not None)
    resolved = m.resolve(len(sources), params)
    return {
        name: m([s.get(name) for s in sources], base_src.get(name) if base_src else None,
                ctx=TensorContext(name, seed), **resolved).to(info.dtype)
        for name, info in plan.items()
    }  # fmt: skip


def merge(
    config: MergeConfig | Mapping[str, Any] | str | Path,
    *,
    out_dir: str | Path | None = None,
    zoo: Any = None,
    to_zoo: bool = False,
    population: str | None = None,
    name: str | None = None,
    tags: Sequence[str] = (),
    max_shard_size: int | str | None = "2GB",
    overwrite: bool = False,
    evaluate: bool = True,
    dataset: str | None = None,
    progress: bool = False,
    offline: bool | None = None,
    threads: int | None = None,
) -> MergeResult:
    """Run a merge, streaming tensor by tensor; write ``out_dir`` and/or store it in ``zoo``.

    Args:
        config: a :class:`MergeConfig`, a mergekit-style mapping, or a YAML file path / text.
        out_dir: write an HF-style folder (safetensors shards of at most ``max_shard_size``,
            ``config.json`` from the base/first model, ``README.md`` model card).
        zoo: an open :class:`zoo.Zoo`: resolves ``zoo:ID`` references, and with ``to_zoo``
            stores the result (parents = the inputs with roles ``base``, ``model_0``, ...;
            op ``merge.<method>``; params = the full config and resolved parameters).
        evaluate: evaluate a stored merge of an evaluable architecture (mlp/cnn/resnet) with
            :meth:`zoo.Zoo.evaluate` (``dataset``: default the base's ``dataset`` hyperparameter,
            else digits) and store the metrics.
        threads: torch intra-op threads while merging (restored afterwards; ``None`` leaves
            torch's setting). The element-wise work is memory-bound; with more threads the
            OpenMP workers spin whenever another process holds a CPU (the CLI's default is 1).

    Raises:
        ConfigError: unknown method or parameter, bad values, a missing base, nothing to write.
        MismatchError: the inputs do not share tensor names and shapes.
        NotFoundError: an input that does not exist.
    """
    if threads is not None and threads != torch.get_num_threads():
        with torch_threads(threads):
            return merge(config, out_dir=out_dir, zoo=zoo, to_zoo=to_zoo, population=population, name=name, tags=tags,
                         max_shard_size=max_shard_size, overwrite=overwrite, evaluate=evaluate, dataset=dataset,
                         progress=progress, offline=offline)  # fmt: skip
    t0 = time.perf_counter()
    cfg = config if isinstance(config, MergeConfig) else (
        MergeConfig.from_dict(config) if isinstance(config, Mapping) else MergeConfig.from_yaml(config))  # fmt: skip
    if out_dir is None and not to_zoo:
        raise ConfigError("give an output folder (out_dir) and/or to_zoo=True")
    if to_zoo and zoo is None:
        raise ConfigError("to_zoo needs an open zoo (zoo=Zoo.open(...))")
    # every refusal before the first input is opened
    method = check_config(cfg)
    zoo_roots = [zoo.root] if getattr(zoo, "root", None) is not None else []
    if out_dir is not None:
        out_dir = guard_output_dir(out_dir, overwrite=overwrite, what="merge output folder", zoo_roots=zoo_roots)
    parse_size(max_shard_size)
    notes = list(cfg.notes)
    if method.base == "ignored" and cfg.base_model is not None:
        notes.append(f"{method.name} does not use a base model; {cfg.base_model} is recorded as a parent only")
    out_dtype = parse_dtype(cfg.out_dtype or cfg.dtype)

    opened: list[TensorSource] = []
    writer: StreamingWriter | None = None
    try:
        base_src = open_source(cfg.base_model, zoo=zoo, offline=offline) if cfg.base_model is not None else None
        if base_src is not None:
            opened.append(base_src)
        sources = []
        for ref in cfg.models:
            sources.append(open_source(ref.model, zoo=zoo, offline=offline))
            opened.append(sources[-1])
        model_params = [_model_params(method, ref, src, zoo, cfg.parameters) for ref, src in zip(cfg.models, sources, strict=True)]
        resolved = method.resolve(len(sources), cfg.parameters, model_params)
        plan = _plan(method.name, sources, base_src, out_dtype)
        ref_src = base_src or sources[0]
        hf_config = ref_src.config if ref_src.zoo_id is None else None
        params = {"config": cfg.to_dict(), "resolved": resolved}
        if out_dir is not None:
            writer = StreamingWriter(out_dir, plan, max_shard_size=max_shard_size, overwrite=overwrite,
                                     metadata={"weightzoo_merge": method.name}, zoo_roots=zoo_roots)  # fmt: skip
        collected: dict[str, Tensor] | None = {} if (to_zoo and writer is None) else None
        use_base = method.base != "ignored"
        for tname, info in progress_bar(plan.items(), desc=f"merge.{method.name}", unit="tensor", disable=not progress):
            bsrc = base_src if use_base else None
            if _chunkable(method, resolved, [s.infos()[tname] for s in sources], info):
                full = torch.empty(math.prod(info.shape), dtype=info.dtype) if collected is not None else None
                pos = 0
                for out in _merge_chunks(method, resolved, tname, sources, bsrc, cfg.seed):
                    out = out.to(info.dtype)
                    if writer is not None:
                        writer.write_chunk(tname, out)
                    if full is not None:
                        full[pos : pos + out.numel()] = out.reshape(-1)
                    pos += out.numel()
                    del out
                if collected is not None and full is not None:
                    collected[tname] = full.reshape(info.shape)
                continue
            tensors = [s.get(tname) for s in sources]
            b = bsrc.get(tname) if bsrc is not None else None
            out = method(tensors, b, ctx=TensorContext(tname, cfg.seed), **resolved).to(info.dtype)
            del tensors, b
            if writer is not None:
                writer.write(tname, out)
            if collected is not None:
                collected[tname] = out
            del out
        result = MergeResult(method.name, params, len(plan), 0.0, notes=notes)
        if writer is not None:
            card = _card(cfg, method, resolved, notes)
            result.out_dir = writer.finish(config=_out_config(ref_src, method, cfg), card=card)
        if to_zoo:
            state = collected if collected is not None else writer.file_views()  # type: ignore[union-attr]
            _store(zoo, result, state, cfg, method, [base_src] if base_src else [], sources, hf_config,
                   population=population, name=name, tags=tags, evaluate=evaluate, dataset=dataset)  # fmt: skip
    except BaseException:
        if writer is not None and writer.tmp.exists():
            writer.abort()
        raise
    finally:
        for s in opened:
            s.close()
    result.seconds = time.perf_counter() - t0
    return result


# ------------------------------------------------------------------------------------- chunking
#: flat entries per chunk when a method allows splitting a large tensor (a multiple of DARE's block)
CHUNK = RANDOM_BLOCK


def _chunkable(method: MergeMethod, resolved: Mapping[str, Any], srcs: Sequence[TensorInfo], out: TensorInfo) -> bool:
    n = math.prod(out.shape)
    if method.chunking is None or n <= CHUNK or not all(i.dtype.is_floating_point for i in srcs):
        return False
    if method.chunking in MAGNITUDE and any(i.dtype == torch.float64 for i in srcs):
        return False  # the streamed radix select reads float32 magnitudes; float64 merges whole
    # rescaling to the L1/L2 norm of the whole task vector needs whole tensors
    return not (resolved.get("rescale") and resolved.get("rescale_norm", "density") != "density")


MAGNITUDE = ("magnitude", "magnitude_outliers")


def _merge_chunks(method: MergeMethod, resolved: Mapping[str, Any], name: str, sources: list[TensorSource],
                  base: TensorSource | None, seed: int) -> Iterator[Tensor]:  # fmt: skip
    """Merge one large tensor in flat chunks of :data:`CHUNK` entries (same result as whole).

    Every input is read chunk by chunk into one reused buffer per input. Methods that need
    whole-tensor statistics get them from passes over the chunks first (``ctx.stats``): TIES and
    Breadcrumbs the exact magnitude cuts (two radix-select passes), SLERP the dot product and norms.
    Each merged chunk must be consumed (written, copied) before the next is requested: the
    input buffers are refilled, and a method may return a view of its inputs.
    """
    n = math.prod(sources[0].infos()[name].shape)
    size = min(CHUNK, n)
    bufs = [torch.empty(size, dtype=s.infos()[name].dtype) for s in sources]
    bbuf = torch.empty(size, dtype=base.infos()[name].dtype) if base is not None else None

    def read(start: int, stop: int, which: Sequence[int] | None = None) -> tuple[list[Tensor], Tensor | None]:
        ts = [sources[i].get_flat(name, start, stop, out=bufs[i]) for i in (range(len(sources)) if which is None else which)]
        b = base.get_flat(name, start, stop, out=bbuf) if base is not None else None
        return ts, b

    stats: Any = None
    if method.chunking in MAGNITUDE and base is not None:
        stats = _magnitude_selections(method.chunking, resolved, n, read, len(sources))
    elif method.chunking == "slerp":
        stats = SlerpStats()
        for start in range(0, n, CHUNK):
            stats.add(*slerp_pair(*read(start, min(n, start + CHUNK))))
    for start in range(0, n, CHUNK):
        ts, b = read(start, min(n, start + CHUNK))
        yield method(ts, b, ctx=TensorContext(name, seed, offset=start, stats=stats), **resolved)


def _magnitude_selections(kind: str, resolved: Mapping[str, Any], n: int, read: Any, k: int) -> list[Selection | None]:
    """Each model's magnitude :class:`Selection` of one large tensor, from passes over its chunks.

    Memory: one float32 chunk of magnitudes and two histograms per model, whatever the tensor size.
    """
    density, gamma = resolved.get("density"), resolved.get("gamma")
    builders = [SelectionBuilder(kind, density[i] if density else 1.0, gamma[i] if gamma else 0.01, n)  # type: ignore[arg-type]
                for i in range(k)]  # fmt: skip
    a = torch.empty(min(CHUNK, n), dtype=torch.float32)
    while active := [i for i, bld in enumerate(builders) if bld.passes_left]:
        for start in range(0, n, CHUNK):
            stop = min(n, start + CHUNK)
            ts, b = read(start, stop, active)
            bf = b.to(torch.float32)
            av = a[: stop - start]
            for i, x in zip(active, ts, strict=True):
                torch.sub(x.to(torch.float32), bf, out=av).abs_()
                builders[i].add(av)
        for i in active:
            builders[i].next_pass()
    return [bld.selection() for bld in builders]


# ------------------------------------------------------------------------------------- helpers
def check_config(cfg: MergeConfig) -> MergeMethod:
    """Everything about ``cfg`` that can be checked without opening a model; returns its method.

    The method must exist, take this many models and a base (or none), and every parameter given
    must be known, of the right type, finite and in its declared range (see
    :class:`~analysis.merging.registry.Range`). Required values that the inputs may still supply
    (``metric_weighted``'s ``loss`` from zoo metrics) are checked later, by :meth:`MergeMethod.resolve`.

    Raises:
        ConfigError: naming the parameter, the value given and the valid range.
    """
    method = get_method(cfg.merge_method)
    _check_contract(method, len(cfg.models), cfg.base_model is not None)
    method.resolve(len(cfg.models), cfg.parameters, [m.parameters for m in cfg.models], require=False)
    return method


def _check_contract(method: MergeMethod, n_models: int, has_base: bool) -> None:
    if method.base == "required" and not has_base:
        raise ConfigError(f"{method.name} needs a base model (base_model: / --base)")
    if n_models < method.min_models:
        raise ConfigError(f"{method.name} needs at least {method.min_models} model(s) besides the base, got {n_models}")
    if method.max_models is not None and n_models > method.max_models:
        raise ConfigError(f"{method.name} takes at most {method.max_models} model(s) besides the base, got {n_models}")


def _plan(method: str, sources: list[TensorSource], base: TensorSource | None, out_dtype: torch.dtype | None) -> dict[str, TensorInfo]:
    """Output names/shapes/dtypes; every input must hold the same names with the same shapes."""
    ref = base or sources[0]
    ref_infos = ref.infos()
    for s in ([base] if base else []) + sources:
        infos = s.infos()
        missing = [n for n in ref_infos if n not in infos]
        extra = [n for n in infos if n not in ref_infos]
        if missing or extra:
            what = f"lacks {missing[:3]}" if missing else f"has extra tensors {extra[:3]}"
            raise MismatchError(
                f"{method}: model {s.label} {what} compared with {ref.label}; merged models must share one architecture"
            )
        bad = [(n, infos[n].shape, ref_infos[n].shape) for n in ref_infos if infos[n].shape != ref_infos[n].shape]
        if bad:
            n, a, b = bad[0]
            raise MismatchError(f"{method}: tensor {n!r} is {a} in {s.label} but {b} in {ref.label} ({len(bad)} mismatches)")
    return {
        n: TensorInfo(i.shape, out_dtype if (out_dtype is not None and i.dtype.is_floating_point) else i.dtype)
        for n, i in ref_infos.items()
    }


def _model_params(method: MergeMethod, ref: ModelRef, src: TensorSource, zoo: Any, given: Mapping[str, Any]) -> dict[str, Any]:
    """Model ``ref``'s own parameters, with the method's ``from_metrics`` parameters that neither the model
    nor the global ``given`` parameters set filled from the zoo model's stored metrics."""
    params = dict(ref.parameters)
    wanted = {p: m for p, m in method.from_metrics.items() if p not in params and p not in given}
    if not wanted or src.zoo_id is None:
        return params
    df = zoo.metrics(src.zoo_id)
    for param, metric in wanted.items():
        for split in METRIC_SPLITS:
            rows = df[(df["name"] == metric) & (df["split"] == split)]
            if len(rows):
                params[param] = float(rows["value"].iloc[-1])
                break
        else:
            raise ConfigError(f"{method.name}: zoo model {src.label} has no stored {metric!r} metric "
                              f"(splits {'/'.join(s or '(none)' for s in METRIC_SPLITS)}); give `{param}` per model")  # fmt: skip
    return params


def _out_config(ref: TensorSource, method: MergeMethod, cfg: MergeConfig) -> dict[str, Any]:
    conf = dict(ref.config or {})
    if ref.zoo_id is not None:
        hf = conf.get("hf_config")
        conf = dict(hf) if isinstance(hf, Mapping) else conf
    if cfg.out_dtype or cfg.dtype:
        if "torch_dtype" in conf or "dtype" in conf or ref.zoo_id is None:
            conf["torch_dtype"] = cfg.out_dtype or cfg.dtype
    conf["weightzoo_merge"] = {"method": method.name, "config": cfg.to_dict()}
    return conf


def _card(cfg: MergeConfig, method: MergeMethod, resolved: dict[str, Any], notes: list[str]) -> str:
    from zoo.io.export import model_card

    lineage = ([{"parent": cfg.base_model, "role": "base", "child": "this model", "op": f"merge.{method.name}", "params": {}}]
               if cfg.base_model else [])  # fmt: skip
    lineage += [{"parent": m.model, "role": f"model_{i}", "child": "this model", "op": f"merge.{method.name}",
                 "params": m.parameters} for i, m in enumerate(cfg.models)]  # fmt: skip
    desc = (f"A merge of {len(cfg.models)} model(s) with `{method.name}` ({method.reference or 'weightzoo'}).\n\n"
            f"```yaml\n{cfg.to_yaml()}```")  # fmt: skip
    if notes:
        desc += "\n\nNotes:\n" + "\n".join(f"- {n}" for n in notes)
    hp = {k: v for k, v in resolved.items() if not isinstance(v, list)}
    return model_card(title=f"merge.{method.name}", description=desc, hyperparameters=hp, lineage=lineage,
                      tags=["merge", method.name])  # fmt: skip


def _store(zoo: Any, result: MergeResult, state: dict[str, Tensor], cfg: MergeConfig, method: MergeMethod,
           bases: list[TensorSource], sources: list[TensorSource], hf_config: dict[str, Any] | None, *,
           population: str | None, name: str | None, tags: Sequence[str], evaluate: bool, dataset: str | None) -> None:  # fmt: skip
    from zoo.models.architectures import can_build

    parents: dict[int, str] = {}
    roles = [(s, "base") for s in bases] + [(s, f"model_{i}") for i, s in enumerate(sources)]
    for s, role in roles:
        if s.zoo_id is not None:
            parents[s.zoo_id] = f"{parents[s.zoo_id]},{role}" if s.zoo_id in parents else role
    ref = (bases or sources)[0]
    arch: Any = None
    if ref.zoo_id is not None and ref.config is not None and can_build(ref.config):
        arch = ref.config
    elif hf_config is not None:
        from zoo.facade import raw_config

        arch = raw_config(state, hf_config)
    sources_desc = [s.label for s in bases + sources]
    rec = zoo.add(state, arch=arch, population=population, name=name, parents=parents, op=f"merge.{method.name}",
                  params=result.params, tags=list(tags), source="merge:" + ",".join(sources_desc))  # fmt: skip
    result.model_id = rec.id
    if evaluate and is_classifier(rec.arch_config):
        ds = dataset
        if ds is None and ref.zoo_id is not None:
            ds = zoo.hparams(ref.zoo_id).get("dataset")
        try:
            df = zoo.evaluate([rec.id], dataset=ds or "digits", splits=("val", "test"))
        except Exception as e:  # the merge is stored; a failed evaluation must not hide that
            result.notes.append(f"stored as model {rec.id}, but evaluating it on {ds or 'digits'!r} failed: {e}")
            return
        for r in df.itertuples():
            result.metrics[f"{r.split}_loss"] = float(r.loss)
            result.metrics[f"{r.split}_acc"] = float(r.acc)
