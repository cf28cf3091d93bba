"""Generated models as initialisations: how much faster does fine-tuning on a shifted task reach the
accuracy that training from a random initialisation reaches? ("Efficient Training with Denoised Neural
Weights" measures the same.)

:func:`shifted_task` makes the new task: digits with *every* split corrupted (:mod:`zoo.models.corruptions`,
e.g. rotated or noisy digits) and/or a smaller random subset of the training split.
:func:`init_speedup` trains each group of initialisations (``random`` and any others: generated
samples, training models) with the same recipe, evaluates every epoch, and reports per group the
median validation and test accuracy curves, the random-init final accuracy (the target: the median
*validation* accuracy of the random inits after ``epochs``), the first epoch at which each group's
median validation accuracy reaches it, and that epoch as a ratio of ``epochs`` (``ratio``: of the random
inits' training budget) and of the epoch at which the random inits' own median curve first reaches it
(``vs_random``: their curve often plateaus before the last epoch). Nothing is chosen on
the test split: the target and the epochs are read on validation accuracy; test accuracy is reported.

Shapes: stacked inits ``name -> [n, *shape]``; curves ``[epochs + 1]`` (epoch 0 = the init itself).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import numpy as np
import torch
from torch import Tensor

from zoo.errors import ConfigError

__all__ = ["shifted_task", "init_speedup"]


def shifted_task(dataset: Any, *, corruption: str | None = "rotate", severity: int = 3, train_fraction: float = 1.0,
                 seed: int = 0) -> Any:  # fmt: skip
    """``dataset`` (a :class:`zoo.models.datasets.Dataset`) with every split corrupted by ``corruption`` at
    ``severity`` and the training split cut to a random ``train_fraction`` (stratification is not kept)."""
    from zoo.models.corruptions import corrupt

    if not 0 < float(train_fraction) <= 1:
        raise ConfigError(f"train_fraction must be in (0, 1], got {train_fraction}")
    out = dataset
    if corruption:
        def c(x: Tensor, k: int) -> Tensor:
            img = x.reshape(x.shape[0], *dataset.image_shape)
            return corrupt(img, corruption, severity, seed + k, mean=dataset.mean, std=dataset.std).reshape(x.shape)

        out = replace(out, X_train=c(out.X_train, 0), X_val=c(out.X_val, 1), X_test=c(out.X_test, 2),
                      corruption=corruption, severity=severity)  # fmt: skip
    if float(train_fraction) < 1:
        g = torch.Generator().manual_seed(int(seed))
        keep = torch.randperm(len(out.y_train), generator=g)[: max(1, int(round(len(out.y_train) * float(train_fraction))))]
        out = replace(out, X_train=out.X_train[keep], y_train=out.y_train[keep])
    return out


def _train_curves(config: Mapping[str, Any], init: Mapping[str, Tensor], data: Any, *, epochs: int, lr: float,
                  batch_size: int, seed: int) -> dict[str, np.ndarray]:  # fmt: skip
    from zoo.build.training import TrainSpec, train_population

    n = next(iter(init.values())).shape[0]
    spec = TrainSpec(config=dict(config), n=n, seeds=[seed * 10_007 + i for i in range(n)], epochs=epochs,
                     checkpoint_epochs=list(range(0, epochs + 1)), lr=lr, batch_size=batch_size)  # fmt: skip
    val, test = [], []
    for ck in train_population(spec, data, progress=False, init_params=init):
        val.append(ck.metrics["val_acc"].numpy())
        test.append(ck.metrics["test_acc"].numpy())
    return {"val": np.stack(val, 1), "test": np.stack(test, 1)}  # [n, epochs + 1]


def init_speedup(config: Mapping[str, Any], inits: Mapping[str, Mapping[str, Tensor]], data: Any, *, n_random: int = 20,
                 epochs: int = 24, lr: float = 5e-3, batch_size: int = 64, seed: int = 0) -> dict[str, Any]:  # fmt: skip
    """Fine-tune every group of ``inits`` (name -> stacked models) and ``n_random`` random inits on ``data``.

    Returns ``{"target": random-init final median val acc, "epochs": epochs, "groups": {name: {"val":
    median val curve, "test": median test curve, "epochs_to_target": int | None, "ratio": float | None,
    "vs_random": float | None, "final_test": ...}}}`` (``epochs_to_target`` None: never reached within ``epochs``).
    """
    from zoo.models.architectures import init_state

    if int(epochs) < 1 or int(n_random) < 1:
        raise ConfigError(f"epochs and n_random must be positive, got {epochs} and {n_random}")
    cfg = dict(config)
    states = [init_state(cfg, seed * 1_000_003 + i) for i in range(int(n_random))]
    groups = {"random": {k: torch.stack([s[k] for s in states]) for k in states[0]}, **dict(inits)}
    curves = {name: _train_curves(cfg, g, data, epochs=int(epochs), lr=lr, batch_size=batch_size, seed=seed)
              for name, g in groups.items()}  # fmt: skip
    target = float(np.median(curves["random"]["val"][:, -1]))
    out: dict[str, Any] = {"target": target, "epochs": int(epochs), "groups": {}}
    for name, c in curves.items():
        val, test = np.median(c["val"], 0), np.median(c["test"], 0)
        hit = np.nonzero(val >= target - 1e-9)[0]
        first = int(hit[0]) if len(hit) else None
        out["groups"][name] = {"n": int(c["val"].shape[0]), "val": val.tolist(), "test": test.tolist(),
                               "epochs_to_target": first, "ratio": None if first is None else first / int(epochs),
                               "final_test": float(test[-1]), "start_test": float(test[0])}  # fmt: skip
    first_random = out["groups"]["random"]["epochs_to_target"]  # <= epochs: its median curve ends at the target
    for g in out["groups"].values():
        e = g["epochs_to_target"]
        g["vs_random"] = None if e is None else (e / first_random if first_random else float(e == 0))
    return out
