"""Symbolic links during ingest (issue 16, items 3 and 4).

* A real Hugging Face cache (``models--org--name/{blobs/<sha>, refs/main, snapshots/<commit>/x ->
  ../../blobs/<sha>}``, checked against huggingface_hub's own ``scan_cache_dir`` and
  ``try_to_load_from_cache``) ingests, sharded checkpoints included, by snapshot path and by repo id
  offline; a link leading out of ``models--org--name/`` is refused.
* Folder ingest: directory links are skipped with a warning (never followed, so ``loop -> .`` cannot
  repeat the tree); file links leaving the folder are refused unless ``follow_symlinks=True`` /
  ``--follow-symlinks``; links inside the folder are fine.

Every refusal leaves the store as it was: same catalog rows, same pack files, ``verify`` clean.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from tests.conftest import catalog_counts, pack_files
from zoo import Zoo
from zoo.cli import main
from zoo.errors import UnsafeFileError
from zoo.io.ingest import SymlinkWarning, discover, read_sharded
from zoo.models.architectures import init_state

CFG = {"family": "mlp", "in_features": 8, "hidden": [16], "out_features": 4}
HF_CONFIG = {"model_type": "tiny-llm", "hidden_size": 16, "architectures": ["TinyForCausalLM"]}
COMMIT = "a1b2c3d4e5f60718293a4b5c6d7e8f9012345678"
REPO = "acme/sharded-tiny"


# ------------------------------------------------------------------------------------ helpers
def state(seed: int) -> dict[str, torch.Tensor]:
    return {k: v.contiguous() for k, v in init_state(CFG, seed).items()}


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert set(a) == set(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k


def st_bytes(tmp: Path, sd: dict[str, torch.Tensor]) -> bytes:
    save_file(sd, str(tmp))
    data = tmp.read_bytes()
    tmp.unlink()
    return data


def sharded_files(tmp: Path, sd: dict[str, torch.Tensor]) -> dict[str, bytes]:
    """``model.safetensors.index.json`` + two shards + ``config.json``, as transformers saves them."""
    names = sorted(sd)
    half = len(names) // 2
    shards = {
        "model-00001-of-00002.safetensors": names[:half],
        "model-00002-of-00002.safetensors": names[half:],
    }
    files: dict[str, bytes] = {}
    weight_map = {}
    for shard, keys in shards.items():
        files[shard] = st_bytes(tmp / shard, {k: sd[k] for k in keys})
        weight_map.update(dict.fromkeys(keys, shard))
    total = sum(t.numel() * t.element_size() for t in sd.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    files["model.safetensors.index.json"] = json.dumps(index, indent=2).encode()
    files["config.json"] = json.dumps(HF_CONFIG).encode()
    return files


def blob_name(name: str, data: bytes) -> str:
    """The blob's name as huggingface_hub stores it: sha256 for LFS files, the git blob sha1 otherwise."""
    if name.endswith((".safetensors", ".bin")):
        return hashlib.sha256(data).hexdigest()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def make_hf_cache(cache: Path, repo_id: str, files: dict[str, bytes], commit: str = COMMIT) -> Path:
    """Lay ``files`` out exactly as huggingface_hub does; returns the snapshot folder.

    ``<cache>/models--org--name/blobs/<sha>``, ``refs/main`` holding the commit hash, and
    ``snapshots/<commit>/<file>`` as a *relative* symlink ``../../blobs/<sha>``.
    """
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(commit)  # no trailing newline, as huggingface_hub writes it
    snap = repo / "snapshots" / commit
    for name, data in files.items():
        blob = repo / "blobs" / blob_name(name, data)
        blob.write_bytes(data)
        link = snap / name
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.relpath(blob, link.parent), link)
    return snap


def catalog_state(z: Zoo) -> tuple[dict[str, int], set[str]]:
    """Every catalog table's row count and the pack files: a refused ingest changes neither."""
    return catalog_counts(z), pack_files(z.root)


def assert_refused_cleanly(z: Zoo, before: tuple) -> None:
    assert catalog_state(z) == before
    assert z.verify().ok


@pytest.fixture
def z(zoo: Zoo) -> Zoo:
    return zoo  # conftest's fresh zoo


@pytest.fixture
def sd() -> dict[str, torch.Tensor]:
    return state(7)


@pytest.fixture
def hf_cache(tmp_path: Path, sd: dict[str, torch.Tensor]) -> Path:
    """A hub cache folder holding ``acme/sharded-tiny`` as a sharded safetensors checkpoint."""
    cache = tmp_path / "hub"
    make_hf_cache(cache, REPO, sharded_files(tmp_path, sd))
    return cache


# ---------------------------------------------------------------------- item 3: the HF cache
def test_the_fake_cache_is_what_huggingface_hub_reads(hf_cache: Path) -> None:
    """The layout is huggingface_hub's own: its scanner sees one clean repo, its lookup finds the files."""
    from huggingface_hub import scan_cache_dir, try_to_load_from_cache

    info = scan_cache_dir(hf_cache)
    assert not info.warnings
    (repo,) = info.repos
    assert repo.repo_id == REPO and repo.repo_type == "model"
    (rev,) = repo.revisions
    assert rev.commit_hash == COMMIT and rev.refs == frozenset({"main"})
    assert {f.file_name for f in rev.files} == {
        "config.json",
        "model.safetensors.index.json",
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    }
    found = try_to_load_from_cache(REPO, "model.safetensors.index.json", cache_dir=hf_cache)
    assert isinstance(found, str)
    snap = Path(found).parent
    assert snap == hf_cache / f"models--{REPO.replace('/', '--')}" / "snapshots" / COMMIT
    link = snap / "model-00001-of-00002.safetensors"
    assert link.is_symlink() and os.readlink(link).startswith("../../blobs/")


def test_sharded_checkpoint_in_the_hf_cache_by_snapshot_path(z: Zoo, hf_cache: Path, sd) -> None:
    snap = hf_cache / "models--acme--sharded-tiny" / "snapshots" / COMMIT
    assert_same(read_sharded(snap / "model.safetensors.index.json"), sd)  # the reader alone
    (src,) = discover(snap)
    assert src.kind == "sharded" and src.config == HF_CONFIG
    (rec,) = z.ingest(snap, population="hub")
    assert_same(rec.state_dict(), sd)
    assert rec.arch_config["hf_config"] == HF_CONFIG
    assert z.verify().ok


def test_sharded_checkpoint_in_the_hf_cache_by_repo_id_offline(z: Zoo, hf_cache: Path, sd) -> None:
    (rec,) = z.ingest(REPO, cache_dir=hf_cache, offline=True)
    assert rec.source == f"hf://{REPO}"
    assert_same(rec.state_dict(), sd)
    (pinned,) = z.ingest(REPO, cache_dir=hf_cache, offline=True, revision=COMMIT)
    assert pinned.source == f"hf://{REPO}@{COMMIT}"
    assert_same(pinned.state_dict(), sd)
    assert z.verify().ok


def test_sharded_checkpoint_by_repo_id_from_the_default_cache_with_hf_hub_offline(
    z: Zoo, hf_cache: Path, sd, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``HF_HUB_OFFLINE=1`` and no cache_dir: huggingface_hub's default cache (HF_HUB_CACHE) is read."""
    import huggingface_hub.constants as hf_constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(hf_cache))  # what HF_HUB_CACHE sets at import
    (rec,) = z.ingest(REPO)
    assert_same(rec.state_dict(), sd)


def test_cli_ingests_a_sharded_repo_from_the_cache(hf_cache: Path, tmp_path: Path, capsys) -> None:
    root = tmp_path / "clizoo"
    rc = main(
        ["ingest", REPO, "--cache-dir", str(hf_cache), "--offline", "--root", str(root), "--no-progress"]
    )
    assert rc == 0, capsys.readouterr().err
    with Zoo.open(root) as zz:
        assert zz.models().count() == 1 and zz.verify().ok


def test_a_single_file_model_in_the_hf_cache_still_ingests(z: Zoo, tmp_path: Path) -> None:
    sd = state(3)
    files = {
        "model.safetensors": st_bytes(tmp_path / "m.safetensors", sd),
        "config.json": json.dumps(HF_CONFIG).encode(),
    }
    snap = make_hf_cache(tmp_path / "hub", "acme/one", files)
    (rec,) = z.ingest(snap)
    assert_same(rec.state_dict(), sd)
    (rec2,) = z.ingest("acme/one", cache_dir=tmp_path / "hub", offline=True)
    assert rec2.id != rec.id and rec2.source == "hf://acme/one"


def test_the_whole_cache_repo_folder_ingests(z: Zoo, hf_cache: Path, sd) -> None:
    (rec,) = z.ingest(hf_cache / "models--acme--sharded-tiny")
    assert_same(rec.state_dict(), sd)


def _evil_target(tmp_path: Path, sd: dict[str, torch.Tensor]) -> Path:
    """A perfectly valid checkpoint outside the cache repo: reading it would be the leak."""
    outside = tmp_path / "outside"
    outside.mkdir(exist_ok=True)
    target = outside / "secret.safetensors"
    save_file(sd, str(target))
    return target


@pytest.mark.parametrize("how", ["snapshot", "repo_id"])
def test_malicious_cache_shard_link_leaving_the_repo_is_refused(z: Zoo, tmp_path: Path, sd, how: str) -> None:
    cache = tmp_path / "hub"
    snap = make_hf_cache(cache, REPO, sharded_files(tmp_path, sd))
    shard = snap / "model-00002-of-00002.safetensors"
    weight_map = json.loads((snap / "model.safetensors.index.json").read_text())["weight_map"]
    target = _evil_target(tmp_path, {k: v for k, v in sd.items() if weight_map[k] == shard.name})
    shard.unlink()
    os.symlink(os.path.relpath(target, shard.parent), shard)  # ../../../../outside/secret.safetensors
    before = catalog_state(z)
    with pytest.raises(UnsafeFileError) as ei:
        z.ingest(snap if how == "snapshot" else REPO, cache_dir=cache, offline=True)
    msg = str(ei.value)
    assert shard.name in msg and "outside" in msg and "follow" in msg
    assert_refused_cleanly(z, before)


def test_malicious_cache_weights_link_leaving_the_repo_is_refused(z: Zoo, tmp_path: Path) -> None:
    """Not sharded: ``snapshots/<c>/model.safetensors`` links out of ``models--acme--one/`` (old code read it)."""
    files = {"model.safetensors": st_bytes(tmp_path / "m.safetensors", state(1)), "config.json": b"{}"}
    cache = tmp_path / "hub"
    snap = make_hf_cache(cache, "acme/one", files)
    target = _evil_target(tmp_path, state(2))
    (snap / "model.safetensors").unlink()
    os.symlink(os.path.relpath(target, snap), snap / "model.safetensors")
    before = catalog_state(z)
    for source in (snap, "acme/one"):
        with pytest.raises(UnsafeFileError, match="model.safetensors"):
            z.ingest(source, cache_dir=cache, offline=True)
    assert_refused_cleanly(z, before)


def test_malicious_cache_blob_that_is_itself_a_link_out_is_refused(z: Zoo, tmp_path: Path) -> None:
    """The final target counts: ``snapshot -> ../../blobs/<sha> -> /outside/...`` is outside."""
    files = {"model.safetensors": st_bytes(tmp_path / "m.safetensors", state(1)), "config.json": b"{}"}
    snap = make_hf_cache(tmp_path / "hub", "acme/one", files)
    blob = (snap / "model.safetensors").resolve()
    blob.unlink()
    os.symlink(_evil_target(tmp_path, state(2)), blob)
    before = catalog_state(z)
    with pytest.raises(UnsafeFileError):
        z.ingest(snap)
    assert_refused_cleanly(z, before)


def test_a_link_into_another_cache_repo_is_refused(z: Zoo, tmp_path: Path, sd) -> None:
    """Inside the hub cache but outside ``models--acme--sharded-tiny/``: still refused."""
    cache = tmp_path / "hub"
    snap = make_hf_cache(cache, REPO, sharded_files(tmp_path, sd))
    other = make_hf_cache(cache, "evil/other", {"x.safetensors": st_bytes(tmp_path / "x.safetensors", sd)})
    shard = snap / "model-00001-of-00002.safetensors"
    shard.unlink()
    os.symlink(os.path.relpath((other / "x.safetensors").resolve(), snap), shard)
    before = catalog_state(z)
    with pytest.raises(UnsafeFileError, match="models--acme--sharded-tiny"):
        z.ingest(snap)
    assert_refused_cleanly(z, before)


def test_a_folder_named_like_a_cache_repo_without_its_layout_gets_no_wider_boundary(
    z: Zoo, tmp_path: Path
) -> None:
    """Only a real cache repo (blobs/ and snapshots/) widens the boundary to ``models--*``."""
    fake = tmp_path / "models--x--y"
    (fake / "sub").mkdir(parents=True)
    target = fake / "elsewhere.safetensors"
    save_file(state(1), str(target))
    os.symlink("../elsewhere.safetensors", fake / "sub" / "m.safetensors")
    with pytest.raises(UnsafeFileError):
        z.ingest(fake / "sub")


# ---------------------------------------------------------------------- item 4: folder links
def _folder(tmp_path: Path, n: int = 2) -> Path:
    folder = tmp_path / "ckpts"
    folder.mkdir()
    for i in range(n):
        save_file(state(i), str(folder / f"m{i}.safetensors"))
    return folder


def test_a_directory_loop_is_skipped_with_a_warning_not_followed(z: Zoo, tmp_path: Path) -> None:
    folder = _folder(tmp_path)
    os.symlink(".", folder / "loop")  # old code: 41 duplicate models, exit 0
    with pytest.warns(SymlinkWarning, match="loop"):
        recs = z.ingest(folder)
    assert len(recs) == 2 and z.models().count() == 2
    assert {r.source.rsplit("::", 1)[1] for r in recs} == {"m0", "m1"}
    assert z.verify().ok


def test_a_directory_link_is_never_followed_by_default(z: Zoo, tmp_path: Path) -> None:
    folder = _folder(tmp_path, 1)
    other = tmp_path / "other"
    other.mkdir()
    save_file(state(5), str(other / "x.safetensors"))
    os.symlink(other, folder / "linked")
    os.symlink(folder / "m0.safetensors", tmp_path / "unused.safetensors")  # noise outside the folder
    with pytest.warns(SymlinkWarning, match="linked"):
        srcs = discover(folder)
    assert [s.name for s in srcs] == ["m0"]


def test_follow_symlinks_follows_directory_links_once_each(z: Zoo, tmp_path: Path) -> None:
    folder = _folder(tmp_path, 1)
    other = tmp_path / "other"
    other.mkdir()
    save_file(state(5), str(other / "x.safetensors"))
    os.symlink(other, folder / "linked")
    os.symlink(".", folder / "loop")
    os.symlink(other, folder / "again")  # a second path to the same directory
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        recs = z.ingest(folder, follow_symlinks=True)
    assert sorted(r.source.rsplit("::", 1)[1] for r in recs) == ["again/x", "m0"]  # "again" sorts first
    assert any(issubclass(w.category, SymlinkWarning) and "linked" in str(w.message) for w in caught)
    assert z.verify().ok


def test_a_file_link_leaving_the_folder_is_refused_naming_it(z: Zoo, tmp_path: Path) -> None:
    folder = _folder(tmp_path)
    target = _evil_target(tmp_path, state(9))
    os.symlink(target, folder / "stolen.safetensors")  # old code: ingested as a third model
    before = catalog_state(z)
    with pytest.raises(UnsafeFileError) as ei:
        z.ingest(folder)
    msg = str(ei.value)
    assert "stolen.safetensors" in msg and str(target) in msg and "follow_symlinks" in msg
    assert_refused_cleanly(z, before)
    # asked for: read
    recs = z.ingest(folder, follow_symlinks=True)
    assert len(recs) == 3
    stolen = next(r for r in recs if r.source.endswith("::stolen"))
    assert_same(stolen.state_dict(), state(9))


@pytest.mark.skipif(not Path("/etc/passwd").is_file(), reason="needs /etc/passwd")
def test_etc_passwd_named_bin_is_not_read(z: Zoo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = _folder(tmp_path)
    os.symlink("/etc/passwd", folder / "passwd.bin")
    opened: list[str] = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda f, *a, **k: (opened.append(str(f)), real_load(f, *a, **k))[1])
    before = catalog_state(z)
    with pytest.raises(UnsafeFileError, match="passwd.bin"):
        z.ingest(folder)
    assert not opened  # refused before anything was read
    assert_refused_cleanly(z, before)


def test_config_json_link_leaving_the_folder_is_refused(z: Zoo, tmp_path: Path) -> None:
    folder = tmp_path / "hf"
    folder.mkdir()
    save_file(state(1), str(folder / "model.safetensors"))
    secret = tmp_path / "secret.json"
    secret.write_text(json.dumps({"api_key": "do-not-store"}))
    os.symlink(secret, folder / "config.json")
    before = catalog_state(z)
    with pytest.raises(UnsafeFileError, match="config.json"):
        z.ingest(folder)
    assert_refused_cleanly(z, before)


def test_links_inside_the_folder_are_fine(z: Zoo, tmp_path: Path) -> None:
    folder = _folder(tmp_path, 1)
    (folder / "sub").mkdir()
    save_file(state(4), str(folder / "sub" / "real.safetensors"))
    os.symlink("m0.safetensors", folder / "alias.safetensors")
    os.symlink("sub/real.safetensors", folder / "up.safetensors")
    with warnings.catch_warnings():
        warnings.simplefilter("error", SymlinkWarning)  # no directory links here: no warning
        recs = z.ingest(folder)
    assert sorted(r.source.rsplit("::", 1)[1] for r in recs) == ["alias", "m0", "sub/real", "up"]
    assert_same(next(r for r in recs if r.source.endswith("::alias")).state_dict(), state(0))


def test_the_named_path_itself_may_be_a_link(z: Zoo, tmp_path: Path) -> None:
    folder = _folder(tmp_path)
    os.symlink(folder, tmp_path / "alias-of-folder")
    os.symlink(folder / "m0.safetensors", tmp_path / "alias.safetensors")
    assert len(z.ingest(tmp_path / "alias-of-folder")) == 2
    (rec,) = z.ingest(tmp_path / "alias.safetensors")
    assert_same(rec.state_dict(), state(0))


def test_sharded_shard_link_leaving_a_plain_folder_is_refused_unless_followed(
    z: Zoo, tmp_path: Path, sd
) -> None:
    folder = tmp_path / "sharded"
    folder.mkdir()
    files = sharded_files(tmp_path, sd)
    away = tmp_path / "away"
    away.mkdir()
    for name, data in files.items():
        if name == "model-00002-of-00002.safetensors":
            (away / name).write_bytes(data)
            os.symlink(away / name, folder / name)
        else:
            (folder / name).write_bytes(data)
    before = catalog_state(z)
    with pytest.raises(UnsafeFileError, match="model-00002-of-00002"):
        z.ingest(folder)
    with pytest.raises(UnsafeFileError):
        read_sharded(folder / "model.safetensors.index.json")
    assert_refused_cleanly(z, before)
    (rec,) = z.ingest(folder, follow_symlinks=True)
    assert_same(rec.state_dict(), sd)
    assert_same(read_sharded(folder / "model.safetensors.index.json", follow_symlinks=True), sd)


def test_shard_names_escaping_the_folder_are_refused_even_when_following_links(
    z: Zoo, tmp_path: Path
) -> None:
    folder = tmp_path / "s"
    folder.mkdir()
    save_file(state(1), str(tmp_path / "x.safetensors"))
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"a": "../x.safetensors"}})
    )
    for follow in (False, True):
        with pytest.raises(UnsafeFileError, match="outside its folder"):
            z.ingest(folder, follow_symlinks=follow)


# ---------------------------------------------------------------------------------------- CLI
def test_cli_skips_loops_refuses_outside_links_and_follows_when_asked(tmp_path: Path, capsys) -> None:
    folder = _folder(tmp_path)
    os.symlink(".", folder / "loop")
    root = tmp_path / "clizoo"
    common = ["--root", str(root), "--no-progress"]
    assert main(["ingest", str(folder), *common]) == 0
    err = capsys.readouterr().err
    assert "warning" in err and "loop" in err and "Traceback" not in err
    os.symlink(_evil_target(tmp_path, state(9)), folder / "stolen.safetensors")
    assert main(["ingest", str(folder), *common]) == 2
    err = capsys.readouterr().err
    assert "stolen.safetensors" in err and "--follow-symlinks" in err
    with Zoo.open(root) as zz:
        assert zz.models().count() == 2 and zz.verify().ok
    assert main(["ingest", str(folder), "--follow-symlinks", *common]) == 0
    with Zoo.open(root) as zz:
        # m0, m1 again (new rows, same blobs) + stolen; the loop is visited once
        assert zz.models().count() == 5 and zz.verify().ok
