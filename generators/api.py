"""Generators and the zoo: train on a population, store, sample, evaluate, write samples back with lineage.

    import generators
    rec = generators.train(zoo, "digits-mlp", method="flow", name="mlp-flow")      # stored generator
    run = generators.sample(zoo, "mlp-flow", n=100, seed=0)                        # sampled + evaluated + stored
    run.verdict["verdict"], run.summary["samples"]["quality_median"], run.sample_ids

A stored generator is a model in population ``generators/<name>`` (a population holds one layout): its tensors are the denoiser's weights and
the preparer's reference; hyperparameters ``generator`` (family), ``trained_on``, ``condition``,
``held_out_ids`` and ``generator_doc`` (the JSON configuration + learned state it is rebuilt from); op
``train.generator``; lineage role ``train`` from every training model. Samples go to population
``<name>/samples`` with op ``generate.<family>`` (parent: the generator, role ``generator``), their
figures as metrics, and each run's figures as the derived tables ``<run>`` (one row per sample, joinable
on ``model_id``) and ``<run>_groups`` (every model of every group: samples, baselines, held-out, training).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch

from generators.base import MIN_MODELS, Generator, load_generator_state
from generators.registry import make_generator
from zoo.errors import ConfigError, DuplicateError, MismatchError, NotFoundError
from zoo.threads import torch_threads

__all__ = ["train", "sample", "sample_shard", "store_run", "store_generator", "generator_from_zoo", "SampleRun", "finetune_inits", "GENERATOR_POPULATION", "ACC_ALIASES"]

GENERATOR_POPULATION = "generators"
#: ``--condition acc`` conditions on the validation accuracy (nothing is chosen on the test split).
ACC_ALIASES = {"acc": "val_acc", "accuracy": "val_acc"}


def _population_frame(zoo: Any, population: str, final: bool) -> pd.DataFrame:
    names = {p.name for p in zoo.populations()}
    if population not in names:
        raise NotFoundError(f"no population {population!r} in the zoo at {zoo.root}; populations: "
                            f"{', '.join(sorted(names)) or 'none'}")  # fmt: skip
    q = zoo.population(population)
    df = q.df()
    if df.empty:
        raise NotFoundError(f"population {population!r} has no models")
    if final and "run" in df and df["run"].notna().any() and "step" in df:
        last = df.groupby(df["run"].fillna(df["id"].astype(str)))["step"].transform("max")
        df = df[(df["step"] == last) | df["step"].isna()]
    return df.sort_values("id").reset_index(drop=True)


def _check_one_architecture(zoo: Any, ids: Sequence[int]) -> dict[str, Any]:
    from zoo.models.architectures import config_hash

    recs = zoo.records(list(ids))
    cfgs = {config_hash(r.arch_config): r for r in recs if r.arch_config is not None}
    if len(cfgs) != 1 or any(r.arch_config is None for r in recs):
        archs = sorted({r.architecture or "(none)" for r in recs})
        raise MismatchError(f"a generator learns one architecture, but these models have {len(archs)}: "
                            f"{', '.join(archs[:5])}; train on one population (or one architecture) at a time")  # fmt: skip
    return dict(next(iter(cfgs.values())).arch_config)


def _condition_values(df: pd.DataFrame, condition: str) -> tuple[str, np.ndarray]:
    col = ACC_ALIASES.get(condition, condition)
    for c in (col, f"hp_{col}"):
        if c in df.columns:
            vals = df[c].to_numpy()
            if pd.isna(vals).any():
                raise ConfigError(f"condition {condition!r}: {int(pd.isna(vals).sum())} models have no value; "
                                  "pick a metric or hyperparameter every model has")  # fmt: skip
            try:
                return c, pd.to_numeric(df[c]).to_numpy()  # integer hyperparameters (classes) stay integers
            except (ValueError, TypeError):
                raise ConfigError(f"condition {condition!r} is not numeric; condition on a number or a class") from None
    options = sorted(c for c in df.columns if c.endswith("_acc") or c.startswith("hp_"))
    raise ConfigError(f"unknown condition {condition!r}: no metric or hyperparameter of that name; "
                      f"options: acc (= val_acc), {', '.join(options[:12])}")  # fmt: skip


def _split_holdout(n: int, holdout: float | int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    k = int(round(holdout * n)) if isinstance(holdout, float) and holdout < 1 else int(holdout)
    if k < 0 or n - k < MIN_MODELS:
        raise ConfigError(f"{n} models, {k} held out: a generator needs at least {MIN_MODELS} training models "
                          "(build a larger population or hold out fewer)")  # fmt: skip
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[k:]), np.sort(perm[:k])


def train(
    zoo: Any,
    population: str | None = None,
    method: str = "flow",
    *,
    name: str,
    models: Sequence[int] | None = None,
    condition: str | None = None,
    holdout: float | int = 0.1,
    held_out_population: str | None = None,
    final: bool = True,
    params: Mapping[str, Any] | None = None,
    seed: int = 0,
    progress: bool = False,
    threads: int | None = None,
) -> Any:
    """Train a generator on a population's (final-checkpoint) models and store it in the zoo as ``name``.

    ``condition``: a metric (``acc`` = ``val_acc``, ``test_acc``, ...) or hyperparameter (``lr``,
    ``label`` for INR digit classes) every model has. ``holdout``: a fraction (or number) of the models
    kept out of training as the "what new looks like" reference; or ``held_out_population``: a population
    of the same recipe (other seeds) to use instead (then nothing of ``population`` is held out).
    ``params``: the generator's options (see :class:`~generators.flow.FlowGenerator`). Returns the stored
    :class:`~zoo.ModelRecord` (``.generator`` holds the fitted object). ``threads``: torch threads while
    training (:func:`torch_threads`).
    """
    if not name or not isinstance(name, str):
        raise ConfigError("give the generator a name (name=...)")
    try:
        zoo.get(name)
    except (NotFoundError, LookupError):
        pass
    else:
        raise DuplicateError(f"a model named {name!r} already exists; pick another generator name")
    gen = make_generator(method, **dict(params or {}), seed=seed)
    if models is not None:
        ids = sorted(int(i) for i in models)
        df = pd.concat([zoo.models().ids_in(ids).df()]).sort_values("id").reset_index(drop=True)
        pop_name = population or "(models)"
    else:
        if population is None:
            raise ConfigError("give population=... (or models=[ids])")
        df = _population_frame(zoo, population, final)
        ids, pop_name = df["id"].astype(int).tolist(), population
    if len(ids) < MIN_MODELS:
        raise ConfigError(f"a generator needs at least {MIN_MODELS} training models; {pop_name!r} has {len(ids)}")
    config = _check_one_architecture(zoo, ids)
    cond_col, cond = (None, None)
    if condition:
        cond_col, cond = _condition_values(df, condition)
    held_ids: list[int] = []
    if held_out_population:
        hdf = _population_frame(zoo, held_out_population, final)
        held_ids = hdf["id"].astype(int).tolist()
        if _check_one_architecture(zoo, held_ids) != config:
            raise MismatchError(f"held-out population {held_out_population!r} has another architecture than {pop_name!r}")
        tr = np.arange(len(ids))
    else:
        tr, ho = _split_holdout(len(ids), holdout, seed)
        held_ids = [ids[i] for i in ho]
    train_ids = [ids[i] for i in tr]
    X = zoo.stack(train_ids)
    t0 = time.perf_counter()
    with torch_threads(threads):
        gen.fit(X, config=config, condition=None if cond is None else cond[tr], progress=progress)
    seconds = time.perf_counter() - t0
    rec = store_generator(zoo, gen, name=name, train_ids=train_ids, held_out_ids=held_ids, trained_on=pop_name,
                          condition=cond_col, seconds=seconds)  # fmt: skip
    rec.generator = gen
    return rec


def store_generator(zoo: Any, gen: Generator, *, name: str, train_ids: Sequence[int], held_out_ids: Sequence[int] = (),
                    trained_on: str = "", condition: str | None = None, seconds: float | None = None) -> Any:  # fmt: skip
    """Store a fitted generator as a model (see the module docstring); lineage role ``train`` to every
    training model."""
    doc, tensors = gen.state()
    metrics = {"final_loss": float(gen.history_[-1])} if gen.history_ else {}
    if seconds is not None:
        metrics["fit_seconds"] = float(seconds)
    return zoo.add(
        tensors, population=f"{GENERATOR_POPULATION}/{name}", name=name, op="train.generator",
        hparams={"generator": gen.name, "trained_on": trained_on, "condition": condition or "",
                 "held_out_ids": json.dumps([int(i) for i in held_out_ids]), "generator_doc": json.dumps(doc)},
        metrics=metrics, tags=("generator", f"generator:{gen.name}"), source="generators.api:train",
        parents={int(i): "train" for i in train_ids},
        params={"method": gen.name, "n_train": len(train_ids), "n_held_out": len(held_out_ids), "condition": condition},
    )  # fmt: skip


def generator_from_zoo(zoo: Any, model: int | str) -> tuple[Generator, Any]:
    """``(fitted generator, its record)`` of a generator stored with :func:`store_generator`."""
    rec = zoo.get(model)
    hp = rec.hparams()
    if rec.op != "train.generator" or "generator_doc" not in hp:
        raise ConfigError(f"model {rec.id} ({rec.name or 'unnamed'}) is not a stored generator (op {rec.op!r}); "
                          "train one with `weightzoo generate train` or generators.train()")  # fmt: skip
    return load_generator_state(json.loads(hp["generator_doc"]), rec.state_dict()), rec


# ----------------------------------------------------------------------------------------------
# Sampling runs


@dataclass
class SampleRun:
    """One sampling run: the samples (stacked), their ids in the zoo, the evaluation and the verdict."""

    generator_id: int
    method: str
    run: str
    samples: dict[str, torch.Tensor]
    params: dict[str, Any]
    result: dict[str, Any] | None = None
    sample_ids: list[int] = field(default_factory=list)
    tables: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def summary(self) -> dict[str, Any]:
        return self.result["summary"] if self.result else {}

    @property
    def verdict(self) -> dict[str, Any]:
        return self.result["verdict"] if self.result else {}

    def to_dict(self) -> dict[str, Any]:
        return {"generator_id": self.generator_id, "method": self.method, "run": self.run, "params": self.params,
                "sample_ids": self.sample_ids, "tables": self.tables, "seconds": self.seconds,
                "verdict": self.verdict, "summary": self.summary}  # fmt: skip


def _table_safe(text: str) -> str:
    s = re.sub(r"[^a-z0-9_]+", "_", text.lower()).strip("_")
    return ("g_" + s if not s or not s[0].isalpha() else s)[:40]


def _run_name(zoo: Any, name: str) -> str:
    base = f"{_table_safe(name)}_run"
    taken = {t.name for t in zoo.tables()}
    k = 1
    while f"{base}{k}" in taken:
        k += 1
    return f"{base}{k}"


def _inr_targets(zoo: Any, ids: Sequence[int]) -> tuple[torch.Tensor, list[int]]:
    """Target images ``[N, P, 1]`` and labels of stored SIRENs (:func:`zoo.build.inr.stored_inr_data`)."""
    from zoo.build.inr import stored_inr_data

    data = stored_inr_data(zoo, ids)
    return data.targets, [int(v) for v in data.labels]


def evaluation_context(zoo: Any, gen: Generator, rec: Any, *, k: int = 3, seed: int = 0) -> Any:
    """The :class:`~generators.evaluate.RunContext` of a stored generator (its training and held-out models)."""
    from generators.evaluate import RunContext

    train_ids = sorted(e.parent for e in rec.parents() if e.role == "train")
    held = [int(i) for i in json.loads(rec.hparams().get("held_out_ids", "[]"))]
    X = zoo.stack(train_ids)
    H = zoo.stack(held) if held else None
    extra: dict[str, Any] = {}
    if gen.arch_ and gen.arch_.get("family") == "siren":
        extra["inr_targets"], labels = _inr_targets(zoo, train_ids)
        extra["train_labels"] = labels or None
    return RunContext.build(gen.prep_, gen.arch_, X, train_ids, held_out=H, held_out_ids=held, k=k, seed=seed, **extra)


def sample(
    zoo: Any,
    generator: int | str,
    n: int = 100,
    *,
    condition: Any = None,
    guidance: float = 1.0,
    steps: int | None = None,
    sampler: str | None = None,
    seed: int = 0,
    temperature: float = 1.0,
    arch: Mapping[str, Any] | str | None = None,
    evaluate: bool = True,
    store: bool = True,
    n_baseline: int | None = None,
    threads: int | None = None,
    workers: int = 1,
    executor: Any = None,
    address: str | None = None,
    timeout: float = 30.0,
) -> SampleRun:
    """Sample ``n`` models from a stored generator, evaluate the run against the baselines and (``store``)
    write the samples to population ``<generator name>/samples`` with lineage and metrics.

    ``temperature`` scales the starting noise (below 1: nearer the learned modes, less diverse).
    ``arch``: the architecture (config or population name) the caller wants; refused unless it is the
    one the generator was trained on. ``threads``: torch threads while sampling and evaluating
    (:func:`torch_threads`). Everything is checked before anything is written.

    ``workers``/``executor``/``address``/``timeout`` (:mod:`zoo.build.executors`): with ``workers > 1`` (a
    local process pool), ``executor="ray"`` or a Ray ``address``, the ``n`` samples are drawn in
    ``workers`` shards by :func:`sample_shard`. This process checks the request and draws the starting
    noise exactly as in-process sampling does; each worker gets the stored generator's configuration and
    tensors and its rows of the noise, and this process evaluates and writes the samples in order. The
    same shards give the same samples on every executor (``executor="inprocess", workers=N`` runs them
    here). A stochastic sampler (``ddpm``) draws each shard's step noise from its own stream (seeded by
    ``seed`` and the shard's first row), so its samples depend on the shards.
    """
    from zoo.build.executors import executor_scope

    with torch_threads(threads), executor_scope(executor, workers, address=address, timeout=timeout) as ex:
        return _sample(zoo, generator, n, condition=condition, guidance=guidance, steps=steps, sampler=sampler,
                       seed=seed, temperature=temperature, arch=arch, evaluate=evaluate, store=store,
                       n_baseline=n_baseline, ex=ex)  # fmt: skip


def sample_shard(shared: tuple, noise: torch.Tensor, cond: torch.Tensor | None, stream: int) -> tuple[dict[str, torch.Tensor], int]:
    """One shard of a sampling run (an executor task): ``shared`` is ``(generator document, generator tensors,
    guidance, steps, sampler)`` (what :func:`store_generator` stored); returns the shard's samples (a stacked
    population) and the network evaluations per sample.

    Shapes:
        noise: ``[n, space_dim]`` (the shard's rows of the run's starting noise); cond: ``[n]`` or None.
    """
    doc, tensors, guidance, steps, sampler = shared
    with torch_threads(1):  # one thread per worker: the workers share the cores
        gen = load_generator_state(doc, tensors)
        flat = gen.sample_flat_from(noise, cond, guidance=guidance, steps=steps, sampler=sampler,
                                    generator=torch.Generator().manual_seed(stream))  # fmt: skip
        return gen.prep_.inverse_transform(flat), int(gen.nfe_)


def _shard_stream(seed: int, start: int) -> int:
    """The seed of the random stream of the shard starting at row ``start`` (stochastic samplers)."""
    return int(np.random.SeedSequence([int(seed), int(start)]).generate_state(1, dtype=np.uint64)[0] >> 1)


def _sample_sharded(gen: Generator, rec: Any, ex: Any, n: int, *, condition: Any, guidance: float, steps: int | None,
                    sampler: str | None, seed: int, temperature: float) -> dict[str, torch.Tensor]:  # fmt: skip
    from zoo.build.executors import shard_bounds

    noise, cond, steps_, sampler_, _ = gen.sampling_inputs(n, condition=condition, guidance=guidance, steps=steps,
                                                            sampler=sampler, seed=seed, temperature=temperature)  # fmt: skip
    shared = (json.loads(rec.hparams()["generator_doc"]), rec.state_dict(), float(guidance), steps_, sampler_)
    tasks = [(noise[a:b].clone(), None if cond is None else cond[a:b].clone(), _shard_stream(seed, a))
             for a, b in shard_bounds(n, ex.workers)]  # fmt: skip
    parts = list(ex.map(sample_shard, tasks, shared=shared))
    gen.nfe_, gen.last_steps_, gen.last_sampler_ = parts[0][1], steps_, sampler_
    return {k: torch.cat([p[0][k] for p in parts]) for k in parts[0][0]}


def _sample(zoo: Any, generator: int | str, n: int, *, condition: Any, guidance: float, steps: int | None,
            sampler: str | None, seed: int, temperature: float, arch: Mapping[str, Any] | str | None, evaluate: bool,
            store: bool, n_baseline: int | None, ex: Any = None) -> SampleRun:  # fmt: skip
    from zoo.models.architectures import config_hash, normalize_config

    gen, rec = generator_from_zoo(zoo, generator)
    if arch is not None:
        want = zoo.population(arch).config if isinstance(arch, str) else normalize_config(arch)
        if want is None or config_hash(want) != config_hash(gen.arch_):
            raise MismatchError(f"generator {rec.name!r} was trained on architecture {rec.hparams().get('trained_on')!r} "
                                f"({gen.arch_.get('family')}); it cannot sample another architecture")  # fmt: skip
    if int(n) < 1:
        raise ConfigError(f"ask for at least one sample, not {n}")
    t0 = time.perf_counter()
    if ex is None:
        samples = gen.sample(int(n), condition=condition, guidance=guidance, steps=steps, sampler=sampler, seed=seed,
                             temperature=temperature)  # fmt: skip
    else:
        samples = _sample_sharded(gen, rec, ex, int(n), condition=condition, guidance=guidance, steps=steps,
                                  sampler=sampler, seed=seed, temperature=temperature)  # fmt: skip
    t_sample = time.perf_counter() - t0
    name = rec.name or f"generator-{rec.id}"
    run = _run_name(zoo, name)
    cond_value = None if condition is None else (condition.tolist() if hasattr(condition, "tolist") else condition)
    params = {"method": gen.name, "sampler": gen.last_sampler_, "steps": gen.last_steps_, "nfe": gen.nfe_,
              "seed": int(seed), "condition": cond_value, "guidance": float(guidance), "temperature": float(temperature),
              "run": run}  # fmt: skip
    out = SampleRun(rec.id, gen.name, run, samples, params, seconds={"sample": t_sample})
    if evaluate:
        from generators.evaluate import evaluate_run

        t1 = time.perf_counter()
        ctx = evaluation_context(zoo, gen, rec, seed=seed)
        classes = None
        if gen.cond_kind_ == "class" and condition is not None:
            classes = np.broadcast_to(np.asarray(condition, dtype=int), (int(n),))
        out.result = evaluate_run(ctx, samples, classes=classes, n_baseline=n_baseline, seed=seed)
        out.result["verdict"]["nfe_per_sample"] = gen.nfe_
        out.seconds["evaluate"] = time.perf_counter() - t1
    if store:
        _store_samples(zoo, out, rec, gen)
    return out


def store_run(zoo: Any, run: SampleRun) -> SampleRun:
    """Write a run sampled with ``store=False`` to the zoo (the samples, their metrics and the run's tables)."""
    if run.sample_ids:
        raise DuplicateError(f"run {run.run} is stored already (models {run.sample_ids[0]}..{run.sample_ids[-1]})")
    gen, rec = generator_from_zoo(zoo, run.generator_id)
    run.run = _run_name(zoo, rec.name or f"generator-{rec.id}")
    run.params["run"] = run.run
    _store_samples(zoo, run, rec, gen)
    return run


def _store_samples(zoo: Any, out: SampleRun, rec: Any, gen: Generator) -> None:
    from zoo import NewModel

    n = next(iter(out.samples.values())).shape[0]
    s = out.result["groups"]["samples"].scores if out.result else {}
    v = out.verdict
    classifier = gen.arch_.get("family") != "siren"
    per: list[dict[str, float]] = []
    for i in range(n):
        m: dict[str, float] = {}
        if s:
            m["test_acc" if classifier else "psnr"] = float(s["quality"][i])
            m["novelty"] = float(s["novelty"][i])
            m["near_copy"] = float(s["near_copy"][i])
            if v.get("reference_novelty"):
                m["novelty_ratio"] = float(s["novelty"][i]) / v["reference_novelty"]
            for k in ("val_acc", "agreement", "max_wrong_iou", "class_match", "predicted_class"):
                if k in s:
                    m[k] = float(s[k][i])
        per.append(m)
    pop = f"{rec.name or f'generator-{rec.id}'}/samples"
    cond = out.params["condition"]
    items = [
        NewModel({k: t[i].clone() for k, t in out.samples.items()}, arch=gen.arch_, population=pop,
                 name=f"{pop}/{out.run}/{i:04d}", parents={rec.id: "generator"}, op=f"generate.{gen.name}",
                 params=out.params, metrics=per[i], hparams={"run": out.run, "verdict": v.get("verdict", ""),
                 "condition": json.dumps(cond if not isinstance(cond, list) else cond[i])},
                 tags=("generated", f"generator:{rec.name}"), source="generators.api:sample")
        for i in range(n)
    ]  # fmt: skip
    recs = zoo.add_many(items)
    out.sample_ids = [r.id for r in recs]
    if out.result:
        frame = pd.DataFrame({"model_id": out.sample_ids, **{k: v2 for k, v2 in per_columns(s).items()}})
        desc = (f"sampling run {out.run} of generator {rec.name!r} ({gen.name}, {out.params['sampler']}, "
                f"{out.params['nfe']} NFE/sample): verdict {v.get('verdict')}; summary " + json.dumps(_jsonable(out.summary)))  # fmt: skip
        zoo.write_table(out.run, frame, description=desc, produced_by=rec.id)
        zoo.write_table(f"{out.run}_groups", groups_frame(out.result), description=f"every group of run {out.run}: samples, "
                        "baselines, held-out and training models (quality, novelty, ...)", produced_by=rec.id)  # fmt: skip
        out.tables = [out.run, f"{out.run}_groups"]


def per_columns(scores: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: np.asarray(v, dtype=float) for k, v in scores.items() if k != "nearest"}


def groups_frame(result: Mapping[str, Any]) -> pd.DataFrame:
    """One row per model of every group of an evaluated run (kind, quality, novelty, ...)."""
    frames = []
    for kind, g in result["groups"].items():
        cols = per_columns(g.scores)
        frames.append(pd.DataFrame({"kind": kind, **cols}))
    return pd.concat(frames, ignore_index=True)


def _jsonable(x: Any) -> Any:
    if isinstance(x, Mapping):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, float):
        return round(x, 5)
    return x


# ----------------------------------------------------------------------------------------------
# Generated models as initialisations


def finetune_inits(
    zoo: Any,
    generator: int | str,
    n: int = 20,
    *,
    corruption: str | None = "gaussian_noise",
    severity: int = 5,
    train_fraction: float = 1.0,
    epochs: int = 24,
    lr: float = 5e-3,
    seed: int = 0,
    temperature: float = 1.0,
    store: bool = True,
    threads: int | None = None,
) -> dict[str, Any]:
    """Fine-tune ``n`` generated models, ``n`` random inits and ``n`` of the generator's training models on a
    shifted digits task (:func:`generators.transfer.shifted_task`) with one recipe, and report the epochs each
    group needs to reach the random inits' final validation accuracy, as a ratio of ``epochs``
    (:func:`generators.transfer.init_speedup`). ``store``: the median curves go to the derived table
    ``<generator>_inits<k>`` (produced by the generator). Classifiers only. ``threads``: see :func:`torch_threads`.
    """
    from generators.transfer import init_speedup, shifted_task
    from zoo.models.datasets import load_dataset

    gen, rec = generator_from_zoo(zoo, generator)
    if gen.arch_.get("family") == "siren":
        raise ConfigError("generated initialisations are measured on classifiers; this generator makes SIRENs")
    if gen.cond_kind_ != "none":
        raise ConfigError("measure initialisations with an unconditioned generator (this one needs a condition)")
    if int(n) < 1:
        raise ConfigError(f"ask for at least one model per group, not {n}")
    data = shifted_task(load_dataset("digits").for_architecture(gen.arch_), corruption=corruption, severity=severity,
                        train_fraction=train_fraction, seed=seed)  # fmt: skip
    train_ids = sorted(e.parent for e in rec.parents() if e.role == "train")
    pick = np.random.default_rng(seed).choice(len(train_ids), size=min(int(n), len(train_ids)), replace=False)
    inits = {"generated": gen.sample(int(n), seed=seed, temperature=temperature),
             "training": zoo.stack([train_ids[i] for i in sorted(pick)])}  # fmt: skip
    with torch_threads(threads):
        out = init_speedup(gen.arch_, inits, data, n_random=int(n), epochs=int(epochs), lr=float(lr), seed=seed)
    out["task"] = {"corruption": corruption, "severity": severity, "train_fraction": float(train_fraction), "lr": lr}
    if store:
        rows = [{"group": g, "epoch": e, "val_acc": v["val"][e], "test_acc": v["test"][e]}
                for g, v in out["groups"].items() for e in range(int(epochs) + 1)]  # fmt: skip
        base = f"{_table_safe(rec.name or f'generator-{rec.id}')}_inits"
        taken, k = {t.name for t in zoo.tables()}, 1
        while f"{base}{k}" in taken:
            k += 1
        summary = {g: {"epochs_to_target": v["epochs_to_target"], "ratio": v["ratio"]} for g, v in out["groups"].items()}
        zoo.write_table(f"{base}{k}", pd.DataFrame(rows), produced_by=rec.id,
                        description=f"fine-tuning from generated / random / training inits on {json.dumps(out['task'])}: "
                                    f"target val acc {out['target']:.4f}; " + json.dumps(summary))  # fmt: skip
        out["table"] = f"{base}{k}"
    return out
