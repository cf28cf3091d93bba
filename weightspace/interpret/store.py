"""Interpreters in the zoo: stored as models with lineage, predictions as a derived table, explain one diff.

* :func:`store_interpreter` -- the interpreter's networks as one zoo model (op ``train.interpreter``,
  population ``interpreters/<encoder>-<trained on>-<layout hash>``), its configuration and learned state in the
  hyperparameter ``interpreter_doc``, its held-out scores as metrics (``test_acc_kind``, ...), and a
  lineage edge from every child whose diff it trained on (role ``train``).
* :func:`interpreter_from_zoo` rebuilds it; :func:`find_interpreter` picks the newest stored one for an
  architecture.
* :func:`write_predictions` writes its reading of every diff of a population as a derived table
  (``Zoo.write_table``): child, parent, kind with its confidence, the kind's fields, the sentence, the
  true kind and the train/test side.
* :func:`explain_diff` -- one child (parent from its lineage unless given) -> :class:`Explanation`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from weightspace.interpret.data import DiffSet, load_diffs, pair_diff
from weightspace.interpret.model import DiffInterpreter
from weightspace.interpret.render import Description
from zoo.errors import ConfigError, NotFoundError

__all__ = ["store_interpreter", "interpreter_from_zoo", "find_interpreter", "write_predictions", "explain_diff", "Explanation"]

OP = "train.interpreter"


def store_interpreter(
    zoo: Any,
    interp: DiffInterpreter,
    *,
    trained_on: DiffSet,
    metrics: Mapping[str, float | None] | None = None,
    population: str = "interpreters",
    tags: Sequence[str] = (),
) -> Any:
    """Store a fitted interpreter as a zoo model; returns its record (see the module docstring).

    ``trained_on``: the diffs it was fitted on (their children become its lineage parents);
    ``metrics``: held-out scores to record (``None`` values are skipped).
    """
    import hashlib

    doc, tensors = interp.to_doc()
    # a population holds one architecture (one set of tensor shapes): interpreters of other sizes get their own
    layout = hashlib.sha1(json.dumps(sorted((k, list(v.shape)) for k, v in tensors.items())).encode()).hexdigest()[:8]
    pop = f"{population}/{interp.encoder}-{trained_on.population}-{layout}"
    return zoo.add(
        tensors,
        population=pop,
        op=OP,
        hparams={"interpreter": "diff", "encoder": interp.encoder, "view": interp.view, "trained_on": trained_on.population,
                 "seed": interp.seed, "interpreter_doc": json.dumps(doc)},  # fmt: skip
        metrics={f"test_{k}": float(v) for k, v in (metrics or {}).items() if v is not None},
        tags=("interpreter", f"interpreter:{interp.encoder}", *tags),
        source="weightspace.interpret",
        parents={int(i): "train" for i in trained_on.child_ids},
        params={"fields": interp.fields, "view": interp.view, "n_train": len(trained_on), "trained_on": trained_on.population},
    )


def interpreter_from_zoo(zoo: Any, model: int | str) -> DiffInterpreter:
    """Rebuild an interpreter stored with :func:`store_interpreter`."""
    rec = zoo.get(model)
    hp = rec.hparams()
    if rec.op != OP or "interpreter_doc" not in hp:
        raise ConfigError(f"model {rec.id} ({rec.name}) is not a stored interpreter (op {rec.op!r}); train one with "
                          "`weightzoo interpret train --to-zoo`")  # fmt: skip
    return DiffInterpreter.from_doc(json.loads(hp["interpreter_doc"]), rec.state_dict())


def find_interpreter(zoo: Any, arch: Mapping[str, Any] | None = None) -> int:
    """The id of the newest stored interpreter (trained on diffs of ``arch`` when given)."""
    from zoo.models.architectures import normalize_config

    recs = sorted(zoo.models().tag("interpreter").records(), key=lambda r: r.id, reverse=True)
    recs = [r for r in recs if r.op == OP]
    if not recs:
        raise NotFoundError(f"no interpreter is stored in the zoo at {zoo.root}; train one with "
                            "`weightzoo interpret train -p digits-mlp-diffs --to-zoo`")  # fmt: skip
    if arch is None:
        return recs[0].id
    want = normalize_config(arch)
    for r in recs:
        doc = json.loads(r.hparams()["interpreter_doc"])
        if doc["state"].get("arch_") == want:
            return r.id
    raise NotFoundError(f"no stored interpreter was trained on this architecture ({want.get('family')}); "
                        f"stored ones: {', '.join(str(r.id) for r in recs[:5])}. Train one on diffs of it "
                        "(weightzoo interpret train -p POPULATION --to-zoo)")  # fmt: skip


def _resolve(zoo: Any, interpreter: DiffInterpreter | int | str | None, arch: Mapping[str, Any] | None) -> tuple[DiffInterpreter, int | None]:
    if isinstance(interpreter, DiffInterpreter):
        return interpreter, None
    mid = find_interpreter(zoo, arch) if interpreter is None else zoo.get(interpreter).id
    return interpreter_from_zoo(zoo, mid), mid


@dataclass
class Explanation:
    """One diff, read: the child, the parent, the interpreter used and its :class:`Description`."""

    child: int
    parent: int
    interpreter: int | None
    description: Description

    @property
    def sentence(self) -> str:
        return self.description.sentence

    def to_dict(self) -> dict[str, Any]:
        return {"child": self.child, "parent": self.parent, "interpreter": self.interpreter, **self.description.to_dict()}


def explain_diff(zoo: Any, child: int | str, parent: int | str | None = None, *,
                 interpreter: DiffInterpreter | int | str | None = None) -> Explanation:  # fmt: skip
    """Say what the fine-tune from ``parent`` (default: the child's lineage parent) to ``child`` did.

    ``interpreter``: a fitted :class:`DiffInterpreter`, a stored one's id or name, or None (the newest
    stored interpreter trained on the child's architecture). Nothing is written.
    """
    crec, prec, diff, par = pair_diff(zoo, child, parent)
    interp, mid = _resolve(zoo, interpreter, crec.arch_config)
    interp.check_architecture(crec.arch_config, f"model {crec.id}")
    return Explanation(crec.id, prec.id, mid, interp.describe(diff, par)[0])


def write_predictions(
    zoo: Any,
    interp: DiffInterpreter,
    table: str,
    *,
    population: str | None = None,
    data: DiffSet | None = None,
    train_ids: Sequence[int] = (),
    test_ids: Sequence[int] = (),
    produced_by: int | str | None = None,
) -> Any:
    """Write the interpreter's reading of every labelled diff of ``population`` (or of ``data``) as the
    derived table ``table``: ``model_id`` (the child), ``parent_id``, ``kind``, ``confidence``, ``p_backdoor``,
    ``fields`` (JSON), ``sentence``, ``true_kind``, ``correct_kind``, ``rank`` and, given ``train_ids`` / ``test_ids``,
    ``split`` (``train`` / ``test`` / NULL)."""
    if data is None:
        if population is None:
            raise ConfigError("give population=... (or data=...) to write predictions for")
        data = load_diffs(zoo, population)
    interp.check_architecture(data.config, f"the diffs of {data.population!r}")
    desc = interp.describe(data)
    side = {**{int(i): "train" for i in train_ids}, **{int(i): "test" for i in test_ids}}
    frame = pd.DataFrame({
        "model_id": data.child_ids, "parent_id": data.parent_ids, "kind": [d.kind for d in desc],
        "confidence": [d.confidence["kind"] for d in desc], "p_backdoor": [d.p_backdoor for d in desc],
        "fields": [json.dumps(d.fields) for d in desc], "sentence": [d.sentence for d in desc],
        "true_kind": [c["kind"] for c in data.changes], "rank": data.ranks,
    })  # fmt: skip
    frame["correct_kind"] = frame["kind"] == frame["true_kind"]
    if side:  # which side of the interpreter's own split each diff was on
        frame["split"] = pd.Series([side.get(int(i)) for i in data.child_ids], dtype=object)
    return zoo.write_table(table, frame, description=f"diff interpreter ({interp.encoder}) on {data.population!r}",
                           produced_by=produced_by)  # fmt: skip
