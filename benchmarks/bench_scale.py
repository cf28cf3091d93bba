"""Scale-out benchmarks (issue 13): packs in a bucket, builds on Ray, many writers on PostgreSQL.

1. ``stack``: stack a 1,000-model population (digits MLPs, written in 10 batches = 10 packs) from an S3
   bucket (moto's server on 127.0.0.1, through s3fs) vs from a local folder, on a fresh handle (cold:
   ranged reads, or an empty read cache that downloads whole packs) and again (warm: the read cache's
   memory maps). Every timed stack touches all its bytes (``sum()``), so lazy memory maps are paid for.
   Also a 100-model scattered subset: bytes fetched vs the packs' size. Targets: cold within 3x of local,
   warm equal to local.
2. ``build``: the demo recipe (digits-mlp, scaled with ``--build-n/--build-epochs``) in-process vs on a
   local Ray with 1 and 2 workers (and a 2-process pool), each worker one torch thread; Ray's start-up
   is timed apart. Target: 2 Ray workers no slower than in-process; the 1 -> 2 worker scaling.
3. ``writers``: 4 processes write 10,000 models (batches of ``--batch``) into one PostgreSQL catalog and
   one bucket at once vs one process writing the same into SQLite + a local folder: models/s, lost and
   duplicated models, ``verify``. Target: zero lost or duplicated.
4. ``learners``: a population-wide learner job, aligning the final checkpoints of a digits-mlp
   population (``--learners-n`` runs, default 200; or the population of ``--learners-root``) to its first
   model by weight matching (``analysis.align.canonicalize``: stack, align, write 200 models with lineage;
   no evaluation), in-process vs a 2-process pool vs a local Ray with 2 workers, each worker one torch
   thread; median of ``--repeat`` runs (Ray's start-up and its first run timed apart); and sampling
   ``--samples`` models (default 2,000) from a flow generator trained on it. Checks that every executor
   wrote the same tensors.

Run: ``python benchmarks/bench_scale.py [--part stack|build|writers|learners|all] [--quick]``. Needs the dev extras
(s3fs, moto[server], ray, psycopg) and Debian's postgresql for part 3. Prints a table per part.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.pgserver import PgServer  # noqa: E402
from tests.s3server import S3Server  # noqa: E402
from zoo import NewModel, Zoo  # noqa: E402
from zoo.models.architectures import init_state  # noqa: E402

MLP = {"family": "mlp", "in_features": 64, "hidden": [32], "out_features": 10}


def touch(W: dict[str, torch.Tensor]) -> float:
    return float(sum(float(v.sum()) for v in W.values()))


def med(xs: list[float]) -> float:
    return statistics.median(xs)


# --------------------------------------------------------------------------------------------- 1. stack
def fill(z: Zoo, n: int, batches: int) -> None:
    per = n // batches
    for b in range(batches):
        z.add_many([NewModel(init_state(MLP, b * per + i), arch=MLP, population="pop") for i in range(per)])


def bench_stack(tmp: Path, s3: S3Server, n: int, repeat: int) -> None:
    local = tmp / "local"
    with Zoo.open(local) as z:
        fill(z, n, 10)
        ids = z.population("pop").ids()
        z.population("pop").stack()  # writes the manifest cache, as any first stack does (both sides alike)
    url = f"s3://{s3.new_bucket()}/zoo"
    remote = tmp / "remote"
    with Zoo.open(remote, packs=url, storage_options=s3.options) as z:
        fill(z, n, 10)
        z.population("pop").stack()
        pack_bytes = sum(i.size for i in z.packs.list_info().values())
    subset = ids[:: max(1, len(ids) // 100)][:100]
    rows = []

    def run(label: str, open_kw: dict, sel, cache: Path | None) -> None:
        cold, warm, fetched, reqs = [], [], 0, 0
        for _ in range(repeat):
            if cache is not None:
                shutil.rmtree(cache, ignore_errors=True)
            z = Zoo.open(**open_kw, **({"packs_cache": cache} if cache is not None else {}))
            t = time.perf_counter()
            W = z.stack(sel) if isinstance(sel, list) else z.population("pop").stack()
            touch(W)
            cold.append(time.perf_counter() - t)
            fetched = getattr(z.packs, "bytes_ranged", 0) + getattr(z.packs, "bytes_downloaded", 0)
            reqs = getattr(z.packs, "requests", 0)
            t = time.perf_counter()
            W = z.stack(sel) if isinstance(sel, list) else z.population("pop").stack()
            touch(W)
            warm.append(time.perf_counter() - t)
            z.close()
        rows.append((label, med(cold), min(cold), med(warm), min(warm), fetched, reqs))

    loc = {"root": local}
    rem = {"root": remote, "storage_options": s3.options}
    run(f"local folder, {n} models", loc, None, None)
    run(f"bucket, ranged reads, {n} models", rem, None, None)
    run(f"bucket + read cache, {n} models", rem, None, tmp / "cache")
    run(f"local folder, {len(subset)} scattered", loc, subset, None)
    run(f"bucket, ranged reads, {len(subset)} scattered", rem, subset, None)
    run(f"bucket + read cache, {len(subset)} scattered", rem, subset, tmp / "cache")
    floor = []  # the S3 server's own cost: the same bytes fetched with s3fs directly (no weightzoo)
    for _ in range(repeat):
        with Zoo.open(**rem) as z:
            fs, infos = z.packs.fs, z.packs.list_info()
            keys = [z.packs.path(p) for p in infos]
            t = time.perf_counter()
            got = fs.cat_ranges(keys, [0] * len(keys), [infos[p].size for p in infos])
            floor.append(time.perf_counter() - t)
            assert sum(len(g) for g in got) == pack_bytes
    rows.append(("floor: s3fs cat_ranges of the packs", med(floor), min(floor), float("nan"), float("nan"), pack_bytes,
                 len(keys)))  # fmt: skip
    print(f"\n## 1. stack from a bucket vs a local folder ({n} digits MLPs, 10 packs, {pack_bytes / 1e6:.1f} MB; "
          f"median of {repeat} fresh handles; each stack touches every byte)")  # fmt: skip
    print(f"{'case':42s} {'cold s':>8s} {'(min)':>7s} {'warm s':>8s} {'(min)':>7s} {'MB fetched':>11s} {'requests':>8s}")
    for r in rows:
        print(f"{r[0]:42s} {r[1]:8.3f} {r[2]:7.3f} {r[3]:8.3f} {r[4]:7.3f} {r[5] / 1e6:11.2f} {r[6]:8d}")
    base = {"full": rows[0], "subset": rows[3]}
    for r in rows:
        b = base["subset" if "scattered" in r[0] else "full"]
        if r is not b and not r[0].startswith("floor"):
            print(f"  {r[0]}: cold {r[1] / b[1]:.2f}x local, warm {r[3] / b[3]:.2f}x local")


# --------------------------------------------------------------------------------------------- 2. build
def bench_build(tmp: Path, n: int, epochs: int) -> None:
    from zoo.build.builder import build
    from zoo.build.recipes import Recipe

    recipe = Recipe.load("digits-mlp").scaled(n=n, epochs=epochs)
    torch.set_num_threads(1)
    rows = []

    def one(label: str, **kw) -> None:
        root = tmp / f"build-{len(rows)}"
        with Zoo.open(root) as z:
            t = time.perf_counter()
            rep = build(z, recipe, progress=False, **kw)
            rows.append((label, time.perf_counter() - t, rep.models_written))
        shutil.rmtree(root, ignore_errors=True)

    one("in-process, 1 shard, 1 thread", threads=1)
    torch.set_num_threads(2)
    one("in-process, 1 shard, 2 threads")
    torch.set_num_threads(1)
    one("in-process, 2 shards, 1 thread", max_shard=-(-n // 2))
    one("process pool, 2 workers", workers=2, executor="process")
    import ray

    t = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    ray_start = time.perf_counter() - t
    one("ray, 1 worker (1 shard)", workers=1, executor="ray")
    one("ray, 2 workers (2 shards)", workers=2, executor="ray")
    ray.shutdown()
    print(f"\n## 2. build digits-mlp (n={n}, epochs={epochs}) in-process vs Ray on this machine "
          f"(ray.init of a local 2-CPU Ray: {ray_start:.1f}s, not included below)")  # fmt: skip
    print(f"{'executor':34s} {'seconds':>8s} {'models':>7s} {'vs in-process (1 shard, 1 thread)':>35s}")
    for label, sec, m in rows:
        print(f"{label:34s} {sec:8.1f} {m:7d} {rows[0][1] / sec:34.2f}x")
    r1 = next(r for r in rows if r[0].startswith("ray, 1"))
    r2 = next(r for r in rows if r[0].startswith("ray, 2"))
    print(f"  Ray scaling 1 -> 2 workers: {r1[1] / r2[1]:.2f}x")


# --------------------------------------------------------------------------------------------- 4. learners
def bench_learners(tmp: Path, n: int, epochs: int, repeat: int, root: str | None, samples: int) -> None:
    from analysis.align import canonicalize
    from zoo.build.builder import build
    from zoo.build.recipes import Recipe
    from zoo.store.hashing import tensor_id

    torch.set_num_threads(1)
    if root is None:
        root = str(tmp / "learners")
        with Zoo.open(root) as z:
            t = time.perf_counter()
            build(z, Recipe.load("digits-mlp").scaled(n=n, epochs=epochs), progress=False, threads=1)
            print(f"\n(built digits-mlp n={n} epochs={epochs} in {time.perf_counter() - t:.1f}s)")
    rows, hashes = [], {}
    with Zoo.open(root) as z:
        ids = z.population("digits-mlp").final().ids()
        ref = ids[0]  # aligned to itself too, as `weightzoo align --from digits-mlp --final REF` does

        def one(label: str, times: int, **kw) -> None:
            secs = []
            for _ in range(times):
                pop = f"bench-align/{len(rows)}-{len(secs)}"
                t = time.perf_counter()
                recs = canonicalize(z, ids, ref, population=pop, evaluate=False, **kw)
                secs.append(time.perf_counter() - t)
            W = z.stack([r.id for r in recs])
            hashes[label] = {k: tensor_id(v) for k, v in W.items()}  # the aligned population, bit for bit
            rows.append((label, med(secs), min(secs), len(recs)))

        def sample(label: str, times: int, **kw) -> None:
            secs = []
            for _ in range(times):
                t = time.perf_counter()
                run = generators.sample(z, "bench-flow", n=samples, seed=0, evaluate=False, store=False, **kw)
                secs.append(time.perf_counter() - t)
            hashes["sample " + label] = {k: tensor_id(v) for k, v in run.samples.items()}
            srows.append((label, med(secs), min(secs), samples))

        import generators

        if "bench-flow" not in {r.name for r in z.models().op("train.generator")}:
            t = time.perf_counter()
            generators.train(z, "digits-mlp", "flow", name="bench-flow", params={"train_steps": 300}, threads=1)
            print(f"(trained the flow generator in {time.perf_counter() - t:.1f}s)")
        srows: list = []
        one("in-process", repeat)
        one("process pool, 2 workers", repeat, workers=2, executor="process")
        sample("in-process, 2 shards", repeat, executor="inprocess", workers=2)
        sample("in-process", repeat)
        sample("process pool, 2 workers", repeat, workers=2, executor="process")
        import ray

        t = time.perf_counter()
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
        ray_start = time.perf_counter() - t
        one("ray, 2 workers: first run", 1, workers=2, executor="ray")
        one("ray, 2 workers: later runs", repeat, workers=2, executor="ray")
        sample("ray, 2 workers", repeat, workers=2, executor="ray")
        ray.shutdown()
    same = all(h == hashes["in-process"] for k, h in hashes.items() if not k.startswith("sample "))
    same_s = all(h == hashes["sample in-process, 2 shards"] for k, h in hashes.items() if k.startswith("sample "))
    print(f"\n## 4. learner jobs: align {len(ids)} digits-mlp final checkpoints to model {ref} (weight matching, "
          f"stack + align + write, no evaluation); sample {samples} models from a flow generator (heun, default steps; "
          f"no evaluation, not stored); ray.init of a local 2-CPU Ray: {ray_start:.1f}s, not included below")  # fmt: skip
    print(f"{'job, executor':40s} {'median s':>9s} {'min s':>7s} {'models':>7s} {'vs in-process':>14s}")
    for what, rs in (("align", rows), ("sample", srows)):
        base = next(r for r in rs if r[0] == "in-process")[1]
        for label, sec, lo, m in rs:
            print(f"{what + ', ' + label:40s} {sec:9.2f} {lo:7.2f} {m:7d} {base / sec:13.2f}x")
    print(f"  every executor wrote the same aligned weights: {same}; the same samples (same shards): {same_s}")


# --------------------------------------------------------------------------------------------- 3. writers
WRITER = """
import json, os, sys, time, torch
from zoo import NewModel, Zoo
root, url, packs, opts, w, n, batch = sys.argv[1:8]
w, n, batch = int(w), int(n), int(batch)
kw = {"url": url} if url != "-" else {}
if packs != "-":
    kw.update(packs=packs, storage_options=json.loads(opts))
z = Zoo.open(root, **kw)
shared = torch.arange(64, dtype=torch.float32)
open(f"{root}.ready", "w").close()              # start together: wait until every writer is up
while not os.path.exists(sys.argv[8]):
    time.sleep(0.01)
t = time.time()
for b in range(0, n, batch):
    items = []
    for i in range(b, min(n, b + batch)):
        g = torch.Generator().manual_seed(w * 1_000_003 + i)
        items.append(NewModel({"w": torch.randn(32, 64, generator=g), "b": torch.randn(32, generator=g),
                               "shared": shared}, population="pw", name=f"w{w}/{i:05d}"))
    z.add_many(items)
print(json.dumps({"start": t, "end": time.time()}), flush=True)
"""


def run_writers(tmp: Path, url: str, packs: str, opts: dict, writers: int, total: int, batch: int) -> tuple[float, list]:
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    per = total // writers
    tmp.mkdir(parents=True, exist_ok=True)
    go = tmp / "go"
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(tmp / f"wr{w}"), url, packs, json.dumps(opts), str(w),
                               str(per), str(batch), str(go)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=env) for w in range(writers)]  # fmt: skip
    while not all((tmp / f"wr{w}.ready").exists() for w in range(writers)):
        if any(p.poll() not in (None, 0) for p in procs):
            break
        time.sleep(0.05)
    go.touch()
    outs = [p.communicate() for p in procs]
    for p, (_o, e) in zip(procs, outs, strict=True):
        if p.returncode != 0:
            raise SystemExit(f"a writer failed: {e[-2000:]}")
    spans = [json.loads(o.strip().splitlines()[-1]) for o, _ in outs]
    return max(s["end"] for s in spans) - min(s["start"] for s in spans), spans


def check(z: Zoo, total: int) -> dict:
    from sqlalchemy import func, select

    from zoo.store import schema as S

    with z.engine.connect() as c:
        models = c.execute(select(func.count()).select_from(S.Model)).scalar_one()
        names = c.execute(select(func.count(func.distinct(S.Model.name)))).scalar_one()
        blobs = c.execute(select(func.count()).select_from(S.Blob)).scalar_one()
    rep = z.verify(rehash=False)
    return {"models": models, "lost": total - names, "duplicated": models - names, "blobs": blobs,
            "expected_blobs": 2 * total + 1, "verify_ok": rep.ok, "orphans": len(rep.orphan_packs)}  # fmt: skip


def bench_writers(tmp: Path, s3: S3Server, total: int, batch: int, writers: int) -> None:
    pg = PgServer().start()
    if pg.url is None:
        print(f"\n## 3. writers: skipped ({pg.reason})")
        return
    try:
        rows = []
        # baseline: one process, SQLite + local folder
        wall, secs = run_writers(tmp / "sqlite", "-", "-", {}, 1, total, batch)
        with Zoo.open(tmp / "sqlite" / "wr0") as z:
            rows.append(("1 writer, SQLite + local folder", wall, secs, check(z, total)))
        # one process, PostgreSQL + bucket
        url, packs = pg.new_database(), f"s3://{s3.new_bucket()}/one"
        with Zoo.open(tmp / "pg1", url=url, packs=packs, storage_options=s3.options):
            pass
        wall, secs = run_writers(tmp / "pg1w", url, packs, s3.options, 1, total, batch)
        with Zoo.open(tmp / "pg1", url=url, storage_options=s3.options) as z:
            rows.append(("1 writer, PostgreSQL + bucket", wall, secs, check(z, total)))
        # N processes, PostgreSQL + bucket
        url, packs = pg.new_database(), f"s3://{s3.new_bucket()}/many"
        with Zoo.open(tmp / "pgn", url=url, packs=packs, storage_options=s3.options):
            pass
        wall, secs = run_writers(tmp / "pgnw", url, packs, s3.options, writers, total, batch)
        with Zoo.open(tmp / "pgn", url=url, storage_options=s3.options) as z:
            rows.append((f"{writers} writers, PostgreSQL + bucket", wall, secs, check(z, total)))
    finally:
        pg.stop()
    print(f"\n## 3. {total:,} model writes in batches of {batch} (3 tensors each, one shared by all)")
    print("(seconds: from the writers' common start, after interpreter start-up, to the last one's end)")
    print(f"{'case':36s} {'seconds':>8s} {'models/s':>9s} {'lost':>5s} {'dup':>4s} {'blobs ok':>8s} {'verify':>6s}")
    for label, span, _spans, c in rows:
        print(f"{label:36s} {span:8.1f} {total / span:9.0f} {c['lost']:5d} {c['duplicated']:4d} "
              f"{str(c['blobs'] == c['expected_blobs']):>8s} {str(c['verify_ok'] and not c['orphans']):>6s}")  # fmt: skip
    print(f"  {rows[2][0]} vs {rows[0][0]}: {rows[0][1] / rows[2][1]:.2f}x the writes/s; "
          f"vs {rows[1][0]}: {rows[1][1] / rows[2][1]:.2f}x")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--part", default="all", choices=["stack", "build", "learners", "writers", "all"])
    ap.add_argument("--quick", action="store_true", help="smaller sizes (a smoke run)")
    ap.add_argument("--models", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--build-n", type=int, default=300)
    ap.add_argument("--build-epochs", type=int, default=24)
    ap.add_argument("--learners-n", type=int, default=200, help="runs of the digits-mlp population to align")
    ap.add_argument("--learners-epochs", type=int, default=8)
    ap.add_argument("--learners-root", help="align the digits-mlp population of this zoo instead of building one")
    ap.add_argument("--samples", type=int, default=2000, help="models to sample from a flow generator (part learners)")
    ap.add_argument("--writes", type=int, default=10_000)
    ap.add_argument("--batch", type=int, default=10)
    ap.add_argument("--writers", type=int, default=4)
    a = ap.parse_args()
    if a.quick:
        a.models, a.repeat, a.build_n, a.build_epochs, a.writes = 200, 2, 40, 4, 400
        a.learners_n, a.learners_epochs, a.samples = 40, 2, 200
    torch.set_num_threads(1)
    print(f"bench_scale: {time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.1f} at start, torch {torch.__version__}")  # fmt: skip
    s3 = S3Server().start()
    if s3.endpoint is None:
        raise SystemExit(f"no S3 server: {s3.reason}")
    tmp = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    try:
        if a.part in ("stack", "all"):
            bench_stack(tmp, s3, a.models, a.repeat)
        if a.part in ("build", "all"):
            bench_build(tmp, a.build_n, a.build_epochs)
        if a.part in ("learners", "all"):
            bench_learners(tmp, a.learners_n, a.learners_epochs, a.repeat, a.learners_root, a.samples)
        if a.part in ("writers", "all"):
            bench_writers(tmp, s3, a.writes, a.batch, a.writers)
    finally:
        s3.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"load average at end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
