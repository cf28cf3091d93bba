"""Labelled diffs out of the zoo, and the diff view of one (child, parent) pair.

:func:`load_diffs` reads a population of fine-tune children (a ``finetune.change`` recipe such as
``digits-mlp-diffs``), their parents and their labels, and returns a :class:`DiffSet`: the stacked
diffs ``child - parent`` (the view the interpreter's encoder reads: the same tensor names, shapes and
neuron permutations as the models themselves, since a fine-tune starts from its parent's basis), the
parents' weights (for the ``pair`` view), each child's change, its parent (the group held-out splits
keep together) and its rank (0 = full fine-tune). :func:`pair_diff` is the same for one child.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from weightspace.interpret.fields import is_missing
from zoo.errors import ConfigError, MismatchError, NotFoundError

__all__ = ["DiffSet", "concat_diffs", "relabel_classes", "load_diffs", "lineage_parent", "pair_diff", "check_pair", "split_by_parent"]


@dataclass
class DiffSet:
    """Labelled diffs of one architecture.

    Shapes:
        diff, parent: ``name -> [N, *shape]`` (child - parent; the parent's own weights);
        changes, child_ids, parent_ids, ranks: length ``N``.
    """

    population: str
    config: dict[str, Any] | None
    diff: dict[str, Tensor]
    parent: dict[str, Tensor]
    changes: list[dict[str, Any]]
    child_ids: list[int]
    parent_ids: list[int]
    ranks: list[int]
    info: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.child_ids)

    @property
    def kinds(self) -> np.ndarray:
        return np.asarray([c["kind"] for c in self.changes], dtype=object)

    def subset(self, idx: Sequence[int] | np.ndarray) -> DiffSet:
        """The diffs at positions ``idx`` (a new set sharing nothing mutable)."""
        ix = [int(i) for i in np.asarray(idx).reshape(-1)]
        t = torch.as_tensor(ix, dtype=torch.long)
        return DiffSet(self.population, self.config, {k: v[t] for k, v in self.diff.items()},
                       {k: v[t] for k, v in self.parent.items()}, [self.changes[i] for i in ix],
                       [self.child_ids[i] for i in ix], [self.parent_ids[i] for i in ix], [self.ranks[i] for i in ix],
                       dict(self.info))  # fmt: skip

    def where(self, keep: Sequence[bool] | np.ndarray) -> DiffSet:
        return self.subset(np.flatnonzero(np.asarray(keep, dtype=bool)))


def relabel_classes(data: DiffSet, perm: Sequence[int] | Tensor) -> DiffSet:
    """The same diffs with the models' classes relabelled: new class ``i`` is old class ``perm[i]``.

    The rows of the last dense layer and its bias are permuted in the diffs and the parents alike (a
    relabelled model computes the same function under other class names), and every class in the labels
    (``class``, ``classes``, ``target``) is renamed to match. Raises :class:`ConfigError` for models that
    are not a chain of dense layers.
    """
    from weightspace.spec import spec_for
    from weightspace.views import dense_chain

    if not data.config:
        raise ConfigError("relabelling classes needs the models' architecture (a DiffSet with its config)")
    last = dense_chain(spec_for(data.config))[-1]
    p = torch.as_tensor(perm, dtype=torch.long)
    k = data.diff[last.weight].shape[1]
    if sorted(p.tolist()) != list(range(k)):
        raise ConfigError(f"a class relabelling must be a permutation of 0..{k - 1}, got {p.tolist()}")
    new = {int(old): i for i, old in enumerate(p.tolist())}
    names = [n for n in (last.weight, last.bias) if n]

    def tensors(d: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return {key: (v[:, p] if key in names else v) for key, v in d.items()}

    changes = []
    for c in data.changes:
        c = dict(c)
        for key in ("class", "target"):
            if key in c and not is_missing(c[key]):
                c[key] = new[int(c[key])]
        if isinstance(c.get("classes"), (list, tuple)):
            c["classes"] = sorted(new[int(x)] for x in c["classes"])
        changes.append(c)
    return DiffSet(data.population, data.config, tensors(data.diff), tensors(data.parent), changes, list(data.child_ids),
                   list(data.parent_ids), list(data.ranks), dict(data.info))  # fmt: skip


def concat_diffs(sets: Sequence[DiffSet]) -> DiffSet:
    """One diff set of several of one architecture (in order)."""
    first = sets[0]
    return DiffSet(first.population, first.config, {k: torch.cat([s.diff[k] for s in sets]) for k in first.diff},
                   {k: torch.cat([s.parent[k] for s in sets]) for k in first.parent},
                   [c for s in sets for c in s.changes], [i for s in sets for i in s.child_ids],
                   [i for s in sets for i in s.parent_ids], [r for s in sets for r in s.ranks], dict(first.info))  # fmt: skip


def _change_of_row(row: Mapping[str, Any]) -> dict[str, Any]:
    ch = {"kind": row["hp_change"]}
    for k, v in row.items():
        if k.startswith("hp_change_") and not is_missing(v):
            ch[k[len("hp_change_"):]] = v
    return ch


def load_diffs(
    zoo: Any,
    population: str,
    *,
    kinds: Sequence[str] | None = None,
    ranks: Sequence[int] | None = None,
    limit: int | None = None,
) -> DiffSet:
    """The labelled diffs of ``population`` (children of a ``finetune.change`` recipe).

    ``kinds``: keep only these change kinds; ``ranks``: only these fine-tune ranks (0 = full);
    ``limit``: at most this many children (the first ones, in id order).
    Raises :class:`NotFoundError` for a missing population and :class:`ConfigError` for one without labels.
    """
    pop = zoo.population(population)  # NotFoundError for a missing one
    df = pop.df()
    if df.empty or "hp_change" not in df.columns or "hp_parent" not in df.columns:
        raise ConfigError(f"population {population!r} has no labelled diffs (no 'change'/'parent' hyperparameters); "
                          "build the children of a fine-tune recipe with finetune.change, e.g. "
                          "`weightzoo build digits-mlp-diffs`")  # fmt: skip
    df = df[df["hp_change"].notna() & df["hp_parent"].notna()].sort_values("id", kind="stable")
    if kinds is not None:
        df = df[df["hp_change"].isin(list(kinds))]
    rank = df["hp_rank"].fillna(0).astype(int) if "hp_rank" in df.columns else None
    if ranks is not None and rank is not None:
        df = df[rank.isin([int(r) for r in ranks])]
    if limit is not None:
        df = df.head(int(limit))
    if df.empty:
        raise NotFoundError(f"no labelled diffs in {population!r} match kinds={kinds} ranks={ranks}")
    child_ids = df["id"].astype(int).tolist()
    parent_ids = df["hp_parent"].astype(int).tolist()
    uniq = sorted(set(parent_ids))
    where = {p: i for i, p in enumerate(uniq)}
    child = zoo.stack(child_ids)
    par_u = zoo.stack(uniq)
    pix = torch.tensor([where[p] for p in parent_ids])
    if set(child) != set(par_u) or any(child[k].shape[1:] != par_u[k].shape[1:] for k in child):
        raise MismatchError(f"the children of {population!r} and their parents do not have the same tensors; "
                            "a diff needs a child and a parent of one architecture")  # fmt: skip
    parent = {k: par_u[k][pix].float() for k in child}
    diff = {k: child[k].float() - parent[k] for k in child}
    changes = [_change_of_row(r) for r in df.to_dict("records")]
    rk = df["hp_rank"].fillna(0).astype(int).tolist() if "hp_rank" in df.columns else [0] * len(df)
    info = {"dataset": str(df["hp_dataset"].iloc[0])} if "hp_dataset" in df.columns and df["hp_dataset"].notna().all() else {}
    return DiffSet(population, pop.config, diff, parent, changes, child_ids, parent_ids, rk, info)


def split_by_parent(parent_ids: Sequence[int], test_fraction: float = 0.2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Positions ``(train, test)``: ``test_fraction`` of the parents held out with every child of theirs."""
    from weightspace.tasks import split_by_run

    return split_by_run(np.asarray([f"parent:{p}" for p in parent_ids], dtype=object), test_fraction, seed)


# ------------------------------------------------------------------------------------------ one pair
def lineage_parent(zoo: Any, child: int | str) -> int:
    """The parent a diff of ``child`` is taken against: its fine-tune base (op ``finetune``), else its one
    lineage parent. Raises :class:`NotFoundError` when it has none and :class:`ConfigError` when it has
    several (say which with ``parent=``)."""
    rec = zoo.get(child)
    edges = [e for e in zoo.lineage(rec.id, max_depth=1) if e.child == rec.id]
    if not edges:
        raise NotFoundError(f"model {rec.id} ({rec.name}) has no parent in its lineage; give the parent to compare "
                            "with (--parent P / parent=P)")  # fmt: skip
    base = [e for e in edges if e.op == "finetune"] or edges
    parents = sorted({e.parent for e in base})
    if len(parents) > 1:
        raise ConfigError(f"model {rec.id} has {len(parents)} lineage parents ({parents[:5]}); say which one to "
                          "compare with (--parent P / parent=P)")  # fmt: skip
    return parents[0]


def check_pair(child: Mapping[str, Tensor], parent: Mapping[str, Tensor], what: str = "child and parent") -> None:
    """Refuse two state dicts that are not of one architecture (other tensors or shapes)."""
    missing, extra = sorted(set(parent) - set(child)), sorted(set(child) - set(parent))
    if missing or extra:
        raise MismatchError(f"{what} have different tensors (only in the parent: {missing[:4]}, only in the child: "
                            f"{extra[:4]}); a diff needs two models of one architecture")  # fmt: skip
    for k in child:
        if tuple(child[k].shape) != tuple(parent[k].shape):
            raise MismatchError(f"{what} differ in shape at {k!r}: {tuple(child[k].shape)} vs {tuple(parent[k].shape)}; "
                                "a diff needs two models of one architecture")  # fmt: skip


def pair_diff(zoo: Any, child: int | str, parent: int | str | None = None) -> tuple[Any, Any, dict[str, Tensor], dict[str, Tensor]]:
    """``(child record, parent record, diff, parent weights)`` of one pair, batched as ``[1, ...]``.

    ``parent`` defaults to the child's lineage parent (:func:`lineage_parent`). Raises
    :class:`MismatchError` when the two differ in architecture or shapes.

    Shapes: diff and parent weights ``name -> [1, *shape]``.
    """
    crec = zoo.get(child)
    prec = zoo.get(lineage_parent(zoo, crec.id) if parent is None else parent)
    if prec.id == crec.id:
        raise ConfigError(f"model {crec.id} cannot be its own parent; give another model with --parent")
    if crec.arch_config and prec.arch_config:
        from zoo.models.architectures import normalize_config

        if normalize_config(crec.arch_config) != normalize_config(prec.arch_config):
            raise MismatchError(f"child {crec.id} ({crec.architecture}) and parent {prec.id} ({prec.architecture}) are of "
                                "different architectures; a diff needs two models of one architecture")  # fmt: skip
    cs, ps = crec.state_dict(), prec.state_dict()
    check_pair(cs, ps, f"child {crec.id} and parent {prec.id}")
    diff = {k: (cs[k].float() - ps[k].float()).unsqueeze(0) for k in cs if cs[k].is_floating_point()}
    par = {k: ps[k].float().unsqueeze(0) for k in diff}
    return crec, prec, diff, par
