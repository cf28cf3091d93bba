"""``weightzoo demo``: build the embedded demo zoo from sklearn's bundled digits and summarise it.

The demo trains the built-in recipes ``digits-mlp`` (300 MLPs x 3 checkpoints, random training
hyperparameters) and ``digits-inr`` (one SIREN per digits training image), then prints the store's
summary, the test-accuracy distribution per checkpoint epoch, the INR fit quality and example
queries. Building is resumable: running the demo again only adds what is missing.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from zoo.build.builder import build
from zoo.build.recipes import Recipe

if TYPE_CHECKING:
    from zoo.facade import Zoo

DEMO_RECIPES = ("digits-mlp", "digits-inr")


def demo_recipes(quick: bool = False) -> list[Recipe]:
    """The demo's recipes (``quick``: 40 MLP runs of 8 epochs, 50 INRs of 100 steps)."""
    mlp, inr = Recipe.load("digits-mlp"), Recipe.load("digits-inr")
    if quick:
        mlp = mlp.scaled(n=40, epochs=8)
        mlp.name = "digits-mlp-quick"
        inr = inr.scaled(epochs=100)
        inr.inr = {**inr.inr, "n": 50}
        inr.name = "digits-inr-quick"
    return [mlp, inr]


def histogram(values: np.ndarray, bins: int = 10, lo: float = 0.0, hi: float = 1.0, width: int = 40) -> list[str]:
    """A text histogram (one line per bin)."""
    counts, edges = np.histogram(values, bins=bins, range=(lo, hi))
    top = max(int(counts.max()), 1)
    return [f"  {edges[i]:.2f}-{edges[i + 1]:.2f} {'#' * round(width * c / top):<{width}} {c}" for i, c in enumerate(counts)]


def run_demo(zoo: Zoo, *, quick: bool = False, progress: bool = True, out: Callable[[str], None] = print) -> dict:
    """Build (or complete) the demo zoo and print what is in it. Returns the numbers it printed."""
    t0 = time.perf_counter()
    results: dict = {"builds": []}
    for recipe in demo_recipes(quick):
        rep = build(zoo, recipe, progress=progress)
        out(str(rep))
        results["builds"].append(rep.__dict__)
        if rep.interrupted:
            out("interrupted: the zoo holds every checkpoint finished so far; run `weightzoo demo` again to resume")
            return results
    results["seconds"] = time.perf_counter() - t0
    mlp, inr = (r.name for r in demo_recipes(quick))
    s = zoo.summary()
    out(f"\nZoo at {s['root']}: {s['models']} models, {s['pack_bytes'] / 1e6:.1f} MB in {s['packs']} packs "
        f"(built in {results['seconds']:.0f}s)")  # fmt: skip
    acc = zoo.sql(
        "select m.step as epoch, x.value as acc from models m join populations p on p.id = m.population_id "
        f"join metrics x on x.model_id = m.id where p.name = '{mlp}' and x.name = 'acc' and x.split = 'test'"
    )
    results["test_acc"] = {}
    for epoch, grp in acc.groupby("epoch"):
        v = grp["acc"].to_numpy()
        q = np.quantile(v, [0.1, 0.5, 0.9])
        results["test_acc"][int(epoch)] = {"n": len(v), "mean": float(v.mean()), "p10": q[0], "median": q[1], "p90": q[2], "max": float(v.max())}
        out(f"\n{mlp}: test accuracy at epoch {epoch} (n={len(v)}): mean {v.mean():.3f}, "
            f"10%/50%/90% {q[0]:.3f}/{q[1]:.3f}/{q[2]:.3f}, best {v.max():.3f}")  # fmt: skip
    last = acc[acc["epoch"] == acc["epoch"].max()]["acc"].to_numpy()
    if len(last):
        out("\n".join(histogram(last)))
    psnr = zoo.sql(
        f"select x.value from metrics x join models m on m.id = x.model_id join populations p on p.id = m.population_id "
        f"where p.name = '{inr}' and x.name = 'psnr'"
    )["value"].to_numpy()
    if len(psnr):
        results["inr_psnr"] = {"n": len(psnr), "mean": float(psnr.mean()), "min": float(psnr.min())}
        out(f"\n{inr}: {len(psnr)} SIRENs, one per digits image; fit PSNR mean {psnr.mean():.1f} dB (min {psnr.min():.1f})")
    out(
        "\nTry:\n"
        "  weightzoo ls\n"
        f"  weightzoo ls -p {mlp} --final\n"
        "  weightzoo query \"select h.value_num as lr, x.value as test_acc from metrics x join hyperparameters h "
        "on h.model_id = x.model_id and h.name = 'lr' where x.name = 'acc' and x.split = 'test' order by test_acc desc limit 5\"\n"
        f"  python -c \"from zoo import Zoo; W = Zoo.open().population('{mlp}').final().stack(); print({{k: tuple(v.shape) for k, v in W.items()}})\"\n"
        "  weightzoo app            # the explorer (pip install 'weightzoo[app]')"
    )
    return results
