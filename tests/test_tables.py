"""Derived tables: learner outputs written back into the zoo, queryable (and joinable) with ``Zoo.sql``."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sqlalchemy import text, update

from tests.conftest import MLP_CFG, catalog_counts, mlp_state
from zoo import (
    ConfigError,
    DuplicateError,
    IntegrityError,
    MismatchError,
    NotFoundError,
    QueryError,
    StorageError,
    TableInfo,
    Zoo,
    ZooError,
)
from zoo.cli import main
from zoo.store import schema as S

# ------------------------------------------------------------------------------------------ fixtures


@pytest.fixture
def tz(zoo: Zoo) -> Zoo:
    """A zoo with 4 models (ids 1-4) in population ``p``, with test accuracies and an ``lr`` hparam."""
    for i in range(4):
        zoo.add(mlp_state(i), arch=MLP_CFG, population="p", name=f"m{i}", metrics={"test_acc": 0.5 + i / 10},
                hparams={"lr": 10.0 ** -(i + 1)})  # fmt: skip
    return zoo


def ids(z: Zoo) -> list[int]:
    return z.population("p").ids()


def preds(z: Zoo, dim: int = 3) -> pd.DataFrame:
    mids = ids(z)
    return pd.DataFrame({
        "model_id": mids,
        "pred": [0.1 * (i + 1) for i in range(len(mids))],
        "label": [f"c{i}" for i in range(len(mids))],
        "embedding": [np.arange(dim, dtype=np.float32) + i for i in range(len(mids))],
    })  # fmt: skip


def table_files(z: Zoo) -> set[str]:
    d = z.root / "tables"
    names = {p.name for p in d.glob("*.parquet")} if d.is_dir() else set()
    tmp = d / ".tmp"
    if tmp.is_dir():
        names |= {".tmp/" + p.name for p in tmp.iterdir()}
    return names


def state(z: Zoo) -> tuple:
    """Everything a refused write must leave unchanged: row counts, table rows, files, the generation."""
    with z.engine.connect() as c:
        rows = c.execute(text("select * from derived_tables order by name")).all()
    return catalog_counts(z), [tuple(r) for r in rows], table_files(z), z.generation(), z.summary()["packs"]


# ------------------------------------------------------------------------------------------ write / read


def test_write_read_round_trip_all_types(tz: Zoo) -> None:
    mids = ids(tz)
    df = pd.DataFrame({
        "model_id": mids,
        "i32": np.arange(4, dtype=np.int32),
        "nullable_int": pd.array([1, None, 3, 4], dtype="Int64"),
        "f32": np.array([0.5, 1.5, np.nan, 3.5], dtype=np.float32),
        "f64": [0.25, -1.0, float("inf"), 2.0],
        "flag": [True, False, True, False],
        "maybe": pd.array([True, None, False, True], dtype="boolean"),
        "name": ["a", "b", None, "d"],
        "cat": pd.Categorical(["x", "y", "x", "y"]),
        "when": pd.to_datetime(["2024-01-01 10:00", "2024-01-02 00:00", "2024-01-03 00:00", "2024-01-04 00:00"]),
        "when_tz": pd.to_datetime(["2024-01-01 10:00"] * 4).tz_localize("Europe/Berlin"),
        "emb32": [np.arange(5, dtype=np.float32) * i for i in range(4)],
        "emb64": [[0.5, 1.0], [1.5, 2.0], None, [3.5, 4.0]],
        "topk": [torch.tensor([i, i + 1]) for i in range(4)],
        "obj_num": pd.Series([1, 2.5, 3, 4], dtype=object),
    })  # fmt: skip
    info = tz.write_table("all_types", df, description="every type", produced_by="m0")
    assert isinstance(info, TableInfo)
    assert info.columns == {
        "model_id": "BIGINT", "i32": "BIGINT", "nullable_int": "BIGINT", "f32": "FLOAT", "f64": "DOUBLE",
        "flag": "BOOLEAN", "maybe": "BOOLEAN", "name": "VARCHAR", "cat": "VARCHAR", "when": "TIMESTAMP",
        "when_tz": "TIMESTAMP WITH TIME ZONE", "emb32": "FLOAT[5]", "emb64": "DOUBLE[2]", "topk": "BIGINT[2]",
        "obj_num": "DOUBLE",
    }  # fmt: skip
    assert (info.name, info.n_rows, info.description, info.produced_by, info.n_files) == (
        "all_types",
        4,
        "every type",
        mids[0],
        1,
    )
    assert info.nbytes > 0 and info.created_at == info.updated_at
    back = tz.table("all_types")
    assert list(back.columns) == list(df.columns)
    assert back["model_id"].tolist() == mids and back["i32"].tolist() == [0, 1, 2, 3]
    assert back["nullable_int"].isna().tolist() == [False, True, False, False]
    assert np.isnan(back["f32"][2]) and back["f32"][3] == 3.5 and back["f64"][2] == float("inf")
    assert (
        back["name"].tolist()[:2] == ["a", "b"]
        and back["name"].isna()[2]
        and back["cat"].tolist() == ["x", "y", "x", "y"]
    )
    assert back["when"][0] == pd.Timestamp("2024-01-01 10:00")
    assert back["when_tz"][0] == pd.Timestamp("2024-01-01 09:00", tz="UTC")
    assert back["emb32"][3].dtype == np.float32 and np.array_equal(back["emb32"][3], np.arange(5) * 3)
    assert back["emb64"][2] is None and np.array_equal(back["emb64"][3], [3.5, 4.0])
    assert np.array_equal(back["topk"][1], [1, 2])
    typ = tz.table("all_types", arrow=True).schema.field("emb32").type
    assert (typ.list_size, str(typ.value_type)) == (5, "float")


def test_tables_lists_and_named_index_is_kept(tz: Zoo) -> None:
    assert tz.tables() == []
    tz.write_table("zeta", preds(tz))
    df = preds(tz).set_index("model_id")
    tz.write_table("alpha", df)
    assert [t.name for t in tz.tables()] == ["alpha", "zeta"]
    assert list(tz.table_info("alpha").columns)[0] == "model_id"
    # an unnamed index is not data
    tz.write_table("beta", pd.DataFrame({"x": [1, 2]}, index=[7, 8]))
    assert list(tz.table("beta").columns) == ["x"]


def test_empty_frame_with_dtypes_is_a_table(tz: Zoo) -> None:
    df = pd.DataFrame({"model_id": pd.Series([], dtype="int64"), "score": pd.Series([], dtype="float64")})
    info = tz.write_table("empty", df)
    assert info.n_rows == 0 and info.columns == {"model_id": "BIGINT", "score": "DOUBLE"}
    assert tz.table("empty").empty
    out = tz.sql("select * from empty")
    assert out.empty and list(out.columns) == ["model_id", "score"]


# ------------------------------------------------------------------------------------------ SQL


def test_sql_joins_derived_table_with_catalog(tz: Zoo) -> None:
    tz.write_table("encoder_preds", preds(tz))
    df = tz.sql(
        "select m.name, m.population, p.pred, w.test_acc, h.lr from model_overview m "
        "join encoder_preds p on p.model_id = m.id join metrics_wide w on w.model_id = m.id "
        "join hparams_wide h on h.model_id = m.id order by m.id"
    )
    assert df["name"].tolist() == ["m0", "m1", "m2", "m3"]
    assert df["pred"].tolist() == pytest.approx([0.1, 0.2, 0.3, 0.4])
    assert df["test_acc"].tolist() == pytest.approx([0.5, 0.6, 0.7, 0.8])
    assert df["population"].tolist() == ["p"] * 4
    listed = tz.sql("select name, n_rows, produced_by from derived_tables")
    assert listed.to_dict(orient="records") == [{"name": "encoder_preds", "n_rows": 4, "produced_by": None}]


def test_sql_embeddings_are_array_columns(tz: Zoo) -> None:
    tz.write_table("emb", preds(tz, dim=8)[["model_id", "embedding"]])
    df = tz.sql("select model_id, embedding from emb order by model_id")
    assert np.array_equal(
        np.asarray(df["embedding"][1], dtype=np.float32), np.arange(8, dtype=np.float32) + 1
    )
    types = tz.sql("describe emb").set_index("column_name")["column_type"].to_dict()
    assert types == {"model_id": "BIGINT", "embedding": "FLOAT[8]"}
    sim = tz.sql(
        "select a.model_id as a, b.model_id as b, array_cosine_similarity(a.embedding, b.embedding) as cos, "
        "list_distance(a.embedding::float[], b.embedding::float[]) as dist from emb a join emb b on a.model_id < b.model_id"
    )
    assert len(sim) == 6 and (sim["cos"] > 0.5).all() and (sim["dist"] > 0).all()
    assert len(tz.sql("select * from emb", arrow=True)) == 4


def test_sql_sees_writes_replacements_and_drops(tz: Zoo, zoo_root: Path) -> None:
    assert tz.sql("select count(*) as n from models")["n"][0] == 4  # snapshot taken before the table exists
    tz.write_table("t", pd.DataFrame({"model_id": ids(tz)[:2], "v": [1.0, 2.0]}))
    assert tz.sql("select sum(v) as s from t")["s"][0] == 3.0
    with Zoo.open(zoo_root) as other:  # another writer replaces it
        other.write_table("t", pd.DataFrame({"model_id": ids(other)[:1], "v": [10.0]}))
        assert other.sql("select sum(v) as s from t")["s"][0] == 10.0
    assert tz.sql("select sum(v) as s from t")["s"][0] == 10.0
    tz.write_table("t", pd.DataFrame({"model_id": ids(tz)[:1], "v": [5.0]}), mode="append")
    assert tz.sql("select sum(v) as s from t")["s"][0] == 15.0
    tz.drop_table("t")
    with pytest.raises(QueryError, match="t"):
        tz.sql("select * from t")


def test_sql_rereads_catalog_when_a_snapshot_file_vanished(tz: Zoo, zoo_root: Path) -> None:
    tz.write_table("t", pd.DataFrame({"v": [1]}))
    tz.sql("select 1")  # a snapshot naming t's first file (not loaded yet)
    stale = tz.generation()
    with Zoo.open(zoo_root) as other:
        other.write_table("t", pd.DataFrame({"v": [2]}))  # replaces it and deletes the old file
    tz.generation = lambda: stale  # type: ignore[method-assign]  # as if the write landed after our check
    assert tz.sql("select v from t")["v"].tolist() == [2]


def test_query_connection_still_cannot_read_files(tz: Zoo) -> None:
    tz.write_table("t", pd.DataFrame({"v": [1]}))
    pattern = str(tz.root / "tables" / "*.parquet")
    for q in (f"select * from read_parquet('{pattern}')", f"select * from '{pattern}'"):
        with pytest.raises(QueryError):
            tz.sql(q)


# ------------------------------------------------------------------------------------------ append / replace / drop


def test_append_adds_rows_and_casts_numbers(tz: Zoo) -> None:
    mids = ids(tz)
    tz.write_table("t", pd.DataFrame({"model_id": mids[:2], "score": np.array([1.0, 2.0], dtype=np.float32),
                                      "emb": [[0.5, 1.5], [2.5, 3.5]]}), description="first", produced_by=mids[0])  # fmt: skip
    info = tz.write_table(
        "t", pd.DataFrame({"emb": [np.array([1, 2])], "score": [3], "model_id": [mids[2]]}), mode="append"
    )
    assert (info.n_rows, info.n_files, info.description, info.produced_by) == (3, 2, "first", mids[0])
    assert info.columns == {"model_id": "BIGINT", "score": "FLOAT", "emb": "DOUBLE[2]"}
    back = tz.table("t")
    assert back["score"].tolist() == [1.0, 2.0, 3.0] and back["model_id"].tolist() == mids[:3]
    assert np.array_equal(back["emb"][2], [1.0, 2.0])
    assert tz.sql("select count(*) as n from t")["n"][0] == 3
    # append creates a missing table
    assert tz.write_table("fresh", pd.DataFrame({"x": [1]}), mode="append").n_rows == 1


def test_replace_rewrites_and_deletes_old_files(tz: Zoo) -> None:
    mids = ids(tz)
    tz.write_table("t", pd.DataFrame({"x": [1, 2]}), description="v1", produced_by=np.int64(mids[1]))
    tz.write_table("t", pd.DataFrame({"x": [3]}), mode="append")
    assert len(table_files(tz)) == 2
    info = tz.write_table("t", pd.DataFrame({"y": ["a"]}))
    assert info.columns == {"y": "VARCHAR"} and info.n_rows == 1 and info.n_files == 1
    assert (info.description, info.produced_by) == ("v1", mids[1])  # None keeps them
    assert info.created_at < info.updated_at
    assert len(table_files(tz)) == 1
    assert tz.write_table("t", pd.DataFrame({"y": ["b"]}), description="").description == ""


def test_drop_table(tz: Zoo) -> None:
    tz.write_table("t", preds(tz))
    tz.write_table("t", preds(tz), mode="append")
    tz.drop_table("t")
    assert tz.tables() == [] and table_files(tz) == set()
    with pytest.raises(NotFoundError, match="no derived table 't'"):
        tz.drop_table("t")
    with pytest.raises(NotFoundError, match="weightzoo tables"):
        tz.table("t")
    with pytest.raises(NotFoundError):
        tz.table_info("t")


def test_remove_model_keeps_rows_and_clears_producer(tz: Zoo) -> None:
    mids = ids(tz)
    tz.write_table("t", preds(tz), produced_by=mids[0])
    tz.remove([mids[0], mids[1]])
    info = tz.table_info("t")
    assert info.produced_by is None and info.n_rows == 4
    assert len(tz.table("t")) == 4
    assert tz.sql("select count(*) as n from t join models m on m.id = t.model_id")["n"][0] == 2
    # rows naming removed models cannot be written again
    with pytest.raises(NotFoundError, match=str(mids[0])):
        tz.write_table("t", pd.DataFrame({"model_id": [mids[0]], "pred": [1.0]}), mode="append")


# ------------------------------------------------------------------------------------------ refused input


def _bad_inputs(mids: list[int]) -> list:
    ok = {"model_id": mids[:2], "v": [1.0, 2.0]}
    return [
        ("t", {"model_id": mids[:2]}, {}, ConfigError, "DataFrame"),
        ("t", pd.DataFrame(), {}, ConfigError, "no columns"),
        ("t", pd.DataFrame({"bad name": [1]}), {}, ConfigError, "invalid column name"),
        ("t", pd.DataFrame({"1x": [1]}), {}, ConfigError, "invalid column name"),
        ("t", pd.DataFrame({"": [1]}), {}, ConfigError, "invalid column name"),
        ("t", pd.DataFrame({0: [1]}), {}, ConfigError, "invalid column name"),
        ("t", pd.DataFrame([[1, 2]], columns=["a", "a"]), {}, DuplicateError, "duplicate"),
        ("t", pd.DataFrame([[1, 2]], columns=["a", "A"]), {}, DuplicateError, "duplicate"),
        ("t", pd.DataFrame({"e": [[1.0, 2.0], [1.0]]}), {}, MismatchError, "ragged"),
        ("t", pd.DataFrame({"e": [np.zeros((2, 2)), np.zeros((2, 2))]}), {}, MismatchError, "1-D"),
        ("t", pd.DataFrame({"e": [["a", "b"], ["c", "d"]]}), {}, MismatchError, "numbers"),
        ("t", pd.DataFrame({"e": [[], []]}), {}, MismatchError, "empty vectors"),
        ("t", pd.DataFrame({"e": [[1.0], 2.0]}), {}, MismatchError, "mixes"),
        ("t", pd.DataFrame({"m": pd.Series([1, "a"], dtype=object)}), {}, MismatchError, "mixes types"),
        ("t", pd.DataFrame({"m": pd.Series([None, None], dtype=object)}), {}, MismatchError, "no values"),
        ("t", pd.DataFrame({"m": pd.Series([{"a": 1}], dtype=object)}), {}, MismatchError, "dict"),
        ("t", pd.DataFrame({"c": [1 + 2j]}), {}, MismatchError, "complex"),
        ("t", pd.DataFrame({"d": pd.to_timedelta([1], "s")}), {}, MismatchError, "timedelta"),
        ("t", pd.DataFrame({"u": np.array([2**64 - 1], dtype=np.uint64)}), {}, MismatchError, "64-bit"),
        ("t", pd.DataFrame({"model_id": [mids[0], 999]}), {}, NotFoundError, "999"),
        ("t", pd.DataFrame({"model_id": [1.5]}), {}, MismatchError, "model_id"),
        (
            "t",
            pd.DataFrame({"model_id": pd.array([mids[0], None], dtype="Int64")}),
            {},
            MismatchError,
            "missing",
        ),
        ("t", pd.DataFrame({"model_id": ["m0"]}), {}, MismatchError, "model_id"),
        ("t", pd.DataFrame(ok), {"produced_by": 999}, NotFoundError, "999"),
        ("t", pd.DataFrame(ok), {"produced_by": 1.5}, ConfigError, "produced_by"),
        ("t", pd.DataFrame(ok), {"mode": "upsert"}, ConfigError, "mode"),
        ("t", pd.DataFrame(ok), {"description": 3}, ConfigError, "description"),
        # appends that do not fit the stored "keep" table (model_id, v DOUBLE, e FLOAT[2], s VARCHAR)
        ("keep", pd.DataFrame(ok), {"mode": "append"}, MismatchError, "its columns are"),
        (
            "keep",
            pd.DataFrame({"model_id": [mids[0]], "v": ["x"], "e": [[1.0, 2.0]], "s": ["a"]}),
            {"mode": "append"},
            MismatchError,
            "column 'v' is DOUBLE",
        ),  # fmt: skip
        (
            "keep",
            pd.DataFrame({"model_id": [mids[0]], "v": [1.0], "e": [[1.0, 2.0, 3.0]], "s": ["a"]}),
            {"mode": "append"},
            MismatchError,
            "DOUBLE\\[2\\] there but DOUBLE\\[3\\]",
        ),  # fmt: skip
        (
            "keep",
            pd.DataFrame({"model_id": [mids[0]], "v": [1.0], "e": [[1.0, 2.0]], "s": [1]}),
            {"mode": "append"},
            MismatchError,
            "VARCHAR",
        ),  # fmt: skip
    ]


BAD_NAMES = ["", "Bad", "1abc", "a-b", "a.b", "../evil", "/etc/passwd", "a" * 64, "models", "metrics", "model_overview",
             "metrics_wide", "hparams_wide", "derived_tables", "catalog_state", "alembic_version", "select", "order",
             "duckdb_tables", "pg_class", "sqlite_master", "information_schema", None, 3]  # fmt: skip


def test_refused_writes_leave_the_store_unchanged(tz: Zoo) -> None:
    mids = ids(tz)
    keep = pd.DataFrame(
        {"model_id": mids[:2], "v": [1.0, 2.0], "e": [[0.0, 1.0], [2.0, 3.0]], "s": ["a", "b"]}
    )
    tz.write_table("keep", keep, description="kept", produced_by=mids[0])
    tz.sql("select * from keep")
    before = state(tz)
    for name, frame, kwargs, err, msg in _bad_inputs(mids):
        with pytest.raises(err, match=msg):
            tz.write_table(name, frame, **kwargs)
        assert state(tz) == before, (name, kwargs, msg)
    for name in BAD_NAMES:
        with pytest.raises(ConfigError, match="table name"):
            tz.write_table(name, pd.DataFrame({"v": [1]}))
        assert state(tz) == before, name
    pd.testing.assert_frame_equal(tz.table("keep").drop(columns="e"), keep.drop(columns="e"))
    assert tz.sql("select count(*) as n from keep")["n"][0] == 2
    for bad in (None, 3, ["keep"]):
        with pytest.raises(ConfigError):
            tz.table(bad)
        with pytest.raises(ConfigError):
            tz.drop_table(bad)
    for q in ("../keep", "nope"):
        with pytest.raises(NotFoundError):
            tz.table(q)
        with pytest.raises(NotFoundError):
            tz.drop_table(q)
    assert state(tz) == before


def test_failed_file_write_keeps_previous_version(tz: Zoo, monkeypatch: pytest.MonkeyPatch) -> None:
    import pyarrow.parquet as pq

    tz.write_table("t", preds(tz), description="v1")
    before = state(tz)
    real = pq.write_table

    def disk_full(table, where, **kw):  # noqa: ANN001, ANN003
        real(table.slice(0, 1), where, **kw)  # a partial file, then the disk fills up
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pq, "write_table", disk_full)
    with pytest.raises(StorageError, match="No space left"):
        tz.write_table("t", preds(tz, dim=5))
    with pytest.raises(StorageError):
        tz.write_table("t", preds(tz), mode="append")
    with pytest.raises(StorageError):
        tz.write_table("new", preds(tz))
    assert state(tz) == before  # no temp file left either
    monkeypatch.undo()
    pd.testing.assert_frame_equal(
        tz.table("t").drop(columns="embedding"), preds(tz).drop(columns="embedding")
    )


def test_failure_after_file_write_removes_it(tz: Zoo, monkeypatch: pytest.MonkeyPatch) -> None:
    tz.write_table("t", preds(tz))
    before = state(tz)

    def boom() -> None:
        raise RuntimeError("crash before commit")

    monkeypatch.setattr(S, "utcnow", boom)
    for mode in ("replace", "append"):
        with pytest.raises(RuntimeError):
            tz.write_table("t", preds(tz), mode=mode)
        assert state(tz) == before
    monkeypatch.undo()
    assert len(tz.table("t")) == 4


# ------------------------------------------------------------------------------------------ verify / gc


def test_verify_and_gc_orphan_table_files(tz: Zoo) -> None:
    import pyarrow as pa

    tz.write_table("t", preds(tz))
    assert tz.verify().ok and tz.verify().n_tables == 1
    # a writer that crashed after its file write, before its commit, and one that crashed mid-write
    orphan, _ = tz.table_files.write("ghost", pa.table({"x": [1]}))
    (tz.root / "tables" / ".tmp" / "ghost.0123456789abcdef.parquet.part").write_bytes(b"partial")
    rep = tz.verify()
    assert rep.ok and rep.orphan_table_files == [orphan]
    assert "tables/.tmp/ghost.0123456789abcdef.parquet.part" in rep.temp_files
    assert "orphan table files" in str(rep)
    assert tz.gc().table_files_removed == []  # young: spared (a writer may still be committing)
    dry = tz.gc(grace_seconds=0, dry_run=True)
    assert dry.table_files_removed == [orphan] and orphan in {p.name for p in (tz.root / "tables").iterdir()}
    g = tz.gc(grace_seconds=0)
    assert g.table_files_removed == [orphan] and "ghost.0123456789abcdef.parquet.part" in g.temp_removed
    assert "1 orphan table files" in str(g)
    rep = tz.verify()
    assert rep.ok and rep.orphan_table_files == [] and rep.temp_files == []
    assert len(tz.table("t")) == 4


def test_verify_reports_missing_and_corrupt_table_files(tz: Zoo) -> None:
    tz.write_table("gone", preds(tz))
    tz.write_table("bad", preds(tz))
    files = {
        t: json.loads(tz.sql(f"select files from derived_tables where name = '{t}'")["files"][0])
        for t in ("gone", "bad")
    }
    (tz.root / "tables" / files["gone"][0]).unlink()
    p = tz.root / "tables" / files["bad"][0]
    p.write_bytes(p.read_bytes()[:20])
    rep = tz.verify()
    assert not rep.ok
    assert rep.missing_table_files == files["gone"] and rep.corrupt_table_files == files["bad"]
    assert rep.affected_tables == ["bad", "gone"] and "derived tables affected: bad, gone" in str(rep)
    with pytest.raises(IntegrityError, match="verify"):
        tz.table("gone")
    with pytest.raises(IntegrityError, match="corrupt"):
        tz.table("bad")
    # fixing it: replace (or drop) the tables
    tz.write_table("gone", preds(tz))
    tz.drop_table("bad")
    assert tz.verify().ok


def test_catalog_file_names_never_leave_the_tables_folder(tz: Zoo) -> None:
    tz.write_table("t", preds(tz))
    with tz.engine.begin() as c:
        c.execute(update(S.DerivedTable).values(files=json.dumps(["../../catalog.db"])))
    with pytest.raises(IntegrityError, match="invalid table file name"):
        tz.table("t")


# ------------------------------------------------------------------------------------------ migration


def test_migration_0002_to_0003_and_back(zoo_root: Path) -> None:
    from alembic import command
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from zoo.store.db import _alembic_config, current_revision, head_revision

    z = Zoo.open(zoo_root)
    m = z.add(mlp_state(0), arch=MLP_CFG, population="p", name="m")
    assert current_revision(z.engine) == head_revision() == "0005"
    with z.engine.connect() as c:  # the schema matches the ORM classes
        diffs = compare_metadata(MigrationContext.configure(c), S.Base.metadata)
    assert [d for d in diffs if "derived_tables" in str(d)] == []
    with z.engine.begin() as c:
        command.downgrade(_alembic_config(c), "0002")
    z.close()
    assert current_revision(z.engine) == "0002"
    with z.engine.connect() as c:
        assert (
            c.execute(text("select count(*) from sqlite_master where name = 'derived_tables'")).scalar() == 0
        )
    z.engine.dispose()
    # a zoo at 0002 (made before derived tables) upgrades when opened, data kept
    with Zoo.open(zoo_root) as z2:
        assert current_revision(z2.engine) == "0005"
        assert z2.get("m").id == m.id
        z2.write_table("t", pd.DataFrame({"model_id": [m.id], "v": [1.0]}), produced_by="m")
        assert z2.sql("select m.name, t.v from models m join t on t.model_id = m.id").to_dict(
            orient="records"
        ) == [{"name": "m", "v": 1.0}]


# ------------------------------------------------------------------------------------------ CLI


def run(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_cli_tables_list_show_drop(tz: Zoo, capsys: pytest.CaptureFixture) -> None:
    root = str(tz.root)
    rc, out, _ = run(capsys, "tables", "--root", root)
    assert rc == 0 and "no derived tables" in out
    tz.write_table("encoder_preds", preds(tz), description="predicted accuracy", produced_by="m0")
    rc, out, _ = run(capsys, "tables", "--root", root)
    assert rc == 0 and "encoder_preds" in out and "4 rows" in out and "embedding FLOAT[3]" in out
    assert "predicted accuracy" in out
    rc, out, _ = run(capsys, "tables", "list", "--root", root, "--json")
    assert (
        rc == 0
        and json.loads(out)[0]["name"] == "encoder_preds"
        and json.loads(out)[0]["produced_by"] == ids(tz)[0]
    )
    rc, out, _ = run(capsys, "tables", "show", "encoder_preds", "--root", root, "--limit", "2")
    assert (
        rc == 0
        and "table encoder_preds: 4 rows" in out
        and "c1" in out
        and "c3" not in out
        and "2 more" in out
    )
    rc, out, _ = run(capsys, "tables", "show", "encoder_preds", "--root", root, "--json")
    assert rc == 0 and len(json.loads(out)["rows"]) == 4 and json.loads(out)["columns"]["pred"] == "DOUBLE"
    rc, out, _ = run(capsys, "tables", "show", "encoder_preds", "--root", root, "--csv", "--limit", "1")
    assert rc == 0 and out.splitlines()[0] == "model_id,pred,label,embedding" and len(out.splitlines()) == 2
    rc, out, _ = run(capsys, "query", "select count(*) as n from encoder_preds", "--root", root, "--json")
    assert rc == 0 and json.loads(out) == [{"n": 4}]
    rc, out, _ = run(capsys, "tables", "drop", "encoder_preds", "--root", root)
    assert rc == 0 and "dropped table encoder_preds (4 rows)" in out
    assert tz.tables() == []


def test_cli_show_shortens_long_vectors(tz: Zoo, capsys: pytest.CaptureFixture) -> None:
    tz.write_table("wide_emb", preds(tz, dim=64)[["model_id", "embedding"]])
    rc, out, _ = run(capsys, "tables", "show", "wide_emb", "--root", str(tz.root))
    assert rc == 0 and "... (64)]" in out and "63" not in out.split("columns:")[1].split("\n", 1)[1]
    rc, out, _ = run(capsys, "tables", "show", "wide_emb", "--root", str(tz.root), "--json")
    assert len(json.loads(out)["rows"][0]["embedding"]) == 64  # machine output keeps every value


def test_cli_tables_errors_exit_2(tz: Zoo, capsys: pytest.CaptureFixture) -> None:
    root = str(tz.root)
    for argv, msg in ((["show", "nope"], "no derived table 'nope'"), (["drop", "nope"], "no derived table"),
                      (["show"], "name the table"), (["list", "x"], "tables show x")):  # fmt: skip
        rc, _, err = run(capsys, "tables", *argv, "--root", root)
        assert rc == 2 and msg in err and len(err.strip().splitlines()) == 1, argv
    with pytest.raises(SystemExit) as e:
        main(["tables", "explode", "--root", root])
    assert e.value.code == 2


def test_cli_tables_help(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as e:
        main(["tables", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for word in ("list", "show", "drop", "--limit", "Zoo.write_table", "model_overview"):
        assert word in out


# ------------------------------------------------------------------------------------------ the error family


def test_all_errors_are_zoo_errors(tz: Zoo) -> None:
    for call in (lambda: tz.write_table("models", pd.DataFrame({"x": [1]})), lambda: tz.table("nope"),
                 lambda: tz.write_table("t", [1, 2])):  # fmt: skip
        with pytest.raises(ZooError):
            call()


def test_gc_spares_a_file_being_written(tz: Zoo) -> None:
    """A file written but not yet committed is younger than the grace period: gc leaves it."""
    import pyarrow as pa

    f, _ = tz.table_files.write("pending", pa.table({"x": [1]}))
    old = time.time() - 7200
    tz.write_table("t", preds(tz))
    assert tz.gc(grace_seconds=3600).table_files_removed == []
    os.utime(tz.root / "tables" / f, (old, old))
    assert tz.gc(grace_seconds=3600).table_files_removed == [f]
