"""Neural graphs (graph metanetworks): a model as a torch_geometric ``Data``.

Neurons are nodes, weights are edges (input neuron -> output neuron), as in "Graph Metanetworks for
Processing Diverse Neural Architectures" and "Graph Neural Networks for Learning Equivariant
Representations of Neural Networks":

* node features ``x [n_nodes, 5]``: bias (0 for input neurons), layer index / L, is-input, is-output,
  position of fixed (input/output) neurons in [0, 1] (0 for hidden neurons, which have no identity);
* edge features ``edge_attr [n_edges, K]``: the weight; a conv kernel ``[k, k]`` is flattened onto its
  edge (``K = k*k``, dense edges zero-padded to ``K``);
* ``layer [n_nodes]``: each node's layer (0 = inputs).

A permutation of hidden neurons is a relabelling of nodes: the graph is isomorphic, so a GNN over it
is invariant by construction. Supported: chains of dense / conv layers (mlp, siren, cnn without
BatchNorm); anything else raises :class:`ConfigError`. Needs ``torch_geometric`` (pure Python; the
compiled extras are not needed).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from weightspace.spec import PermutationSpec
from zoo.errors import ConfigError

__all__ = ["neural_graph", "neural_graphs", "graph_chain"]


def graph_chain(spec: PermutationSpec) -> list[tuple[str, str | None]]:
    """``[(weight name, bias name or None), ...]`` of a dense/conv chain, inputs first."""
    weights = {k: ax for k, ax in spec.axes.items() if len(ax) >= 2}
    by_in: dict[str | None, str] = {}
    for k, ax in weights.items():
        if ax[1] in by_in:
            raise ConfigError("neural graphs need a chain of layers: two layers read the same neurons")
        by_in[ax[1]] = k
    chain, p, used = [], None, set()
    while p in by_in:
        w = by_in.pop(p)
        prefix = w.rsplit(".", 1)[0]
        b = f"{prefix}.bias" if f"{prefix}.bias" in spec.axes else None
        chain.append((w, b))
        used |= {w, b}
        p = weights[w][0]
        if p is None:
            break
    left = [k for k, ax in spec.axes.items() if k not in used and any(a is not None for a in ax)]
    if left or not chain or by_in:
        raise ConfigError(
            f"neural graphs support chains of dense/conv layers (mlp, siren, cnn without BatchNorm); "
            f"left over: {left[:4] or sorted(x for x in by_in.values())[:4]}"
        )
    return chain


def neural_graph(state: Mapping[str, Tensor], spec: PermutationSpec, *, y: Any = None) -> Any:
    """One model's neural graph (a ``torch_geometric.data.Data``; see the module docstring).

    Shapes:
        x: ``[n_nodes, 5]``; edge_index: ``[2, n_edges]``; edge_attr: ``[n_edges, K]``; layer: ``[n_nodes]``.
    """
    from torch_geometric.data import Data

    chain = graph_chain(spec)
    W = [state[w].float() for w, _ in chain]
    sizes = [W[0].shape[1]] + [w.shape[0] for w in W]
    L = len(W)
    K = max(int(w[0, 0].numel()) for w in W)
    offsets = [0]
    for n in sizes:
        offsets.append(offsets[-1] + n)
    xs = []
    for lvl, n in enumerate(sizes):
        bias = torch.zeros(n) if lvl == 0 else (state[chain[lvl - 1][1]].float() if chain[lvl - 1][1] else torch.zeros(n))
        fixed = lvl in (0, L)
        pos = torch.linspace(0, 1, n) if fixed and n > 1 else torch.zeros(n)
        xs.append(torch.stack([bias, torch.full((n,), lvl / L), torch.full((n,), float(lvl == 0)),
                               torch.full((n,), float(lvl == L)), pos], 1))  # fmt: skip
    srcs, dsts, attrs = [], [], []
    for i, w in enumerate(W):
        n_out, n_in = w.shape[0], w.shape[1]
        dst, src = torch.meshgrid(torch.arange(n_out), torch.arange(n_in), indexing="ij")
        srcs.append(src.reshape(-1) + offsets[i])
        dsts.append(dst.reshape(-1) + offsets[i + 1])
        a = w.reshape(n_out * n_in, -1)
        attrs.append(torch.nn.functional.pad(a, (0, K - a.shape[1])))
    layer = torch.cat([torch.full((n,), lvl, dtype=torch.long) for lvl, n in enumerate(sizes)])
    data = Data(x=torch.cat(xs), edge_index=torch.stack([torch.cat(srcs), torch.cat(dsts)]),
                edge_attr=torch.cat(attrs), layer=layer)  # fmt: skip
    if y is not None:
        data.y = torch.as_tensor(y).reshape(1, -1)
    return data


def neural_graphs(stacked: Mapping[str, Tensor], spec: PermutationSpec, y: Any = None) -> list[Any]:
    """One neural graph per model of a stacked population (``torch_geometric.data.Batch.from_data_list`` batches them)."""
    n = int(next(iter(stacked.values())).shape[0])
    return [neural_graph({k: v[i] for k, v in stacked.items()}, spec, y=None if y is None else y[i]) for i in range(n)]
