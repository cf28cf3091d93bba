"""Weight matching, ours vs the ``rebasin`` package (PyPI), side by side on the same digits-MLP pairs.

Trains ``2 * pairs`` digits MLPs (64 -> WIDTH -> 10, the digits-mlp-widths recipe: Adam 1e-3, 30
epochs) in one batched run, then for each pair (a, b) aligns b to a with

- ``ours``: :func:`analysis.align.align` (weight matching, spec from the config);
- ``rebasin``: ``rebasin.PermutationCoordinateDescent(model_a, model_b, x).rebasin()`` (weight
  matching on a torchview-traced graph), timed end to end (tracing included) and the
  ``rebasin()`` call alone;

and prints per pair: best-of-``repeats`` time, L2 distance to a after alignment, and the loss barrier
on the digits test split of the naive, our and rebasin's aligned paths (all evaluated as one batched
population). Summary: time ratio (rebasin / ours), and our aligned barrier as a fraction of the naive one.

``rebasin`` is a benchmark-only peer, never a dependency; install it without touching torch:
``pip install -c <(echo torch==2.13.0) rebasin``.

Usage: ``python benchmarks/bench_align.py [--width 512] [--depth 1] [--pairs 4] [--repeats 3] [--threads N]``
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing


def _train(width: int, depth: int, n: int, epochs: int) -> tuple[dict, list[dict[str, torch.Tensor]], object]:
    from zoo.build.training import TrainSpec, train_population
    from zoo.models.datasets import load_dataset

    cfg = {"family": "mlp", "in_features": 64, "hidden": [width] * depth, "out_features": 10}
    ds = load_dataset("digits").flat()
    spec = TrainSpec(config=cfg, n=n, seeds=list(range(n)), epochs=epochs, lr=1e-3)
    ck = list(train_population(spec, ds, progress=False))[-1]
    return cfg, [{k: v.clone() for k, v in ck.model(i).items()} for i in range(n)], ds


def _l2(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return float(sum(((a[k].double() - b[k].double()) ** 2).sum() for k in a) ** 0.5)


def main() -> None:
    from analysis.align import align
    from analysis.lmc import lmc_curves
    from zoo.models.architectures import instantiate

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--width", type=int, default=512)
    ap.add_argument("--depth", type=int, default=1, help="hidden layers of WIDTH (default 1, the recipe's MLP)")
    ap.add_argument("--pairs", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--points", type=int, default=25)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        from rebasin import PermutationCoordinateDescent
    except ImportError:
        sys.exit("the peer is missing: pip install -c <(echo torch==2.13.0) rebasin")
    import rebasin

    print(f"machine: {platform.platform()}, {os.cpu_count()} CPUs, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads), rebasin {getattr(rebasin, '__version__', '0.0.47')}, "
          f"load average {os.getloadavg()[0]:.2f}")  # fmt: skip
    t0 = time.perf_counter()
    cfg, states, ds = _train(args.width, args.depth, 2 * args.pairs, args.epochs)
    print(f"trained {2 * args.pairs} digits MLPs 64-{'-'.join([str(args.width)] * args.depth)}-10 in {time.perf_counter() - t0:.1f}s\n")
    x = ds.X_train[:64]

    rows, ours_b, peer_b = [], [], []
    for i in range(args.pairs):
        a, b = states[2 * i], states[2 * i + 1]
        t_ours, res = float("inf"), None
        for r in range(args.repeats):
            t = time.perf_counter()
            out = align(b, a, config=cfg, seed=r)
            t_ours = min(t_ours, time.perf_counter() - t)
            res = out if res is None else res
        t_peer, t_peer_solve, peer_state = float("inf"), float("inf"), None
        for r in range(args.repeats):
            ma, mb = instantiate(cfg, a), instantiate(cfg, b)
            torch.manual_seed(r)  # rebasin draws its permutation order from torch's global generator
            t = time.perf_counter()
            pcd = PermutationCoordinateDescent(ma, mb, x)
            t_mid = time.perf_counter()
            pcd.rebasin()
            t_end = time.perf_counter()
            t_peer, t_peer_solve = min(t_peer, t_end - t), min(t_peer_solve, t_end - t_mid)
            if peer_state is None:
                peer_state = {k: v.detach().clone() for k, v in mb.state_dict().items()}
        ours_b.append(res.model(0))
        peer_b.append(peer_state)
        rows.append({"pair": i, "t_ours": t_ours, "t_peer": t_peer, "t_peer_solve": t_peer_solve,
                     "l2_naive": _l2(a, b), "l2_ours": float(res.distance_after[0]), "l2_peer": _l2(a, peer_state)})  # fmt: skip

    # the floor: one bare scipy assignment on pair 0's cost matrix (all a one-hidden-layer MLP needs)
    from scipy.optimize import linear_sum_assignment

    a0, b0 = states[0], states[1]
    cost = (a0["layers.0.weight"] @ b0["layers.0.weight"].T + torch.outer(a0["layers.0.bias"], b0["layers.0.bias"])
            + a0["layers.1.weight"].T @ b0["layers.1.weight"]).double().numpy() if args.depth == 1 else None  # fmt: skip
    t_lsa = float("inf")
    for _ in range(args.repeats if cost is not None else 0):
        t = time.perf_counter()
        linear_sum_assignment(cost, maximize=True)
        t_lsa = min(t_lsa, time.perf_counter() - t)

    # barriers: naive, ours, rebasin for every pair, as one population
    X, y = ds.X_test, ds.y_test
    k = args.pairs
    A = {n: torch.stack([states[2 * i][n] for i in range(k)] * 3) for n in states[0]}
    B = {n: torch.stack([states[2 * i + 1][n] for i in range(k)] + [s[n] for s in ours_b] + [s[n] for s in peer_b]) for n in states[0]}
    t = time.perf_counter()
    curves = lmc_curves(cfg, A, B, X, y, points=args.points)
    t_lmc = time.perf_counter() - t
    for i, r in enumerate(rows):
        r["b_naive"], r["b_ours"], r["b_peer"] = (curves[i].loss_barrier, curves[k + i].loss_barrier, curves[2 * k + i].loss_barrier)
        r["ab_naive"], r["ab_ours"], r["ab_peer"] = (curves[i].acc_barrier, curves[k + i].acc_barrier, curves[2 * k + i].acc_barrier)

    print(f"{'pair':>4s} {'ours ms':>8s} {'rebasin ms':>11s} {'(solve)':>8s} {'ratio':>6s}  {'L2 naive':>8s} {'L2 ours':>8s} "
          f"{'L2 rebasin':>10s}  {'barrier naive':>13s} {'ours':>7s} {'rebasin':>8s}")  # fmt: skip
    for r in rows:
        print(f"{r['pair']:4d} {1e3 * r['t_ours']:8.1f} {1e3 * r['t_peer']:11.1f} {1e3 * r['t_peer_solve']:8.1f} "
              f"{r['t_peer'] / r['t_ours']:6.1f}  {r['l2_naive']:8.3f} {r['l2_ours']:8.3f} {r['l2_peer']:10.3f}  "
              f"{r['b_naive']:13.4f} {r['b_ours']:7.4f} {r['b_peer']:8.4f}")  # fmt: skip
    mean = statistics.mean
    ratio = mean(r["t_peer"] for r in rows) / mean(r["t_ours"] for r in rows)
    ratio_solve = mean(r["t_peer_solve"] for r in rows) / mean(r["t_ours"] for r in rows)
    frac = mean(r["b_ours"] for r in rows) / mean(r["b_naive"] for r in rows)
    print(f"\ntime: ours {1e3 * mean(r['t_ours'] for r in rows):.1f} ms, rebasin {1e3 * mean(r['t_peer'] for r in rows):.1f} ms "
          f"end to end ({ratio:.1f}x slower; {ratio_solve:.1f}x for rebasin() alone)   [target: ours >= 5x faster]")  # fmt: skip
    if cost is not None:
        print(f"one bare scipy linear_sum_assignment on a pair's {cost.shape[0]}x{cost.shape[0]} cost matrix: "
              f"{1e3 * t_lsa:.1f} ms (a one-hidden-layer MLP needs one; rebasin solves it twice, to find and to confirm)")  # fmt: skip
    print(f"L2 after alignment: ours {mean(r['l2_ours'] for r in rows):.3f}, rebasin {mean(r['l2_peer'] for r in rows):.3f} "
          f"(naive {mean(r['l2_naive'] for r in rows):.3f})")  # fmt: skip
    print(f"loss barrier: naive {mean(r['b_naive'] for r in rows):.4f}, ours {mean(r['b_ours'] for r in rows):.4f}, "
          f"rebasin {mean(r['b_peer'] for r in rows):.4f}   [target: ours <= rebasin]")  # fmt: skip
    print(f"accuracy barrier: naive {mean(r['ab_naive'] for r in rows):.4f}, ours {mean(r['ab_ours'] for r in rows):.4f}, "
          f"rebasin {mean(r['ab_peer'] for r in rows):.4f}")  # fmt: skip
    print(f"our aligned loss barrier = {frac:.1%} of the naive barrier   [target: < 25%]")
    print(f"({3 * k * args.points} interpolated models evaluated as one population in {t_lmc * 1e3:.0f} ms)")


if __name__ == "__main__":
    main()
