"""Robust weight signatures on digits-c: how much of a robust fine-tune's gain a patch recovers, at what cost.

Builds (in a temporary zoo unless --root is given) for one family (``--family mlp`` or ``cnn``):

* ``P``: 6 clean parents (the seeds recipe of the family); the first 3 are the signature sources
  (the "3 seeds"), the other 3 are transfer targets of other seeds;
* ``P-subset``: 3 parents trained on random halves of the training split (other data subsets);
* ``P-wide``: 2 parents each of two other architectures whose first layer has the signature's shape
  (other widths of the deeper layers);
* ``R``: the built-in robust recipe (``digits-<family>-robust-mix``: per source parent one clean
  fine-tune and 9 robust fine-tunes on clean + corrupted data at severity 5, 6 epochs);
* ``R-all``: per source parent one fine-tune on the clean split plus its copies under all 9
  corruptions, 6 epochs (the "one model fine-tuned on all corruptions" of the issue).

Then it extracts signatures through the zoo (``analysis.rws.extract_signature``; sizes are the
stored rows' bytes) and evaluates, with the batched evaluation, clean test accuracy and digits-c
accuracy at severity 5 of: the clean fine-tune, the robust fine-tune, patched models across alpha,
layouts (layers x bits x granularity), without the projection, a random-direction control of the
same norm, K-way compositions against the all-corruption fine-tune, and transfers to the other
models without and with re-basin alignment (``analysis.align``).

Fraction of gain recovered: over the (parent, corruption) pairs whose robust fine-tune gains at least
``--min-gain`` under its corruption, sum(patched - clean) / sum(robust - clean) (pooled), with the
spread of the same ratio across the 3 source parents. Clean loss: clean test accuracy of the clean
fine-tune minus that of the patched model, in points, averaged over all pairs.

    python benchmarks/bench_rws.py --family mlp
    python benchmarks/bench_rws.py --family cnn
"""

from __future__ import annotations

import argparse
import statistics as st
import tempfile
import time
from collections import defaultdict
from typing import Any

import torch

SEV = 5
FAMILIES: dict[str, dict[str, Any]] = {
    "mlp": {
        "arch": {"family": "mlp", "in_features": 64, "hidden": [32], "out_features": 10},
        "parents": {"epochs": 24, "lr": 5e-3},
        "wide": [{"hidden": [32, 16]}, {"hidden": [32, 64]}],
        "robust": "digits-mlp-robust-mix",
    },
    "cnn": {
        "arch": {"family": "cnn", "in_channels": 1, "image_size": 8, "channels": [8, 16], "kernel_size": 3, "out_features": 10},
        "parents": {"epochs": 20, "lr": 1e-2},
        "wide": [{"channels": [8, 8]}, {"channels": [8, 32]}],
        "robust": "digits-cnn-robust-mix",
    },
}
ALPHAS = [0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0]
LAYOUTS = [  # (label, extract kwargs)
    ("1L fp32", {"layers": 1, "bits": None}),
    ("1L 8bit tensor", {"layers": 1, "bits": 8}),
    ("1L 8bit channel", {"layers": 1, "bits": 8, "granularity": "channel"}),
    ("1L 4bit tensor", {"layers": 1, "bits": 4}),
    ("1L 4bit channel", {"layers": 1, "bits": 4, "granularity": "channel"}),
    ("1L 2bit tensor", {"layers": 1, "bits": 2}),
    ("1L 2bit channel", {"layers": 1, "bits": 2, "granularity": "channel"}),
    ("2L fp32", {"layers": 2, "bits": None}),
    ("2L 8bit tensor", {"layers": 2, "bits": 8}),
    ("norm share 0.8, 8bit", {"norm_share": 0.8, "bits": 8}),
    ("all layers fp32", {"layers": -1, "bits": None}),
    ("1L fp32, no projection", {"layers": 1, "bits": None, "projection": False}),
    ("1L 8bit, no projection", {"layers": 1, "bits": 8, "projection": False}),
    ("all layers fp32, no projection", {"layers": -1, "bits": None, "projection": False}),
]
DEFAULT = "1L 8bit tensor"


def build_zoo(z: Any, fam: dict[str, Any], name: str) -> dict[str, Any]:
    from zoo.build.builder import build
    from zoo.build.recipes import Recipe

    arch, pp = fam["arch"], fam["parents"]

    def parents(pname: str, arch_: dict, seeds: int, **params: Any) -> None:
        build(z, Recipe.from_dict({"name": pname, "arch": arch_, "epochs": pp["epochs"], "batch_size": 64,
                                   "search": {"mode": "grid", "seeds": seeds, "params": {"lr": [pp["lr"]], **params}}}),
              progress=False)  # fmt: skip

    t0 = time.perf_counter()
    parents("P", arch, 6)
    parents("P-subset", arch, 3, data_fraction=[0.5])
    for i, w in enumerate(fam["wide"]):
        parents(f"P-wide{i}", dict(arch, **w), 2)
    t1 = time.perf_counter()
    robust = Recipe.load(fam["robust"]).to_dict()
    robust["name"] = "R"
    robust["finetune"]["parents"] = {"population": "P", "final": True, "limit": 3}
    build(z, Recipe.from_dict(robust), progress=False)
    t2 = time.perf_counter()
    all_ids = train_all_corruptions(z, Recipe.from_dict(robust))
    t3 = time.perf_counter()
    print(f"[{name}] built parents in {t1 - t0:.1f}s, 30 robust/clean fine-tunes in {t2 - t1:.1f}s, "
          f"3 all-corruption fine-tunes in {t3 - t2:.1f}s")  # fmt: skip
    return {"all": all_ids}


def train_all_corruptions(z: Any, recipe: Any) -> list[int]:
    """Per source parent, one fine-tune on the clean split plus all 9 corrupted copies (same epochs, lr)."""
    from zoo.build.finetune import shard_data
    from zoo.build.training import PerModelData, TrainSpec, train_population
    from zoo.models.datasets import DIGITS_C_CORRUPTIONS, load_dataset
    from zoo.store.records import NewModel

    src = sorted(z.population("P").final().records(), key=lambda r: r.name)[:3]
    cfg = src[0].arch_config
    ds = load_dataset("digits").for_architecture(cfg)
    changes = [{"kind": "robust", "corruption": c, "severity": SEV} for c in DIGITS_C_CORRUPTIONS]
    pool = shard_data(ds, changes, [0] * len(changes))
    n = len(src)
    data = PerModelData(X_train=pool.X_train, y_train=pool.y_train, X_val=ds.X_val, y_val=ds.y_val, X_test=ds.X_test,
                        y_test=ds.y_test, train_subsets=[torch.arange(len(pool.y_train))] * n,
                        train_labels=pool.y_train.expand(n, -1).clone())  # fmt: skip
    spec = TrainSpec(config=cfg, n=n, seeds=[0] * n, epochs=recipe.epochs, checkpoint_epochs=[recipe.epochs],
                     lr=float(recipe.search["params"]["lr"][0]), optimizer=recipe.optimizer, batch_size=recipe.batch_size)  # fmt: skip
    ckpt = list(train_population(spec, data, progress=False, init_params=z.stack([r.id for r in src])))[-1]
    change = {"kind": "robust", "corruption": "all", "severity": SEV, "mix": True}
    recs = z.add_many([NewModel({k: v[i] for k, v in ckpt.params.items()}, arch=cfg, population="R-all",
                                name=f"R-all/{i:05d}", parents={r.id: "base"}, op="finetune",
                                params={"change": change}, hparams={"change": "robust", "change_corruption": "all"})
                       for i, r in enumerate(src)])  # fmt: skip
    return [r.id for r in recs]


class Evaluator:
    """Collects labelled weight variants and evaluates them in batched passes (clean + 9 corruptions)."""

    def __init__(self, cfg: dict) -> None:
        self.cfg = cfg
        self.items: list[tuple[dict, dict]] = []

    def add(self, label: dict, state: dict) -> None:
        self.items.append((label, state))

    def run(self, chunk: int = 256) -> list[dict]:
        from analysis.rws import corruption_accuracy

        out = []
        for s in range(0, len(self.items), chunk):
            part = self.items[s : s + chunk]
            W = {k: torch.stack([st_[k] for _, st_ in part]) for k in part[0][1]}
            df = corruption_accuracy(self.cfg, W, corruptions="all", severities=[SEV])
            acc = {(int(m), c): a for m, c, a in zip(df["model"], df["corruption"], df["acc"], strict=True)}
            for i, (lab, _) in enumerate(part):
                out.append({**lab, **{c: a for (m, c), a in acc.items() if m == i}})
        self.items = []
        return out


def pooled(rows: list[dict], gain_of: dict, min_gain: float) -> tuple[float, float, int]:
    """(pooled fraction of the robust gain recovered, std of the per-parent pooled fractions, pairs used)."""
    by_p: dict[int, list[tuple[float, float]]] = defaultdict(list)
    for r in rows:
        g = gain_of[(r["p"], r["c"])]
        if g[1] - g[0] >= min_gain:
            by_p[r["p"]].append((r[r["c"]] - g[0], g[1] - g[0]))
    allp = [x for v in by_p.values() for x in v]
    if not allp:
        return float("nan"), float("nan"), 0
    frac = sum(a for a, _ in allp) / sum(b for _, b in allp)
    per = [sum(a for a, _ in v) / sum(b for _, b in v) for v in by_p.values()]
    return frac, (st.pstdev(per) if len(per) > 1 else 0.0), len(allp)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--family", choices=sorted(FAMILIES), default="mlp")
    ap.add_argument("--root", help="zoo root (default: a temporary folder); reused when it holds the build")
    ap.add_argument("--min-gain", type=float, default=0.05, help="pairs whose robust gain is below this are not pooled")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from analysis.rws import extract_signature, layers_of, load_signature, patch, unpatch
    from analysis.rws.patch import permute_signature
    from zoo import Zoo
    from zoo.models.datasets import DIGITS_C_CORRUPTIONS

    fam = FAMILIES[args.family]
    z = Zoo.open(args.root or tempfile.mkdtemp(prefix=f"rws-{args.family}-"))
    extra = {"all": z.population("R-all").ids()} if "R-all" in [p.name for p in z.populations()] else build_zoo(z, fam, args.family)
    cfg = z.population("P").config
    recs = sorted(z.population("R").records(), key=lambda r: r.name)
    hp = {r.id: r.hparams() for r in recs}
    src_parents = sorted({hp[r.id]["parent"] for r in recs})
    clean = {p: next(r for r in recs if hp[r.id]["parent"] == pid and hp[r.id]["change"] == "null") for p, pid in enumerate(src_parents)}
    robust = {(p, c): next(r for r in recs if hp[r.id]["parent"] == pid and hp[r.id].get("change_corruption") == c)
              for p, pid in enumerate(src_parents) for c in DIGITS_C_CORRUPTIONS}  # fmt: skip
    n_layers = len(layers_of(cfg, clean[0].state_dict()))

    # ---- signatures through the zoo
    t0 = time.perf_counter()
    sig: dict[tuple[str, int, str], Any] = {}
    sig_bytes: dict[str, int] = {}
    for label, kw in LAYOUTS:
        kw = dict(kw, layers=n_layers) if kw.get("layers") == -1 else kw
        for (p, c), r in robust.items():
            try:
                rec = z.get(f"{r.name}/bench-{label}")
            except Exception:
                rec = extract_signature(z, r.id, name=f"{r.name}/bench-{label}", **kw)
            sig[(label, p, c)] = load_signature(z, rec.id)
            sig_bytes[label] = rec.nbytes
    t_extract = (time.perf_counter() - t0) / len(sig)
    full_bytes = clean[0].nbytes

    # ---- variants
    ev = Evaluator(cfg)
    base_state = {p: clean[p].state_dict() for p in clean}
    for p in clean:
        ev.add({"v": "clean", "p": p}, base_state[p])
    for (p, c), r in robust.items():
        ev.add({"v": "robust", "p": p, "c": c}, r.state_dict())
    t0 = time.perf_counter()
    n_patch = 0
    max_err = 0.0
    for (p, c) in robust:
        for a in ALPHAS:
            ev.add({"v": f"alpha {a}", "p": p, "c": c}, patch(base_state[p], sig[(DEFAULT, p, c)], alpha=a, config=cfg))
            n_patch += 1
        for label, _ in LAYOUTS:
            for a in (0.5, 1.0):
                pt = patch(base_state[p], sig[(label, p, c)], alpha=a, config=cfg)
                ev.add({"v": f"{label} @{a}", "p": p, "c": c}, pt)
            back = unpatch(pt, sig[(label, p, c)], alpha=1.0, config=cfg)
            max_err = max(max_err, max(float((back[k] - base_state[p][k]).abs().max()) for k in back))
        g = torch.Generator().manual_seed(p * 100 + DIGITS_C_CORRUPTIONS.index(c))
        s = sig[(DEFAULT, p, c)]
        rnd = {k: torch.randn(d.shape, generator=g) for k, d in s.deltas.items()}
        rnd = {k: v * d.norm() / v.norm() for (k, v), d in zip(rnd.items(), s.deltas.values(), strict=True)}
        ev.add({"v": "random direction @1.0", "p": p, "c": c}, {**base_state[p], **{k: base_state[p][k] + rnd[k] for k in rnd}})
    t_patch = (time.perf_counter() - t0) / max(1, n_patch)
    t0 = time.perf_counter()
    rows = ev.run()
    t_eval = time.perf_counter() - t0
    n_models = len(rows)
    clean_acc = {r["p"]: r for r in rows if r["v"] == "clean"}
    gain_of = {(r["p"], r["c"]): (clean_acc[r["p"]][r["c"]], r[r["c"]]) for r in rows if r["v"] == "robust"}
    ok_pairs = [k for k, g in gain_of.items() if g[1] - g[0] >= args.min_gain]

    def closs(rs: list[dict]) -> float:
        return 100 * st.mean(clean_acc[r["p"]]["clean"] - r["clean"] for r in rs)

    print(f"\n== {args.family}: {cfg}; full model {full_bytes} bytes; {len(robust)} robust fine-tunes, "
          f"{len(ok_pairs)} with gain >= {args.min_gain} under their corruption (severity {SEV})")  # fmt: skip
    print("robust gain per corruption (mean over the 3 parents, clean -> robust, points): " + ", ".join(
        f"{c} {100 * st.mean(gain_of[(p, c)][1] - gain_of[(p, c)][0] for p in clean):+.1f}" for c in DIGITS_C_CORRUPTIONS))  # fmt: skip
    rob = [r for r in rows if r["v"] == "robust"]
    print(f"robust models: clean loss {closs(rob):+.2f} points; clean fine-tunes' clean accuracy "
          f"{st.mean(r['clean'] for r in clean_acc.values()):.4f}")  # fmt: skip

    def line(v: str, extra_: str = "") -> None:
        rs = [r for r in rows if r["v"] == v]
        f, sd, n = pooled(rs, gain_of, args.min_gain)
        used = [r for r in rs if (r["p"], r["c"]) in ok_pairs]
        print(f"  {v:34s} recovered {f:6.1%} (+-{sd:4.1%})  clean loss {closs(used):+5.2f} pt ({closs(rs):+5.2f} over all 27)"
              f"{extra_}")  # fmt: skip

    print(f"\nfraction of the robust gain recovered (pooled over the {len(ok_pairs)} pairs with a gain; +- over the 3 parents), "
          "clean loss on those pairs (and on all)")
    print(f"alpha sweep ({DEFAULT}, {sig_bytes[DEFAULT]} bytes, {full_bytes / sig_bytes[DEFAULT]:.1f}x smaller):")
    for a in ALPHAS:
        line(f"alpha {a}")
    print("\nlayouts (alpha 0.5 and 1.0): stored bytes, ratio to the full model")
    for label, _ in LAYOUTS:
        for a in (0.5, 1.0):
            line(f"{label} @{a}", f" {sig_bytes[label]:6d} B  {full_bytes / sig_bytes[label]:5.1f}x")
    line("random direction @1.0")
    kept = [s.kept_share for (lab, _, _), s in sig.items() if lab == "2L fp32"]
    first = [s.shares[s.layers[0]] for (lab, _, _), s in sig.items() if lab == "2L fp32"]
    print(f"\nthe first layer holds {st.mean(first):.1%} of the signature's squared norm on average "
          f"(the first two {st.mean(kept):.1%}); unpatch max |error| {max_err:.3g}")  # fmt: skip

    # ---- K-way composition vs one model fine-tuned on all corruptions
    ev = Evaluator(cfg)
    for p in clean:
        sigs = [sig[(DEFAULT, p, c)] for c in DIGITS_C_CORRUPTIONS]
        for a in (1.0, 3.0, 5.0, 9.0):
            ev.add({"v": f"{DEFAULT} K=9 alpha {a:g} (each {a / 9:.2f})", "p": p}, patch(base_state[p], sigs, alpha=a, config=cfg))
        sigs = [sig[("1L fp32", p, c)] for c in DIGITS_C_CORRUPTIONS]
        ev.add({"v": "1L fp32 K=9 alpha 5 (each 0.56)", "p": p}, patch(base_state[p], sigs, alpha=5.0, config=cfg))
        ev.add({"v": "clean fine-tune", "p": p}, base_state[p])
    for p, mid in enumerate(extra["all"]):
        ev.add({"v": "fine-tuned on all 9 corruptions", "p": p}, z.state_dict(mid))
    kr = ev.run()
    print("\nK-way composition of the 9 signatures vs one model fine-tuned on all 9 corruptions (severity 5):")
    print(f"  {'':44s}{'clean':>8s}{'corrupted mean':>16s}")
    oracle = st.mean(st.mean(gain_of[(p, c)][1] for c in DIGITS_C_CORRUPTIONS) for p in clean)
    for v in dict.fromkeys(r["v"] for r in kr):
        rs = [r for r in kr if r["v"] == v]
        cm = st.mean(st.mean(r[c] for c in DIGITS_C_CORRUPTIONS) for r in rs)
        print(f"  {v:44s}{st.mean(r['clean'] for r in rs):8.4f}{cm:16.4f}")
    print(f"  {'each robust model on its own corruption':44s}{'':8s}{oracle:16.4f}")

    # ---- transfer
    targets: dict[str, list[Any]] = {
        "other seeds": sorted(z.population("P").final().records(), key=lambda r: r.name)[3:],
        "other data subsets": z.population("P-subset").final().records(),
        "other widths (deeper layers)": [r for i in range(len(fam["wide"])) for r in z.population(f"P-wide{i}").final().records()],
        "own parent (base; only its own signatures)": [z.get(pid) for pid in src_parents],
    }
    from analysis.rws.store import _align_perms
    from weightspace.spec import invert_permutation

    print(f"\ntransfer of the {DEFAULT} signatures at alpha 1 (mean gain under the signature's corruption, points, over "
          f"the {len(ok_pairs)} pairs with a robust gain; in-distribution patch on the clean fine-tune for reference):")  # fmt: skip
    own = [r for r in rows if r["v"] == f"{DEFAULT} @1.0" and (r["p"], r["c"]) in ok_pairs]
    own_gain = 100 * st.mean(r[r["c"]] - gain_of[(r["p"], r["c"])][0] for r in own)
    rnd_rows = [r for r in rows if r["v"] == "random direction @1.0" and (r["p"], r["c"]) in ok_pairs]
    print(f"  {'in distribution (its own clean fine-tune)':42s} gain {own_gain:+6.2f}  clean loss {closs(own):+5.2f}   "
          f"random direction {100 * st.mean(r[r['c']] - gain_of[(r['p'], r['c'])][0] for r in rnd_rows):+6.2f}")  # fmt: skip
    t_align = []
    for what, tg in targets.items():
        by_cfg: dict[str, list[Any]] = defaultdict(list)
        for t in tg:
            by_cfg[str(t.arch_config)].append(t)
        res: dict[str, list[float]] = defaultdict(list)
        for group in by_cfg.values():
            tcfg = group[0].arch_config
            ev = Evaluator(tcfg)
            for t in group:
                ts = t.state_dict()
                ev.add({"v": "target", "t": t.id}, ts)
                for (p, c) in ok_pairs:
                    if what.startswith("own parent") and src_parents[p] != t.id:
                        continue
                    s = sig[(DEFAULT, p, c)]
                    ev.add({"v": "plain", "t": t.id, "p": p, "c": c}, patch(ts, s, config=tcfg, strict=False))
                    a0 = time.perf_counter()
                    sub, perms = _align_perms(s, ts, z.state_dict(src_parents[p]), tcfg, 0)
                    t_align.append(time.perf_counter() - a0)
                    moved = permute_signature(s, sub, invert_permutation(perms))
                    ev.add({"v": "aligned", "t": t.id, "p": p, "c": c}, patch(ts, moved, config=tcfg, strict=False))
            out = ev.run()
            base = {r["t"]: r for r in out if r["v"] == "target"}
            for r in out:
                if r["v"] != "target":
                    res[r["v"]].append(100 * (r[r["c"]] - base[r["t"]][r["c"]]))
                    res[r["v"] + " clean"].append(100 * (base[r["t"]]["clean"] - r["clean"]))
        print(f"  {what[:30] + f' ({len(tg)} models)':42s} gain {st.mean(res['plain']):+6.2f}  clean loss "
              f"{st.mean(res['plain clean']):+5.2f}   aligned: gain {st.mean(res['aligned']):+6.2f}  clean loss "
              f"{st.mean(res['aligned clean']):+5.2f}")  # fmt: skip

    print(f"\ntimes (one thread): extract + store {1000 * t_extract:.1f} ms per signature; patch in memory "
          f"{1000 * t_patch:.2f} ms; batched evaluation of {n_models} models x 10 test sets {t_eval:.1f} s; "
          f"alignment {1000 * st.mean(t_align):.1f} ms per (target, signature)")  # fmt: skip
    z.close()


if __name__ == "__main__":
    main()
