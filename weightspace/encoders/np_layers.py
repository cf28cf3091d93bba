"""NP-style permutation-equivariant layers over the hidden neurons of a dense chain (NFN / DWSNets).

A chain of ``L`` dense layers with fixed inputs and outputs has hidden neuron sets ``1..L-1``. The
view (:func:`np_inputs`) gives each hidden set a node tensor and each hidden-to-hidden weight
matrix an edge tensor (channel-last):

* node set ``l``: ``[B, n_l, F_l]`` -- the bias of the layer producing it, plus, for the first hidden
  set, its incoming weights from the (fixed) inputs and, for the last, its outgoing weights to the
  (fixed) outputs. Fixed axes become feature channels: per-position parameters, as NFN's NP layer
  gives input/output neurons;
* edge set ``i`` (layer ``i``, hidden ``i`` -> hidden ``i+1``): ``[B, n_{i+1}, n_i, 1]``;
* globals ``[B, n_L]``: the output bias (no permutation touches it).

:class:`NPLayer` maps these to new node/edge features of ``C`` channels with every linear map that
commutes with the hidden permutations and uses (at most) mean pooling: self terms, pooled terms over
each axis, neighbouring node/edge terms, and an invariant global term. Stacked with pointwise
non-linearities and an invariant readout (mean and max over every set), the network's output is
invariant to every hidden permutation; the node/edge features in between are equivariant.

Shapes: ``B`` models; node sets ``[B, n, C]``; edge sets ``[B, n_out, n_in, C]``; globals ``[B, G]``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from weightspace.views import DenseLayer

__all__ = ["NPInputs", "np_inputs", "NPLayer", "NPNet"]

NPInputs = tuple[list[Tensor], list[Tensor], Tensor]


def np_inputs(stacked: Mapping[str, Tensor], chain: Sequence[DenseLayer]) -> NPInputs:
    """The NP view of (normalised) stacked weights of a dense chain: ``(nodes, edges, globals)``."""
    L = len(chain)
    W = [stacked[lay.weight] for lay in chain]
    B = W[0].shape[0]
    bias = [stacked[lay.bias] if lay.bias else W[i].new_zeros(B, W[i].shape[1]) for i, lay in enumerate(chain)]
    nodes = []
    for lvl in range(1, L):
        feats = [bias[lvl - 1].unsqueeze(-1)]
        if lvl == 1:
            feats.append(W[0])  # [B, n_1, n_0]: incoming from fixed inputs
        if lvl == L - 1:
            feats.append(W[L - 1].transpose(1, 2))  # [B, n_{L-1}, n_L]: outgoing to fixed outputs
        nodes.append(torch.cat(feats, -1))
    edges = [W[i].unsqueeze(-1) for i in range(1, L - 1)]
    return nodes, edges, bias[L - 1]


def _mean(x: Tensor, dims: int | tuple[int, ...], keepdim: bool = False) -> Tensor:
    """``x.mean(dims)`` whose backward scales the small pooled gradient, not a full-size expanded one
    (``mean``'s backward divides the expanded gradient: a full edge-set-sized temporary per call)."""
    dims = (dims,) if isinstance(dims, int) else dims
    count = 1
    for d in dims:
        count *= x.shape[d]
    return x.sum(dims, keepdim=keepdim) * (1.0 / count)


def _pool(nodes: Sequence[Tensor], edges: Sequence[Tensor], globals_: Tensor) -> Tensor:
    return torch.cat([globals_, *[_mean(h, 1) for h in nodes], *[_mean(e, (1, 2)) for e in edges]], -1)


class NPLayer(nn.Module):
    """One equivariant layer: node sets ``[B, n_l, c_l] -> [B, n_l, C]``, edges ``[B, m, n, d_i] -> [B, m, n, C_e]``
    (``C_e = edge_out``, default ``C``: edge sets are the large tensors, so they may get fewer channels)."""

    def __init__(
        self, node_dims: Sequence[int], edge_dims: Sequence[int], g_dim: int, out: int, edge_out: int | None = None
    ) -> None:
        super().__init__()
        eo = out if edge_out is None else edge_out
        S, E = len(node_dims), len(edge_dims)
        assert E == max(S - 1, 0)
        self.node_dims, self.edge_dims = list(node_dims), list(edge_dims)
        pooled = g_dim + sum(node_dims) + sum(edge_dims)
        lin = nn.Linear
        self.n_self = nn.ModuleList(lin(c, out) for c in node_dims)
        self.n_pool = nn.ModuleList(lin(c, out, bias=False) for c in node_dims)
        self.n_glob = nn.ModuleList(lin(pooled, out, bias=False) for _ in node_dims)
        # node l (0-based set index s): incoming edge e = s-1 (exists if s >= 1), outgoing edge e = s (if s < E)
        self.n_in_edge = nn.ModuleList(lin(edge_dims[s - 1], out, bias=False) if s >= 1 else nn.Identity() for s in range(S))
        self.n_out_edge = nn.ModuleList(lin(edge_dims[s], out, bias=False) if s < E else nn.Identity() for s in range(S))
        self.e_self = nn.ModuleList(lin(d, eo) for d in edge_dims)
        self.e_rows = nn.ModuleList(lin(d, eo, bias=False) for d in edge_dims)  # mean over the output axis
        self.e_cols = nn.ModuleList(lin(d, eo, bias=False) for d in edge_dims)  # mean over the input axis
        self.e_all = nn.ModuleList(lin(d, eo, bias=False) for d in edge_dims)
        self.e_node_out = nn.ModuleList(lin(node_dims[e + 1], eo, bias=False) for e in range(E))
        self.e_node_in = nn.ModuleList(lin(node_dims[e], eo, bias=False) for e in range(E))
        self.e_glob = nn.ModuleList(lin(pooled, eo, bias=False) for _ in range(E))

    def forward(self, nodes: Sequence[Tensor], edges: Sequence[Tensor], globals_: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        g = _pool(nodes, edges, globals_)
        S, E = len(nodes), len(edges)
        new_nodes = []
        for s, h in enumerate(nodes):
            z = self.n_self[s](h) + self.n_pool[s](_mean(h, 1, keepdim=True)) + self.n_glob[s](g).unsqueeze(1)
            if s >= 1:
                z = z + self.n_in_edge[s](_mean(edges[s - 1], 2))  # edge s-1: [B, n_s, n_{s-1}, d] -> [B, n_s, d]
            if s < E:
                z = z + self.n_out_edge[s](_mean(edges[s], 1))  # edge s: [B, n_{s+1}, n_s, d] -> [B, n_s, d]
            new_nodes.append(z)
        new_edges = []
        for e, x in enumerate(edges):
            # the small broadcast terms are summed per axis first: two full-size adds instead of six
            per_col = (  # [B, 1, n_in, C]
                self.e_rows[e](_mean(x, 1, keepdim=True))
                + self.e_node_in[e](nodes[e]).unsqueeze(1)
                + (self.e_all[e](_mean(x, (1, 2))) + self.e_glob[e](g))[:, None, None, :]
            )
            per_row = self.e_cols[e](_mean(x, 2, keepdim=True)) + self.e_node_out[e](nodes[e + 1]).unsqueeze(2)
            new_edges.append(self.e_self[e](x).add_(per_col).add_(per_row))
        del S
        return new_nodes, new_edges


class NPNet(nn.Module):
    """Equivariant NP layers, then an invariant readout (mean and max over every set) and an MLP head."""

    def __init__(
        self,
        node_dims: Sequence[int],
        n_edges: int,
        g_dim: int,
        n_out: int,
        hidden: int = 64,
        n_layers: int = 3,
        head_hidden: int = 128,
        dropout: float = 0.1,
        edge_hidden: int | None = None,
    ) -> None:
        super().__init__()
        S = len(node_dims)
        eh = hidden if edge_hidden is None else edge_hidden
        dims_n, dims_e = list(node_dims), [1] * n_edges
        self.layers = nn.ModuleList()
        for _ in range(n_layers):
            self.layers.append(NPLayer(dims_n, dims_e, g_dim, hidden, eh))
            dims_n, dims_e = [hidden] * S, [eh] * n_edges
        readout = g_dim + 2 * sum(dims_n) + 2 * sum(dims_e)
        self.embedder = nn.Sequential(
            nn.Linear(readout, head_hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(head_hidden, head_hidden), nn.ReLU()
        )
        self.out = nn.Sequential(nn.Dropout(dropout), nn.Linear(head_hidden, n_out))

    def features(self, inputs: NPInputs) -> tuple[list[Tensor], list[Tensor]]:
        """The equivariant node and edge features after the last NP layer."""
        nodes, edges, g = inputs
        for i, layer in enumerate(self.layers):
            n2, e2 = layer(nodes, edges, g)
            n2, e2 = [torch.relu(z) for z in n2], [torch.relu(z) for z in e2]
            if i > 0:  # residual once shapes agree
                n2 = [a + b for a, b in zip(n2, nodes, strict=True)]
                e2 = [a + b for a, b in zip(e2, edges, strict=True)]
            nodes, edges = n2, e2
        return nodes, edges

    def pooled(self, inputs: NPInputs) -> Tensor:
        """Invariant features ``[B, R]``: globals, then mean and max over each node and edge set."""
        nodes, edges = self.features(inputs)
        parts = [inputs[2]]
        parts += [t for h in nodes for t in (_mean(h, 1), h.amax(1))]
        parts += [t for x in edges for t in (_mean(x, (1, 2)), x.amax((1, 2)))]
        return torch.cat(parts, -1)

    def embed(self, inputs: NPInputs) -> Tensor:
        return self.embedder(self.pooled(inputs))

    def forward(self, inputs: NPInputs) -> Tensor:
        return self.out(self.embed(inputs))
