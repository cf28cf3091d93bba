"""The same store code on PostgreSQL: the catalog on a real server, the packs in a local folder."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

from tests.pgserver import PgServer
from zoo import MismatchError, NewModel, QueryError, Zoo
from zoo.models.architectures import init_state

pytestmark = pytest.mark.postgres

CFG = {"family": "mlp", "in_features": 8, "hidden": [4], "out_features": 3}


@pytest.fixture(scope="module")
def pg():
    server = PgServer().start()
    if server.url is None:
        pytest.skip(server.reason)
    yield server
    server.stop()


@pytest.fixture
def pgzoo(pg, tmp_path):
    url = pg.new_database()
    z = Zoo.open(tmp_path / "zoo", url=url)
    yield z
    z.close()


def test_add_get_stack_roundtrip(pgzoo):
    sds = [init_state(CFG, s) for s in range(5)]
    recs = pgzoo.add_many(
        [NewModel(sd, arch=CFG, population="p", metrics={"test_acc": 0.5 + i / 10}, hparams={"lr": 10.0**-i}, run=f"r{i}", step=1)
         for i, sd in enumerate(sds)]
    )  # fmt: skip
    assert [r.id for r in recs] == sorted(r.id for r in recs)
    W = pgzoo.population("p").stack()
    for k in sds[0]:
        assert torch.equal(W[k], torch.stack([sd[k] for sd in sds]))
    got = pgzoo.get(recs[2].id).state_dict()
    assert all(torch.equal(got[k], sds[2][k]) for k in sds[2])
    assert pgzoo.population("p").metric("test_acc", ">", 0.75).ids() == [recs[3].id, recs[4].id]
    assert pgzoo.population("p").hparam("lr", "<", 0.05).count() == 3


def test_lineage_and_mismatch(pgzoo):
    a = pgzoo.add(init_state(CFG, 0), arch=CFG, population="p")
    b = pgzoo.add(init_state(CFG, 1), population="p", parents=[a.id], op="finetune", params={"epochs": 2})
    assert [(e.parent, e.child, e.op, e.params) for e in pgzoo.lineage(b.id)] == [(a.id, b.id, "finetune", {"epochs": 2})]
    other = {"family": "mlp", "in_features": 8, "hidden": [5], "out_features": 3}
    n = pgzoo.summary()["models"]
    with pytest.raises(MismatchError):
        pgzoo.add(init_state(other, 0), arch=other, population="p")
    assert pgzoo.summary()["models"] == n


def test_sql_over_postgres_catalog(pgzoo):
    a = pgzoo.add(init_state(CFG, 0), arch=CFG, population="p", metrics={"test_acc": 0.9})
    df = pgzoo.sql("select m.id, x.value from models m join metrics x on x.model_id = m.id where x.name = 'acc'")
    assert df["id"].tolist() == [a.id] and df["value"].tolist() == [pytest.approx(0.9)]
    b = pgzoo.add(init_state(CFG, 1), population="p", metrics={"test_acc": 0.8})
    assert pgzoo.sql("select count(*) as n from models")["n"].iloc[0] == 2  # sees the new write
    with pytest.raises(QueryError):
        pgzoo.sql("delete from models")
    assert pgzoo.get(b.id).id == b.id and pgzoo.verify().ok


def test_verify_gc_on_postgres(pgzoo):
    a = pgzoo.add(init_state(CFG, 0), arch=CFG, population="p")
    pgzoo.add(init_state(CFG, 1), population="p")
    pgzoo.remove([a.id])
    rep = pgzoo.gc(grace_seconds=0)
    assert rep.blobs_removed == 4
    assert pgzoo.verify().ok and pgzoo.summary()["blobs"] == 4


def test_two_processes_write_at_once(pg, tmp_path):
    url = pg.new_database()
    Zoo.open(tmp_path / "zoo", url=url).close()
    code = textwrap.dedent(
        f"""
        import sys
        from zoo import Zoo, NewModel
        from zoo.models.architectures import init_state
        cfg = {CFG!r}
        z = Zoo.open({str(tmp_path / "zoo")!r}, url={url!r})
        w = int(sys.argv[1])
        for i in range(10):
            z.add_many([NewModel(init_state(cfg, 1000 * w + 10 * i + j), arch=cfg, population="p") for j in range(3)])
        """
    )
    procs = [subprocess.Popen([sys.executable, "-c", code, str(w)]) for w in range(2)]
    assert [p.wait(timeout=300) for p in procs] == [0, 0]
    z = Zoo.open(tmp_path / "zoo", url=url)
    assert z.population("p").count() == 60
    assert z.verify().ok
    assert z.population("p").stack()["layers.0.weight"].shape == (60, 4, 8)


def test_derived_tables_on_postgres(pgzoo):
    import numpy as np
    import pandas as pd

    from zoo import NotFoundError

    recs = [pgzoo.add(init_state(CFG, s), arch=CFG, population="p", metrics={"test_acc": 0.5 + s / 10}) for s in range(3)]
    ids = [r.id for r in recs]
    df = pd.DataFrame({"model_id": ids, "pred": [0.1, 0.2, 0.3], "emb": [np.ones(4, np.float32) * i for i in range(3)]})
    info = pgzoo.write_table("encoder_preds", df, description="d", produced_by=ids[0])
    assert info.columns == {"model_id": "BIGINT", "pred": "DOUBLE", "emb": "FLOAT[4]"} and info.produced_by == ids[0]
    out = pgzoo.sql(
        "select m.id, p.pred, w.test_acc, p.emb from model_overview m join encoder_preds p on p.model_id = m.id "
        "join metrics_wide w on w.model_id = m.id order by m.id"
    )
    assert out["id"].tolist() == ids and out["test_acc"].tolist() == pytest.approx([0.5, 0.6, 0.7])
    assert list(out["emb"][2]) == [2.0] * 4
    pgzoo.write_table("encoder_preds", df.iloc[:1], mode="append")
    assert pgzoo.sql("select count(*) as n from encoder_preds")["n"][0] == 4
    with pytest.raises(NotFoundError):
        pgzoo.write_table("encoder_preds", df.assign(model_id=[ids[0], ids[1], 10**6]), mode="append")
    pgzoo.remove([ids[0]])  # ON DELETE SET NULL (and the explicit update) clear the producer
    assert pgzoo.table_info("encoder_preds").produced_by is None and len(pgzoo.table("encoder_preds")) == 4
    assert pgzoo.verify().ok
    pgzoo.drop_table("encoder_preds")
    assert pgzoo.tables() == [] and pgzoo.verify().orphan_table_files == []
