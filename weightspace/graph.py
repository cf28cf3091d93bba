"""Neural graphs (graph metanetworks): a model as a torch_geometric ``Data``.

Neurons are nodes, weights are edges (input neuron -> output neuron), as in "Graph Metanetworks for
Processing Diverse Neural Architectures" and "Graph Neural Networks for Learning Equivariant
Representations of Neural Networks":

* node features ``x [n_nodes, 5]``: bias (0 for input neurons), layer index / L, is-input, is-output,
  position of fixed (input/output) neurons in [0, 1] (0 for hidden neurons, which have no identity);
* edge features ``edge_attr [n_edges, K]``: the weight; a conv kernel ``[k, k]`` is flattened onto its
  edge (``K = k*k``, dense edges zero-padded to ``K``);
* ``layer [n_nodes]``: each node's layer (0 = inputs); ``node_kind [n_nodes]``: an index naming each
  fixed neuron (input ``i`` -> ``i``, output ``k`` -> ``n_0 + k``) and, for hidden neurons, only their
  layer (every hidden neuron of layer ``l`` -> ``n_0 + n_L + l - 1``); ``edge_layer [n_edges]``: the
  layer each weight belongs to (0 = the first layer).

Nodes are ordered layer by layer (inputs first); edges layer by layer, and within a layer by output
neuron, then input neuron (the row-major order of the weight matrix).

A permutation of hidden neurons is a relabelling of nodes: the graph is isomorphic, so a GNN over it
is invariant by construction. Supported: chains of dense / conv layers (mlp, siren, cnn without
BatchNorm); anything else raises :class:`ConfigError`. Needs ``torch_geometric`` (pure Python; the
compiled extras are not needed).

Every model of a population shares one topology, so :class:`GraphTemplate` (from
:func:`graph_template`) holds it once and :meth:`GraphTemplate.batch` turns a stacked population into
one disjoint-union graph with tensor ops only (no per-model loop, no per-model ``Data``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from weightspace.spec import PermutationSpec, layer_chain
from zoo.errors import MismatchError

__all__ = ["neural_graph", "neural_graphs", "graph_chain", "GraphTemplate", "graph_template"]


def graph_chain(spec: PermutationSpec) -> list[tuple[str, str | None]]:
    """``[(weight name, bias name or None), ...]`` of a dense/conv chain, inputs first (:func:`layer_chain`)."""
    chain = layer_chain(spec, what="neural graphs support chains of dense/conv layers (mlp, siren, cnn without BatchNorm)")
    return [(lay.weight, lay.bias) for lay in chain]


@dataclass(eq=False)
class GraphTemplate:
    """The neural-graph topology of one layout, shared by every model with that layout.

    Shapes (``n_nodes = sum(sizes)``, ``n_edges = sum(sizes[l] * sizes[l + 1])``):
        x: ``[n_nodes, 5]`` static node features (column 0, the bias, is 0 here); layer, node_kind:
        ``[n_nodes]``; edge_index: ``[2, n_edges]``; edge_layer: ``[n_edges]``.
    """

    chain: tuple[tuple[str, str | None], ...]
    sizes: tuple[int, ...]  # neurons per layer: n_0 (inputs) .. n_L (outputs)
    kernel: int  # K: edge feature width (k*k for conv layers; 1 for dense chains)
    x: Tensor
    layer: Tensor
    node_kind: Tensor
    edge_index: Tensor
    edge_layer: Tensor
    _batched: dict[int, Tensor] = field(default_factory=dict, repr=False)

    @property
    def n_nodes(self) -> int:
        return int(sum(self.sizes))

    @property
    def n_edges(self) -> int:
        return int(self.edge_index.shape[1])

    @property
    def n_kinds(self) -> int:
        """Size of the ``node_kind`` vocabulary: one per fixed neuron, one per hidden layer."""
        return self.sizes[0] + self.sizes[-1] + len(self.sizes) - 2

    def node_slices(self) -> list[slice]:
        """Each layer's node range (layer 0 = inputs ... layer L = outputs)."""
        out, start = [], 0
        for n in self.sizes:
            out.append(slice(start, start + n))
            start += n
        return out

    def batched_edge_index(self, n_graphs: int) -> Tensor:
        """``[2, n_graphs * n_edges]``: the template's edges repeated with node offsets (cached per size)."""
        if n_graphs not in self._batched:
            if len(self._batched) > 8:
                self._batched.clear()
            off = torch.arange(n_graphs).mul_(self.n_nodes).repeat_interleave(self.n_edges)
            self._batched[n_graphs] = self.edge_index.repeat(1, n_graphs) + off
        return self._batched[n_graphs]

    def features(self, stacked: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Node biases ``[B, n_nodes]`` and edge features ``[B, n_edges, K]`` of a stacked population."""
        W = [stacked[w] for w, _ in self.chain]
        B = int(W[0].shape[0])
        edges = []
        for w in W:
            e = w.reshape(B, w.shape[1] * w.shape[2], -1).float()
            edges.append(F.pad(e, (0, self.kernel - e.shape[2])) if e.shape[2] < self.kernel else e)
        bias = [W[0].new_zeros(B, self.sizes[0])]
        for i, (_, b) in enumerate(self.chain):
            bias.append(stacked[b].reshape(B, -1).float() if b else W[0].new_zeros(B, self.sizes[i + 1]))
        return torch.cat(bias, 1), torch.cat(edges, 1)

    def check(self, stacked: Mapping[str, Tensor]) -> int:
        """The number of models; :class:`MismatchError` unless ``stacked`` has this layout's tensors."""
        for i, (w, b) in enumerate(self.chain):
            want = (self.sizes[i + 1], self.sizes[i])
            if w not in stacked or tuple(stacked[w].shape[1:3]) != want:
                got = tuple(stacked[w].shape[1:]) if w in stacked else "missing"
                raise MismatchError(
                    f"tensor {w!r}: got per-model shape {got}, the graph layout needs {want}+kernel"
                )
            if b is not None and (b not in stacked or tuple(stacked[b].shape[1:]) != (self.sizes[i + 1],)):
                raise MismatchError(f"bias {b!r} is missing or has the wrong shape for this graph layout")
        return int(stacked[self.chain[0][0]].shape[0])

    def batch(self, stacked: Mapping[str, Tensor], y: Tensor | None = None) -> Any:
        """One disjoint-union graph of all models in ``stacked`` (a ``torch_geometric.data.Batch``).

        Shapes (``B`` models):
            x: ``[B * n_nodes, 5]``; edge_index: ``[2, B * n_edges]``; edge_attr: ``[B * n_edges, K]``;
            layer, node_kind, batch: ``[B * n_nodes]``; edge_layer: ``[B * n_edges]``; ptr: ``[B + 1]``.
        """
        from torch_geometric.data import Batch

        B = self.check(stacked)
        bias, edges = self.features(stacked)
        x = torch.cat([bias.unsqueeze(-1), self.x[:, 1:].expand(B, -1, -1)], -1).reshape(B * self.n_nodes, -1)
        out = Batch(
            x=x,
            edge_index=self.batched_edge_index(B),
            edge_attr=edges.reshape(B * self.n_edges, self.kernel),
            layer=self.layer.repeat(B),
            node_kind=self.node_kind.repeat(B),
            edge_layer=self.edge_layer.repeat(B),
            batch=torch.arange(B).repeat_interleave(self.n_nodes),
            ptr=torch.arange(B + 1) * self.n_nodes,
        )
        if y is not None:
            out.y = torch.as_tensor(y).reshape(B, -1)
        return out


def graph_template(spec: PermutationSpec, shapes: Mapping[str, Sequence[int] | Tensor]) -> GraphTemplate:
    """The neural-graph template of a layout: ``spec`` and per-model ``shapes`` (or one model's tensors).

    Raises :class:`ConfigError` for architectures that are not chains of dense/conv layers.
    """
    chain = graph_chain(spec)
    dims = {k: tuple(v.shape) if isinstance(v, Tensor) else tuple(v) for k, v in shapes.items()}
    for w, b in chain:
        if w not in dims or len(dims[w]) < 2 or (b is not None and b not in dims):
            raise MismatchError(
                f"the shapes do not fit the spec: {w!r} (or its bias) missing or not a weight"
            )
    sizes = [dims[chain[0][0]][1]] + [dims[w][0] for w, _ in chain]
    for i, (w, _) in enumerate(chain):
        if dims[w][1] != sizes[i]:
            raise MismatchError(f"{w!r} reads {dims[w][1]} neurons but the previous layer has {sizes[i]}")
    L = len(chain)
    kernel = max(int(torch.Size(dims[w][2:]).numel()) for w, _ in chain)
    xs, kinds = [], []
    n_fixed = sizes[0] + sizes[L]
    for lvl, n in enumerate(sizes):
        fixed = lvl in (0, L)
        pos = torch.linspace(0, 1, n) if fixed and n > 1 else torch.zeros(n)
        xs.append(torch.stack([torch.zeros(n), torch.full((n,), lvl / L), torch.full((n,), float(lvl == 0)),
                               torch.full((n,), float(lvl == L)), pos], 1))  # fmt: skip
        if lvl == 0:
            kinds.append(torch.arange(n))
        elif lvl == L:
            kinds.append(sizes[0] + torch.arange(n))
        else:
            kinds.append(torch.full((n,), n_fixed + lvl - 1))
    offsets = [0]
    for n in sizes:
        offsets.append(offsets[-1] + n)
    srcs, dsts, elayer = [], [], []
    for i in range(L):
        dst, src = torch.meshgrid(torch.arange(sizes[i + 1]), torch.arange(sizes[i]), indexing="ij")
        srcs.append(src.reshape(-1) + offsets[i])
        dsts.append(dst.reshape(-1) + offsets[i + 1])
        elayer.append(torch.full((sizes[i + 1] * sizes[i],), i))
    return GraphTemplate(
        chain=tuple(chain),
        sizes=tuple(int(n) for n in sizes),
        kernel=kernel,
        x=torch.cat(xs),
        layer=torch.cat([torch.full((n,), lvl, dtype=torch.long) for lvl, n in enumerate(sizes)]),
        node_kind=torch.cat(kinds).long(),
        edge_index=torch.stack([torch.cat(srcs), torch.cat(dsts)]).long(),
        edge_layer=torch.cat(elayer).long(),
    )


def _single(template: GraphTemplate, bias: Tensor, edges: Tensor, y: Any) -> Any:
    from torch_geometric.data import Data

    x = template.x.clone()
    x[:, 0] = bias
    data = Data(x=x, edge_index=template.edge_index, edge_attr=edges, layer=template.layer,
                node_kind=template.node_kind, edge_layer=template.edge_layer)  # fmt: skip
    if y is not None:
        data.y = torch.as_tensor(y).reshape(1, -1)
    return data


def neural_graph(state: Mapping[str, Tensor], spec: PermutationSpec, *, y: Any = None) -> Any:
    """One model's neural graph (a ``torch_geometric.data.Data``; see the module docstring).

    Shapes:
        x: ``[n_nodes, 5]``; edge_index: ``[2, n_edges]``; edge_attr: ``[n_edges, K]``; layer: ``[n_nodes]``.
    """
    t = graph_template(spec, state)
    bias, edges = t.features({k: v.unsqueeze(0) for k, v in state.items()})
    return _single(t, bias[0], edges[0], y)


def neural_graphs(stacked: Mapping[str, Tensor], spec: PermutationSpec, y: Any = None) -> list[Any]:
    """One neural graph per model of a stacked population (``torch_geometric.data.Batch.from_data_list`` batches them;
    :meth:`GraphTemplate.batch` builds the same batch without the per-model objects)."""
    t = graph_template(spec, {k: v.shape[1:] for k, v in stacked.items()})
    bias, edges = t.features(stacked)
    return [_single(t, bias[i], edges[i], None if y is None else y[i]) for i in range(bias.shape[0])]
