"""Landscape metrics, ours vs ``weightwatcher`` and ``pyhessian`` (PyPI), side by side on the same models.

Three parts, in one process:

1. **alpha vs WeightWatcher** on the same trained digits models (``--mlps`` MLPs 64-32-10 and
   ``--cnns`` CNNs 8-16 from the built-in recipes): WeightWatcher's ``analyze()`` per model vs our batched
   :func:`analysis.landscape.spectral.population_spectra` for all of them; per layer, where both fit,
   the difference of the alphas (layers of >= 20 eigenvalues, where both use the same estimator, and
   smaller ones, where WeightWatcher switches to its own small-sample heuristic), and whether
   WeightWatcher's alpha lies inside our bootstrap interval; time per model.
2. **spectral metrics of a 1,000-model population**: ``spectral_metrics(zoo, population)`` end to end
   (stack from the store, one batched SVD per layer, KS fits, 100 bootstrap replicates, metrics written),
   against a per-model loop of the same computation and against WeightWatcher's per-model time.
3. **Hessian trace vs PyHessian** on the same trained digits MLPs and the same batch of ``--samples``
   training inputs: the exact trace (``torch.autograd.functional.hessian``), PyHessian's
   ``hessian(model, criterion, data).trace(maxIter=P)`` and ours (Hutch++ and plain Hutchinson, all
   models batched) with the same number P of Hessian-vector products; relative errors over ``--reps``
   seeds, and times. Top eigenvalue: PyHessian's ``eigenvalues()`` vs ours vs exact.

The peers are benchmark-only, never dependencies: ``pip install weightwatcher pyhessian``.

Usage: ``python benchmarks/bench_landscape.py [--population-size 1000] [--mlps 100] [--cnns 20]
[--hessian-models 4] [--probes 100] [--reps 5] [--threads 1]``
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing


def _build(z, recipe: str, n: int, epochs: int | None = None) -> list[int]:
    from zoo.build.builder import build
    from zoo.build.recipes import Recipe

    r = Recipe.load(recipe).scaled(n=n, epochs=epochs)
    build(z, r, progress=False)
    return z.population(r.name).final().ids()


def _ww_alphas(models: list[torch.nn.Module]) -> tuple[list[dict[str, float]], float]:
    import weightwatcher as ww

    logging.getLogger("weightwatcher").setLevel(logging.ERROR)
    out, t0 = [], time.perf_counter()
    for m in models:
        with contextlib.redirect_stdout(io.StringIO()):  # WW prints "SMALL N PL FIT" per small layer
            df = ww.WeightWatcher(model=m).analyze()
        out.append({str(r["longname"]): (float(r["alpha"]) if r.get("status", "success") == "success" else math.nan,
                                          float(r["sv_max"]), float(r["stable_rank"])) for _, r in df.iterrows()})  # fmt: skip
    return out, (time.perf_counter() - t0) / len(models)


def part_alpha(z, ids: list[int], label: str) -> dict:
    from analysis.landscape.powerlaw import STATUS
    from analysis.landscape.spectral import population_spectra

    recs = z.records(ids)
    t0 = time.perf_counter()
    spectra = population_spectra(z.stack(ids), bootstrap=100)
    ours_s = (time.perf_counter() - t0) / len(ids)
    ww, ww_s = _ww_alphas([r.module() for r in recs])
    big, small, inside, both, ours_only, ww_only = [], [], 0, 0, 0, 0
    srank, ratio = [], {}
    for s in spectra:
        for k in range(len(ids)):
            w, sv_max, stable = ww[k].get(s.layer, (math.nan, math.nan, math.nan))
            srank.append(abs(float(s.stable_rank[k]) - stable) / stable)
            ratio.setdefault(s.kind, []).append(float(s.spectral_norm[k]) / sv_max)
            fitted = int(s.fit.status[k]) <= STATUS["small_sample"]
            if fitted and math.isfinite(w):
                both += 1
                a = float(s.fit.alpha[k])
                (big if int(s.fit.n_evals[k]) >= 20 else small).append(abs(a - w) / w)
                inside += float(s.fit.alpha_lo[k]) <= w <= float(s.fit.alpha_hi[k])
            elif fitted:
                ours_only += 1
            elif math.isfinite(w):
                ww_only += 1
    row = {"label": label, "models": len(ids), "layers": len(spectra), "both_fit": both, "ours_only": ours_only,
           "ww_only": ww_only, "big_n": len(big), "big_max_rel": max(big, default=math.nan),
           "small_n": len(small), "small_median_rel": statistics.median(small) if small else math.nan,
           "small_max_rel": max(small, default=math.nan), "ww_inside_ci": inside / both if both else math.nan,
           "ours_ms_per_model": 1e3 * ours_s, "ww_ms_per_model": 1e3 * ww_s}  # fmt: skip
    print(f"[alpha] {label}: {len(ids)} models x {len(spectra)} layers; both fit {both} layer-fits "
          f"(ours only {ours_only}, WeightWatcher only {ww_only})")
    print(f"        layers >= 20 eigenvalues: {len(big)} fits, max |ours - ww| / ww = {row['big_max_rel']:.2e}")
    print(f"        layers < 20 eigenvalues:  {len(small)} fits, median rel. diff {row['small_median_rel']:.3f}, "
          f"max {row['small_max_rel']:.3f}; WeightWatcher's alpha inside our 95% bootstrap interval: "
          f"{row['ww_inside_ci']:.1%} of all fits")
    print(f"        stable rank: max rel. difference {max(srank):.1e}; spectral norm ours / WeightWatcher's sv_max: "
          + ", ".join(f"{kind} {min(v):.4f}-{max(v):.4f}" for kind, v in ratio.items()))
    row["stable_rank_max_rel"] = max(srank)
    print(f"        time per model: ours {row['ours_ms_per_model']:.2f} ms (batched, 100 bootstrap replicates), "
          f"WeightWatcher {row['ww_ms_per_model']:.1f} ms (no bootstrap)")
    return row


def part_population(z, ids: list[int], ww_ms: float | None) -> dict:
    from analysis.landscape.metrics import spectral_metrics
    from analysis.landscape.powerlaw import fit_power_law

    n = len(ids)
    t0 = time.perf_counter()
    frame = spectral_metrics(z, ids, bootstrap=100)
    total = time.perf_counter() - t0
    t0 = time.perf_counter()
    W = z.stack(ids)
    t_stack = time.perf_counter() - t0
    # the per-model loop baseline (same maths, one model at a time), on a sample, extrapolated
    sample = ids[: max(1, min(n, 100))]
    t0 = time.perf_counter()
    for i in range(len(sample)):
        for name in ("layers.0.weight", "layers.1.weight"):
            ev = torch.linalg.svdvals(W[name][i]).double() ** 2
            fit_power_law(ev, bootstrap=100, seed=0)
    loop = (time.perf_counter() - t0) / len(sample) * n
    # without the bootstrap: the batched SVD + KS search alone, against the same per model
    from analysis.landscape.spectral import population_spectra

    t0 = time.perf_counter()
    population_spectra(W, bootstrap=0)
    batched0 = time.perf_counter() - t0
    t0 = time.perf_counter()
    for i in range(len(sample)):
        population_spectra({k: v[i : i + 1] for k, v in W.items()}, bootstrap=0)
    loop0 = (time.perf_counter() - t0) / len(sample) * n
    print(f"[population] without the bootstrap: batched {batched0:.3f} s, per-model loop {loop0:.2f} s (extrapolated) "
          f"-> {loop0 / batched0:.0f}x")
    row = {"models": n, "layer_fits": len(frame), "ours_s": total, "stack_s": t_stack, "loop_s_extrapolated": loop,
           "no_bootstrap_s": batched0, "no_bootstrap_loop_s": loop0,
           "ww_s_extrapolated": ww_ms * n / 1e3 if ww_ms else math.nan,
           "rows_written": frame.attrs.get("rows_written")}  # fmt: skip
    print(f"[population] spectral metrics of {n} models ({len(frame)} layer fits, 100 bootstrap replicates each, "
          f"{row['rows_written']} metric rows written): {total:.2f} s end to end (stack {t_stack:.2f} s); "
          f"per-model loop {loop:.1f} s (extrapolated from {len(sample)}) -> {loop / total:.1f}x faster"
          + (f"; WeightWatcher {row['ww_s_extrapolated']:.1f} s (extrapolated from part 1, no bootstrap) -> "
             f"{row['ww_s_extrapolated'] / total:.1f}x" if ww_ms else ""))
    return row


def part_hessian(states: list[dict[str, torch.Tensor]], cfg: dict, samples: int, probes: int, reps: int) -> dict:
    from pyhessian import hessian as PyHessian
    from torch.autograd.functional import hessian

    from analysis.landscape.hessian import population_loss, sharpness, split_params
    from zoo.models.architectures import instantiate
    from zoo.models.datasets import load_dataset

    ds = load_dataset("digits").flat()
    idx = torch.randperm(len(ds.X_train), generator=torch.Generator().manual_seed(0))[:samples].sort().values
    X, y = ds.X_train[idx].float(), ds.y_train[idx]
    exact_tr, exact_top, t_exact = [], [], 0.0
    for st in states:
        tr_, buf = split_params(cfg, {k: v.unsqueeze(0) for k, v in st.items()})
        names, shapes = list(tr_), [tr_[k].shape[1:] for k in tr_]
        sizes = [int(np.prod(s)) for s in shapes]
        loss = population_loss(cfg, buf, X, y)

        def f(flat, names=names, shapes=shapes, sizes=sizes, loss=loss):
            return loss({k: p.view(1, *s) for k, p, s in zip(names, torch.split(flat, sizes), shapes, strict=True)})

        t0 = time.perf_counter()
        H = hessian(f, torch.cat([tr_[k].reshape(-1) for k in names]), vectorize=True).double()
        t_exact += time.perf_counter() - t0
        ev = torch.linalg.eigvalsh(H)
        exact_tr.append(H.trace().item())
        exact_top.append(ev[ev.abs().argmax()].item())
    stacked = {k: torch.stack([s[k] for s in states]) for k in states[0]}
    errs: dict[str, list[float]] = {"ours hutch++": [], "ours hutchinson": [], "pyhessian": []}
    times: dict[str, float] = dict.fromkeys(errs, 0.0)
    crit = torch.nn.CrossEntropyLoss()
    sharpness(cfg, stacked, X, y, probes=6, per_layer=False, iters=1)  # warm-up (torch.func's first use)
    PyHessian(instantiate(cfg, states[0]).eval(), crit, data=(X, y), cuda=False).trace(maxIter=2, tol=0.0)
    for rep in range(reps):
        for method in ("hutch++", "hutchinson"):
            t0 = time.perf_counter()
            est = sharpness(cfg, stacked, X, y, probes=probes, method=method, seed=rep, per_layer=False, iters=1)
            times[f"ours {method}"] += time.perf_counter() - t0
            errs[f"ours {method}"] += [est.trace[k].item() / exact_tr[k] - 1 for k in range(len(states))]
        for k, st in enumerate(states):
            torch.manual_seed(rep * 100 + k)
            model = instantiate(cfg, st)
            t0 = time.perf_counter()
            hc = PyHessian(model.eval(), crit, data=(X, y), cuda=False)
            tr = float(np.mean(hc.trace(maxIter=probes, tol=0.0)))
            times["pyhessian"] += time.perf_counter() - t0
            errs["pyhessian"].append(tr / exact_tr[k] - 1)
    t0 = time.perf_counter()
    est = sharpness(cfg, stacked, X, y, probes=2, method="hutchinson", iters=100, tol=1e-3, per_layer=False)
    t_ours_eig = time.perf_counter() - t0
    ph_top, t_ph_eig = [], 0.0
    for st in states:
        torch.manual_seed(0)
        t0 = time.perf_counter()
        hc = PyHessian(instantiate(cfg, st).eval(), crit, data=(X, y), cuda=False)
        ph_top.append(float(hc.eigenvalues(maxIter=100, tol=1e-3)[0][0]))
        t_ph_eig += time.perf_counter() - t0
    m = len(states)
    print(f"[hessian] {m} trained digits MLPs ({sum(sizes)} parameters), {samples} samples, {probes} Hessian-vector "
          f"products per estimate, {reps} seeds; exact traces {', '.join(f'{t:.3f}' for t in exact_tr)} "
          f"(exact Hessian {t_exact / m:.2f} s per model)")
    out = {"models": m, "params": sum(sizes), "samples": samples, "probes": probes, "reps": reps, "exact": exact_tr}
    for name, e in errs.items():
        rms = math.sqrt(statistics.fmean(x * x for x in e))
        worst = max(abs(x) for x in e)
        within = sum(abs(x) <= 0.05 for x in e) / len(e)
        out[name] = {"rms_rel_err": rms, "max_rel_err": worst, "within_5pct": within, "s_per_model": times[name] / (reps * m)}
        print(f"        {name:16s} rel. error rms {rms:.2%}, max {worst:.2%}, within 5%: {within:.0%}; "
              f"{times[name] / (reps * m):.3f} s per model")
    top_err_ours = max(abs(est.top_eig[k].item() / exact_top[k] - 1) for k in range(m))
    top_err_ph = max(abs(ph_top[k] / exact_top[k] - 1) for k in range(m))
    out["top_eig"] = {"ours_max_rel_err": top_err_ours, "pyhessian_max_rel_err": top_err_ph,
                      "ours_s_per_model": t_ours_eig / m, "pyhessian_s_per_model": t_ph_eig / m}  # fmt: skip
    print(f"        top eigenvalue: max rel. error ours {top_err_ours:.1e} ({t_ours_eig / m:.3f} s per model), "
          f"PyHessian {top_err_ph:.1e} ({t_ph_eig / m:.3f} s per model)")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--population-size", type=int, default=1000, help="models in the timing population (default 1000)")
    ap.add_argument("--mlps", type=int, default=100, help="digits MLPs for the alpha comparison (default 100)")
    ap.add_argument("--cnns", type=int, default=20, help="digits CNNs for the alpha comparison (default 20)")
    ap.add_argument("--hessian-models", type=int, default=4)
    ap.add_argument("--samples", type=int, default=512, help="batch of the Hessian (default 512)")
    ap.add_argument("--probes", type=int, default=100, help="Hessian-vector products per trace estimate (default 100)")
    ap.add_argument("--reps", type=int, default=5, help="seeds of the trace estimates (default 5)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--skip", default="", help="comma-separated parts to skip: alpha,population,hessian")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    skip = set(filter(None, args.skip.split(",")))
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cpus, torch {torch.__version__}, "
          f"{args.threads} thread(s); load average {os.getloadavg()[0]:.1f}")
    from zoo import Zoo

    with tempfile.TemporaryDirectory() as tmp, Zoo.open(Path(tmp) / "zoo") as z:
        ww_ms = None
        if "alpha" not in skip:
            t0 = time.perf_counter()
            mlps = _build(z, "digits-mlp", args.mlps)
            cnns = _build(z, "digits-cnn", args.cnns, epochs=10)
            print(f"(trained {len(mlps)} MLPs and {len(cnns)} CNNs in {time.perf_counter() - t0:.0f} s)")
            ww_ms = part_alpha(z, mlps, "digits-mlp 64-32-10")["ww_ms_per_model"]
            part_alpha(z, cnns, "digits-cnn 8-16")
        if "population" not in skip:
            n_runs = math.ceil(args.population_size / 3)
            t0 = time.perf_counter()
            _build(z, "digits-mlp", n_runs, epochs=6)  # 3 checkpoints per run
            ids = z.population("digits-mlp").ids()[: args.population_size]
            print(f"(population of {len(ids)} checkpoints ready in {time.perf_counter() - t0:.0f} s)")
            part_population(z, ids, ww_ms)
        if "hessian" not in skip:
            from zoo.build.training import TrainSpec, train_population
            from zoo.models.datasets import load_dataset

            cfg = {"family": "mlp", "in_features": 64, "hidden": [32], "out_features": 10}
            n = args.hessian_models
            ck = list(train_population(TrainSpec(config=cfg, n=n, seeds=list(range(n)), epochs=24, lr=5e-3),
                                       load_dataset("digits").flat(), progress=False))[-1]  # fmt: skip
            part_hessian([ck.model(i) for i in range(n)], cfg, args.samples, args.probes, args.reps)
    print(f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
