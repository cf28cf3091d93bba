"""Zoo.sql refreshes its snapshot by appended rows when nothing was updated or deleted, else whole."""

from __future__ import annotations

import pandas as pd
import pytest

from tests.conftest import mlp_state
from zoo import Zoo
from zoo.store.db import current_revision, head_revision

CFG = {"family": "mlp", "in_features": 8, "hidden": [16], "out_features": 4}


def counts(z: Zoo) -> dict:
    return z.sql(
        "select (select count(*) from models) as models, (select count(*) from metrics) as metrics, "
        "(select count(*) from tags) as tags, (select count(*) from tensors) as tensors, "
        "(select count(*) from hyperparameters) as hparams"
    ).iloc[0].to_dict()


@pytest.fixture
def z(zoo: Zoo) -> Zoo:
    zoo.add_many([])  # nothing
    for i in range(3):
        zoo.add(mlp_state(i, CFG), arch=CFG, population="p", name=f"m{i}", metrics={"test_acc": 0.5 + i / 10},
                hparams={"lr": 0.01 * (i + 1)}, tags=["seed"])  # fmt: skip
    return zoo


def test_schema_has_the_rewrite_version(z: Zoo) -> None:
    assert current_revision(z.engine) == head_revision() == "0005"


def test_appends_are_read_incrementally_and_match_a_fresh_snapshot(z: Zoo) -> None:
    assert counts(z)["models"] == 3
    assert z._analytics.last_refresh == "full"  # the first snapshot of a handle reads everything
    z.add(mlp_state(7, CFG), arch=CFG, population="p", name="m7", metrics={"test_acc": 0.9}, tags=["new"])
    z.add_metrics("m0", {"val_acc": 0.4})
    got = counts(z)
    assert z._analytics.last_refresh == "appends"
    assert got == {"models": 4, "metrics": 5, "tags": 4, "tensors": 16, "hparams": 3}
    q = "select m.name, x.name as metric, x.split, x.value from models m join metrics x on x.model_id = m.id order by 1, 2, 3"
    with Zoo.open(z.root) as fresh:  # a new handle: a full snapshot of the same catalog
        pd.testing.assert_frame_equal(z.sql(q), fresh.sql(q))
        assert fresh._analytics.last_refresh == "full"


@pytest.mark.parametrize("rewrite", ["untag", "remove", "drop_table", "replace_table", "gc"])
def test_updates_and_deletes_force_a_full_snapshot(z: Zoo, rewrite: str) -> None:
    z.write_table("preds", pd.DataFrame({"model_id": z.population("p").ids(), "v": [1.0, 2.0, 3.0]}))
    before = counts(z)
    if rewrite == "untag":
        z.untag("m1", "seed")
    elif rewrite == "remove":
        z.remove(["m2"])
    elif rewrite == "drop_table":
        z.drop_table("preds")
    elif rewrite == "replace_table":
        z.write_table("preds", pd.DataFrame({"model_id": [1], "v": [9.0]}), mode="replace")
    else:
        z.remove(["m2"])
        z.gc(grace_seconds=0)
    after = counts(z)
    assert z._analytics.last_refresh == "full"
    with Zoo.open(z.root) as fresh:
        assert counts(fresh) == after
        tables = "select name, n_rows from derived_tables order by name"
        pd.testing.assert_frame_equal(z.sql(tables), fresh.sql(tables))
    if rewrite == "untag":
        assert after["tags"] == before["tags"] - 1
    if rewrite in ("remove", "gc"):
        assert after["models"] == before["models"] - 1 and after["metrics"] == before["metrics"] - 1
    if rewrite == "replace_table":
        assert z.sql("select v from preds")["v"].tolist() == [9.0]


def test_a_reused_rowid_after_a_delete_is_not_missed(z: Zoo) -> None:
    """Deleting the newest row and appending another can reuse its rowid: the rewrite version catches it."""
    counts(z)
    z.untag("m2", "seed")  # the last tag row
    z.tag("m0", "other")  # may take the same rowid
    got = z.sql("select m.name, t.tag from tags t join models m on m.id = t.model_id order by 1, 2")
    assert got.values.tolist() == [["m0", "other"], ["m0", "seed"], ["m1", "seed"]]
