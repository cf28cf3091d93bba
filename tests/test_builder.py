"""The population builder: recipe validation and expansion, and builds into a real zoo.

Every build here is tiny (a handful of runs, a few epochs on sklearn's bundled digits), so the
file runs in seconds; the values asserted are those a user relies on: names, metrics, hparams,
lineage, resumability, fine-tune parents and interrupt safety.
"""

from __future__ import annotations

import json
import math
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from zoo import Zoo
from zoo.build.builder import build, plan_runs, shard_runs
from zoo.build.recipes import Recipe, builtin_recipes
from zoo.errors import ConfigError, NotFoundError
from zoo.models.datasets import inr_targets, load_dataset

REPO = Path(__file__).resolve().parents[1]
MLP = {"family": "mlp", "in_features": 64, "hidden": [16], "out_features": 10}
SIREN = {"family": "siren", "in_features": 2, "hidden": [16], "out_features": 1, "w0": 30.0}


def recipe(**kw) -> Recipe:
    d = {"name": "R", "arch": dict(MLP), "epochs": 4, "checkpoint_epochs": [2, 4],
         "search": {"mode": "grid", "seeds": 2, "params": {"lr": [1e-3, 3e-3]}}}  # fmt: skip
    d.update(kw)
    return Recipe.from_dict(d)


@pytest.fixture
def z(tmp_path: Path) -> Iterator[Zoo]:
    zz = Zoo.open(tmp_path / "zoo")
    try:
        yield zz
    finally:
        zz.close()


def names(z: Zoo, pop: str | None = None) -> list[str]:
    q = z.models() if pop is None else z.population(pop)
    return sorted(r.name for r in q.records())


# ------------------------------------------------------------------------------ recipe validation
@pytest.mark.parametrize(
    ("patch", "needle"),
    [
        ({"epoch": 3}, "unknown recipe key"),
        ({"search": {"params": {"learning_rate": [1e-3]}}}, "cannot vary 'learning_rate'"),
        ({"epochs": 3, "checkpoint_epochs": [5]}, "checkpoint_epochs"),
        ({"epochs": 3, "checkpoint_epochs": [-1]}, "checkpoint_epochs"),
        ({"search": {"mode": "bayes"}}, "search.mode"),
        ({"task": "segmentation"}, "unknown task"),
        ({"arch": {"family": "transformer"}}, "unknown architecture family"),
        ({"arch": {"in_features": 64}}, "family"),
    ],
)
def test_recipe_validation_errors_are_config_errors_with_hints(patch, needle):
    with pytest.raises(ConfigError, match=needle):
        recipe(**patch)


def test_unknown_key_message_lists_the_valid_keys():
    with pytest.raises(ConfigError) as ei:
        recipe(epoch=3)
    msg = str(ei.value)
    assert "'epoch'" in msg and "epochs" in msg and "checkpoint_epochs" in msg


def test_unknown_search_param_message_lists_what_can_vary():
    with pytest.raises(ConfigError) as ei:
        recipe(search={"params": {"learning_rate": [1e-3]}})
    msg = str(ei.value)
    assert "lr" in msg and "width/depth" in msg and "mlp" in msg


def test_recipe_needs_name_and_arch():
    with pytest.raises(ConfigError, match="name"):
        Recipe.from_dict({"arch": MLP})
    with pytest.raises(ConfigError, match="arch"):
        Recipe.from_dict({"name": "R"})


def test_bad_distribution_is_refused_with_the_valid_ones():
    with pytest.raises(ConfigError, match=r"lr.*choice, uniform, loguniform, int"):
        recipe(search={"mode": "random", "n": 3, "params": {"lr": {"normal": [0, 1]}}})
    with pytest.raises(ConfigError, match="loguniform bounds"):
        recipe(search={"mode": "random", "n": 3, "params": {"lr": {"loguniform": [0, 1]}}})


def test_bad_distribution_is_refused_when_the_recipe_is_read():
    with pytest.raises(ConfigError):
        recipe(search={"mode": "random", "n": 3, "params": {"lr": {"normal": [0, 1]}}})


def test_distribution_in_a_grid_search_is_refused():
    with pytest.raises(ConfigError):
        recipe(search={"mode": "grid", "params": {"lr": {"loguniform": [1e-3, 1e-2]}}}).draws()


def test_checkpoint_epochs_of_the_wrong_type_is_a_config_error():
    with pytest.raises(ConfigError, match="checkpoint_epochs"):
        recipe(epochs=3, checkpoint_epochs="3")


def test_unknown_finetune_key_is_a_config_error():
    with pytest.raises(ConfigError, match="parent"):
        recipe(finetune={"parent": {"population": "P"}})


def test_unknown_search_key_is_a_config_error():
    with pytest.raises(ConfigError, match="sedes"):
        recipe(search={"mode": "grid", "sedes": 3})


# ------------------------------------------------------------------------------ expansion
def test_grid_expansion_is_the_product_times_seeds():
    r = recipe(
        search={"mode": "grid", "seeds": 3, "params": {"lr": [1e-3, 3e-3], "weight_decay": [0.0, 1e-4, 1e-3]}}
    )
    pts = r.draws()
    assert len(pts) == 2 * 3 * 3
    combos = {(p["lr"], p["weight_decay"], p["seed"]) for p in pts}
    assert len(combos) == 18
    assert {p["seed"] for p in pts} == {0, 1, 2}
    assert len(plan_runs(r)) == 18
    explicit = recipe(search={"mode": "grid", "seeds": [7, 9], "params": {"lr": [1e-3]}}).draws()
    assert [p["seed"] for p in explicit] == [7, 9]


def test_random_draws_are_deterministic_for_a_seed():
    spec = {"lr": {"loguniform": [1e-4, 1e-1]}, "dropout": {"choice": [0.0, 0.1, 0.3]},
            "init_scale": {"uniform": [0.5, 2.0]}, "batch_size": {"int": [16, 64]}}  # fmt: skip
    a = recipe(search={"mode": "random", "n": 20, "seed": 5, "params": spec}).draws()
    b = recipe(search={"mode": "random", "n": 20, "seed": 5, "params": spec}).draws()
    c = recipe(search={"mode": "random", "n": 20, "seed": 6, "params": spec}).draws()
    assert a == b
    assert a != c
    assert len(a) == 20 and len({p["seed"] for p in a}) == 20
    for p in a:
        assert 1e-4 <= p["lr"] <= 1e-1
        assert p["dropout"] in (0.0, 0.1, 0.3)
        assert 0.5 <= p["init_scale"] <= 2.0
        assert isinstance(p["batch_size"], int) and 16 <= p["batch_size"] <= 64


def test_arch_for_width_depth_shorthands():
    r = recipe(search={"mode": "grid", "params": {"width": [8, 16], "depth": [1, 3]}})
    assert [r.arch_for(p)["hidden"] for p in r.draws()] == [[8], [8, 8, 8], [16], [16, 16, 16]]
    assert recipe().arch_for({"depth": 2})["hidden"] == [16, 16]  # width from the base config
    cnn = {
        "family": "cnn",
        "in_channels": 1,
        "image_size": 8,
        "channels": [8, 16],
        "kernel_size": 3,
        "out_features": 10,
    }
    rc = recipe(arch=cnn, search={"mode": "grid", "params": {"width": [4], "depth": [3]}})
    assert rc.arch_for(rc.draws()[0])["channels"] == [4, 8, 16]
    siren = recipe(arch=dict(SIREN), search={"mode": "grid", "params": {"width": [8], "depth": [2]}})
    assert siren.arch_for(siren.draws()[0])["hidden"] == [8, 8]
    # an arch key varies the config directly
    ra = recipe(search={"mode": "grid", "params": {"activation": ["relu", "tanh"]}})
    assert [ra.arch_for(p)["activation"] for p in ra.draws()] == ["relu", "tanh"]


def test_shards_group_by_architecture_and_optimizer():
    r = recipe(
        search={
            "mode": "grid",
            "seeds": 2,
            "params": {"width": [8, 16], "lr": [1e-3, 1e-2], "optimizer": ["adam", "sgd"]},
        }
    )
    runs = plan_runs(r)
    assert len(runs) == 16
    shards = shard_runs(runs)
    assert len(shards) == 4  # 2 widths x 2 optimizers; lr and seed vary inside a shard
    for s in shards:
        assert len({json.dumps(x.arch, sort_keys=True) for x in s}) == 1
        assert len({x.point["optimizer"] for x in s}) == 1
    assert sum(len(s) for s in shard_runs(runs, max_shard=3)) == 16
    assert max(len(s) for s in shard_runs(runs, max_shard=3)) == 3


def test_builtin_recipes_load_and_scale():
    assert {"digits-mlp", "digits-cnn", "digits-inr", "digits-mlp-widths"} <= set(builtin_recipes())
    for name in builtin_recipes():
        r = Recipe.load(name)
        assert r.name == name and r.description
    small = Recipe.load("digits-mlp").scaled(n=5, epochs=4)
    assert small.search["n"] == 5 and small.epochs == 4
    assert max(small.checkpoint_epochs) == 4 and min(small.checkpoint_epochs) >= 1
    assert len(small.draws()) == 5
    with pytest.raises(ConfigError):
        Recipe.load("digits-mlp-widths").scaled(n=5)
    with pytest.raises(NotFoundError, match="digits-mlp"):
        Recipe.load("no-such-recipe")


def test_recipe_from_yaml_and_json_files(tmp_path: Path):
    (tmp_path / "r.json").write_text(json.dumps({"name": "J", "arch": MLP, "epochs": 2}))
    (tmp_path / "r.yml").write_text(
        "name: Y\narch: {family: mlp, in_features: 64, hidden: [8], out_features: 10}\nepochs: 2\n"
    )
    (tmp_path / "bad.yml").write_text("name: [unclosed\n")
    assert Recipe.from_file(tmp_path / "r.json").name == "J"
    y = Recipe.load(str(tmp_path / "r.yml"))
    assert y.name == "Y" and y.checkpoint_epochs == [2]
    with pytest.raises(ConfigError, match="does not parse"):
        Recipe.from_file(tmp_path / "bad.yml")


# ------------------------------------------------------------------------------ builds
def test_build_writes_named_checkpoints_with_metrics_hparams_lineage(z: Zoo):
    r = recipe()
    rep = build(z, r, progress=False)
    assert rep.runs == 4 and rep.runs_skipped == 0 and rep.models_written == 8 and not rep.interrupted
    assert rep.populations == {"R": 8}
    want = [f"R/{i:05d}/e{e:03d}" for i in range(4) for e in (2, 4)]
    assert names(z, "R") == sorted(want)
    lrs = set()
    for i in range(4):
        for e in (2, 4):
            m = z.get(f"R/{i:05d}/e{e:03d}")
            assert m.population == "R" and m.run == f"R/{i:05d}" and m.step == e and m.op == "train"
            assert m.arch_config["hidden"] == [16]
            assert m.tags() == ["recipe:R"]
            hp = m.hparams()
            assert hp["epochs"] == 4 and hp["optimizer"] == "adam" and hp["dataset"] == "digits"
            assert hp["seed"] in (0, 1)
            lrs.add(hp["lr"])
            mets = m.metrics()
            got = {(row.split, row.name) for row in mets.itertuples()}
            assert {("test", "acc"), ("test", "loss"), ("train", "acc"), ("train", "loss"), ("val", "acc"),
                    ("val", "loss"), ("", "gen_gap")} <= got  # fmt: skip
            assert set(mets["step"]) == {e}
            acc = m.metric("acc", "test")
            assert 0.0 <= acc <= 1.0
            assert m.metric("gen_gap") == pytest.approx(m.metric("acc", "train") - acc, abs=1e-5)
            parents = m.parents()
            if e == 2:
                assert parents == []
            else:
                (edge,) = parents
                assert z.get(edge.parent).name == f"R/{i:05d}/e002"
                assert (edge.op, edge.role) == ("train", "previous")
                assert edge.params == {"recipe": "R", "epoch": 4}
            # the stored weights instantiate and reproduce the recorded accuracy
            assert isinstance(m.module(), torch.nn.Module)
    assert lrs == {1e-3, 3e-3}
    assert z.verify().ok


def test_sensible_recipe_reaches_good_accuracy(z: Zoo):
    r = recipe(name="good", arch=dict(MLP, hidden=[32]), epochs=10, checkpoint_epochs=[10],
               search={"mode": "grid", "seeds": 3, "params": {"lr": [3e-3]}})  # fmt: skip
    build(z, r, progress=False)
    df = z.population("good").df()
    assert len(df) == 3
    assert (df["test_acc"] > 0.85).all(), df["test_acc"].tolist()
    assert (df["train_acc"] > 0.85).all()


def test_rebuild_is_a_noop(z: Zoo):
    r = recipe()
    build(z, r, progress=False)
    gen, packs = z.generation(), sorted(p.name for p in (z.root / "packs").glob("*"))
    rep = build(z, r, progress=False)
    assert rep.runs == 4 and rep.runs_skipped == 4 and rep.models_written == 0
    assert rep.populations == {"R": 8}
    assert z.models().count() == 8
    assert z.generation() == gen
    assert sorted(p.name for p in (z.root / "packs").glob("*")) == packs


def test_partial_build_resumes_bit_exactly(z: Zoo):
    r = recipe(search={"mode": "random", "n": 5, "params": {"lr": {"loguniform": [1e-3, 1e-2]},
                                                          "dropout": {"choice": [0.0, 0.2]}}})  # fmt: skip
    build(z, r, progress=False)
    before = {m.name: m.state_dict() for m in z.population("R").records()}
    assert len(before) == 10
    gone = ["R/00001/e004", "R/00003/e004", "R/00004/e002", "R/00004/e004"]
    assert z.remove(gone) == 4
    rep = build(z, r, progress=False)
    assert rep.runs_skipped == 2 and rep.models_written == 4  # runs 1, 3, 4 retrain
    after = z.population("R").records()
    assert sorted(m.name for m in after) == sorted(before)  # they came back, no duplicates
    for m in after:
        sd = m.state_dict()
        for k, v in before[m.name].items():
            assert torch.equal(sd[k], v), (m.name, k)
    # the lineage of the rebuilt final checkpoints points at the (kept or rebuilt) epoch-2 checkpoint
    for run in (1, 3, 4):
        (edge,) = z.get(f"R/{run:05d}/e004").parents()
        assert z.get(edge.parent).name == f"R/{run:05d}/e002"
    assert z.verify().ok


def test_no_resume_refuses_to_overwrite(z: Zoo):
    from zoo.errors import DuplicateError

    build(z, recipe(), progress=False)
    with pytest.raises(DuplicateError):
        build(z, recipe(), progress=False, resume=False)
    assert z.models().count() == 8


def test_varying_an_arch_key_writes_one_population_per_architecture(z: Zoo):
    r = recipe(
        name="W",
        epochs=2,
        checkpoint_epochs=[2],
        search={"mode": "grid", "seeds": 2, "params": {"width": [8, 16]}},
    )
    rep = build(z, r, progress=False)
    assert rep.populations == {"W/width=8": 2, "W/width=16": 2}
    for w in (8, 16):
        pop = z.population(f"W/width={w}")
        assert pop.config["hidden"] == [w]
        assert all(m.tags() == ["recipe:W"] for m in pop.records())
        assert pop.stack()["layers.0.weight"].shape == (2, w, 64)
    assert sorted(m.name for m in z.models().tag("recipe:W").records()) == [
        f"W/{i:05d}/e002" for i in range(4)
    ]
    assert build(z, r, progress=False).models_written == 0


def test_recipe_name_with_a_slash_resumes(z: Zoo):
    r = recipe(name="team/A", epochs=2, checkpoint_epochs=[2], search={"mode": "grid", "seeds": 2})
    build(z, r, progress=False)
    assert names(z) == ["team/A/00000/e002", "team/A/00001/e002"]
    assert build(z, r, progress=False).models_written == 0


# ------------------------------------------------------------------------------ fine-tunes
@pytest.fixture
def parents_zoo(z: Zoo) -> Zoo:
    build(z, recipe(name="P", search={"mode": "grid", "seeds": 3}), progress=False)
    return z


def test_finetune_starts_from_the_parent_with_lineage(parents_zoo: Zoo):
    z = parents_zoo
    ft = recipe(
        name="F", epochs=2, checkpoint_epochs=[0, 1, 2],
        search={"mode": "grid", "params": {"lr": [1e-4]}},
        finetune={"parents": {"population": "P", "final": True, "limit": 2},
                  "corruption": {"kind": "gaussian_noise", "severity": 3}},
    )  # fmt: skip
    rep = build(z, ft, progress=False)
    assert rep.runs == 2 and rep.models_written == 6
    finals = [z.get(f"P/{i:05d}/e004") for i in range(2)]
    for i, parent in enumerate(finals):
        e0, e1, e2 = (z.get(f"F/{i:05d}/e{e:03d}") for e in (0, 1, 2))
        (edge,) = e0.parents()
        assert edge.parent == parent.id and (edge.op, edge.role) == ("finetune", "base")
        (edge1,) = e1.parents()
        assert edge1.parent == e0.id and (edge1.op, edge1.role) == ("finetune", "previous")
        assert e2.parents()[0].parent == e1.id
        hp = e2.hparams()
        assert (
            hp["parent"] == parent.id
            and hp["corruption"] == "gaussian_noise"
            and hp["corruption_severity"] == 3
        )
        assert hp["lr"] == 1e-4
        assert e0.op == e2.op == "finetune"
        # epoch 0 is the parent exactly; a short fine-tune stays close to it
        p_sd, sd0, sd2 = parent.state_dict(), e0.state_dict(), e2.state_dict()
        for k in p_sd:
            assert torch.equal(sd0[k], p_sd[k]), k
            diff = (sd2[k] - p_sd[k]).abs().max().item()
            assert 0 < diff < 0.05, (k, diff)
        # and far from any other parent
        other = finals[1 - i].state_dict()
        assert (sd2["layers.0.weight"] - other["layers.0.weight"]).abs().max() > 0.05
        # the parent's descendants include the fine-tune chain
        down = {e.child for e in z.lineage(parent.id, direction="down")}
        assert {e0.id, e1.id, e2.id} <= down
    assert z.population("F").count() == 6
    assert build(z, ft, progress=False).models_written == 0


def test_finetune_first_checkpoint_links_to_its_base(parents_zoo: Zoo):
    z = parents_zoo
    ft = recipe(
        name="G",
        epochs=1,
        checkpoint_epochs=[1],
        search={"mode": "grid", "seeds": 2},
        finetune={"parents": {"population": "P", "limit": 1}, "classes": [0, 1, 2]},
    )
    assert build(z, ft, progress=False).models_written == 2
    base = z.get("P/00000/e004")
    for i in range(2):
        m = z.get(f"G/{i:05d}/e001")
        (edge,) = m.parents()
        assert (edge.parent, edge.op, edge.role) == (base.id, "finetune", "base")
        assert m.hparams()["classes"] == [0, 1, 2] and m.hparams()["seed"] == i


def test_finetune_without_parents_is_not_found(z: Zoo):
    ft = recipe(name="F", finetune={"parents": {"population": "nobody"}})
    with pytest.raises(NotFoundError, match="parent"):
        build(z, ft, progress=False)
    assert z.models().count() == 0


def test_finetune_parents_filtered_by_tag(parents_zoo: Zoo):
    z = parents_zoo
    z.tag("P/00002/e004", "chosen")
    ft = recipe(name="F", epochs=1, checkpoint_epochs=[1], search={"mode": "grid"},
                finetune={"parents": {"population": "P", "tag": "chosen"}})  # fmt: skip
    build(z, ft, progress=False)
    assert z.population("F").count() == 1


# ------------------------------------------------------------------------------ INRs
INR = {"name": "I", "arch": SIREN, "task": "inr", "epochs": 20, "inr": {"split": "train", "n": 4, "seed": 0}}


def test_inr_recipe_writes_one_siren_per_image_with_labels(z: Zoo):
    rep = build(z, Recipe.from_dict(INR), progress=False)
    assert rep.runs == 4 and rep.models_written == 4
    tg = inr_targets(load_dataset("digits", seed=0), split="train", n=4, seed=0)
    recs = z.population("I").records()
    assert len(recs) == 4
    for m in recs:
        assert m.arch_config["family"] == "siren" and m.step == 20
        hp = m.hparams()
        k = hp["inr_index"]
        assert hp["label"] == int(tg.labels[k]) and hp["image"] == int(tg.indices[k])
        assert "label_noise" not in hp and "dropout" not in hp
        names_ = set(m.metrics()["name"])
        assert {"psnr", "loss"} <= names_
        # the stored SIREN is the one fitted to image `image`: its recorded loss/PSNR are those of its weights
        out = m.module()(tg.coords).detach()
        mse = float(((out - tg.targets[k]) ** 2).mean())
        assert m.metric("loss", "train") == pytest.approx(mse, rel=1e-4)
        assert m.metric("psnr") == pytest.approx(10 * math.log10(4 / mse), abs=1e-3)  # values in [-1, 1]
    assert sorted(m.hparams()["inr_index"] for m in recs) == [0, 1, 2, 3]
    assert sorted(m.hparams()["label"] for m in recs) == sorted(tg.labels.tolist())


def test_inr_recipe_with_search_params_still_fits_every_image(z: Zoo):
    build(z, Recipe.from_dict({**INR, "search": {"mode": "grid", "params": {"lr": [1e-2]}}}), progress=False)
    assert z.population("I").count() == 4


def test_inr_resume_fits_the_same_images(z: Zoo):
    r = Recipe.from_dict(INR)
    build(z, r, progress=False)
    before = {m.name: m.hparams()["label"] for m in z.population("I").records()}
    z.remove(["I/00000/e020", "I/00001/e020"])
    build(z, r, progress=False)
    assert {m.name: m.hparams()["label"] for m in z.population("I").records()} == before


def test_inr_image_hparam_is_the_index_in_the_split(z: Zoo):
    build(z, Recipe.from_dict(INR), progress=False)
    tg = inr_targets(load_dataset("digits", seed=0), split="train", n=4, seed=0)
    assert sorted(m.hparams()["image"] for m in z.population("I").records()) == sorted(tg.indices.tolist())


# ------------------------------------------------------------------------------ Ctrl-C
CTRL_C = {"name": "C", "arch": dict(MLP, hidden=[64]), "epochs": 60, "checkpoint_epochs": list(range(1, 61)),
          "search": {"mode": "grid", "seeds": 4}}  # fmt: skip

CHILD = """
import signal, sys
signal.signal(signal.SIGINT, signal.default_int_handler)
from zoo.cli import main
sys.exit(main(["build", sys.argv[1], "--root", sys.argv[2], "--no-progress"]))
"""


def _count_models(db: Path) -> int:
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as c:
            return int(c.execute("select count(*) from models").fetchone()[0])
    except sqlite3.Error:
        return 0


def test_ctrl_c_leaves_a_consistent_resumable_store(tmp_path: Path):
    rfile = tmp_path / "c.json"
    rfile.write_text(json.dumps(CTRL_C))
    root = tmp_path / "zoo"
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(rfile), str(root)], env=env, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while _count_models(root / "catalog.db") < 8:
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no checkpoints after 60 s"
            time.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    total = 4 * 60
    assert proc.returncode == 130, (out, err)
    assert "INTERRUPTED" in out
    with Zoo.open(root, create=False) as z:
        rep = z.verify()
        assert rep.ok, str(rep)
        n = z.models().count()
        assert 8 <= n < total
        for m in z.models().records():
            assert isinstance(m.module(), torch.nn.Module)
            (edge,) = m.parents() or [None]
            if m.step > 1:  # every stored checkpoint's previous checkpoint is stored too
                assert edge is not None and z.get(edge.parent).step == m.step - 1
        rep2 = build(z, Recipe.from_dict(CTRL_C), progress=False)
        assert not rep2.interrupted
        assert rep2.models_written == total - n
        got = names(z, "C")
        assert len(got) == len(set(got)) == total
        assert z.verify().ok
        for i in range(4):
            chain = [z.get(f"C/{i:05d}/e{e:03d}") for e in (59, 60)]
            assert chain[1].parents()[0].parent == chain[0].id


def test_inr_shared_init_starts_every_siren_from_the_same_weights(z: Zoo):
    r = Recipe.from_dict({**INR, "checkpoint_epochs": [0, 20], "inr": {**INR["inr"], "shared_init": True}})
    build(z, r, progress=False)
    starts = z.models().population("I").step(0).stack()
    ends = z.models().population("I").step(20).stack()
    for k, v in starts.items():
        assert torch.equal(v, v[:1].expand_as(v)), k  # one initialisation for all images
        assert not torch.equal(ends[k][0], ends[k][1]), k  # fitted to different images
    assert len({m.hparams()["seed"] for m in z.population("I").records()}) == 1


@pytest.mark.parametrize("threads", [1, 2, None])
def test_an_in_process_build_trains_on_the_given_threads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         threads: int | None) -> None:  # fmt: skip
    import zoo.build.builder as builder_mod

    seen: list[int] = []
    real = builder_mod.train_shard

    def spy(*a, **k):  # noqa: ANN002, ANN003, ANN202
        seen.append(torch.get_num_threads())
        return real(*a, **k)

    monkeypatch.setattr(builder_mod, "train_shard", spy)
    before = torch.get_num_threads()
    with Zoo.open(tmp_path / "z") as z:
        build(z, recipe(epochs=1, checkpoint_epochs=[1]), progress=False, threads=threads)
    assert seen and set(seen) == {before if threads is None else threads}
    assert torch.get_num_threads() == before
    with Zoo.open(tmp_path / "z2") as z, pytest.raises(ConfigError, match="threads"):
        build(z, recipe(epochs=1, checkpoint_epochs=[1]), progress=False, threads=0)
