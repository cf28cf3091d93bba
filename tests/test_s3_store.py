"""The same store tests on a local folder and on an S3 bucket (moto's server on 127.0.0.1, through s3fs):
dedup, atomic writes, a killed writer, verify, gc, repack, stacks of subsets, derived tables; and the
bad input of an object store (unreachable endpoint, missing bucket, a bucket that lost a pack)."""

from __future__ import annotations

import json
import os
import time

import numpy as np
import pandas as pd
import pytest
import torch
from sqlalchemy import func, select

import zoo.store.packs as P
from tests.conftest import MLP_CFG, assert_same_state, mlp_state
from tests.s3server import S3Server, serve
from zoo import NewModel, Zoo
from zoo.errors import ConfigError, IntegrityError, StorageError
from zoo.store import schema as S
from zoo.store.objectstore import ObjectPackStore

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="session")
def s3():
    yield from serve(S3Server(), "endpoint")


@pytest.fixture(params=["local", "s3", "s3-cached"])
def where(request, s3, tmp_path):
    """Open arguments of a zoo whose packs are in a local folder, a bucket, or a bucket with a read cache."""
    if request.param == "local":
        return {}
    kw = {"packs": f"s3://{s3.new_bucket()}/zoo", "storage_options": s3.options}
    if request.param == "s3-cached":
        kw["packs_cache"] = tmp_path / "read-cache"
    return kw


@pytest.fixture
def z(where, zoo_root):
    zz = Zoo.open(zoo_root, **where)
    yield zz
    zz.close()


def reopen(z: Zoo, where: dict) -> Zoo:
    """A new handle on the same zoo (the catalog records where the packs are: no ``packs=`` needed)."""
    kw = {k: v for k, v in where.items() if k != "packs"}
    return Zoo.open(z.root, **kw)


def snapshot(z: Zoo) -> tuple[dict[str, int], set[str]]:
    with z.engine.connect() as c:
        rows = {t.__tablename__: int(c.execute(select(func.count()).select_from(t)).scalar_one())
                for t in (S.Model, S.Blob, S.Pack, S.TensorEntry, S.LineageEdge, S.Metric)}  # fmt: skip
    return rows, set(z.packs.list_info())


def models(n: int, start: int = 0, population: str = "p") -> list[NewModel]:
    return [NewModel(mlp_state(start + i), arch=MLP_CFG, population=population, name=f"{population}{start + i}",
                     metrics={"test_acc": i / max(n, 1)}) for i in range(n)]  # fmt: skip


# ------------------------------------------------------------------------------------ round trip, dedup
def test_roundtrip_dedup_and_recorded_location(z, where):
    recs = z.add_many(models(6))
    assert z.summary()["packs"] == 1
    again = z.add_many([NewModel(mlp_state(0), arch=MLP_CFG, population="p", name="copy")])
    assert z.summary()["packs"] == 1 and z.summary()["blobs"] == 6 * 4  # every tensor was stored already
    W = z.population("p").stack()
    for k, v in mlp_state(3).items():
        assert torch.equal(W[k][3], v)
    assert_same_state(z.state_dict(again[0].id), mlp_state(0))
    W["layers.0.weight"][0] += 1  # results are private: the store and later reads are unchanged
    assert torch.equal(z.population("p").stack()["layers.0.weight"][0], mlp_state(0)["layers.0.weight"])
    if where:
        assert isinstance(z.packs, ObjectPackStore) and z.packs.location == where["packs"]
        with z.engine.connect() as c:
            assert c.execute(select(S.CatalogState.packs_url)).scalar_one() == where["packs"]
    z.close()
    with reopen(z, where) as z2:  # found again from the catalog
        assert type(z2.packs) is type(z.packs)
        assert_same_state(z2.state_dict(recs[5].id), mlp_state(5))
        assert z2.verify().ok


def test_stack_of_a_subset_reads_only_its_ranges(s3, zoo_root):
    z = Zoo.open(zoo_root, packs=f"s3://{s3.new_bucket()}/z", storage_options=s3.options)
    z.add_many(models(200))
    pack_size = sum(i.size for i in z.packs.list_info().values())
    ids = z.population("p").ids()
    pick = ids[10:200:20]  # 10 scattered models of 200
    z.packs.max_gap = 0  # no coalescing across gaps: exactly the bytes of the tensors asked for
    before, reqs = z.packs.bytes_ranged, z.packs.requests
    got = z.stack(pick)
    assert z.packs.bytes_ranged - before == 10 * 212 * 4  # 10 models x 212 float32 parameters
    assert z.packs.requests - reqs == 10 * 4  # one range per (model, tensor), all in one batch
    z.packs.max_gap = 512 * 1024  # the default: ranges a few KB apart are merged into one request
    before, reqs = z.packs.bytes_ranged, z.packs.requests
    got = z.stack(pick)
    assert z.packs.requests - reqs == 1 and z.packs.bytes_ranged - before < pack_size
    for i, mid in enumerate(pick):
        for k, v in mlp_state(ids.index(mid)).items():
            assert torch.equal(got[k][i], v)
    got["layers.0.bias"][0] = 7  # writable, private
    before, reqs = z.packs.bytes_ranged, z.packs.requests
    whole = z.population("p").stack()
    assert z.packs.requests - reqs == 1  # a population written together: one coalesced request
    assert z.packs.bytes_ranged - before <= pack_size
    assert torch.equal(whole["layers.0.bias"][ids.index(pick[0])], mlp_state(ids.index(pick[0]))["layers.0.bias"])
    z.close()


def test_read_cache_downloads_whole_packs_only_for_big_reads(s3, zoo_root, tmp_path):
    cache = tmp_path / "cache"
    z = Zoo.open(zoo_root, packs=f"s3://{s3.new_bucket()}/z", storage_options=s3.options, packs_cache=cache)
    z.add_many(models(100))
    ids = z.population("p").ids()
    z.stack(ids[:3])  # 3% of the pack: ranged reads, nothing cached
    assert z.packs.bytes_downloaded == 0 and not list(cache.glob("*.safetensors"))
    W = z.population("p").stack()  # all of it: the pack is downloaded once and memory-mapped
    assert z.packs.bytes_downloaded > 0 and len(list(cache.glob("*.safetensors"))) == 1
    assert isinstance(W["layers.0.weight"].numpy().base, np.memmap) or W["layers.0.weight"].numpy().base is not None
    n, r = z.packs.bytes_downloaded, z.packs.bytes_ranged
    W2 = z.population("p").stack()  # warm: no request at all
    assert (z.packs.bytes_downloaded, z.packs.bytes_ranged) == (n, r)
    assert all(torch.equal(W[k], W2[k]) for k in W)
    z.close()


# ------------------------------------------------------------------------------------ atomic writes
@pytest.mark.parametrize("step", P.WRITE_STEPS[:4])
@pytest.mark.parametrize("where", ["local", "s3"], indirect=True)  # the read cache plays no part
def test_a_failure_at_each_write_step_leaves_the_store_unchanged(z, step, monkeypatch):
    z.add_many(models(2))
    before = snapshot(z)

    def boom(s: str) -> None:
        if s == step:
            raise RuntimeError(f"injected at {s}")

    monkeypatch.setattr(P, "fault_hook", boom)
    with pytest.raises(RuntimeError, match="injected"):
        z.add_many(models(3, start=10))
    monkeypatch.undo()
    assert snapshot(z) == before
    assert z.verify().ok


@pytest.mark.parametrize("where", ["local", "s3"], indirect=True)  # the read cache plays no part
def test_a_tensor_another_writer_commits_meanwhile_is_stored_once(z, monkeypatch):
    # packs are written before the write lock (uploads overlap other writers' commits); under the lock the
    # dedup check is repeated: here every tensor of our pack was committed by another writer meanwhile
    fired: list[str] = []

    def hook(step: str) -> None:
        if step == "pack.renamed" and not fired:
            fired.append(step)
            z.add(mlp_state(5), arch=MLP_CFG, name="theirs")  # commits first

    monkeypatch.setattr(P, "fault_hook", hook)
    mine = z.add(mlp_state(5), arch=MLP_CFG, name="mine")
    monkeypatch.undo()
    s = z.summary()
    assert s["models"] == 2 and s["blobs"] == 4 and s["packs"] == 1  # our copy was discarded
    assert set(z.packs.list_info()) == {p for p in _catalog_packs(z)}
    assert_same_state(z.state_dict(mine.id), mlp_state(5))
    assert z.verify().ok and z.verify().orphan_packs == []


@pytest.mark.parametrize("where", ["local", "s3"], indirect=True)  # the read cache plays no part
def test_a_tensor_collected_by_gc_meanwhile_is_written_under_the_lock(z, monkeypatch):
    old = z.add({"t": torch.ones(5)}, name="old")
    fired: list[str] = []

    def hook(step: str) -> None:  # after our pack (with "u" only: "t" was stored) is written
        if step == "pack.renamed" and not fired:
            fired.append(step)
            z.remove([old.id])
            z.gc(grace_seconds=60)  # drops "t" (and its pack); spares our fresh, uncommitted pack

    monkeypatch.setattr(P, "fault_hook", hook)
    new = z.add({"t": torch.ones(5), "u": torch.zeros(3)}, name="new")
    monkeypatch.undo()
    assert torch.equal(z.state_dict(new.id)["t"], torch.ones(5))
    assert z.summary()["blobs"] == 2 and z.summary()["packs"] == 2  # "u" in the first pack, "t" in a second
    assert z.verify().ok and z.verify().orphan_packs == []


def _catalog_packs(z: Zoo) -> set[str]:
    with z.engine.connect() as c:
        return set(c.execute(select(S.Pack.id)).scalars())


KILL_AFTER_UPLOAD = """
import json, os, sys
import zoo.store.packs as P
from zoo import Zoo
from zoo.models.architectures import init_state

def hook(step):
    if step == "pack.renamed":        # the pack is in the store; the catalog has not committed
        os._exit(9)
P.fault_hook = hook
kw = json.loads(sys.argv[2])
z = Zoo.open(sys.argv[1], **kw)
z.add(init_state({"family": "mlp", "in_features": 8, "hidden": [16], "out_features": 4}, 77), name="doomed")
"""


@pytest.mark.parametrize("where", ["s3"], indirect=True)  # the local folder: tests/test_robustness.py
def test_killed_writer_leaves_an_orphan_that_gc_removes_after_the_grace_period(z, where, py):
    kept = z.add(mlp_state(0), arch=MLP_CFG, name="kept")
    rows, files = snapshot(z)
    kw = {k: (str(v) if k == "packs_cache" else v) for k, v in where.items() if k != "packs"}
    proc = py(KILL_AFTER_UPLOAD, str(z.root), json.dumps(kw))
    assert proc.returncode == 9, proc.stderr
    rows2, files2 = snapshot(z)
    assert rows2 == rows and len(files2 - files) == 1  # one orphan pack, no catalog row
    (orphan,) = files2 - files
    rep = z.verify()
    assert rep.ok and rep.orphan_packs == [orphan] and rep.n_models == 1
    assert z.gc().orphans_removed == []  # too fresh: a writer may still be committing it
    assert z.gc(grace_seconds=0).orphans_removed == [orphan]
    assert set(z.packs.list_info()) == files
    assert z.verify().ok and z.verify().orphan_packs == []
    assert_same_state(z.state_dict(kept.id), mlp_state(0))


# ------------------------------------------------------------------------------------ verify, gc, repack
def test_verify_names_the_models_of_a_lost_pack(z, where):
    a = z.add_many(models(2, population="a"))
    b = z.add_many(models(3, start=10, population="b"))
    lost = z.packs.list_info()
    with z.engine.connect() as c:
        pack_b = c.execute(select(S.Blob.pack_id).join(S.TensorEntry, S.TensorEntry.blob_id == S.Blob.id)
                           .where(S.TensorEntry.model_id == b[0].id)).scalars().first()  # fmt: skip
    assert pack_b in lost
    if isinstance(z.packs, ObjectPackStore):
        z.packs.fs.rm_file(z.packs.path(pack_b))  # the bucket lost it (a lifecycle rule, a wrong `aws s3 rm`)
        if z.packs.cache is not None:
            (z.packs.cache / f"{pack_b}.safetensors").unlink(missing_ok=True)
    else:
        z.packs.path(pack_b).unlink()
    rep = z.verify()
    assert not rep.ok and rep.missing_packs == [pack_b]
    assert rep.affected_models == sorted(r.id for r in b)
    assert_same_state(z.state_dict(a[1].id), mlp_state(1))
    with pytest.raises(IntegrityError, match="verify"):
        z.state_dict(b[0].id)


def test_verify_detects_a_corrupt_blob(z):
    z.add_many(models(2))
    (pack,) = z.packs.list_info()
    with z.engine.connect() as c:
        off = c.execute(select(S.Blob.offset).where(S.Blob.pack_id == pack).order_by(S.Blob.offset)).scalars().first()
    if isinstance(z.packs, ObjectPackStore):
        z.population("p").stack()  # with a read cache: a good copy is now cached; verify checks the bucket's
        raw = bytearray(z.packs.fs.cat_file(z.packs.path(pack)))
        raw[off] ^= 0xFF
        z.packs.fs.pipe_file(z.packs.path(pack), bytes(raw))
    else:
        with open(z.packs.path(pack), "r+b") as f:
            f.seek(off)
            b = f.read(1)
            f.seek(off)
            f.write(bytes([b[0] ^ 0xFF]))
    rep = z.verify()
    assert not rep.ok and len(rep.corrupt_blobs) == 1 and len(rep.affected_models) == 1


@pytest.mark.parametrize("where", ["local", "s3"], indirect=True)  # the read cache plays no part
def test_gc_and_repack_on_the_store(z):
    first = z.add_many(models(4))
    for i in range(3):  # three more batches: the population spreads over 4 packs
        z.add_many(models(2, start=100 + 2 * i))
    z.remove([r.id for r in first[:3]])
    rep = z.gc(grace_seconds=0, compact_below=0.9)
    assert rep.blobs_removed == 12 and rep.packs_compacted
    assert z.verify().ok
    rr = z.repack("p")
    assert rr.repacked == ["p"]
    with z.engine.connect() as c:
        assert set(z.packs.list_info()) == set(c.execute(select(S.Pack.id)).scalars())  # emptied packs deleted
    ids = z.population("p").ids()
    W = z.population("p").stack()
    expect = [3, 100, 101, 102, 103, 104, 105]
    for i, seed in enumerate(expect):
        assert torch.equal(W["layers.1.weight"][i], mlp_state(seed)["layers.1.weight"])
    assert len(ids) == 7 and z.verify().ok


@pytest.mark.parametrize("where", ["local", "s3"], indirect=True)  # the read cache plays no part
def test_derived_tables_live_beside_the_packs(z, where):
    recs = z.add_many(models(3))
    z.write_table("preds", pd.DataFrame({"model_id": [r.id for r in recs], "p": [0.1, 0.2, 0.3]}))
    z.write_table("preds", pd.DataFrame({"model_id": [recs[0].id], "p": [0.9]}), mode="append")
    assert z.table("preds")["p"].tolist() == [0.1, 0.2, 0.3, 0.9]
    assert z.sql("select count(*) as n, sum(p) as s from preds").to_dict(orient="records") == [
        {"n": 4, "s": pytest.approx(1.5)}]
    if where:
        assert not (z.root / "tables").exists() or not list((z.root / "tables").glob("*.parquet"))
        assert len(z.table_files.list_info()) == 2
    z.write_table("preds", pd.DataFrame({"model_id": [recs[1].id], "p": [0.5]}))  # replace: old files are garbage
    rep = z.verify()
    assert rep.ok and rep.n_tables == 1
    assert z.gc(grace_seconds=0).table_files_removed == [] or z.verify().ok
    assert len(z.table_files.list_info()) == 1
    z.drop_table("preds")
    assert z.table_files.list_info() == {} and z.verify().ok


# ------------------------------------------------------------------------------------ bad input
def test_unreachable_endpoint_is_a_storage_error_naming_the_url(s3, tmp_path):
    opts = dict(s3.options, client_kwargs={"endpoint_url": "http://127.0.0.1:9"})  # nothing listens on port 9
    root = tmp_path / "zoo"
    t0 = time.perf_counter()
    with pytest.raises(StorageError, match=r"s3://somebucket/zoo"):
        Zoo.open(root, packs="s3://somebucket/zoo", storage_options=opts)
    assert time.perf_counter() - t0 < 30
    assert not root.exists()  # nothing created: no catalog, no rows


def test_missing_bucket_is_a_storage_error(s3, tmp_path):
    with pytest.raises(StorageError, match="does not exist"):
        Zoo.open(tmp_path / "zoo", packs="s3://no-such-bucket-here/zoo", storage_options=s3.options)
    assert not (tmp_path / "zoo").exists()


def test_store_failure_during_a_write_leaves_no_catalog_rows(s3, zoo_root):
    z = Zoo.open(zoo_root, packs=f"s3://{s3.new_bucket()}/z", storage_options=s3.options)
    z.add_many(models(2))
    before = snapshot(z)
    real = z.packs.fs.pipe_file

    def down(*a, **k):
        raise ConnectionError("connection reset by peer")

    z.packs.fs.pipe_file = down  # the endpoint goes away mid-session
    with pytest.raises(StorageError, match=r"s3://.*/z.*catalog is unchanged"):
        z.add_many(models(2, start=50))
    z.packs.fs.pipe_file = real
    assert snapshot(z) == before
    z.close()


def test_a_recorded_location_cannot_be_switched(s3, zoo_root, tmp_path):
    url = f"s3://{s3.new_bucket()}/z"
    with Zoo.open(zoo_root, packs=url, storage_options=s3.options) as z:
        z.add_many(models(1))
    with pytest.raises(ConfigError, match="cannot switch"):
        Zoo.open(zoo_root, packs=f"s3://{s3.new_bucket()}/other", storage_options=s3.options)
    local = tmp_path / "local"
    with Zoo.open(local) as z:
        z.add_many(models(1))
    with pytest.raises(ConfigError, match="cannot switch"):
        Zoo.open(local, packs=url, storage_options=s3.options)
    with Zoo.open(zoo_root, packs=url + "/", storage_options=s3.options) as z:  # the same place: fine
        assert z.summary()["models"] == 1


def test_packs_in_another_folder_are_recorded_too(tmp_path):
    shared = tmp_path / "nfs" / "zoo-packs"
    with Zoo.open(tmp_path / "zoo", packs=shared) as z:
        rec = z.add(mlp_state(1), arch=MLP_CFG)
        z.write_table("t", pd.DataFrame({"model_id": [rec.id]}))
    assert len(list(shared.glob("*.safetensors"))) == 1 and len(list((shared / "tables").glob("*.parquet"))) == 1
    assert not list((tmp_path / "zoo" / "packs").glob("*.safetensors"))
    with Zoo.open(tmp_path / "zoo") as z:  # found from the catalog
        assert z.packs.location == str(shared.resolve()) and z.verify().ok
        assert_same_state(z.state_dict(rec.id), mlp_state(1))


def test_missing_s3fs_names_the_extra(monkeypatch, tmp_path):
    import sys

    monkeypatch.setitem(sys.modules, "s3fs", None)  # as if s3fs were not installed
    monkeypatch.delitem(sys.modules["fsspec.registry"]._registry, "s3", raising=False)
    with pytest.raises(ConfigError, match=r"pip install 'weightzoo\[s3\]'"):
        Zoo.open(tmp_path / "zoo", packs="s3://b/zoo")
    assert not (tmp_path / "zoo").exists()


def test_cli_packs_option_and_environment(s3, tmp_path, monkeypatch):
    from zoo.cli import main

    url = f"s3://{s3.new_bucket()}/cli"
    monkeypatch.setenv("WEIGHTZOO_STORAGE_OPTIONS", json.dumps(s3.options))
    root = tmp_path / "zoo"
    with Zoo.open(root, packs=url) as z:  # storage options from the environment
        z.add_many(models(3))
    assert main(["verify", "--root", str(root)]) == 0
    assert main(["ls", "--root", str(root), "--packs", url]) == 0
    with Zoo.open(root) as z:
        assert z.packs.location == url and z.summary()["models"] == 3
    monkeypatch.delenv("WEIGHTZOO_STORAGE_OPTIONS")
    assert os.environ.get("WEIGHTZOO_PACKS") is None


def test_refused_credentials_are_a_storage_error_naming_the_url(s3, tmp_path, monkeypatch):
    # moto's server accepts any key unless IAM auth is on, and with auth on it refuses s3fs's signatures
    # even for valid keys; so the refusal is what s3fs raises for a 403 (PermissionError), injected here
    import s3fs

    def refused(self, path, *a, **k):
        raise PermissionError("The AWS Access Key Id you provided does not exist in our records.")

    monkeypatch.setattr(s3fs.S3FileSystem, "ls", refused)
    with pytest.raises(StorageError, match=r"s3://bucket-x/zoo: access was refused \(check the credentials"):
        Zoo.open(tmp_path / "zoo", packs="s3://bucket-x/zoo", storage_options=s3.options)
    assert not (tmp_path / "zoo").exists()


def test_storage_page_on_a_bucket(s3, tmp_path, monkeypatch):
    pytest.importorskip("streamlit")
    from streamlit.testing.v1 import AppTest

    from tests.conftest import REPO_ROOT

    root = tmp_path / "zoo"
    with Zoo.open(root, packs=f"s3://{s3.new_bucket()}/app", storage_options=s3.options) as z:
        z.add_many(models(3))
        z.packs.fs.pipe_file(z.packs.path("20200101T000000-orphan000000"), b"x" * 16)  # an uncommitted upload
    monkeypatch.setenv("WEIGHTZOO_HOME", str(root))
    monkeypatch.delenv("WEIGHTZOO_URL", raising=False)
    monkeypatch.setenv("WEIGHTZOO_STORAGE_OPTIONS", json.dumps(s3.options))
    at = AppTest.from_file(str(REPO_ROOT / "app" / "pages" / "9_Storage.py"), default_timeout=120)
    at.run()
    assert not at.exception and not at.error, [e.value for e in [*at.exception, *at.error]]
    shown = "\n".join(str(e.value) for e in [*at.markdown, *at.caption]) + str({m.label: m.value for m in at.metric})
    assert "s3://" in shown and "object store" in shown
    assert {m.label: m.value for m in at.metric}["orphan files"] == "1"
    next(b for b in at.button if b.label.startswith("Check now")).click().run()
    assert at.success and "OK" in at.success[0].value and "orphan" in at.info[0].value
