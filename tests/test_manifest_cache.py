"""Cached population manifests (:mod:`zoo.store.manifests`): used when current, never when stale,
refused when corrupt, cleaned by gc, skipped when the disk refuses; stacks stay bit-identical."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from zoo import NewModel, Zoo
from zoo.store.manifests import Manifest, ManifestFiles, PopulationKey
from zoo.store.tensors import TensorReader


def _state(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"w": torch.randn(4, 3, generator=g), "b": torch.randn(4, generator=g, dtype=torch.float64)}


@pytest.fixture(autouse=True)
def small_populations_cached(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ManifestFiles, "min_models", 4)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    with Zoo.open(tmp_path / "zoo") as z:
        for batch in range(3):
            z.add_many([NewModel(_state(10 * batch + s), population="p", metrics={"test_acc": s / 4}) for s in range(4)])
        z.add_many([NewModel(_state(100 + s), population="q") for s in range(2)])  # under min_models: never cached
    return tmp_path / "zoo"


def _want(ids: list[int], seeds: dict[int, int]) -> dict[str, torch.Tensor]:
    return {k: torch.stack([_state(seeds[i])[k] for i in ids]) for k in ("w", "b")}


def _seeds(z: Zoo) -> dict[int, int]:
    ids = z.population("p").ids()
    return {i: 10 * (j // 4) + j % 4 for j, i in enumerate(ids)}


def _equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert list(a) == list(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k


def _files(root: Path) -> list[str]:
    d = root / "cache" / "manifests"
    return sorted(p.name for p in d.iterdir()) if d.is_dir() else []


def test_a_new_handle_reads_the_saved_manifest_not_the_catalog(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with Zoo.open(root) as z:
        seeds = _seeds(z)
        ids = z.population("p").ids()
        _equal(z.population("p").stack(), _want(ids, seeds))
    assert _files(root) == [f"pop1-r0-l0-n12-m{max(ids)}.npz"]

    def no_catalog(self: TensorReader, c: object, q: object) -> None:
        raise AssertionError("the manifest was read from the catalog")

    monkeypatch.setattr(TensorReader, "_manifest", no_catalog)
    with Zoo.open(root) as z:
        _equal(z.population("p").stack(), _want(ids, seeds))
        sub = z.models().population("p").metric("test_acc", ">=", 0.5)
        _equal(sub.stack(names=["b"]), {"b": _want(sub.ids(), seeds)["b"]})
        picked = [ids[5], ids[0], ids[5], ids[11]]
        _equal(z.stack(picked), _want(picked, seeds))


def test_appends_removals_gc_and_repack_make_the_file_stale(root: Path) -> None:
    with Zoo.open(root) as z:
        z.population("p").stack()
        first = _files(root)
        new = z.add(_state(999), population="p")
        seeds = {**_seeds(z), new.id: 999}
        ids = z.population("p").ids()
        _equal(z.population("p").stack(), _want(ids, seeds))  # the appended model is there
        assert _files(root) == first  # one model is under a tenth of the file: grown in memory, not saved yet
        more = z.add_many([NewModel(_state(900 + s), population="p") for s in range(2)])
        seeds.update({m.id: 900 + s for s, m in enumerate(more)})
        ids = z.population("p").ids()
        _equal(z.population("p").stack(), _want(ids, seeds))
        second = _files(root)
        assert second != first and len(second) == 1  # a new key; the older file removed
        z.remove([ids[0], ids[3]], force=True)
        rest = [i for i in ids if i not in (ids[0], ids[3])]
        _equal(z.population("p").stack(), _want(rest, seeds))
        z.gc(grace_seconds=0, compact_below=0.99)
        z.repack("p")
        with Zoo.open(root) as z2:
            _equal(z2.population("p").stack(), _want(rest, seeds))
            _equal(z2.stack(rest[::-1]), _want(rest[::-1], seeds))
        assert z.verify().ok


def test_after_an_append_the_saved_manifest_grows_by_the_new_models_rows_only(root: Path, monkeypatch) -> None:
    """The first stack after a write reads the catalog rows of the added models only, not the population's."""
    with Zoo.open(root) as z:
        z.population("p").stack()  # saves n12
        added = z.add_many([NewModel(_state(500 + s), population="p") for s in range(3)])
        seeds = {**_seeds(z), **{m.id: 500 + s for s, m in enumerate(added)}}
    read: list[int] = []
    real = TensorReader._manifest

    def counting(self: TensorReader, c: object, q: object) -> tuple | None:
        cols = real(self, c, q)
        read.append(0 if cols is None else len(cols[0]))
        return cols

    monkeypatch.setattr(TensorReader, "_manifest", counting)
    with Zoo.open(root) as z:
        ids = z.population("p").ids()
        _equal(z.population("p").stack(), _want(ids, seeds))
        _equal(z.stack(ids[::-1]), _want(ids[::-1], seeds))
    assert read == [3 * 2]  # three new models x two tensors
    assert _files(root) == [f"pop1-r0-l0-n15-m{max(ids)}.npz"]  # the older file replaced
    read.clear()
    with Zoo.open(root) as z:
        _equal(z.population("p").stack(names=["b"]), {"b": _want(ids, seeds)["b"]})
        z.add(_state(600), population="p")  # under a tenth of the file's rows: grown in memory, not saved
        seeds[z.population("p").ids()[-1]] = 600
    assert read == []  # the grown file is the population's manifest now
    for _ in range(2):
        with Zoo.open(root) as z:
            ids = z.population("p").ids()
            _equal(z.population("p").stack(), _want(ids, seeds))
    assert read == [2, 2] and _files(root) == [f"pop1-r0-l0-n15-m{max(ids) - 1}.npz"]  # each process: the new rows only


def test_a_grown_manifest_that_does_not_add_up_falls_back_to_the_catalog(root: Path) -> None:
    """An older file whose count does not match the rows added since (as when a concurrent writer's lower
    id commits late) is not grown: the whole manifest is read again, and the stack stays right."""
    with Zoo.open(root) as z:
        z.population("p").stack()
        z.add(_state(700), population="p")
        seeds = {**_seeds(z), z.population("p").ids()[-1]: 700}
    (name,) = _files(root)
    d = root / "cache" / "manifests"
    (d / name).rename(d / name.replace("-n12-", "-n11-"))  # claims one model fewer than it holds
    with Zoo.open(root) as z:
        ids = z.population("p").ids()
        _equal(z.population("p").stack(), _want(ids, seeds))
        z.remove([ids[1]], force=True)  # a rewrite: no older file is grown across it
        rest = [i for i in ids if i != ids[1]]
        _equal(z.population("p").stack(), _want(rest, seeds))
    assert _files(root) == [f"pop1-r1-l0-n12-m{max(ids)}.npz"]


def test_gc_removes_stale_files_and_keeps_the_current_one(root: Path) -> None:
    with Zoo.open(root) as z:
        z.population("p").stack()
        d = root / "cache" / "manifests"
        (d / "pop1-r0-l0-n3-m3.npz").write_bytes(b"old")  # a stale key
        (d / "notes.txt").write_text("not a manifest")
        current = _files(root)
        dry = z.gc(dry_run=True)
        assert sorted(dry.cache_files_removed) == ["notes.txt", "pop1-r0-l0-n3-m3.npz"] and len(_files(root)) == 3
        rep = z.gc()
        assert sorted(rep.cache_files_removed) == ["notes.txt", "pop1-r0-l0-n3-m3.npz"]
        assert _files(root) == [f for f in current if f.startswith("pop1-r0-l0-n12")]
        assert "2 stale cache files" in str(rep)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "bad codes", "short column", "negative offset"])
def test_a_damaged_file_is_never_used(root: Path, damage: str) -> None:
    with Zoo.open(root) as z:
        seeds = _seeds(z)
        ids = z.population("p").ids()
        z.population("p").stack()
    (name,) = _files(root)
    path = root / "cache" / "manifests" / name
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[:200])
    elif damage == "garbage":
        path.write_bytes(os.urandom(4096))
    else:
        with np.load(path) as f:
            arrays = dict(f)
        if damage == "bad codes":
            arrays["pack_code"] = arrays["pack_code"] + 7
        elif damage == "short column":
            arrays["offset"] = arrays["offset"][:-1]
        else:
            arrays["offset"] = arrays["offset"] - 10**9
        with open(path, "wb") as fh:
            np.savez(fh, **arrays)
    key = PopulationKey.from_file_name(name)
    assert ManifestFiles(path.parent).load(key) is None and not path.exists()  # refused and dropped
    with Zoo.open(root) as z:
        _equal(z.population("p").stack(), _want(ids, seeds))  # read from the catalog again
    assert _files(root) == [name]  # and cached anew


def test_no_pickles_in_manifest_files(root: Path) -> None:
    with Zoo.open(root) as z:
        z.population("p").stack()
    (name,) = _files(root)
    with np.load(root / "cache" / "manifests" / name, allow_pickle=False) as f:
        assert all(f[k].dtype != object for k in f.files)


def test_a_read_only_cache_folder_is_skipped(root: Path) -> None:
    if os.geteuid() == 0:  # root ignores permission bits: make the folder a file instead
        (root / "cache").mkdir()
        (root / "cache" / "manifests").write_text("in the way")
    else:
        (root / "cache" / "manifests").mkdir(parents=True)
        os.chmod(root / "cache" / "manifests", 0o500)
    with Zoo.open(root) as z:
        _equal(z.population("p").stack(), _want(z.population("p").ids(), _seeds(z)))
        assert z.verify().ok


def test_small_populations_and_models_without_one_read_the_catalog(root: Path) -> None:
    with Zoo.open(root) as z:
        q = z.population("q").ids()
        loose = z.add(_state(7))  # no population
        z.population("q").stack()
        assert not _files(root)
        got = z.stack([loose.id, q[0]])
        _equal(got, {k: torch.stack([_state(7)[k], _state(100)[k]]) for k in ("w", "b")})


def test_manifest_check_refuses_inconsistent_columns() -> None:
    col = np.zeros(3, dtype=np.int64)
    ok = Manifest(col, col, col, col, col, col, ["w"], ["p"], [("float32", "[2]")])
    assert ok.check() is ok
    with pytest.raises(ValueError):
        Manifest(col, col + 1, col, col, col, col, ["w"], ["p"], [("float32", "[2]")]).check()
    with pytest.raises(ValueError):
        Manifest(col, col, col, col, col.astype(np.int32), col, ["w"], ["p"], [("float32", "[2]")]).check()
