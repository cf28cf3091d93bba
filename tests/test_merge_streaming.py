"""Streaming merges: sources (zoo, files, sharded folders), the writer, chunking, lineage, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from analysis.merging import MergeConfig, get_method, merge, merge_state_dicts
from analysis.merging import engine as engine_mod
from analysis.merging.sources import open_source
from analysis.merging.writer import StreamingWriter, parse_size
from tests.conftest import mlp_state
from zoo.errors import ConfigError, DuplicateError, MismatchError, NotFoundError, OutputPathError
from zoo.io.export import write_hf_folder
from zoo.io.ingest import read_checkpoint


def _perturbed(seed: int, base: dict[str, torch.Tensor], scale: float = 0.05) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: v + scale * torch.randn(v.shape, generator=g) for k, v in base.items()}


#: digits-shaped (64 inputs, 10 classes) so merged models can be evaluated
MLP_CFG = {"family": "mlp", "in_features": 64, "hidden": [16], "out_features": 10}


@pytest.fixture
def mlp_zoo(zoo):
    base = mlp_state(0, MLP_CFG)
    ids = [zoo.add(base, arch=MLP_CFG, population="p", name="base", metrics={"val_loss": 0.5},
                   hparams={"dataset": "digits"}).id]  # fmt: skip
    for i in range(3):
        ids.append(zoo.add(_perturbed(i + 1, base), arch=MLP_CFG, population="p", parents=[ids[0]], op="finetune",
                           metrics={"val_loss": 0.4 + 0.1 * i}).id)  # fmt: skip
    return zoo, ids


def test_merge_zoo_models_into_zoo_with_lineage(mlp_zoo):
    z, (b, *ms) = mlp_zoo
    cfg = {"merge_method": "ties", "base_model": f"zoo:{b}",
           "models": [{"model": m, "parameters": {"density": 0.5}} for m in ms], "parameters": {"lambda": 0.8}}  # fmt: skip
    res = merge(cfg, zoo=z, to_zoo=True, population="merged", dataset="digits")
    rec = z.get(res.model_id)
    assert rec.op == "merge.ties" and rec.population == "merged" and rec.arch_config["family"] == "mlp"
    edges = {e.parent: e for e in rec.parents()}
    assert {edges[b].role} == {"base"} and [edges[m].role for m in ms] == ["model_0", "model_1", "model_2"]
    params = edges[b].params
    assert params["config"]["merge_method"] == "ties" and params["resolved"]["density"] == [0.5] * 3
    assert params["resolved"]["lambda"] == 0.8
    # evaluated and stored
    assert {"val_acc", "test_acc", "val_loss", "test_loss"} <= set(res.metrics)
    assert rec.metric("acc", "test") == pytest.approx(res.metrics["test_acc"])
    # same tensors as the in-memory merge
    want = merge_state_dicts("ties", [z.state_dict(m) for m in ms], z.state_dict(b), density=0.5, **{"lambda": 0.8})
    got = z.state_dict(rec.id)
    assert all(torch.allclose(got[k], want[k]) for k in want)


def test_metric_weighted_reads_losses_from_the_zoo(mlp_zoo):
    z, (_, *ms) = mlp_zoo
    res = merge({"merge_method": "metric_weighted", "models": ms, "parameters": {"temperature": 0.1}}, zoo=z, to_zoo=True,
                evaluate=False)  # fmt: skip
    assert res.params["resolved"]["loss"] == pytest.approx([0.4, 0.5, 0.6])
    w = torch.softmax(-torch.tensor([0.4, 0.5, 0.6]) / 0.1, 0)
    sds = [z.state_dict(m) for m in ms]
    got = z.state_dict(res.model_id)
    for k in got:
        assert torch.allclose(got[k], sum(wi * sd[k] for wi, sd in zip(w, sds, strict=True)), atol=1e-6)


def test_merge_files_to_sharded_folder_and_back(tmp_path):
    base = mlp_state(0)
    paths = []
    for i, sd in enumerate([base, _perturbed(1, base), _perturbed(2, base)]):
        p = tmp_path / f"m{i}"
        write_hf_folder(p, sd, config={"model_type": "toy", "i": i}, max_shard_size=300)  # sharded inputs
        paths.append(str(p))
    save_file(_perturbed(3, base), str(tmp_path / "single.safetensors"))
    out = tmp_path / "out"
    cfg = {"merge_method": "task_arithmetic", "base_model": paths[0], "dtype": "bfloat16",
           "models": [{"model": paths[1], "parameters": {"weight": 0.5}}, paths[2], str(tmp_path / "single.safetensors")]}  # fmt: skip
    res = merge(cfg, out_dir=out, max_shard_size=400)
    assert res.out_dir == out
    files = sorted(p.name for p in out.iterdir())
    assert "model.safetensors.index.json" in files and "config.json" in files and "README.md" in files
    assert sum(f.startswith("model-") for f in files) > 1
    conf = json.loads((out / "config.json").read_text())
    assert conf["model_type"] == "toy" and conf["i"] == 0 and conf["weightzoo_merge"]["method"] == "task_arithmetic"
    assert "task_arithmetic" in (out / "README.md").read_text()
    got = read_checkpoint(out / "model.safetensors.index.json")
    inputs = [read_checkpoint(Path(p) / "model.safetensors.index.json") for p in paths[1:]] + [
        load_file(str(tmp_path / "single.safetensors"))]  # fmt: skip
    want = merge_state_dicts("task_arithmetic", inputs, base, weight=[0.5, 1.0, 1.0])
    for k in want:
        assert got[k].dtype == torch.bfloat16
        assert torch.allclose(got[k].float(), want[k], atol=1e-2)


def test_chunked_merge_matches_whole_tensor_merge(monkeypatch, tmp_path):
    """Large tensors are merged in flat chunks; the result is bit-identical to a whole-tensor merge."""
    g = torch.Generator().manual_seed(0)
    base = {"big": torch.randn(37, 101, generator=g), "small": torch.randn(5, generator=g)}
    ms = [_perturbed(i, base) for i in range(3)]
    ms[1]["big"][:3] = base["big"][:3]  # zero deltas: ties at the magnitude threshold
    for i, sd in enumerate([base, *ms]):
        save_file(sd, str(tmp_path / f"m{i}.safetensors"))
    monkeypatch.setattr(engine_mod, "CHUNK", 512)
    for method, params in [("ties", {"density": 0.3}), ("dare_ties", {"density": 0.5}), ("breadcrumbs_ties", {"density": 0.6, "gamma": 0.1}),
                           ("breadcrumbs", {"density": 0.5, "gamma": 0.2}), ("ties", {"density": 0.7, "weight": 0.5}), ("ties", {"density": 1.0}),
                           ("task_arithmetic", {}), ("linear", {})]:  # fmt: skip
        cfg = {"merge_method": method, "base_model": str(tmp_path / "m0.safetensors"),
               "models": [str(tmp_path / f"m{i}.safetensors") for i in (1, 2, 3)], "parameters": params, "seed": 5}  # fmt: skip
        out = tmp_path / f"out_{method}_{len(list(tmp_path.iterdir()))}"
        merge(cfg, out_dir=out)
        got = load_file(str(out / "model.safetensors"))
        m = get_method(method)
        r = m.resolve(3, params)
        from analysis.merging.registry import TensorContext

        want = m([sd["big"] for sd in ms], base["big"], ctx=TensorContext("big", 5), **r)
        assert torch.equal(got["big"], want), method


def test_out_dtype_and_int_tensors(tmp_path):
    sds = [{"w": torch.ones(3) * i, "steps": torch.tensor([4])} for i in range(2)]
    for i, sd in enumerate(sds):
        save_file(sd, str(tmp_path / f"{i}.safetensors"))
    merge({"merge_method": "linear", "models": [str(tmp_path / "0.safetensors"), str(tmp_path / "1.safetensors")],
           "out_dtype": "float16"}, out_dir=tmp_path / "o")  # fmt: skip
    got = load_file(str(tmp_path / "o" / "model.safetensors"))
    assert got["w"].dtype == torch.float16 and torch.allclose(got["w"].float(), torch.full((3,), 0.5))
    assert got["steps"].dtype == torch.int64 and got["steps"].item() == 4


def test_shape_mismatch_and_missing_tensor_refused_before_writing(tmp_path):
    a = {"w": torch.zeros(2, 3), "b": torch.zeros(3)}
    b = {"w": torch.zeros(3, 2), "b": torch.zeros(3)}
    c = {"w": torch.zeros(2, 3)}
    for n, sd in (("a", a), ("b", b), ("c", c)):
        save_file(sd, str(tmp_path / f"{n}.safetensors"))
    with pytest.raises(MismatchError, match="'w'"):
        merge({"merge_method": "linear", "models": [str(tmp_path / "a.safetensors"), str(tmp_path / "b.safetensors")]},
              out_dir=tmp_path / "o1")  # fmt: skip
    with pytest.raises(MismatchError, match="lacks"):
        merge({"merge_method": "linear", "models": [str(tmp_path / "a.safetensors"), str(tmp_path / "c.safetensors")]},
              out_dir=tmp_path / "o2")  # fmt: skip
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folders left


def test_failure_mid_merge_leaves_no_output(tmp_path, monkeypatch):
    """An interrupt after some tensors were written leaves neither OUT_DIR nor a temp folder."""
    from analysis.merging import sources

    save_file({"a": torch.ones(3), "b": torch.ones(3)}, str(tmp_path / "x.safetensors"))
    calls = {"n": 0}
    orig = sources.SafetensorsSource.get

    def flaky(self, name):
        calls["n"] += 1
        if calls["n"] > 2:
            raise KeyboardInterrupt
        return orig(self, name)

    monkeypatch.setattr(sources.SafetensorsSource, "get", flaky)
    with pytest.raises(KeyboardInterrupt):
        merge({"merge_method": "linear", "models": [str(tmp_path / "x.safetensors")] * 2}, out_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_existing_output_refused_unless_overwrite(tmp_path):
    save_file({"w": torch.ones(2)}, str(tmp_path / "x.safetensors"))
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("x")
    cfg = {"merge_method": "linear", "models": [str(tmp_path / "x.safetensors")]}
    with pytest.raises(DuplicateError):
        merge(cfg, out_dir=tmp_path / "out")
    with pytest.raises(OutputPathError):  # --overwrite replaces only a folder weightzoo wrote
        merge(cfg, out_dir=tmp_path / "out", overwrite=True)
    assert (tmp_path / "out" / "keep.txt").exists()
    merge(cfg, out_dir=tmp_path / "ours")
    (tmp_path / "ours" / "keep.txt").write_text("x")
    merge(cfg, out_dir=tmp_path / "ours", overwrite=True)
    assert (tmp_path / "ours" / "model.safetensors").exists() and not (tmp_path / "ours" / "keep.txt").exists()


def test_config_errors(zoo):
    with pytest.raises(ConfigError, match="needs a base"):
        merge({"merge_method": "ties", "models": ["a", "b"]}, out_dir="/nonexistent/x")
    with pytest.raises(ConfigError, match="valid merge methods"):
        merge({"merge_method": "frankenmerge", "models": ["a"]}, out_dir="/nonexistent/x")
    with pytest.raises(ConfigError, match="slices"):
        MergeConfig.from_dict({"merge_method": "linear", "slices": []})
    with pytest.raises(ConfigError, match="gradients"):
        MergeConfig.from_dict({"merge_method": "slerp", "base_model": "a", "models": ["b"], "parameters": {"t": [0, 0.5, 1]}})
    with pytest.raises(ConfigError, match="LoRA"):
        MergeConfig.from_dict({"merge_method": "linear", "models": ["org/model+org/lora"]})
    with pytest.raises(ConfigError, match="open a zoo"):
        open_source("zoo:1")
    with pytest.raises(NotFoundError):
        open_source("zoo:999", zoo=zoo)
    with pytest.raises(NotFoundError, match="not a local path"):
        open_source("./definitely/not/here")


def test_config_notes_and_base_listed_in_models():
    cfg = MergeConfig.from_dict({"merge_method": "ties", "base_model": "b", "tokenizer_source": "union",
                                 "models": [{"model": "b"}, {"model": "m", "parameters": {"density": 0.5}}]})  # fmt: skip
    assert [m.model for m in cfg.models] == ["m"]
    assert any("tokenizer_source" in n for n in cfg.notes)
    again = MergeConfig.from_dict(cfg.to_dict())
    assert again == cfg


def test_hf_repo_id_offline_from_cache_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(NotFoundError, match="not in the local Hugging Face cache"):
        open_source("some-org/some-model", offline=True)


def test_writer_streams_chunks_and_checks_order(tmp_path):
    from analysis.merging.sources import TensorInfo

    plan = {"a": TensorInfo((4,), torch.float32), "b": TensorInfo((2, 2), torch.float32)}
    w = StreamingWriter(tmp_path / "o", plan, max_shard_size=16)
    with pytest.raises(MismatchError, match="expected tensor 'a'"):
        w.write("b", torch.zeros(2, 2))
    w.write_chunk("a", torch.tensor([1.0, 2.0]))
    w.write_chunk("a", torch.tensor([3.0, 4.0]))
    w.write("b", torch.eye(2))
    w.finish(config={"x": 1})
    got = read_checkpoint(tmp_path / "o" / "model.safetensors.index.json")
    assert torch.equal(got["a"], torch.tensor([1.0, 2.0, 3.0, 4.0])) and torch.equal(got["b"], torch.eye(2))
    assert parse_size("2GB") == 2 * 10**9 and parse_size("500MiB") == 500 * 2**20
    with pytest.raises(ConfigError):
        parse_size("lots")


def test_model_stock_and_opcm_stream_from_zoo(mlp_zoo, tmp_path):
    z, (b, *ms) = mlp_zoo
    for method in ("model_stock", "opcm", "slerp"):
        models = ms[:1] if method == "slerp" else ms
        res = merge({"merge_method": method, "base_model": b, "models": models}, zoo=z, out_dir=tmp_path / method)
        got = load_file(str(res.out_dir / "model.safetensors"))
        want = merge_state_dicts(method, [z.state_dict(m) for m in models], z.state_dict(b))
        assert all(torch.allclose(got[k], want[k]) for k in want)


def test_chunked_slerp_two_passes_match_whole_tensor(monkeypatch, tmp_path):
    """SLERP of a large tensor: one pass for the dot product and norms, one for the output."""
    g = torch.Generator().manual_seed(1)
    base = {"big": torch.randn(40, 100, generator=g), "small": torch.randn(5, generator=g)}
    other = {k: v + 0.3 * torch.randn(v.shape, generator=g) for k, v in base.items()}
    save_file(base, str(tmp_path / "a.safetensors"))
    save_file(other, str(tmp_path / "b.safetensors"))
    monkeypatch.setattr(engine_mod, "CHUNK", 512)
    calls = []
    orig = engine_mod.SlerpStats.add
    monkeypatch.setattr(engine_mod.SlerpStats, "add", lambda self, a, b: calls.append(a.numel()) or orig(self, a, b))
    merge({"merge_method": "slerp", "base_model": str(tmp_path / "a.safetensors"), "models": [str(tmp_path / "b.safetensors")],
           "parameters": {"t": 0.3}}, out_dir=tmp_path / "o")  # fmt: skip
    assert max(calls) <= 512  # the angle came from chunks, never the whole tensor
    got = load_file(str(tmp_path / "o" / "model.safetensors"))
    want = merge_state_dicts("slerp", [other], base, t=0.3)
    for k in want:
        assert torch.allclose(got[k], want[k], rtol=0, atol=1e-6), k


def test_get_flat_reads_into_a_reused_buffer(tmp_path):
    t = torch.arange(10, dtype=torch.float32)
    save_file({"t": t, "h": torch.ones(3, dtype=torch.float16)}, str(tmp_path / "m.safetensors"))
    src = open_source(str(tmp_path / "m.safetensors"))
    buf = torch.empty(4)
    got = src.get_flat("t", 3, 7, out=buf)
    assert torch.equal(got, t[3:7]) and got.data_ptr() == buf.data_ptr()
    assert torch.equal(src.get_flat("t", 8, 10, out=buf), t[8:10])
    assert torch.equal(src.get_flat("h", 0, 3, out=buf), torch.ones(3, dtype=torch.float16))  # wrong dtype: a fresh tensor
    assert torch.equal(src.get("t"), t)
    src.close()


def test_merge_threads_are_restored(tmp_path):
    save_file({"w": torch.ones(3)}, str(tmp_path / "x.safetensors"))
    before = torch.get_num_threads()
    merge({"merge_method": "linear", "models": [str(tmp_path / "x.safetensors")]}, out_dir=tmp_path / "o",
          threads=1 if before != 1 else 2)  # fmt: skip
    assert torch.get_num_threads() == before
    with pytest.raises(ConfigError, match="threads"):
        merge({"merge_method": "linear", "models": [str(tmp_path / "x.safetensors")]}, out_dir=tmp_path / "o2", threads=0)
