"""Weight generators on digits zoos: quality, novelty vs the memorisation baselines, and cost.

    python benchmarks/bench_generators.py --root /tmp/bench/zoo                  # mlp, cnn, inr; flow + diffusion
    python benchmarks/bench_generators.py --root /tmp/bench/zoo --arch mlp --seeds 0 1 2 --n 1000

For each architecture, method and seed: build the population if missing (recipes digits-mlp-seeds,
digits-cnn-seeds, digits-inr; the build time is reported), train a generator on all but the held-out
models, sample ``--n`` models unconditionally (INRs: class-conditional, an equal number per class),
evaluate every sample (test accuracy or PSNR + digit class, novelty after alignment against the
held-out seeds, near-copies, the Zeng et al. baselines) and time sampling 100 models separately.
Medians and 5th percentiles over all samples; nothing is selected. One JSON line per configuration on
stdout (and ``--out``), a summary table at the end. Numbers go into docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

ARCHS = {
    "mlp": {"population": "digits-mlp-seeds", "holdout": 50, "condition": None},
    "cnn": {"population": "digits-cnn-seeds", "holdout": 40, "condition": None},
    "inr": {"population": "digits-inr", "holdout": 50, "condition": "label"},
}


def ensure_population(z, name: str) -> float:
    from zoo.build.builder import build

    if name in {p.name for p in z.populations()} and z.population(name).count() > 0:
        return 0.0
    t0 = time.perf_counter()
    build(z, name, progress=False)
    return time.perf_counter() - t0


def run_one(z, arch: str, method: str, seed: int, n: int, params: dict) -> dict:
    import generators
    from generators.api import evaluation_context, generator_from_zoo
    from generators.evaluate import evaluate_run

    spec = ARCHS[arch]
    name = f"bench-{arch}-{method}-s{seed}-{int(time.time())}"
    t0 = time.perf_counter()
    rec = generators.train(z, spec["population"], method, name=name, holdout=spec["holdout"], condition=spec["condition"],
                           params=params, seed=seed, progress=False)  # fmt: skip
    t_train = time.perf_counter() - t0
    gen, rec = generator_from_zoo(z, rec.id)
    cond = None
    if spec["condition"]:
        classes = gen.cond_info_["classes"]
        cond = np.resize(np.asarray(classes), n)
    t0 = time.perf_counter()
    gen.sample(100, condition=None if cond is None else cond[:100], seed=seed + 1000)
    t_sample100, nfe = time.perf_counter() - t0, gen.nfe_
    t0 = time.perf_counter()
    samples = gen.sample(n, condition=cond, seed=seed)
    t_sample = time.perf_counter() - t0
    t0 = time.perf_counter()
    ctx = evaluation_context(z, gen, rec, seed=seed)
    res = evaluate_run(ctx, samples, classes=cond, n_baseline=100, seed=seed)
    t_eval = time.perf_counter() - t0
    s, v = res["summary"], res["verdict"]
    q = res["groups"]["samples"].scores["quality"]
    out = {"arch": arch, "method": method, "seed": seed, "n": n, "n_train": len(ctx.train_ids), "n_held_out": len(ctx.held_out_ids),
           "train_seconds": t_train, "sample100_seconds": t_sample100, "nfe_per_sample": nfe, "sample_seconds": t_sample,
           "eval_seconds": t_eval, "verdict": v, "summary": s,
           "train_median": v["train_quality_median"], "sample_median": float(np.median(q)),
           "sample_p5": float(np.quantile(q, 0.05)), "below_50": float(np.mean(q < 0.5))}  # fmt: skip
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", required=True)
    ap.add_argument("--arch", nargs="+", default=["mlp", "cnn", "inr"], choices=sorted(ARCHS))
    ap.add_argument("--method", nargs="+", default=["flow", "diffusion"], choices=["flow", "diffusion"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--train-steps", type=int, default=1500)
    ap.add_argument("--config", default="{}", help="extra generator options (JSON)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", help="append JSON lines here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from zoo import Zoo

    z = Zoo.open(args.root)
    print(json.dumps({"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(), "threads": args.threads,
                      "load": os.getloadavg(), "date": time.strftime("%Y-%m-%d %H:%M")}))  # fmt: skip
    rows = []
    for arch in args.arch:
        t_build = ensure_population(z, ARCHS[arch]["population"])
        for method in args.method:
            for seed in args.seeds:
                params = {"train_steps": args.train_steps, **json.loads(args.config)}
                row = run_one(z, arch, method, seed, args.n, params)
                row["build_seconds"], row["load"] = t_build, os.getloadavg()[0]
                rows.append(row)
                line = json.dumps(row, default=float)
                print(line, flush=True)
                if args.out:
                    with open(Path(args.out), "a") as fh:
                        fh.write(line + "\n")
    print(f"\n{'arch':<5}{'method':<10}{'seed':>5}{'train med':>10}{'sample med':>11}{'p5':>7}{'in range':>9}{'<50%':>6}"
          f"{'nov ratio':>10}{'near-copy':>10}{'vs noise':>9}{'verdict':>12}{'train s':>8}{'100 in s':>9}{'NFE':>5}")  # fmt: skip
    for r in rows:
        s, v = r["summary"]["samples"], r["verdict"]
        print(f"{r['arch']:<5}{r['method']:<10}{r['seed']:>5}{r['train_median']:>10.4f}{r['sample_median']:>11.4f}"
              f"{r['sample_p5']:>7.3f}{s['inside_train_range']:>9.1%}{r['below_50']:>6.1%}{v['novelty_ratio']:>10.2f}"
              f"{v['near_copy_fraction']:>10.1%}{v['quality_gain_vs_noise']:>+9.4f}{v['verdict']:>12}{r['train_seconds']:>8.1f}"
              f"{r['sample100_seconds']:>9.2f}{r['nfe_per_sample']:>5}")  # fmt: skip
        for k in ("averaged", "gaussian", "pca_gaussian", "interpolation", "noise_0.2", "noise_0.4", "held_out"):
            b = r["summary"][k]
            print(f"      {k:<14} quality med {b['quality_median']:.4f}  novelty med {b['novelty_median']:.3f}  "
                  f"ratio {b['novelty_ratio']:.2f}  near-copy {b['near_copy_fraction']:.1%}")
        if "class_match_fraction" in s:
            print(f"      class match {s['class_match_fraction']:.1%} (digit classifier test acc "
                  f"{v.get('digit_classifier_test_acc', float('nan')):.3f})")


if __name__ == "__main__":
    main()
