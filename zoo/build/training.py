"""The population builder's unit of work: train N same-architecture models at once.

:func:`train_population` takes a :class:`TrainSpec` (one shard: N models, one architecture config,
per-model hyperparameters and seeds) and a data object, and yields a :class:`Checkpoint` (stacked
weights and per-model metrics) at each requested epoch. It knows nothing of the store, so it runs
unchanged in-process, in a process pool or as a Ray task; results go back through ``Zoo.add``.

How it trains. All N models' tensors are stacked leaves ``[N, ...]``. Every step gathers each
model's own minibatch (``[N, B, ...]``), runs one batched forward (:mod:`kernels.batched`), sums
the models' mean losses (so each model gets exactly its own gradient), does one backward and a
hand-written Adam / AdamW / SGD step with per-model learning rate and weight decay.

Per-model reproducibility. Everything random about model ``n`` comes from its own seed: its init
(``build_module`` under ``torch.manual_seed(seed)``, times ``init_scale``; or under its ``init_seeds``
entry when given, e.g. one shared init for a whole population), its data subset, its
noisy labels and its batch order (a ``torch.Generator`` seeded with ``seed``), and its dropout masks
(a counter-based hash of seed and step, :func:`kernels.batched.keyed_uniform`). So a model trained
in a shard of 1 or of 500 ends with the same weights (up to float rounding).

Semantics worth knowing:

- An epoch is one pass over the model's own training subset (``round(data_fraction * n_train)``
  samples) in batches of ``batch_size``; the incomplete last batch is dropped (PyTorch's
  ``drop_last=True``), so models with smaller subsets take fewer steps and sit idle (no update, no
  optimiser-state change, no BN-statistics change) while the others finish the epoch. A subset
  smaller than one batch makes one batch per epoch, sampled with wrap-around.
- Label noise replaces the labels of ``round(label_noise * n_train)`` training samples (drawn per
  model) with a uniformly drawn *different* class.
- ``optimizer``: "adam" (``torch.optim.Adam``: L2 weight decay added to the gradient), "adamw"
  (decoupled decay, ``torch.optim.AdamW``) or "sgd" (momentum 0.9, L2 weight decay, as
  ``torch.optim.SGD``); betas (0.9, 0.999), eps 1e-8.
- Metrics (``[N]`` each): ``train_loss``/``train_acc`` on each model's own training subset with
  its own (noisy) labels, ``val_*`` and ``test_*`` on the clean splits, ``gen_gap = train_acc -
  test_acc``; for regression (INR fits) ``train_loss`` (MSE) and ``psnr``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from zoo.build.evaluate import TASKS, evaluate_population, functional_forward
from zoo.errors import ConfigError, MismatchError
from zoo.models import architectures as archs
from zoo.models.architectures import check_stacked, init_state, normalize_config, parameter_names
from zoo.progress import progress_bar

OPTIMIZERS = ("adam", "adamw", "sgd")
TASK_ALIASES = {"inr": "regression"}  # the recipes' name for INR fitting
PER_MODEL = ("lr", "weight_decay", "dropout", "init_scale", "label_noise", "data_fraction")

# ----------------------------------------------------------------------------------------------
# Records


@dataclass(kw_only=True)
class TrainSpec:
    """One population shard: ``n`` models of the SAME architecture ``config``.

    Per-model fields (``seeds`` and the ``PER_MODEL`` hyperparameters) are lists of length ``n``;
    a scalar hyperparameter is broadcast to all models. ``checkpoint_epochs`` may include 0 (the
    initialisation) and defaults to ``[epochs]``. For ``task="regression"`` (INR fits) label noise
    and data fraction do not apply and dropout must be 0.
    """

    config: dict
    n: int
    seeds: list[int]
    epochs: int
    checkpoint_epochs: list[int] = field(default_factory=list)
    lr: list[float] | float = 1e-3
    weight_decay: list[float] | float = 0.0
    dropout: list[float] | float = 0.0
    init_scale: list[float] | float = 1.0
    label_noise: list[float] | float = 0.0
    data_fraction: list[float] | float = 1.0
    optimizer: str = "adam"
    batch_size: int = 64
    task: str = "classification"
    rank: int = 0  # > 0: LoRA-style, only a rank-`rank` update B @ A of each weight matrix is trained
    #: Per-model seeds of the initialisation only (``None``: ``seeds``). Equal values give models that start
    #: from one shared init and differ in data order / subset / label noise (p-diff-style populations).
    init_seeds: list[int] | None = None

    def __post_init__(self) -> None:
        self.config = normalize_config(self.config)
        if isinstance(self.n, bool) or not isinstance(self.n, int) or self.n < 1:
            raise ConfigError(f"TrainSpec.n must be a positive integer, got {self.n!r}")
        self.seeds = [int(s) for s in self.seeds]
        if len(self.seeds) != self.n or any(s < 0 for s in self.seeds):
            raise ConfigError(f"TrainSpec.seeds must be {self.n} non-negative integers, got {self.seeds!r}")
        if self.init_seeds is not None:
            self.init_seeds = [int(s) for s in self.init_seeds]
            if len(self.init_seeds) != self.n or any(s < 0 for s in self.init_seeds):
                raise ConfigError(f"TrainSpec.init_seeds must be {self.n} non-negative integers (or None), "
                                  f"got {self.init_seeds!r}")  # fmt: skip
        for name in PER_MODEL:
            setattr(self, name, self._per_model(name, getattr(self, name)))
        self._check_ranges()
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(
                f"unknown optimizer {self.optimizer!r}; valid optimizers: {', '.join(OPTIMIZERS)}"
            )
        self.task = TASK_ALIASES.get(self.task, self.task)
        if self.task not in TASKS:
            raise ConfigError(f"unknown task {self.task!r}; valid tasks: {', '.join(TASKS)}")
        if self.epochs < 0 or self.batch_size < 1:
            raise ConfigError(
                f"TrainSpec needs epochs >= 0 and batch_size >= 1, got {self.epochs}, {self.batch_size}"
            )
        self.checkpoint_epochs = sorted({int(e) for e in self.checkpoint_epochs} or {self.epochs})
        if self.checkpoint_epochs[0] < 0 or self.checkpoint_epochs[-1] > self.epochs:
            raise ConfigError(
                f"checkpoint_epochs must lie in [0, epochs={self.epochs}], got {self.checkpoint_epochs}"
            )
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 0:
            raise ConfigError(f"TrainSpec.rank must be a non-negative integer (0 = full training), got {self.rank!r}")
        if self.rank and self.task != "classification":
            raise ConfigError("low-rank (rank > 0) training applies to classification shards only")
        if self.task == "regression" and (
            any(self.label_noise) or any(f != 1.0 for f in self.data_fraction) or any(self.dropout)
        ):
            raise ConfigError(
                "regression (INR) shards take no label_noise, data_fraction or dropout; leave them at 0, 1, 0"
            )

    def _per_model(self, name: str, value: Any) -> list[float]:
        values = [value] * self.n if isinstance(value, int | float) else list(value)
        if len(values) != self.n:
            raise ConfigError(f"TrainSpec.{name} must have one value per model ({self.n}), got {len(values)}")
        return [float(v) for v in values]

    def _check_ranges(self) -> None:
        bad = {
            "lr": [v for v in self.lr if not v > 0],
            "weight_decay": [v for v in self.weight_decay if v < 0],
            "dropout": [v for v in self.dropout if not 0 <= v < 1],
            "init_scale": [v for v in self.init_scale if not v > 0],
            "label_noise": [v for v in self.label_noise if not 0 <= v <= 1],
            "data_fraction": [v for v in self.data_fraction if not 0 < v <= 1],
        }
        bad = {k: v for k, v in bad.items() if v}
        if bad:
            raise ConfigError(
                f"TrainSpec values out of range: {bad}; need lr > 0, weight_decay >= 0, 0 <= dropout < 1, "
                "init_scale > 0, 0 <= label_noise <= 1, 0 < data_fraction <= 1"
            )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict of the spec (``TrainSpec(**spec.to_dict())`` rebuilds it)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass
class PerModelData:
    """Classification data where every model of a shard has its own training set (fine-tune changes).

    ``X_train``/``y_train`` are a shared *pool* of examples (e.g. the clean training split followed by
    corrupted or trigger-stamped copies); model ``i`` trains on the pool rows ``train_subsets[i]``
    (indices may repeat: oversampling) with the labels ``train_labels[i]``. Validation and test splits
    are shared and clean. ``data_fraction`` and ``label_noise`` still apply, within each model's set.

    Shapes:
        X_train: ``[P, ...]``; y_train: ``[P]``; train_subsets: N tensors of indices in ``[0, P)``;
        train_labels: ``[N, P]`` int64.
    """

    X_train: Tensor
    y_train: Tensor
    X_val: Tensor | None
    y_val: Tensor | None
    X_test: Tensor
    y_test: Tensor
    train_subsets: list[Tensor]
    train_labels: Tensor


@dataclass
class Checkpoint:
    """The stacked state of a shard at one epoch.

    Shapes:
        params: ``name -> [N, *shape]`` (state-dict names incl. BN buffers; detached CPU clones,
        float32, except ``num_batches_tracked`` which stays int64 as in the state dict);
        metrics: ``name -> [N]`` float32; steps: ``[N]`` optimiser steps taken by each model.
    """

    epoch: int
    params: dict[str, Tensor]
    metrics: dict[str, Tensor]
    steps: Tensor | None = None

    def model(self, i: int) -> dict[str, Tensor]:
        """Model ``i``'s state dict (views into the stacked tensors)."""
        return {k: v[i] for k, v in self.params.items()}


# ----------------------------------------------------------------------------------------------
# The stacked optimiser


class StackedOptimizer:
    """Adam / AdamW / SGD (momentum 0.9) over stacked tensors with per-model lr and weight decay.

    ``step(grads, active)`` updates only the models where ``active`` is True (all when None);
    idle models keep their weights, moments and step counts.

    Shapes:
        params: tensors ``[N, ...]``; lr, weight_decay: ``[N]``; active: ``[N]`` bool or None.
    """

    def __init__(
        self,
        kind: str,
        params: Sequence[Tensor],
        lr: Tensor,
        weight_decay: Tensor,
        *,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        momentum: float = 0.9,
    ) -> None:
        if kind not in OPTIMIZERS:
            raise ConfigError(f"unknown optimizer {kind!r}; valid optimizers: {', '.join(OPTIMIZERS)}")
        self.kind, self.params = kind, list(params)
        self.lr, self.weight_decay = lr.float(), weight_decay.float()
        self.betas, self.eps, self.momentum = betas, eps, momentum
        self.steps = torch.zeros(len(lr))
        self.m = [torch.zeros_like(p) for p in self.params]
        self.v = [torch.zeros_like(p) for p in self.params] if kind != "sgd" else []

    @staticmethod
    def _per_model(t: Tensor, like: Tensor) -> Tensor:
        return t.view(-1, *([1] * (like.dim() - 1)))

    @torch.no_grad()
    def step(self, grads: Sequence[Tensor], active: Tensor | None = None) -> None:
        if active is not None:
            self.steps += active.float()
        else:
            self.steps += 1
        for i, (p, g) in enumerate(zip(self.params, grads, strict=True)):
            lr, wd = self._per_model(self.lr, p), self._per_model(self.weight_decay, p)
            a = None if active is None else self._per_model(active, p)
            if self.kind == "sgd":
                new_p = self._sgd(i, p, g, lr, wd, a)
            else:
                new_p = self._adam(i, p, g, lr, wd, a)
            p.copy_(new_p)

    def _sgd(self, i: int, p: Tensor, g: Tensor, lr: Tensor, wd: Tensor, a: Tensor | None) -> Tensor:
        g = g + wd * p
        buf = self.m[i].mul(self.momentum).add_(g)
        self.m[i] = buf if a is None else torch.where(a, buf, self.m[i])
        new_p = p - lr * buf
        return new_p if a is None else torch.where(a, new_p, p)

    def _adam(self, i: int, p: Tensor, g: Tensor, lr: Tensor, wd: Tensor, a: Tensor | None) -> Tensor:
        b1, b2 = self.betas
        t = self._per_model(self.steps.clamp_min(1), p)
        step_size = lr / (1 - b1**t)
        bc2_sqrt = (1 - b2**t).sqrt()
        if self.kind == "adam":
            g = g + wd * p
        if a is None:  # every model steps: update the moments in place
            m = self.m[i].mul_(b1).add_(g, alpha=1 - b1)
            v = self.v[i].mul_(b2).addcmul_(g, g, value=1 - b2)
        else:
            m = self.m[i].mul(b1).add_(g, alpha=1 - b1)
            v = self.v[i].mul(b2).addcmul_(g, g, value=1 - b2)
        update = m / v.sqrt().div_(bc2_sqrt).add_(self.eps)
        base = p if self.kind == "adam" else p * (1 - lr * wd)  # adamw: decoupled decay
        new_p = base - update.mul_(step_size)
        if a is None:
            return new_p
        self.m[i], self.v[i] = torch.where(a, m, self.m[i]), torch.where(a, v, self.v[i])
        return torch.where(a, new_p, p)


# ----------------------------------------------------------------------------------------------
# Per-model randomness


def _generators(seeds: Sequence[int]) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(s) for s in seeds]


def _init_stacked(cfg: dict, spec: TrainSpec) -> dict[str, Tensor]:
    seeds = spec.init_seeds if spec.init_seeds is not None else spec.seeds
    states = [init_state(cfg, s, scale) for s, scale in zip(seeds, spec.init_scale, strict=True)]
    return {k: torch.stack([st[k] for st in states]) for k in states[0]}


def _subsets(n_train: int, fractions: Sequence[float], gens: Sequence[torch.Generator]) -> list[Tensor]:
    """Each model's training subset (indices into the training split)."""
    sizes = [max(1, round(f * n_train)) for f in fractions]
    return [torch.randperm(n_train, generator=g)[:k] for k, g in zip(sizes, gens, strict=True)]


def _own_subsets(base: Sequence[Tensor], fractions: Sequence[float], gens: Sequence[torch.Generator]) -> list[Tensor]:
    """Per-model training sets given by the data (:class:`PerModelData`), each cut to its ``data_fraction``."""
    out = []
    for sub, f, g in zip(base, fractions, gens, strict=True):
        out.append(sub[torch.randperm(len(sub), generator=g)[: max(1, round(f * len(sub)))]])  # as _subsets draws
    return out


def _noisy_labels(
    y: Tensor, noise: Sequence[float], n_classes: int, gens: Sequence[torch.Generator]
) -> Tensor:
    """``[N, n_train]`` labels: per model, a fraction of labels moved to another, random class.

    ``y`` is ``[n_train]`` (shared labels) or ``[N, n_train]`` (each model's own labels)."""
    out = y.expand(len(gens), -1).clone()
    n = out.shape[1]
    for i, (p, g) in enumerate(zip(noise, gens, strict=True)):
        k = round(p * n)
        if k and n_classes > 1:
            idx = torch.randperm(n, generator=g)[:k]
            shift = torch.randint(1, n_classes, (k,), generator=g)
            out[i, idx] = (out[i, idx] + shift) % n_classes
    return out


def _epoch_batches(
    subsets: Sequence[Tensor], batch_size: int, gens: Sequence[torch.Generator]
) -> tuple[Tensor, Tensor, list[int]]:
    """One epoch's batches for every model.

    Shapes:
        returns idx ``[N, S, B]`` (indices into the split; rows of idle steps are 0), active
        ``[N, S]`` bool, and each model's step count (S is their maximum).
    """
    counts = [max(1, len(s) // batch_size) for s in subsets]
    idx = torch.zeros(len(subsets), max(counts), batch_size, dtype=torch.long)
    active = torch.zeros(len(subsets), max(counts), dtype=torch.bool)
    for i, (sub, g, c) in enumerate(zip(subsets, gens, counts, strict=True)):
        perm = sub[torch.randperm(len(sub), generator=g)]
        if len(sub) < batch_size:
            perm = perm[torch.arange(batch_size) % len(sub)]
        idx[i, :c] = perm[: c * batch_size].view(c, batch_size)
        active[i, :c] = True
    return idx, active, counts


def _gather_rows(X: Tensor, idx: Tensor) -> Tensor:
    """``X[idx]`` for a 2-D index (``index_select`` is ~10x faster than advanced indexing here).

    Shapes:
        X: ``[n, *f]``; idx: ``[N, B]``; returns ``[N, B, *f]``.
    """
    return X.index_select(0, idx.reshape(-1)).view(*idx.shape, *X.shape[1:])


def _dropout_keys(seeds: Tensor, own_steps: Tensor) -> Tensor:
    """Per-model, per-step keys for the dropout masks (depend on the model's seed and step only)."""
    return seeds * (1 << 32) + own_steps


# ----------------------------------------------------------------------------------------------
# Training


def _checkpoint(
    epoch: int, params: Mapping[str, Tensor], metrics: dict[str, Tensor], steps: Tensor
) -> Checkpoint:
    clone = {
        k: v.detach().to("cpu", torch.float32 if v.is_floating_point() else v.dtype).clone()
        for k, v in params.items()
    }
    return Checkpoint(epoch, clone, {k: v.detach().float().cpu() for k, v in metrics.items()}, steps.clone())


def _check_classification_data(cfg: dict, data: Any) -> None:
    for name in ("X_train", "y_train", "X_test", "y_test"):
        if getattr(data, name, None) is None:
            raise ConfigError(
                f"classification data needs X_train, y_train, X_test, y_test (and optionally X_val, y_val); {name} is missing"
            )
    in_dims = len(archs.input_shape(cfg))
    X, y = data.X_train, data.y_train
    if X.dim() != in_dims + 1 or len(X) != len(y):
        layout = "[n, C, H, W]" if in_dims == 3 else "[n, features]"
        raise MismatchError(
            f"{cfg['family']} training data must be X {layout} with one label per row; got X {tuple(X.shape)}, y {tuple(y.shape)}"
        )
    if y.dtype != torch.int64 or (len(y) and (y.min() < 0 or y.max() >= cfg["out_features"])):
        raise MismatchError(
            f"labels must be int64 in [0, {cfg['out_features']}) (the config's out_features); got dtype {y.dtype}, "
            f"range [{int(y.min())}, {int(y.max())}]"
        )
    subsets, labels = getattr(data, "train_subsets", None), getattr(data, "train_labels", None)
    if subsets is not None:
        if labels is None or labels.dim() != 2 or labels.shape[1] != len(y) or len(subsets) != labels.shape[0]:
            raise MismatchError(
                f"per-model data needs train_labels [N, {len(y)}] and N train_subsets; got "
                f"{None if labels is None else tuple(labels.shape)} and {len(subsets)} subsets"
            )
        if labels.dtype != torch.int64 or labels.min() < 0 or labels.max() >= cfg["out_features"]:
            raise MismatchError(f"train_labels must be int64 in [0, {cfg['out_features']})")
        for i, sub in enumerate(subsets):
            if sub.numel() == 0 or sub.min() < 0 or sub.max() >= len(y):
                raise MismatchError(f"train_subsets[{i}] must be a non-empty index set into the {len(y)} pool rows")


def _init_params(cfg: dict, spec: TrainSpec, init_params: Mapping[str, Tensor] | None) -> dict[str, Tensor]:
    if init_params is None:
        params = _init_stacked(cfg, spec)
    else:
        n = check_stacked(cfg, init_params)
        if n != spec.n:
            raise MismatchError(
                f"init_params hold {n} models but the spec trains {spec.n}; give one parent per model"
            )
        params = {
            k: v.detach().to("cpu", torch.float32 if v.is_floating_point() else v.dtype).clone().contiguous()
            for k, v in init_params.items()
        }
    for name in parameter_names(cfg):
        params[name].requires_grad_(True)
    return params


def _classification_metrics(
    cfg: dict, params: Mapping[str, Tensor], data: Any, y_noisy: Tensor, train_mask: Tensor
) -> dict[str, Tensor]:
    metrics = evaluate_population(cfg, params, data.X_train, y_noisy, mask=train_mask).as_dict("train_")
    if getattr(data, "X_val", None) is not None and getattr(data, "y_val", None) is not None:
        metrics |= evaluate_population(cfg, params, data.X_val, data.y_val).as_dict("val_")
    metrics |= evaluate_population(cfg, params, data.X_test, data.y_test).as_dict("test_")
    metrics["gen_gap"] = metrics["train_acc"] - metrics["test_acc"]
    return metrics


def train_population(
    spec: TrainSpec,
    data: Any,
    *,
    progress: bool = True,
    init_params: Mapping[str, Tensor] | None = None,
) -> Iterator[Checkpoint]:
    """Train the shard's N models at once; yield a :class:`Checkpoint` at each of ``spec.checkpoint_epochs``.

    ``data`` (classification): attributes ``X_train, y_train, X_val, y_val, X_test, y_test``
    (X float32 ``[n, features]`` for mlp, ``[n, C, H, W]`` for cnn/resnet; y int64; val may be None).
    ``data`` (regression, ``spec.task == "regression"``): ``coords [P, in_features]`` and
    ``targets [N, P, out_features]`` (one target signal per model).
    ``init_params`` (stacked ``[N, ...]``, e.g. parents to fine-tune) replaces the initialisation
    (``init_scale`` is then ignored).

    Data and ``init_params`` are checked when this is called; training runs as the iterator is consumed.
    """
    if spec.task == "regression":
        coords, targets = _check_regression_data(spec, data)
        return _regression_epochs(spec, coords, targets, _Population.start(spec, init_params), progress)
    _check_classification_data(spec.config, data)
    if getattr(data, "train_subsets", None) is not None and len(data.train_subsets) != spec.n:
        raise MismatchError(f"per-model data holds {len(data.train_subsets)} training sets but the spec trains {spec.n}")
    return _classification_epochs(spec, data, _Population.start(spec, init_params), progress)


@dataclass
class _Population:
    """The stacked tensors being trained and their optimiser.

    Low-rank mode (``spec.rank = r > 0``, LoRA-style): every weight matrix ``W [N, out, *in]`` is frozen
    and the model uses ``W + B @ A`` with trained factors ``A [N, r, prod(in)]`` (random, seeded per
    model) and ``B [N, out, r]`` (zeros: training starts at the parent); biases and normalisation
    parameters stay frozen. Checkpoints hold the merged weights, so a child's diff is of rank <= r.
    """

    cfg: dict
    params: dict[str, Tensor]
    names: list[str]  # parameters; the rest are buffers (BN statistics)
    opt: StackedOptimizer
    lora: dict[str, tuple[Tensor, Tensor]] = field(default_factory=dict)

    @classmethod
    def start(cls, spec: TrainSpec, init_params: Mapping[str, Tensor] | None) -> _Population:
        params = _init_params(spec.config, spec, init_params)
        names = parameter_names(spec.config)
        lr, wd = torch.tensor(spec.lr), torch.tensor(spec.weight_decay)
        lora: dict[str, tuple[Tensor, Tensor]] = {}
        if spec.rank:
            gens = [torch.Generator().manual_seed(s * 7_919 + 104_729) for s in spec.seeds]
            for k in names:
                params[k].requires_grad_(False)
                w = params[k]
                if w.dim() < 3:  # biases, norms: frozen
                    continue
                fan_in = int(w[0, 0].numel())
                a = torch.stack([torch.randn(spec.rank, fan_in, generator=g) for g in gens]) / fan_in**0.5
                lora[k] = (a.requires_grad_(True), torch.zeros(w.shape[0], w.shape[1], spec.rank, requires_grad=True))
            if not lora:
                raise ConfigError(f"rank={spec.rank}: the {spec.config['family']} config has no weight matrix to adapt")
        trainable = [t for ab in lora.values() for t in ab] if lora else [params[k] for k in names]
        return cls(spec.config, params, names, StackedOptimizer(spec.optimizer, trainable, lr, wd), lora)

    def current(self) -> dict[str, Tensor]:
        """The weights the models use now (low-rank mode: ``W + B @ A`` for every adapted matrix)."""
        if not self.lora:
            return self.params
        out = dict(self.params)
        for k, (a, b) in self.lora.items():
            w = self.params[k]
            out[k] = w + torch.bmm(b, a).view_as(w)
        return out

    def step(
        self, per_model_loss: Tensor, active: Tensor | None, buffers_before: Mapping[str, Tensor]
    ) -> None:
        """One optimiser step on ``sum(per_model_loss)``; idle models keep weights and BN statistics."""
        trainable = [t for ab in self.lora.values() for t in ab] if self.lora else [self.params[k] for k in self.names]
        grads = torch.autograd.grad(per_model_loss.sum(), trainable)
        self.opt.step(grads, active)
        for name, old in buffers_before.items():
            a = active.view(-1, *([1] * (old.dim() - 1)))
            self.params[name].copy_(torch.where(a, self.params[name], old))

    def snapshot_buffers(self, active: Tensor | None) -> dict[str, Tensor]:
        """Copies of the BN buffers when some models sit this step out (else nothing to restore)."""
        if active is None:
            return {}
        return {k: v.clone() for k, v in self.params.items() if k not in self.names}

    def checkpoint(self, epoch: int, metrics: dict[str, Tensor]) -> Checkpoint:
        with torch.no_grad():
            return _checkpoint(epoch, self.current(), metrics, self.opt.steps)


def _classification_epochs(
    spec: TrainSpec, data: Any, pop: _Population, progress: bool
) -> Iterator[Checkpoint]:
    gens = _generators(spec.seeds)
    X, n_train = data.X_train.float(), len(data.y_train)
    own = getattr(data, "train_subsets", None)
    if own is None:
        subsets = _subsets(n_train, spec.data_fraction, gens)
        y_noisy = _noisy_labels(data.y_train, spec.label_noise, pop.cfg["out_features"], gens)
    else:  # PerModelData: each model's own training set and labels
        subsets = _own_subsets(own, spec.data_fraction, gens)
        y_noisy = _noisy_labels(data.train_labels, spec.label_noise, pop.cfg["out_features"], gens)
    train_mask = torch.zeros(spec.n, n_train, dtype=torch.bool)
    for i, sub in enumerate(subsets):
        train_mask[i, sub] = True
    drop = torch.tensor(spec.dropout) if any(spec.dropout) else None
    seeds = torch.tensor(spec.seeds, dtype=torch.int64)

    def checkpoint(epoch: int) -> Checkpoint:
        with torch.no_grad():
            current = pop.current()
        return pop.checkpoint(epoch, _classification_metrics(pop.cfg, current, data, y_noisy, train_mask))

    if 0 in spec.checkpoint_epochs:
        yield checkpoint(0)
    bar = progress_bar(
        range(1, spec.epochs + 1),
        disable=not progress,
        desc=f"train {spec.n} x {pop.cfg['family']}",
        leave=False,
    )
    for epoch in bar:
        idx, active, counts = _epoch_batches(subsets, spec.batch_size, gens)
        all_active = bool(active.all())
        epoch_loss = torch.zeros(spec.n)
        for s in range(idx.shape[1]):
            batch = idx[:, s]
            act = None if all_active else active[:, s]
            keys = _dropout_keys(seeds, (epoch - 1) * torch.tensor(counts) + s)
            saved = pop.snapshot_buffers(act)
            out = functional_forward(
                pop.cfg, pop.current(), _gather_rows(X, batch), training=True, dropout=drop, dropout_keys=keys
            )
            # class-major [N, K, B] (a free view of the kernels' output) is the fast cross-entropy layout
            loss = F.cross_entropy(out.transpose(1, 2), y_noisy.gather(1, batch), reduction="none").mean(1)
            if act is not None:
                loss = loss * act
            pop.step(loss, act, saved)
            epoch_loss += loss.detach()
        bar.set_postfix(loss=f"{(epoch_loss / torch.tensor(counts)).mean():.4f}")
        if epoch in spec.checkpoint_epochs:
            yield checkpoint(epoch)


def _check_regression_data(spec: TrainSpec, data: Any) -> tuple[Tensor, Tensor]:
    coords, targets = getattr(data, "coords", None), getattr(data, "targets", None)
    if coords is None or targets is None:
        raise ConfigError(
            "regression data needs 'coords' [P, in_features] and 'targets' [N, P, out_features]"
        )
    p, n_in, n_out = coords.shape[0], spec.config["in_features"], spec.config["out_features"]
    if coords.shape != (p, n_in) or targets.shape != (spec.n, p, n_out):
        raise MismatchError(
            f"regression data must be coords [P, in_features={n_in}] and targets [N={spec.n}, P, "
            f"out_features={n_out}] (one signal per model); got {tuple(coords.shape)} and {tuple(targets.shape)}"
        )
    return coords.float(), targets.float()


def _regression_epochs(
    spec: TrainSpec, coords: Tensor, targets: Tensor, pop: _Population, progress: bool
) -> Iterator[Checkpoint]:
    """INR fitting: model n regresses ``targets[n]`` at ``coords`` (MSE); metrics train_loss and psnr."""
    gens = _generators(spec.seeds)
    p, n_out = targets.shape[1], targets.shape[2]
    every = [torch.arange(p)] * spec.n

    def checkpoint(epoch: int) -> Checkpoint:
        res = evaluate_population(pop.cfg, pop.params, coords, targets, task="regression")
        return pop.checkpoint(epoch, {"train_loss": res.loss, "psnr": res.psnr})

    if 0 in spec.checkpoint_epochs:
        yield checkpoint(0)
    bar = progress_bar(
        range(1, spec.epochs + 1),
        disable=not progress,
        desc=f"fit {spec.n} x {pop.cfg['family']}",
        leave=False,
    )
    for epoch in bar:
        if spec.batch_size >= p:  # full batch: all models share the coordinates
            batches = [(coords, targets)]
        else:
            idx, _, _ = _epoch_batches(every, spec.batch_size, gens)
            batches = [
                (_gather_rows(coords, idx[:, s]), targets.gather(1, idx[:, s, :, None].expand(-1, -1, n_out)))
                for s in range(idx.shape[1])
            ]
        total = 0.0
        for xb, tb in batches:
            loss = (functional_forward(pop.cfg, pop.params, xb, training=True) - tb).pow(2).mean(dim=(1, 2))
            pop.step(loss, None, {})
            total += float(loss.detach().mean())
        bar.set_postfix(mse=f"{total / len(batches):.5f}")
        if epoch in spec.checkpoint_epochs:
            yield checkpoint(epoch)


def finetune(
    spec: TrainSpec, data: Any, parents: Mapping[str, Tensor], *, progress: bool = True
) -> Iterator[Checkpoint]:
    """Fine-tune stacked parent weights (``[N, ...]``): :func:`train_population` from ``parents``."""
    return train_population(spec, data, progress=progress, init_params=parents)


def run_shard(
    spec: TrainSpec, data: Any, *, init_params: Mapping[str, Tensor] | None = None
) -> list[Checkpoint]:
    """All checkpoints of a shard as a list, no progress bar (for process pools and Ray tasks)."""
    return list(train_population(spec, data, progress=False, init_params=init_params))


__all__ = [
    "PerModelData",
    "TrainSpec",
    "Checkpoint",
    "StackedOptimizer",
    "train_population",
    "finetune",
    "run_shard",
    "OPTIMIZERS",
]
