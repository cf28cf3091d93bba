"""``weightzoo merge``: registered on a parser directly (as the entry-point hook does)."""

from __future__ import annotations

import argparse
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from analysis.merge_cli import main, register
from analysis.merging import merge_state_dicts
from tests.conftest import mlp_state
from zoo.errors import ConfigError

MLP = {"family": "mlp", "in_features": 64, "hidden": [16], "out_features": 10}


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--root")
    common.add_argument("--url")
    common.add_argument("--json", action="store_true")
    common.add_argument("--no-progress", action="store_true")
    p = argparse.ArgumentParser(prog="weightzoo")
    sub = p.add_subparsers(dest="command")
    register(sub, common)
    return p


def run(*argv: str) -> int:
    args = _parser().parse_args(["merge", *argv])
    return args.func(args)


@pytest.fixture
def files(tmp_path):
    base = mlp_state(0, MLP)
    paths = []
    for i in range(3):
        g = torch.Generator().manual_seed(i)
        sd = base if i == 0 else {k: v + 0.05 * torch.randn(v.shape, generator=g) for k, v in base.items()}
        p = tmp_path / f"m{i}.safetensors"
        save_file(sd, str(p))
        paths.append(str(p))
    return paths


def test_help_lists_usage(capsys):
    with pytest.raises(SystemExit):
        _parser().parse_args(["merge", "--help"])
    out = capsys.readouterr().out
    assert "--method" in out and "--to-zoo" in out and "merge_method: ties" in out and "zoo:42" in out


def test_list_methods(capsys):
    assert run("--list-methods") == 0
    out = capsys.readouterr().out
    assert "ties:" in out and "density: float per model" in out and "opcm" in out


def test_yaml_config_to_folder(files, tmp_path, capsys):
    cfg = tmp_path / "merge.yml"
    cfg.write_text(
        f"merge_method: ties\nbase_model: {files[0]}\ntokenizer_source: base\nmodels:\n"
        f"  - model: {files[1]}\n    parameters: {{weight: 1.0, density: 0.5}}\n"
        f"  - model: {files[2]}\n    parameters: {{weight: 0.5, density: 0.5}}\nparameters: {{normalize: true}}\n"
    )
    out = tmp_path / "out"
    assert run(str(cfg), str(out), "--no-progress") == 0
    cap = capsys.readouterr()
    assert "tokenizer_source" in cap.err and "wrote" in cap.out
    got = load_file(str(out / "model.safetensors"))
    sds = [load_file(f) for f in files]
    want = merge_state_dicts("ties", sds[1:], sds[0], weight=[1.0, 0.5], density=0.5)
    assert all(torch.allclose(got[k], want[k]) for k in want)


def test_one_off_flags_into_zoo(tmp_path, capsys):
    from zoo import Zoo

    root = tmp_path / "zoo"
    with Zoo.open(root) as z:
        base = mlp_state(0, MLP)
        ids = [z.add(base, arch=MLP, population="p").id]
        for i in range(3):
            g = torch.Generator().manual_seed(i)
            ids.append(z.add({k: v + 0.05 * torch.randn(v.shape, generator=g) for k, v in base.items()}, arch=MLP,
                             population="p").id)  # fmt: skip
    rc = run("--method", "ties", "--base", str(ids[0]), "--models", *map(str, ids[1:]), "--density", "0.5",
             "--to-zoo", "--population", "merged", "--root", str(root), "--json", "--no-progress")  # fmt: skip
    assert rc == 0
    res = json.loads(capsys.readouterr().out)
    assert res["method"] == "ties" and res["model_id"] is not None and "test_acc" in res["metrics"]
    with Zoo.open(root) as z:
        rec = z.get(res["model_id"])
        assert rec.op == "merge.ties" and rec.population == "merged"
        assert sorted(e.role for e in rec.parents()) == ["base", "model_0", "model_1", "model_2"]


def test_one_off_flags_to_folder_with_params(files, tmp_path):
    out = tmp_path / "o"
    assert run("--method", "task_arithmetic", "--base", files[0], "--models", files[1], files[2], "--weight", "0.3", "0.7",
               "--lambda", "0.5", "--out", str(out), "--no-progress") == 0  # fmt: skip
    got = load_file(str(out / "model.safetensors"))
    sds = [load_file(f) for f in files]
    want = merge_state_dicts("task_arithmetic", sds[1:], sds[0], weight=[0.3, 0.7], **{"lambda": 0.5})
    assert all(torch.allclose(got[k], want[k]) for k in want)
    out2 = tmp_path / "o2"
    assert run("--method", "slerp", "--base", files[0], "--models", files[1], "--t", "0.25", str(out2), "--no-progress") == 0
    assert (out2 / "model.safetensors").exists()


def test_errors_are_clear(files, tmp_path, capsys):
    with pytest.raises(ConfigError, match="CONFIG.yml"):
        run("--no-progress")
    with pytest.raises(ConfigError, match="one value or one per model"):
        run("--method", "ties", "--base", files[0], "--models", files[1], files[2], "--density", "0.1", "0.2", "0.3",
            "--out", str(tmp_path / "x"))  # fmt: skip
    with pytest.raises(ConfigError, match="OUT_DIR"):
        run("--method", "linear", "--models", files[1], files[2])
    cfg = tmp_path / "bad.yml"
    cfg.write_text("merge_method: linear\nslices: []\n")
    with pytest.raises(ConfigError, match="slices"):
        run(str(cfg), str(tmp_path / "y"))
    with pytest.raises(ConfigError, match="only applies with --method"):
        run(str(cfg), str(tmp_path / "y"), "--density", "0.5")
    # standalone main: one error line, exit status 2
    assert main(["--method", "nope", "--models", files[1], "--out", str(tmp_path / "z"), "--no-progress"]) == 2
    assert "unknown merge method 'nope'" in capsys.readouterr().err
