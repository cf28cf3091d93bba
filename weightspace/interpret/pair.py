"""``"np_diff"``: the NP encoder for weight diffs: the diff, optionally its parent as channels, and statistics.

The interpreter's ``pair`` view hands an encoder the diff (``child - parent``, under the models' own
tensor names) and the parent's weights (under ``parent::<name>``); the ``diff`` view the diff alone.
This encoder reads either:

* **channels**: with the parent given, every hidden neuron, edge and global of the NP view carries three
  channels -- the diff, the parent and their elementwise product (after per-tensor normalisation) -- so
  it can read a change *relative to* the weights it changed (a corruption fine-tune that shrinks
  first-layer weights, a boost that grows one output's row); without it, the diff alone;
* **statistics** (``stats=True``): the per-tensor statistics of Unterthiner et al. 2020 (mean,
  variance, five quantiles, L2 norm, mean absolute value; :func:`weightspace.encoders.stats.weight_statistics`)
  of every input tensor, squashed with ``asinh``, appended to the invariant globals: the shape of each
  tensor's change distribution, which the statistics baseline reads well and mean/max pooling only
  approximates.

Both are invariant to hidden-neuron permutations (elementwise products permute with the neurons;
statistics of a tensor ignore its order), so the encoder is too (tested by the encoders' conformance
suite, where it reads a plain population as a diff of unknown parent).

With ``outputs="set"`` the class-valued fields of a multi-head interpreter (``classes``, ``target``) are
read by a :class:`~weightspace.interpret.classhead.ClassSetHead` instead of the trunk's head: one logit per
class from weights shared by every class, so their probabilities permute exactly as the model's classes
(the rows of its last layer) do, and a class never seen as a target in training can be named.

Shapes: node sets ``[B, n_l, C F_l]``; edge sets ``[B, n_out, n_in, C]``; globals ``[B, C n_L + 9 T]``
(``C`` = 3 with a parent, else 1; ``T`` input tensors when ``stats``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from weightspace.encoders.np_encoder import NPEncoder
from weightspace.encoders.np_layers import NPInputs, NPLayer, NPNet, np_inputs
from weightspace.encoders.registry import register_encoder
from weightspace.encoders.stats import STAT_NAMES, weight_statistics
from weightspace.interpret.classhead import ClassSetHead, ClassSetNet, class_view
from zoo.errors import ConfigError

__all__ = ["DiffNPEncoder", "OUTPUTS", "PARENT", "pair_class_view", "pair_inputs", "split_pair"]

#: how ``np_diff`` reads class-valued fields: ``vector`` (the trunk's head, one output per class), ``set`` (a
#: class-equivariant head, :mod:`weightspace.interpret.classhead`, whose class features pooled over the
#: classes also feed the other heads) or ``set_separate`` (the same head, the other heads without them)
OUTPUTS = ("vector", "set", "set_separate")

#: the prefix of the parent's tensors in a pair view
PARENT = "parent::"


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


def pair_inputs(stacked: Mapping[str, Tensor], chain: Sequence[Any]) -> NPInputs:
    """The NP view with channels (diff, parent, diff * parent) for every node, edge and global feature."""
    diff, parent = split_pair(stacked)
    if parent is None:
        return np_inputs(diff, chain)
    a, b = np_inputs(diff, chain), np_inputs(parent, chain)
    nodes = [torch.cat([x, y, x * y], -1) for x, y in zip(a[0], b[0], strict=True)]
    edges = [torch.cat([x, y, x * y], -1) for x, y in zip(a[1], b[1], strict=True)]
    return nodes, edges, torch.cat([a[2], b[2], a[2] * b[2]], -1)


def pair_class_view(stacked: Mapping[str, Tensor], chain: Sequence[Any]) -> tuple[Tensor, Tensor, Tensor]:
    """The class view (:func:`~weightspace.interpret.classhead.class_view`) with channels (diff, parent,
    diff * parent) when the parent is given, else the diff's alone."""
    diff, parent = split_pair(stacked)
    a = class_view(diff, chain)
    if parent is None:
        return a
    b = class_view(parent, chain)
    return tuple(torch.cat([x, y, x * y], -1) for x, y in zip(a, b, strict=True))  # type: ignore[return-value]


@register_encoder("np_diff")
class DiffNPEncoder(NPEncoder):
    """:class:`~weightspace.encoders.np_encoder.NPEncoder` for diffs (see the module docstring).

    Args: those of ``np`` without probes (a diff is not a network to run), and ``stats``: append the
    per-tensor statistics of every input tensor to the invariant globals (default True); ``outputs``:
    ``"vector"`` (default: every field from the trunk's head), ``"set"`` (the class-valued fields of a
    multi-head interpreter from a class-equivariant head whose class features, pooled over the classes, also
    feed the other heads; see the module docstring) or ``"set_separate"`` (the same head, not shared).
    """

    def __init__(
        self,
        task: str = "classification",
        hidden: int = 128,
        edge_hidden: int = 32,
        n_layers: int = 3,
        head_hidden: int = 128,
        dropout: float = 0.1,
        epochs: int = 60,
        batch_size: int = 64,
        lr: float = 3e-3,
        weight_decay: float = 1e-4,
        augment: Sequence[Any] = (),
        target: str = "rank",
        stats: bool = True,
        outputs: str = "vector",
        seed: int = 0,
    ) -> None:
        self._store_params(locals())
        self.probes, self.probe_range = 0, 1.0  # the NP machinery's probe options: off

    def _channels(self) -> int:
        return 3 if any(k.startswith(PARENT) for k in self.layout_) else 1

    def _stat_names(self) -> list[str]:
        return sorted(self.layout_) if self.stats else []

    def _layout(self, X: Mapping[str, Tensor], spec: Any) -> None:
        if self.outputs not in OUTPUTS:
            raise ConfigError(f"unknown np_diff outputs {self.outputs!r}; valid: {', '.join(OUTPUTS)}")
        diff, _ = split_pair(X)
        super()._layout(diff, spec)
        self.layout_ = {k: list(v.shape[1:]) for k, v in X.items()}

    def _prepare(self, stacked: Any) -> Any:
        nodes, edges, g = pair_inputs(stacked, self._chain())
        names = self._stat_names()
        if names:
            s = torch.as_tensor(weight_statistics(stacked, names), dtype=g.dtype)
            g = torch.cat([g, torch.asinh(s)], -1)
        if not self.outputs.startswith("set"):
            return nodes, edges, g
        inv = g[:, g.shape[1] - len(STAT_NAMES) * len(names):] if names else None  # the class-invariant globals
        return (nodes, edges, g), pair_class_view(stacked, self._chain()), inv

    def _build_net(self, n_out: int) -> nn.Module:
        chain = self._chain()
        if len(chain) < 2:
            raise ConfigError("the NP encoder needs at least one hidden layer (a chain of two or more dense layers)")
        C = self._channels()
        shapes = self.layout_
        sizes = [shapes[chain[0].weight][1]] + [shapes[lay.weight][0] for lay in chain]
        L = len(chain)
        node_dims = [C * (1 + (sizes[0] if lvl == 1 else 0) + (sizes[L] if lvl == L - 1 else 0)) for lvl in range(1, L)]
        g_dim = C * sizes[L] + len(STAT_NAMES) * len(self._stat_names())
        net = NPNet(node_dims, L - 2, g_dim, n_out, hidden=self.hidden, n_layers=self.n_layers,
                    head_hidden=self.head_hidden, dropout=self.dropout, edge_hidden=self.edge_hidden)  # fmt: skip
        if C > 1 and L > 2:  # the first layer's edge sets carry C channels
            net.layers[0] = NPLayer(node_dims, [C] * (L - 2), g_dim, self.hidden, self.edge_hidden)
        if not self.outputs.startswith("set"):
            return net
        slots = self._class_slots(sizes[L]) if hasattr(self, "_class_slots") else []
        if not slots:
            raise ConfigError("np_diff outputs='set' scores the classes of a multi-head interpreter's class-valued "
                              "fields (classes, target); use it through DiffInterpreter with one of those fields")  # fmt: skip
        c_node = C * (1 + (sizes[0] if L == 2 else 3))
        head = ClassSetHead(C, C, c_node, len(STAT_NAMES) * len(self._stat_names()), len(slots),
                            hidden=max(8, self.head_hidden // 2), dropout=self.dropout)  # fmt: skip
        return ClassSetNet(net, head, slots, n_out, share=self.outputs == "set", dropout=self.dropout)
