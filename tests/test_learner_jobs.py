"""Population-wide learner jobs as shards (issue 13, part 2): alignment to a reference, encoder outputs and
generator sampling run on a process pool (and one on a local Ray) and leave the zoo exactly as the
in-process run does: the same model ids, names, tensor hashes, lineage, metrics and derived tables."""

from __future__ import annotations

import shutil
import sys

import numpy as np
import pytest
import torch

import generators
from analysis.align import align_population, canonicalize
from tests.conftest import catalog_counts, catalog_dump
from weightspace.tasks import run_task, store_encoder, write_outputs
from zoo import Zoo
from zoo.build.builder import build
from zoo.build.executors import shard_bounds
from zoo.build.recipes import Recipe
from zoo.cli import main

#: 20 seeds x 2 checkpoints of a small digits MLP (64-8-10): a population in a second or two.
MLP = {"name": "jobs-mlp", "arch": {"family": "mlp", "in_features": 64, "hidden": [8], "out_features": 10},
       "epochs": 4, "checkpoint_epochs": [2, 4], "search": {"mode": "grid", "seeds": 20, "params": {"lr": [0.01]}}}  # fmt: skip
GEN = {"train_steps": 40, "batch_size": 16, "denoiser_params": {"width": 32, "depth": 1}}
ENC = {"epochs": 3, "hidden": 8, "edge_hidden": 4, "head_hidden": 16}


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A zoo with the population, a stored flow generator and a stored NP encoder (closed: tests copy it)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("jobs") / "zoo"
    with Zoo.open(root) as z:
        build(z, Recipe.from_dict(MLP), progress=False)
        generators.train(z, "jobs-mlp", "flow", name="jobs-flow", holdout=4, params=GEN)
        generators.train(z, "jobs-mlp", "diffusion", name="jobs-ddpm", holdout=4, params=GEN)
        enc = store_encoder(z, run_task(z, "np", "accuracy", ENC, population="jobs-mlp"))
        info = {"root": root, "encoder": enc.id, "final": z.population("jobs-mlp").final().ids()}
    yield info
    torch.set_num_threads(before)


def copy_of(base: dict, tmp_path, name: str) -> Zoo:
    dst = tmp_path / name
    shutil.copytree(base["root"], dst)
    return Zoo.open(dst)


def test_shard_bounds_cover_every_item_once():
    assert shard_bounds(7, 2) == [(0, 4), (4, 7)]
    assert shard_bounds(3, 8) == [(0, 1), (1, 2), (2, 3)]
    assert shard_bounds(0, 2) == []


def test_alignment_on_a_process_pool_writes_what_in_process_writes(base, tmp_path, spawn_safe_main, monkeypatch, capsys):
    ref = base["final"][0]
    with copy_of(base, tmp_path, "here") as z:
        canonicalize(z, base["final"], ref)  # aligned, stored with lineage, evaluated
        want = catalog_dump(z)
    copy_of(base, tmp_path, "pool").close()
    import zoo.build.executors as ex

    cuts = []
    monkeypatch.setattr(ex, "shard_bounds", lambda n, w: cuts.append((n, w)) or shard_bounds(n, w))
    rc = main(["align", "--from", "jobs-mlp", "--final", str(ref), "--workers", "2", "--root", str(tmp_path / "pool")])
    out = capsys.readouterr().out
    assert rc == 0 and "aligned 20 models to reference" in out
    assert cuts == [(20, 2)]  # two shards on the pool; evaluation stays here
    with Zoo.open(tmp_path / "pool") as z:
        got = catalog_dump(z)
        assert z.verify().ok
    assert got == want  # ids, names, tensor hashes, lineage params (distances, iterations), metrics
    aligned = [m for m in got if m["op"] == "align.weight_matching"]
    assert len(aligned) == 20 and all(m["metrics"] for m in aligned)


def test_activation_matching_in_shards_equals_one_batch(base):
    with Zoo.open(base["root"]) as z:
        W, ref = z.stack(base["final"][1:]), z.get(base["final"][0])
        X = torch.randn(64, 64, generator=torch.Generator().manual_seed(0))
        one = align_population(W, ref.state_dict(), method="activation_matching", config=ref.arch_config, data=X)
        three = align_population(W, ref.state_dict(), method="activation_matching", config=ref.arch_config, data=X,
                                 executor="inprocess", workers=3)  # fmt: skip
    assert all(torch.equal(one.perms[p], three.perms[p]) for p in one.perms)
    assert all(torch.equal(one.aligned[k], three.aligned[k]) for k in one.aligned)


def test_encoder_outputs_on_a_process_pool_equal_the_same_shards_in_process(base, tmp_path, spawn_safe_main, capsys):
    from weightspace.tasks import encoder_from_zoo

    with copy_of(base, tmp_path, "here") as z:
        enc = encoder_from_zoo(z, base["encoder"])
        write_outputs(z, enc, "acc_pred", population="jobs-mlp", produced_by=base["encoder"], executor="inprocess", workers=2)
        want = z.table("acc_pred")
        write_outputs(z, enc, "acc_plain", population="jobs-mlp")  # no shards at all
        plain = z.table("acc_plain")
    copy_of(base, tmp_path, "cli").close()
    rc = main(["encode", "acc_pred", "--encoder-model", str(base["encoder"]), "--workers", "2", "--root", str(tmp_path / "cli")])
    assert rc == 0 and "wrote 40 rows" in capsys.readouterr().out  # -p defaults to the population it trained on
    with Zoo.open(tmp_path / "cli") as z:
        got = z.table("acc_pred")
        assert z.table_info("acc_pred").produced_by == base["encoder"]
    assert got["model_id"].tolist() == want["model_id"].tolist() == plain["model_id"].tolist()
    assert np.array_equal(got["prediction"].to_numpy(), want["prediction"].to_numpy())
    assert np.array_equal(np.stack(got["embedding"]), np.stack(want["embedding"]))
    # other shards: the same up to float rounding
    np.testing.assert_allclose(got["prediction"].to_numpy(), plain["prediction"].to_numpy(), rtol=0, atol=1e-6)


def test_sampling_on_a_process_pool_writes_what_in_process_writes(base, tmp_path, spawn_safe_main, capsys):
    kw = {"n": 6, "seed": 3, "steps": 4, "n_baseline": 8}
    with copy_of(base, tmp_path, "here") as z:
        run = generators.sample(z, "jobs-flow", executor="inprocess", workers=2, **kw)
        want, table = catalog_dump(z), z.table(run.run)
        plain = generators.sample(z, "jobs-flow", store=False, evaluate=False, **kw)  # no shards
    for k, v in plain.samples.items():  # the noise is drawn whole, the ODE runs per row
        torch.testing.assert_close(run.samples[k], v, rtol=0, atol=1e-6)
    copy_of(base, tmp_path, "cli").close()
    rc = main(["generate", "sample", "jobs-flow", "-n", "6", "--seed", "3", "--steps", "4", "--workers", "2",
               "--root", str(tmp_path / "cli")])  # fmt: skip
    assert rc == 0 and "verdict:" in capsys.readouterr().out
    with Zoo.open(tmp_path / "cli") as z:
        got = catalog_dump(z)
        assert z.table(run.run).equals(table)
    gen_rows = [m for m in got if m["op"] == "generate.flow"]
    assert len(gen_rows) == 6 and gen_rows[0]["parents"][0][1] == "generator"
    assert got == want  # tensor hashes of the samples, lineage (params: seed, steps, nfe, run), metrics


def test_ddpm_shards_draw_their_own_step_noise(base):
    kw = {"n": 5, "seed": 1, "sampler": "ddpm", "steps": 3, "store": False, "evaluate": False}
    with Zoo.open(base["root"]) as z:
        a = generators.sample(z, "jobs-ddpm", executor="inprocess", workers=2, **kw)
        b = generators.sample(z, "jobs-ddpm", executor="inprocess", workers=2, **kw)
        c = generators.sample(z, "jobs-ddpm", **kw)
    assert all(torch.equal(a.samples[k], b.samples[k]) for k in a.samples)  # seeded by (seed, shard)
    assert a.params == c.params and a.params["sampler"] == "ddpm" and a.params["nfe"] == 3
    assert not all(torch.equal(a.samples[k], c.samples[k]) for k in a.samples)  # other shards, other step noise


def test_learner_jobs_on_a_local_ray(ray_local, base, tmp_path):
    ids, ref = base["final"][1:], base["final"][0]
    kw = {"n": 5, "seed": 1, "sampler": "ddpm", "steps": 3, "evaluate": False}
    with copy_of(base, tmp_path, "here") as z:
        canonicalize(z, ids, ref, evaluate=False)
        run = generators.sample(z, "jobs-ddpm", executor="inprocess", workers=2, **kw)
        want = catalog_dump(z)
    with copy_of(base, tmp_path, "ray") as z:
        canonicalize(z, ids, ref, evaluate=False, executor="ray", workers=2)
        ray_run = generators.sample(z, "jobs-ddpm", executor="ray", workers=2, **kw)
        assert catalog_dump(z) == want  # aligned and sampled models: ids, hashes, lineage
    assert ray_run.params == run.params


@pytest.mark.parametrize("argv", [
    ["align", "--from", "jobs-mlp", "1"],
    ["encode", "t", "--encoder-model", "ENC"],
    ["generate", "sample", "jobs-flow", "-n", "2"],
], ids=["align", "encode", "generate-sample"])  # fmt: skip
def test_ray_flag_without_ray_names_the_extra_and_writes_nothing(argv, base, tmp_path, monkeypatch, capsys):
    z = copy_of(base, tmp_path, "z")
    before = catalog_counts(z), len(z.tables())
    monkeypatch.setitem(sys.modules, "ray", None)
    argv = [str(base["encoder"]) if a == "ENC" else a for a in argv]
    rc = main([*argv, "--ray", "--root", str(z.root)])
    assert rc == 2 and "pip install 'weightzoo[ray]'" in capsys.readouterr().err
    assert (catalog_counts(z), len(z.tables())) == before
    z.close()


def test_a_ray_cluster_that_does_not_answer_is_refused_before_any_work(base, tmp_path, capsys):
    pytest.importorskip("ray")
    z = copy_of(base, tmp_path, "z")
    before = catalog_counts(z)
    rc = main(["align", "--from", "jobs-mlp", "1", "--ray", "192.0.2.1:6379", "--ray-timeout", "1", "--root", str(z.root)])
    assert rc == 2 and "did not answer within 1s" in capsys.readouterr().err  # TEST-NET address: no host
    assert catalog_counts(z) == before
    z.close()


def test_an_executor_passed_in_stays_open_for_the_next_job(base):
    from zoo.build.executors import InProcessExecutor

    class Watched(InProcessExecutor):
        closed = 0

        def close(self):
            Watched.closed += 1

    ex = Watched(2)
    with Zoo.open(base["root"]) as z:
        W, ref = z.stack(base["final"][1:]), z.get(base["final"][0]).state_dict()
        align_population(W, ref, config=z.get(base["final"][0]).arch_config, executor=ex)
        z.evaluate(base["final"], record=False, executor=ex)
    assert Watched.closed == 0
