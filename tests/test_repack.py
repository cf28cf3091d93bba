"""repack: one pack in stacking order, same content hashes, atomic (a crash at each step loses nothing)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from sqlalchemy import select

from tests.conftest import run_python
from zoo import NewModel, Zoo
from zoo.store import schema as S
from zoo.store.repack import REPACK_STEPS

CRASH_RC = 77


def _sd(i: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(i)
    return {"w": torch.randn(8, 4, generator=g), "b": torch.randn(8, generator=g, dtype=torch.float64), "f": torch.ones(3)}


def _build(root: Path) -> dict[str, dict[str, torch.Tensor]]:
    truth = {}
    with Zoo.open(root) as z:
        for batch in range(4):  # four small batches, the other population interleaved
            items = []
            for j in range(3):
                i = 10 * batch + j
                items.append(NewModel(_sd(i), population="p", name=f"m{i}"))
                truth[f"m{i}"] = _sd(i)
            items.append(NewModel({"x": torch.full((5,), float(batch))}, population="q", name=f"q{batch}"))
            truth[f"q{batch}"] = {"x": torch.full((5,), float(batch))}
            z.add_many(items)
    return truth


def _check(z: Zoo, truth: dict[str, dict[str, torch.Tensor]]) -> None:
    for name, sd in truth.items():
        got = z.state_dict(name)
        assert set(got) == set(sd) and all(torch.equal(got[k], sd[k]) and got[k].dtype == sd[k].dtype for k in sd), name
    ids = z.population("p").ids()
    W = z.population("p").stack()
    for k in ("w", "b", "f"):
        assert torch.equal(W[k], torch.stack([z.state_dict(i)[k] for i in ids]))
    rep = z.verify()
    assert not rep.missing_packs and not rep.corrupt_blobs, rep


def _hashes(z: Zoo) -> list[tuple]:
    with z.engine.connect() as c:
        return sorted(c.execute(select(S.TensorEntry.model_id, S.TensorEntry.name, S.TensorEntry.blob_id)).all())


def test_repack_one_pack_in_stacking_order(tmp_path: Path) -> None:
    root = tmp_path / "zoo"
    truth = _build(root)
    with Zoo.open(root) as z:
        before = _hashes(z)
        dry = z.repack("p", dry_run=True)
        assert dry.repacked == ["p"] and not dry.packs_written
        assert _hashes(z) == before
        rep = z.repack("p")
        assert rep.repacked == ["p"] and len(rep.packs_written) == 1
        # one slice each for w and b; f is one blob shared by all 12 models (dedup): 12 one-row reads
        assert rep.populations["p"]["runs_after"] == 2 + 12 < rep.populations["p"]["runs_before"]
        assert _hashes(z) == before  # every content hash kept
        _check(z, truth)
        # zero copy now: the whole population is one slice of the new pack per name
        with z.engine.connect() as c:
            packs = set(c.execute(select(S.Blob.pack_id).join(S.TensorEntry, S.TensorEntry.blob_id == S.Blob.id)
                                  .join(S.Model, S.Model.id == S.TensorEntry.model_id).join(S.Population)
                                  .where(S.Population.name == "p")).scalars())  # fmt: skip
        assert packs == set(rep.packs_written)
        again = z.repack("p")
        assert again.repacked == [] and not again.packs_written  # already in order: kept
        # the other population's blobs stayed where they were; gc --compact handles it too
        g = z.gc(grace_seconds=0, repack=True)
        assert g.repacked == ["q"]
        _check(z, truth)
        assert z.verify().ok
        z.add(_sd(99), population="p", name="late")  # writes still work and stack with the rest
        truth["late"] = _sd(99)
        _check(z, truth)


def test_repack_unknown_population(tmp_path: Path) -> None:
    from zoo.errors import NotFoundError

    with Zoo.open(tmp_path / "z") as z, pytest.raises(NotFoundError):
        z.repack("nope")


CODE = r"""
import os, sys
import zoo.store.packs
from zoo import Zoo
zoo.store.packs.fault_hook = lambda s: os._exit(77) if s == sys.argv[2] else None
Zoo.open(sys.argv[1]).repack("p")
os._exit(0)
"""


@pytest.mark.parametrize("step", REPACK_STEPS)
def test_repack_killed_at_each_step_keeps_every_model(tmp_path: Path, step: str) -> None:
    root = tmp_path / "zoo"
    truth = _build(root)
    with Zoo.open(root) as z:
        before = _hashes(z)
    proc = run_python(CODE, str(root), step, timeout=180)
    assert proc.returncode == CRASH_RC, proc.stderr[-2000:]
    with Zoo.open(root, create=False) as z:
        assert _hashes(z) == before
        _check(z, truth)  # old packs still in use before the commit, the new one after it
        rep = z.verify()
        committed = REPACK_STEPS.index(step) >= REPACK_STEPS.index("repack.catalog.committed")
        if not committed:
            assert len(rep.orphan_packs) + len(rep.temp_files) <= 1, rep
        z.gc(grace_seconds=0)
        rep = z.verify()
        assert rep.ok and not rep.orphan_packs and not rep.temp_files, rep
        _check(z, truth)
        z.repack("p")  # a repack after the crash completes
        _check(z, truth)
        assert z.population("p").stack()["w"].shape == (12, 8, 4)
