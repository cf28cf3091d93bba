"""Benchmark of the weight-diff interpreter (issue 12), always on diffs of parents it never saw.

Parts (``--parts``, comma-separated):

``acc_kind_effect`` is the kind accuracy without the robust fine-tunes that change nothing measurable
(:data:`NO_EFFECT`: behaviourally they are null fine-tunes, and read as such).

* ``main``     -- digits-mlp-diffs-xl (full and rank-4 children), 20 % of the parents held out: per-field
  accuracy, backdoor AUROC, target recovery, exact trigger; for the interpreter (np_diff over the diff,
  with class-equivariant heads for the class-valued fields or one output per class; np_diff over the pair
  view; the variants tried: separate class heads, class relabelling, a kind loss weight) and the baselines
  (diff statistics + scikit-learn GBT; flat MLP on the diff); the test scores split by full / low-rank children.
* ``rank``     -- trained on full fine-tunes only, scored on held-out full and low-rank ones (and back).
* ``curve``    -- learning curve: the interpreter trained on about 100 / 250 / 500 / 1000 training diffs (all
  of them, 2,560: the main part).
* ``triggers`` -- backdoors with ``random`` trigger patterns and targets 8 and 9 left out of training, then
  detected among held-out parents' diffs.
* ``population`` -- the main interpreters (needs ``main`` in the same run) applied to digits-mlp-diffs-heldout:
  parents of another population (digits-mlp-seeds) and off-corner 2x2 / 4x4 triggers never seen.
* ``cnn``      -- digits-cnn-diffs (CNN parents): gmn over the diff, flat MLP and statistics baselines.
* ``effects``  -- no interpreter: per corruption, what the robust children of ``--population`` changed:
  their accuracy under their corruption minus that of their null siblings (same parent, same rank), and the
  parents' own drop under it (:func:`zoo.build.finetune.change_metric`).

Every part runs ``--seeds`` seeds (split and initialisation; ``--seed-ids 1,2`` for given ones, e.g. one per
process), one torch thread. ``--validate`` scores main on a validation split of the training parents (to choose
settings without the test parents); ``--main`` picks the interpreter rank, curve, triggers and population use. Prints a table per part
and writes every row to ``--out`` (JSON). Build the zoo first (see docs/interpreter.md, "Reproduce").
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from weightspace.interpret import DiffInterpreter, DiffSet, load_diffs, split_by_parent
from zoo import Zoo

#: corruptions whose robust fine-tunes change nothing measurable at severity 3 (corruption accuracy of the child
#: minus its null sibling's within +-0.01 on digits-mlp-diffs-xl, measured: see docs/benchmarks.md)
NO_EFFECT = ("gaussian_noise", "shot_noise", "impulse_noise", "contrast")
KEYS = ["acc_kind", "acc_kind_effect", "acc_classes", "acc_corruption", "acc_position", "acc_size", "acc_target", "exact", "backdoor_auroc",
        "target_if_detected", "trigger_exact"]  # fmt: skip


MAIN = "np_diff (diff view)"
SET = "np_diff + class-set heads (diff view)"
POP = "digits-mlp-diffs-xl"  # --population
VALIDATE = False  # --validate: main scores on a validation split of the training parents (never the test ones)


def interpreters(epochs: int) -> dict[str, Callable[[int], DiffInterpreter]]:
    """The contenders: name -> (seed -> unfitted interpreter)."""
    return {
        # one output per class, as measured before the class-set heads became the interpreter's default
        MAIN: lambda s: DiffInterpreter("np_diff", {"epochs": epochs, "outputs": "vector"}, view="diff", seed=s),
        SET: lambda s: DiffInterpreter("np_diff", {"epochs": epochs, "outputs": "set"}, view="diff", seed=s),
        "np_diff + separate class-set heads (diff view)": lambda s: DiffInterpreter(
            "np_diff", {"epochs": epochs, "outputs": "set_separate"}, view="diff", seed=s),
        # one class-relabelled copy of every training diff, half the epochs (the same number of steps)
        "np_diff + relabel (diff view)": lambda s: DiffInterpreter("np_diff", {"epochs": epochs // 2, "outputs": "vector"},
                                                                   view="diff", seed=s,
                                                                   relabel=1),
        "np_diff + class-set heads + relabel (diff view)": lambda s: DiffInterpreter(
            "np_diff", {"epochs": epochs // 2, "outputs": "set_separate"}, view="diff", seed=s, relabel=1),
        "np_diff + separate class-set heads + kind weight 2 (diff view)": lambda s: DiffInterpreter(
            "np_diff", {"epochs": epochs, "outputs": "set_separate"}, view="diff", seed=s, weights={"kind": 2.0}),
        "np_diff (pair view)": lambda s: DiffInterpreter("np_diff", {"epochs": epochs, "outputs": "vector"}, view="pair",
                                                         seed=s),
        "stats + GBT (diff)": lambda s: DiffInterpreter("stats", {"model": "gbt"}, view="diff", seed=s),
        "flat MLP (diff)": lambda s: DiffInterpreter("flat_mlp", {"epochs": epochs}, view="diff", seed=s),
    }


def fit_score(make: Callable[[int], DiffInterpreter], seed: int, train: DiffSet, tests: dict[str, DiffSet]) -> dict[str, Any]:
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    interp = make(seed).fit(train)
    row: dict[str, Any] = {"fit_s": time.perf_counter() - t0, "n_train": len(train), "interp": interp}
    for name, data in tests.items():
        if len(data):
            row[name] = interp.score(data)
            eff = data.where([not (c["kind"] == "robust" and c.get("corruption") in NO_EFFECT) for c in data.changes])
            row[name]["acc_kind_effect"] = interp.score(eff)["acc_kind"]
    return row


def summary(rows: Sequence[dict[str, Any]], test: str, keys: Sequence[str] = KEYS) -> dict[str, str]:
    out = {}
    for k in keys:
        v = [r[test][k] for r in rows if test in r and r[test].get(k) is not None]
        out[k] = f"{np.mean(v):.3f} ± {np.std(v):.3f}" if v else "-"
    out["fit"] = f"{np.mean([r['fit_s'] for r in rows]):.0f} s"
    return out


def table(title: str, lines: dict[str, dict[str, str]], keys: Sequence[str]) -> None:
    print(f"\n### {title}\n")
    print("| | " + " | ".join(keys) + " |")
    print("|---" * (len(keys) + 1) + "|")
    for name, s in lines.items():
        print(f"| {name} | " + " | ".join(s.get(k, "-") for k in keys) + " |")


def by_rank(data: DiffSet) -> dict[str, DiffSet]:
    r = np.asarray(data.ranks)
    return {"test": data, "test_full": data.where(r == 0), "test_lowrank": data.where(r > 0)}


def part_main(z: Zoo, seeds: Sequence[int], epochs: int, only: Sequence[str] | None, out: list) -> dict[int, Any]:
    ds = load_diffs(z, POP)
    kept: dict[int, Any] = {}
    results: dict[str, list] = {}
    for seed in seeds:
        tr, te = split_by_parent(ds.parent_ids, 0.2, seed)
        if VALIDATE:  # choose on the training parents only: 20 % of them held out as a validation split
            sub = ds.subset(tr)
            inner, val = split_by_parent(sub.parent_ids, 0.2, seed + 100)
            tr, te = tr[inner], tr[val]
        for name, make in interpreters(epochs).items():
            if only and name not in only:
                continue
            row = fit_score(make, seed, ds.subset(tr), by_rank(ds.subset(te)))
            if name == MAIN:
                kept[seed] = row["interp"]
            results.setdefault(name, []).append(row)
            out.append({"part": "main", "interpreter": name, "seed": seed, **{k: v for k, v in row.items() if k != "interp"}})
            print(f"main seed {seed} {name}: {row['test']} ({row['fit_s']:.0f} s)", flush=True)
    keys = KEYS + ["fit"]
    table("main: digits-mlp-diffs-xl, held-out parents, full + rank-4 children", {n: summary(r, "test") for n, r in results.items()}, keys)
    table("main, by kind of fine-tune (same models)", {f"{n} / {t}": summary(r, t, ["acc_kind", "backdoor_auroc", "target_if_detected",
                                                                                    "trigger_exact", "exact"])
                                                     for n, r in results.items() for t in ("test_full", "test_lowrank")},
          ["acc_kind", "backdoor_auroc", "target_if_detected", "trigger_exact", "exact"])  # fmt: skip
    return kept


def part_rank(z: Zoo, seeds: Sequence[int], epochs: int, out: list) -> None:
    ds = load_diffs(z, POP)
    if not any(ds.ranks) or all(ds.ranks):
        print(f"rank: {POP} does not hold both full and low-rank children; skipped")
        return
    res: dict[str, list] = {}
    for seed in seeds:
        tr, te = split_by_parent(ds.parent_ids, 0.2, seed)
        train, test = ds.subset(tr), ds.subset(te)
        tr_r = np.asarray(train.ranks)
        for name, keep in (("trained on full", tr_r == 0), ("trained on rank 4", tr_r > 0)):
            row = fit_score(interpreters(epochs)[MAIN], seed, train.where(keep), by_rank(test))
            res.setdefault(name, []).append(row)
            out.append({"part": "rank", "interpreter": name, "seed": seed, **{k: v for k, v in row.items() if k != "interp"}})
            print(f"rank seed {seed} {name}: full {row['test_full']['acc_kind']:.3f} low {row['test_lowrank']['acc_kind']:.3f}", flush=True)
    keys = ["acc_kind", "backdoor_auroc", "target_if_detected", "exact"]
    table(f"full vs low-rank: {MAIN} trained on one kind of fine-tune",
          {f"{n} -> {t}": summary(rows, t, keys) for n, rows in res.items() for t in ("test_full", "test_lowrank")}, keys)


def part_curve(z: Zoo, seeds: Sequence[int], epochs: int, out: list) -> None:
    ds = load_diffs(z, POP)
    sizes = [100, 250, 500, 1000]  # all of them: the main part's row
    res: dict[str, list] = {}
    for seed in seeds:
        tr, te = split_by_parent(ds.parent_ids, 0.2, seed)
        train, test = ds.subset(tr), ds.subset(te)
        rng = np.random.default_rng(seed)
        parents = rng.permutation(sorted(set(train.parent_ids)))
        for n in sizes:
            if n:  # whole parents, in a random order, until n diffs
                per = len(train) / len(parents)
                keep_p = set(parents[: max(1, int(round(n / per)))].tolist())
                sub = train.where([p in keep_p for p in train.parent_ids])
            else:
                sub = train
            row = fit_score(interpreters(epochs)[MAIN], seed, sub, {"test": test})
            key = f"{len(sub)} diffs" if n else f"all ({len(sub)} diffs)"
            res.setdefault(str(n or "all"), []).append(row)
            out.append({"part": "curve", "n_train": len(sub), "seed": seed, **{k: v for k, v in row.items() if k != "interp"}})
            print(f"curve seed {seed} {key}: {row['test']['acc_kind']:.3f}", flush=True)
    keys = ["acc_kind", "backdoor_auroc", "acc_target", "exact", "fit"]
    table(f"learning curve: {MAIN}, training diffs from whole parents",
          {f"~{n} diffs (mean {np.mean([r['n_train'] for r in rows]):.0f})": summary(rows, "test", keys)
           for n, rows in res.items()}, keys)  # fmt: skip


def part_triggers(z: Zoo, seeds: Sequence[int], epochs: int, out: list) -> None:
    """Backdoors with a held-out trigger pattern (random) or target (8, 9) left out of training."""
    ds = load_diffs(z, POP)
    res: dict[str, list] = {}
    held_targets = (8, 9)

    def novel(c: dict) -> bool:
        return c["kind"] == "backdoor" and (c.get("pattern") == "random" or int(c["target"]) in held_targets)

    for seed in seeds:
        tr, te = split_by_parent(ds.parent_ids, 0.2, seed)
        train, test = ds.subset(tr), ds.subset(te)
        train = train.where([not novel(c) for c in train.changes])
        not_bd = np.asarray([c["kind"] != "backdoor" for c in test.changes])
        pat = np.asarray([c["kind"] == "backdoor" and c.get("pattern") == "random" for c in test.changes])
        tgt = np.asarray([c["kind"] == "backdoor" and int(c["target"]) in held_targets for c in test.changes])
        seen = np.asarray([c["kind"] == "backdoor" and not novel(c) for c in test.changes])
        tests = {"held-out pattern (random)": test.where(not_bd | pat), "held-out targets (8, 9)": test.where(not_bd | tgt),
                 "seen triggers and targets": test.where(not_bd | seen)}  # fmt: skip
        row = fit_score(interpreters(epochs)[MAIN], seed, train, tests)
        for t in tests:
            res.setdefault(t, []).append(row)
        out.append({"part": "triggers", "seed": seed, **{k: v for k, v in row.items() if k != "interp"}})
        print(f"triggers seed {seed}: " + ", ".join(f"{t} {row[t]['backdoor_auroc']:.3f}" for t in tests), flush=True)
    keys = ["backdoor_auroc", "acc_kind", "target_if_detected", "trigger_exact", "n_backdoor"]
    table(f"held-out triggers and targets ({MAIN}; left out of training, scored on held-out parents)",
          {t: summary(rows, t, keys) for t, rows in res.items()}, keys)


def part_population(z: Zoo, kept: dict[int, Any], out: list) -> None:
    """The main interpreters on digits-mlp-diffs-heldout: another parent population, off-corner triggers."""
    ho = load_diffs(z, "digits-mlp-diffs-heldout")
    keys = ["acc_kind", "backdoor_auroc", "target_if_detected", "trigger_exact", "acc_classes", "acc_corruption", "exact"]
    rows = []
    for seed, interp in kept.items():
        s = interp.score(ho)
        rows.append({"fit_s": 0.0, "heldout": s})
        out.append({"part": "population", "seed": seed, "scores": s})
        print(f"population seed {seed}: {s}", flush=True)
    table("digits-mlp-diffs-heldout: parents of another population (digits-mlp-seeds), off-corner 2x2 / 4x4 triggers",
          {MAIN: summary(rows, "heldout", keys)}, keys)


def part_cnn(z: Zoo, seeds: Sequence[int], epochs: int, population: str, out: list) -> None:
    ds = load_diffs(z, population)
    res: dict[str, list] = {}
    makers = {
        "gmn (diff)": lambda s: DiffInterpreter("gmn", {"epochs": epochs, "hidden": 32, "edge_hidden": 16}, seed=s),
        "stats + GBT (diff)": lambda s: DiffInterpreter("stats", {"model": "gbt"}, seed=s),
        "flat MLP (diff)": lambda s: DiffInterpreter("flat_mlp", {"epochs": epochs}, seed=s),
    }
    for seed in seeds:
        tr, te = split_by_parent(ds.parent_ids, 0.2, seed)
        for name, make in makers.items():
            row = fit_score(make, seed, ds.subset(tr), {"test": ds.subset(te)})
            res.setdefault(name, []).append(row)
            out.append({"part": "cnn", "interpreter": name, "seed": seed, **{k: v for k, v in row.items() if k != "interp"}})
            print(f"cnn seed {seed} {name}: {row['test']['acc_kind']:.3f}", flush=True)
    table(f"{population}: CNN diffs, held-out parents", {n: summary(r, "test") for n, r in res.items()}, KEYS + ["fit"])


def part_effects(z: Zoo, out: list) -> None:
    """Per corruption: robust child's corruption accuracy minus its null siblings' (same parent and rank)."""
    from zoo.build.finetune import change_metric
    from zoo.models.datasets import load_dataset

    ds = load_diffs(z, POP)
    data = load_dataset(str(ds.info.get("dataset", "digits"))).flat()
    child = {k: ds.diff[k] + ds.parent[k] for k in ds.diff}
    groups: dict[tuple, list[int]] = {}
    for i, c in enumerate(ds.changes):
        if c["kind"] == "null":
            groups.setdefault((ds.parent_ids[i], ds.ranks[i]), []).append(i)
    rows: dict[tuple[str, int], list[tuple[float, float]]] = {}
    for key in sorted({(c["corruption"], int(c["severity"])) for c in ds.changes if c["kind"] == "robust"}):
        ch = {"kind": "robust", "corruption": key[0], "severity": key[1]}
        acc_c = change_metric(ds.config, child, data, ch)
        acc_p = change_metric(ds.config, ds.parent, data, ch)
        clean_p = change_metric(ds.config, ds.parent, data, {"kind": "null"})
        for i, c in enumerate(ds.changes):
            sib = groups.get((ds.parent_ids[i], ds.ranks[i]))
            if c["kind"] == "robust" and (c["corruption"], int(c["severity"])) == key and sib:
                rows.setdefault(key, []).append((float(acc_c[i] - acc_c[sib].mean()), float(clean_p[i] - acc_p[i])))
    print(f"\n### {POP}: robust children against their null siblings\n")
    print("| corruption | severity | children | child - null sibling (corruption accuracy) | parent's drop under it |")
    print("|---|---|---|---|---|")
    for (name, sev), v in rows.items():
        a = np.asarray(v)
        print(f"| {name} | {sev} | {len(a)} | {a[:, 0].mean():+.3f} ± {a[:, 0].std():.3f} | {a[:, 1].mean():.3f} |")
        out.append({"part": "effects", "corruption": name, "severity": sev, "n": len(a),
                    "vs_null": float(a[:, 0].mean()), "parent_drop": float(a[:, 1].mean())})  # fmt: skip


def main() -> None:
    global POP, VALIDATE, MAIN
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", required=True)
    ap.add_argument("--seeds", type=int, default=3, help="seeds 0 .. N-1")
    ap.add_argument("--seed-ids", help="these seeds instead (comma-separated, e.g. 1,2: one per process)")
    ap.add_argument("--validate", action="store_true",
                    help="main: train on 80 %% of the training parents and score on the other 20 %% (a validation "
                         "split for choosing settings; the test parents stay unseen)")
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--parts", default="main,population,rank,curve,triggers,cnn",
                    help="population needs main in the same run (it scores main's interpreters)")
    ap.add_argument("--population", default="digits-mlp-diffs-xl", help="the labelled diffs of main/rank/curve/triggers")
    ap.add_argument("--only", help="main: only these interpreters (comma-separated names)")
    ap.add_argument("--main", default=MAIN, help=f"the interpreter rank, curve, triggers and population use (default {MAIN!r})")
    ap.add_argument("--cnn-population", default="digits-cnn-diffs")
    ap.add_argument("--out", help="write every row as JSON here")
    a = ap.parse_args()
    POP = a.population
    MAIN = a.main
    if MAIN not in interpreters(a.epochs):
        ap.error(f"--main: unknown interpreter {MAIN!r}; valid: {', '.join(interpreters(a.epochs))}")
    torch.set_num_threads(1)
    z = Zoo.open(a.root, create=False)
    seeds = [int(x) for x in a.seed_ids.split(",")] if a.seed_ids else list(range(a.seeds))
    VALIDATE = a.validate
    parts = a.parts.split(",")
    out: list = []
    kept: dict[int, Any] = {}
    t0 = time.time()
    if "main" in parts:
        kept = part_main(z, seeds, a.epochs, a.only.split(",") if a.only else None, out)
    if "rank" in parts:
        part_rank(z, seeds, a.epochs, out)
    if "curve" in parts:
        part_curve(z, seeds, a.epochs, out)
    if "triggers" in parts:
        part_triggers(z, seeds, a.epochs, out)
    if "population" in parts and kept:
        part_population(z, kept, out)
    if "effects" in parts:
        part_effects(z, out)
    if "cnn" in parts:
        part_cnn(z, seeds, a.epochs, a.cnn_population, out)
    print(f"\ntotal {time.time() - t0:.0f} s")
    if a.out:
        with open(a.out, "w") as f:
            json.dump(out, f, indent=1, default=str)


if __name__ == "__main__":
    main()
