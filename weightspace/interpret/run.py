"""One call from a diff population to a trained, scored interpreter (what the CLI and the benchmark run).

    res = train_interpreter(zoo, "digits-mlp-diffs", "np", {"epochs": 60}, seed=0)
    res.metrics        # held-out parents: acc_kind, backdoor_auroc, target_if_detected, ...
    rec = store_interpreter(zoo, res.interpreter, trained_on=res.train, metrics=res.metrics)
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from weightspace.interpret.data import DiffSet, load_diffs, split_by_parent
from weightspace.interpret.fields import DEFAULT_FIELDS
from weightspace.interpret.model import DiffInterpreter

__all__ = ["TrainResult", "train_interpreter"]


@dataclass
class TrainResult:
    """A fitted interpreter, the diffs it trained on, the held-out diffs and its scores on them."""

    interpreter: DiffInterpreter
    train: DiffSet
    test: DiffSet
    metrics: dict[str, float | None]
    train_seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {"population": self.train.population, "encoder": self.interpreter.encoder, "view": self.interpreter.view,
                "seed": self.interpreter.seed, "n_train": len(self.train), "n_test": len(self.test),
                "held_out_parents": len(set(self.test.parent_ids)), "metrics": self.metrics,
                "train_seconds": round(self.train_seconds, 2)}  # fmt: skip


def train_interpreter(
    zoo: Any,
    population: str | DiffSet,
    encoder: str = "np",
    config: Mapping[str, Any] | None = None,
    *,
    fields: Sequence[str] = DEFAULT_FIELDS,
    view: str = "diff",
    seed: int = 0,
    test_fraction: float = 0.2,
    ranks: Sequence[int] | None = None,
    progress: bool = False,
) -> TrainResult:
    """Fit an interpreter on the diffs of ``population`` with ``test_fraction`` of the *parents* held out
    (every child of a held-out parent is scored, none trained on); ``seed`` seeds split and encoder."""
    data = population if isinstance(population, DiffSet) else load_diffs(zoo, population, ranks=ranks)
    tr, te = split_by_parent(data.parent_ids, test_fraction, seed)
    interp = DiffInterpreter(encoder, config, fields=fields, view=view, seed=seed)
    t0 = time.perf_counter()
    interp.fit(data.subset(tr), progress=progress)
    secs = time.perf_counter() - t0
    test = data.subset(te)
    return TrainResult(interp, data.subset(tr), test, interp.score(test), secs)
