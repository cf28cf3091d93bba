"""Evaluate a population of same-architecture models at once, with stacked weights.

``params`` is a dict ``name -> Tensor[N, ...]`` (state-dict names, BN buffers included; see
:mod:`zoo.models.architectures`). :func:`functional_forward` dispatches a config to the batched kernels
of :mod:`kernels.batched`; :func:`evaluate_population` computes per-model loss and accuracy over a
data set in chunks; :func:`evaluate_module_loop` is the naive reference (one ``nn.Module`` per model).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor

from kernels import batched
from zoo.errors import ConfigError, MismatchError
from zoo.models import architectures as archs
from zoo.models.architectures import check_stacked, instantiate, normalize_config

if TYPE_CHECKING:
    import pandas as pd

    from zoo.facade import Zoo
    from zoo.store.records import ModelRecord

#: The memory one evaluation chunk may use for activations (bytes).
MEMORY_BUDGET = 1 << 30
#: Models are chunked further so that a chunk's activations stay cache-sized when that still leaves
#: at least ``MIN_MODEL_CHUNK`` models per chunk (measured on 2-core EPYC: ~3x faster than one chunk).
CACHE_BUDGET = 8 << 20
MIN_MODEL_CHUNK = 16

TASKS = ("classification", "regression")

# ----------------------------------------------------------------------------------------------
# Forward dispatch

def functional_forward(
    config: Mapping,
    params: Mapping[str, Tensor],
    x: Tensor,
    *,
    training: bool = False,
    dropout: Tensor | None = None,
    dropout_keys: Tensor | None = None,
    taps: dict[str, list[Tensor]] | None = None,
) -> Tensor:
    """Run all N models of a stacked population on ``x``, with the batched forward its family declares.

    ``training`` switches dropout and BatchNorm to training mode (batch statistics; the running
    buffers in ``params`` are updated in place). ``dropout`` gives each model its own probability;
    when None, the config's ``dropout`` is used for every model. ``dropout_keys`` makes the masks
    reproducible per model (see :func:`kernels.batched.keyed_uniform`).

    Shapes:
        params: ``name -> [N, *shape]``; x: shared ``[B, *in]`` or per model ``[N, B, *in]``
        (``*in`` = ``(features,)`` for mlp/siren, ``(C, H, W)`` for cnn/resnet); dropout,
        dropout_keys: ``[N]``. Returns ``[N, B, out]``. ``taps`` (a dict) collects every hidden
        activation by permutation group (see :func:`kernels.batched.mlp_forward`).
    """
    cfg = normalize_config(config)
    forward = archs.get_family(cfg).forward
    if forward is None:
        batched_families = [f for f in archs.known_families() if archs.get_family(f).forward is not None]
        raise ConfigError(
            f"no batched forward for architecture family {cfg['family']!r}; "
            f"batched families: {', '.join(batched_families)}"
        )
    if training and dropout is None and cfg.get("dropout", 0.0) > 0:
        n = batched.population_size(params)
        dropout = torch.full((n,), cfg["dropout"])
    return forward(cfg, params, x, training=training, dropout=dropout, dropout_keys=dropout_keys, taps=taps)


# ----------------------------------------------------------------------------------------------
# Evaluation


@dataclass
class EvalResult:
    """Per-model results of evaluating a population on one data set.

    Shapes:
        loss, accuracy, psnr: ``[N]``. accuracy is NaN for regression; psnr is None for
        classification. ``n_samples`` is the number of samples (per model, when masked: ``[N]``).
    """

    loss: Tensor
    accuracy: Tensor
    psnr: Tensor | None = None
    n_samples: int | Tensor = 0

    def as_dict(self, prefix: str = "") -> dict[str, Tensor]:
        """``{prefix}loss``, ``{prefix}acc`` (classification) or ``{prefix}psnr`` (regression)."""
        out = {f"{prefix}loss": self.loss}
        if self.psnr is None:
            out[f"{prefix}acc"] = self.accuracy
        else:
            out[f"{prefix}psnr"] = self.psnr
        return out


def _check_task(task: str) -> None:
    if task not in TASKS:
        raise ConfigError(f"unknown task {task!r}; valid tasks: {', '.join(TASKS)}")


def _floats_per_sample(cfg: dict) -> int:
    """A rough upper bound on the activation floats one model needs per sample (declared by its family)."""
    return archs.activation_floats(cfg)


def _chunks(total: int, size: int) -> list[slice]:
    return [slice(i, min(i + size, total)) for i in range(0, total, max(1, size))]


def _psnr(mse: Tensor, target_range: Tensor) -> Tensor:
    """PSNR in dB of a per-model MSE, with each model's target range (max - min) as peak."""
    return 10.0 * torch.log10(target_range.clamp_min(1e-12) ** 2 / mse.clamp_min(1e-20))


def _target_range(y: Tensor, n: int) -> Tensor:
    """Each model's target range; y: ``[P, out]`` (shared) or ``[N, P, out]``."""
    if y.dim() == 3:
        flat = y.reshape(n, -1)
        return flat.amax(1) - flat.amin(1)
    return (y.max() - y.min()).expand(n).clone()


def evaluate_population(
    config: Mapping,
    params: Mapping[str, Tensor],
    X: Tensor,
    y: Tensor,
    *,
    batch_size: int = 4096,
    task: str = "classification",
    mask: Tensor | None = None,
) -> EvalResult:
    """Per-model loss and accuracy (or MSE and PSNR) of a stacked population, under ``no_grad``.

    Classification: mean cross-entropy and accuracy. Regression (e.g. SIREN fits): mean squared
    error, accuracy NaN, and PSNR with each model's target range as peak. Data are processed in
    chunks of ``batch_size`` samples, and models in chunks small enough that one chunk's
    activations stay under ~1 GB. BatchNorm uses its running statistics.

    Shapes:
        X: shared ``[n, *in]`` or per model ``[N, n, *in]``; y: classification ``[n]`` or ``[N, n]``
        (int64 labels), regression ``[n, out]`` or ``[N, n, out]``; mask: ``[N, n]`` bool, which
        samples count for each model (e.g. each model's own training subset), or None for all.
    """
    _check_task(task)
    cfg = normalize_config(config)
    n_models = check_stacked(cfg, params)
    per_model_x = X.dim() == _input_dims(cfg) + 2
    n_data = X.shape[1] if per_model_x else X.shape[0]
    if y.shape[int(_per_model_y(y, task))] != n_data:
        raise MismatchError(
            f"X has {n_data} samples but y has shape {tuple(y.shape)}; give one target per sample"
        )
    per_batch = max(1, min(batch_size, n_data))
    per_model_bytes = 4 * per_batch * _floats_per_sample(cfg)
    model_chunk = max(1, MEMORY_BUDGET // per_model_bytes)
    model_chunk = min(model_chunk, max(MIN_MODEL_CHUNK, CACHE_BUDGET // per_model_bytes))
    loss_sum = torch.zeros(n_models, dtype=torch.float64)
    hit_sum = torch.zeros(n_models, dtype=torch.float64)
    with torch.no_grad():
        for ms in _chunks(n_models, model_chunk):
            chunk = {k: v[ms] for k, v in params.items()}
            for ds in _chunks(n_data, per_batch):
                xb = X[ms, ds] if per_model_x else X[ds]
                yb = y[ms, ds] if _per_model_y(y, task) else y[ds]
                out = functional_forward(cfg, chunk, xb.float())
                losses, hits = per_sample_loss(out, yb, task)
                if mask is not None:
                    m = mask[ms, ds].to(losses.dtype)
                    losses, hits = losses * m, hits * m
                loss_sum[ms] += losses.sum(1).double()
                hit_sum[ms] += hits.sum(1).double()
    counts = mask.sum(1).double().clamp_min(1) if mask is not None else torch.full((n_models,), float(n_data))
    loss = (loss_sum / counts).float()
    if task == "classification":
        return EvalResult(loss, (hit_sum / counts).float(), None, _count(mask, n_data))
    psnr = _psnr(loss, _target_range(y, n_models))
    return EvalResult(loss, torch.full((n_models,), math.nan), psnr, _count(mask, n_data))


def _count(mask: Tensor | None, n_data: int) -> int | Tensor:
    return n_data if mask is None else mask.sum(1)


def _input_dims(cfg: dict) -> int:
    return len(archs.input_shape(cfg))


def _per_model_y(y: Tensor, task: str) -> bool:
    return y.dim() == (2 if task == "classification" else 3)


def per_sample_loss(out: Tensor, y: Tensor, task: str = "classification") -> tuple[Tensor, Tensor]:
    """Per-(model, sample) loss and hit (1.0 when the target class has the top logit).

    Works class-major (``out.transpose(1, 2)``: classes on axis 1), where log-softmax and max are
    fast and the batched kernels' outputs are already contiguous. A hit is ``logit[target] ==
    max(logits)``, which equals ``argmax == target`` except on exact ties.

    Shapes:
        out: ``[N, b, K]``; y: classification ``[b]`` or ``[N, b]`` (int64), regression ``[b, K]``
        or ``[N, b, K]``. Returns two ``[N, b]`` tensors (hits are 0 for regression).
    """
    n, b, k = out.shape
    if task == "classification":
        target = y.expand(n, b) if y.dim() == 1 else y
        logits = out.transpose(1, 2)
        losses = F.cross_entropy(logits, target, reduction="none")
        hits = logits.gather(1, target.unsqueeze(1)).squeeze(1) >= logits.amax(1)
        return losses, hits.to(out.dtype)
    target = y.expand(n, b, k) if y.dim() == 2 else y
    losses = (out - target.to(out.dtype)).pow(2).mean(-1)
    return losses, torch.zeros_like(losses)


def evaluate_module_loop(
    config: Mapping,
    params: Mapping[str, Tensor],
    X: Tensor,
    y: Tensor,
    *,
    task: str = "classification",
) -> EvalResult:
    """The naive reference: instantiate each model as an ``nn.Module`` and run it on the data.

    Same arguments and results as :func:`evaluate_population` (without chunking and masks).
    """
    _check_task(task)
    cfg = normalize_config(config)
    n_models = check_stacked(cfg, params)
    per_model_x = X.dim() == _input_dims(cfg) + 2
    losses, accs = [], []
    with torch.no_grad():
        for i in range(n_models):
            module = instantiate(cfg, {k: v[i] for k, v in params.items()})
            out = module(X[i] if per_model_x else X).unsqueeze(0)
            yi = y[i] if _per_model_y(y, task) else y
            loss, hit = per_sample_loss(out, yi, task)
            losses.append(loss.mean())
            accs.append(hit.mean())
    loss = torch.stack(losses).float()
    n_data = X.shape[1] if per_model_x else X.shape[0]
    if task == "classification":
        return EvalResult(loss, torch.stack(accs).float(), None, n_data)
    return EvalResult(
        loss, torch.full((n_models,), math.nan), _psnr(loss, _target_range(y, n_models)), n_data
    )


__all__ = [
    "functional_forward",
    "EvalResult",
    "evaluate_population",
    "evaluate_module_loop",
    "TASKS",
    "per_sample_loss",
]


# ----------------------------------------------------------------------------------------------
# Stored models


def evaluate_models(
    zoo: Zoo,
    models: Sequence[int | str],
    *,
    dataset: str = "digits",
    splits: Sequence[str] = ("test",),
    dataset_root: str | None = None,
    seed: int = 0,
    record: bool = True,
    step: int | None = None,
    workers: int = 1,
    executor: Any = None,
    address: str | None = None,
    timeout: float = 30.0,
) -> pd.DataFrame:
    """Evaluate stored classifiers and INRs (one batched pass per architecture) and record the metrics.

    Returns a DataFrame (model_id, split, loss, acc, and psnr when INRs are among the models). With
    ``record`` the metrics are stored as ``<split>_loss`` / ``<split>_acc``; a corrupted test split
    (``dataset="digits-c/rotate/3"``) is recorded as split ``test/rotate/3``. An INR (a SIREN fitted by an
    INR recipe) is evaluated on its own image whatever ``splits`` says (:mod:`zoo.build.inr`), in this
    process, and recorded as the builder records it: ``train_loss`` (MSE) and ``psnr``. Models whose architecture cannot be built, is neither a
    classifier nor an INR, or an INR whose image is unknown (added by hand) raise :class:`ConfigError`
    before anything is recorded. With ``workers > 1``, an ``executor`` (``"process"``,
    ``"ray"``) or a Ray ``address``, each architecture's models are split into ``workers`` shards
    evaluated elsewhere (:mod:`zoo.build.executors`); the metrics are recorded here, in one transaction.
    ``timeout``: seconds a Ray cluster at ``address`` gets to answer. An :class:`~zoo.build.executors.Executor`
    passed in is left open (its owner closes it).
    """
    from zoo.build.executors import executor_scope

    with executor_scope(executor, workers, address=address, timeout=timeout) as ex:
        return _evaluate(zoo, models, dataset, splits, dataset_root, seed, record, step, ex)


def _evaluate(zoo: Zoo, models: Sequence[int | str], dataset: str, splits: Sequence[str], dataset_root: str | None,
              seed: int, record: bool, step: int | None, ex: Any) -> pd.DataFrame:  # fmt: skip
    import pandas as pd

    from zoo.models.datasets import load_dataset

    with zoo.engine.connect() as conn:
        ids = [zoo.catalog.model_id(conn, m) for m in models]
    recs = zoo.records(ids)
    groups: dict[str, list[ModelRecord]] = {}
    inr_groups: dict[str, list[ModelRecord]] = {}
    for r in recs:
        cfg = r.arch_config
        if _is_inr(cfg):
            inr_groups.setdefault(archs.config_hash(cfg), []).append(r)
            continue
        if not archs.is_classifier(cfg):
            raw = isinstance(cfg, Mapping) and cfg.get("family") == archs.RAW_FAMILY
            why = ("it is a raw state dict: no builder, so it cannot be run; re-add it with a buildable architecture "
                   "config (arch=...)" if raw else "its outputs are not class logits")  # fmt: skip
            raise ConfigError(f"model {r.id} ({r.architecture}) is not an evaluable classifier: {why}. Nothing was "
                              "evaluated or recorded; weight-only metrics work for any model (weightzoo landscape)")  # fmt: skip
        groups.setdefault(archs.config_hash(cfg), []).append(r)
    rows = _evaluate_inrs(zoo, inr_groups, dataset_root) if inr_groups else []
    ds_cache: dict[bool, Any] = {}
    for group in groups.values():
        cfg = group[0].arch_config
        flat = len(archs.input_shape(cfg)) == 1
        if flat not in ds_cache:
            ds_cache[flat] = load_dataset(dataset, root=dataset_root, seed=seed).for_architecture(cfg)
        ds = ds_cache[flat]
        W = zoo.stack([r.id for r in group])
        data = {}
        for split in splits:
            X, y = ds.split(split)
            want = tuple(X.shape[1:])
            takes = archs.input_shape(cfg)
            if want != takes if flat else want[0] != takes[0]:
                raise MismatchError(
                    f"architecture {group[0].architecture} takes inputs {archs.describe_input(cfg)}, but data set "
                    f"{dataset!r} has inputs of shape {list(want)}; evaluate on a matching data set"
                )
            data[split] = (X, y)
        try:
            results = _run(cfg, W, data, len(group), ex)
        except RuntimeError as e:
            raise MismatchError(f"cannot evaluate architecture {group[0].architecture} on {dataset!r}: {e}") from None
        for split, res in results.items():
            # a corrupted test split (digits-c) is its own split, so it never overwrites the clean test metrics
            label = f"{split}/{ds.corruption}/{ds.severity}" if split == "test" and ds.corruption else split
            for r, loss, acc in zip(group, res.loss.tolist(), res.accuracy.tolist(), strict=True):
                rows.append({"model_id": r.id, "split": label, "loss": loss, "acc": acc})
    columns = ["model_id", "split", "loss", "acc"] + (["psnr"] if inr_groups else [])
    df = pd.DataFrame(rows, columns=columns)
    if record and rows:
        with zoo.catalog.write() as conn:  # one transaction and one insert, through the one metric path
            zoo.catalog.add_metrics_many(conn, [(r["model_id"], _metric_items(r, step)) for r in rows])
    return df.set_index("model_id").loc[[i for i in ids if i in set(df["model_id"])]].reset_index() if rows else df


def _is_inr(cfg: Any) -> bool:
    """True when ``cfg`` is a buildable implicit neural representation (like ``archs.is_classifier``)."""
    try:
        return cfg is not None and archs.get_family(cfg).head == "inr"
    except ConfigError:  # raw state dicts, unknown families: the classifier check below explains
        return False


def _metric_items(row: Mapping[str, Any], step: int | None) -> list[tuple[str, str, int | None, float]]:
    """A result row as metric rows: ``<split>_loss``/``<split>_acc``; an INR's ``train_loss`` and ``psnr``
    (the names the builder records when it fits one, so a re-evaluation overwrites them with equal values)."""
    if "psnr" in row and row["psnr"] == row["psnr"]:  # an INR (psnr is NaN for classifiers)
        return [("loss", row["split"], step, row["loss"]), ("psnr", "", step, row["psnr"])]
    return [(name, row["split"], step, row[name]) for name in ("loss", "acc")]


def _evaluate_inrs(zoo: Zoo, groups: Mapping[str, Sequence[ModelRecord]], dataset_root: str | None) -> list[dict[str, Any]]:
    """Each stored INR on its own image (:func:`zoo.build.inr.stored_inr_data`): MSE and PSNR, in this process.

    Its data are the pixels of one image (64 for digits), so shards would cost more than they save.
    """
    from zoo.build.inr import stored_inr_data

    rows = []
    for group in groups.values():
        ids = [r.id for r in group]
        data = stored_inr_data(zoo, ids, dataset_root=dataset_root)
        res = evaluate_population(group[0].arch_config, zoo.stack(ids), data.coords, data.targets, task="regression")
        assert res.psnr is not None
        for mid, loss, psnr in zip(ids, res.loss.tolist(), res.psnr.tolist(), strict=True):
            rows.append({"model_id": mid, "split": "train", "loss": loss, "acc": math.nan, "psnr": psnr})
    return rows


def _run(cfg: dict, W: Mapping[str, Tensor], data: dict[str, tuple[Tensor, Tensor]], n: int, ex: Any) -> dict[str, EvalResult]:
    """``{split: EvalResult}`` of the stacked population ``W`` (``n`` models): here, or in shards on ``ex``."""
    if ex is None:
        return {split: evaluate_population(cfg, W, X, y) for split, (X, y) in data.items()}
    from zoo.build.executors import evaluate_shard, shard_bounds

    tasks = [(cfg, {k: v[a:b].clone() for k, v in W.items()}) for a, b in shard_bounds(n, ex.workers)]
    parts = list(ex.map(evaluate_shard, tasks, shared=data))
    return {split: EvalResult(loss=torch.cat([p[split][0] for p in parts]), accuracy=torch.cat([p[split][1] for p in parts]))
            for split in data}  # fmt: skip
