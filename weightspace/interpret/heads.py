"""Multi-head prediction on top of any registered torch encoder.

An encoder network ends in one output vector; :class:`HeadLayout` cuts it into one block of logits per
field (``kind``, ``classes``, ``corruption``, ...). Targets are encoded as one ``[N, T]`` tensor: per
block a one-hot (or, for a set-valued field, an even soft) target, or zeros where the field does not
apply to that diff; the loss is the sum over fields of the cross-entropy on the rows the field applies
to. So the encoders' one training loop, augmentations and save/load serve unchanged.

:func:`multihead` turns an encoder class (``np``, ``gmn``, ``flat_mlp``, ``probe``, or any registered
:class:`~weightspace.encoders.base.TorchEncoder`) into its multi-head variant by a mixin: same
constructor, same view and network, the targets, loss and outputs replaced.

Shapes: network outputs ``[B, T]`` (``T`` = total head width); per head ``[B, V_f]``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from weightspace.interpret.fields import FIELDS
from zoo.errors import ConfigError

__all__ = ["HeadLayout", "MultiHeadMixin", "multihead"]


class HeadLayout:
    """The heads' vocabularies and where each head's logits sit in the network output."""

    def __init__(self, vocab: Mapping[str, Sequence[Any]], weights: Mapping[str, float] | None = None) -> None:
        self.vocab = {f: list(v) for f, v in vocab.items()}
        self.weights = {f: float(w) for f, w in (weights or {}).items()}  # loss weight per field (default 1)
        self.offsets: dict[str, tuple[int, int]] = {}
        i = 0
        for f, v in self.vocab.items():
            self.offsets[f] = (i, i + len(v))
            i += len(v)
        self.width = i

    @classmethod
    def fit(cls, values: Sequence[Mapping[str, Any]], fields: Sequence[str],
            preset: Mapping[str, Sequence[Any]] | None = None) -> HeadLayout:  # fmt: skip
        """Vocabularies: ``preset`` classes plus every value seen in ``values`` (per-diff ``{field: value}``)."""
        vocab: dict[str, list[Any]] = {}
        for f in fields:
            seen = list((preset or {}).get(f, []))
            for v in values:
                if f in v:
                    for x in v[f] if FIELDS[f].multi else [v[f]]:
                        if x not in seen:
                            seen.append(x)
            if f == "kind" and len(seen) < 2:
                raise ConfigError(f"the training diffs have one change kind only ({seen}); train on at least two kinds")
            vocab[f] = sorted(seen, key=lambda x: (str(type(x)), x)) if f != "kind" else seen
        return cls(vocab)

    def encode(self, values: Sequence[Mapping[str, Any]]) -> Tensor:
        """``[N, T]`` targets: per head a one-hot / even soft target, zeros where the field does not apply."""
        y = torch.zeros(len(values), self.width)
        for i, v in enumerate(values):
            for f, (a, _) in self.offsets.items():
                if f not in v:
                    continue
                xs = v[f] if FIELDS[f].multi else [v[f]]
                index = {c: j for j, c in enumerate(self.vocab[f])}
                known = [index[x] for x in xs if x in index]
                for j in known:
                    y[i, a + j] = 1.0 / len(known)
        return y

    def loss(self, out: Tensor, y: Tensor) -> Tensor:
        """Sum over heads of the soft-target cross-entropy (times the field's weight), each on the rows its field
        applies to."""
        total = out.new_zeros(())
        for f, (a, b) in self.offsets.items():
            t = y[:, a:b]
            rows = t.sum(-1) > 0
            if rows.any():
                total = total - self.weights.get(f, 1.0) * (t[rows] * F.log_softmax(out[rows, a:b], -1)).sum(-1).mean()
        return total

    def split(self, out: Tensor) -> dict[str, np.ndarray]:
        """Per-head probabilities ``{field: [N, V_f]}`` from raw outputs ``[N, T]``."""
        return {f: torch.softmax(out[:, a:b], -1).numpy() for f, (a, b) in self.offsets.items()}

    def state(self) -> dict[str, Any]:
        return {"vocab": self.vocab}

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> HeadLayout:
        return cls(state["vocab"])


class MultiHeadMixin:
    """Mixed in before a :class:`~weightspace.encoders.base.TorchEncoder`: targets are per-diff
    ``{field: value}`` dicts, outputs per-head probabilities. Set ``head_preset_`` (vocabularies) and
    ``head_fields_`` before ``fit``."""

    head_fields_: list[str]
    head_preset_: dict[str, list[Any]]

    def _check_task(self) -> None:
        if getattr(self, "task", None) != "classification":
            raise ConfigError("a multi-head interpreter encoder is a classifier (task='classification')")

    def _encode_targets(self, y: Any) -> Tensor:
        self.heads_ = HeadLayout.fit(list(y), self.head_fields_, getattr(self, "head_preset_", None))
        self.heads_.weights = dict(getattr(self, "head_weights_", {}) or {})
        return self.heads_.encode(list(y))

    def _loss(self) -> Any:
        return self.heads_.loss

    def _n_out(self) -> int:
        return self.heads_.width

    def _target_state(self) -> dict[str, Any]:
        return {"heads_": self.heads_.state()}

    def _class_slots(self, n_classes: int) -> list[tuple[int, int]]:
        """The output columns ``(start, stop)`` of the class-valued fields whose vocabulary is exactly the
        model's classes ``0 .. n_classes - 1`` in order (column ``start + c`` is class ``c``): what a
        class-equivariant head fills in."""
        return [self.heads_.offsets[f] for f in self.heads_.vocab
                if FIELDS[f].class_valued and self.heads_.vocab[f] == list(range(n_classes))]  # fmt: skip

    def _restore(self, state: Mapping[str, Any], tensors: Mapping[str, Tensor]) -> None:
        self.heads_ = HeadLayout.from_state(state["heads_"])
        self.head_fields_ = list(self.heads_.vocab)
        super()._restore(state, tensors)  # type: ignore[misc]

    def predict_heads(self, X: Mapping[str, Tensor]) -> dict[str, np.ndarray]:
        """Per-head class probabilities ``{field: [N, V_f]}`` (vocabularies in ``heads_.vocab``)."""
        return self.heads_.split(self.decision_function(X))  # type: ignore[attr-defined]

    def predict(self, X: Mapping[str, Tensor]) -> np.ndarray:
        p = self.predict_heads(X)["kind"]
        return np.asarray(self.heads_.vocab["kind"], dtype=object)[p.argmax(-1)]


_CLASSES: dict[type, type] = {}


def multihead(base: type) -> type:
    """The multi-head variant of a torch encoder class (made once per class)."""
    from weightspace.encoders.base import TorchEncoder

    if not (isinstance(base, type) and issubclass(base, TorchEncoder)):
        raise ConfigError(f"{base!r} is not a torch encoder; multi-head training needs one (np, gmn, probe, flat_mlp)")
    if base not in _CLASSES:
        _CLASSES[base] = type(f"MultiHead{base.__name__}", (MultiHeadMixin, base), {"__doc__": base.__doc__})
    return _CLASSES[base]
