"""Exporting Hugging Face-style folders and model cards; push_to_hub offline refusal."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from zoo.errors import ConfigError, DuplicateError, NotFoundError, OutputPathError, ZooError
from zoo.io.export import model_card, push_to_hub, write_hf_folder
from zoo.io.ingest import discover, read_checkpoint, read_checkpoint_with_meta, read_sharded


def _sd() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "fc1.weight": torch.randn(32, 16, generator=g),
        "fc1.bias": torch.randn(32, generator=g),
        "fc2.weight": torch.randn(10, 32, generator=g),
        "fc2.bias": torch.randn(10, generator=g).to(torch.float16),
    }


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert set(a) == set(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k


def test_round_trip_single_file(tmp_path: Path) -> None:
    sd = _sd()
    out = write_hf_folder(tmp_path / "m", sd, config={"arch": "mlp"}, metadata={"zoo_id": "abc"})
    assert sorted(p.name for p in out.iterdir()) == [".weightzoo-output", "README.md", "config.json", "model.safetensors"]
    state, meta = read_checkpoint_with_meta(out / "model.safetensors")
    _assert_same(state, sd)
    assert meta == {"format": "pt", "zoo_id": "abc"}
    assert json.loads((out / "config.json").read_text()) == {"arch": "mlp"}
    (src,) = discover(out)
    assert src.kind == "hf_folder" and src.config == {"arch": "mlp"}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folder left


def test_sharded_round_trip(tmp_path: Path) -> None:
    sd = _sd()
    out = write_hf_folder(tmp_path / "s", sd, max_shard_size=1500)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) >= 2 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    assert not (out / "model.safetensors").exists()
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in sd.values())
    _assert_same(read_sharded(out / "model.safetensors.index.json"), sd)
    _assert_same(read_checkpoint(out), sd)


def test_shared_and_non_contiguous_tensors(tmp_path: Path) -> None:
    base = torch.randn(6, 4)
    sd = {"a": base, "tied": base, "view": base[:2], "t": base.t()}
    out = write_hf_folder(tmp_path / "x", sd)
    back = read_checkpoint(out / "model.safetensors")
    for k, v in sd.items():
        assert torch.equal(back[k], v)


def test_refuses_non_empty_out_dir(tmp_path: Path) -> None:
    out = tmp_path / "m"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(DuplicateError, match="overwrite=True"):
        write_hf_folder(out, _sd())
    assert (out / "keep.txt").exists()
    with pytest.raises(OutputPathError, match="weightzoo did not write it"):  # not ours: never replaced
        write_hf_folder(out, _sd(), overwrite=True)
    assert (out / "keep.txt").exists()
    ours = write_hf_folder(tmp_path / "ours", _sd())
    (ours / "keep.txt").write_text("x")
    write_hf_folder(ours, _sd(), overwrite=True)  # a folder weightzoo wrote is replaced
    assert not (ours / "keep.txt").exists() and (ours / "model.safetensors").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    write_hf_folder(empty, _sd())  # an empty folder is fine


def test_failed_write_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        write_hf_folder(tmp_path / "bad", {"w": torch.zeros(2)}, metadata={"n": 3})  # type: ignore[dict-item]
    with pytest.raises(ConfigError):
        write_hf_folder(tmp_path / "bad", {})
    assert list(tmp_path.iterdir()) == []


def test_model_card_contents(tmp_path: Path) -> None:
    card = model_card(
        title="mlp-digits-7",
        description="A small MLP.",
        metrics={"test": {"accuracy": 0.95}, "loss": 0.2},
        hyperparameters={"lr": 0.01, "width": 64},
        lineage=[
            {"parent": "mlp-a", "child": "mlp-digits-7", "op": "merge.ties", "params": {"density": 0.5}},
            {"parent": "mlp-b", "child": "mlp-digits-7", "op": "merge.ties", "params": {"density": 0.5}},
        ],
        tags=["digits", "mlp"],
    )
    front = yaml.safe_load(card.split("---")[1])
    assert front["library_name"] == "weightzoo" and {"digits", "mlp"} <= set(front["tags"])
    assert "# mlp-digits-7" in card and "| test/accuracy | 0.95 |" in card and "| width | 64 |" in card
    assert "## Lineage" in card
    assert '`mlp-a` -> `mlp-digits-7`: `merge.ties` `{"density": 0.5}`' in card
    out = write_hf_folder(tmp_path / "m", _sd(), card=card)
    assert (out / "README.md").read_text() == card


def test_push_to_hub_refuses_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = write_hf_folder(tmp_path / "m", _sd())
    with pytest.raises(ZooError, match="offline"):
        push_to_hub(out, "org/name", offline=True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ZooError, match="offline"):
        push_to_hub(out, "org/name")
    with pytest.raises(NotFoundError):
        push_to_hub(tmp_path / "missing", "org/name", offline=True)
