"""The fluent Python query API: filter models by population, architecture, metrics, hparams, tags, lineage.

    q = z.models().population("digits-mlp").metric("acc", ">", 0.9, split="test").hparam("lr", "<", 0.01)
    q.ids(); q.count(); q.df(); q.records(); q.stack()

A :class:`Population` is a query bound to one named population (all of one architecture).
Queries are immutable: each method returns a new query. Nothing runs until ``ids()``/``df()``/...
For anything else, use SQL: :meth:`zoo.Zoo.sql`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import pandas as pd
import torch
from sqlalchemy import Select, and_, exists, func, or_, select

from zoo.errors import ConfigError
from zoo.store import schema as S
from zoo.store.records import ModelRecord

if TYPE_CHECKING:
    from zoo.facade import Zoo

_OPS: dict[str, Callable[[Any, Any], Any]] = {
    ">": lambda c, v: c > v,
    ">=": lambda c, v: c >= v,
    "<": lambda c, v: c < v,
    "<=": lambda c, v: c <= v,
    "==": lambda c, v: c == v,
    "=": lambda c, v: c == v,
    "!=": lambda c, v: c != v,
    "in": lambda c, v: c.in_(list(v)),
}


def _op(op: str) -> Callable[[Any, Any], Any]:
    try:
        return _OPS[op]
    except KeyError:
        raise ConfigError(f"unknown comparison {op!r}; use one of {', '.join(_OPS)}") from None


class ModelQuery:
    """An immutable, lazily evaluated filter over the zoo's models."""

    def __init__(self, zoo: Zoo, filters: tuple[Any, ...] = (), limit: int | None = None, order: Any = None) -> None:
        self.zoo = zoo
        self._filters = filters
        self._limit = limit
        self._order = order

    def _with(self, *conds: Any, limit: int | None = None, order: Any = None) -> ModelQuery:
        q = object.__new__(type(self))
        q.__dict__.update(self.__dict__)
        q._filters = self._filters + conds
        if limit is not None:
            q._limit = limit
        if order is not None:
            q._order = order
        return q

    # ------------------------------------------------------------------ filters
    def population(self, name: str) -> ModelQuery:
        """Models of the named population."""
        sub = select(S.Population.id).where(S.Population.name == name).scalar_subquery()
        return self._with(S.Model.population_id == sub)

    def architecture(self, name_or_family: str) -> ModelQuery:
        """Models of an architecture, by its name or its family (``"mlp"``)."""
        sub = select(S.Architecture.id).where(
            or_(S.Architecture.name == name_or_family, S.Architecture.family == name_or_family)
        )
        return self._with(S.Model.architecture_id.in_(sub))

    def metric(self, name: str, op: str, value: Any, *, split: str | None = None, step: int | None = None) -> ModelQuery:
        """Models with a metric satisfying ``value <op> threshold`` (``"test_acc"`` = name acc, split test)."""
        from zoo.store.rows import split_metric_name

        name, split = split_metric_name(name, split)
        conds = [S.Metric.model_id == S.Model.id, S.Metric.name == name, S.Metric.split == split, _op(op)(S.Metric.value, value)]
        if step is not None:
            conds.append(S.Metric.step == step)
        return self._with(exists().where(and_(*conds)))

    def hparam(self, name: str, op: str, value: Any) -> ModelQuery:
        """Models whose hyperparameter compares true (numbers numerically, strings as text)."""
        sample = value[0] if op == "in" and value else value
        col = S.Hyperparameter.value_text if isinstance(sample, str) else S.Hyperparameter.value_num
        if isinstance(sample, bool):
            value = [float(v) for v in value] if op == "in" else float(value)
        cond = and_(S.Hyperparameter.model_id == S.Model.id, S.Hyperparameter.name == name, _op(op)(col, value))
        return self._with(exists().where(cond))

    def tag(self, *tags: str) -> ModelQuery:
        """Models carrying every given tag."""
        return self._with(*[exists().where(and_(S.Tag.model_id == S.Model.id, S.Tag.tag == t)) for t in tags])

    def op(self, *ops: str) -> ModelQuery:
        """Models made by one of these operations (``"train"``, ``"merge.ties"``, prefix ``"merge.*"``)."""
        conds = [S.Model.op.like(o[:-1] + "%") if o.endswith("*") else S.Model.op == o for o in ops]
        return self._with(or_(*conds))

    def run(self, *runs: str) -> ModelQuery:
        return self._with(S.Model.run.in_(runs))

    def step(self, step: int) -> ModelQuery:
        return self._with(S.Model.step == step)

    def final(self) -> ModelQuery:
        """Only the last checkpoint of each training run (models without a run are kept)."""
        m2 = S.Model.__table__.alias("m2")
        later = exists().where(and_(m2.c.run == S.Model.run, m2.c.step > S.Model.step))
        return self._with(or_(S.Model.run.is_(None), ~later))

    def ids_in(self, ids: Sequence[int]) -> ModelQuery:
        return self._with(S.Model.id.in_(list(ids)))

    def ancestors_of(self, model: int | str) -> ModelQuery:
        ids = {e.parent for e in self.zoo.lineage(model, direction="up")}
        return self._with(S.Model.id.in_(sorted(ids)))

    def descendants_of(self, model: int | str) -> ModelQuery:
        ids = {e.child for e in self.zoo.lineage(model, direction="down")}
        return self._with(S.Model.id.in_(sorted(ids)))

    def where(self, condition: Any) -> ModelQuery:
        """Any SQLAlchemy condition over ``zoo.store.schema`` tables (escape hatch)."""
        return self._with(condition)

    def limit(self, n: int) -> ModelQuery:
        return self._with(limit=int(n))

    def order_by_metric(self, name: str, *, split: str | None = None, descending: bool = True) -> ModelQuery:
        """Order by a metric's latest value (highest step, then newest; largest first by default)."""
        from zoo.store.rows import split_metric_name

        name, split = split_metric_name(name, split)
        sub = (
            select(S.Metric.value)
            .where(S.Metric.model_id == S.Model.id, S.Metric.name == name, S.Metric.split == split)
            .order_by(S.Metric.step.desc().nulls_last(), S.Metric.id.desc())
            .limit(1)
            .scalar_subquery()
        )
        return self._with(order=sub.desc() if descending else sub.asc())

    # ------------------------------------------------------------------ execution
    def select(self) -> Select:
        """The SQLAlchemy ``select(models.id)`` this query stands for."""
        q = select(S.Model.id).where(*self._filters)
        q = q.order_by(self._order, S.Model.id) if self._order is not None else q.order_by(S.Model.id)
        if self._limit is not None:
            q = q.limit(self._limit)
        return q

    def ids(self) -> list[int]:
        with self.zoo.engine.connect() as c:
            return [int(x) for x in c.execute(self.select()).scalars()]

    def count(self) -> int:
        with self.zoo.engine.connect() as c:
            return int(c.execute(select(func.count()).select_from(self.select().subquery())).scalar_one())

    def __len__(self) -> int:
        return self.count()

    def records(self) -> list[ModelRecord]:
        return self.zoo.records(self.ids())

    def __iter__(self) -> Iterator[ModelRecord]:
        return iter(self.records())

    def first(self) -> ModelRecord | None:
        ids = self.limit(1).ids()
        return self.zoo.records(ids)[0] if ids else None

    def stack(self, names: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        """The matching models' tensors stacked: ``{name: Tensor[N, ...]}`` in ``ids()`` order."""
        if self._order is None:  # id order: let the database do the filtering in one query
            return self.zoo.stack(self.select(), names=names)
        return self.zoo.stack(self.ids(), names=names)

    def df(self) -> pd.DataFrame:
        """One row per model: id, name, population, architecture, run, step, op, then one column per
        metric (``<split>_<name>``, value at the latest step) and per hyperparameter (``hp_<name>``)."""
        ids = self.ids()
        recs = self.zoo.records(ids)
        base = pd.DataFrame([r.to_dict() for r in recs])
        if base.empty:
            return pd.DataFrame(columns=["id", "name", "population", "architecture", "run", "step", "op"])
        with self.zoo.engine.connect() as c:
            mrows, hrows = [], []
            for i in range(0, len(ids), 500):
                chunk = ids[i : i + 500]
                mrows += c.execute(
                    select(S.Metric.model_id, S.Metric.name, S.Metric.split, S.Metric.step, S.Metric.value)
                    .where(S.Metric.model_id.in_(chunk)).order_by(S.Metric.id)
                ).all()  # fmt: skip
                hrows += c.execute(
                    select(S.Hyperparameter.model_id, S.Hyperparameter.name, S.Hyperparameter.value)
                    .where(S.Hyperparameter.model_id.in_(chunk))
                ).all()  # fmt: skip
        out = base
        if mrows:
            m = pd.DataFrame(mrows, columns=["id", "name", "split", "step", "value"])
            m["col"] = [f"{s}_{n}" if s else n for s, n in zip(m["split"], m["name"], strict=True)]
            m = m.sort_values("step", na_position="first", kind="stable").groupby(["id", "col"]).last()["value"].unstack()
            out = out.merge(m, left_on="id", right_index=True, how="left")
        if hrows:
            h = pd.DataFrame([(r.model_id, "hp_" + r.name, json.loads(r.value)) for r in hrows], columns=["id", "col", "v"])
            h = h.pivot(index="id", columns="col", values="v")
            out = out.merge(h, left_on="id", right_index=True, how="left")
        return out.reset_index(drop=True)


class Population(ModelQuery):
    """A named population: a query bound to it, plus its architecture."""

    def __init__(self, zoo: Zoo, name: str) -> None:
        sub = select(S.Population.id).where(S.Population.name == name).scalar_subquery()
        super().__init__(zoo, (S.Model.population_id == sub,))
        self.name = name

    @property
    def info(self) -> Any:
        return self.zoo.population_info(self.name)

    @property
    def config(self) -> dict[str, Any] | None:
        """The population's architecture config."""
        arch = self.info.architecture
        return self.zoo.architecture(arch).config if arch else None

    def add(self, state_dict: Any, **kwargs: Any) -> ModelRecord:
        """Add a model to this population (see :meth:`zoo.Zoo.add`)."""
        return self.zoo.add(state_dict, population=self.name, **kwargs)

    def __repr__(self) -> str:
        return f"Population({self.name!r}, n={self.count()})"
