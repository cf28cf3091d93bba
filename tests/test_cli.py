"""The ``weightzoo`` command line, called in-process as ``zoo.cli.main([...])`` with captured output.

One tiny zoo is built once per module (through the CLI itself) and copied for tests that change it.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from zoo import Zoo
from zoo.cli import build_parser, main
from zoo.models.architectures import init_state

RECIPE = {
    "name": "tiny",
    "description": "three tiny digits MLPs",
    "arch": {"family": "mlp", "in_features": 64, "hidden": [16], "out_features": 10},
    "epochs": 4,
    "checkpoint_epochs": [2, 4],
    "search": {"mode": "grid", "seeds": 3, "params": {"lr": [3e-3]}},
}
N_MODELS = 6


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("WEIGHTZOO_OFFLINE", "1")


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A zoo built by `weightzoo build recipe.json` (do not modify: copy it with `root`)."""
    d = tmp_path_factory.mktemp("cli")
    (d / "tiny.json").write_text(json.dumps(RECIPE))
    root = d / "zoo"
    assert main(["build", str(d / "tiny.json"), "--root", str(root), "--no-progress"]) == 0
    return root


@pytest.fixture
def root(built: Path, tmp_path: Path) -> Path:
    """A private copy of the built zoo."""
    dst = tmp_path / "zoo"
    shutil.copytree(built, dst)
    return dst


def run(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def model_id(root: Path, name: str) -> int:
    with Zoo.open(root, create=False) as z:
        return z.get(name).id


# ------------------------------------------------------------------------------ build / recipes
def test_recipes_lists_the_builtins(capsys):
    rc, out, _ = run(capsys, "recipes")
    assert rc == 0
    for name in ("digits-mlp", "digits-cnn", "digits-inr", "digits-mlp-widths"):
        assert name in out
    assert "300 digits MLPs" in out  # with their descriptions


def test_build_a_recipe_file(capsys, tmp_path: Path):
    f = tmp_path / "r.json"
    f.write_text(json.dumps(dict(RECIPE, name="b")))
    root = str(tmp_path / "zoo")
    rc, out, _ = run(capsys, "build", str(f), "--root", root, "--no-progress")
    assert rc == 0
    assert "b: done" in out and "wrote 6 checkpoints" in out and "b (6 models)" in out
    rc, out, _ = run(capsys, "build", str(f), "--root", root, "--no-progress", "--json")
    assert rc == 0
    rep = json.loads(out)
    assert (
        rep["runs"] == 3
        and rep["runs_skipped"] == 3
        and rep["models_written"] == 0
        and not rep["interrupted"]
    )
    # --name writes another population from the same recipe
    rc, out, _ = run(capsys, "build", str(f), "--root", root, "--no-progress", "--name", "c")
    assert rc == 0 and "c (6 models)" in out
    with Zoo.open(root, create=False) as z:
        assert {p.name: p.n_models for p in z.populations()} == {"b": 6, "c": 6}


def test_build_builtin_scaled_down(capsys, tmp_path: Path):
    rc, out, _ = run(
        capsys,
        "build",
        "digits-mlp",
        "--n",
        "2",
        "--epochs",
        "2",
        "--root",
        str(tmp_path / "z"),
        "--no-progress",
    )
    assert rc == 0
    with Zoo.open(tmp_path / "z", create=False) as z:
        names = sorted(m.name for m in z.population("digits-mlp").records())
    assert names[-1].startswith("digits-mlp/00001/e002")
    assert len({n.rsplit("/", 1)[0] for n in names}) == 2


def test_build_errors_exit_2(capsys, tmp_path: Path):
    rc, _, err = run(capsys, "build", "no-such-recipe", "--root", str(tmp_path / "z"))
    assert rc == 2 and "no recipe file" in err and "digits-mlp" in err
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(dict(RECIPE, epoch=3)))
    rc, _, err = run(capsys, "build", str(bad), "--root", str(tmp_path / "z"))
    assert rc == 2 and "unknown recipe key" in err
    assert len(err.strip().splitlines()) == 1


# ------------------------------------------------------------------------------ reading
def test_ls_populations(capsys, built: Path):
    rc, out, _ = run(capsys, "ls", "--root", str(built))
    assert rc == 0
    assert "tiny" in out and f"{N_MODELS} models" in out
    rc, out, _ = run(capsys, "ls", "--root", str(built), "--json")
    pops = json.loads(out)
    assert [(p["name"], p["n_models"]) for p in pops] == [("tiny", N_MODELS)]


def test_ls_population_final(capsys, built: Path):
    rc, out, _ = run(capsys, "ls", "-p", "tiny", "--root", str(built))
    assert rc == 0
    assert "tiny/00000/e002" in out and "tiny/00002/e004" in out
    assert "test_acc" in out and "hp_lr" in out
    rc, out, _ = run(capsys, "ls", "-p", "tiny", "--final", "--root", str(built), "--json")
    rows = json.loads(out)
    assert sorted(r["name"] for r in rows) == [f"tiny/{i:05d}/e004" for i in range(3)]
    assert all(r["step"] == 4 and 0 <= r["test_acc"] <= 1 and r["hp_lr"] == 3e-3 for r in rows)
    rc, out, _ = run(capsys, "ls", "-p", "tiny", "--limit", "2", "--root", str(built))
    assert f"... {N_MODELS - 2} more" in out


def test_ls_architectures(capsys, built: Path):
    rc, out, _ = run(capsys, "ls", "--architectures", "--root", str(built))
    assert rc == 0 and "mlp-" in out and '"hidden": [16]' in out
    rc, out, _ = run(capsys, "ls", "--architectures", "--root", str(built), "--json")
    (arch,) = json.loads(out)
    assert arch["family"] == "mlp" and arch["config"]["in_features"] == 64


def test_show_text_and_json(capsys, built: Path):
    mid = model_id(built, "tiny/00001/e004")
    rc, out, _ = run(capsys, "show", str(mid), "--root", str(built))
    assert rc == 0
    assert "tiny/00001/e004" in out and "test_acc" in out and "lr=0.003" in out and "layers.0.weight" in out
    assert "(train, previous)" in out  # its parent, the epoch-2 checkpoint
    for key in (str(mid), "tiny/00001/e004"):  # by id or by name
        rc, out, _ = run(capsys, "show", key, "--root", str(built), "--json")
        assert rc == 0
        info = json.loads(out)
        assert info["id"] == mid and info["name"] == "tiny/00001/e004" and info["step"] == 4
        assert info["population"] == "tiny" and info["op"] == "train"
        assert info["architecture_config"]["hidden"] == [16]
        assert info["hparams"]["lr"] == 3e-3 and info["hparams"]["seed"] == 1
        assert info["tags"] == ["recipe:tiny"]
        mets = {(m["split"], m["name"]): m for m in info["metrics"]}
        assert 0 <= mets[("test", "acc")]["value"] <= 1 and mets[("test", "acc")]["step"] == 4
        assert ("train", "loss") in mets and ("val", "acc") in mets and ("", "gen_gap") in mets
        tensors = {t["name"]: t for t in info["tensors"]}
        assert set(tensors) == {"layers.0.weight", "layers.0.bias", "layers.1.weight", "layers.1.bias"}
        assert tensors["layers.0.weight"]["numel"] == 16 * 64 and tensors["layers.0.weight"]["dtype"] == "F32"
        assert [e["parent"] for e in info["parents"]] == [model_id(built, "tiny/00001/e002")]
        assert info["children"] == []


def test_query_json_returns_the_rows(capsys, built: Path):
    sql = ("select m.name, x.value as acc from models m join metrics x on x.model_id = m.id "
           "where x.name = 'acc' and x.split = 'test' and m.step = 4 order by m.name")  # fmt: skip
    rc, out, _ = run(capsys, "query", sql, "--root", str(built), "--json")
    assert rc == 0
    rows = json.loads(out)
    assert [r["name"] for r in rows] == [f"tiny/{i:05d}/e004" for i in range(3)]
    assert all(0 <= r["acc"] <= 1 for r in rows)
    rc, out, _ = run(capsys, "query", "select count(*) as n from models", "--root", str(built), "--csv")
    assert out.splitlines() == ["n", str(N_MODELS)]
    rc, out, _ = run(capsys, "query", "select name from models order by id limit 1", "--root", str(built))
    assert "tiny/00000/e002" in out


def test_query_refuses_writes(capsys, root: Path):
    rc, out, err = run(capsys, "query", "drop table models", "--root", str(root))
    assert rc == 2
    assert out == ""
    assert (
        len(err.strip().splitlines()) == 1 and "SELECT" in err and err.startswith("weightzoo query: error:")
    )
    rc, out, err = run(capsys, "query", "select * from no_such_table", "--root", str(root))
    assert rc == 2 and len(err.strip().splitlines()) == 1
    with Zoo.open(root, create=False) as z:
        assert z.models().count() == N_MODELS
        assert z.verify().ok


def test_lineage_up_and_down(capsys, built: Path):
    e2, e4 = model_id(built, "tiny/00000/e002"), model_id(built, "tiny/00000/e004")
    rc, out, _ = run(capsys, "lineage", str(e4), "--root", str(built))
    assert rc == 0
    (line,) = out.strip().splitlines()
    assert line.split()[:4] == [str(e2), "->", str(e4), "train"] and "role=previous" in line
    rc, out, _ = run(capsys, "lineage", str(e2), "--down", "--root", str(built), "--json")
    edges = json.loads(out)
    assert [(e["parent"], e["child"], e["op"], e["role"]) for e in edges] == [(e2, e4, "train", "previous")]
    rc, out, _ = run(capsys, "lineage", str(e2), "--root", str(built))
    assert rc == 0 and "no recorded ancestors" in out


def test_tag_and_untag(capsys, root: Path):
    mid = str(model_id(root, "tiny/00000/e004"))
    rc, out, _ = run(capsys, "tag", mid, "a", "b", "--root", str(root))
    assert rc == 0 and "a, b, recipe:tiny" in out
    rc, out, _ = run(capsys, "tag", mid, "a", "--remove", "--root", str(root))
    assert rc == 0 and "b, recipe:tiny" in out and "a," not in out
    with Zoo.open(root, create=False) as z:
        assert z.tags(int(mid)) == ["b", "recipe:tiny"]
    rc, out, _ = run(capsys, "ls", "--all", "--tag", "b", "--root", str(root), "--json")
    assert [r["id"] for r in json.loads(out)] == [int(mid)]


# ------------------------------------------------------------------------------ ingest / export / maintenance
def test_ingest_export_verify_gc(capsys, root: Path, tmp_path: Path):
    sd = init_state({"family": "mlp", "in_features": 8, "hidden": [4], "out_features": 2}, 0)
    f = tmp_path / "m.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, str(f))
    rc, out, _ = run(
        capsys, "ingest", str(f), "-p", "imported", "--tag", "ext", "--root", str(root), "--no-progress"
    )
    assert rc == 0 and out.startswith("ingested model ")
    new_id = int(out.split()[-1])
    rc, out, _ = run(
        capsys, "ingest", str(f), "-p", "imported", "--root", str(root), "--json", "--no-progress"
    )
    (rec,) = json.loads(out)
    assert rec["population"] == "imported" and rec["op"] == "ingest"
    with Zoo.open(root, create=False) as z:
        assert z.population("imported").count() == 2 and z.tags(new_id) == ["ext"]
        mid = z.get("tiny/00002/e004").id
        want = z.state_dict(mid)
    out_dir = tmp_path / "export"
    rc, out, _ = run(capsys, "export", str(mid), str(out_dir), "--root", str(root))
    assert rc == 0 and str(out_dir) in out
    assert {"model.safetensors", "config.json", "README.md"} <= {p.name for p in out_dir.iterdir()}
    assert json.loads((out_dir / "config.json").read_text())["family"] == "mlp"
    rc, _, err = run(capsys, "export", str(mid), str(out_dir), "--root", str(root))
    assert rc == 2 and "overwrite" in err  # an existing folder is not clobbered
    rc, out, _ = run(capsys, "ingest", str(out_dir), "-p", "back", "--root", str(root), "--no-progress")
    assert rc == 0
    with Zoo.open(root, create=False) as z:
        (back,) = z.population("back").records()
        got = back.state_dict()
        assert all(torch.equal(got[k], want[k]) for k in want)
        z.remove([back.id])
    rc, out, _ = run(capsys, "verify", "--root", str(root), "--no-progress")
    assert rc == 0 and out.startswith("OK")
    rc, out, _ = run(capsys, "verify", "--root", str(root), "--no-progress", "--json")
    assert json.loads(out)["ok"] is True
    rc, out, _ = run(capsys, "gc", "--grace", "0", "--root", str(root), "--json")
    assert rc == 0
    assert set(json.loads(out)) >= {"blobs_removed", "bytes_freed", "packs_removed"}
    rc, out, _ = run(capsys, "gc", "--grace", "0", "--root", str(root))
    assert rc == 0 and out.startswith("gc removed")
    rc, out, _ = run(capsys, "verify", "--root", str(root), "--no-progress")
    assert rc == 0 and out.startswith("OK")


def test_ingest_hf_repo_from_the_offline_cache(capsys, root: Path, tmp_path: Path):
    commit = "f" * 40
    base = tmp_path / "hf" / "models--acme--tiny"
    snap = base / "snapshots" / commit
    snap.mkdir(parents=True)
    (base / "refs").mkdir()
    (base / "refs" / "main").write_text(commit)
    sd = init_state({"family": "mlp", "in_features": 8, "hidden": [4], "out_features": 2}, 1)
    save_file({k: v.contiguous() for k, v in sd.items()}, str(snap / "model.safetensors"))
    rc, out, _ = run(
        capsys,
        "ingest",
        "acme/tiny",
        "--cache-dir",
        str(tmp_path / "hf"),
        "--root",
        str(root),
        "--json",
        "--no-progress",
    )
    assert rc == 0
    (rec,) = json.loads(out)
    assert rec["source"] == "hf://acme/tiny"
    rc, _, err = run(
        capsys,
        "ingest",
        "acme/other",
        "--cache-dir",
        str(tmp_path / "hf"),
        "--root",
        str(root),
        "--no-progress",
    )
    assert rc == 2 and "acme/other" in err and len(err.strip().splitlines()) == 1


# ------------------------------------------------------------------------------ errors
def test_unknown_model_id_exit_2_with_hint(capsys, built: Path):
    for cmd in (
        ["show", "99999"],
        ["lineage", "99999"],
        ["tag", "99999", "x"],
        ["export", "99999", "/tmp/never"],
    ):
        rc, out, err = run(capsys, *cmd, "--root", str(built))
        assert rc == 2, cmd
        assert "99999" in err and "weightzoo ls" in err, cmd
        assert len(err.strip().splitlines()) == 1
    rc, _, err = run(capsys, "ls", "-p", "nobody", "--root", str(built))
    assert rc == 2 and "nobody" in err and "weightzoo ls" in err


def test_commands_on_a_root_that_is_not_a_zoo(capsys, tmp_path: Path):
    empty = tmp_path / "empty"
    empty.mkdir()
    for cmd in (["show", "1"], ["ls"], ["verify"], ["query", "select 1"]):
        rc, out, err = run(capsys, *cmd, "--root", str(empty))
        assert rc == 2, cmd
        assert "catalog" in err or "no zoo" in err
    assert list(empty.iterdir()) == []  # nothing was created
    rc, _, err = run(capsys, "show", "1", "--root", str(tmp_path / "missing"))
    assert rc == 2 and "no zoo" in err
    assert not (tmp_path / "missing").exists()


def test_push_offline_is_refused_with_a_hint(capsys, built: Path):
    mid = str(model_id(built, "tiny/00000/e004"))
    rc, out, err = run(capsys, "push", mid, "acme/tiny", "--root", str(built))
    assert rc == 2 and "offline" in err and len(err.strip().splitlines()) == 1


def test_bad_arguments_exit_2(capsys):
    with pytest.raises(SystemExit) as ei:
        main([])
    assert ei.value.code == 2
    with pytest.raises(SystemExit) as ei:
        main(["no-such-command"])
    assert ei.value.code == 2


# ------------------------------------------------------------------------------ help
def _subcommands() -> dict[str, argparse.ArgumentParser]:
    p = build_parser()
    (action,) = [a for a in p._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def test_top_level_help(capsys):
    with pytest.raises(SystemExit) as ei:
        main(["--help"])
    assert ei.value.code == 0
    out = capsys.readouterr().out
    for cmd in (
        "demo",
        "build",
        "recipes",
        "ls",
        "show",
        "query",
        "ingest",
        "export",
        "verify",
        "gc",
        "lineage",
        "tag",
    ):
        assert cmd in out
    assert "weightzoo demo" in out


KEY_OPTIONS = {
    "build": ["recipe", "--n", "--epochs", "--no-resume", "--name"],
    "ls": ["--population", "--final", "--architectures", "--tag", "--limit"],
    "show": ["model"],
    "query": ["sql", "--csv", "metrics"],
    "ingest": ["--population", "--arch", "--cache-dir", "--revision"],
    "export": ["out_dir", "--overwrite", "--max-shard-size"],
    "verify": ["--no-rehash"],
    "gc": ["--grace", "--dry-run"],
    "lineage": ["--down", "--both", "--depth"],
    "tag": ["tags", "--remove"],
    "demo": ["--quick"],
}


@pytest.mark.parametrize("cmd", sorted(_subcommands()))
def test_subcommand_help(capsys, cmd: str):
    with pytest.raises(SystemExit) as ei:
        main([cmd, "--help"])
    assert ei.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: weightzoo {cmd}")
    assert "--root" in out and "--json" in out
    for opt in KEY_OPTIONS.get(cmd, []):
        assert opt in out, (cmd, opt)


# ------------------------------------------------------------------------------ demo
def test_demo_quick(capsys, tmp_path: Path):
    root = str(tmp_path / "demo")
    rc, out, _ = run(capsys, "demo", "--quick", "--root", root, "--no-progress")
    assert rc == 0
    assert "digits-mlp-quick: done" in out and "digits-inr-quick: done" in out
    assert "170 models" in out and "test accuracy at epoch 8 (n=40)" in out and "PSNR" in out
    with Zoo.open(root, create=False) as z:
        assert z.population("digits-mlp-quick").count() == 120
        assert z.population("digits-mlp-quick").final().count() == 40
        assert z.population("digits-inr-quick").count() == 50
        best = z.population("digits-mlp-quick").final().df()["test_acc"].max()
        assert best > 0.9
    rc, out, _ = run(capsys, "demo", "--quick", "--root", root, "--no-progress")  # resumes: nothing new
    assert rc == 0 and "wrote 0 checkpoints" in out and "170 models" in out
