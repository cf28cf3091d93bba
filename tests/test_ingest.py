"""Reading checkpoints: formats, wrappers, shards, discovery, bad files, the HF cache (no network)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from zoo.errors import CorruptFileError, NotFoundError, UnsafeFileError
from zoo.io.ingest import (
    CheckpointSource,
    discover,
    iter_sharded,
    load_source,
    looks_like_hf_repo_id,
    read_checkpoint,
    read_checkpoint_with_meta,
    read_sharded,
    resolve_hf,
)


def _sd(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "0.weight": torch.randn(16, 8, generator=g),
        "0.bias": torch.randn(16, generator=g),
        "2.weight": torch.randn(4, 16, generator=g),
        "2.bias": torch.randn(4, generator=g),
    }


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert set(a) == set(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k


def _write_sharded(folder: Path, sd: dict[str, torch.Tensor]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    keys = list(sd)
    shards = {"model-00001-of-00002.safetensors": keys[:2], "model-00002-of-00002.safetensors": keys[2:]}
    weight_map = {}
    for shard, names in shards.items():
        save_file({k: sd[k] for k in names}, str(folder / shard))
        weight_map.update(dict.fromkeys(names, shard))
    index = folder / "model.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return index


# ------------------------------------------------------------------------------------ formats


def test_safetensors_and_torch_round_trip(tmp_path: Path) -> None:
    sd = _sd()
    save_file(sd, str(tmp_path / "a.safetensors"), metadata={"epoch": "3"})
    torch.save(sd, tmp_path / "b.pt")
    torch.save(sd, tmp_path / "legacy.pth", _use_new_zipfile_serialization=False)
    _assert_same(read_checkpoint(tmp_path / "a.safetensors"), sd)
    _assert_same(read_checkpoint(tmp_path / "b.pt"), sd)
    _assert_same(read_checkpoint(str(tmp_path / "legacy.pth")), sd)
    assert read_checkpoint_with_meta(tmp_path / "a.safetensors")[1] == {"epoch": "3"}


@pytest.mark.parametrize("key", ["state_dict", "model", "model_state_dict"])
def test_wrappers_unwrapped_and_meta_kept(tmp_path: Path, key: str) -> None:
    sd = _sd()
    optimizer = {"state": {0: {"exp_avg": torch.zeros(3)}}, "param_groups": [{"lr": 0.1}]}
    torch.save({key: sd, "epoch": 7, "name": "run-1", "optimizer": optimizer}, tmp_path / "c.ckpt")
    state, meta = read_checkpoint_with_meta(tmp_path / "c.ckpt")
    _assert_same(state, sd)
    assert meta["epoch"] == 7 and meta["name"] == "run-1"
    assert not any(isinstance(v, torch.Tensor) for v in meta.values())


def test_nested_dicts_flattened_and_non_tensors_dropped(tmp_path: Path) -> None:
    nested = {"encoder": {"layer": {"weight": torch.ones(2, 2)}}, "head.bias": torch.zeros(2), "steps": 5}
    torch.save(nested, tmp_path / "n.bin")
    state, meta = read_checkpoint_with_meta(tmp_path / "n.bin")
    assert set(state) == {"encoder.layer.weight", "head.bias"}
    assert meta == {"steps": 5}


# ---------------------------------------------------------------------------------- bad files


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match="does not exist"):
        read_checkpoint(tmp_path / "nope.safetensors")


def test_truncated_safetensors(tmp_path: Path) -> None:
    path = tmp_path / "t.safetensors"
    save_file(_sd(), str(path))
    path.write_bytes(path.read_bytes()[:-50])
    with pytest.raises(CorruptFileError, match="t.safetensors"):
        read_checkpoint(path)


@pytest.mark.parametrize("zipped", [True, False])
@pytest.mark.parametrize("fraction", [0.02, 0.3, 0.5, 0.9])
def test_truncated_torch(tmp_path: Path, zipped: bool, fraction: float) -> None:
    path = tmp_path / "t.pt"
    torch.save(_sd(), path, _use_new_zipfile_serialization=zipped)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(CorruptFileError, match="t.pt"):
        read_checkpoint(path)


def test_garbage_file(tmp_path: Path) -> None:
    path = tmp_path / "g.pth"
    path.write_bytes(b"not a checkpoint at all" * 10)
    with pytest.raises(CorruptFileError):
        read_checkpoint(path)


class _Evil:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("zipped", [True, False])
def test_malicious_pickle_refused_without_running(tmp_path: Path, zipped: bool) -> None:
    marker = tmp_path / "PWNED"
    path = tmp_path / "evil.pt"
    torch.save(
        {"w": torch.zeros(2), "payload": _Evil(str(marker))}, path, _use_new_zipfile_serialization=zipped
    )
    with pytest.raises(UnsafeFileError, match="arbitrary Python objects"):
        read_checkpoint(path)
    assert not marker.exists()


# ----------------------------------------------------------------------------------- sharded


def test_sharded_read_and_iterate(tmp_path: Path) -> None:
    sd = _sd()
    index = _write_sharded(tmp_path / "big", sd)
    _assert_same(read_sharded(index), sd)
    _assert_same(dict(iter_sharded(index)), sd)
    _assert_same(read_checkpoint(index), sd)
    _assert_same(read_checkpoint(tmp_path / "big"), sd)  # a folder holding one model


def test_sharded_missing_shard(tmp_path: Path) -> None:
    index = _write_sharded(tmp_path, _sd())
    (tmp_path / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(NotFoundError, match="model-00002-of-00002"):
        read_sharded(index)
    with pytest.raises(NotFoundError):
        iter_sharded(index)  # checked before the first tensor


def test_sharded_missing_key(tmp_path: Path) -> None:
    index = _write_sharded(tmp_path, _sd())
    data = json.loads(index.read_text())
    data["weight_map"]["extra.weight"] = "model-00001-of-00002.safetensors"
    index.write_text(json.dumps(data))
    with pytest.raises(CorruptFileError, match="extra.weight"):
        read_sharded(index)


def test_sharded_path_traversal_refused(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    index = tmp_path / "m" / "model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": {"w": "../outside.safetensors"}}))
    save_file({"w": torch.zeros(1)}, str(tmp_path / "outside.safetensors"))
    with pytest.raises(UnsafeFileError):
        read_sharded(index)


# ---------------------------------------------------------------------------------- discover


def test_discover_folder_tree(tmp_path: Path) -> None:
    save_file(_sd(0), str(tmp_path / "run a.safetensors"))
    (tmp_path / "sub").mkdir()
    torch.save(_sd(1), tmp_path / "sub" / "model.pt")
    torch.save({"lr": 0.1}, tmp_path / "sub" / "optimizer.pt")  # training state: skipped
    _write_sharded(tmp_path / "sharded", _sd(2))
    hf = tmp_path / "hf"
    hf.mkdir()
    save_file(_sd(3), str(hf / "model.safetensors"))
    (hf / "config.json").write_text(json.dumps({"arch": "mlp"}))
    (tmp_path / "notes.txt").write_text("ignore me")

    sources = discover(tmp_path)
    assert [(s.name, s.kind) for s in sources] == [
        ("hf", "hf_folder"),
        ("run_a", "safetensors"),
        ("sharded", "sharded"),
        ("sub/model", "torch"),
    ]
    assert sources[0].config == {"arch": "mlp"}
    for seed, src in zip([3, 0, 2, 1], sources, strict=True):
        _assert_same(load_source(src), _sd(seed))


def test_discover_single_file_and_empty(tmp_path: Path) -> None:
    save_file(_sd(), str(tmp_path / "one.safetensors"))
    assert discover(tmp_path / "one.safetensors") == [
        CheckpointSource("one", tmp_path / "one.safetensors", "safetensors", None)
    ]
    (tmp_path / "empty").mkdir()
    with pytest.raises(NotFoundError, match="no checkpoint"):
        discover(tmp_path / "empty")


# ---------------------------------------------------------------------------------- HF resolve


def _fake_hf_cache(cache: Path, repo_id: str, files: dict[str, bytes]) -> Path:
    """Lay files out as huggingface_hub does: blobs by hash, snapshot symlinks, refs/main."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    commit = hashlib.sha1(repo_id.encode()).hexdigest()
    snapshot = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True)
    (repo / "refs").mkdir()
    snapshot.mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    for name, data in files.items():
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        os.symlink(os.path.relpath(blob, snapshot), snapshot / name)
    return snapshot


def test_resolve_hf_from_local_cache_offline(tmp_path: Path) -> None:
    sd = _sd()
    weights = tmp_path / "w.safetensors"
    save_file(sd, str(weights))
    cache = tmp_path / "hub"
    snapshot = _fake_hf_cache(
        cache, "org/tiny", {"model.safetensors": weights.read_bytes(), "config.json": b'{"hidden": 16}'}
    )
    folder = resolve_hf("org/tiny", cache_dir=cache, offline=True)
    assert folder.resolve() == snapshot.resolve()
    (src,) = discover(folder)
    assert src.kind == "hf_folder" and src.config == {"hidden": 16}
    _assert_same(load_source(src), sd)


def test_resolve_hf_not_cached_offline(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match="not in the local Hugging Face cache"):
        resolve_hf("org/absent", cache_dir=tmp_path, offline=True)


def test_resolve_hf_offline_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WEIGHTZOO_OFFLINE", "1")
    with pytest.raises(NotFoundError, match="offline"):
        resolve_hf("org/absent", cache_dir=tmp_path)


def test_resolve_hf_local_folder(tmp_path: Path) -> None:
    assert resolve_hf(str(tmp_path), offline=True) == tmp_path
    with pytest.raises(NotFoundError):
        resolve_hf(str(tmp_path / "not" / "here"), offline=True)


def test_looks_like_hf_repo_id(tmp_path: Path) -> None:
    assert looks_like_hf_repo_id("org/name")
    assert looks_like_hf_repo_id("my-org/model.v2_small")
    assert not looks_like_hf_repo_id("name")
    assert not looks_like_hf_repo_id("a/b/c")
    assert not looks_like_hf_repo_id("../x")
    assert not looks_like_hf_repo_id(str(tmp_path))
