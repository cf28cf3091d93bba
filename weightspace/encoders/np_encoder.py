"""``"np"``: the permutation-equivariant NP/DWS-style encoder over dense chains (mlp, siren).

Optionally (``probes=P``) every hidden neuron also carries its activations on ``P`` learned probe inputs,
and the globals carry the network's outputs on them: the "probe features" of Kofinas et al. 2024. The
activations of hidden neurons permute with the neurons, so the encoder stays exactly invariant to hidden
permutations (tested), and it sees the function as well as the weights.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from weightspace.encoders.base import TorchEncoder
from weightspace.encoders.np_layers import NPInputs, NPNet, np_inputs
from weightspace.encoders.probe import ProbeFeatures, ProbeInputs, chain_activations
from weightspace.encoders.registry import register_encoder
from weightspace.views import dense_chain
from zoo.errors import ConfigError

__all__ = ["NPEncoder", "NPProbeNet"]

class NPProbeNet(nn.Module):
    """:class:`NPNet` whose hidden neurons also carry their activations on learned probe inputs (node
    features, equivariant: they permute with the neurons) and whose globals carry the outputs on them
    (invariant). Inputs: ``(nodes, edges, globals, raw chain)``."""

    def __init__(self, np_net: NPNet, probes: ProbeInputs, arch: Mapping[str, Any]) -> None:
        super().__init__()
        self.np = np_net
        self.probes = probes
        self.arch = dict(arch)

    def _with_probes(self, inputs: tuple) -> NPInputs:
        nodes, edges, g, raw = inputs
        acts = [torch.asinh(a) for a in chain_activations(raw, self.probes(), self.arch)]  # [B, P, n_l]
        nodes = [torch.cat([h, a.transpose(1, 2)], -1) for h, a in zip(nodes, acts[:-1], strict=True)]
        return nodes, edges, torch.cat([g, acts[-1].flatten(1)], -1)

    def features(self, inputs: tuple) -> tuple[list[Tensor], list[Tensor]]:
        return self.np.features(self._with_probes(inputs))

    def embed(self, inputs: tuple) -> Tensor:
        return self.np.embed(self._with_probes(inputs))

    def forward(self, inputs: tuple) -> Tensor:
        return self.np(self._with_probes(inputs))


@register_encoder("np")
class NPEncoder(ProbeFeatures, TorchEncoder):
    """Equivariant NP layers (shared parameters across each hidden permutation group), invariant pooling,
    an MLP head. Invariant to every hidden-neuron permutation of the input models (a tested property).

    Args:
        task: ``"regression"`` or ``"classification"``.
        hidden: channels of the node sets of the equivariant layers; edge_hidden: channels of the edge sets
            (hidden-to-hidden weight matrices, the large tensors ``[B, n_out, n_in, edge_hidden]``: fewer
            channels there keep deep chains such as SIRENs fast); n_layers: how many layers; head_hidden:
            width of the head (also the embedding dimension of :meth:`transform`); dropout: in the head.
        epochs, batch_size, lr, weight_decay, seed: training (AdamW, cosine schedule).
        augment: augmentation steps (see :class:`~weightspace.augment.Augmenter`), e.g.
            ``["rescale", {"name": "noise", "std": 0.05}, "mixup"]``.
        target: regression targets as ``"rank"`` (normal scores of their ranks: spreads the dense top of
            an accuracy distribution; predictions map back through the training quantiles) or ``"standard"``.
        probes: learned probe inputs whose activations are added as features: each hidden neuron gets its
            activations (equivariant node features), the globals get the outputs. 0 (default) reads the
            weights only. Needs the architecture: ``fit(..., arch=config)`` (mlp, siren).
        probe_range: initial spread of the probes (see :class:`~weightspace.encoders.ProbeEncoder`).
    """

    def __init__(
        self,
        task: str = "regression",
        hidden: int = 128,
        edge_hidden: int = 32,
        n_layers: int = 3,
        head_hidden: int = 128,
        dropout: float = 0.1,
        epochs: int = 100,
        batch_size: int = 64,
        lr: float = 3e-3,
        weight_decay: float = 1e-4,
        augment: Sequence[Any] = (),
        target: str = "rank",
        probes: int = 0,
        probe_range: float = 1.0,
        seed: int = 0,
    ) -> None:
        self._store_params(locals())

    def _chain(self) -> list:
        if getattr(self, "_chain_cache", None) is None or self._chain_key is not self.spec_:
            self._chain_cache, self._chain_key = dense_chain(self.spec_), self.spec_
        return self._chain_cache

    def _prepare(self, stacked: Any) -> Any:
        chain = self._chain()
        if not self.probes:
            return np_inputs(stacked, chain)
        normed, raw = stacked
        raw_chain = [(raw[lay.weight], raw[lay.bias] if lay.bias else None) for lay in chain]
        return (*np_inputs(normed, chain), raw_chain)

    def _build_net(self, n_out: int) -> nn.Module:
        chain = self._chain()
        if len(chain) < 2:
            raise ConfigError("the NP encoder needs at least one hidden layer (a chain of two or more dense layers)")
        P = self._n_probes()
        shapes = self.layout_
        sizes = [shapes[chain[0].weight][1]] + [shapes[lay.weight][0] for lay in chain]  # n_0 .. n_L
        L = len(chain)
        node_dims = [1 + (sizes[0] if lvl == 1 else 0) + (sizes[L] if lvl == L - 1 else 0) + P for lvl in range(1, L)]
        net = NPNet(node_dims, L - 2, sizes[L] * (1 + P), n_out, hidden=self.hidden, n_layers=self.n_layers,
                    head_hidden=self.head_hidden, dropout=self.dropout, edge_hidden=self.edge_hidden)  # fmt: skip
        if not P:
            return net
        return NPProbeNet(net, *self._probe_inputs(sizes[0]))

    def features(self, X: Mapping[str, Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """Equivariant intermediate features (node sets ``[N, n_l, C]``, edge sets ``[N, n_out, n_in, C_e]``)."""
        self._check_fitted()
        with torch.no_grad():
            return self.net_.features(self._prepare(self._normalize(X)))
