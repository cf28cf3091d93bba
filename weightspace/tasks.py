"""Weight-space tasks over zoo populations: data, run-grouped splits, training, evaluation, model search.

    from weightspace.tasks import load_task, split_by_run, run_task, similar
    data = load_task(zoo, "accuracy")                      # digits-mlp: predict test accuracy from weights
    res = run_task(zoo, "np", "accuracy", {"epochs": 100}, seed=0)
    res.metrics                                            # {"kendall_tau": ..., "r2": ..., "mae": ...}
    similar(zoo, 42, res.encoder, k=5)                     # nearest neighbours in embedding space

Tasks (:data:`TASKS`):

* ``accuracy`` -- regression of a metric (default ``test_acc``) of a classifier population
  (default ``digits-mlp``, every checkpoint); scored with Kendall's tau, R^2 and MAE.
* ``inr-class`` -- classification of INRs by the hyperparameter ``label`` (default ``digits-inr``: the
  digit each SIREN represents); scored with accuracy. INRs of the same image (hyperparameter ``image``,
  e.g. the two random-init "views" of ``digits-inr-views``) are one group, so they share a side of the split.
* ``hparam-bucket`` -- classification of a numeric hyperparameter's quantile bucket (default ``lr``,
  3 buckets over ``digits-mlp``); scored with accuracy.

Splits are **by run** (:func:`split_by_run`): every checkpoint of one training run lands on the same
side, so no model is scored after its own earlier or later checkpoint was trained on.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from weightspace.augment import AlignFn
from weightspace.encoders import Encoder, TorchEncoder, make_encoder
from weightspace.encoders.base import load_encoder
from weightspace.spec import PermutationSpec, spec_for
from zoo.errors import ConfigError, MismatchError, NotFoundError

__all__ = [
    "TaskData",
    "TaskResult",
    "TASKS",
    "load_task",
    "split_by_run",
    "score",
    "run_task",
    "similar",
    "store_encoder",
    "encoder_from_zoo",
    "write_outputs",
    "encode_shard",
]


@dataclass
class TaskData:
    """A task's inputs and targets.

    Shapes:
        X: ``name -> [N, *shape]``; y: ``[N]``; groups: ``[N]`` run of each model (its own id when it has
        none); ids: ``[N]`` model ids.
    """

    task: str
    kind: str  # "regression" | "classification"
    population: str
    X: dict[str, Tensor]
    y: np.ndarray
    groups: np.ndarray
    ids: list[int]
    spec: PermutationSpec
    config: dict[str, Any] | None
    info: dict[str, Any] = field(default_factory=dict)

    def subset(self, idx: np.ndarray) -> dict[str, Tensor]:
        t = torch.as_tensor(idx, dtype=torch.long)
        return {k: v[t] for k, v in self.X.items()}


def _population(zoo: Any, population: str) -> Any:
    """``zoo.population(population)``, or a NotFoundError that lists the zoo's populations."""
    names = {p.name for p in zoo.populations()}
    if population not in names:
        raise NotFoundError(
            f"no population {population!r} in the zoo at {zoo.root}; populations: {', '.join(sorted(names)) or 'none'} "
            f"(build one with `weightzoo build {population} --root {zoo.root}`)"
        )
    return zoo.population(population)


def _load_population(zoo: Any, population: str, final: bool) -> tuple[pd.DataFrame, dict[str, Tensor], dict | None]:
    q = _population(zoo, population)
    if final:
        q = q.final()
    df = q.df()
    if df.empty:
        raise NotFoundError(f"population {population!r} has no models")
    X = zoo.stack(df["id"].astype(int).tolist())
    return df, X, q.config if hasattr(q, "config") else zoo.population(population).config


def _groups(df: pd.DataFrame) -> np.ndarray:
    runs = df["run"].astype(object).where(df["run"].notna(), None).tolist()
    return np.asarray([r if r is not None else f"model:{i}" for r, i in zip(runs, df["id"], strict=True)], dtype=object)


def _spec(config: Mapping[str, Any] | None, X: Mapping[str, Tensor]) -> PermutationSpec:
    """The population's permutation spec, from its architecture (declared or traced)."""
    if config is None:
        raise ConfigError("the population has no architecture config, so it has no permutation spec; "
                          "give its models a buildable architecture (weightzoo ingest --arch ...)")  # fmt: skip
    return spec_for(config)


def _task_accuracy(zoo: Any, population: str | None, metric: str = "test_acc", final: bool = False) -> TaskData:
    population = population or "digits-mlp"
    df, X, cfg = _load_population(zoo, population, final)
    if metric not in df.columns:
        cols = [c for c in df.columns if c.split("_")[0] in ("train", "val", "test")]
        raise ConfigError(f"population {population!r} has no metric {metric!r}; metrics: {', '.join(cols)}")
    keep = df[metric].notna().to_numpy()
    df = df[keep].reset_index(drop=True)
    X = {k: v[torch.tensor(keep)] for k, v in X.items()}
    return TaskData("accuracy", "regression", population, X, df[metric].to_numpy(float), _groups(df),
                    df["id"].astype(int).tolist(), _spec(cfg, X), cfg, {"metric": metric})  # fmt: skip


def _task_inr(zoo: Any, population: str | None, label: str = "label") -> TaskData:
    population = population or "digits-inr"
    df, X, cfg = _load_population(zoo, population, True)
    col = f"hp_{label}"
    if col not in df.columns:
        raise ConfigError(f"population {population!r} has no hyperparameter {label!r} to classify by")
    keep = df[col].notna().to_numpy()
    df = df[keep].reset_index(drop=True)
    X = {k: v[torch.tensor(keep)] for k, v in X.items()}
    y = df[col].to_numpy()
    y = y.astype(int) if all(float(v).is_integer() for v in y if isinstance(v, int | float)) else y.astype(str)
    groups = _groups(df)
    if "hp_image" in df.columns and df["hp_image"].notna().all():  # views of one image stay on one side
        groups = np.asarray([f"image:{int(v)}" for v in df["hp_image"]], dtype=object)
    return TaskData("inr-class", "classification", population, X, y, groups, df["id"].astype(int).tolist(),
                    _spec(cfg, X), cfg, {"label": label})  # fmt: skip


def _task_hparam(zoo: Any, population: str | None, hparam: str = "lr", buckets: int = 3, final: bool = False) -> TaskData:
    population = population or "digits-mlp"
    df, X, cfg = _load_population(zoo, population, final)
    col = f"hp_{hparam}"
    if col not in df.columns:
        hp = [c[3:] for c in df.columns if c.startswith("hp_")]
        raise ConfigError(f"population {population!r} has no hyperparameter {hparam!r}; hyperparameters: {', '.join(hp)}")
    v = pd.to_numeric(df[col], errors="coerce")
    keep = v.notna().to_numpy()
    df, v = df[keep].reset_index(drop=True), v[keep].to_numpy(float)
    X = {k: t[torch.tensor(keep)] for k, t in X.items()}
    edges = np.quantile(v, np.linspace(0, 1, buckets + 1)[1:-1])
    y = np.searchsorted(edges, v, side="right")
    if len(np.unique(y)) < 2:
        raise ConfigError(f"hyperparameter {hparam!r} does not vary enough for {buckets} buckets")
    return TaskData("hparam-bucket", "classification", population, X, y, _groups(df), df["id"].astype(int).tolist(),
                    _spec(cfg, X), cfg, {"hparam": hparam, "buckets": buckets, "edges": edges.tolist()})  # fmt: skip


#: task name -> loader(zoo, population, **options)
TASKS: dict[str, Callable[..., TaskData]] = {
    "accuracy": _task_accuracy,
    "inr-class": _task_inr,
    "hparam-bucket": _task_hparam,
}


def load_task(zoo: Any, task: str, population: str | None = None, **options: Any) -> TaskData:
    """Load a task's data from the zoo (see the module docstring for tasks and their options)."""
    if task not in TASKS:
        raise ConfigError(f"unknown task {task!r}; valid: {', '.join(TASKS)}")
    try:
        return TASKS[task](zoo, population, **options)
    except TypeError as e:
        raise ConfigError(f"bad option for task {task!r}: {e}") from None


def split_by_run(groups: np.ndarray, test_fraction: float = 0.2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(train, test)`` with whole runs on one side; ``test_fraction`` of the runs held out."""
    if not 0 < test_fraction < 1:
        raise ConfigError(f"test_fraction must lie in (0, 1), got {test_fraction}")
    runs = np.unique(np.asarray(groups, dtype=object).astype(str))
    if len(runs) < 2:
        raise ConfigError("a run-grouped split needs models of at least two runs")
    rng = np.random.default_rng(seed)
    n_test = min(len(runs) - 1, max(1, round(test_fraction * len(runs))))
    test_runs = set(rng.choice(runs, n_test, replace=False).tolist())
    is_test = np.array([str(g) in test_runs for g in groups])
    return np.flatnonzero(~is_test), np.flatnonzero(is_test)


def score(kind: str, y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """Regression: Kendall tau, R^2, MAE; classification: accuracy."""
    if kind == "regression":
        from scipy.stats import kendalltau
        from sklearn.metrics import mean_absolute_error, r2_score

        y_true, y_pred = np.asarray(y_true, float), np.asarray(y_pred, float)
        return {
            "kendall_tau": float(kendalltau(y_true, y_pred)[0]),
            "r2": float(r2_score(y_true, y_pred)),
            "mae": float(mean_absolute_error(y_true, y_pred)),
        }
    return {"accuracy": float(np.mean(np.asarray(y_true).astype(str) == np.asarray(y_pred).astype(str)))}


@dataclass
class TaskResult:
    """A trained encoder and its held-out scores."""

    task: str
    encoder: Encoder
    metrics: dict[str, float]
    train_seconds: float
    n_train: int
    n_test: int
    population: str
    seed: int
    train_ids: list[int] = field(default_factory=list)
    test_ids: list[int] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": self.task, "encoder": self.encoder.name, "params": self.encoder.get_params(),
            "population": self.population, "seed": self.seed, "metrics": self.metrics,
            "train_seconds": self.train_seconds, "n_train": self.n_train, "n_test": self.n_test,
        }  # fmt: skip


def run_task(
    zoo: Any,
    encoder: str | Encoder,
    task: str | TaskData,
    config: Mapping[str, Any] | None = None,
    *,
    population: str | None = None,
    seed: int = 0,
    test_fraction: float = 0.2,
    align: AlignFn | None = None,
    progress: bool = False,
) -> TaskResult:
    """Train ``encoder`` (a registered name + ``config``, or an unfitted encoder) on a run-grouped split of
    ``task`` and score it on the held-out runs. ``seed`` seeds both the split and the encoder."""
    data = task if isinstance(task, TaskData) else load_task(zoo, task, population)
    if isinstance(encoder, str):
        enc = make_encoder(encoder, **{"task": data.kind, "seed": seed, **dict(config or {})})
    else:
        enc = encoder
        if config:
            enc.set_params(**config)
    if getattr(enc, "task", data.kind) != data.kind:
        raise ConfigError(f"encoder task {enc.task!r} does not fit task {data.task!r} ({data.kind})")  # type: ignore[attr-defined]
    tr, te = split_by_run(data.groups, test_fraction, seed)
    t0 = time.perf_counter()
    enc.fit(data.subset(tr), data.y[tr], spec=data.spec, align=align, arch=data.config, progress=progress)  # type: ignore[attr-defined]
    secs = time.perf_counter() - t0
    pred = enc.predict(data.subset(te))  # type: ignore[attr-defined]
    ids = np.asarray(data.ids)
    return TaskResult(data.task, enc, score(data.kind, data.y[te], pred), secs, len(tr), len(te), data.population, seed,
                      ids[tr].tolist(), ids[te].tolist())  # fmt: skip


# ----------------------------------------------------------------------------------------------
# Model search


def similar(
    zoo: Any,
    model: int | str,
    encoder: Encoder,
    *,
    population: str | None = None,
    k: int = 5,
    metric: str = "cosine",
) -> pd.DataFrame:
    """The ``k`` models of ``population`` (default: the model's own) nearest to ``model`` in embedding space.

    Returns a frame: id, name, distance, and the models' metrics/hyperparameters (``ModelQuery.df()`` columns).
    """
    rec = zoo.get(model)
    population = population or rec.population
    if population is None:
        raise ConfigError(f"model {rec.id} has no population; give population=... to search in")
    q = zoo.population(population)
    df = q.df()
    ids = df["id"].astype(int).tolist()
    X = zoo.stack(ids)
    try:
        E = np.asarray(encoder.transform(X), dtype=np.float64)  # type: ignore[attr-defined]
        e0 = np.asarray(encoder.transform({k2: v.unsqueeze(0) for k2, v in rec.state_dict().items() if k2 in X}),
                        dtype=np.float64)[0]  # fmt: skip
    except MismatchError as e:
        raise MismatchError(f"model {rec.id} or population {population!r} does not fit the encoder: {e}") from None
    if metric == "cosine":
        En = E / np.linalg.norm(E, axis=1, keepdims=True).clip(1e-12)
        d = 1 - En @ (e0 / max(np.linalg.norm(e0), 1e-12))
    elif metric == "euclidean":
        d = np.linalg.norm(E - e0, axis=1)
    else:
        raise ConfigError(f"unknown distance {metric!r}; valid: cosine, euclidean")
    df = df.assign(distance=d)
    df = df[df["id"] != rec.id].sort_values("distance", kind="stable").head(k)
    front = ["id", "name", "distance"]
    return df[front + [c for c in df.columns if c not in front and c not in ("population", "architecture", "source",
                                                                            "created_at", "nbytes", "n_params", "op")]]


# ----------------------------------------------------------------------------------------------
# Trained encoders as zoo models


def store_encoder(zoo: Any, result: TaskResult, *, population: str = "encoders", tags: tuple[str, ...] = ()) -> Any:
    """Store a trained torch encoder in the zoo: its network's state dict, op ``train.encoder``, hyperparameters
    ``encoder`` (name), ``task``, ``trained_on`` (population) and ``encoder_doc`` (the JSON config + learned
    state that :func:`encoder_from_zoo` rebuilds it from), its held-out metrics, tags ``encoder``,
    ``encoder:<name>``, ``task:<task>``, and lineage: every model it was trained on is a parent (role
    ``train``), so ``zoo.lineage(encoder)`` leads back to its training population. Populations hold one
    architecture each, so the default population name gets the encoder's name and task appended.
    """
    enc = result.encoder
    if not isinstance(enc, TorchEncoder):
        raise ConfigError(f"only torch encoders can be stored in the zoo (not {enc.name!r}: its model is a scikit-learn pickle)")
    state, tensors = enc._fitted_state()
    doc = {"encoder": enc.name, "params": enc.get_params(), "state": state}
    pop = f"{population}/{result.task}-{enc.name}-{result.population}"
    return zoo.add(
        tensors,
        population=pop,
        op="train.encoder",
        hparams={"encoder": enc.name, "task": result.task, "trained_on": result.population, "seed": result.seed,
                 "encoder_doc": json.dumps(doc)},  # fmt: skip
        metrics={f"test_{k}": v for k, v in result.metrics.items()},
        tags=("encoder", f"encoder:{enc.name}", f"task:{result.task}", *tags),
        source=f"weightspace.tasks:{result.task}",
        parents={int(i): "train" for i in result.train_ids},
        params={"task": result.task, "seed": result.seed, "n_train": result.n_train, "n_test": result.n_test},
    )


def write_outputs(
    zoo: Any,
    encoder: Encoder,
    table: str,
    *,
    population: str | None = None,
    result: TaskResult | None = None,
    produced_by: int | str | None = None,
    embeddings: bool = True,
    batch: int = 1024,
    workers: int = 1,
    executor: Any = None,
    address: str | None = None,
    timeout: float = 30.0,
) -> Any:
    """Write an encoder's outputs for every model of ``population`` as the derived table ``table``
    (:meth:`zoo.Zoo.write_table`), queryable with ``Zoo.sql`` and joinable with the catalog.

    ``workers``/``executor``/``address``/``timeout`` (:mod:`zoo.build.executors`): with ``workers > 1``
    (a local process pool), ``executor="ray"`` or a Ray ``address``, the population is cut into
    ``workers`` shards run by :func:`encode_shard`: the workers get the fitted encoder and the shard's
    stacked weights (never the zoo), and this process writes the table. The same shards give the same
    bits on every executor (``executor="inprocess", workers=N`` runs them here); shards of another size
    may differ in the last float bits (measured up to 6e-8 on accuracy predictions).

    Columns: ``model_id``, ``prediction`` (regression value or class label), ``embedding`` (a float vector,
    unless ``embeddings=False``), and, given the ``result`` of :func:`run_task`, ``split`` (``train``,
    ``test`` or NULL for models the encoder neither trained nor was scored on). ``population`` defaults to
    the one the result was trained on. ``produced_by``: the stored encoder (id or name), for lineage.

    Example::

        res = run_task(z, "np", "accuracy")
        enc = store_encoder(z, res)
        write_outputs(z, res.encoder, "acc_pred", result=res, produced_by=enc.id)
        z.sql("select m.name, t.prediction, w.test_acc from acc_pred t join model_overview m on m.id = t.model_id "
              "join metrics_wide w on w.model_id = t.model_id where t.split = 'test'")
    """
    population = population or (result.population if result is not None else None)
    if population is None:
        raise ConfigError("give population=... (or result=...) to write outputs for")
    ids = _population(zoo, population).df()["id"].astype(int).tolist()
    if not ids:
        raise NotFoundError(f"population {population!r} has no models")
    from zoo.build.executors import executor_scope, shard_bounds

    with executor_scope(executor, workers, address=address, timeout=timeout) as ex:
        if ex is None:
            parts = (_encode(encoder, zoo.stack(ids[i : i + batch]), embeddings) for i in range(0, len(ids), batch))
        else:
            tasks = [(zoo.stack(ids[a:b]),) for a, b in shard_bounds(len(ids), ex.workers)]
            parts = ex.map(encode_shard, tasks, shared=(encoder, embeddings))
        try:
            done = list(parts)
        except MismatchError as e:
            raise MismatchError(f"population {population!r} does not fit the encoder: {e}") from None
    frame = pd.DataFrame({"model_id": ids, "prediction": np.concatenate([p for p, _ in done])})
    if embeddings:
        frame["embedding"] = list(np.concatenate([e for _, e in done]))
    if result is not None:
        side = {**{i: "train" for i in result.train_ids}, **{i: "test" for i in result.test_ids}}
        frame["split"] = pd.Series([side.get(i) for i in ids], dtype=object)
    desc = f"outputs of encoder {encoder.name!r} on population {population!r}"
    if result is not None:
        desc += f" (task {result.task}, seed {result.seed})"
    return zoo.write_table(table, frame, description=desc, produced_by=produced_by)


def encode_shard(shared: tuple[Encoder, bool], X: Mapping[str, Tensor]) -> tuple[np.ndarray, np.ndarray | None]:
    """One shard of :func:`write_outputs` (an executor task): ``shared`` is ``(fitted encoder, embeddings?)``;
    returns ``(predictions [n], embeddings [n, D] float32 or None)`` of the stacked models ``X``.

    Shapes:
        X: ``name -> [n, *shape]``.
    """
    from zoo.threads import torch_threads

    encoder, embeddings = shared
    with torch_threads(1):  # one thread per worker: the workers share the cores
        return _encode(encoder, X, embeddings)


def _encode(encoder: Encoder, X: Mapping[str, Tensor], embeddings: bool) -> tuple[np.ndarray, np.ndarray | None]:
    pred = np.asarray(encoder.predict(X))  # type: ignore[attr-defined]
    return pred, np.asarray(encoder.transform(X), dtype=np.float32) if embeddings else None  # type: ignore[attr-defined]


def encoder_from_zoo(zoo: Any, model: int | str) -> Encoder:
    """Rebuild a trained encoder stored with :func:`store_encoder`."""
    rec = zoo.get(model)
    hp = rec.hparams()
    if rec.op != "train.encoder" or "encoder_doc" not in hp:
        raise ConfigError(f"model {rec.id} is not a stored encoder (op {rec.op!r}); store one with store_encoder()")
    doc = json.loads(hp["encoder_doc"])
    enc = make_encoder(doc["encoder"], **doc["params"])
    enc._restore(doc["state"], rec.state_dict())
    return enc


__all__ += ["load_encoder"]
