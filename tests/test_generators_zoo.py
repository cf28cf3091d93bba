"""Generators end to end on a tiny fixture zoo: train -> store -> sample -> evaluate -> store, the CLI, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import generators
from generators.api import generator_from_zoo
from zoo.build.builder import build
from zoo.build.recipes import Recipe
from zoo.errors import ConfigError, DuplicateError, MismatchError

MLP = {"name": "seeds-mlp", "arch": {"family": "mlp", "in_features": 64, "hidden": [8], "out_features": 10},
       "epochs": 6, "checkpoint_epochs": [3, 6], "search": {"mode": "grid", "seeds": 22, "params": {"lr": [0.01]}}}  # fmt: skip
FEW = {"name": "few-mlp", "arch": {"family": "mlp", "in_features": 64, "hidden": [8], "out_features": 10},
       "epochs": 1, "checkpoint_epochs": [1], "search": {"mode": "grid", "seeds": 10, "params": {"lr": [0.01]}}}  # fmt: skip
INR = {"name": "tiny-inr", "arch": {"family": "siren", "in_features": 2, "hidden": [8, 8], "out_features": 1},
       "task": "inr", "epochs": 20, "inr": {"split": "train", "n": 20, "seed": 0}}  # fmt: skip
FAST = {"train_steps": 40, "batch_size": 32, "denoiser_params": {"width": 32, "depth": 1}}


@pytest.fixture(scope="module")
def gzoo(tmp_path_factory):
    from zoo import Zoo

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    z = Zoo.open(tmp_path_factory.mktemp("gen") / "zoo")
    for r in (MLP, FEW, INR):
        build(z, Recipe.from_dict(r), progress=False)
    z.trained = generators.train(z, "seeds-mlp", "flow", name="g-flow", holdout=4, params=FAST)
    yield z
    z.close()
    torch.set_num_threads(before)


def test_stored_generator_has_lineage_to_every_training_model(gzoo) -> None:
    rec = gzoo.get("g-flow")
    assert rec.op == "train.generator" and rec.population == "generators/g-flow"
    train = [e for e in rec.parents() if e.role == "train"]
    held = json.loads(rec.hparams()["held_out_ids"])
    finals = gzoo.population("seeds-mlp").df().query("step == 6")["id"].astype(int).tolist()
    assert len(train) == 18 and len(held) == 4  # final checkpoints only, 4 held out
    assert sorted([e.parent for e in train] + held) == sorted(finals)
    gen, _ = generator_from_zoo(gzoo, "g-flow")  # rebuilt from the zoo: the same samples
    torch.testing.assert_close(gen.sample(3, seed=5)["layers.0.weight"],
                               gzoo.trained.generator.sample(3, seed=5)["layers.0.weight"])  # fmt: skip


def test_sample_evaluates_and_stores_with_lineage_metrics_and_verdict(gzoo) -> None:
    run = generators.sample(gzoo, "g-flow", n=12, seed=3, steps=4, n_baseline=8)
    v = run.verdict
    assert v["verdict"] in ("novel", "memorising", "poor", "degenerate")
    assert v["reference"] == "held_out" and v["nfe_per_sample"] == 8  # heun: 2 evaluations per step
    for k in ("noise_novelty_at_quality", "quality_gain_vs_noise", "novelty_ratio", "near_copy_fraction"):
        assert isinstance(v[k], float)
    s = run.summary
    assert {"samples", "train", "held_out", "averaged", "gaussian", "pca_gaussian", "interpolation", "noise_0"} <= set(s)
    assert s["noise_0"]["novelty_median"] < 1e-3 and s["noise_0"]["near_copy_fraction"] == 1.0  # copies are copies
    assert s["held_out"]["novelty_ratio"] == pytest.approx(1.0)
    assert len(run.sample_ids) == 12
    rec = gzoo.get(run.sample_ids[0])
    assert rec.population == "g-flow/samples" and rec.op == "generate.flow"
    (edge,) = rec.parents()
    assert edge.parent == gzoo.get("g-flow").id and edge.role == "generator"
    assert {"method", "steps", "seed", "condition", "nfe"} <= set(edge.params) and edge.params["seed"] == 3
    acc = float(run.result["groups"]["samples"].scores["quality"][0])
    assert rec.metric("acc", "test") == pytest.approx(acc) and rec.metric("novelty") > 0
    assert rec.metric("max_wrong_iou") is not None and rec.metric("acc", "val") is not None
    assert rec.hparams()["verdict"] == v["verdict"]
    table = gzoo.table(run.run)
    assert sorted(table["model_id"]) == sorted(run.sample_ids)
    assert v["verdict"] in gzoo.table_info(run.run).description
    groups = gzoo.table(f"{run.run}_groups")
    assert set(groups["kind"]) >= {"samples", "averaged", "held_out"} and (groups["kind"] == "averaged").sum() == 8


def test_cli_train_and_sample_print_the_verdict_and_write_the_png(gzoo, tmp_path, capsys) -> None:
    from zoo.cli import main

    root = str(gzoo.root)
    assert main(["generate", "train", "--root", root, "-p", "seeds-mlp", "--method", "diffusion", "--name", "g-ddim",
                 "--condition", "acc", "--holdout", "2", "--config", json.dumps(FAST), "--no-progress"]) == 0  # fmt: skip
    assert "trained diffusion generator 'g-ddim'" in capsys.readouterr().out
    lo = gzoo.population("seeds-mlp").df().query("step == 6")["val_acc"].median()
    png = tmp_path / "run.png"
    assert main(["generate", "sample", "g-ddim", "--root", root, "-n", "6", "--condition", f"{lo:.6f}", "--guidance", "2.0",
                 "--steps", "5", "--png", str(png)]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "verdict:" in out and "pca_gaussian" in out and "10 network evaluations per sample" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    edge = gzoo.models().population("g-ddim/samples").first().parents()[0]
    assert edge.op == "generate.diffusion" and edge.params["guidance"] == 2.0 and edge.params["sampler"] == "ddim"


def test_class_conditional_inr_generator(gzoo) -> None:
    generators.train(gzoo, "tiny-inr", "flow", name="g-inr", condition="label", holdout=2,
                     params={**FAST, "denoiser": "transformer", "denoiser_params": {"width": 16, "depth": 1, "heads": 2},
                             "prepare": {"token_size": 32}})  # fmt: skip
    gen, _ = generator_from_zoo(gzoo, "g-inr")
    cls = gen.cond_info_["classes"][0]
    run = generators.sample(gzoo, "g-inr", n=4, condition=cls, steps=2, n_baseline=4, store=False)
    s = run.result["groups"]["samples"].scores
    assert set(s) >= {"quality", "predicted_class", "class_match"}
    assert ((s["predicted_class"] == cls) == s["class_match"].astype(bool)).all()
    assert 0.5 < run.verdict["digit_classifier_test_acc"] <= 1.0 and not run.sample_ids
    # training SIRENs are scored on their own images: their PSNR is their fit, not a neighbour's image
    train = run.result["groups"]["train"].scores
    assert np.median(train["quality"]) > np.median(run.result["groups"]["held_out"].scores["quality"])
    # so "degenerate" is judged against what new (held-out) SIRENs reach on their nearest training image
    held = run.result["groups"]["held_out"].scores["quality"]
    assert run.verdict["quality_floor"] == pytest.approx(float(np.quantile(held, 0.05)))


def test_bad_input_is_refused_and_nothing_is_written(gzoo, snapshot) -> None:
    before = snapshot(gzoo)
    mixed = gzoo.population("seeds-mlp").ids()[:10] + gzoo.population("tiny-inr").ids()[:10]
    with pytest.raises(MismatchError, match="one architecture"):
        generators.train(gzoo, method="flow", models=mixed, name="bad1", params=FAST)
    with pytest.raises(ConfigError, match="at least 16"):
        generators.train(gzoo, "few-mlp", "flow", name="bad2", params=FAST)
    with pytest.raises(ConfigError, match="at least 16"):
        generators.train(gzoo, "seeds-mlp", "flow", name="bad3", holdout=10, params=FAST)
    with pytest.raises(DuplicateError):
        generators.train(gzoo, "seeds-mlp", "flow", name="g-flow", params=FAST)
    with pytest.raises(ConfigError, match="unknown condition"):
        generators.train(gzoo, "seeds-mlp", "flow", name="bad4", condition="nope", params=FAST)
    with pytest.raises(MismatchError, match="cannot sample another architecture"):
        generators.sample(gzoo, "g-flow", n=2, arch="tiny-inr")
    with pytest.raises(ConfigError, match="trained without a condition"):
        generators.sample(gzoo, "g-flow", n=2, condition=0.9)
    with pytest.raises(ConfigError, match="not a stored generator"):
        generators.sample(gzoo, gzoo.population("seeds-mlp").ids()[0], n=2)
    with pytest.raises(ConfigError, match="unknown generator"):
        generators.train(gzoo, "seeds-mlp", "gan", name="bad5")
    assert snapshot(gzoo) == before


def test_condition_outside_the_trained_range_writes_nothing(gzoo, snapshot) -> None:
    from zoo.cli import main

    if "g-ddim" not in {r.name for r in gzoo.models().tag("generator")}:
        generators.train(gzoo, "seeds-mlp", "diffusion", name="g-ddim", condition="acc", holdout=2, params=FAST)
    before = snapshot(gzoo)
    with pytest.raises(ConfigError, match="outside the trained range"):
        generators.sample(gzoo, "g-ddim", n=2, condition=1.5)
    assert main(["generate", "sample", "g-ddim", "--root", str(gzoo.root), "-n", "2", "--condition", "-3"]) == 2
    assert snapshot(gzoo) == before


def test_common_options_work_before_the_generate_subcommand(gzoo, capsys) -> None:
    from zoo.cli import main

    # `generate --root R --json sample ...`: the options given before `sample` are kept
    assert main(["generate", "--root", str(gzoo.root), "--json", "sample", "g-flow", "-n", "2", "--steps", "2",
                 "--no-store", "--temperature", "0.5"]) == 0  # fmt: skip
    out = json.loads(capsys.readouterr().out)
    assert out["params"]["temperature"] == 0.5 and out["params"]["nfe"] == 4 and out["sample_ids"] == []


def test_generated_initialisations_on_a_shifted_task(gzoo, snapshot) -> None:
    from generators.transfer import shifted_task
    from zoo.models.datasets import load_dataset

    ds = load_dataset("digits").flat()
    shifted = shifted_task(ds, corruption="gaussian_noise", severity=5, train_fraction=0.5)
    assert len(shifted.y_train) == round(len(ds.y_train) * 0.5) and torch.equal(shifted.y_test, ds.y_test)
    assert not torch.equal(shifted.X_test, ds.X_test) and shifted.X_val.shape == ds.X_val.shape
    out = generators.finetune_inits(gzoo, "g-flow", n=3, epochs=3, seed=1)
    assert set(out["groups"]) == {"random", "generated", "training"}
    rnd = out["groups"]["random"]
    assert rnd["val"][-1] == pytest.approx(out["target"]) and rnd["epochs_to_target"] <= 3
    for g in out["groups"].values():
        assert len(g["val"]) == len(g["test"]) == 4 and g["n"] == 3
        first = g["epochs_to_target"]
        if first is not None:  # the first epoch whose median val accuracy reaches the target
            assert g["val"][first] >= out["target"] - 1e-9 and all(v < out["target"] for v in g["val"][:first])
            assert g["ratio"] == pytest.approx(first / 3)
    assert rnd["vs_random"] == 1.0
    table = gzoo.table(out["table"])
    assert len(table) == 3 * 4 and set(table["group"]) == set(out["groups"])
    if "g-ddim" not in {r.name for r in gzoo.models().tag("generator")}:
        generators.train(gzoo, "seeds-mlp", "diffusion", name="g-ddim", condition="acc", holdout=2, params=FAST)
    before = snapshot(gzoo)
    with pytest.raises(ConfigError, match="unconditioned"):
        generators.finetune_inits(gzoo, "g-ddim", n=2, epochs=1)
    assert snapshot(gzoo) == before


def test_cli_finetune_prints_the_epochs_to_target(gzoo, capsys, snapshot) -> None:
    from zoo.cli import main

    before = snapshot(gzoo)
    assert main(["generate", "finetune", "g-flow", "--root", str(gzoo.root), "-n", "2", "--epochs", "2",
                 "--corruption", "none", "--train-fraction", "0.2", "--no-store"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "random-init final val acc" in out and "generated" in out and "/ random" in out
    assert snapshot(gzoo) == before  # --no-store writes nothing
    assert main(["generate", "finetune", "g-flow", "--root", str(gzoo.root), "--corruption", "fog"]) == 2
    assert "unknown corruption 'fog'" in capsys.readouterr().err


def test_torch_threads_is_set_for_the_block_and_restored() -> None:
    from zoo.threads import torch_threads

    before = torch.get_num_threads()
    other = 2 if before == 1 else 1
    with torch_threads(other):
        assert torch.get_num_threads() == other
    assert torch.get_num_threads() == before
    with pytest.raises(ConfigError, match="threads must be an integer >= 1"), torch_threads(0):
        pass
    assert torch.get_num_threads() == before
