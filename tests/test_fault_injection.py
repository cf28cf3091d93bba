"""Kill a writer at each step of the write path, deterministically, and check what verify and gc see.

The write path (``Zoo.add_many`` -> ``PackStore.write``) calls ``zoo.store.packs.fault_hook(step)`` at each
step of :data:`zoo.store.packs.WRITE_STEPS`. A writer subprocess replaces the hook with one that
``os._exit``s at one step (no cleanup, no atexit, no rollback: as a power cut or SIGKILL would), then
the parent opens the zoo and checks: every committed model loads bit-exact, ``verify`` reports no
missing/corrupt data and at most the crashed writer's orphan (a temp file before the rename, a pack
file after it), ``gc`` spares an orphan younger than its grace period and removes it once older, and
new writes succeed. The same steps are also tested in-process with an exception (Ctrl-C, a bug):
then the writer cleans up after itself and the store is exactly as before.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import assert_same_state, catalog_counts, pack_files, run_python
from zoo import Zoo
from zoo.errors import NotFoundError
from zoo.store import packs as packs_mod
from zoo.store.packs import WRITE_STEPS
from zoo.store.records import NewModel

CRASH_RC = 77

WRITER = r"""
import os, sys
import torch
import zoo.store.packs
from zoo import Zoo
from zoo.store.records import NewModel

root, step = sys.argv[1], sys.argv[2]

def hook(s):
    if s == step:
        os._exit(77)   # die here: no cleanup, no rollback, no atexit

zoo.store.packs.fault_hook = hook
z = Zoo.open(root)
z.add_many([NewModel({"w": torch.full((64,), 100.0 + i), "shared": torch.ones(3)}, name=f"new{i}", population="p")
            for i in range(3)])
os._exit(0)
"""


def _base_states() -> list[dict[str, torch.Tensor]]:
    return [{"w": torch.full((64,), float(i)), "shared": torch.ones(3)} for i in range(2)]


@pytest.fixture
def base(tmp_path: Path) -> Path:
    """A zoo with two committed models (their "shared" tensor is the writer's too: dedup)."""
    root = tmp_path / "zoo"
    with Zoo.open(root) as z:
        z.add_many([NewModel(s, name=f"old{i}", population="p") for i, s in enumerate(_base_states())])
    return root


def _check_committed(z: Zoo, names: list[str], states: list[dict[str, torch.Tensor]]) -> None:
    for n, s in zip(names, states, strict=True):
        assert_same_state(z.state_dict(n), s)
    assert z.population("p").stack()["w"].shape[0] == z.population_info("p").n_models


def _new_states() -> list[dict[str, torch.Tensor]]:
    return [{"w": torch.full((64,), 100.0 + i), "shared": torch.ones(3)} for i in range(3)]


def _age(paths: list[Path], seconds: float = 7200) -> None:
    old = time.time() - seconds
    for p in paths:
        os.utime(p, (old, old))


@pytest.mark.parametrize("step", WRITE_STEPS)
def test_writer_killed_at_step(base: Path, step: str) -> None:
    proc = run_python(WRITER, str(base), step, timeout=180)
    assert proc.returncode == CRASH_RC, proc.stderr[-2000:]
    committed = step == "catalog.committed"
    with Zoo.open(base, create=False) as z:
        # every committed model loads; the crashed write is all there or not there at all
        _check_committed(z, ["old0", "old1"], _base_states())
        if committed:
            _check_committed(z, ["new0", "new1", "new2"], _new_states())
        else:
            assert z.summary()["models"] == 2
            with pytest.raises(NotFoundError):
                z.get("new0")
        # verify: nothing missing or corrupt; at most the crashed writer's orphan
        rep = z.verify()
        assert rep.ok and not rep.affected_models, rep
        assert rep.unreferenced_blobs == 0
        temp = [p for p in z.packs.list_temp()]
        if step in ("pack.temp_written", "pack.fsynced"):
            assert len(rep.temp_files) == 1 and rep.temp_files[0].endswith(".safetensors.part") and not rep.orphan_packs
        elif step in ("pack.renamed", "catalog.before_commit"):
            assert len(rep.orphan_packs) == 1 and not rep.temp_files
        else:
            assert not rep.orphan_packs and not rep.temp_files
        orphans = [z.packs.path(p) for p in rep.orphan_packs]
        # gc with the default grace period (1 h) spares a fresh orphan: its writer may still be committing
        g = z.gc()
        assert not g.orphans_removed and not g.temp_removed and g.blobs_removed == 0, g
        assert all(p.exists() for p in orphans + temp)
        # a new write succeeds beside the orphan
        extra = {"w": torch.full((64,), -1.0), "shared": torch.ones(3)}
        z.add(extra, name="after", population="p")
        # once older than the grace period, gc removes exactly the orphan
        _age(orphans + temp)
        g = z.gc()
        assert g.orphans_removed == [p.name.removesuffix(".safetensors") for p in orphans], g
        assert sorted(g.temp_removed) == sorted(p.name for p in temp), g
        assert not g.packs_removed and g.blobs_removed == 0
        rep = z.verify()
        assert rep.ok and not rep.orphan_packs and not rep.temp_files, rep
        _check_committed(z, ["old0", "old1", "after"], [*_base_states(), extra])
        if committed:
            _check_committed(z, ["new0", "new1", "new2"], _new_states())
        # and the write the crash interrupted can simply be run again
        if not committed:
            z.add_many([NewModel(s, name=f"new{i}", population="p") for i, s in enumerate(_new_states())])
            _check_committed(z, ["new0", "new1", "new2"], _new_states())
        assert z.verify().ok


@pytest.mark.parametrize("exc", [RuntimeError("injected"), KeyboardInterrupt()], ids=["error", "ctrl-c"])
@pytest.mark.parametrize("step", WRITE_STEPS)
def test_writer_interrupted_in_process_cleans_up(base: Path, monkeypatch, step: str, exc: BaseException) -> None:
    """An exception at any step before the commit leaves the store exactly as it was (no orphan either)."""

    def hook(s: str) -> None:
        if s == step:
            raise exc

    with Zoo.open(base, create=False) as z:
        before = catalog_counts(z), pack_files(base)
        monkeypatch.setattr(packs_mod, "fault_hook", hook)
        with pytest.raises(type(exc)):
            z.add_many([NewModel(s, name=f"new{i}", population="p") for i, s in enumerate(_new_states())])
        monkeypatch.undo()
        rep = z.verify()
        assert rep.ok and not rep.temp_files, rep
        if step == "catalog.committed":  # the commit happened: the models are there, whole
            _check_committed(z, ["new0", "new1", "new2"], _new_states())
            assert not rep.orphan_packs
        else:
            assert (catalog_counts(z), pack_files(base)) == before
            assert not rep.orphan_packs
        _check_committed(z, ["old0", "old1"], _base_states())
        z.add({"w": torch.zeros(64), "shared": torch.ones(3)}, name="after", population="p")
        assert z.verify().ok


def test_gc_compaction_killed_midway_keeps_every_model(base: Path) -> None:
    """gc's compaction writes a pack through the same path: a crash there loses nothing either."""
    with Zoo.open(base, create=False) as z:
        z.add_many([NewModel({"w": torch.full((4096,), float(i))}, name=f"big{i}") for i in range(4)])
        z.remove(["big0", "big1", "big2"])  # that pack is now mostly garbage: gc compacts it
    code = r"""
import os, sys
import zoo.store.packs
from zoo import Zoo
zoo.store.packs.fault_hook = lambda s: os._exit(77) if s == sys.argv[2] else None
Zoo.open(sys.argv[1]).gc(grace_seconds=0)
os._exit(0)
"""
    for step in ("pack.fsynced", "pack.renamed"):
        proc = run_python(code, str(base), step, timeout=180)
        assert proc.returncode == CRASH_RC, proc.stderr[-2000:]
        with Zoo.open(base, create=False) as z:
            assert torch.equal(z.state_dict("big3")["w"], torch.full((4096,), 3.0))
            _check_committed(z, ["old0", "old1"], _base_states())
            assert z.verify().ok
    with Zoo.open(base, create=False) as z:
        g = z.gc(grace_seconds=0)
        assert g.packs_compacted, g
        rep = z.verify()
        assert rep.ok and not rep.orphan_packs and not rep.temp_files, rep
        assert torch.equal(z.state_dict("big3")["w"], torch.full((4096,), 3.0))
