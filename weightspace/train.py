"""The one training loop of the torch encoders: mini-batches, augmentation, Adam, a cosine schedule.

:func:`train_network` knows nothing of weights: it draws batches of row indices, asks ``batch_fn``
for the network inputs (raw stacked weights -> augmented -> normalised view), and minimises MSE
(regression, standardised targets) or cross-entropy with soft targets (classification, so that
mixup's mixed labels need no special case).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zoo.progress import progress_bar

__all__ = ["train_network", "regression_loss", "classification_loss"]


def regression_loss(out: Tensor, y: Tensor) -> Tensor:
    return F.mse_loss(out.squeeze(-1), y.squeeze(-1))


def classification_loss(out: Tensor, y: Tensor) -> Tensor:
    """Cross-entropy with soft targets ``y [B, C]`` (one-hot or mixed)."""
    return -(y * F.log_softmax(out, dim=-1)).sum(-1).mean()


def train_network(
    net: nn.Module,
    n: int,
    batch_fn: Callable[[Tensor, torch.Generator], tuple[Any, Tensor]],
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    seed: int,
    progress: bool = False,
) -> list[float]:
    """Train ``net`` on ``n`` examples; returns the mean loss of each epoch.

    ``batch_fn(indices [B], generator) -> (inputs, targets)``; ``net(inputs) -> [B, out]``.
    Adam with decoupled weight decay (AdamW), cosine decay of the learning rate to 0, linear warm-up
    over the first 5% of steps.
    """
    gen = torch.Generator().manual_seed(int(seed))
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay)
    steps_per_epoch = max(1, math.ceil(n / batch_size))
    total = max(1, epochs * steps_per_epoch)
    warm = max(1, total // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(s, total) / total))
    )
    history: list[float] = []
    net.train()
    for _ in progress_bar(range(epochs), desc="epochs", disable=not progress, leave=False):
        order = torch.randperm(n, generator=gen)
        tot, cnt = 0.0, 0
        for i in range(0, n, batch_size):
            idx = order[i : i + batch_size]
            if len(idx) < 2 and n >= 2:
                continue  # a batch of one makes batch statistics degenerate
            inputs, y = batch_fn(idx, gen)
            loss = loss_fn(net(inputs), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            tot += float(loss.detach()) * len(idx)
            cnt += len(idx)
        history.append(tot / max(cnt, 1))
    net.eval()
    return history
