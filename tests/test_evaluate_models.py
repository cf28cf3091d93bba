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
    with pytest.raises(ConfigError, match="no 'image' hyperparameter"):  # a SIREN added by hand: its image is unknown
        z.evaluate([b.id])
    with pytest.raises(ConfigError, match="no 'image' hyperparameter"):  # nothing recorded for the classifier either
        z.evaluate([z.add(init_state(MLP, 0), arch=MLP).id, b.id])
    assert len(z.metrics()) == n and z.verify().ok


SIREN = {"family": "siren", "in_features": 2, "hidden": [16], "out_features": 1}


def test_stored_inrs_are_evaluated_on_their_own_image_as_the_builder_recorded_them(tmp_path, capsys):
    """A SIREN is re-evaluated on the image it was fitted to: the PSNR equals the builder's, per model."""
    from zoo.build.inr import stored_inr_data
    from zoo.models.datasets import inr_targets

    z = Zoo.open(tmp_path / "z")
    build(z, Recipe.from_dict({"name": "I", "arch": SIREN, "task": "inr", "epochs": 300,
                               "inr": {"split": "train", "n": 5, "seed": 1}}), progress=False)  # fmt: skip
    ids = z.population("I").ids()
    built_psnr = {i: z.get(i).metric("psnr", "") for i in ids}
    assert len(set(built_psnr.values())) == len(ids)  # five different fits
    data = stored_inr_data(z, ids)
    full = inr_targets(load_dataset("digits"), split="train")
    for k, i in enumerate(ids):
        hp = z.hparams(i)
        assert hp["inr_split"] == "train"
        torch.testing.assert_close(data.targets[k], full.targets[hp["image"]])  # the image it was fitted to
        assert int(data.labels[k]) == hp["label"]
    df = z.evaluate(ids + [ids[0]], record=False)  # splits apply to classifiers; an INR has its own image
    assert set(df["split"]) == {"train"} and df["acc"].isna().all()
    for _, row in df.iterrows():
        assert row["psnr"] == pytest.approx(built_psnr[row["model_id"]], abs=1e-3)
    # another SIREN's image gives a worse fit: the target really is each model's own
    net = instantiate(SIREN, z.get(ids[0]).state_dict())
    with torch.no_grad():
        own = (net(data.coords) - data.targets[0]).pow(2).mean().item()
        other = min((net(data.coords) - t).pow(2).mean().item() for t in data.targets[1:])
    assert own == pytest.approx(df[df["model_id"] == ids[0]]["loss"].iloc[0], rel=1e-4) and other > own
    before = len(z.metrics())
    assert main(["eval", str(ids[1]), "--root", str(z.root)]) == 0
    assert "psnr" in capsys.readouterr().out
    new = z.metrics(ids[1]).iloc[-2:]  # recorded under the names the builder gives them: train_loss, psnr
    assert len(z.metrics()) == before + 2 and sorted(zip(new["name"], new["split"], strict=True)) == [("loss", "train"), ("psnr", "")]
    assert new[new["name"] == "psnr"]["value"].iloc[0] == pytest.approx(built_psnr[ids[1]], abs=1e-3)


def test_cli_eval_prints_and_records(built: Zoo, capsys):
    mid = built.population("E").ids()[1]
    before = len(built.metrics(mid))
    assert main(["eval", str(mid), "--root", str(built.root), "--split", "val"]) == 0
    out = capsys.readouterr().out
    assert "mean accuracy" in out and "recorded" in out
    assert len(built.metrics(mid)) == before + 2
    assert main(["eval", "--root", str(built.root)]) == 2  # nothing named
