"""Tasks on tiny zoo populations: run-grouped splits, train/score, model search, CLI, encoders in the zoo."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch

from weightspace.cli import register, weight_matching_align
from weightspace.tasks import (
    encoder_from_zoo,
    load_task,
    run_task,
    similar,
    split_by_run,
    store_encoder,
    write_outputs,
)
from zoo.build.builder import build
from zoo.build.recipes import Recipe
from zoo.errors import ConfigError, NotFoundError

MLP = {
    "name": "tiny-mlp", "arch": {"family": "mlp", "in_features": 64, "hidden": [8], "out_features": 10},
    "epochs": 3, "checkpoint_epochs": [1, 3],
    "search": {"mode": "random", "n": 12, "seed": 0, "params": {"lr": {"loguniform": [1e-4, 3e-2]}}},
}  # fmt: skip
INR = {
    "name": "tiny-inr", "arch": {"family": "siren", "in_features": 2, "hidden": [8, 8], "out_features": 1},
    "task": "inr", "epochs": 5, "inr": {"split": "train", "n": 12, "seed": 0},
}  # fmt: skip


@pytest.fixture(scope="module")
def tiny_zoo(tmp_path_factory):
    from zoo import Zoo

    torch.set_num_threads(1)
    z = Zoo.open(tmp_path_factory.mktemp("enc") / "zoo")
    build(z, Recipe.from_dict(MLP), progress=False)
    build(z, Recipe.from_dict(INR), progress=False)
    yield z
    z.close()


def test_split_by_run_keeps_runs_together() -> None:
    groups = np.array(["a", "a", "b", "b", "c", "c", "d", "e"], dtype=object)
    tr, te = split_by_run(groups, 0.4, seed=1)
    assert set(groups[tr]).isdisjoint(groups[te]) and len(tr) + len(te) == len(groups)
    with pytest.raises(ConfigError):
        split_by_run(np.array(["a", "a"]), 0.5)


def test_load_tasks(tiny_zoo) -> None:
    acc = load_task(tiny_zoo, "accuracy", "tiny-mlp")
    assert acc.kind == "regression" and len(acc.y) == 24 and len(set(acc.groups)) == 12
    inr = load_task(tiny_zoo, "inr-class", "tiny-inr")
    assert inr.kind == "classification" and inr.y.dtype.kind == "i" and len(inr.y) == 12
    hp = load_task(tiny_zoo, "hparam-bucket", "tiny-mlp", buckets=3)
    assert set(hp.y) == {0, 1, 2}
    with pytest.raises(ConfigError, match="valid"):
        load_task(tiny_zoo, "beauty")
    with pytest.raises(NotFoundError, match="weightzoo build"):
        load_task(tiny_zoo, "accuracy", "nope")


@pytest.mark.parametrize("encoder", ["np", "probe", "flat_mlp", "stats"])
def test_run_task_scores_held_out_runs(tiny_zoo, encoder: str) -> None:
    cfg = {"stats": {"max_iter": 10}}.get(encoder, {"epochs": 2})
    res = run_task(tiny_zoo, encoder, "accuracy", cfg, population="tiny-mlp", seed=0, test_fraction=0.25)
    assert set(res.metrics) == {"kendall_tau", "r2", "mae"} and res.n_test == 6 and res.n_train == 18
    res = run_task(tiny_zoo, encoder, "inr-class", cfg, population="tiny-inr", seed=0, test_fraction=0.25)
    assert 0.0 <= res.metrics["accuracy"] <= 1.0


def test_mixup_with_weight_matching_and_store_in_zoo(tiny_zoo) -> None:
    res = run_task(tiny_zoo, "np", "accuracy", {"epochs": 2, "augment": ["mixup", "rescale"]}, population="tiny-mlp",
                   align=weight_matching_align())  # fmt: skip
    rec = store_encoder(tiny_zoo, res)
    assert rec.op == "train.encoder" and "encoder:np" in rec.tags()
    back = encoder_from_zoo(tiny_zoo, rec.id)
    X = load_task(tiny_zoo, "accuracy", "tiny-mlp").X
    np.testing.assert_allclose(back.predict(X), res.encoder.predict(X), rtol=1e-5)
    df = similar(tiny_zoo, "tiny-mlp/00003/e003", back, k=3)
    assert len(df) == 3 and df["distance"].is_monotonic_increasing
    with pytest.raises(ConfigError, match="not a stored encoder"):
        encoder_from_zoo(tiny_zoo, 1)


def test_cli_register_and_run(tiny_zoo, capsys) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--root")
    common.add_argument("--url")
    common.add_argument("--json", action="store_true")
    common.add_argument("--no-progress", action="store_true")
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="command", required=True)
    register(sub, common)
    root = str(tiny_zoo.root)
    args = p.parse_args(["train-encoder", "accuracy", "-p", "tiny-mlp", "--epochs", "2", "--root", root, "--no-progress",
                         "--to-zoo", "--augment", "noise,dropout"])  # fmt: skip
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "kendall_tau" in out and "model_id" in out
    mid = int(out.strip().splitlines()[-1].split(":")[1])
    args = p.parse_args(["train-encoder", "inr-class", "-p", "tiny-inr", "--encoder", "probe", "--epochs", "2",
                         "--root", root, "--no-progress", "--write-table", "inr_pred", "--json"])  # fmt: skip
    assert args.func(args) == 0
    assert tiny_zoo.table("inr_pred")["model_id"].nunique() == 12
    args = p.parse_args(["similar", "tiny-mlp/00001/e003", "--encoder-model", str(mid), "--k", "2", "--root", root])
    assert args.func(args) == 0
    assert "distance" in capsys.readouterr().out
    args = p.parse_args(["similar", "1", "--root", root])
    with pytest.raises(ConfigError, match="exactly one"):
        args.func(args)


def test_encoder_lineage_and_outputs_as_sql_table(tiny_zoo) -> None:
    res = run_task(tiny_zoo, "np", "accuracy", {"epochs": 2}, population="tiny-mlp", seed=1, test_fraction=0.25)
    rec = store_encoder(tiny_zoo, res)
    parents = tiny_zoo.sql(f"select parent_id, role from lineage where child_id = {rec.id}")
    assert sorted(parents["parent_id"]) == sorted(res.train_ids) and set(parents["role"]) == {"train"}
    assert set(res.train_ids).isdisjoint(res.test_ids)
    info = write_outputs(tiny_zoo, res.encoder, "acc_pred", result=res, produced_by=rec.id)
    assert info.n_rows == 24 and info.produced_by == rec.id
    df = tiny_zoo.sql(
        "select t.model_id, t.prediction, t.split, len(t.embedding) as d, w.test_acc from acc_pred t "
        "join metrics_wide w on w.model_id = t.model_id order by t.model_id"
    )
    assert len(df) == 24 and (df["d"] == 128).all()
    assert sorted(df.loc[df["split"] == "test", "model_id"]) == sorted(res.test_ids)
    X = tiny_zoo.stack(df["model_id"].astype(int).tolist())
    np.testing.assert_allclose(df["prediction"], res.encoder.predict(X), rtol=1e-5)
    # the held-out score recomputed in SQL's output equals the one run_task reported
    from weightspace.tasks import score

    test = df[df["split"] == "test"]
    assert score("regression", test["test_acc"], test["prediction"])["kendall_tau"] == pytest.approx(
        res.metrics["kendall_tau"], abs=1e-9
    )
    with pytest.raises(NotFoundError):
        write_outputs(tiny_zoo, res.encoder, "x_pred", population="nope")
    with pytest.raises(ConfigError):
        write_outputs(tiny_zoo, res.encoder, "x_pred")
