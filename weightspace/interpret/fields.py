"""The fields a diff interpreter predicts, read from a fine-tune's label (its ``change``).

A child of a labelled fine-tune recipe carries its change (:mod:`zoo.build.finetune`): ``{"kind": "backdoor",
"target": 7, "size": 2, "position": [0, 0], ...}``. Each :class:`Field` says when it applies (for
which change kinds) and what its value is; the interpreter has one classification head per field, and
a field's head is trained only on the diffs it applies to (a masked loss).

========== ============================ =====================================================
field      applies to                   value (a class of the head)
========== ============================ =====================================================
kind       every change                 ``null``, ``suppress``, ``boost``, ``swap``, ``robust``, ``backdoor``
classes    suppress, boost, swap        the affected class(es): a set (one class, or the two swapped)
corruption robust                       the corruption the child was made robust to
position   backdoor                     the trigger's top-left pixel ``"row,col"``
size       backdoor                     the trigger's side in pixels
target     backdoor                     the label the trigger sends images to
========== ============================ =====================================================

``classes`` and ``target`` are *class-valued*: their values are the model's output classes, so an
encoder can read them with one shared scorer per class (``np_diff``'s ``outputs="set"``).

A set-valued field (``classes``) is trained with a soft target spread evenly over its members and
decoded as the top ``k`` classes, ``k`` being the set size the predicted kind implies (two for a swap).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from zoo.errors import ConfigError

__all__ = ["Field", "FIELDS", "DEFAULT_FIELDS", "field_values", "check_fields", "set_size", "is_missing"]


@dataclass(frozen=True)
class Field:
    """One predicted field: its name, the change kinds it applies to (None: all) and its value(s)."""

    name: str
    kinds: tuple[str, ...] | None
    value: Callable[[Mapping[str, Any]], Any]
    multi: bool = False  # the value is a set of classes (soft target, top-k decoding)
    doc: str = ""
    class_valued: bool = False  # its values are the model's output classes (a class-equivariant head can read it)

    def applies(self, change: Mapping[str, Any]) -> bool:
        return self.kinds is None or change.get("kind") in self.kinds


def _position(c: Mapping[str, Any]) -> str:
    r, col = c["position"]
    return f"{int(r)},{int(col)}"


def _classes(c: Mapping[str, Any]) -> list[int]:
    return sorted(int(v) for v in c["classes"]) if c["kind"] == "swap" else [int(c["class"])]


FIELDS: dict[str, Field] = {
    f.name: f
    for f in (
        Field("kind", None, lambda c: str(c["kind"]), doc="what kind of change the fine-tune made"),
        Field("classes", ("suppress", "boost", "swap"), _classes, multi=True, doc="the class(es) it affected",
              class_valued=True),
        Field("corruption", ("robust",), lambda c: str(c["corruption"]), doc="the corruption it made the model robust to"),
        Field("position", ("backdoor",), _position, doc="the trigger's top-left pixel (row, col)"),
        Field("size", ("backdoor",), lambda c: int(c["size"]), doc="the trigger's side in pixels"),
        Field("target", ("backdoor",), lambda c: int(c["target"]), doc="the label a triggered image is sent to",
              class_valued=True),
    )
}
DEFAULT_FIELDS: tuple[str, ...] = tuple(FIELDS)


def check_fields(fields: Sequence[str]) -> list[str]:
    """The field names, checked (``kind`` first and always present)."""
    fields = list(fields)
    if unknown := [f for f in fields if f not in FIELDS]:
        raise ConfigError(f"unknown interpreter field(s) {unknown}; valid: {', '.join(FIELDS)}")
    if "kind" not in fields:
        raise ConfigError("the interpreter's fields must include 'kind' (the other fields are read given the kind)")
    return ["kind", *[f for f in dict.fromkeys(fields) if f != "kind"]]


def is_missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def field_values(change: Mapping[str, Any], fields: Sequence[str]) -> dict[str, Any]:
    """``{field: value}`` for the fields that apply to ``change`` (a field whose arguments are missing is skipped)."""
    out: dict[str, Any] = {}
    for name in fields:
        f = FIELDS[name]
        if f.applies(change):
            try:
                out[name] = f.value(change)
            except (KeyError, TypeError, ValueError):
                continue
    return out


def set_size(kind: str) -> int:
    """How many classes a change of ``kind`` affects (the ``classes`` field's top-k)."""
    return 2 if kind == "swap" else 1
