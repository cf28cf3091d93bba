"""Lineage: the edges from each parent to each child, with the operation and its parameters.

Every write records how a model came to be (``train``, ``finetune``, ``merge.ties``, ``generate.flow``,
...); :func:`lineage` walks those edges up (ancestors), down (descendants) or both.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from sqlalchemy import select

from zoo.errors import ConfigError
from zoo.store import schema as S
from zoo.store.records import Edge
from zoo.store.rows import chunks

if TYPE_CHECKING:
    from zoo.store.backend import Backend

__all__ = ["lineage"]


def lineage(b: Backend, model: int | str, *, direction: str = "up", max_depth: int | None = None) -> list[Edge]:
    """Lineage edges reachable from a model: ``"up"`` (ancestors), ``"down"`` (descendants) or ``"both"``,
    breadth first, at most ``max_depth`` edges away; by edge id."""
    if direction not in ("up", "down", "both"):
        raise ConfigError(f"direction must be 'up', 'down' or 'both', not {direction!r}")
    edges: dict[int, Edge] = {}
    with b.engine.connect() as conn:
        start = b.catalog.model_id(conn, model)
        for d in (["up", "down"] if direction == "both" else [direction]):
            col = S.LineageEdge.child_id if d == "up" else S.LineageEdge.parent_id
            frontier, seen, depth = {start}, {start}, 0
            while frontier and (max_depth is None or depth < max_depth):
                rows = []
                for chunk in chunks(sorted(frontier)):
                    rows += conn.execute(select(S.LineageEdge).where(col.in_(chunk))).all()
                nxt = set()
                for e in rows:
                    edges[e.id] = Edge(e.child_id, e.parent_id, e.role, e.op, json.loads(e.params), e.created_at)
                    other = e.parent_id if d == "up" else e.child_id
                    if other not in seen:
                        seen.add(other)
                        nxt.add(other)
                frontier, depth = nxt, depth + 1
    return [edges[k] for k in sorted(edges)]
