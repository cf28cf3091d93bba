"""stack() is bit-identical to the stored tensors in every layout a zoo can have.

Layouts: one batch (zero-copy slice), many batches (one run per pack), a resumed build (the builder
skips what exists and writes the rest), interleaved populations (scattered rows), dedup'd tensors
(several models sharing one blob), after gc compaction and after repack; for whole populations,
filtered subsets, explicit id lists (any order, duplicates) and ``names=[...]``. Every test runs twice:
with manifests read from the catalog, and through the cached population manifests
(:mod:`zoo.store.manifests`), where a second handle on the zoo reads them from their files.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from zoo import NewModel, Zoo
from zoo.store.manifests import ManifestFiles

DTYPES = {"w": torch.float32, "b": torch.float64, "h": torch.float16, "bf": torch.bfloat16, "i": torch.int64, "m": torch.bool}


def _state(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    sd = {
        "w": torch.randn(6, 5, generator=g),
        "b": torch.randn(6, generator=g, dtype=torch.float64),
        "h": torch.randn(3, 3, generator=g).half(),
        "bf": torch.randn(7, generator=g).bfloat16(),
        "i": torch.randint(-1000, 1000, (4,), generator=g),
        "m": torch.rand(5, generator=g) > 0.5,
        "frozen": torch.ones(4),  # identical in every model: one shared blob
    }
    return sd


def _expected(z: Zoo, ids: list[int], names: list[str] | None = None) -> dict[str, torch.Tensor]:
    sds = [z.state_dict(i) for i in ids]
    keys = names if names is not None else list(sds[0])
    return {k: torch.stack([sd[k] for sd in sds]) for k in keys}


def _check(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert list(got) == list(want)
    for k in want:
        assert got[k].dtype == want[k].dtype, k
        assert got[k].shape == want[k].shape, k
        assert torch.equal(got[k], want[k]), k


def _all_views(z: Zoo, pop: str, truth: dict[int, dict[str, torch.Tensor]]) -> None:
    """Every way of stacking ``pop`` equals the original tensors."""
    ids = z.population(pop).ids()
    assert sorted(truth) == ids
    want = {k: torch.stack([truth[i][k] for i in ids]) for k in truth[ids[0]]}
    _check(z.population(pop).stack(), want)
    _check(z.stack(ids), want)
    odd = ids[1::2]
    _check(z.models().population(pop).ids_in(odd).stack(), {k: torch.stack([truth[i][k] for i in odd]) for k in want})
    shuffled = [ids[-1], ids[0], ids[len(ids) // 2], ids[0], *ids[2:5]]
    _check(z.stack(shuffled), {k: torch.stack([truth[i][k] for i in shuffled]) for k in want})
    two = list(want)[::-2][:2]  # two tensor names, asked in reverse: the result keeps state-dict order
    _check(z.stack(shuffled, names=two), {k: torch.stack([truth[i][k] for i in shuffled]) for k in list(want) if k in two})
    last = list(want)[-1]
    _check(z.population(pop).stack(names=[last]), {last: want[last]})
    _check(z.population(pop).stack(), _expected(z, ids))  # and the per-model read path agrees
    # writing into the stacked tensors never changes the store
    W = z.population(pop).stack()
    for v in W.values():
        v.zero_()
    sd = z.state_dict(ids[0])
    next(iter(sd.values())).zero_()
    _check(z.population(pop).stack(), want)
    _check(z.stack(ids[::2]), {k: v[::2] for k, v in want.items()})
    with Zoo.open(z.root, create=False) as fresh:  # a new handle: no in-memory manifests or locations
        _check(fresh.stack(shuffled), {k: torch.stack([truth[i][k] for i in shuffled]) for k in want})
        _check(fresh.population(pop).stack(), want)
        _check(fresh.models().population(pop).ids_in(odd).stack(names=two), {k: want[k][1::2] for k in want if k in two})


@pytest.fixture(autouse=True, params=["catalog", "manifest-cache"])
def manifest_source(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run each test with manifests from the catalog only, and with every population's manifest cached."""
    monkeypatch.setattr(ManifestFiles, "min_models", 10**9 if request.param == "catalog" else 1)
    return request.param


@pytest.fixture
def zoo(tmp_path: Path) -> Zoo:
    z = Zoo.open(tmp_path / "zoo")
    yield z
    z.close()


def test_one_batch_is_zero_copy_and_exact(zoo: Zoo) -> None:
    recs = zoo.add_many([NewModel(_state(s), population="p") for s in range(12)])
    truth = {r.id: _state(s) for s, r in enumerate(recs)}
    _all_views(zoo, "p", truth)
    W = zoo.population("p").stack(names=["w"])
    (pack,) = zoo.packs.list_files().values()

    def in_pack_map(ptr: int) -> bool:  # is this address inside a memory map of the pack file?
        for line in Path("/proc/self/maps").read_text().splitlines():
            parts = line.split()
            lo, hi = (int(x, 16) for x in parts[0].split("-"))
            if len(parts) >= 6 and parts[5] == str(pack.resolve()) and lo <= ptr < hi:
                return True
        return False

    if Path("/proc/self/maps").exists():
        assert in_pack_map(W["w"].data_ptr())  # zero copy: a view of the pack's memory map
        scattered = zoo.stack(zoo.population("p").ids()[::2], names=["w"])["w"]
        assert not in_pack_map(scattered.data_ptr())  # a gather: one new array


def test_many_batches_and_interleaved_populations(zoo: Zoo) -> None:
    truth: dict[str, dict[int, dict[str, torch.Tensor]]] = {"p": {}, "q": {}}
    seed = 0
    for batch in range(5):  # each batch interleaves two populations: rows of one name are scattered
        items, meta = [], []
        for j in range(4 + batch):
            pop = "p" if j % 2 == 0 else "q"
            items.append(NewModel(_state(seed), population=pop))
            meta.append((pop, seed))
            seed += 1
        for rec, (pop, s) in zip(zoo.add_many(items), meta, strict=True):
            truth[pop][rec.id] = _state(s)
    for pop in ("p", "q"):
        _all_views(zoo, pop, truth[pop])
    # both populations at once (ids from two populations in one call)
    both = sorted(truth["p"]) + sorted(truth["q"])
    _check(zoo.stack(both), {k: torch.stack([{**truth["p"], **truth["q"]}[i][k] for i in both]) for k in _state(0)})


def test_filtered_subsets_and_errors(zoo: Zoo) -> None:
    for batch in range(3):
        zoo.add_many([NewModel(_state(10 * batch + s), population="p", metrics={"test_acc": s / 10}) for s in range(8)])
    q = zoo.models().population("p").metric("test_acc", ">", 0.35)
    ids = q.ids()
    assert len(ids) == 12
    _check(q.stack(), _expected(zoo, ids))
    _check(q.stack(names=["bf"]), _expected(zoo, ids, ["bf"]))
    from zoo.errors import NotFoundError

    with pytest.raises(NotFoundError):
        zoo.stack([ids[0], 10_000])
    with pytest.raises(NotFoundError):
        zoo.population("p").stack(names=["nope"])
    assert zoo.stack([]) == {}


def test_resumed_build_then_gc_then_repack(zoo: Zoo) -> None:
    from zoo.build.builder import build
    from zoo.build.recipes import Recipe

    recipe = Recipe.from_dict({
        "name": "tiny", "arch": {"family": "mlp", "in_features": 64, "hidden": [8], "out_features": 10},
        "epochs": 2, "checkpoint_epochs": [1, 2], "search": {"mode": "grid", "seeds": 3, "params": {"lr": [1e-3, 3e-3]}},
    })  # fmt: skip
    build(zoo, recipe, progress=False, max_shard=4)  # 2 shards x 2 checkpoints: 4 packs
    zoo.remove(["tiny/00001/e002", "tiny/00004/e002", "tiny/00005/e001"], force=True)
    build(zoo, recipe, progress=False, max_shard=4)  # resumed: the missing checkpoints, in new packs
    ids = zoo.population("tiny").ids()
    assert len(ids) == 12
    truth = {i: zoo.state_dict(i) for i in ids}  # the per-model read path
    truth = {i: {k: v.clone() for k, v in sd.items()} for i, sd in truth.items()}
    _all_views(zoo, "tiny", truth)
    # remove a third, gc (with compaction of sparse packs): the rest stacks the same
    gone = ids[::3]
    zoo.remove(gone, force=True)
    g = zoo.gc(grace_seconds=0, compact_below=0.9)
    assert g.blobs_removed > 0
    rest = {i: t for i, t in truth.items() if i not in gone}
    _all_views(zoo, "tiny", rest)
    rep = zoo.repack("tiny")
    assert rep.repacked == ["tiny"]
    _all_views(zoo, "tiny", rest)
    assert zoo.verify().ok
