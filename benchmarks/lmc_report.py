"""Linear mode connectivity of digits MLPs of several widths: naive vs re-basin-aligned barriers.

Builds the built-in recipe ``digits-mlp-widths`` (widths 16, 64, 128, 512 x 8 seeds) into ``--root``
(a temporary folder by default; an existing build is reused), then for every width and every pair of
seeds (28 pairs) measures the loss barrier on the digits test split along the straight path from a to b
(naive) and from a to b aligned to a (weight matching by default). All pairs' interpolation points of a
width are evaluated as one stacked population; the aligned models of each reference are aligned as one
population. Prints: width, pairs, naive barrier mean+-std, aligned barrier mean+-std, ratio aligned/naive
(and the same for the accuracy barrier).

Usage: ``python benchmarks/lmc_report.py [--root DIR] [--points 25] [--method weight_matching] [--json]``
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from itertools import combinations
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

RECIPE = "digits-mlp-widths"


def _populations(zoo) -> dict[int, str]:
    out = {}
    for p in zoo.populations():
        if p.name.startswith(RECIPE + "/width=") and "/aligned" not in p.name:
            out[int(p.name.split("=", 1)[1])] = p.name
    return dict(sorted(out.items()))


def width_report(zoo, pop: str, *, points: int, method: str, X, y, data) -> dict:
    from analysis.align import align_population
    from analysis.lmc import lmc_curves

    ids = zoo.population(pop).ids()
    cfg = zoo.population(pop).config
    W = zoo.stack(ids)
    t0 = time.perf_counter()
    aligned_b: dict[tuple[int, int], dict[str, torch.Tensor]] = {}
    for i in range(len(ids) - 1):  # model i is the reference of every later model: one population per reference
        ref = {k: v[i] for k, v in W.items()}
        rest = {k: v[i + 1 :] for k, v in W.items()}
        res = align_population(rest, ref, method=method, config=cfg, data=data, seed=0)
        for j in range(i + 1, len(ids)):
            aligned_b[(i, j)] = res.model(j - i - 1)
    t_align = time.perf_counter() - t0
    pairs = list(combinations(range(len(ids)), 2))
    A = {k: torch.stack([W[k][i] for i, _ in pairs]) for k in W}
    B = {k: torch.stack([W[k][j] for _, j in pairs]) for k in W}
    Bal = {k: torch.stack([aligned_b[p][k] for p in pairs]) for k in W}
    t0 = time.perf_counter()
    naive = lmc_curves(cfg, A, B, X, y, points=points)
    aligned = lmc_curves(cfg, A, Bal, X, y, points=points)
    t_lmc = time.perf_counter() - t0
    nb = torch.tensor([c.loss_barrier for c in naive])
    ab = torch.tensor([c.loss_barrier for c in aligned])
    nab = torch.tensor([c.acc_barrier for c in naive])
    aab = torch.tensor([c.acc_barrier for c in aligned])
    return {
        "population": pop, "pairs": len(pairs), "points": points, "method": method,
        "naive_mean": float(nb.mean()), "naive_std": float(nb.std()),
        "aligned_mean": float(ab.mean()), "aligned_std": float(ab.std()),
        "ratio": float(ab.mean() / nb.mean()),
        "naive_acc_mean": float(nab.mean()), "aligned_acc_mean": float(aab.mean()),
        "test_acc_mean": float(torch.stack([c.acc[0] for c in naive] + [c.acc[-1] for c in naive]).mean()),
        "seconds_align": t_align, "seconds_lmc": t_lmc, "models_evaluated": 2 * len(pairs) * points,
    }  # fmt: skip


def main() -> None:
    from analysis.align import default_data
    from zoo import Zoo
    from zoo.build.builder import build
    from zoo.models.datasets import load_dataset

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", help="zoo root (default: a temporary folder; the recipe is built when missing)")
    ap.add_argument("--points", type=int, default=25)
    ap.add_argument("--method", default="weight_matching")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    tmp = None
    root = args.root
    if root is None:
        tmp = tempfile.TemporaryDirectory(prefix="lmc-report-")
        root = tmp.name
    z = Zoo.open(root)
    try:
        if len(_populations(z)) < 4:
            t0 = time.perf_counter()
            rep = build(z, RECIPE, progress=False)
            print(f"built {RECIPE} in {time.perf_counter() - t0:.1f}s: {rep}", file=sys.stderr)
        ds = load_dataset("digits").flat()
        X, y = ds.X_test, ds.y_test
        rows = []
        for width, pop in _populations(z).items():
            data = default_data(z.population(pop).config) if args.method == "activation_matching" else None
            r = width_report(z, pop, points=args.points, method=args.method, X=X, y=y, data=data)
            rows.append({"width": width, **r})
    finally:
        z.close()
        if tmp is not None:
            tmp.cleanup()
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(f"LMC on digits (test split), {args.points} points per path, alignment: {args.method}; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.2f}")  # fmt: skip
    print(f"{'width':>5s} {'pairs':>5s} {'test acc':>8s}  {'naive barrier':>15s}  {'aligned barrier':>15s}  {'ratio':>6s}"
          f"  {'acc barrier naive':>17s} {'aligned':>8s}  {'align s':>7s} {'lmc s':>6s}")  # fmt: skip
    for r in rows:
        print(f"{r['width']:5d} {r['pairs']:5d} {r['test_acc_mean']:8.4f}  {r['naive_mean']:7.4f}+-{r['naive_std']:.4f}  "
              f"{r['aligned_mean']:7.4f}+-{r['aligned_std']:.4f}  {r['ratio']:6.3f}  {r['naive_acc_mean']:17.4f} "
              f"{r['aligned_acc_mean']:8.4f}  {r['seconds_align']:7.2f} {r['seconds_lmc']:6.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
