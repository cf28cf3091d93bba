"""Class-equivariant heads: score every output class of the diffed model with shared weights.

A field whose value is one of the model's classes (``classes``: the affected class(es); ``target``: a
backdoor's label) is, with a plain head, one output per class: class 7's logit has its own weights, so
a class never seen as a target in training is never named, and what the head learns about class 3 does
not carry to class 5. Relabelling the classes of a model (permuting the rows of its last layer, in the
child and the parent alike) relabels what the fine-tune did to them: the head should permute with them.

:class:`ClassSetHead` does that. The last layer of a dense chain is a ``[K, n]`` matrix between the
``K`` classes and the ``n`` last hidden neurons; both axes are sets (the classes under relabelling, the
neurons under the hidden permutations). Its input, per (class ``c``, neuron ``j``) pair, is the diff of
the weight ``W[c, j]`` (and, in the pair view, the parent's weight and their product), the class's bias,
and neuron ``j``'s own description, read without any class order: its bias and incoming weights (from
the fixed input pixels in a one-hidden-layer MLP; pooled over a previous hidden layer otherwise). Layers
equivariant to both axes (self, mean over classes, mean over neurons, mean over both: the four linear
maps that commute with the two permutations) mix them; then, per class, the mean and max over neurons,
the class's bias and the mean over classes (context) go through one MLP shared by every class, which
gives each class-valued field one logit per class. Class-invariant globals (the per-tensor statistics)
join the context.

So the class logits permute exactly as the classes do (tested), and a class never seen as a target
can be named when its row shows what other targets' rows showed. The other fields (kind, corruption,
trigger) keep the encoder's trunk.

Shapes: ``w [B, K, n, C]``, ``b [B, K, C]``, ``node [B, n, F]``, ``g [B, G]`` -> ``[B, K, n_fields]``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from weightspace.views import DenseLayer

__all__ = ["ClassSetHead", "ClassSetNet", "class_view"]

ClassInputs = tuple[Tensor, Tensor, Tensor]


def class_view(stacked: Mapping[str, Tensor], chain: Sequence[DenseLayer]) -> ClassInputs:
    """``(w [B, K, n, 1], b [B, K, 1], node [B, n, F])`` of one set of (normalised) weights of a dense chain:
    the last layer, its bias, and each last hidden neuron's bias and incoming weights (fixed input
    positions when the chain has one hidden layer; mean, max and min over the previous hidden layer else)."""
    last, prev = chain[-1], chain[-2]
    W = stacked[last.weight]
    B, K = W.shape[:2]
    b = stacked[last.bias] if last.bias else W.new_zeros(B, K)
    Wp = stacked[prev.weight]
    bp = stacked[prev.bias] if prev.bias else Wp.new_zeros(Wp.shape[:2])
    node = [bp.unsqueeze(-1)]
    if len(chain) == 2:
        node.append(Wp)
    else:  # the previous layer's neurons are a permutable set too: pool over them
        node += [Wp.mean(-1, keepdim=True), Wp.amax(-1, keepdim=True), Wp.amin(-1, keepdim=True)]
    return W.unsqueeze(-1), b.unsqueeze(-1), torch.cat(node, -1)


class _Layer(nn.Module):
    """The linear maps of a ``[B, K, n, D]`` tensor that commute with permutations of K and of n."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.self_ = nn.Linear(d, d)
        self.over_k = nn.Linear(d, d, bias=False)
        self.over_n = nn.Linear(d, d, bias=False)
        self.over_all = nn.Linear(d, d, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        z = self.self_(x) + self.over_k(x.mean(1, keepdim=True)) + self.over_n(x.mean(2, keepdim=True))
        return z + self.over_all(x.mean((1, 2), keepdim=True))


class ClassSetHead(nn.Module):
    """One logit per class and field from shared weights (see the module docstring).

    Args:
        c_edge, c_bias, c_node: channels of ``w``, ``b`` and ``node``; g_dim: class-invariant globals
        (0: none); n_fields: class-valued fields; hidden: width; n_layers: equivariant layers; dropout.
    """

    def __init__(self, c_edge: int, c_bias: int, c_node: int, g_dim: int, n_fields: int, hidden: int = 64,
                 n_layers: int = 2, dropout: float = 0.1) -> None:  # fmt: skip
        super().__init__()
        d = hidden
        self.node = nn.Sequential(nn.Linear(c_node, d), nn.ReLU(), nn.Linear(d, d))
        self.edge = nn.Linear(c_edge, d)
        self.bias = nn.Linear(c_bias, d, bias=False)
        self.glob = nn.Linear(g_dim, d, bias=False) if g_dim else None
        self.layers = nn.ModuleList(_Layer(d) for _ in range(n_layers))
        # per class: mean and max over neurons, its bias' features, the same pooled over classes (context)
        self.per_class = nn.Sequential(nn.Linear(6 * d, 2 * d), nn.ReLU(), nn.Dropout(dropout), nn.Linear(2 * d, d), nn.ReLU())
        self.score = nn.Linear(d, n_fields)
        self.width = d

    def features(self, w: Tensor, b: Tensor, node: Tensor, g: Tensor | None = None) -> Tensor:
        """Per-class features ``[B, K, hidden]`` (equivariant to the classes)."""
        bf = self.bias(b)  # [B, K, d]
        x = self.edge(w) + self.node(node).unsqueeze(1) + bf.unsqueeze(2)  # [B, K, n, d]
        if self.glob is not None and g is not None:
            x = x + self.glob(g)[:, None, None, :]
        x = torch.relu(x)
        for lay in self.layers:
            x = x + torch.relu(lay(x))
        per = torch.cat([x.mean(2), x.amax(2), torch.relu(bf)], -1)  # [B, K, 3d]
        ctx = per.mean(1, keepdim=True).expand_as(per)
        return self.per_class(torch.cat([per, ctx], -1))

    def forward(self, w: Tensor, b: Tensor, node: Tensor, g: Tensor | None = None) -> Tensor:
        return self.score(self.features(w, b, node, g))  # [B, K, n_fields]


class ClassSetNet(nn.Module):
    """A trunk (any network over the encoder's inputs, ``[B, T]`` outputs) whose class-valued fields'
    columns are replaced by a :class:`ClassSetHead`'s logits. Inputs: ``(trunk inputs, class inputs,
    class-invariant globals)``; ``slots``: each class-valued field's ``(start, stop)`` columns (``stop -
    start`` = the number of classes, column ``start + c`` = class ``c``)."""

    def __init__(self, trunk: nn.Module, head: ClassSetHead, slots: Sequence[tuple[int, int]], n_out: int,
                 share: bool = False, dropout: float = 0.1) -> None:  # fmt: skip
        super().__init__()
        self.trunk = trunk
        self.head = head
        self.slots = [tuple(s) for s in sorted(slots)]
        self.n_out = n_out
        self.share = share
        if share:  # the other heads also read the class features pooled over the classes (mean and max)
            d = trunk.out[-1].in_features
            trunk.out = nn.Identity()
            self.out = nn.Sequential(nn.Dropout(dropout), nn.Linear(d + 2 * head.width, n_out))

    def forward(self, inputs: tuple[Any, ClassInputs, Tensor | None]) -> Tensor:
        base, cls, g = inputs
        h = self.head.features(*cls, g)  # [B, K, d]
        if self.share:
            out = self.out(torch.cat([self.trunk.embed(base), h.mean(1), h.amax(1)], -1))
        else:
            out = self.trunk(base)
        scores = self.head.score(h)  # [B, K, F]
        parts, i = [], 0
        for f, (a, b) in enumerate(self.slots):
            parts += [out[:, i:a], scores[..., f]]
            i = b
        parts.append(out[:, i:])
        return torch.cat(parts, -1)

    def features(self, inputs: tuple) -> Any:
        return self.trunk.features(inputs[0])

    def pooled(self, inputs: tuple) -> Tensor:
        return self.trunk.pooled(inputs[0])

    def embed(self, inputs: tuple) -> Tensor:
        return self.trunk.embed(inputs[0])
