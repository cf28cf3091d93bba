"""``"np"``: the permutation-equivariant NP/DWS-style encoder over dense chains (mlp, siren)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor, nn

from weightspace.encoders.base import TorchEncoder
from weightspace.encoders.np_layers import NPInputs, NPNet, np_inputs
from weightspace.encoders.registry import register_encoder
from weightspace.views import dense_chain
from zoo.errors import ConfigError

__all__ = ["NPEncoder"]


@register_encoder("np")
class NPEncoder(TorchEncoder):
    """Equivariant NP layers (shared parameters across each hidden permutation group), invariant pooling,
    an MLP head. Invariant to every hidden-neuron permutation of the input models (a tested property).

    Args:
        task: ``"regression"`` or ``"classification"``.
        hidden: channels of the equivariant layers; n_layers: how many; head_hidden: width of the head
            (also the embedding dimension of :meth:`transform`); dropout: in the head.
        epochs, batch_size, lr, weight_decay, seed: training (AdamW, cosine schedule).
        augment: augmentation steps (see :class:`~weightspace.augment.Augmenter`), e.g.
            ``["rescale", {"name": "noise", "std": 0.05}, "mixup"]``.
        target: regression targets as ``"rank"`` (normal scores of their ranks: spreads the dense top of
            an accuracy distribution; predictions map back through the training quantiles) or ``"standard"``.
    """

    def __init__(
        self,
        task: str = "regression",
        hidden: int = 128,
        n_layers: int = 3,
        head_hidden: int = 128,
        dropout: float = 0.1,
        epochs: int = 100,
        batch_size: int = 64,
        lr: float = 3e-3,
        weight_decay: float = 1e-4,
        augment: Sequence[Any] = (),
        target: str = "rank",
        seed: int = 0,
    ) -> None:
        self.task = task
        self.target = target
        self.hidden = hidden
        self.n_layers = n_layers
        self.head_hidden = head_hidden
        self.dropout = dropout
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.weight_decay = weight_decay
        self.augment = list(augment)
        self.seed = seed

    def _chain(self) -> list:
        if getattr(self, "_chain_cache", None) is None or self._chain_key is not self.spec_:
            self._chain_cache, self._chain_key = dense_chain(self.spec_), self.spec_
        return self._chain_cache

    def _prepare(self, stacked: Mapping[str, Tensor]) -> NPInputs:
        return np_inputs(stacked, self._chain())

    def _build_net(self, n_out: int) -> nn.Module:
        chain = self._chain()
        if len(chain) < 2:
            raise ConfigError("the NP encoder needs at least one hidden layer (a chain of two or more dense layers)")
        shapes = self.layout_
        sizes = [shapes[chain[0].weight][1]] + [shapes[lay.weight][0] for lay in chain]  # n_0 .. n_L
        L = len(chain)
        node_dims = [1 + (sizes[0] if lvl == 1 else 0) + (sizes[L] if lvl == L - 1 else 0) for lvl in range(1, L)]
        return NPNet(node_dims, L - 2, sizes[L], n_out, hidden=self.hidden, n_layers=self.n_layers,
                     head_hidden=self.head_hidden, dropout=self.dropout)  # fmt: skip

    def features(self, X: Mapping[str, Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """Equivariant intermediate features (node sets ``[N, n_l, C]``, edge sets ``[N, n_out, n_in, C]``)."""
        self._check_fitted()
        import torch

        with torch.no_grad():
            return self.net_.features(self._prepare(self.normalizer_.transform(X)))
