"""Weight generators on digits zoos: quality, novelty vs the memorisation baselines, and cost.

    python benchmarks/bench_generators.py --root /tmp/bench/zoo                  # mlp, cnn, inr, inr-shared; flow + diffusion
    python benchmarks/bench_generators.py --root /tmp/bench/zoo --arch mlp --seeds 0 1 2 --n 1000 --temperatures 1.5
    python benchmarks/bench_generators.py --root /tmp/bench/zoo --arch mlp --method flow --inits   # + initialisations
    python benchmarks/bench_generators.py --root /tmp/bench/zoo --arch --acc-condition             # accuracy conditioning only

For each architecture, method and seed: build the population if missing (recipes digits-mlp-seeds,
digits-cnn-seeds, digits-inr; the build time is reported), train a generator on all but the held-out
models, sample ``--n`` models unconditionally (INRs: class-conditional, an equal number per class),
evaluate every sample (test accuracy or PSNR + digit class, novelty after alignment against the
held-out seeds, near-copies, the Zeng et al. baselines) and time sampling 100 models separately.
``--temperatures``: the same generator sampled (and evaluated) again at other temperatures.
``--acc-condition``: a generator conditioned on validation accuracy over the demo's mixed-hyperparameter
population (digits-mlp, final checkpoints), asked for the 95th percentile of the training models' validation
accuracy: the fraction of samples landing in the training models' top decile (validation and test).
``--inits``: generated models (of the mlp generator of each seed) as initialisations on shifted digits tasks.
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
    "cnn-shared": {"population": "digits-cnn-shared", "holdout": 50, "condition": None},
    "cnn-spawn": {"population": "digits-cnn-spawn", "holdout": 50, "condition": None, "needs": ["digits-cnn-trunk"]},
    "inr": {"population": "digits-inr", "holdout": 50, "condition": "label"},
    "inr-shared": {"population": "digits-inr-shared", "holdout": 50, "condition": "label"},
}
#: The shifted tasks of --inits: (corruption of every split, severity, fraction of the training split kept).
SHIFTS = [("gaussian_noise", 5, 1.0), ("rotate", 3, 1.0), (None, 3, 0.1)]


def ensure_population(z, name: str) -> float:
    from zoo.build.builder import build

    if name in {p.name for p in z.populations()} and z.population(name).count() > 0:
        return 0.0
    t0 = time.perf_counter()
    build(z, name, progress=False)
    return time.perf_counter() - t0


def _row(res: dict, q: np.ndarray) -> dict:
    s, v = res["summary"], res["verdict"]
    return {"verdict": v, "summary": s, "train_median": v["train_quality_median"], "sample_median": float(np.median(q)),
            "sample_p5": float(np.quantile(q, 0.05)), "below_50": float(np.mean(q < 0.5))}  # fmt: skip


def run_one(z, arch: str, method: str, seed: int, n: int, params: dict, temperatures: list[float]) -> list[dict]:
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
    ctx = evaluation_context(z, gen, rec, seed=seed)
    rows = []
    for temp in [1.0, *temperatures]:
        t0 = time.perf_counter()
        samples = gen.sample(n, condition=cond, seed=seed, temperature=temp)
        t_sample = time.perf_counter() - t0
        t0 = time.perf_counter()
        res = evaluate_run(ctx, samples, classes=cond, n_baseline=100, seed=seed)
        t_eval = time.perf_counter() - t0
        row = {"arch": arch, "method": method, "seed": seed, "n": n, "temperature": temp, "generator": rec.name,
               "n_train": len(ctx.train_ids), "n_held_out": len(ctx.held_out_ids), "train_seconds": t_train,
               "sample100_seconds": t_sample100, "nfe_per_sample": nfe, "sample_seconds": t_sample, "eval_seconds": t_eval,
               **_row(res, res["groups"]["samples"].scores["quality"])}  # fmt: skip
        rows.append(row)
    return rows


def run_acc_condition(z, seed: int, n: int, params: dict, guidances: list[float]) -> list[dict]:
    """Accuracy conditioning on the demo's mixed population: hit rate of the training models' top decile."""
    import generators
    from generators.api import generator_from_zoo
    from generators.evaluate import RunContext

    name = f"bench-acc-s{seed}-{int(time.time())}"
    t0 = time.perf_counter()
    rec = generators.train(z, "digits-mlp", "flow", name=name, condition="acc", holdout=30, params=params, seed=seed)
    t_train = time.perf_counter() - t0
    gen, rec = generator_from_zoo(z, rec.id)
    train_ids = sorted(e.parent for e in rec.parents() if e.role == "train")
    X = z.stack(train_ids)
    ctx = RunContext.build(gen.prep_, gen.arch_, X, train_ids)
    val = ctx.score(X, exclude_self=True)
    tv, tt = np.asarray(val["val_acc"]), np.asarray(val["quality"])
    top_v, top_t = np.quantile(tv, 0.9), np.quantile(tt, 0.9)
    ask = float(np.quantile(tv, 0.95))
    # Ceilings: how often the training models' own validation top decile is in their test top decile (validation
    # noise: 270 examples), and how many top-decile training models stay there once projected onto the latent.
    ceiling = {"train_val_top_in_test_top": float(np.mean(tt[tv >= top_v] >= top_t))}
    if gen.latent_ is not None:
        lat = gen.latent_
        proj = gen.prep_.inverse_transform(lat.inverse_transform(lat.transform(gen.prep_.flat(ctx.train).float())))
        _, yv = ctx.data.split("val")
        pv = (ctx.predictions(proj, "val") == yv).float().mean(1).numpy()
        ceiling["latent_top_kept"] = float(np.mean(pv[tv >= top_v] >= top_v))
    rows = []
    for g in guidances:
        samples = gen.sample(n, condition=ask, guidance=g, seed=seed)
        s = ctx.score(samples)
        va, te, hit = np.asarray(s["val_acc"]), np.asarray(s["quality"]), np.asarray(s["val_acc"]) >= top_v
        rows.append({"kind": "acc_condition", "seed": seed, "n": n, "n_train": len(train_ids), "ask_val_acc": ask,
                     "guidance": g, "top_decile_val": float(top_v), "top_decile_test": float(top_t),
                     "hit_val": float(np.mean(hit)), "hit_test": float(np.mean(te >= top_t)),
                     "sample_val_median": float(np.median(va)), "sample_test_median": float(np.median(te)),
                     "near_copy": float(np.mean(s["near_copy"])),
                     "near_copy_of_hits": float(np.mean(s["near_copy"][hit])) if hit.any() else float("nan"),
                     "distinct_nearest": int(len(np.unique(s["nearest"]))), **ceiling,
                     "novelty_median": float(np.median(s["novelty"])), "train_nn_median": float(ctx.train_nn().median()),
                     "train_seconds": t_train, "nfe_per_sample": gen.nfe_})  # fmt: skip
    return rows


def run_inits(z, generator: str, seed: int, n: int) -> list[dict]:
    from generators.api import finetune_inits

    rows = []
    for corruption, severity, fraction in SHIFTS:
        t0 = time.perf_counter()
        out = finetune_inits(z, generator, n=n, corruption=corruption, severity=severity, train_fraction=fraction,
                             seed=seed, store=False)  # fmt: skip
        rows.append({"kind": "inits", "seed": seed, "generator": generator, "task": out["task"], "target": out["target"],
                     "seconds": time.perf_counter() - t0,
                     "groups": {k: {kk: v[kk] for kk in ("epochs_to_target", "ratio", "vs_random", "start_test", "final_test")}
                                for k, v in out["groups"].items()}})  # fmt: skip
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", required=True)
    ap.add_argument("--arch", nargs="*", default=["mlp", "cnn", "cnn-shared", "cnn-spawn", "inr", "inr-shared"], choices=sorted(ARCHS))
    ap.add_argument("--method", nargs="+", default=["flow", "diffusion"], choices=["flow", "diffusion"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--temperatures", nargs="*", type=float, default=[], help="also sample at these temperatures")
    ap.add_argument("--config", default="{}", help="generator options (JSON; default: the shipped defaults)")
    ap.add_argument("--acc-condition", action="store_true", help="the accuracy-conditioning target on digits-mlp")
    ap.add_argument("--guidance", nargs="+", type=float, default=[1.0, 2.0])
    ap.add_argument("--acc-config", default=None, help="generator options of the --acc-condition runs (JSON; default --config)")
    ap.add_argument("--inits", action="store_true", help="generated initialisations on shifted tasks (mlp flow generators)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", help="append JSON lines here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from zoo import Zoo

    z = Zoo.open(args.root)
    print(json.dumps({"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(), "threads": args.threads,
                      "load": os.getloadavg(), "date": time.strftime("%Y-%m-%d %H:%M")}))  # fmt: skip

    def emit(row: dict) -> None:
        row["load"] = os.getloadavg()[0]
        line = json.dumps(row, default=float)
        print(line, flush=True)
        if args.out:
            with open(Path(args.out), "a") as fh:
                fh.write(line + "\n")

    rows, params = [], json.loads(args.config)
    for arch in args.arch:
        t_build = sum(ensure_population(z, p) for p in [*ARCHS[arch].get("needs", []), ARCHS[arch]["population"]])
        for method in args.method:
            for seed in args.seeds:
                for row in run_one(z, arch, method, seed, args.n, params, args.temperatures):
                    row["build_seconds"] = t_build
                    rows.append(row)
                    emit(row)
                if args.inits and arch == "mlp" and method == "flow":
                    for row in run_inits(z, rows[-1]["generator"], seed, 20):
                        emit(row)
                        print(f"  inits {row['task']}: target {row['target']:.4f}; " + "; ".join(
                            f"{k} {v['epochs_to_target']} ep (ratio {v['ratio']})" for k, v in row["groups"].items()))
    if args.acc_condition:
        t_build = ensure_population(z, "digits-mlp")
        for seed in args.seeds:
            acc_params = json.loads(args.acc_config) if args.acc_config else params
            for row in run_acc_condition(z, seed, min(args.n, 500), acc_params, args.guidance):
                row["params"] = acc_params
                row["build_seconds"] = t_build
                emit(row)
                print(f"  acc condition seed {seed} guidance {row['guidance']}: top-decile hit val {row['hit_val']:.1%} "
                      f"test {row['hit_test']:.1%} (samples' median val {row['sample_val_median']:.4f}); near-copies "
                      f"{row['near_copy']:.1%} ({row['near_copy_of_hits']:.1%} of the hits); ceilings: training models' val "
                      f"top decile in their test top decile {row['train_val_top_in_test_top']:.1%}, top-decile training "
                      f"models kept in it by the latent {row.get('latent_top_kept', float('nan')):.1%}")
    if rows:
        print(f"\n{'arch':<11}{'method':<10}{'seed':>5}{'T':>5}{'train med':>10}{'sample med':>11}{'p5':>7}{'in range':>9}"
              f"{'<50%':>6}{'nov ratio':>10}{'near-copy':>10}{'vs noise':>9}{'verdict':>12}{'train s':>8}{'100 in s':>9}{'NFE':>5}")  # fmt: skip
    for r in rows:
        s, v = r["summary"]["samples"], r["verdict"]
        print(f"{r['arch']:<11}{r['method']:<10}{r['seed']:>5}{r['temperature']:>5.2f}{r['train_median']:>10.4f}"
              f"{r['sample_median']:>11.4f}{r['sample_p5']:>7.3f}{s['inside_train_range']:>9.1%}{r['below_50']:>6.1%}"
              f"{v['novelty_ratio']:>10.2f}{v['near_copy_fraction']:>10.1%}{v['quality_gain_vs_noise']:>+9.4f}{v['verdict']:>12}"
              f"{r['train_seconds']:>8.1f}{r['sample100_seconds']:>9.2f}{r['nfe_per_sample']:>5}")  # fmt: skip
        for k in ("averaged", "gaussian", "pca_gaussian", "interpolation", "noise_0.2", "noise_0.4", "held_out"):
            b = r["summary"][k]
            print(f"      {k:<14} quality med {b['quality_median']:.4f}  novelty med {b['novelty_median']:.3f}  "
                  f"ratio {b['novelty_ratio']:.2f}  near-copy {b['near_copy_fraction']:.1%}")
        if "class_match_fraction" in s:
            print(f"      class match {s['class_match_fraction']:.1%} (digit classifier test acc "
                  f"{v.get('digit_classifier_test_acc', float('nan')):.3f})")


if __name__ == "__main__":
    main()
