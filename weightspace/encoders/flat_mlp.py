"""``"flat_mlp"``: the baseline MLP on the flat, per-tensor normalised weight vector (not invariant)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor, nn

from weightspace.encoders.base import TorchEncoder
from weightspace.encoders.registry import register_encoder
from weightspace.views import flatten

__all__ = ["FlatMLPEncoder", "FlatMLP"]


class FlatMLP(nn.Module):
    def __init__(self, d_in: int, n_out: int, hidden: Sequence[int], dropout: float) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        d = d_in
        for h in hidden:
            layers += [nn.Linear(d, h), nn.ReLU(), nn.Dropout(dropout)]
            d = h
        self.embedder = nn.Sequential(*layers[:-1]) if layers else nn.Identity()
        self.out = nn.Sequential(nn.Dropout(dropout), nn.Linear(d, n_out))

    def embed(self, x: Tensor) -> Tensor:
        return self.embedder(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.embed(x))


@register_encoder("flat_mlp")
class FlatMLPEncoder(TorchEncoder):
    """An MLP over all weights concatenated (after per-tensor standardisation). Works for any architecture
    (give ``spec=`` to :meth:`fit` for non-mlp names, for the augmentations that need it)."""

    needs_spec = False

    def __init__(
        self,
        task: str = "regression",
        hidden: Sequence[int] = (256, 256),
        dropout: float = 0.1,
        epochs: int = 100,
        batch_size: int = 64,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        augment: Sequence[Any] = (),
        target: str = "rank",
        seed: int = 0,
    ) -> None:
        self._store_params(locals())

    def _prepare(self, stacked: Mapping[str, Tensor]) -> Tensor:
        return flatten(stacked, list(self.layout_))

    def _build_net(self, n_out: int) -> nn.Module:
        import math

        d = sum(math.prod(s) for s in self.layout_.values())
        return FlatMLP(d, n_out, self.hidden, self.dropout)
