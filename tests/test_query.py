"""The fluent query API (ModelQuery / Population) and read-only SQL (Zoo.sql, DuckDB)."""

from __future__ import annotations

from collections.abc import Iterator

import pyarrow as pa
import pytest
import torch

from tests.conftest import MLP_CFG, catalog_counts, mlp_state
from zoo import ConfigError, NewModel, QueryError, Zoo

#: test accuracy of run i at step s (val = test - 0.1)
ACC = {(0, 1): 0.55, (0, 2): 0.60, (1, 1): 0.65, (1, 2): 0.70, (2, 1): 0.75, (2, 2): 0.80}
LR = [0.1, 0.01, 0.001]
OPT = ["sgd", "adam", "sgd"]


def build_query_zoo(zoo: Zoo, mlp_cfg: dict) -> Zoo:
    """Fill ``zoo`` with known contents.

    - population ``mlps``: runs r0..r2, steps 1 and 2 (models ``r{i}s{s}``), metrics test/val acc,
      hparams lr/opt/seed, tags ``run{i}`` and ``final`` (step 2);
    - population ``wide``: two wider MLPs (runs w0, w1, one step each);
    - ``ties`` = merge.ties(r0s2, r1s2), ``soup`` = merge.linear(r0s2, r2s2), ``ft`` = finetune(ties);
    - ``raw``: a raw state dict, no population.
    """
    items = []
    for i in range(3):
        for s in (1, 2):
            items.append(
                NewModel(
                    mlp_state(10 * i + s), arch=mlp_cfg, population="mlps", name=f"r{i}s{s}", run=f"r{i}", step=s,
                    op="train", metrics={"test_acc": ACC[i, s], "val_acc": ACC[i, s] - 0.1},
                    hparams={"lr": LR[i], "opt": OPT[i], "seed": i}, tags=[f"run{i}"] + (["final"] if s == 2 else []),
                )
            )  # fmt: skip
    zoo.add_many(items)
    wide = dict(mlp_cfg, hidden=[32])
    for j in range(2):
        zoo.add(mlp_state(100 + j, wide), arch=wide, population="wide", name=f"w{j}", run=f"w{j}", step=1, op="train",
                metrics={"test_acc": 0.3 + 0.1 * j}, hparams={"lr": 0.5})  # fmt: skip
    zoo.add(mlp_state(200), arch=mlp_cfg, name="ties", parents=["r0s2", "r1s2"], op="merge.ties", params={"k": 0.2},
            metrics={"test_acc": 0.9})  # fmt: skip
    zoo.add(
        mlp_state(201),
        arch=mlp_cfg,
        name="soup",
        parents=["r0s2", "r2s2"],
        op="merge.linear",
        metrics={"test_acc": 0.85},
    )
    zoo.add(
        mlp_state(202), arch=mlp_cfg, name="ft", parents=["ties"], op="finetune", metrics={"test_acc": 0.95}
    )
    zoo.add({"x": torch.ones(3)}, name="raw", op="ingest")
    return zoo


@pytest.fixture
def qzoo(zoo: Zoo, mlp_cfg) -> Zoo:
    """The query zoo, fresh for tests that write."""
    return build_query_zoo(zoo, mlp_cfg)


@pytest.fixture(scope="module")
def ro_zoo(tmp_path_factory) -> Iterator[Zoo]:
    """The query zoo, shared by the read-only tests of this module (they must not write)."""
    z = Zoo.open(tmp_path_factory.mktemp("ro") / "zoo")
    build_query_zoo(z, dict(MLP_CFG, hidden=[16]))
    yield z
    z.close()


def names(z: Zoo, q) -> list[str]:
    return [r.name for r in q.records()]


def ids_of(z: Zoo, *model_names: str) -> list[int]:
    return [z.get(n).id for n in model_names]


# ------------------------------------------------------------------------------------------ fluent API


def test_population_and_architecture_filters(ro_zoo: Zoo) -> None:
    assert ro_zoo.models().count() == 12
    assert names(ro_zoo, ro_zoo.models().population("mlps")) == [
        "r0s1",
        "r0s2",
        "r1s1",
        "r1s2",
        "r2s1",
        "r2s2",
    ]
    assert len(ro_zoo.population("mlps")) == 6
    assert ro_zoo.models().population("nope").count() == 0
    assert ro_zoo.models().architecture("mlp").count() == 11  # by family: all but the raw one
    assert ro_zoo.models().architecture("raw").ids() == ids_of(ro_zoo, "raw")
    arch_name = ro_zoo.population_info("mlps").architecture
    assert ro_zoo.models().architecture(arch_name).count() == 9  # 6 + ties, soup, ft
    assert names(ro_zoo, ro_zoo.models().architecture(ro_zoo.population_info("wide").architecture)) == [
        "w0",
        "w1",
    ]


def test_metric_filters_with_splits_and_steps(ro_zoo: Zoo) -> None:
    q = ro_zoo.population("mlps")
    assert names(ro_zoo, q.metric("test_acc", ">", 0.68)) == ["r1s2", "r2s1", "r2s2"]
    assert names(ro_zoo, q.metric("acc", ">", 0.68, split="test")) == ["r1s2", "r2s1", "r2s2"]
    assert names(ro_zoo, q.metric("acc", ">", 0.68, split="val")) == ["r2s2"]
    assert names(ro_zoo, q.metric("val_acc", "<=", 0.5)) == ["r0s1", "r0s2"]
    assert names(ro_zoo, q.metric("test_acc", ">", 0.6, step=1)) == ["r1s1", "r2s1"]
    assert q.metric("acc", ">", 0.0).count() == 0  # no split-less "acc" metric
    assert names(ro_zoo, ro_zoo.models().metric("test_acc", ">=", 0.9)) == ["ties", "ft"]
    with pytest.raises(ConfigError):
        q.metric("test_acc", "~", 1)


def test_hparam_numeric_and_string_filters(ro_zoo: Zoo) -> None:
    q = ro_zoo.population("mlps")
    assert names(ro_zoo, q.hparam("lr", "<", 0.05)) == ["r1s1", "r1s2", "r2s1", "r2s2"]
    assert names(ro_zoo, q.hparam("lr", "==", 0.1)) == ["r0s1", "r0s2"]
    assert names(ro_zoo, q.hparam("lr", "in", [0.1, 0.001])) == ["r0s1", "r0s2", "r2s1", "r2s2"]
    assert names(ro_zoo, q.hparam("opt", "==", "adam")) == ["r1s1", "r1s2"]
    assert names(ro_zoo, q.hparam("opt", "!=", "adam")) == ["r0s1", "r0s2", "r2s1", "r2s2"]
    assert names(ro_zoo, q.hparam("opt", "in", ["adam", "nope"])) == ["r1s1", "r1s2"]
    assert names(ro_zoo, ro_zoo.models().hparam("lr", ">", 0.2)) == ["w0", "w1"]
    assert q.hparam("missing", "==", 1).count() == 0


def test_tag_and_op_filters(ro_zoo: Zoo) -> None:
    assert names(ro_zoo, ro_zoo.models().tag("final")) == ["r0s2", "r1s2", "r2s2"]
    assert names(ro_zoo, ro_zoo.models().tag("final", "run1")) == ["r1s2"]
    assert ro_zoo.models().tag("nope").count() == 0
    assert names(ro_zoo, ro_zoo.models().op("merge.*")) == ["ties", "soup"]
    assert names(ro_zoo, ro_zoo.models().op("merge.ties")) == ["ties"]
    assert names(ro_zoo, ro_zoo.models().op("finetune", "merge.linear")) == ["soup", "ft"]
    assert ro_zoo.models().op("train").count() == 8
    assert ro_zoo.models().op("merge").count() == 0  # exact unless it ends with *


def test_final_keeps_last_step_per_run(qzoo: Zoo) -> None:
    assert names(qzoo, qzoo.population("mlps").final()) == ["r0s2", "r1s2", "r2s2"]
    # models without a run (merges, raw) and single-step runs are kept
    assert names(qzoo, qzoo.models().final()) == [
        "r0s2",
        "r1s2",
        "r2s2",
        "w0",
        "w1",
        "ties",
        "soup",
        "ft",
        "raw",
    ]
    # a later checkpoint of r0 replaces r0s2
    qzoo.add(mlp_state(99), population="mlps", name="r0s3", run="r0", step=3, op="train")
    assert names(qzoo, qzoo.population("mlps").final()) == ["r1s2", "r2s2", "r0s3"]


def test_lineage_filters(ro_zoo: Zoo) -> None:
    assert names(ro_zoo, ro_zoo.models().ancestors_of("ft")) == ["r0s2", "r1s2", "ties"]
    assert names(ro_zoo, ro_zoo.models().descendants_of("r0s2")) == ["ties", "soup", "ft"]
    assert names(ro_zoo, ro_zoo.models().descendants_of("r0s2").op("merge.*")) == ["ties", "soup"]
    assert ro_zoo.models().ancestors_of("r0s1").count() == 0


def test_order_by_metric_and_limit(ro_zoo: Zoo) -> None:
    q = ro_zoo.population("mlps")
    assert names(ro_zoo, q.order_by_metric("test_acc")) == ["r2s2", "r2s1", "r1s2", "r1s1", "r0s2", "r0s1"]
    assert names(ro_zoo, q.order_by_metric("acc", split="test", descending=False).limit(2)) == [
        "r0s1",
        "r0s2",
    ]
    assert names(ro_zoo, q.order_by_metric("test_acc").limit(1)) == ["r2s2"]
    assert q.order_by_metric("test_acc").first().name == "r2s2"
    assert names(ro_zoo, q.limit(3)) == ["r0s1", "r0s2", "r1s1"]
    assert q.limit(0).count() == 0
    best = ro_zoo.models().final().order_by_metric("test_acc").limit(3)
    assert names(ro_zoo, best) == ["ft", "ties", "soup"]


def test_order_by_metric_uses_latest_value(zoo: Zoo, mlp_cfg) -> None:
    a = zoo.add(
        mlp_state(0), arch=mlp_cfg, name="a", metrics=[("acc", "test", 1, 0.9), ("acc", "test", 2, 0.1)]
    )
    b = zoo.add(mlp_state(1), arch=mlp_cfg, name="b", metrics=[("acc", "test", 2, 0.5)])
    assert zoo.models().order_by_metric("test_acc").ids() == [b.id, a.id]


def test_queries_are_immutable_and_composable(ro_zoo: Zoo) -> None:
    base = ro_zoo.population("mlps")
    narrowed = base.hparam("opt", "==", "sgd").metric("test_acc", ">", 0.58).tag("final")
    assert base.count() == 6
    assert names(ro_zoo, narrowed) == ["r0s2", "r2s2"]
    assert [r.name for r in narrowed] == ["r0s2", "r2s2"]
    W = narrowed.stack()
    assert W["layers.0.weight"].shape == (2, 16, 8)
    assert torch.equal(W["layers.1.bias"][1], mlp_state(22)["layers.1.bias"])


def test_df_columns_and_values(qzoo: Zoo) -> None:
    df = qzoo.population("mlps").df()
    assert list(df.columns[:7]) == ["id", "name", "population", "architecture", "run", "step", "op"]
    assert {"test_acc", "val_acc", "hp_lr", "hp_opt", "hp_seed"} <= set(df.columns)
    assert len(df) == 6
    row = df.set_index("name").loc["r1s2"]
    assert row["population"] == "mlps" and row["run"] == "r1" and row["step"] == 2 and row["op"] == "train"
    assert row["test_acc"] == pytest.approx(0.70) and row["val_acc"] == pytest.approx(0.60)
    assert row["hp_lr"] == pytest.approx(0.01) and row["hp_opt"] == "adam"
    # the latest step of a metric wins
    qzoo.add_metrics("r1s2", {"test_acc": 0.71}, step=5)
    assert qzoo.population("mlps").df().set_index("name").loc["r1s2", "test_acc"] == pytest.approx(0.71)
    empty = qzoo.models().population("nope").df()
    assert empty.empty and list(empty.columns) == [
        "id",
        "name",
        "population",
        "architecture",
        "run",
        "step",
        "op",
    ]


# ------------------------------------------------------------------------------------------ SQL


def test_sql_joins(ro_zoo: Zoo) -> None:
    df = ro_zoo.sql(
        """select m.name, v.value from models m join metrics v on v.model_id = m.id
           where v.name = 'acc' and v.split = 'test' and v.value > 0.68 order by v.value desc"""
    )
    assert list(df["name"]) == ["ft", "ties", "soup", "r2s2", "r2s1", "r1s2"]
    assert df["value"].iloc[0] == pytest.approx(0.95)
    df = ro_zoo.sql(
        """select m.name from models m join hyperparameters h on h.model_id = m.id
           join populations p on p.id = m.population_id
           where p.name = 'mlps' and h.name = 'opt' and h.value_text = 'sgd' and m.step = 2 order by m.id"""
    )
    assert list(df["name"]) == ["r0s2", "r2s2"]
    df = ro_zoo.sql(
        """select c.name as child, p.name as parent, l.op from lineage l join models c on c.id = l.child_id
           join models p on p.id = l.parent_id order by l.id"""
    )
    assert [tuple(r) for r in df.itertuples(index=False)] == [
        ("ties", "r0s2", "merge.ties"), ("ties", "r1s2", "merge.ties"), ("soup", "r0s2", "merge.linear"),
        ("soup", "r2s2", "merge.linear"), ("ft", "ties", "finetune"),
    ]  # fmt: skip
    n = ro_zoo.sql("select count(*) as n from tensors t join blobs b on b.id = t.blob_id")["n"][0]
    assert n == 11 * 4 + 1


def test_sql_views(ro_zoo: Zoo) -> None:
    ov = ro_zoo.sql("select * from model_overview order by id")
    assert len(ov) == 12
    assert {"id", "name", "population", "architecture", "family", "run", "step", "op", "n_params"} <= set(
        ov.columns
    )
    r = ov.set_index("name").loc["w1"]
    assert r["population"] == "wide" and r["family"] == "mlp" and r["n_params"] == 8 * 32 + 32 + 32 * 4 + 4
    assert ov.set_index("name").loc["raw", "family"] == "raw"
    mw = ro_zoo.sql(
        "select m.name, w.test_acc, w.val_acc from metrics_wide w join models m on m.id = w.model_id order by m.id"
    )
    assert len(mw) == 11
    row = mw.set_index("name").loc["r2s1"]
    assert row["test_acc"] == pytest.approx(0.75) and row["val_acc"] == pytest.approx(0.65)
    hw = ro_zoo.sql(
        "select m.name, h.lr, h.opt from hparams_wide h join models m on m.id = h.model_id order by m.id"
    )
    assert len(hw) == 8
    row = hw.set_index("name").loc["r1s1"]
    assert float(row["lr"]) == pytest.approx(0.01) and row["opt"] == "adam"
    assert ro_zoo.sql("select 1 as x", arrow=True).equals(pa.table({"x": pa.array([1], pa.int32())}))


def test_sql_sees_later_writes(qzoo: Zoo, zoo_root) -> None:
    assert qzoo.sql("select count(*) as n from models")["n"][0] == 12
    qzoo.add(mlp_state(500), population="mlps", name="late", metrics={"test_acc": 0.99}, hparams={"lr": 0.3})
    assert qzoo.sql("select count(*) as n from models")["n"][0] == 13
    assert qzoo.sql(
        "select test_acc from metrics_wide w join models m on m.id = w.model_id where m.name = 'late'"
    )["test_acc"][0] == pytest.approx(0.99)
    assert (
        float(
            qzoo.sql("select lr from hparams_wide h join models m on m.id = h.model_id where m.name='late'")[
                "lr"
            ][0]
        )
        == 0.3
    )
    qzoo.tag("late", "fresh")
    assert list(qzoo.sql("select tag from tags where tag = 'fresh'")["tag"]) == ["fresh"]
    qzoo.add_metrics("late", {"test_f1": 0.5})
    assert qzoo.sql("select count(*) as n from metrics where name = 'f1'")["n"][0] == 1
    qzoo.remove(["late"])
    assert qzoo.sql("select count(*) as n from models")["n"][0] == 12
    # a write through another handle (as another process would) is seen too
    with Zoo.open(zoo_root) as other:
        other.add(mlp_state(501), population="mlps", name="other")
    assert list(qzoo.sql("select name from models where name = 'other'")["name"]) == ["other"]


REFUSED = [
    "drop table models",
    "insert into models (name) values ('x')",
    "update models set name = 'x'",
    "delete from models",
    "copy models to '/tmp/weightzoo-leak.csv'",
    "attach '/tmp/weightzoo-other.db' as other",
    "create table t as select 1",
    "select 1; drop table models",
    "select 1; select 2",
    "selec * form models",
    "select * from no_such_table",
    "select * from read_csv('/etc/passwd')",
    "select * from read_text('/etc/passwd')",
    "select * from '/etc/passwd'",
    "select * from glob('/*')",
    "install httpfs",
    "set enable_external_access = true",
    "",
    "   ",
]


def test_sql_refuses_writes_and_bad_queries(ro_zoo: Zoo) -> None:
    before = catalog_counts(ro_zoo)
    for query in REFUSED:
        with pytest.raises(QueryError) as e:
            ro_zoo.sql(query)
        assert str(e.value), query  # a message
        assert catalog_counts(ro_zoo) == before, query
        # the query connection still works after a refusal
        assert ro_zoo.sql("select count(*) as n from models")["n"][0] == 12, query
    rep = ro_zoo.verify()
    assert rep.ok and rep.n_models == 12 and not rep.orphan_packs and not rep.temp_files
    assert not list((ro_zoo.root.parent).glob("*.csv"))
    assert ro_zoo.get("r0s1").state_dict().keys() == mlp_state(0).keys()
    assert ro_zoo.sql("select count(*) as n from models")["n"][0] == 12
