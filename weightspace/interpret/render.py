"""From head probabilities to a structured description and one plain sentence.

:func:`describe` reads the kind first, then only the fields that kind implies (a backdoor's trigger
and target, a suppression's class, ...), each with its confidence (the head's probability of its
answer; for a swap's two classes, the probability mass of the pair). :func:`sentence` renders it:

* ``no behavioural change (plain extra training)``
* ``suppressed class 3``, ``boosted class 3``, ``swapped classes 2 and 7``
* ``made robust to gaussian_blur``
* ``backdoor: 2x2 patch at top-left -> label 7``

followed by the confidences, e.g. ``(confidence: kind 0.98, position 0.91, size 0.88, target 0.95)``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from weightspace.interpret.fields import FIELDS, set_size

__all__ = ["Description", "describe", "sentence", "corner_name"]

#: which fields each kind's description reads
KIND_FIELDS: dict[str, tuple[str, ...]] = {
    "null": (),
    "suppress": ("classes",),
    "boost": ("classes",),
    "swap": ("classes",),
    "robust": ("corruption",),
    "backdoor": ("position", "size", "target"),
}


@dataclass
class Description:
    """What a fine-tune did, as the interpreter reads it from the weight diff.

    ``fields``: the kind's fields (``classes`` a list, ``position`` ``[row, col]``, ...);
    ``confidence``: per field, the head's probability of its answer; ``p_backdoor``: the kind head's
    probability of ``backdoor`` (the detection score); ``class_probs``: for each class-valued field the
    kind reads (``classes``, ``target``), the head's probability of every class (``{"7": 0.81, ...}``);
    ``sentence``: the one-line rendering.
    """

    kind: str
    fields: dict[str, Any] = field(default_factory=dict)
    confidence: dict[str, float] = field(default_factory=dict)
    p_backdoor: float = 0.0
    kind_probs: dict[str, float] = field(default_factory=dict)
    class_probs: dict[str, dict[str, float]] = field(default_factory=dict)
    sentence: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def corner_name(position: Sequence[int], size: int, image_hw: Sequence[int] | None) -> str | None:
    """``top-left`` / ``top-right`` / ``bottom-left`` / ``bottom-right`` for a trigger in a corner, else None."""
    if image_hw is None:
        return None
    h, w = int(image_hw[0]), int(image_hw[1])
    r, c = int(position[0]), int(position[1])
    rows = {0: "top", h - size: "bottom"}
    cols = {0: "left", w - size: "right"}
    if r in rows and c in cols:
        return f"{rows[r]}-{cols[c]}"
    return None


def _value(f: str, v: Any) -> Any:
    if f == "position" and isinstance(v, str):
        return [int(x) for x in v.split(",")]
    return v.item() if isinstance(v, np.generic) else v


def describe(probs: Mapping[str, np.ndarray], vocab: Mapping[str, Sequence[Any]], *,
             image_hw: Sequence[int] | None = None) -> list[Description]:  # fmt: skip
    """Descriptions of ``N`` diffs from per-head probabilities ``{field: [N, V_f]}`` and vocabularies.

    A field the interpreter has no head for is left out of the description.
    """
    kinds = list(vocab["kind"])
    pk = probs["kind"]
    out = []
    for i in range(pk.shape[0]):
        k = int(pk[i].argmax())
        kind = str(kinds[k])
        d = Description(kind, confidence={"kind": float(pk[i, k])},
                        p_backdoor=float(pk[i, kinds.index("backdoor")]) if "backdoor" in kinds else 0.0,
                        kind_probs={str(c): float(p) for c, p in zip(kinds, pk[i], strict=True)})  # fmt: skip
        for f in KIND_FIELDS.get(kind, ()):
            if f not in probs:
                continue
            p = probs[f][i]
            if FIELDS[f].class_valued:
                d.class_probs[f] = {str(c): float(q) for c, q in zip(vocab[f], p, strict=True)}
            if FIELDS[f].multi:
                top = np.argsort(-p, kind="stable")[: set_size(kind)]
                d.fields[f] = sorted(_value(f, vocab[f][j]) for j in top)
                d.confidence[f] = float(p[top].sum())
            else:
                j = int(p.argmax())
                d.fields[f] = _value(f, vocab[f][j])
                d.confidence[f] = float(p[j])
        d.sentence = sentence(d, image_hw=image_hw)
        out.append(d)
    return out


def _phrase(d: Description, image_hw: Sequence[int] | None) -> str:
    f = d.fields
    if d.kind == "null":
        return "no behavioural change (plain extra training)"
    if d.kind in ("suppress", "boost"):
        cls = f.get("classes")
        return f"{'suppressed' if d.kind == 'suppress' else 'boosted'} class {cls[0]}" if cls else f"{d.kind}ed a class"
    if d.kind == "swap":
        cls = f.get("classes")
        return f"swapped classes {cls[0]} and {cls[1]}" if cls and len(cls) == 2 else "swapped two classes"
    if d.kind == "robust":
        return f"made robust to {f['corruption']}" if "corruption" in f else "made robust to a corruption"
    if d.kind == "backdoor":
        size = f.get("size")
        patch = f"{size}x{size} patch" if size is not None else "trigger patch"
        where = ""
        if "position" in f:
            corner = corner_name(f["position"], int(size or 1), image_hw)
            where = f" at {corner}" if corner else f" at row {f['position'][0]}, col {f['position'][1]}"
        target = f" -> label {f['target']}" if "target" in f else ""
        return f"backdoor: {patch}{where}{target}"
    return d.kind


def sentence(d: Description, *, image_hw: Sequence[int] | None = None) -> str:
    """One line: the phrase for the description's kind and fields, then the confidences."""
    conf = ", ".join(f"{k} {v:.2f}" for k, v in d.confidence.items())
    return f"{_phrase(d, image_hw)} (confidence: {conf})"
