"""Effect sizes of the fine-tune changes of a labelled diff zoo (zoo.finetune), on digits.

Builds (in a temporary zoo unless --zoo is given) a parent population from the built-in recipe
``digits-mlp`` (``--parents-n`` random runs) and then the labelled diff zoo ``digits-mlp-diffs``
(``--children-of`` parents x 6 drawn children). For every child it measures its change's metric
(:func:`zoo.build.finetune.change_metric`) on the child and on its parent, and reports per change kind the
mean child - parent difference, beside the same difference for the null children of the same parents
measured on that change's metric (the control: what extra plain training does to it).

    python benchmarks/finetune_effects.py --parents-n 100 --children-of 60
"""

from __future__ import annotations

import argparse
import collections
import tempfile
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--zoo", help="zoo root (default: a temporary folder)")
    ap.add_argument("--parents-n", type=int, default=100)
    ap.add_argument("--children-of", type=int, default=60)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rank", type=int, default=0, help="> 0: low-rank (LoRA-style) children of this rank")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from zoo import Zoo
    from zoo.build.builder import build
    from zoo.build.finetune import EFFECT_METRICS, change_metric, change_of
    from zoo.build.recipes import Recipe
    from zoo.models.datasets import load_dataset

    z = Zoo.open(args.zoo or tempfile.mkdtemp(prefix="ft-effects-"))
    t0 = time.perf_counter()
    print(build(z, Recipe.load("digits-mlp").scaled(n=args.parents_n), progress=False))
    t1 = time.perf_counter()
    diffs = Recipe.load("digits-mlp-diffs").scaled(n=args.children_of)
    if args.rank:
        diffs.name = f"digits-mlp-diffs-r{args.rank}"
        diffs.search["params"]["rank"] = [args.rank]
    print(build(z, diffs, progress=False))
    t2 = time.perf_counter()
    print(f"parents {t1 - t0:.1f}s, children {t2 - t1:.1f}s")

    ds = load_dataset("digits").flat()
    recs = sorted(z.population(diffs.name).records(), key=lambda r: r.name)
    hps = {r.id: r.hparams() for r in recs}
    cfg = recs[0].arch_config
    W = z.stack([r.id for r in recs])
    parent_ids = sorted({hps[r.id]["parent"] for r in recs})
    P = z.stack(parent_ids)
    ppos = {p: i for i, p in enumerate(parent_ids)}
    nulls = [i for i, r in enumerate(recs) if hps[r.id]["change"] == "null"]
    null_par = [ppos[hps[recs[i].id]["parent"]] for i in nulls]
    rows: dict[str, list[tuple[float, float]]] = collections.defaultdict(list)
    clean = change_metric(cfg, W, ds, {"kind": "null"})
    clean_p = change_metric(cfg, P, ds, {"kind": "null"})
    drop: dict[str, list[float]] = collections.defaultdict(list)
    for i, r in enumerate(recs):
        ch = change_of(hps[r.id])
        j = ppos[hps[r.id]["parent"]]
        drop[ch["kind"]].append(float(clean[i] - clean_p[j]))
        if ch["kind"] == "null":
            continue
        v, vp = change_metric(cfg, W, ds, ch), change_metric(cfg, P, ds, ch)
        ctrl = float((v[nulls] - vp[null_par]).mean()) if nulls else float("nan")
        rows[ch["kind"]].append((float(v[i] - vp[j]), ctrl))
    print(f"\n{len(recs)} children of {len(parent_ids)} parents; {len(nulls)} null children\n")
    print(f"{'change':10} {'n':>4} {'metric':15} {'child-parent':>13} {'null control':>13} {'clean acc change':>17}")
    for kind in ("suppress", "boost", "swap", "robust", "backdoor", "null"):
        vals = rows.get(kind, [])
        d = sum(a for a, _ in vals) / len(vals) if vals else float("nan")
        c = sum(b for _, b in vals) / len(vals) if vals else float("nan")
        n = len(drop.get(kind, []))
        cd = sum(drop.get(kind, [])) / n if n else float("nan")
        print(f"{kind:10} {n:4d} {EFFECT_METRICS[kind]:15} {d:13.3f} {c:13.3f} {cd:17.3f}")


if __name__ == "__main__":
    main()
