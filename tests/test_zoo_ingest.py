"""Zoo.ingest end to end: files, folders, sharded checkpoints, HF folders and an offline HF cache,
refusal of unsafe/corrupt input (store unchanged), and export -> ingest round trips.

No network: the HF cache is a folder built by hand in huggingface_hub's layout.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from sqlalchemy import func, select

from zoo import Zoo
from zoo.errors import CorruptFileError, MismatchError, NotFoundError, UnsafeFileError, ZooError
from zoo.models.architectures import init_state
from zoo.store import schema as S

CFG = {"family": "mlp", "in_features": 8, "hidden": [16], "out_features": 4}
HF_CONFIG = {"model_type": "tiny-llm", "hidden_size": 16, "architectures": ["TinyForCausalLM"]}
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def state(seed: int, cfg: dict | None = None) -> dict[str, torch.Tensor]:
    return {k: v.contiguous() for k, v in init_state(cfg or CFG, seed).items()}


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert list(a) == list(b) or set(a) == set(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        assert torch.equal(a[k], b[k]), k


@pytest.fixture
def z(tmp_path: Path) -> Iterator[Zoo]:
    zz = Zoo.open(tmp_path / "zoo")
    try:
        yield zz
    finally:
        zz.close()


def snapshot(z: Zoo) -> tuple[dict[str, int], set[str]]:
    """Row counts of the catalog tables and the files under packs/: a refused write changes neither."""
    counts = {}
    with z.engine.connect() as c:
        for t in (S.Model, S.Blob, S.Pack, S.TensorEntry, S.LineageEdge, S.Tag, S.Population, S.Architecture):
            counts[t.__tablename__] = int(c.execute(select(func.count()).select_from(t)).scalar_one())
    files = {str(p.relative_to(z.root)) for p in (z.root / "packs").rglob("*") if p.is_file()}
    return counts, files


# ------------------------------------------------------------------------------ files and folders
def test_ingest_single_safetensors(z: Zoo, tmp_path: Path):
    sd = state(0)
    f = tmp_path / "m.safetensors"
    save_file(sd, str(f))
    (rec,) = z.ingest(f, population="single", tags=["imported"])
    assert rec.op == "ingest" and rec.population == "single" and rec.n_params == 212
    assert rec.source == str(f.resolve())
    assert rec.tags() == ["imported"]
    assert rec.arch_config["family"] == "raw"  # no config: a raw signature of names/shapes
    assert rec.arch_config["tensors"]["layers.0.weight"] == ["F32", [16, 8]]
    assert_same(rec.state_dict(), sd)
    assert rec.parents() == []
    assert z.verify().ok


def test_ingest_pt_state_dict_and_wrapped_checkpoint(z: Zoo, tmp_path: Path):
    sd = state(1)
    torch.save(sd, tmp_path / "plain.pt")
    torch.save({"state_dict": sd, "epoch": 7, "optimizer": {"lr": 0.1}}, tmp_path / "wrapped.pth")
    (a,) = z.ingest(tmp_path / "plain.pt")
    (b,) = z.ingest(tmp_path / "wrapped.pth")
    assert_same(a.state_dict(), sd)
    assert_same(b.state_dict(), sd)
    # identical tensors are stored once: the second ingest wrote no new blobs
    assert z.summary()["blobs"] == 4
    assert a.architecture == b.architecture


def test_ingest_folder_of_checkpoints_one_model_each(z: Zoo, tmp_path: Path):
    folder = tmp_path / "runs"
    (folder / "sub").mkdir(parents=True)
    sds = {"a": state(0), "b": state(1), "sub/c": state(2)}
    save_file(sds["a"], str(folder / "a.safetensors"))
    torch.save(sds["b"], folder / "b.pt")
    save_file(sds["sub/c"], str(folder / "sub" / "c.safetensors"))
    torch.save({"step": 3}, folder / "optimizer.pt")  # training state, not a model: skipped
    (folder / "notes.txt").write_text("not a checkpoint")
    recs = z.ingest(folder, population="folder")
    assert len(recs) == 3
    origin = str(folder.resolve())
    by_source = {r.source: r for r in recs}
    assert set(by_source) == {f"{origin}::a", f"{origin}::b", f"{origin}::sub/c"}
    for name, sd in sds.items():
        assert_same(by_source[f"{origin}::{name}"].state_dict(), sd)
    assert z.population("folder").count() == 3
    assert z.population("folder").stack()["layers.0.weight"].shape == (3, 16, 8)
    assert z.verify().ok


def test_ingest_sharded_checkpoint_is_one_model(z: Zoo, tmp_path: Path):
    sd = state(3)
    folder = tmp_path / "sharded"
    folder.mkdir()
    keys = list(sd)
    shard1, shard2 = "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"
    save_file({k: sd[k] for k in keys[:2]}, str(folder / shard1))
    save_file({k: sd[k] for k in keys[2:]}, str(folder / shard2))
    index = {
        "metadata": {"total_size": 848},
        "weight_map": {k: (shard1 if i < 2 else shard2) for i, k in enumerate(keys)},
    }
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    recs = z.ingest(folder)
    assert len(recs) == 1
    assert_same(recs[0].state_dict(), sd)
    # the index file itself is also accepted
    recs2 = z.ingest(folder / "model.safetensors.index.json")
    assert len(recs2) == 1 and recs2[0].n_params == 212


def test_sharded_checkpoint_with_a_missing_shard_is_refused(z: Zoo, tmp_path: Path):
    sd = state(3)
    folder = tmp_path / "sharded"
    folder.mkdir()
    save_file({k: sd[k] for k in list(sd)[:2]}, str(folder / "a.safetensors"))
    wm = {k: ("a.safetensors" if i < 2 else "b.safetensors") for i, k in enumerate(sd)}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": wm}))
    before = snapshot(z)
    with pytest.raises(NotFoundError, match=r"b\.safetensors"):
        z.ingest(folder)
    assert snapshot(z) == before


def test_ingest_hf_folder_keeps_its_config_and_export_gives_it_back(z: Zoo, tmp_path: Path):
    sd = state(4)
    folder = tmp_path / "hf-model"
    folder.mkdir()
    save_file(sd, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(HF_CONFIG))
    (folder / "README.md").write_text("# tiny")
    (rec,) = z.ingest(folder, population="hf")
    assert rec.arch_config["family"] == "raw"
    assert rec.arch_config["hf_config"] == HF_CONFIG
    out = z.export(rec.id, tmp_path / "out")
    cfg = json.loads((out / "config.json").read_text())
    assert {k: v for k, v in cfg.items() if k != "weightzoo"} == HF_CONFIG
    assert cfg["weightzoo"]["model_id"] == rec.id
    from zoo.io.ingest import read_checkpoint

    assert_same(read_checkpoint(out / "model.safetensors"), sd)
    assert "library_name: weightzoo" in (out / "README.md").read_text()
    # re-ingesting the export keeps the original HF config (not our provenance key)
    (back,) = z.ingest(out)
    assert back.arch_config["hf_config"] == HF_CONFIG
    assert back.architecture == rec.architecture


def test_ingest_hf_folder_with_a_buildable_config_is_instantiable(z: Zoo, tmp_path: Path):
    sd = state(5)
    folder = tmp_path / "wz"
    folder.mkdir()
    save_file(sd, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(CFG))
    (rec,) = z.ingest(folder)
    assert rec.arch_config["family"] == "mlp" and rec.arch_config["hidden"] == [16]
    m = rec.module()
    assert m(torch.zeros(2, 8)).shape == (2, 4)


# ------------------------------------------------------------------------------ Hugging Face cache
def make_hf_cache(root: Path, repo: str, files: dict[str, bytes]) -> Path:
    """A huggingface_hub cache: models--org--name/{blobs/<hash>, refs/main, snapshots/<commit>/<file> -> blob}."""
    base = root / ("models--" + repo.replace("/", "--"))
    (base / "blobs").mkdir(parents=True)
    (base / "refs").mkdir()
    (base / "refs" / "main").write_text(COMMIT)
    snap = base / "snapshots" / COMMIT
    snap.mkdir(parents=True)
    for i, (name, data) in enumerate(files.items()):
        blob = base / "blobs" / f"{i:040x}"
        blob.write_bytes(data)
        os.symlink(os.path.relpath(blob, snap), snap / name)
    return root


def test_ingest_hf_repo_id_from_the_offline_cache(z: Zoo, tmp_path: Path):
    sd = state(6)
    save_file(sd, str(tmp_path / "w.safetensors"))
    cache = make_hf_cache(tmp_path / "hf", "acme/tiny", {
        "model.safetensors": (tmp_path / "w.safetensors").read_bytes(),
        "config.json": json.dumps(HF_CONFIG).encode(),
    })  # fmt: skip
    (rec,) = z.ingest("acme/tiny", cache_dir=cache, offline=True, population="hub")
    assert rec.source == "hf://acme/tiny"
    assert rec.op == "ingest" and rec.population == "hub"
    assert rec.arch_config["hf_config"] == HF_CONFIG
    assert_same(rec.state_dict(), sd)
    (again,) = z.ingest("acme/tiny", cache_dir=cache, offline=True, revision=COMMIT)
    assert again.source == f"hf://acme/tiny@{COMMIT}"
    assert_same(again.state_dict(), sd)


def test_unknown_repo_offline_is_not_found_and_changes_nothing(z: Zoo, tmp_path: Path):
    cache = make_hf_cache(tmp_path / "hf", "acme/tiny", {"config.json": b"{}"})
    before = snapshot(z)
    with pytest.raises(NotFoundError) as ei:
        z.ingest("acme/missing", cache_dir=cache, offline=True)
    msg = str(ei.value)
    assert "acme/missing" in msg and "offline" in msg
    assert snapshot(z) == before


def test_missing_local_path_is_not_found(z: Zoo, tmp_path: Path):
    with pytest.raises(NotFoundError, match="no file or folder"):
        z.ingest(tmp_path / "nope.safetensors")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(NotFoundError):
        z.ingest(empty)
    assert z.models().count() == 0


# ------------------------------------------------------------------------------ refused input
class Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_without_running_it(z: Zoo, tmp_path: Path):
    good = tmp_path / "good.safetensors"
    save_file(state(0), str(good))
    z.ingest(good)
    marker = tmp_path / "PWNED"
    torch.save({"weight": torch.zeros(3), "payload": Evil(marker)}, tmp_path / "evil.pt")
    before = snapshot(z)
    with pytest.raises(UnsafeFileError) as ei:
        z.ingest(tmp_path / "evil.pt")
    assert "evil.pt" in str(ei.value) and "safetensors" in str(ei.value)
    assert not marker.exists()
    assert snapshot(z) == before  # same model count, no new pack files
    assert z.verify().ok
    assert z.models().count() == 1


def test_malicious_pickle_in_a_folder_refuses_the_batch(z: Zoo, tmp_path: Path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    save_file(state(0), str(folder / "a.safetensors"))
    marker = tmp_path / "PWNED"
    torch.save({"weight": torch.zeros(3), "payload": Evil(marker)}, folder / "b.pt")
    before = snapshot(z)
    with pytest.raises(UnsafeFileError):
        z.ingest(folder)
    assert not marker.exists()
    assert snapshot(z) == before


def test_truncated_safetensors_in_a_folder_writes_none_of_the_batch(z: Zoo, tmp_path: Path):
    folder = tmp_path / "batch"
    folder.mkdir()
    for i in range(4):
        save_file(state(i), str(folder / f"m{i}.safetensors"))
    data = (folder / "m2.safetensors").read_bytes()
    (folder / "m2.safetensors").write_bytes(data[: len(data) - 100])
    before = snapshot(z)
    with pytest.raises(CorruptFileError) as ei:
        z.ingest(folder)
    assert "m2.safetensors" in str(ei.value) and "truncated" in str(ei.value)
    assert snapshot(z) == before
    assert z.verify().ok


def test_truncated_pt_is_corrupt_not_unsafe(z: Zoo, tmp_path: Path):
    torch.save(state(0), tmp_path / "m.pt")
    data = (tmp_path / "m.pt").read_bytes()
    (tmp_path / "bad.pt").write_bytes(data[: len(data) // 2])
    before = snapshot(z)
    with pytest.raises(CorruptFileError):
        z.ingest(tmp_path / "bad.pt")
    assert snapshot(z) == before


def test_ingest_with_arch_checks_shapes(z: Zoo, tmp_path: Path):
    f = tmp_path / "m.safetensors"
    save_file(state(0), str(f))
    before = snapshot(z)
    with pytest.raises(MismatchError) as ei:
        z.ingest(f, arch=dict(CFG, hidden=[32]))
    assert "layers.0.weight" in str(ei.value) and "(32, 8)" in str(ei.value)
    assert snapshot(z) == before
    (rec,) = z.ingest(f, arch=CFG, population="typed")
    assert rec.arch_config["family"] == "mlp"
    assert z.population("typed").config["hidden"] == [16]
    # a registered architecture name works too
    (rec2,) = z.ingest(f, arch=rec.architecture)
    assert rec2.architecture == rec.architecture
    # and a population of one architecture refuses a checkpoint of another
    g = tmp_path / "wide.safetensors"
    save_file(state(0, dict(CFG, hidden=[32])), str(g))
    before = snapshot(z)
    with pytest.raises(MismatchError, match="wrong shapes"):
        z.ingest(g, population="typed")
    assert snapshot(z) == before


def test_invalid_arch_config_is_refused(z: Zoo, tmp_path: Path):
    f = tmp_path / "m.safetensors"
    save_file(state(0), str(f))
    with pytest.raises(ZooError):
        z.ingest(f, arch={"family": "mlp", "in_features": 8, "hiddden": [16], "out_features": 4})
    with pytest.raises(NotFoundError):
        z.ingest(f, arch="no-such-architecture")
    assert z.models().count() == 0


# ------------------------------------------------------------------------------ round trips
def test_export_ingest_round_trip_is_bit_exact(z: Zoo, tmp_path: Path):
    sd = state(7)
    sd["extra.half"] = torch.arange(6, dtype=torch.float16).reshape(2, 3)
    sd["extra.long"] = torch.tensor([1, 2, 3], dtype=torch.int64)
    src = z.add(sd, population="p", metrics={"test_acc": 0.5}, hparams={"lr": 0.01})
    out = z.export(src.id, tmp_path / "exp")
    assert sorted(os.listdir(out)) == [".weightzoo-output", "README.md", "config.json", "model.safetensors"]
    (back,) = z.ingest(out)
    assert_same(back.state_dict(), sd)
    # dedup: the round trip stored no new tensors
    assert z.summary()["blobs"] == 6
    # sharded export comes back as one model too
    out2 = z.export(src.id, tmp_path / "exp2", max_shard_size=300)
    assert (out2 / "model.safetensors.index.json").is_file()
    (back2,) = z.ingest(out2)
    assert_same(back2.state_dict(), sd)


def test_exported_buildable_config_has_a_family(z: Zoo, tmp_path: Path):
    rec = z.add(state(8), arch=CFG)
    out = z.export(rec.id, tmp_path / "exp")
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["family"] == "mlp" and cfg["hidden"] == [16]


def test_export_ingest_round_trip_keeps_the_buildable_architecture(z: Zoo, tmp_path: Path):
    rec = z.add(state(8), arch=CFG, population="mlps")
    out = z.export(rec.id, tmp_path / "exp")
    (back,) = z.ingest(out)
    assert back.arch_config == rec.arch_config
    assert back.architecture == rec.architecture
    assert isinstance(back.module(), torch.nn.Module)


def test_reingest_is_deduplicated(z: Zoo, tmp_path: Path):
    f = tmp_path / "m.safetensors"
    save_file(state(9), str(f))
    z.ingest(f)
    packs = snapshot(z)[1]
    (again,) = z.ingest(f)
    assert snapshot(z)[1] == packs  # no new pack: every tensor was already stored
    assert z.models().count() == 2 and z.summary()["dedup_ratio"] == pytest.approx(2.0)
    assert again.op == "ingest"
