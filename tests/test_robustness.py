"""Bad input gets a clear error and nothing is lost: crashes mid-write, corrupt/missing packs,
storage errors, failing catalog transactions, invalid arguments, gc."""

from __future__ import annotations

import builtins
import errno
import os
import time

import pytest
import sqlalchemy
import torch
from sqlalchemy import event, select

import zoo.store.fsutil as fsutil
from tests.conftest import MLP_CFG, assert_same_state, mlp_state
from zoo import (
    ConfigError,
    DuplicateError,
    IntegrityError,
    MismatchError,
    NewModel,
    NotFoundError,
    StorageError,
    Zoo,
    ZooError,
)
from zoo.store import schema as S

CFG_JSON = repr(MLP_CFG)


def blob_of(z: Zoo, model_id: int, tensor: str):
    """(blob id, pack id, offset, nbytes) of one tensor of a model."""
    with z.engine.connect() as c:
        return c.execute(
            select(S.Blob.id, S.Blob.pack_id, S.Blob.offset, S.Blob.nbytes)
            .join(S.TensorEntry, S.TensorEntry.blob_id == S.Blob.id)
            .where(S.TensorEntry.model_id == model_id, S.TensorEntry.name == tensor)
        ).one()


# ------------------------------------------------------------------------------------------ crashes


KILL_AFTER_RENAME = f"""
import os, sys
import zoo.store.packs as P
from zoo import Zoo
from zoo.models.architectures import init_state

orig = P.PackStore.write
def write(self, *a, **k):
    out = orig(self, *a, **k)          # the pack is renamed into packs/ and fsynced ...
    print(out[0], flush=True)
    os._exit(1)                         # ... and the process dies before the catalog commits
P.PackStore.write = write
z = Zoo.open(sys.argv[1])
z.add(init_state({CFG_JSON}, 1234), arch={CFG_JSON}, population="p", name="doomed")
print("NOT REACHED", flush=True)
"""


def test_crash_between_pack_rename_and_commit_leaves_only_an_orphan(zoo: Zoo, mlp_cfg, py) -> None:
    before = [zoo.add(mlp_state(s), arch=mlp_cfg, population="p", name=f"m{s}") for s in range(3)]
    packs_before = set(zoo.packs.list_files())
    proc = py(KILL_AFTER_RENAME, str(zoo.root))
    assert proc.returncode == 1, proc.stderr
    orphan = proc.stdout.strip()
    assert orphan and "NOT REACHED" not in proc.stdout
    assert set(zoo.packs.list_files()) == packs_before | {orphan}

    with Zoo.open(zoo.root) as z:  # as a new process would see it
        rep = z.verify()
        assert rep.ok
        assert rep.orphan_packs == [orphan]
        assert rep.n_models == 3 and rep.temp_files == [] and rep.affected_models == []
        assert "orphan" in str(rep)
        for s, rec in enumerate(before):
            assert_same_state(z.state_dict(rec.id), mlp_state(s))
        with pytest.raises(NotFoundError):
            z.get("doomed")
        assert z.population_info("p").n_models == 3
        # a fresh orphan is spared by the default grace period (a writer may be about to commit it)
        assert z.gc().orphans_removed == []
        assert orphan in z.packs.list_files()
        g = z.gc(grace_seconds=0)
        assert g.orphans_removed == [orphan] and g.bytes_freed > 0
        assert set(z.packs.list_files()) == packs_before
        rep = z.verify()
        assert rep.ok and rep.orphan_packs == [] and rep.n_models == 3
        # the store is writable again, and the same weights can now be stored
        rec = z.add(mlp_state(1234), arch=mlp_cfg, population="p", name="doomed")
        assert_same_state(z.state_dict(rec.id), mlp_state(1234))
        assert z.verify().ok


KILL_DURING_TEMP_WRITE = f"""
import os, signal, sys
import zoo.store.packs as P
from zoo import Zoo
from zoo.models.architectures import init_state

orig = P.tensor_bytes
calls = []
def tensor_bytes(t):
    calls.append(1)
    if len(calls) == 3:                  # part of the pack is in its temp file
        print(sorted(os.listdir(os.path.join(sys.argv[1], "packs", ".tmp")))[0], flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    return orig(t)
P.tensor_bytes = tensor_bytes
z = Zoo.open(sys.argv[1])
z.add(init_state({CFG_JSON}, 77), arch={CFG_JSON}, name="doomed")
"""


def test_sigkill_while_writing_temp_file_leaves_only_a_temp_file(zoo: Zoo, mlp_cfg, py) -> None:
    rec = zoo.add(mlp_state(0), arch=mlp_cfg, name="kept")
    packs_before = set(zoo.packs.list_files())
    proc = py(KILL_DURING_TEMP_WRITE, str(zoo.root))
    assert proc.returncode == -9, proc.stderr
    temp = proc.stdout.strip()
    assert temp.endswith(".safetensors.part")
    with Zoo.open(zoo.root) as z:
        assert set(z.packs.list_files()) == packs_before
        rep = z.verify()
        assert rep.ok and rep.temp_files == [temp] and rep.orphan_packs == [] and rep.n_models == 1
        assert_same_state(z.state_dict(rec.id), mlp_state(0))
        assert z.gc().temp_removed == []  # too fresh
        assert z.gc(grace_seconds=0).temp_removed == [temp]
        assert z.packs.list_temp() == []
        rep = z.verify()
        assert rep.ok and rep.temp_files == []
        z.add(mlp_state(77), arch=mlp_cfg, name="doomed")
        assert z.verify().ok


# ------------------------------------------------------------------------------------------ damaged packs


def test_corrupt_blob_is_reported_with_affected_models(zoo: Zoo, mlp_cfg) -> None:
    a = zoo.add(mlp_state(0), arch=mlp_cfg, name="a")
    shared = mlp_state(0)
    shared["layers.1.bias"] = torch.zeros(4)
    c = zoo.add(shared, arch=mlp_cfg, name="c")  # shares layers.0.* and layers.1.weight with a
    b = zoo.add(mlp_state(1), arch=mlp_cfg, name="b")
    blob_id, pack_id, offset, nbytes = blob_of(zoo, a.id, "layers.0.weight")
    path = zoo.packs.path(pack_id)
    with open(path, "r+b") as f:
        f.seek(offset + nbytes // 2)
        byte = f.read(1)
        f.seek(offset + nbytes // 2)
        f.write(bytes([byte[0] ^ 0xFF]))
    rep = zoo.verify()
    assert not rep.ok
    assert rep.corrupt_blobs == [blob_id]
    assert rep.affected_models == sorted([a.id, c.id])
    assert rep.missing_packs == [] and rep.missing_blobs == []
    assert "corrupt" in str(rep) and "PROBLEMS" in str(rep)
    assert_same_state(zoo.state_dict(b.id), mlp_state(1))  # untouched model still fine
    # verify without rehash does not see content corruption
    assert zoo.verify(rehash=False).ok


def test_missing_pack_is_reported_and_reading_raises_integrity_error(zoo: Zoo, mlp_cfg) -> None:
    a = zoo.add(mlp_state(0), arch=mlp_cfg, name="a")
    b = zoo.add(mlp_state(1), arch=mlp_cfg, name="b")
    _, pack_b, _, _ = blob_of(zoo, b.id, "layers.0.weight")
    zoo.packs.path(pack_b).unlink()
    with Zoo.open(zoo.root) as z:
        rep = z.verify()
        assert not rep.ok
        assert rep.missing_packs == [pack_b]
        assert rep.affected_models == [b.id]
        assert "missing" in str(rep)
        with pytest.raises(IntegrityError, match="missing") as e:
            z.state_dict(b.id)
        assert isinstance(e.value, ZooError)
        with pytest.raises(IntegrityError):
            z.get("b").module()
        with pytest.raises(IntegrityError):
            z.stack([a.id, b.id])
        assert_same_state(z.state_dict(a.id), mlp_state(0))
        # gc does not "fix" it by deleting catalog rows of a model
        z.gc(grace_seconds=0)
        assert z.summary()["models"] == 2


def test_truncated_pack_is_reported_and_reading_raises(zoo: Zoo, mlp_cfg) -> None:
    a = zoo.add(mlp_state(0), arch=mlp_cfg, name="a")
    _, pack, _, _ = blob_of(zoo, a.id, "layers.0.weight")
    path = zoo.packs.path(pack)
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.truncate(size - 8)
    with Zoo.open(zoo.root) as z:
        rep = z.verify()
        assert not rep.ok and rep.affected_models == [a.id]
        assert len(rep.missing_blobs) + len(rep.corrupt_blobs) >= 1
        with pytest.raises(IntegrityError):
            z.state_dict(a.id)
    with open(path, "r+b") as f:  # a pack with a garbage header
        f.write(b"\xff" * 16)
    with Zoo.open(zoo.root) as z:
        rep = z.verify()
        assert not rep.ok and rep.missing_packs == [pack] and rep.affected_models == [a.id]


# ------------------------------------------------------------------------------------------ storage errors


def _fail_open(exc: OSError):
    real_open = builtins.open

    def fake_open(file, mode="r", *args, **kwargs):
        if "w" in mode and str(file).endswith(".part"):
            raise exc
        return real_open(file, mode, *args, **kwargs)

    return fake_open


class _FailingFile:
    """A file whose second write fails with ENOSPC (the disk fills up mid-pack)."""

    def __init__(self, f):
        self.f, self.n = f, 0

    def write(self, data):
        self.n += 1
        if self.n > 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return self.f.write(data)

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


def _fill_up_open():
    real_open = builtins.open

    def fake_open(file, mode="r", *args, **kwargs):
        f = real_open(file, mode, *args, **kwargs)
        return _FailingFile(f) if "w" in mode and str(file).endswith(".part") else f

    return fake_open


@pytest.mark.parametrize(
    "fake_open",
    [
        _fail_open(OSError(errno.ENOSPC, "No space left on device")),
        _fail_open(PermissionError(errno.EACCES, "Permission denied")),
        _fill_up_open(),
    ],
    ids=["enospc-on-open", "permission-denied", "disk-full-mid-write"],
)
def test_storage_error_leaves_store_unchanged(zoo: Zoo, mlp_cfg, monkeypatch, snapshot, fake_open) -> None:
    kept = zoo.add(mlp_state(0), arch=mlp_cfg, name="kept")
    before, gen = snapshot(zoo), zoo.generation()
    monkeypatch.setattr(fsutil, "open", fake_open, raising=False)  # the one atomic file write
    with pytest.raises(StorageError) as e:
        zoo.add(mlp_state(1), arch=mlp_cfg, name="new", population="p", metrics={"acc": 1.0}, tags=["t"])
    assert isinstance(e.value, ZooError) and isinstance(e.value, OSError)
    assert "unchanged" in str(e.value)
    assert snapshot(zoo) == before  # no rows, no pack files, no temp files
    assert zoo.generation() == gen
    with pytest.raises(NotFoundError):
        zoo.get("new")
    with pytest.raises(NotFoundError):
        zoo.population("p")
    monkeypatch.undo()
    rep = zoo.verify()
    assert rep.ok and not rep.orphan_packs and not rep.temp_files
    assert_same_state(zoo.state_dict(kept.id), mlp_state(0))
    assert zoo.add(mlp_state(1), arch=mlp_cfg, name="new").name == "new"  # works once the disk is back


def test_failed_rename_leaves_no_temp_file(zoo: Zoo, mlp_cfg, monkeypatch, snapshot) -> None:
    before = snapshot(zoo)

    def bad_replace(src, dst):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(fsutil.os, "replace", bad_replace)
    with pytest.raises(StorageError):
        zoo.add(mlp_state(1), arch=mlp_cfg)
    monkeypatch.undo()
    assert snapshot(zoo) == before


# ------------------------------------------------------------------------------------------ catalog failures


def test_commit_failure_removes_the_new_pack(zoo: Zoo, mlp_cfg, snapshot) -> None:
    zoo.add(mlp_state(0), arch=mlp_cfg, name="kept")
    before = snapshot(zoo)

    def boom(conn):
        raise RuntimeError("simulated commit failure")

    event.listen(zoo.engine, "commit", boom)
    try:
        with pytest.raises(RuntimeError, match="simulated"):
            zoo.add(mlp_state(1), arch=mlp_cfg, name="new", metrics={"acc": 1})
    finally:
        event.remove(zoo.engine, "commit", boom)
    assert snapshot(zoo) == before
    assert zoo.verify().orphan_packs == []


def test_duplicate_name_or_missing_parent_writes_no_pack(zoo: Zoo, mlp_cfg, snapshot) -> None:
    zoo.add(mlp_state(0), arch=mlp_cfg, name="kept")
    before = snapshot(zoo)
    with pytest.raises(DuplicateError):
        zoo.add(mlp_state(1), arch=mlp_cfg, name="kept")
    with pytest.raises(NotFoundError):
        zoo.add(mlp_state(2), arch=mlp_cfg, parents=["ghost"])
    with pytest.raises(DuplicateError):  # all or nothing: the good first item is not written either
        zoo.add_many(
            [
                NewModel(mlp_state(3), arch=mlp_cfg, name="fresh"),
                NewModel(mlp_state(4), arch=mlp_cfg, name="kept"),
            ]
        )
    assert snapshot(zoo) == before
    with pytest.raises(NotFoundError):
        zoo.get("fresh")


def test_insert_failure_after_pack_write_removes_the_new_pack(zoo: Zoo, mlp_cfg, snapshot) -> None:
    zoo.add(mlp_state(0), arch=mlp_cfg, name="kept")
    before = snapshot(zoo)

    def boom(conn, cursor, statement, parameters, context, executemany):
        if statement.lstrip().upper().startswith("INSERT INTO MODELS"):
            raise sqlalchemy.exc.OperationalError(
                statement, parameters, Exception("simulated disk I/O error")
            )

    event.listen(zoo.engine, "before_cursor_execute", boom)
    try:
        with pytest.raises(StorageError, match="disk holding the zoo"):  # a disk error says so (zoo.db)
            zoo.add(mlp_state(1), arch=mlp_cfg, name="new")
    finally:
        event.remove(zoo.engine, "before_cursor_execute", boom)
    assert snapshot(zoo) == before


# ------------------------------------------------------------------------------------------ invalid input


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"state_dict": {}}, MismatchError),
        ({"state_dict": {"w": [1.0, 2.0]}}, MismatchError),
        ({"state_dict": {"w": torch.ones(2), "n": 3}}, MismatchError),
        ({"state_dict": {"w": torch.ones(2), 5: torch.ones(2)}}, ConfigError),  # tensor names: zoo.names
        ({"state_dict": {"": torch.ones(2)}}, ConfigError),
        ({"state_dict": [torch.ones(2)]}, MismatchError),
        ({"state_dict": {"c": torch.ones(2, dtype=torch.complex64)}}, MismatchError),
        ({"state_dict": {"s": torch.eye(3).to_sparse()}}, MismatchError),
        ({"name": ""}, ConfigError),
        ({"name": " padded"}, ConfigError),
        ({"name": "123"}, ConfigError),
        ({"name": "line\nbreak"}, ConfigError),
        ({"name": "x" * 301}, ConfigError),
        ({"population": "42"}, ConfigError),
        ({"arch": {"family": "transformer"}}, ConfigError),
        (
            {"arch": {"family": "mlp", "hidden": [16], "in_features": 8, "out_features": 4, "bogus": 1}},
            ConfigError,
        ),
        ({"arch": "no-such-arch"}, NotFoundError),
        ({"parents": ["ghost"]}, NotFoundError),
    ],
)
def test_invalid_input_is_refused_and_nothing_is_written(zoo: Zoo, mlp_cfg, snapshot, kwargs, error) -> None:
    zoo.add(mlp_state(0), arch=mlp_cfg, name="kept")
    before = snapshot(zoo)
    kw = {"state_dict": mlp_state(1), "arch": mlp_cfg if "state_dict" not in kwargs else None, **kwargs}
    with pytest.raises(error) as e:
        zoo.add(**kw)
    assert isinstance(e.value, ZooError) and str(e.value)
    assert snapshot(zoo) == before


@pytest.mark.parametrize(
    "kwargs",
    [
        {"metrics": {"test_acc": "high"}},
        {"metrics": {"acc": None}},
        {"tags": [""]},
        {"tags": [3]},
        {"hparams": {"f": object()}},
    ],
    ids=["metric-str", "metric-none", "tag-empty", "tag-int", "hparam-object"],
)
def test_invalid_metadata_is_refused_and_nothing_is_written(zoo: Zoo, mlp_cfg, snapshot, kwargs) -> None:
    zoo.add(mlp_state(0), arch=mlp_cfg, name="kept")
    before = snapshot(zoo)
    with pytest.raises(ConfigError):
        zoo.add(mlp_state(1), arch=mlp_cfg, **kwargs)
    assert snapshot(zoo) == before


def test_invalid_metadata_is_refused_with_config_error(zoo: Zoo, mlp_cfg) -> None:
    """The error half of the test above (this part works): a clear ConfigError, no model row."""
    for kwargs in ({"metrics": {"test_acc": "high"}}, {"tags": [""]}, {"hparams": {"f": object()}}):
        with pytest.raises(ConfigError):
            zoo.add(mlp_state(1), arch=mlp_cfg, **kwargs)
    assert zoo.summary()["models"] == 0 and zoo.summary()["blobs"] == 0


# ------------------------------------------------------------------------------------------ gc


def test_gc_grace_period_spares_fresh_orphans(zoo: Zoo, mlp_cfg) -> None:
    rec = zoo.add(mlp_state(0), arch=mlp_cfg)
    fresh, _, _ = zoo.packs.write({"deadbeef": torch.ones(3)})  # as a writer about to commit would
    old, _, _ = zoo.packs.write({"cafebabe": torch.zeros(3)})
    past = time.time() - 7200
    os.utime(zoo.packs.path(old), (past, past))
    assert zoo.verify().orphan_packs == sorted([fresh, old])
    dry = zoo.gc(dry_run=True)
    assert dry.orphans_removed == [old] and dry.dry_run
    assert zoo.packs.path(old).exists()
    rep = zoo.gc()  # default grace: one hour
    assert rep.orphans_removed == [old]
    assert zoo.packs.path(fresh).exists() and not zoo.packs.path(old).exists()
    assert zoo.gc(grace_seconds=0).orphans_removed == [fresh]
    assert zoo.verify().orphan_packs == []
    assert_same_state(zoo.state_dict(rec.id), mlp_state(0))


def test_gc_after_remove_frees_space_and_compacts(zoo: Zoo, mlp_cfg) -> None:
    batch = zoo.add_many([NewModel(mlp_state(s), arch=mlp_cfg, name=f"b{s}") for s in range(4)])  # one pack
    zoo.add(mlp_state(10), arch=mlp_cfg, name="single")  # its own pack
    keep = zoo.add(mlp_state(11), arch=mlp_cfg, name="keep")  # its own pack
    shared = {**mlp_state(12), "layers.1.bias": mlp_state(1)["layers.1.bias"].clone()}
    sharer = zoo.add(shared, arch=mlp_cfg, name="sharer")  # shares one blob with b1
    pack_of = {
        n: blob_of(zoo, zoo.get(n).id, "layers.1.weight")[1] for n in ("b0", "single", "keep", "sharer")
    }
    s0 = zoo.summary()
    assert s0["packs"] == 4 and s0["blobs"] == 4 * 4 + 4 + 4 + 3
    disk0 = sum(p.stat().st_size for p in zoo.packs.list_files().values())

    survivors = [batch[3].id, keep.id, sharer.id]
    other = Zoo.open(zoo.root)  # another handle (process) that has read, and cached, blob locations
    W0, W0_other = zoo.stack(survivors), other.stack(survivors)
    assert zoo.remove(["b0", "b1", "b2", "single"]) == 4
    removed = zoo.summary()
    assert removed["models"] == 3 and removed["blobs"] == s0["blobs"]  # blobs stay until gc
    dry = zoo.gc(grace_seconds=0, dry_run=True)
    assert dry.blobs_removed == 3 * 4 - 1 + 4 and dry.packs_removed == [pack_of["single"]]
    assert dry.packs_compacted == [pack_of["b0"]]
    assert zoo.summary() == removed  # dry run changed nothing
    assert sum(p.stat().st_size for p in zoo.packs.list_files().values()) == disk0
    rep = zoo.gc(grace_seconds=0)
    assert rep.blobs_removed == 15  # b0, b2: 8; b1: 3 (its last bias lives on in sharer); single: 4
    assert rep.packs_removed == [pack_of["single"]]
    assert rep.packs_compacted == [pack_of["b0"]]  # 5 live blobs of 16: compacted
    assert rep.bytes_freed > 0
    s1 = zoo.summary()
    assert s1["models"] == 3 and s1["blobs"] == 4 + 1 + 4 + 3
    assert s1["stored_bytes"] < s0["stored_bytes"] and s1["packs"] == 3
    files = zoo.packs.list_files()
    assert pack_of["b0"] not in files and pack_of["single"] not in files
    assert pack_of["keep"] in files and pack_of["sharer"] in files
    with zoo.engine.connect() as c:
        assert set(c.execute(select(S.Pack.id)).scalars()) == set(files)
    assert sum(p.stat().st_size for p in files.values()) < disk0
    # everything left loads bit-exactly, also in a fresh process' view
    with Zoo.open(zoo.root) as z:
        assert_same_state(z.state_dict(batch[3].id), mlp_state(3))
        assert_same_state(z.state_dict(keep.id), mlp_state(11))
        assert_same_state(z.state_dict(sharer.id), shared)
        rep = z.verify()
        assert rep.ok and rep.orphan_packs == [] and rep.unreferenced_blobs == 0 and rep.n_blobs == 12
    # stacks read after gc (which moved blobs to a new pack) are still right, in every handle
    for W in (zoo.stack(survivors), other.stack(survivors)):
        assert set(W) == set(W0) and all(
            torch.equal(W[k], W0[k]) and torch.equal(W[k], W0_other[k]) for k in W0
        )
    other.close()
    # gc is idempotent
    again = zoo.gc(grace_seconds=0)
    assert again.blobs_removed == 0 and again.packs_removed == [] and again.packs_compacted == []


def test_gc_does_not_rewrite_packs_without_garbage(zoo: Zoo, mlp_cfg) -> None:
    zoo.add(mlp_state(0), arch=mlp_cfg)
    zoo.add({"small": torch.ones(3), "other": torch.zeros(2, dtype=torch.int64)})
    files = set(zoo.packs.list_files())
    rep = zoo.gc(grace_seconds=0)
    assert rep.packs_compacted == [] and rep.bytes_freed == 0
    assert set(zoo.packs.list_files()) == files
