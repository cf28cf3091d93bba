"""Choosing the patch strength alpha on the validation split (never on the test split).

The paper patches at a fixed alpha (1 by default) and shows that rescaling trades robustness for clean
accuracy. :func:`choose_alpha` makes that trade on held-out data: it patches the model at every alpha
of a grid, measures validation accuracy clean and under the signatures' corruptions (the validation
split corrupted like digits-c's test split: pixel space, seed 0), and picks

    the alpha with the highest corrupted validation accuracy (mean over the signatures' corruptions)
    among those losing at most ``max_clean_drop`` of clean validation accuracy against the unpatched
    model; ties go to the smaller alpha. When no alpha keeps within the budget, the one losing the
    least clean accuracy (``within_budget`` False).

BatchNorm models get their running statistics recomputed for every candidate, as
:func:`~analysis.rws.patch_model` does (:func:`recompute_bn`).

    choice = choose_alpha(cfg, clean_sd, [sig], max_clean_drop=0.01)
    choice.alpha, choice.table          # alpha, clean_val, corrupted_val, clean_drop, within_budget
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch
from torch import Tensor

from analysis.rws.patch import check_alpha, patch
from analysis.rws.signature import Signature
from zoo.errors import ConfigError

__all__ = ["ALPHA_GRID", "AlphaChoice", "choose_alpha", "has_bn", "bn_data", "recompute_bn", "check_budget", "alpha_grid"]

#: the default candidates: 0.25 to 2 in steps of 0.25
ALPHA_GRID: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0)


def has_bn(state: Mapping[str, Tensor]) -> bool:
    """True when the state dict holds BatchNorm running statistics."""
    return any(k.endswith("running_mean") for k in state)


def bn_data(config: Mapping[str, Any], sigs: Sequence[Signature], dataset: str = "digits",
            dataset_root: str | None = None) -> Tensor:  # fmt: skip
    """The clean training split plus one corrupted copy per signature's corruption (for BatchNorm statistics).

    Shapes: returns ``[n * (1 + corruptions), *in]`` in the layout ``config``'s models take.
    """
    from zoo.build.finetune import shard_data
    from zoo.models.datasets import load_dataset

    ds = load_dataset(dataset, root=dataset_root).for_architecture(config)
    changes = [{"kind": "robust", "corruption": s.corruption, "severity": int(s.severity or 3)} for s in sigs if s.corruption]
    if not changes:
        return ds.X_train
    return shard_data(ds, changes, [0] * len(changes)).X_train


def recompute_bn(config: Mapping[str, Any], stacked: Mapping[str, Tensor], X: Tensor) -> dict[str, Tensor]:
    """BatchNorm running statistics of a stacked population recomputed on ``X`` (:func:`analysis.lmc.reset_bn_stats`).

    Shapes: stacked ``name -> [N, *shape]``; returns the same.
    """
    from analysis.lmc import reset_bn_stats

    return reset_bn_stats(config, stacked, X)


def check_budget(max_clean_drop: Any) -> float:
    if isinstance(max_clean_drop, bool) or not isinstance(max_clean_drop, int | float) or not 0 <= max_clean_drop <= 1:
        raise ConfigError(f"max_clean_drop must be a fraction of accuracy in [0, 1] (0.01 = 1 point), got {max_clean_drop!r}")
    return float(max_clean_drop)


def alpha_grid(alphas: Sequence[float] | None) -> list[float]:
    """Validated, sorted, distinct candidate alphas (None: :data:`ALPHA_GRID`)."""
    if alphas is None:
        return list(ALPHA_GRID)
    vals = sorted({check_alpha(a, "a candidate alpha") for a in alphas})
    if not vals:
        raise ConfigError("give at least one candidate alpha")
    return vals


@dataclass
class AlphaChoice:
    """The chosen alpha and what every candidate did on the validation split.

    ``table``: one row per candidate: ``alpha, clean_val, corrupted_val, clean_drop, within_budget``;
    ``reference``: the unpatched model's ``(clean_val, corrupted_val)``.
    """

    alpha: float
    within_budget: bool
    max_clean_drop: float
    table: pd.DataFrame
    reference: tuple[float, float]

    def params(self) -> dict[str, Any]:
        """JSON-able summary (stored in the ``patch.rws`` lineage params)."""
        return {"split": "val", "alpha": self.alpha, "within_budget": self.within_budget,
                "max_clean_drop": self.max_clean_drop, "grid": self.table["alpha"].tolist(),
                "clean_val": [round(v, 6) for v in self.table["clean_val"]],
                "corrupted_val": [round(v, 6) for v in self.table["corrupted_val"]],
                "reference": [round(v, 6) for v in self.reference]}  # fmt: skip


def choose_alpha(
    config: Mapping[str, Any],
    state: Mapping[str, Tensor],
    signatures: Signature | Sequence[Signature],
    *,
    alphas: Sequence[float] | None = None,
    max_clean_drop: float = 0.01,
    normalize: bool = True,
    strict: bool = True,
    bn_reset: bool | None = None,
    dataset: str = "digits",
    dataset_root: str | None = None,
) -> AlphaChoice:
    """Pick alpha for patching ``state`` with ``signatures`` on the validation split (see the module docstring).

    Every signature must record its corruption (what it is for). ``bn_reset`` (default: when the
    model has BatchNorm) recomputes the statistics of every candidate on the clean training split
    plus the signatures' corrupted copies.

    Shapes: state ``name -> [*shape]``.
    """
    from analysis.rws.evaluate import corruption_accuracy

    sigs = [signatures] if isinstance(signatures, Signature) else list(signatures)
    if not sigs:
        raise ConfigError("give at least one signature to choose alpha for")
    budget = check_budget(max_clean_drop)
    grid = alpha_grid(alphas)
    missing = [i for i, s in enumerate(sigs) if not s.corruption]
    if missing:
        raise ConfigError(f"signature(s) {missing} record no corruption, so there is nothing to validate alpha on; "
                          "give alpha as a number")  # fmt: skip
    variants = [dict(state)] + [patch(state, sigs, alpha=a, normalize=normalize, config=config, strict=strict) for a in grid]
    stacked = {k: torch.stack([v[k] for v in variants]) for k in state}
    if (has_bn(state) if bn_reset is None else bn_reset) and has_bn(state):
        X = bn_data(config, sigs, dataset, dataset_root)
        patched = recompute_bn(config, {k: v[1:] for k, v in stacked.items()}, X)
        stacked = {k: torch.cat([stacked[k][:1], patched[k]]) for k in stacked}
    pairs: dict[int, list[str]] = {}
    for s in sigs:
        pairs.setdefault(int(s.severity or 3), []).append(str(s.corruption))
    frames = [corruption_accuracy(config, stacked, corruptions=kinds, severities=[sev], dataset=dataset,
                                  dataset_root=dataset_root, split="val", clean=(i == 0))
              for i, (sev, kinds) in enumerate(pairs.items())]  # fmt: skip
    df = pd.concat(frames, ignore_index=True)
    clean = df[df["corruption"] == "clean"].set_index("model")["acc"]
    corrupted = df[df["corruption"] != "clean"].groupby("model")["acc"].mean()
    table = pd.DataFrame({"alpha": grid, "clean_val": [float(clean[i + 1]) for i in range(len(grid))],
                          "corrupted_val": [float(corrupted[i + 1]) for i in range(len(grid))]})  # fmt: skip
    table["clean_drop"] = float(clean[0]) - table["clean_val"]
    table["within_budget"] = table["clean_drop"] <= budget + 1e-9
    ok = table[table["within_budget"]]
    if len(ok):
        best = ok.sort_values(["corrupted_val", "alpha"], ascending=[False, True]).iloc[0]
    else:
        best = table.sort_values(["clean_drop", "alpha"]).iloc[0]
    return AlphaChoice(float(best["alpha"]), bool(len(ok)), budget, table, (float(clean[0]), float(corrupted[0])))
