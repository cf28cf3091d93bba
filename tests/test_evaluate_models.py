"""Zoo.evaluate / `weightzoo eval`: batched evaluation of stored models, recorded as metrics."""

from __future__ import annotations

import pytest
import torch

from zoo import ConfigError, MismatchError, Zoo
from zoo.build.builder import build
from zoo.build.recipes import Recipe
from zoo.cli import main
from zoo.models.architectures import init_state, instantiate
from zoo.models.datasets import load_dataset

MLP = {"family": "mlp", "in_features": 64, "hidden": [16], "out_features": 10}


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Zoo:
    z = Zoo.open(tmp_path_factory.mktemp("evalzoo"))
    r = Recipe.from_dict({"name": "E", "arch": MLP, "epochs": 3, "checkpoint_epochs": [3],
                          "search": {"mode": "grid", "seeds": 3, "params": {"lr": [3e-3]}}})  # fmt: skip
    build(z, r, progress=False)
    return z


def test_evaluate_matches_the_builders_metrics_and_a_module_loop(built: Zoo):
    ids = built.population("E").ids()
    df = built.evaluate(ids, splits=["test", "val"], record=False)
    assert sorted(df["model_id"].tolist()) == sorted(ids * 2) and len(df) == 6
    ds = load_dataset("digits").flat()
    for mid in ids:
        rec = built.get(mid)
        got = df[(df["model_id"] == mid) & (df["split"] == "test")].iloc[0]
        assert got["acc"] == pytest.approx(rec.metric("acc", "test"), abs=1e-6)  # same as recorded at build time
        net = instantiate(rec.arch_config, rec.state_dict())
        with torch.no_grad():
            acc = (net(ds.X_test).argmax(1) == ds.y_test).float().mean().item()
        assert got["acc"] == pytest.approx(acc, abs=1e-6)


def test_evaluate_records_metrics_with_the_step(built: Zoo):
    mid = built.population("E").ids()[0]
    before = len(built.metrics(mid))
    built.evaluate([mid], splits=["train"], step=99)
    m = built.metrics(mid)
    assert len(m) == before + 2
    new = m[(m["split"] == "train") & (m["step"] == 99)]
    assert sorted(new["name"]) == ["acc", "loss"] and 0.0 < new[new["name"] == "acc"]["value"].iloc[0] <= 1.0


def test_evaluate_refuses_mismatched_data_and_non_classifiers(tmp_path):
    z = Zoo.open(tmp_path / "z")
    small = {"family": "mlp", "in_features": 8, "hidden": [4], "out_features": 3}
    a = z.add(init_state(small, 0), arch=small)
    siren = {"family": "siren", "in_features": 2, "hidden": [8], "out_features": 1}
    b = z.add(init_state(siren, 0), arch=siren)
    n = len(z.metrics())
    with pytest.raises(MismatchError, match="inputs"):
        z.evaluate([a.id])
    with pytest.raises(ConfigError, match="not an evaluable classifier"):
        z.evaluate([b.id])
    assert len(z.metrics()) == n and z.verify().ok


def test_cli_eval_prints_and_records(built: Zoo, capsys):
    mid = built.population("E").ids()[1]
    before = len(built.metrics(mid))
    assert main(["eval", str(mid), "--root", str(built.root), "--split", "val"]) == 0
    out = capsys.readouterr().out
    assert "mean accuracy" in out and "recorded" in out
    assert len(built.metrics(mid)) == before + 2
    assert main(["eval", "--root", str(built.root)]) == 2  # nothing named
