"""Store benchmarks, ours and the usual way side by side in one process run.

1. Load a 1,000-model population as stacked tensors: ``Population.stack()`` vs a folder of one
   safetensors file per model, loaded and stacked in a loop (target: >= 10x).
2. Ingest small (digits-MLP sized) checkpoints from a folder (target: >= 500 checkpoints/s).
3. A filter + join + aggregate query over a catalog of 100,000 models (target: median < 50 ms),
   ``Zoo.sql`` (DuckDB) vs the same SQL run directly on the SQLite catalog.

Run: ``python benchmarks/bench_store.py [--models 1000] [--catalog 100000]``. Prints a table and ratios.
"""

from __future__ import annotations

import argparse
import shutil
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from zoo import NewModel, Zoo
from zoo.models.architectures import init_state

MLP = {"family": "mlp", "in_features": 64, "hidden": [32], "out_features": 10}


def timeit(fn, repeat: int = 5) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def _nbytes(W: dict) -> int:
    return sum(v.numel() * v.element_size() for v in W.values())


def _memcpy(W: dict) -> None:
    """The floor: one copy of the same bytes into new memory."""
    for v in W.values():
        torch.empty_like(v).copy_(v)


def _file_copy(path: Path) -> None:
    """The floor of a first read: the same bytes copied out of a freshly mapped file (in the page cache)
    into new memory, as a fresh process's stack() does from its packs."""
    import numpy as np

    mm = np.memmap(path, dtype=np.uint8, mode="r")
    np.array(mm, copy=True)
    del mm


def bench_stack_case(tmp: Path, label: str, z: Zoo, query, repeat: int = 9) -> dict:
    """ours (cold: first stack on a fresh Zoo; warm: repeated) vs a folder of files, torch.load, memcpy."""
    ids = query.ids()
    W = query.stack()
    folder = tmp / f"files_{label}"
    folder.mkdir()
    sds = [{k: v[i].clone() for k, v in W.items()} for i in range(len(ids))]
    for i, sd in enumerate(sds):
        save_file(sd, str(folder / f"model_{i:05d}.safetensors"))
    torch.save({"ids": ids, "weights": {k: v.clone() for k, v in W.items()}}, tmp / f"{label}.pt")
    src = {k: v.clone() for k, v in W.items()}
    raw = tmp / f"{label}.bin"
    raw.write_bytes(b"".join(v.contiguous().numpy().tobytes() for v in src.values()))

    def usual():
        files = sorted(folder.glob("*.safetensors"))
        loaded = [load_file(str(f)) for f in files]
        return {k: torch.stack([d[k] for d in loaded]) for k in loaded[0]}

    def dataset_pt():
        return torch.load(tmp / f"{label}.pt", weights_only=True)["weights"]

    def cold(cached: bool = True):
        """The first stack on a fresh Zoo handle: with the population's cached manifest file (as every
        process after the first sees it), or with the cache removed (the first stack after a write)."""
        if not cached:
            shutil.rmtree(z.root / "cache", ignore_errors=True)
        z2 = Zoo.open(z.root, create=False)
        try:
            t = time.perf_counter()
            z2.stack(ids)
            return time.perf_counter() - t
        finally:
            z2.close()

    usual(), dataset_pt(), query.stack()  # warm the page cache
    res = {"label": label, "n": len(ids), "mb": _nbytes(W) / 1e6}
    for name, fn in (("usual", usual), ("dataset_pt", dataset_pt), ("ours", query.stack), ("memcpy", lambda: _memcpy(src)),
                     ("file_copy", lambda: _file_copy(raw))):
        res[name] = timeit(fn, repeat)[0]
    res["ours_touch"] = timeit(lambda: [v.sum() for v in query.stack().values()], repeat)[0]
    res["ours_cold_catalog"] = statistics.median(cold(cached=False) for _ in range(5))
    cold()  # writes the cache file
    res["ours_cold"] = statistics.median(cold() for _ in range(5))
    got = query.stack()
    assert all(torch.equal(got[k], v) for k, v in usual().items()), "stacked tensors differ"
    return res


def bench_after_write(z: Zoo, pop: str, label: str, folder_s: float, state: dict, repeat: int = 5) -> dict:
    """The first stack of ``pop`` on a fresh Zoo handle right after one model was appended to it (the
    population's saved manifest grows by the new model's rows), ``repeat`` times; against the folder time
    of the same population measured before (``folder_s``)."""
    arch = z.get(z.population(pop).ids()[0]).arch_config
    z.population(pop).stack()  # the current manifest is saved
    times = []
    for k in range(repeat):
        z.add(state, arch=arch, population=pop, name=f"{pop}-after-write-{k}", hparams={"k": k})
        z2 = Zoo.open(z.root, create=False)
        try:
            t = time.perf_counter()
            z2.population(pop).stack()
            times.append(time.perf_counter() - t)
        finally:
            z2.close()
    med = statistics.median(times)
    return {"label": label, "after_write": med, "usual": folder_s, "x_folder": folder_s / med}


def print_stack(r: dict) -> None:
    print(f"stack {r['label']} ({r['n']} models, {r['mb']:.1f} MB): folder {r['usual'] * 1e3:.1f} ms, torch.load "
          f"{r['dataset_pt'] * 1e3:.1f} ms, ours {r['ours'] * 1e3:.2f} ms (first on a fresh Zoo {r['ours_cold'] * 1e3:.1f} ms, "
          f"without the manifest cache {r['ours_cold_catalog'] * 1e3:.1f} ms, "
          f"+touching every byte {r['ours_touch'] * 1e3:.1f} ms), memcpy {r['memcpy'] * 1e3:.2f} ms -> "
          f"{r['usual'] / r['ours']:.1f}x folder, {r['ours'] / r['memcpy']:.2f}x memcpy "
          f"(cold {r['usual'] / r['ours_cold']:.1f}x folder, {r['ours_cold'] / r['memcpy']:.2f}x memcpy; uncached "
          f"{r['usual'] / r['ours_cold_catalog']:.1f}x folder, {r['ours_cold_catalog'] / r['memcpy']:.2f}x memcpy); "
          f"copy out of a fresh file map {r['file_copy'] * 1e3:.2f} ms: cold {r['ours_cold'] / r['file_copy']:.2f}x it")  # fmt: skip


def bench_stack(tmp: Path, n: int) -> dict:
    """A synthetic population of ``n`` digits MLPs written the way the builder writes (batches of
    ``n // 10``), and a filtered half of it."""
    z = Zoo.open(tmp / "zoo_stack")
    step = max(1, n // 10)
    for start in range(0, n, step):
        z.add_many([NewModel(init_state(MLP, s), arch=MLP, population="p", metrics={"test_acc": (s % 100) / 100})
                    for s in range(start, min(n, start + step))])  # fmt: skip
    out = [bench_stack_case(tmp, f"synthetic-{n}", z, z.population("p")),
           bench_stack_case(tmp, f"synthetic-{n}-half", z, z.models().population("p").metric("test_acc", ">=", 0.5))]
    after = bench_after_write(z, "p", f"synthetic-{n}", out[0]["usual"], init_state(MLP, 10**6))
    return {"cases": out, "after": after, "zoo": z}


def bench_demo(tmp: Path, demo: Path) -> list[dict]:
    """The demo's builder-written digits-mlp population (a copy), before and after ``repack``, and the first
    stack after each of five appends."""
    root = tmp / "demo"
    shutil.copytree(demo, root)
    z = Zoo.open(root, create=False)
    out = [bench_stack_case(tmp, "demo-digits-mlp", z, z.population("digits-mlp"))]
    z.repack("digits-mlp")
    out.append(bench_stack_case(tmp, "demo-digits-mlp-repacked", z, z.population("digits-mlp")))
    first = z.population("digits-mlp").ids()[0]
    out.append(bench_after_write(z, "digits-mlp", "demo-digits-mlp", out[0]["usual"], z.get(first).state_dict()))
    z.close()
    return out


def print_after_write(r: dict) -> None:
    print(f"stack {r['label']}, first on a fresh Zoo after appending one model: {r['after_write'] * 1e3:.1f} ms -> "
          f"{r['x_folder']:.1f}x folder ({r['usual'] * 1e3:.1f} ms)")  # fmt: skip


def bench_ingest(tmp: Path, n: int) -> dict:
    folder = tmp / "ingest"
    folder.mkdir()
    for i in range(n):
        save_file(init_state(MLP, 10_000 + i), str(folder / f"ckpt_{i:05d}.safetensors"))
    z = Zoo.open(tmp / "zoo_ingest")
    t = time.perf_counter()
    recs = z.ingest(folder, population="ingested", arch=MLP)
    dt = time.perf_counter() - t
    assert len(recs) == n
    z.close()
    return {"n": n, "seconds": dt, "ckpt_per_s": n / dt}


QUERY = """
select p.name as population, count(*) as n, avg(x.value) as mean_acc, max(x.value) as best
from models m
join populations p on p.id = m.population_id
join metrics x on x.model_id = m.id and x.name = 'acc' and x.split = 'test'
join hyperparameters h on h.model_id = m.id and h.name = 'lr'
where h.value_num < 0.005 and x.value > 0.5
group by p.name order by mean_acc desc
"""


def bench_query(tmp: Path, n: int) -> dict:
    z = Zoo.open(tmp / "zoo_query")
    g = torch.Generator().manual_seed(0)
    batch = 5000
    t0 = time.perf_counter()
    for start in range(0, n, batch):
        items = []
        for i in range(start, min(n, start + batch)):
            acc = float(torch.rand(1, generator=g))
            items.append(NewModel({"w": torch.tensor([float(i), acc])}, population=f"pop{i % 10}",
                                  metrics={"test_acc": acc, "test_loss": 1 - acc},
                                  hparams={"lr": 10 ** float(-4 * torch.rand(1, generator=g)), "seed": i}))  # fmt: skip
        z.add_many(items)
    build_s = time.perf_counter() - t0
    t = time.perf_counter()
    first = z.sql(QUERY)
    cold = time.perf_counter() - t
    times = []
    for _ in range(30):
        t = time.perf_counter()
        df = z.sql(QUERY)
        times.append(time.perf_counter() - t)
    con = sqlite3.connect(z.root / "catalog.db")
    stimes = []
    for _ in range(5):
        t = time.perf_counter()
        rows = con.execute(QUERY).fetchall()
        stimes.append(time.perf_counter() - t)
    assert len(rows) == len(df) == len(first) == 10
    # the first query after a write: one more model (appends: the snapshot reads only the new rows),
    # and after a tag removal (a rewrite: the snapshot is read whole, as every query after a write once did)
    after_add, after_rewrite = [], []
    for k in range(5):
        z.add({"w": torch.tensor([-1.0, 0.5])}, population="pop0", metrics={"test_acc": 0.5}, tags=["t"], name=f"extra{k}")
        t = time.perf_counter()
        z.sql(QUERY)
        after_add.append(time.perf_counter() - t)
        assert z._analytics.last_refresh == "appends"
        z.untag(f"extra{k}", "t")
        t = time.perf_counter()
        z.sql(QUERY)
        after_rewrite.append(time.perf_counter() - t)
    z.close()
    return {"models": n, "catalog_build_s": build_s, "first_query_s": cold, "median_ms": 1e3 * statistics.median(times),
            "sqlite_direct_median_ms": 1e3 * statistics.median(stimes),
            "after_add_ms": 1e3 * statistics.median(after_add), "after_rewrite_ms": 1e3 * statistics.median(after_rewrite)}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", type=int, default=10_000)
    ap.add_argument("--catalog", type=int, default=100_000)
    ap.add_argument("--demo", default="/tmp/demozoo", help="a zoo built by `weightzoo demo` (copied, never written)")
    ap.add_argument("--skip-query", action="store_true")
    ap.add_argument("--only-query", action="store_true", help="only the SQL benchmark over --catalog models")
    args = ap.parse_args()
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        if args.only_query:
            q = bench_query(tmp, args.catalog)
            print_query(q)
            return
        if Path(args.demo, "catalog.db").exists():
            for r in bench_demo(tmp, Path(args.demo)):
                (print_after_write if "after_write" in r else print_stack)(r)
        s = bench_stack(tmp, args.models)
        for r in s["cases"]:
            print_stack(r)
        print_after_write(s["after"])
        s["zoo"].close()
        i = bench_ingest(tmp, min(args.models, 1000))
        print(f"ingest {i['n']} digits-MLP checkpoints: {i['seconds']:.2f} s -> {i['ckpt_per_s']:.0f} ckpt/s")
        if args.skip_query:
            return
        print_query(bench_query(tmp, args.catalog))


def print_query(q: dict) -> None:
    print(f"query over {q['models']} models (catalog built in {q['catalog_build_s']:.0f} s): first {q['first_query_s'] * 1e3:.0f} ms "
          f"(loads the catalog), then median {q['median_ms']:.1f} ms; same SQL on SQLite directly: "
          f"{q['sqlite_direct_median_ms']:.1f} ms; first query after adding one model {q['after_add_ms']:.1f} ms, "
          f"after a rewrite (tag removed) {q['after_rewrite_ms']:.0f} ms")  # fmt: skip


if __name__ == "__main__":
    main()
