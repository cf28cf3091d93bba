"""How well an interpreter reads held-out diffs.

:func:`score` returns, on a labelled :class:`~weightspace.interpret.data.DiffSet`:

* ``acc_<field>``: accuracy of each field's head on the diffs the field applies to (the true kind
  given: a swap's ``classes`` is right when both classes are; ``position`` when row and column are);
* ``exact``: the whole description right (the predicted kind, and every field that kind reads);
* ``backdoor_auroc``: ROC AUC of the kind head's probability of ``backdoor`` (backdoor vs every other
  change); ``None`` when the set holds one side only;
* ``target_if_detected``: target label right among the true backdoors predicted ``backdoor``;
  ``trigger_exact``: position and size both right, over the true backdoors;
* ``n``, ``n_backdoor``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from weightspace.interpret.fields import FIELDS, field_values, set_size
from weightspace.interpret.render import KIND_FIELDS

__all__ = ["score", "field_correct"]


def field_correct(f: str, probs: np.ndarray, vocab: list[Any], truth: Any, kind: str) -> bool:
    """Whether head ``f``'s answer (top-k for a set field, ``k`` from ``kind``) equals ``truth``."""
    if FIELDS[f].multi:
        top = np.argsort(-probs, kind="stable")[: set_size(kind)]
        return sorted(str(vocab[j]) for j in top) == sorted(str(t) for t in truth)
    return str(vocab[int(probs.argmax())]) == str(truth)


def score(interp: Any, data: Any) -> dict[str, float | None]:
    """Per-field accuracies, whole-description accuracy, backdoor AUROC and target recovery on ``data``."""
    from sklearn.metrics import roc_auc_score

    probs = interp.predict_proba(data)
    vocab = interp.vocab_
    kinds = list(vocab["kind"])
    truth = [field_values(c, interp.fields) for c in data.changes]
    pred_kind = [str(kinds[int(i)]) for i in probs["kind"].argmax(-1)]
    out: dict[str, float | None] = {}
    for f in interp.fields:
        rows = [i for i, t in enumerate(truth) if f in t]
        if rows:
            out[f"acc_{f}"] = float(np.mean([field_correct(f, probs[f][i], vocab[f], truth[i][f], truth[i]["kind"])
                                             for i in rows]))  # fmt: skip
    exact = []
    for i, t in enumerate(truth):
        ok = pred_kind[i] == t["kind"]
        for f in KIND_FIELDS.get(t["kind"], ()):
            if ok and f in t and f in probs:
                ok = field_correct(f, probs[f][i], vocab[f], t[f], t["kind"])
        exact.append(ok)
    out["exact"] = float(np.mean(exact))
    is_bd = np.asarray([t["kind"] == "backdoor" for t in truth])
    p_bd = probs["kind"][:, kinds.index("backdoor")] if "backdoor" in kinds else np.zeros(len(truth))
    out["backdoor_auroc"] = float(roc_auc_score(is_bd, p_bd)) if 0 < is_bd.sum() < len(is_bd) else None
    bd = np.flatnonzero(is_bd)
    if len(bd):
        if "target" in probs:
            det = [i for i in bd if pred_kind[i] == "backdoor"]
            out["target_if_detected"] = (float(np.mean([field_correct("target", probs["target"][i], vocab["target"],
                                                                      truth[i]["target"], "backdoor") for i in det]))
                                         if det else 0.0)  # fmt: skip
        if "position" in probs and "size" in probs:
            out["trigger_exact"] = float(np.mean([
                field_correct("position", probs["position"][i], vocab["position"], truth[i]["position"], "backdoor")
                and field_correct("size", probs["size"][i], vocab["size"], truth[i]["size"], "backdoor") for i in bd]))  # fmt: skip
    out["n"] = float(len(truth))
    out["n_backdoor"] = float(len(bd))
    return out
