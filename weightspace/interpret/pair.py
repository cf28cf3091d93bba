"""``"np_pair"``: the NP encoder over a diff *and* its parent, stacked as channels.

The interpreter's ``pair`` view hands an encoder the diff (``child - parent``, under the models' own
tensor names) and the parent's weights (under ``parent::<name>``). This encoder gives every hidden
neuron, edge and global of the NP view three channels: the diff, the parent and their elementwise
product (after per-tensor normalisation), so it can read a change *relative to* the weights it
changed -- a corruption fine-tune that shrinks first-layer weights, a boost that grows one output's
row -- where the diff alone shows only the change. All three channels permute with the hidden neurons,
so the encoder stays invariant to hidden permutations (tested). Given a plain stacked population (no
``parent::`` tensors) it reads it as a diff whose parent is unknown (parent channels zero), so it
takes part in the encoders' conformance suite like any other.

Shapes: node sets ``[B, n_l, 3 F_l]``; edge sets ``[B, n_out, n_in, 3]``; globals ``[B, 3 n_L]``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from weightspace.encoders.np_encoder import NPEncoder
from weightspace.encoders.np_layers import NPInputs, NPLayer, NPNet, np_inputs
from weightspace.encoders.registry import register_encoder
from zoo.errors import ConfigError

__all__ = ["PairNPEncoder", "PARENT", "pair_inputs", "split_pair"]

#: the prefix of the parent's tensors in a pair view
PARENT = "parent::"
CHANNELS = 3


def split_pair(stacked: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, Tensor] | None]:
    """``(diff, parent)`` of a pair view (the parent's names without their prefix); ``parent`` is None for
    a plain stacked population (no ``parent::`` tensors at all)."""
    diff = {k: v for k, v in stacked.items() if not k.startswith(PARENT)}
    parent = {k[len(PARENT):]: v for k, v in stacked.items() if k.startswith(PARENT)}
    if not parent:
        return diff, None
    if set(diff) != set(parent):
        raise ConfigError("a pair view needs the parent's weights (parent::<name>) for every diff tensor; "
                          "use DiffInterpreter(view='pair'), which builds it")  # fmt: skip
    return diff, parent


def pair_inputs(stacked: Mapping[str, Tensor], chain: list) -> NPInputs:
    """The NP view with channels (diff, parent, diff * parent) for every node, edge and global feature
    (the parent's channels are zeros when no parent is given)."""
    diff, parent = split_pair(stacked)
    a = np_inputs(diff, chain)
    b = np_inputs(parent, chain) if parent is not None else ([torch.zeros_like(x) for x in a[0]],
                                                             [torch.zeros_like(x) for x in a[1]], torch.zeros_like(a[2]))  # fmt: skip
    nodes = [torch.cat([x, y, x * y], -1) for x, y in zip(a[0], b[0], strict=True)]
    edges = [torch.cat([x, y, x * y], -1) for x, y in zip(a[1], b[1], strict=True)]
    return nodes, edges, torch.cat([a[2], b[2], a[2] * b[2]], -1)


@register_encoder("np_pair")
class PairNPEncoder(NPEncoder):
    """:class:`~weightspace.encoders.np_encoder.NPEncoder` over a (diff, parent) pair (see the module docstring).
    The same options as ``np``; ``probes`` must stay 0 (a diff is not a network to run)."""

    def _layout(self, X: Mapping[str, Tensor], spec: Any) -> None:
        if self.probes:
            raise ConfigError("np_pair reads weights only; drop 'probes' from its config")
        diff, _ = split_pair(X)
        super()._layout(diff, spec)
        self.layout_ = {k: list(v.shape[1:]) for k, v in X.items()}

    def _prepare(self, stacked: Any) -> Any:
        return pair_inputs(stacked, self._chain())

    def _build_net(self, n_out: int) -> nn.Module:
        chain = self._chain()
        if len(chain) < 2:
            raise ConfigError("the NP encoder needs at least one hidden layer (a chain of two or more dense layers)")
        shapes = self.layout_
        sizes = [shapes[chain[0].weight][1]] + [shapes[lay.weight][0] for lay in chain]
        L = len(chain)
        node_dims = [CHANNELS * (1 + (sizes[0] if lvl == 1 else 0) + (sizes[L] if lvl == L - 1 else 0)) for lvl in range(1, L)]
        g_dim = CHANNELS * sizes[L]
        net = NPNet(node_dims, L - 2, g_dim, n_out, hidden=self.hidden, n_layers=self.n_layers,
                    head_hidden=self.head_hidden, dropout=self.dropout, edge_hidden=self.edge_hidden)  # fmt: skip
        eh = self.hidden if self.edge_hidden is None else self.edge_hidden
        net.layers[0] = NPLayer(node_dims, [CHANNELS] * (L - 2), g_dim, self.hidden, eh)  # edges carry 3 channels
        return net
