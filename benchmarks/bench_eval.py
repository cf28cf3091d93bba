"""Batched population evaluation vs the per-model nn.Module loop (and torch.func.vmap), side by side.

Evaluates N digits MLPs (64 -> 32 -> 10) on the digits test split (360 samples) three ways in one
process and prints the times and ratios:

- ``batched``: :func:`zoo.build.evaluate.evaluate_population` (stacked weights, one GEMM/bmm per layer);
- ``module loop``: :func:`zoo.build.evaluate.evaluate_module_loop` (instantiate each model as an
  ``nn.Module`` -- check, build, load_state_dict -- and run it), the naive way;
- ``prebuilt loop``: the same loop over modules built beforehand (forward + metrics only),
  a lower bound for any per-model loop;
- ``torch.func.vmap``: ``vmap(functional_call)`` over the stacked weights, PyTorch's own batching.

Usage: ``python benchmarks/bench_eval.py [--models 1000] [--repeats 5]``
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing


def _digits_test() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    d = load_digits()
    X = torch.tensor(d.data, dtype=torch.float32) / 16.0
    y = torch.tensor(d.target, dtype=torch.int64)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    return X[perm][1437:], y[perm][1437:]


def _best_time(fn: Callable[[], object], repeats: int) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return best, result


def main() -> None:
    from zoo.build.evaluate import evaluate_module_loop, evaluate_population
    from zoo.models.architectures import init_state, instantiate

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    config = {"family": "mlp", "in_features": 64, "hidden": [32], "out_features": 10}
    X, y = _digits_test()
    states = [init_state(config, seed) for seed in range(args.models)]
    params = {k: torch.stack([s[k] for s in states]) for k in states[0]}

    t_batched, res = _best_time(lambda: evaluate_population(config, params, X, y), args.repeats)
    t_loop, ref = _best_time(lambda: evaluate_module_loop(config, params, X, y), max(1, args.repeats // 2))

    modules = [instantiate(config, s) for s in states]

    def prebuilt() -> torch.Tensor:
        with torch.no_grad():
            return torch.stack([F.cross_entropy(m(X), y) for m in modules])

    t_prebuilt, loss_pre = _best_time(prebuilt, max(1, args.repeats // 2))

    base = modules[0]
    vparams = {k: v for k, v in params.items()}

    def vmapped() -> torch.Tensor:
        with torch.no_grad():
            out = torch.func.vmap(lambda p: torch.func.functional_call(base, p, (X,)))(vparams)
            return (
                F.cross_entropy(out.reshape(-1, 10), y.repeat(len(out)), reduction="none")
                .view(len(out), -1)
                .mean(1)
            )

    t_vmap, loss_vmap = _best_time(vmapped, args.repeats)

    assert torch.allclose(res.loss, ref.loss, atol=1e-5) and torch.allclose(res.accuracy, ref.accuracy)
    assert torch.allclose(res.loss, loss_pre, atol=1e-5) and torch.allclose(res.loss, loss_vmap, atol=1e-5)

    print(
        f"# {args.models} digits MLPs (64-32-10) on {len(y)} test samples; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, {platform.processor() or platform.machine()}"
    )
    print(f"{'method':<18}{'seconds':>10}{'models/s':>12}{'batched speed-up':>18}")
    for name, t in [
        ("batched", t_batched),
        ("torch.func.vmap", t_vmap),
        ("prebuilt loop", t_prebuilt),
        ("module loop", t_loop),
    ]:
        print(f"{name:<18}{t:>10.4f}{args.models / t:>12.0f}{t / t_batched:>17.1f}x")
    print(f"ratio module loop / batched = {t_loop / t_batched:.1f}x (target >= 20x)")


if __name__ == "__main__":
    main()
