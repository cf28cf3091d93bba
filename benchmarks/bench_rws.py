"""Robust weight signatures on digits-c: how much of a robust fine-tune's gain a patch recovers, at what cost.

Builds (in a temporary zoo unless --root is given) for one family (``--family mlp``, ``cnn``, ``cnn-bn``
(BatchNorm) or ``cnn-long`` (a longer, stronger robust fine-tune of the plain CNN)):

* ``P``: 6 clean parents (seeds 0-5); three of them (``--sources``, default 0,1,2) are the signature
  sources (the "3 seeds"), the other 3 are transfer targets of other seeds;
* ``P-subset``: 3 parents trained on random halves of the training split (other data subsets);
* ``P-wide``: 2 parents each of two other architectures whose first layer has the signature's shape
  (other widths of the deeper layers);
* ``R``: the family's robust recipe (``digits-<family>-robust-mix``: per source parent one clean
  fine-tune and 9 robust fine-tunes on clean + corrupted data at severity 5, 6 epochs);
* ``R-all``: per source parent one fine-tune on the clean split plus its copies under all 9
  corruptions, same length (the "one model fine-tuned on all corruptions" of the issue).

Then it extracts signatures through the zoo (``analysis.rws.extract_signature``; sizes are the
stored rows' bytes) in every layout of the family (layers x form (dense, low rank, sparse) x bits x
granularity) and evaluates, with the batched evaluation, clean test accuracy and digits-c accuracy at
severity 5 of: the clean fine-tune, the robust fine-tune, patched models at fixed alphas and at the
alpha chosen on the validation split (``analysis.rws.choose_alpha``, at most 1 point of clean
validation accuracy lost), without the projection, random-direction controls of the same norm (and
rank), K-way compositions against the all-corruption fine-tune, and transfers to the other models
without and with re-basin alignment (``analysis.align``). BatchNorm models get their running
statistics recomputed after patching on the clean training split plus its corrupted copies, as
``patch_model`` does (and a control: the statistics recomputed alone, without a signature).

Fraction of gain recovered: over the (parent, corruption) pairs whose robust fine-tune gains at least
``--min-gain`` under its corruption, sum(patched - clean) / sum(robust - clean) (pooled), with the
spread of the same ratio across the 3 source parents. Clean loss: clean test accuracy of the clean
fine-tune minus that of the patched model, in points, averaged over the same pairs.

    python benchmarks/bench_rws.py --family mlp
    python benchmarks/bench_rws.py --family mlp --sources 3,4,5      # held-out parents
    python benchmarks/bench_rws.py --family cnn-bn
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
CNN = {"family": "cnn", "in_channels": 1, "image_size": 8, "channels": [8, 16], "kernel_size": 3, "out_features": 10}
COMMON = [  # (label, extract kwargs); layers=-1: all layers
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
    ("all layers 8bit tensor", {"layers": -1, "bits": 8}),
    ("1L fp32, no projection", {"layers": 1, "bits": None, "projection": False}),
    ("1L 8bit, no projection", {"layers": 1, "bits": 8, "projection": False}),
    ("all layers fp32, no projection", {"layers": -1, "bits": None, "projection": False}),
]
MLP_LAYOUTS = [  # the MLP has two layers: 2L = all layers
    ("1L r8 4bit tensor", {"layers": 1, "rank": 8, "bits": 4}),
    ("1L r8 8bit tensor", {"layers": 1, "rank": 8, "bits": 8}),
    ("2L 4bit tensor", {"layers": 2, "bits": 4}),
    ("2L 2bit channel", {"layers": 2, "bits": 2, "granularity": "channel"}),
    ("2L r6,f 4bit tensor", {"layers": 2, "rank": [6, None], "bits": 4}),
    ("2L r8,f 4bit tensor", {"layers": 2, "rank": [8, None], "bits": 4}),
    ("2L r8,f 8bit tensor", {"layers": 2, "rank": [8, None], "bits": 8}),
    ("2L r10,f 4bit tensor", {"layers": 2, "rank": [10, None], "bits": 4}),
    ("2L r8,4 4bit tensor", {"layers": 2, "rank": [8, 4], "bits": 4}),
    ("2L r8,f 4bit, no projection", {"layers": 2, "rank": [8, None], "bits": 4, "projection": False}),
    ("2L energy 0.9 4bit tensor", {"layers": 2, "energy": 0.9, "bits": 4}),
    ("2L density 0.3 4bit", {"layers": 2, "density": 0.3, "bits": 4}),
    ("2L density 0.5 4bit", {"layers": 2, "density": 0.5, "bits": 4}),
]
CNN_LAYOUTS = [  # convs.0, convs.1, head
    ("3L r[f,8,f] 8bit tensor", {"layers": 3, "rank": [None, 8, None], "bits": 8}),
    ("3L r[f,4,f] 8bit tensor", {"layers": 3, "rank": [None, 4, None], "bits": 8}),
    ("3L r[f,4,f] 4bit tensor", {"layers": 3, "rank": [None, 4, None], "bits": 4}),
    ("3L 4bit tensor", {"layers": 3, "bits": 4}),
    ("2L r[f,4] 8bit tensor", {"layers": 2, "rank": [None, 4], "bits": 8}),
    ("3L energy 0.9 8bit tensor", {"layers": 3, "energy": 0.9, "bits": 8}),
    ("3L density 0.3 8bit", {"layers": 3, "density": 0.3, "bits": 8}),
]
FAMILIES: dict[str, dict[str, Any]] = {
    "mlp": {
        "arch": {"family": "mlp", "in_features": 64, "hidden": [32], "out_features": 10},
        "parents": {"epochs": 24, "lr": 5e-3},
        "wide": [{"hidden": [32, 16]}, {"hidden": [32, 64]}],
        "robust": "digits-mlp-robust-mix",
        "layouts": MLP_LAYOUTS,
        "headline": "2L r8,f 4bit tensor",
    },
    "cnn": {
        "arch": CNN,
        "parents": {"epochs": 20, "lr": 1e-2},
        "wide": [{"channels": [8, 8]}, {"channels": [8, 32]}],
        "robust": "digits-cnn-robust-mix",
        "layouts": CNN_LAYOUTS,
        "headline": "3L r[f,4,f] 8bit tensor",
    },
    "cnn-long": {  # the plain CNN, robust (and clean) fine-tunes 15 epochs at lr 5e-3 instead of 6 at 2e-3
        "arch": CNN,
        "parents": {"epochs": 20, "lr": 1e-2},
        "wide": [{"channels": [8, 8]}, {"channels": [8, 32]}],
        "robust": "digits-cnn-robust-mix",
        "robust_override": {"epochs": 15, "lr": 5e-3},
        "layouts": CNN_LAYOUTS,
        "headline": "3L r[f,4,f] 8bit tensor",
    },
    "cnn-bn": {
        "arch": dict(CNN, batchnorm=True),
        "parents": {"epochs": 20, "lr": 1e-2},
        "wide": [{"channels": [8, 8]}, {"channels": [8, 32]}],
        "robust": "digits-cnn-bn-robust-mix",
        "layouts": CNN_LAYOUTS,
        "headline": "3L r[f,4,f] 8bit tensor",
    },
}
ALPHAS = [0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0]
DEFAULT = "1L 8bit tensor"
#: layouts whose alpha is also chosen on the validation split (besides the family's headline)
VAL_LAYOUTS = ["1L 8bit tensor", "1L 4bit tensor", "1L 2bit channel", "2L 8bit tensor", "all layers 8bit tensor"]


def robust_recipe(fam: dict[str, Any], sources_tag: str) -> Any:
    from zoo.build.recipes import Recipe

    robust = Recipe.load(fam["robust"]).to_dict()
    robust["name"] = "R"
    robust["arch"] = fam["arch"]
    robust["finetune"]["parents"] = {"population": "P", "final": True, "tag": sources_tag}
    if "robust_override" in fam:
        o = fam["robust_override"]
        robust.update(epochs=o["epochs"], checkpoint_epochs=[o["epochs"]])
        robust["search"]["params"]["lr"] = [o["lr"]]
    return Recipe.from_dict(robust)


def build_zoo(z: Any, fam: dict[str, Any], name: str, sources: list[int]) -> dict[str, Any]:
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
    for r in source_parents(z, sources):
        z.tag(r.id, "rws-source")
    t1 = time.perf_counter()
    recipe = robust_recipe(fam, "rws-source")
    build(z, recipe, progress=False)
    t2 = time.perf_counter()
    all_ids = train_all_corruptions(z, recipe, sources)
    t3 = time.perf_counter()
    print(f"[{name}] built parents in {t1 - t0:.1f}s, 30 robust/clean fine-tunes in {t2 - t1:.1f}s, "
          f"3 all-corruption fine-tunes in {t3 - t2:.1f}s")  # fmt: skip
    return {"all": all_ids}


def source_parents(z: Any, sources: list[int]) -> list[Any]:
    """The source parents (P's final checkpoints in name order, i.e. by seed), in ``sources`` order."""
    ps = sorted(z.population("P").final().records(), key=lambda r: r.name)
    return [ps[i] for i in sources]


def train_all_corruptions(z: Any, recipe: Any, sources: list[int]) -> list[int]:
    """Per source parent, one fine-tune on the clean split plus all 9 corrupted copies (same epochs, lr)."""
    from zoo.build.finetune import shard_data
    from zoo.build.training import PerModelData, TrainSpec, train_population
    from zoo.models.datasets import DIGITS_C_CORRUPTIONS, load_dataset
    from zoo.store.records import NewModel

    src = sorted(source_parents(z, sources), key=lambda r: r.id)
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
    """Collects labelled weight variants and evaluates them in batched passes (clean + 9 corruptions).

    A variant added with ``bn=[signatures]`` gets its BatchNorm statistics recomputed first (on the clean
    training split plus the signatures' corrupted copies, as ``patch_model`` does), when the family has BN.
    """

    def __init__(self, cfg: dict, split: str = "test") -> None:
        self.cfg, self.split = cfg, split
        self.items: list[tuple[dict, dict, tuple]] = []
        self.bn = any(k.endswith("running_mean") for k in init_names(cfg))

    def add(self, label: dict, state: dict, bn: list | None = None) -> None:
        key = tuple((s.corruption, s.severity) for s in bn) if (bn and self.bn) else ()
        self.items.append((label, state, key))

    def _reset(self) -> None:
        from analysis.rws import bn_data, recompute_bn

        groups: dict[tuple, list[int]] = defaultdict(list)
        for i, (_, _, key) in enumerate(self.items):
            if key:
                groups[key].append(i)
        for key, idx in groups.items():
            sigs = [_Sig(c, s) for c, s in key]
            X = bn_data(self.cfg, sigs)  # type: ignore[arg-type]
            W = recompute_bn(self.cfg, {k: torch.stack([self.items[i][1][k] for i in idx]) for k in self.items[idx[0]][1]}, X)
            for j, i in enumerate(idx):
                lab, _, _ = self.items[i]
                self.items[i] = (lab, {k: v[j] for k, v in W.items()}, ())

    def run(self, chunk: int = 256) -> list[dict]:
        from analysis.rws import corruption_accuracy

        self._reset()
        out = []
        for s in range(0, len(self.items), chunk):
            part = self.items[s : s + chunk]
            W = {k: torch.stack([st_[k] for _, st_, _ in part]) for k in part[0][1]}
            df = corruption_accuracy(self.cfg, W, corruptions="all", severities=[SEV], split=self.split)
            acc = {(int(m), c): a for m, c, a in zip(df["model"], df["corruption"], df["acc"], strict=True)}
            for i, (lab, _, _) in enumerate(part):
                out.append({**lab, **{c: a for (m, c), a in acc.items() if m == i}})
        self.items = []
        return out


class _Sig:
    """What bn_data reads of a signature: its corruption and severity."""

    def __init__(self, corruption: str, severity: int | None) -> None:
        self.corruption, self.severity = corruption, severity


def init_names(cfg: dict) -> list[str]:
    from zoo.models.architectures import init_state

    return list(init_state(cfg, 0))


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


def random_like(sig: Any, g: torch.Generator) -> dict[str, torch.Tensor]:
    """A random direction with the signature's per-tensor norm and, for low-rank tensors, its rank."""
    out = {}
    for k, d in sig.deltas.items():
        f = (sig.forms or {}).get(k)
        if f is not None and f.form == "lowrank":
            r = torch.randn(d.shape[0], f.rank, generator=g) @ torch.randn(f.rank, d[0].numel(), generator=g)
            r = r.reshape(d.shape)
        else:
            r = torch.randn(d.shape, generator=g)
        out[k] = r * d.norm() / r.norm()
    return out


def shared_alpha(cfg: dict, base_state: dict, sigs: dict, budget: float) -> tuple[float, dict]:
    """One alpha for a layout, chosen on the validation split over all its (parent, corruption) pairs.

    The alpha of ``ALPHA_GRID`` with the highest mean validation accuracy under each pair's corruption
    among those whose mean clean validation accuracy drop is at most ``budget`` (ties: the smaller).
    """
    from analysis.rws import ALPHA_GRID, patch

    ev = Evaluator(cfg, split="val")
    for p, st_ in base_state.items():
        ev.add({"v": "clean", "p": p}, st_)
    for (p, c), s in sigs.items():
        for a in ALPHA_GRID:
            ev.add({"v": a, "p": p, "c": c}, patch(base_state[p], s, alpha=a, config=cfg), bn=[s])
    rows = ev.run()
    ref = {r["p"]: r for r in rows if r["v"] == "clean"}
    table = {}
    for a in ALPHA_GRID:
        rs = [r for r in rows if r["v"] == a]
        table[a] = (st.mean(ref[r["p"]]["clean"] - r["clean"] for r in rs), st.mean(r[r["c"]] for r in rs))
    ok = [a for a in ALPHA_GRID if table[a][0] <= budget + 1e-9]
    best = max(ok, key=lambda a: (table[a][1], -a)) if ok else min(ALPHA_GRID, key=lambda a: (table[a][0], a))
    return best, table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--family", choices=sorted(FAMILIES), default="mlp")
    ap.add_argument("--root", help="zoo root (default: a temporary folder); reused when it holds the build")
    ap.add_argument("--sources", default="0,1,2", help="which 3 of the 6 parents (by seed) are signature sources")
    ap.add_argument("--min-gain", type=float, default=0.05, help="pairs whose robust gain is below this are not pooled")
    ap.add_argument("--max-clean-drop", type=float, default=0.01, help="the validation budget of choose_alpha")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from analysis.rws import choose_alpha, extract_signature, layers_of, load_signature, patch, unpatch
    from analysis.rws.patch import permute_signature
    from zoo import Zoo
    from zoo.models.datasets import DIGITS_C_CORRUPTIONS

    fam = FAMILIES[args.family]
    sources = [int(s) for s in args.sources.split(",")]
    z = Zoo.open(args.root or tempfile.mkdtemp(prefix=f"rws-{args.family}-"))
    built = "R-all" in [p.name for p in z.populations()]
    extra = {"all": sorted(z.population("R-all").ids())} if built else build_zoo(z, fam, args.family, sources)
    cfg = z.population("P").config
    recs = sorted(z.population("R").records(), key=lambda r: r.name)
    hp = {r.id: r.hparams() for r in recs}
    src_parents = sorted({hp[r.id]["parent"] for r in recs})
    clean = {p: next(r for r in recs if hp[r.id]["parent"] == pid and hp[r.id]["change"] == "null") for p, pid in enumerate(src_parents)}
    robust = {(p, c): next(r for r in recs if hp[r.id]["parent"] == pid and hp[r.id].get("change_corruption") == c)
              for p, pid in enumerate(src_parents) for c in DIGITS_C_CORRUPTIONS}  # fmt: skip
    n_layers = len(layers_of(cfg, clean[0].state_dict()))
    layouts = COMMON + fam["layouts"]
    head = fam["headline"]

    # ---- signatures through the zoo
    t0 = time.perf_counter()
    sig: dict[tuple[str, int, str], Any] = {}
    sig_bytes: dict[str, int] = {}
    for label, kw in layouts:
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

    # ---- alpha chosen on the validation split (never the test split)
    t0 = time.perf_counter()
    chosen: dict[tuple[str, int, str], float] = {}
    for label in dict.fromkeys([head, *VAL_LAYOUTS]):
        for (p, c) in robust:
            ch = choose_alpha(cfg, clean[p].state_dict(), sig[(label, p, c)], max_clean_drop=args.max_clean_drop)
            chosen[(label, p, c)] = ch.alpha
    t_choose = (time.perf_counter() - t0) / max(1, len(chosen))
    shared: dict[str, float] = {}
    for label in dict.fromkeys([head, *VAL_LAYOUTS]):
        shared[label], _ = shared_alpha(cfg, {p: clean[p].state_dict() for p in clean},
                                        {(p, c): sig[(label, p, c)] for (p, c) in robust}, args.max_clean_drop)  # fmt: skip

    # ---- variants
    ev = Evaluator(cfg)
    base_state = {p: clean[p].state_dict() for p in clean}
    for p in clean:
        ev.add({"v": "clean", "p": p}, base_state[p])
    for (p, c), r in robust.items():
        ev.add({"v": "robust", "p": p, "c": c}, r.state_dict())
        if ev.bn:
            ev.add({"v": "BN statistics recomputed, no signature", "p": p, "c": c}, base_state[p], bn=[sig[(DEFAULT, p, c)]])
    t0 = time.perf_counter()
    n_patch = 0
    max_err = 0.0
    for (p, c) in robust:
        for lab in (DEFAULT, head):
            for a in ALPHAS:
                s = sig[(lab, p, c)]
                ev.add({"v": f"{lab} alpha {a}", "p": p, "c": c}, patch(base_state[p], s, alpha=a, config=cfg), bn=[s])
                n_patch += 1
        for label, _ in layouts:
            s = sig[(label, p, c)]
            for a in (0.5, 1.0):
                pt = patch(base_state[p], s, alpha=a, config=cfg)
                ev.add({"v": f"{label} @{a}", "p": p, "c": c}, pt, bn=[s])
            back = unpatch(pt, s, alpha=1.0, config=cfg)
            max_err = max(max_err, max(float((back[k] - base_state[p][k]).abs().max()) for k in back))
            if (label, p, c) in chosen:
                a = chosen[(label, p, c)]
                ev.add({"v": f"{label} @val", "p": p, "c": c, "alpha": a}, patch(base_state[p], s, alpha=a, config=cfg), bn=[s])
                a = shared[label]
                ev.add({"v": f"{label} @val-shared", "p": p, "c": c}, patch(base_state[p], s, alpha=a, config=cfg), bn=[s])
        g = torch.Generator().manual_seed(p * 100 + DIGITS_C_CORRUPTIONS.index(c))
        for lab in (DEFAULT, head):
            s = sig[(lab, p, c)]
            rnd = random_like(s, g)
            ev.add({"v": f"random direction like {lab} @1.0", "p": p, "c": c},
                   {**base_state[p], **{k: base_state[p][k] + rnd[k] for k in rnd}}, bn=[s])  # fmt: skip
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

    print(f"\n== {args.family}: {cfg}; sources: parents {sources}; full model {full_bytes} bytes; {len(robust)} robust "
          f"fine-tunes, {len(ok_pairs)} with gain >= {args.min_gain} under their corruption (severity {SEV})")  # fmt: skip
    print("robust gain per corruption (mean over the 3 parents, clean -> robust, points): " + ", ".join(
        f"{c} {100 * st.mean(gain_of[(p, c)][1] - gain_of[(p, c)][0] for p in clean):+.1f}" for c in DIGITS_C_CORRUPTIONS))  # fmt: skip
    rob = [r for r in rows if r["v"] == "robust" and (r["p"], r["c"]) in ok_pairs]
    print(f"robust models: clean loss {closs(rob):+.2f} points (pairs with a gain); clean fine-tunes' clean accuracy "
          f"{st.mean(r['clean'] for r in clean_acc.values()):.4f}")  # fmt: skip

    def line(v: str, label: str | None = None, extra_: str = "") -> tuple[float, float]:
        rs = [r for r in rows if r["v"] == v]
        f, sd, n = pooled(rs, gain_of, args.min_gain)
        used = [r for r in rs if (r["p"], r["c"]) in ok_pairs]
        cl = closs(used)
        mark = ""
        if label is not None:
            ratio = full_bytes / sig_bytes[label]
            extra_ = f" {sig_bytes[label]:6d} B {ratio:5.1f}x" + extra_
            mark = "  ALL TARGETS" if f >= 0.7 and cl <= 1.0 and ratio >= 13 else ""
        print(f"  {v:40s} recovered {f:6.1%} (+-{sd:4.1%})  clean loss {cl:+5.2f} pt ({closs(rs):+5.2f} over all 27)"
              f"{extra_}{mark}")  # fmt: skip
        return f, cl

    print(f"\nfraction of the robust gain recovered (pooled over the {len(ok_pairs)} pairs with a gain; +- over the 3 "
          "parents), clean loss on those pairs (and on all); bytes and ratio to the full model")  # fmt: skip
    for lab in (DEFAULT, head):
        print(f"alpha sweep ({lab}):")
        for a in ALPHAS:
            line(f"{lab} alpha {a}", lab)
    if ev.bn:
        line("BN statistics recomputed, no signature")
    print("\nlayouts at alpha 0.5, 1.0 and the alpha chosen on the validation split (<= "
          f"{100 * args.max_clean_drop:g} point of clean validation accuracy lost): @val per patched model "
          "(choose_alpha; mean and range of the chosen alphas), @val-shared one alpha per layout over all pairs:")
    for label, _ in layouts:
        for a in (0.5, 1.0):
            line(f"{label} @{a}", label)
        if (label, 0, DIGITS_C_CORRUPTIONS[0]) in chosen:
            al = [r["alpha"] for r in rows if r["v"] == f"{label} @val"]
            line(f"{label} @val", label, f"  alpha {st.mean(al):.2f} ({min(al):g}-{max(al):g})")
            line(f"{label} @val-shared", label, f"  alpha {shared[label]:g}")
    for lab in (DEFAULT, head):
        line(f"random direction like {lab} @1.0")
    shares = [s.shares for (lab, _, _), s in sig.items() if lab == "all layers fp32"]
    names = list(shares[0])
    print("\nshare of the signature's squared norm per layer (mean): " + ", ".join(
        f"{n} {st.mean(s[n] for s in shares):.1%}" for n in names) + f"; unpatch max |error| {max_err:.3g}")  # fmt: skip
    errs = [(s.approximation_error, s.relative_error) for (lab, _, _), s in sig.items() if lab == head]
    print(f"{head}: relative Frobenius error of the stored signature (kept layers): approximation "
          f"{st.mean(e[0] for e in errs):.3f}, with quantisation {st.mean(e[1] for e in errs):.3f}")  # fmt: skip

    # ---- K-way composition vs one model fine-tuned on all corruptions
    ev = Evaluator(cfg)
    for p in clean:
        for lab in (DEFAULT, head):
            sigs = [sig[(lab, p, c)] for c in DIGITS_C_CORRUPTIONS]
            for a in (1.0, 3.0, 9.0):
                ev.add({"v": f"{lab} K=9 alpha {a:g} (each {a / 9:.2f})", "p": p}, patch(base_state[p], sigs, alpha=a, config=cfg),
                       bn=sigs)  # fmt: skip
        ev.add({"v": "clean fine-tune", "p": p}, base_state[p])
    for p, mid in enumerate(extra["all"]):
        ev.add({"v": "fine-tuned on all 9 corruptions", "p": p}, z.state_dict(mid))
    kr = ev.run()
    print("\nK-way composition of the 9 signatures vs one model fine-tuned on all 9 corruptions (severity 5):")
    print(f"  {'':50s}{'clean':>8s}{'corrupted mean':>16s}")
    oracle = st.mean(st.mean(gain_of[(p, c)][1] for c in DIGITS_C_CORRUPTIONS) for p in clean)
    for v in dict.fromkeys(r["v"] for r in kr):
        rs = [r for r in kr if r["v"] == v]
        cm = st.mean(st.mean(r[c] for c in DIGITS_C_CORRUPTIONS) for r in rs)
        print(f"  {v:50s}{st.mean(r['clean'] for r in rs):8.4f}{cm:16.4f}")
    print(f"  {'each robust model on its own corruption':50s}{'':8s}{oracle:16.4f}")

    # ---- transfer
    src_set = set(src_parents)
    targets: dict[str, list[Any]] = {
        "other seeds": [r for r in sorted(z.population("P").final().records(), key=lambda r: r.name) if r.id not in src_set],
        "other data subsets": z.population("P-subset").final().records(),
        "other widths (deeper layers)": [r for i in range(len(fam["wide"])) for r in z.population(f"P-wide{i}").final().records()],
        "own parent (base; only its own signatures)": [z.get(pid) for pid in src_parents],
    }
    from analysis.rws.store import _align_perms
    from weightspace.spec import invert_permutation

    t_align = []
    for lab in (DEFAULT, head):
        print(f"\ntransfer of the {lab} signatures at alpha 1 (mean gain under the signature's corruption, points, over "
              f"the {len(ok_pairs)} pairs with a robust gain):")  # fmt: skip
        own = [r for r in rows if r["v"] == f"{lab} @1.0" and (r["p"], r["c"]) in ok_pairs]
        own_gain = 100 * st.mean(r[r["c"]] - gain_of[(r["p"], r["c"])][0] for r in own)
        print(f"  {'in distribution (its own clean fine-tune)':42s} gain {own_gain:+6.2f}  clean loss {closs(own):+5.2f}")
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
                        s = sig[(lab, p, c)]
                        if any(k not in ts or ts[k].shape != d.shape for k, d in s.deltas.items()):
                            continue
                        ev.add({"v": "plain", "t": t.id, "p": p, "c": c}, patch(ts, s, config=tcfg, strict=False), bn=[s])
                        a0 = time.perf_counter()
                        sub, perms = _align_perms(s, ts, z.state_dict(src_parents[p]), tcfg, 0)
                        t_align.append(time.perf_counter() - a0)
                        moved = permute_signature(s, sub, invert_permutation(perms))
                        ev.add({"v": "aligned", "t": t.id, "p": p, "c": c}, patch(ts, moved, config=tcfg, strict=False), bn=[s])
                out = ev.run()
                base = {r["t"]: r for r in out if r["v"] == "target"}
                for r in out:
                    if r["v"] != "target":
                        res[r["v"]].append(100 * (r[r["c"]] - base[r["t"]][r["c"]]))
                        res[r["v"] + " clean"].append(100 * (base[r["t"]]["clean"] - r["clean"]))
            if not res:
                print(f"  {what[:30] + f' ({len(tg)} models)':42s} (no target has the kept tensors' shapes)")
                continue
            print(f"  {what[:30] + f' ({len(tg)} models)':42s} gain {st.mean(res['plain']):+6.2f}  clean loss "
                  f"{st.mean(res['plain clean']):+5.2f}   aligned: gain {st.mean(res['aligned']):+6.2f}  clean loss "
                  f"{st.mean(res['aligned clean']):+5.2f}")  # fmt: skip

    print(f"\ntimes (one thread): extract + store {1000 * t_extract:.1f} ms per signature; choose alpha on the "
          f"validation split {1000 * t_choose:.0f} ms per (signature, model); patch in memory {1000 * t_patch:.2f} ms; "
          f"batched evaluation of {n_models} models x 10 test sets {t_eval:.1f} s; alignment "
          f"{1000 * st.mean(t_align):.1f} ms per (target, signature)")  # fmt: skip
    z.close()


if __name__ == "__main__":
    main()
