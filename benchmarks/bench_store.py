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
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from zoo import NewModel, Zoo
from zoo.architectures import init_state

MLP = {"family": "mlp", "in_features": 64, "hidden": [32], "out_features": 10}


def timeit(fn, repeat: int = 5) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def bench_stack(tmp: Path, n: int) -> dict:
    sds = [init_state(MLP, s) for s in range(n)]
    folder = tmp / "files"
    folder.mkdir()
    for i, sd in enumerate(sds):
        save_file(sd, str(folder / f"model_{i:05d}.safetensors"))
    z = Zoo.open(tmp / "zoo_stack")
    z.add_many([NewModel(sd, arch=MLP, population="p") for sd in sds])
    pop = z.population("p")

    def usual():
        files = sorted(folder.glob("*.safetensors"))
        loaded = [load_file(str(f)) for f in files]
        return {k: torch.stack([d[k] for d in loaded]) for k in loaded[0]}

    def ours():
        return pop.stack()

    usual(), ours()  # warm the page cache for both
    t_usual, a = timeit(usual)
    t_ours, b = timeit(ours)
    assert all(torch.equal(a[k], b[k]) for k in a), "stacked tensors differ"
    z.close()
    return {"n": n, "usual_s": t_usual, "ours_s": t_ours, "speedup": t_usual / t_ours}


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
    z.close()
    return {"models": n, "catalog_build_s": build_s, "first_query_s": cold, "median_ms": 1e3 * statistics.median(times),
            "sqlite_direct_median_ms": 1e3 * statistics.median(stimes)}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", type=int, default=1000)
    ap.add_argument("--catalog", type=int, default=100_000)
    args = ap.parse_args()
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        s = bench_stack(tmp, args.models)
        print(f"stack {s['n']} models: usual loop {s['usual_s'] * 1e3:.1f} ms, Population.stack {s['ours_s'] * 1e3:.1f} ms "
              f"-> {s['speedup']:.1f}x")  # fmt: skip
        i = bench_ingest(tmp, args.models)
        print(f"ingest {i['n']} digits-MLP checkpoints: {i['seconds']:.2f} s -> {i['ckpt_per_s']:.0f} ckpt/s")
        q = bench_query(tmp, args.catalog)
        print(f"query over {q['models']} models (catalog built in {q['catalog_build_s']:.0f} s): first {q['first_query_s'] * 1e3:.0f} ms "
              f"(loads the catalog), then median {q['median_ms']:.1f} ms; same SQL on SQLite directly: "
              f"{q['sqlite_direct_median_ms']:.1f} ms")  # fmt: skip


if __name__ == "__main__":
    main()
