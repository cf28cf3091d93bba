"""The population builder: train a recipe's runs in batched shards and write checkpoints to the zoo.

    from zoo import Zoo
    from zoo.build.builder import build
    from zoo.build.recipes import Recipe
    report = build(Zoo.open(), Recipe.load("digits-mlp"))

Runs that share an architecture and optimiser settings train together in one shard (all models at
once, stacked weights; see :func:`zoo.build.training.train_population`). The shard is the unit of work: a
plain function of (recipe, runs, data) that yields checkpoints, so it runs unchanged in-process, in a
process pool or as a Ray task; its results flow back through the one write path, ``Zoo.add_many``,
one atomic write per checkpoint epoch. Ctrl-C therefore leaves a consistent store holding every
checkpoint finished so far, and building the same recipe again resumes (finished runs are skipped).

Names: run ``i`` of recipe ``R`` is run ``R/00042``; its checkpoint at epoch ``e`` is the model named
``R/00042/e025``, with lineage ``R/00042/e008 -> R/00042/e025`` (op ``train``); the first checkpoint of
a fine-tune has its parent model as lineage (op ``finetune``, role ``base``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from zoo.build.inr import INR_SPLIT_HPARAM
from zoo.build.recipes import SHARD_PARAMS, TRAIN_PARAMS, Recipe
from zoo.build.training import Checkpoint, TrainSpec, train_population
from zoo.errors import ConfigError, NotFoundError
from zoo.progress import progress_bar
from zoo.store.records import NewModel
from zoo.threads import torch_threads

if TYPE_CHECKING:
    from zoo.build.executors import Executor
    from zoo.facade import Zoo


@dataclass
class Run:
    """One training run of a recipe: its index, architecture, hyperparameters and (fine-tune) parent."""

    index: int
    arch: dict[str, Any]
    point: dict[str, Any]
    population: str
    recipe: str
    parent: int | None = None

    @property
    def run_id(self) -> str:
        return f"{self.recipe}/{self.index:05d}"

    def name(self, epoch: int) -> str:
        return f"{self.run_id}/e{epoch:03d}"


@dataclass
class BuildReport:
    """What a build did."""

    recipe: str
    populations: dict[str, int] = field(default_factory=dict)
    runs: int = 0
    runs_skipped: int = 0
    runs_trained: int = 0
    models_written: int = 0
    seconds: float = 0.0
    interrupted: bool = False

    def __str__(self) -> str:
        pops = ", ".join(f"{k} ({v} models)" for k, v in self.populations.items())
        state = "INTERRUPTED (rerun the same command to resume)" if self.interrupted else "done"
        return (
            f"{self.recipe}: {state}: trained {self.runs_trained} of {self.runs - self.runs_skipped} runs "
            f"({self.runs_skipped} already built), wrote {self.models_written} checkpoints in {self.seconds:.1f}s; "
            f"populations: {pops}"
        )


# ---------------------------------------------------------------------------------- planning
def plan_runs(recipe: Recipe, zoo: Zoo | None = None) -> list[Run]:
    """Expand a recipe into runs (fine-tunes need the zoo to find their parents)."""
    points = recipe.draws()
    if recipe.finetune is not None:
        if zoo is None:
            raise ConfigError("a fine-tune recipe needs a zoo to find its parents")
        parents = _find_parents(zoo, recipe.finetune.parents)
        if recipe.finetune.change is not None:  # labelled children (zoo.finetune)
            return _change_runs(recipe, parents, points)
        runs = []
        for parent in parents:
            for p in points:
                runs.append(Run(len(runs), parent.arch_config, dict(p), recipe.name, recipe.name, parent=parent.id))
        return runs
    if recipe.task == "inr":  # one SIREN per image, for every search point
        n = int(recipe.inr.get("n", 100))
        runs = []
        for p in points:
            for k in range(n):
                # shared_init: every image's SIREN starts from the same weights (comparable weight spaces)
                seed = int(p["seed"]) if recipe.inr.get("shared_init") else int(p["seed"]) * 100_003 + k
                point = {**p, "seed": seed, "inr_index": k}
                runs.append(Run(len(runs), recipe.arch_for(p), point, recipe.name, recipe.name))
        return runs
    archs = [recipe.arch_for(p) for p in points]
    varying = _varying_arch_keys(recipe)
    multi = len({json.dumps(a, sort_keys=True) for a in archs}) > 1
    runs = []
    for i, (p, a) in enumerate(zip(points, archs, strict=True)):
        pop = recipe.name
        if multi:
            pop += "/" + ",".join(f"{k}={_fmt(p[k])}" for k in varying if k in p)
        runs.append(Run(i, a, dict(p), pop, recipe.name))
    return runs


def _change_runs(recipe: Recipe, parents: Sequence[Any], points: Sequence[dict[str, Any]]) -> list[Run]:
    import random

    from zoo.build.finetune import draw_change, hparams_of, image_hw

    assert recipe.finetune is not None
    runs: list[Run] = []
    hw = image_hw(recipe.dataset, recipe.arch)
    for i, parent in enumerate(parents):
        k = int(parent.arch_config.get("out_features", 10))
        plan = recipe.change_plan(num_classes=k)  # classes checked against the parent's head
        for j in range(plan["n"]):
            # one draw per (parent, child): every search point (e.g. rank: [0, 4]) makes the same change
            rng = random.Random(int(recipe.finetune.seed) * 1_000_003 + i * 1_009 + j)
            change = draw_change(plan, j, rng, num_classes=k, image_hw=hw)
            for p in points:
                runs.append(Run(len(runs), parent.arch_config, {**p, **hparams_of(change)}, recipe.name, recipe.name,
                                parent=parent.id))  # fmt: skip
    return runs


def _varying_arch_keys(recipe: Recipe) -> list[str]:
    keys = []
    for k in recipe.search.get("params", {}):
        if k not in TRAIN_PARAMS and k not in SHARD_PARAMS and k != "seed":
            keys.append(k)
    return keys


def _fmt(v: Any) -> str:
    return "x".join(map(str, v)) if isinstance(v, list) else str(v)


def _find_parents(zoo: Zoo, spec: dict[str, Any]) -> list[Any]:
    q = zoo.models()
    if "population" in spec:
        q = q.population(spec["population"])
    tags = spec.get("tags", [])
    tags = [tags] if isinstance(tags, str) else list(tags)
    if "tag" in spec:
        tags.append(spec["tag"])
    if tags:
        q = q.tag(*tags)
    if spec.get("final", True):
        q = q.final()
    if "min_test_acc" in spec:  # clean parents only: fine-tunes of broken models say little
        q = q.metric("acc", ">=", float(spec["min_test_acc"]), split="test")
    if "limit" in spec:
        q = q.limit(int(spec["limit"]))
    recs = q.records()
    if not recs:
        raise NotFoundError(f"no parent models match {spec}; build the parent population first")
    return recs


def shard_runs(runs: Sequence[Run], max_shard: int = 512) -> list[list[Run]]:
    """Group runs that can train together (same architecture, optimiser, batch size, population)."""
    groups: dict[str, list[Run]] = {}
    for r in runs:
        key = json.dumps([r.arch, r.population, {k: r.point.get(k) for k in SHARD_PARAMS}], sort_keys=True)
        groups.setdefault(key, []).append(r)
    out = []
    for g in groups.values():
        for i in range(0, len(g), max_shard):
            out.append(g[i : i + max_shard])
    return out


# ---------------------------------------------------------------------------------- data
def load_data(recipe: Recipe, runs: Sequence[Run] | None = None, *, root: str | None = None) -> Any:
    """The recipe's data set, shaped for its architecture family (flat for mlp, images otherwise)."""
    from zoo.models.corruptions import corrupt
    from zoo.models.datasets import load_dataset

    d = dict(recipe.dataset)
    name = d.pop("name", "digits")
    root = d.pop("root", root)
    ds = load_dataset(name, root=root, **d)
    if recipe.task == "inr":
        return ds
    ft = recipe.finetune
    if ft is not None and ft.change is None and (ft.corruption or ft.classes):
        ds = _finetune_data(ds, ft, corrupt)
    return ds.for_architecture(recipe.arch)


def _finetune_data(ds: Any, ft: Any, corrupt: Any) -> Any:
    import dataclasses

    changes: dict[str, Any] = {}
    X = {s: getattr(ds, f"X_{s}") for s in ("train", "val", "test")}
    y = {s: getattr(ds, f"y_{s}") for s in ("train", "val", "test")}
    if ft.classes:
        keep = torch.tensor(sorted(set(ft.classes)))
        for s in X:
            m = torch.isin(y[s], keep)
            X[s], y[s] = X[s][m], y[s][m]
    if ft.corruption:
        kind = ft.corruption["kind"]
        sev = int(ft.corruption.get("severity", 3))
        for i, s in enumerate(X):
            X[s] = corrupt(X[s], kind, sev, seed=i, mean=ds.mean, std=ds.std)
    for s in X:
        changes[f"X_{s}"], changes[f"y_{s}"] = X[s], y[s]
    return dataclasses.replace(ds, **changes)


def inr_data(recipe: Recipe, ds: Any) -> Any:
    """The recipe's INR targets: ``inr.n`` images drawn from ``inr.split`` with ``inr.seed`` (fixed per recipe)."""
    from zoo.models.datasets import inr_targets

    split = recipe.inr.get("split", "train")
    return inr_targets(ds, split=split, n=int(recipe.inr.get("n", 100)), seed=int(recipe.inr.get("seed", 0)))


# ---------------------------------------------------------------------------------- unit of work
def train_shard(recipe: Recipe, runs: Sequence[Run], data: Any, *, init_params: dict[str, torch.Tensor] | None = None,
                progress: bool = True) -> Iterator[Checkpoint]:  # fmt: skip
    """Train one shard (same architecture) and yield its checkpoints: the builder's unit of work."""
    pts = [r.point for r in runs]

    def per(name: str, default: float) -> list[float]:
        return [float(p.get(name, default)) for p in pts]

    task = "regression" if recipe.task == "inr" else "classification"
    spec = TrainSpec(
        config=runs[0].arch, n=len(runs), seeds=[int(p["seed"]) for p in pts], epochs=recipe.epochs,
        checkpoint_epochs=list(recipe.checkpoint_epochs), lr=per("lr", 1e-3), weight_decay=per("weight_decay", 0.0),
        dropout=per("dropout", 0.0), init_scale=per("init_scale", 1.0), label_noise=per("label_noise", 0.0),
        data_fraction=per("data_fraction", 1.0), optimizer=str(pts[0].get("optimizer", recipe.optimizer)),
        batch_size=int(pts[0].get("batch_size", recipe.batch_size)), task=task, rank=int(pts[0].get("rank", 0)),
        init_seeds=[int(p.get("init_seed", p["seed"])) for p in pts] if any("init_seed" in p for p in pts) else None,
    )  # fmt: skip
    if task == "regression":
        idx = torch.tensor([p["inr_index"] for p in pts])
        data = _Targets(data.coords, data.targets[idx])
    yield from train_population(spec, data, progress=progress, init_params=init_params)


@dataclass
class _Targets:
    coords: torch.Tensor
    targets: torch.Tensor


# ---------------------------------------------------------------------------------- build
def build(
    zoo: Zoo,
    recipe: Recipe | str,
    *,
    progress: bool = True,
    max_shard: int = 512,
    resume: bool = True,
    dataset_root: str | None = None,
    workers: int = 1,
    executor: str | Executor | None = None,
    address: str | None = None,
    timeout: float = 30.0,
    threads: int | None = 1,
) -> BuildReport:
    """Train a recipe's runs and write every checkpoint to ``zoo``. Interrupt-safe and resumable.

    By default the shards train in this process, each checkpoint written as soon as it is made. With
    ``workers > 1``, ``executor`` (``"process"``, ``"ray"`` or an :class:`~zoo.build.executors.Executor`)
    or a Ray ``address``, the runs are split into at least ``workers`` shards that train elsewhere (each
    worker with ``threads`` torch threads) and come back whole; the driver writes them through
    ``Zoo.add_many`` in shard order, so the catalog is what an in-process build with the same shards
    writes (see :mod:`zoo.build.executors`).

    ``threads`` (default 1) is also the torch thread count of an in-process build: the builder's models
    are small, and on a 2-core machine more threads than free cores make OpenMP spin (measured: the
    250-model ``digits-mlp-seeds`` in 19-30 s on 1 thread vs 205-209 s on 2 at load 5; 8 s vs 7 s idle).
    ``None`` keeps torch's setting.
    """
    from zoo.build.executors import make_executor

    if isinstance(recipe, str):
        recipe = Recipe.load(recipe)
    ex = None if executor is None and workers <= 1 and not address else make_executor(
        executor, workers, address=address, timeout=timeout)  # Ray missing / cluster down: fail before training
    t0 = time.perf_counter()
    rep = BuildReport(recipe.name)
    runs = plan_runs(recipe, zoo)
    rep.runs = len(runs)
    existing = _existing_names(zoo, recipe.name) if resume else {}
    epochs = recipe.checkpoint_epochs
    todo = [r for r in runs if not all(r.name(e) in existing for e in epochs)]
    rep.runs_skipped = len(runs) - len(todo)
    ds = load_data(recipe, todo, root=dataset_root) if todo else None
    if recipe.task == "inr" and todo:
        ds = inr_data(recipe, ds)
        for r in todo:  # which image each INR draws (its index in the split) and its class label
            k = r.point["inr_index"]
            r.point["image"] = int(ds.indices[k])
            r.point["label"] = int(ds.labels[k])
    if ex is not None and ex.workers > 1 and todo:  # at least one shard per worker
        max_shard = min(max_shard, -(-len(todo) // ex.workers))
    shards = shard_runs(todo, max_shard)
    bar = progress_bar(total=len(todo), desc=f"build {recipe.name}", unit="run", disable=not progress)
    try:
        if ex is None:
            with torch_threads(threads):
                for shard in shards:
                    init, data = _shard_inputs(zoo, recipe, shard, ds)
                    _write_shard(zoo, recipe, shard, train_shard(recipe, shard, data, init_params=init,
                                                                 progress=progress), existing, rep)  # fmt: skip
                    bar.update(len(shard))
        else:
            from zoo.build.executors import run_shard_task

            tasks = []
            for shard in shards:
                init, data = _shard_inputs(zoo, recipe, shard, ds)
                tasks.append((recipe, shard, None if data is ds else data, init, threads if threads is not None else 1))
            for shard, ckpts in zip(shards, ex.map(run_shard_task, tasks, shared=ds), strict=True):
                _write_shard(zoo, recipe, shard, iter(ckpts), existing, rep)
                bar.update(len(shard))
    except KeyboardInterrupt:
        rep.interrupted = True
    finally:
        bar.close()
        if ex is not None:
            ex.close()
    rep.seconds = time.perf_counter() - t0
    for p in sorted({r.population for r in runs}):
        try:
            rep.populations[p] = zoo.population(p).count()
        except NotFoundError:
            rep.populations[p] = 0
    return rep


def _shard_inputs(zoo: Zoo, recipe: Recipe, shard: Sequence[Run], ds: Any) -> tuple[Any, Any]:
    """A shard's initial parameters (fine-tunes: its parents, stacked) and its data."""
    init = zoo.stack([r.parent for r in shard]) if recipe.finetune is not None else None
    if recipe.finetune is not None and recipe.finetune.change is not None:  # each child its own data
        from zoo.build.finetune import change_of, shard_data

        return init, shard_data(ds, [change_of(r.point) for r in shard], [int(r.point["seed"]) for r in shard])
    return init, ds


def _write_shard(zoo: Zoo, recipe: Recipe, shard: Sequence[Run], ckpts: Iterator[Checkpoint], existing: dict[str, int],
                 rep: BuildReport) -> None:  # fmt: skip
    """Write a shard's checkpoints in epoch order, one ``add_many`` each (lineage: previous checkpoint)."""
    prev: dict[int, int | None] = {r.index: None for r in shard}
    for ckpt in ckpts:
        items, which = _checkpoint_items(recipe, shard, ckpt, prev, existing)
        if items:
            recs = zoo.add_many(items)
            rep.models_written += len(recs)
            for i, rec in zip(which, recs, strict=True):
                prev[shard[i].index] = rec.id
        for i, r in enumerate(shard):
            if i not in which and r.name(ckpt.epoch) in existing:
                prev[r.index] = existing[r.name(ckpt.epoch)]
    rep.runs_trained += len(shard)


def _existing_names(zoo: Zoo, prefix: str) -> dict[str, int]:
    from sqlalchemy import select

    from zoo.store import schema as S

    with zoo.engine.connect() as c:
        rows = c.execute(select(S.Model.name, S.Model.id).where(S.Model.name.like(prefix.replace("%", r"\%") + "/%", escape="\\")))
        return {n: i for n, i in rows}


def _lineage_params(recipe: Recipe, run: Run, epoch: int) -> dict[str, Any]:
    params: dict[str, Any] = {"recipe": recipe.name, "epoch": epoch}
    if recipe.finetune is not None and "change" in run.point:
        from zoo.build.finetune import change_of

        params["change"] = change_of(run.point)  # the child's label: kind and every argument
        params["rank"] = int(run.point.get("rank", 0))  # 0: a full fine-tune; r: a rank-r (LoRA-style) one
    return params


def _checkpoint_items(recipe: Recipe, shard: Sequence[Run], ckpt: Checkpoint, prev: dict[int, int | None],
                      existing: dict[str, int]) -> tuple[list[NewModel], list[int]]:  # fmt: skip
    metrics = {k: v.tolist() for k, v in ckpt.metrics.items()}
    items, which = [], []
    for i, r in enumerate(shard):
        name = r.name(ckpt.epoch)
        if name in existing:
            continue
        hp = {k: v for k, v in r.point.items()}
        hp.setdefault("optimizer", recipe.optimizer)
        hp.setdefault("batch_size", recipe.batch_size)
        hp["epochs"] = recipe.epochs
        hp["dataset"] = recipe.dataset.get("name", "digits")
        for k in TRAIN_PARAMS:
            hp.setdefault(k, {"lr": 1e-3, "init_scale": 1.0, "data_fraction": 1.0}.get(k, 0.0))
        if recipe.task == "inr":
            hp.pop("label_noise", None), hp.pop("data_fraction", None), hp.pop("dropout", None)
            hp[INR_SPLIT_HPARAM] = str(recipe.inr.get("split", "train"))  # with "image": the INR's target
        m = {k: float(v[i]) for k, v in metrics.items()}
        if recipe.finetune is not None:
            hp["parent"] = r.parent
            if "change" in r.point:
                hp.setdefault("rank", 0)
            if recipe.finetune.corruption:
                hp["corruption"] = recipe.finetune.corruption.get("kind")
                hp["corruption_severity"] = int(recipe.finetune.corruption.get("severity", 3))
            if recipe.finetune.classes:
                hp["classes"] = list(recipe.finetune.classes)
        p = prev[r.index]
        if p is not None:
            parents, op = {p: "previous"}, "train" if recipe.finetune is None else "finetune"
        elif r.parent is not None:
            parents, op = {r.parent: "base"}, "finetune"
        else:
            parents, op = {}, "train"
        items.append(
            NewModel(
                ckpt.model(i), arch=r.arch, population=r.population, name=name, parents=parents, op=op,
                params=_lineage_params(recipe, r, ckpt.epoch), metrics=m, hparams=hp,
                tags=[f"recipe:{recipe.name}"], run=r.run_id, step=ckpt.epoch, source=f"recipe:{recipe.name}",
            )  # fmt: skip
        )
        which.append(i)
    return items, which
