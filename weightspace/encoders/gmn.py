"""``"gmn"``: a graph metanetwork over neural graphs (NG-GNN / Graph Metanetworks style).

Each model is its neural graph (:mod:`weightspace.graph`): neurons are nodes carrying their bias,
weights are edges carrying the weight (a conv kernel flattened onto its edge). A stack of edge-aware
message-passing layers (:class:`GMNConv`, a torch_geometric ``MessagePassing``) updates node and edge
states; an invariant readout pools them and an MLP head predicts.

Invariance: fixed neurons (inputs, outputs) get a learned embedding of their index; hidden neurons only
one of their layer, so a hidden-neuron permutation is a graph isomorphism and every pooled feature (and
so the output) is unchanged (a tested property).

All models of a population share one topology: the graph template is built once per layout and a batch
is one disjoint-union graph made with tensor ops (:meth:`~weightspace.graph.GraphTemplate.batch`).

Cost: edges outnumber nodes (digits-mlp 64-32-10: 2,368 edges, 106 nodes per model) and every edge-level
op is memory-bound on the CPU, so edge states and messages are kept narrow (``edge_hidden``,
``msg_hidden``), the first layer of the edge MLP is split into per-node terms, and edge-level linear maps
use a backward with a fast BLAS layout (:class:`EdgeLinear`).

Shapes: ``B`` models of ``V`` nodes and ``E`` edges each; node states ``[B * V, H]``; edge states
``[B * E, D]``; readout ``[B, R]``.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch_geometric.nn import MessagePassing

from weightspace.encoders.base import TorchEncoder
from weightspace.encoders.probe import ProbeFeatures, ProbeInputs, chain_activations
from weightspace.encoders.registry import register_encoder
from weightspace.graph import GraphTemplate, graph_template
from weightspace.spec import PermutationSpec

__all__ = ["GMNEncoder", "GMNConv", "GMNNet", "GMNProbeNet"]

AGGREGATIONS = ("mean", "max", "sum")


class _EdgeLinearFn(torch.autograd.Function):
    """``x @ W.T + b`` whose weight gradient is computed as ``(x.T @ g).T`` when that is the faster layout:
    CPU BLAS is many times slower at ``g.T @ x`` for ``[E, out] x [E, in]`` with ``out > in`` and ``E`` large
    (edge-level tensors: ``E`` is ~10^5 per batch)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
        ctx.save_for_backward(x, weight)
        return torch.addmm(bias, x, weight.t())

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        gx = g @ weight if ctx.needs_input_grad[0] else None
        gw = (x.t() @ g).t() if weight.shape[0] > weight.shape[1] else g.t() @ x
        return gx, gw, g.sum(0)


class EdgeLinear(nn.Linear):
    """An ``nn.Linear`` for edge-level tensors ``[E, in]`` (same parameters, a faster backward on the CPU)."""

    def forward(self, x: Tensor) -> Tensor:
        return _EdgeLinearFn.apply(x, self.weight, self.bias)


class GMNConv(MessagePassing):
    """One edge-aware layer: edge hidden ``z_ij = relu(FiLM(e_ij) (A x_i + C x_j))``, node update from ``z``
    aggregated at both ends, edge update ``e_ij <- e_ij + W z_ij``; both residual.

    The first linear map of the message/edge MLP is split over its inputs (node terms are computed once per
    node, not per edge), and the edge feature modulates the node terms (FiLM, as in NG-GNN): an edge
    ``j -> i`` with edge state ``e`` sends ``relu(s(e) * (A x_i + C x_j) + b(e))``: with a fixed input neuron
    ``j`` (its own embedding) the slope in the weight depends on ``j``, so mean aggregation can read linear
    functionals of a neuron's incoming weight row (what an NP layer's input channels do).

    Shapes:
        x: ``[n_nodes, H]``; edge_index: ``[2, n_edges]`` (source, target); edge_attr: ``[n_edges, D]``
        -> ``([n_nodes, H], [n_edges, D])``.
    """

    def __init__(self, hidden: int, edge_dim: int, msg_dim: int, aggr: Sequence[str] = ("mean",)) -> None:
        super().__init__(aggr=list(aggr) if len(aggr) > 1 else aggr[0])
        self.hidden, self.edge_dim, self.msg_dim = hidden, edge_dim, msg_dim
        self.dst_lin = nn.Linear(hidden, msg_dim)
        self.src_lin = nn.Linear(hidden, msg_dim, bias=False)
        self.scale = EdgeLinear(edge_dim, msg_dim)  # FiLM: two maps, not one chunked (strided views are slow)
        self.shift = EdgeLinear(edge_dim, msg_dim)
        self.edge_out = EdgeLinear(msg_dim, edge_dim)
        self.node_mlp = nn.Sequential(
            nn.Linear(hidden + 2 * msg_dim * len(aggr), hidden), nn.ReLU(), nn.Linear(hidden, hidden)
        )
        self.norm = nn.LayerNorm(hidden)

    def reset_parameters(self) -> None:
        super().reset_parameters()
        for m in self.modules():
            if m is not self and hasattr(m, "reset_parameters"):
                m.reset_parameters()

    def forward(
        self, x: Tensor, edge_index: Tensor, edge_attr: Tensor, rev_index: Tensor
    ) -> tuple[Tensor, Tensor]:
        n = x.shape[0]
        z = self.edge_updater(edge_index, x=(self.src_lin(x), self.dst_lin(x)), e=edge_attr, size=(n, n))
        into = self.propagate(edge_index, z=z, size=(n, n))  # at each target: from its inputs
        out_of = self.propagate(rev_index, z=z, size=(n, n))  # at each source: from its outputs
        x = x + self.node_mlp(torch.cat([self.norm(x), into, out_of], -1))
        return x, edge_attr + self.edge_out(z)

    def edge_update(self, x_i: Tensor, x_j: Tensor, e: Tensor) -> Tensor:
        return torch.relu(torch.addcmul(self.shift(e), self.scale(e), x_i + x_j))

    def message(self, z: Tensor) -> Tensor:
        return z


class GMNNet(nn.Module):
    """Input encodings, :class:`GMNConv` layers, an invariant readout, an MLP head.

    Readout per model: mean and max of the node states of each hidden layer and of the inputs, the output
    neurons' states (projected, kept in order: they are fixed), and the mean edge state of each layer.
    """

    def __init__(
        self,
        template: GraphTemplate,
        n_out: int,
        hidden: int = 64,
        edge_hidden: int = 8,
        msg_hidden: int = 16,
        n_layers: int = 2,
        head_hidden: int = 128,
        dropout: float = 0.2,
        aggr: Sequence[str] = ("mean",),
        out_dim: int = 16,
        extra_node_features: int = 0,
    ) -> None:
        super().__init__()
        self.template = template
        t = template
        L = len(t.sizes) - 1
        self.node_in = nn.Linear(t.x.shape[1] + extra_node_features, hidden)
        self.node_kind = nn.Embedding(t.n_kinds, hidden)
        self.edge_in = EdgeLinear(t.kernel, edge_hidden)
        self.edge_kind = nn.Embedding(L, edge_hidden)
        self.convs = nn.ModuleList(GMNConv(hidden, edge_hidden, msg_hidden, aggr) for _ in range(n_layers))
        self.out_proj = nn.Linear(hidden, out_dim)
        readout = 2 * hidden * L + out_dim * t.sizes[L] + edge_hidden * L
        self.embedder = nn.Sequential(
            nn.LayerNorm(readout), nn.Linear(readout, head_hidden), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(head_hidden, head_hidden), nn.ReLU(),
        )  # fmt: skip
        self.out = nn.Sequential(nn.Dropout(dropout), nn.Linear(head_hidden, n_out))

    def features(self, batch: Any) -> tuple[Tensor, Tensor]:
        """Node states ``[B * V, H]`` and edge states ``[B * E, D]`` after the last layer (equivariant)."""
        x = self.node_in(batch.x) + self.node_kind(batch.node_kind)
        e = self.edge_in(batch.edge_attr) + self.edge_kind(batch.edge_layer)
        rev = batch.edge_index.flip(0)
        for conv in self.convs:
            x, e = conv(x, batch.edge_index, e, rev)
        return x, e

    def pooled(self, batch: Any) -> Tensor:
        """Invariant features ``[B, R]``."""
        t = self.template
        B = int(batch.num_graphs)
        x, e = self.features(batch)
        x = x.view(B, t.n_nodes, -1)
        sl = t.node_slices()
        parts = [p for s in sl[:-1] for p in (x[:, s].mean(1), x[:, s].amax(1))]  # inputs, hidden layers
        parts.append(self.out_proj(x[:, sl[-1]]).reshape(B, -1))
        e = e.view(B, t.n_edges, -1)
        start = 0
        for i in range(len(sl) - 1):
            m = t.sizes[i] * t.sizes[i + 1]
            parts.append(e[:, start : start + m].mean(1))
            start += m
        return torch.cat(parts, -1)

    def embed(self, batch: Any) -> Tensor:
        return self.embedder(self.pooled(batch))

    def forward(self, batch: Any) -> Tensor:
        return self.out(self.embed(batch))


class GMNProbeNet(nn.Module):
    """:class:`GMNNet` whose nodes also carry their values on learned probe inputs (Kofinas et al. 2024):
    input neurons the probe coordinates, hidden neurons their activations, output neurons the outputs.
    Inputs: ``(batch, raw chain)``; the activations are node features, so invariance is kept."""

    def __init__(self, net: GMNNet, probes: ProbeInputs, arch: Mapping[str, Any]) -> None:
        super().__init__()
        self.net = net
        self.probes = probes
        self.arch = dict(arch)

    def _with_probes(self, inputs: tuple) -> Any:
        batch, raw = inputs
        x = self.probes()  # [P, n_0]
        acts = chain_activations(raw, x, self.arch)  # [B, P, n_l], l = 1..L
        B = acts[0].shape[0]
        vals = torch.cat([x.unsqueeze(0).expand(B, -1, -1), *acts], 2)  # [B, P, n_nodes] in graph order
        batch = copy.copy(batch)  # shallow: the graph tensors are shared, only x is replaced
        batch.x = torch.cat([batch.x, torch.asinh(vals).transpose(1, 2).reshape(-1, x.shape[0])], -1)
        return batch

    def features(self, inputs: tuple) -> tuple[Tensor, Tensor]:
        return self.net.features(self._with_probes(inputs))

    def embed(self, inputs: tuple) -> Tensor:
        return self.net.embed(self._with_probes(inputs))

    def forward(self, inputs: tuple) -> Tensor:
        return self.net(self._with_probes(inputs))


@register_encoder("gmn")
class GMNEncoder(ProbeFeatures, TorchEncoder):
    """A graph metanetwork: edge-aware message passing over each model's neural graph, invariant pooling,
    an MLP head. Invariant to every hidden-neuron permutation (a tested property). Supports chains of
    dense/conv layers (mlp, siren, cnn without BatchNorm); others raise :class:`~zoo.errors.ConfigError`.

    Args:
        task: ``"regression"`` or ``"classification"``.
        Defaults: tuned modestly on digits-mlp accuracy regression (see the module docstring).
        hidden: node state width; edge_hidden: edge state width; msg_hidden: message width (both kept
            small: edges outnumber nodes ~20:1 and dominate the cost); n_layers: message-passing layers; head_hidden: width of the head (also the embedding dimension
            of :meth:`transform`); dropout: in the head.
        aggr: node aggregations of incoming/outgoing messages, any of ``"mean"``, ``"max"``, ``"sum"``.
        epochs, batch_size, lr, weight_decay, seed: training (AdamW, cosine schedule).
        augment: augmentation steps (see :class:`~weightspace.augment.Augmenter`).
        target: regression targets as ``"rank"`` (normal scores of ranks) or ``"standard"``.
        probes: learned probe inputs whose values at every neuron become node features (inputs: the probe
            itself, hidden: activations, outputs: outputs), as in Kofinas et al. 2024; 0 (default) reads the
            weights only. Needs ``fit(..., arch=config)``; mlp and siren chains.
        probe_range: initial spread of the probes (see :class:`~weightspace.encoders.ProbeEncoder`).
    """

    def __init__(
        self,
        task: str = "regression",
        hidden: int = 64,
        edge_hidden: int = 8,
        msg_hidden: int = 16,
        n_layers: int = 2,
        head_hidden: int = 128,
        dropout: float = 0.2,
        aggr: Sequence[str] = ("mean",),
        epochs: int = 100,
        batch_size: int = 64,
        lr: float = 3e-3,
        weight_decay: float = 1e-2,
        augment: Sequence[Any] = (),
        target: str = "rank",
        probes: int = 0,
        probe_range: float = 1.0,
        seed: int = 0,
    ) -> None:
        self._store_params(locals())

    def _template(self) -> GraphTemplate:
        key = (self.spec_, tuple((k, tuple(v)) for k, v in self.layout_.items()))
        if getattr(self, "_template_key", None) != key:
            self._template_cache, self._template_key = graph_template(self.spec_, self.layout_), key
        return self._template_cache

    def _layout(self, X: Mapping[str, Tensor], spec: PermutationSpec | None) -> None:
        from zoo.errors import ConfigError

        bad = [a for a in self.aggr if a not in AGGREGATIONS]
        if bad or not self.aggr:
            raise ConfigError(
                f"unknown aggregation(s) {bad or self.aggr!r}; valid: {', '.join(AGGREGATIONS)}"
            )
        super()._layout(X, spec)
        self._template()  # refuses architectures that are not dense/conv chains, before training

    def _prepare(self, stacked: Any) -> Any:
        if not self.probes:
            return self._template().batch(stacked)
        normed, raw = stacked
        chain = self._template().chain
        return self._template().batch(normed), [(raw[w], raw[b] if b else None) for w, b in chain]

    def _build_net(self, n_out: int) -> nn.Module:
        P = self._n_probes()
        net = GMNNet(self._template(), n_out, hidden=self.hidden, edge_hidden=self.edge_hidden,
                     msg_hidden=self.msg_hidden, n_layers=self.n_layers, head_hidden=self.head_hidden, dropout=self.dropout,
                     aggr=self.aggr, extra_node_features=P)  # fmt: skip
        if not P:
            return net
        return GMNProbeNet(net, *self._probe_inputs(self._template().sizes[0]))

    def features(self, X: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Equivariant node states ``[N * V, H]`` and edge states ``[N * E, D]`` (graph order of
        :mod:`weightspace.graph`)."""
        self._check_fitted()
        with torch.no_grad():
            return self.net_.features(self._prepare(self._normalize(X)))
