"""``weightzoo align`` and ``weightzoo lmc``: re-basin alignment and linear mode connectivity from the shell.

Plugged into the ``weightzoo`` CLI through the ``weightzoo.commands`` entry-point group
(``align = "analysis.align_cli:register"`` in pyproject.toml); :func:`register` adds both commands.

    weightzoo align 12 3                       # align model 12 to model 3 (weight matching), store, evaluate
    weightzoo align 12 3 --method activation_matching --population canon
    weightzoo align --from digits-mlp 3 --workers 2      # a whole population, in 2 shards (--ray: on Ray)
    weightzoo lmc 3 12 --align                 # loss/accuracy along the path, before and after aligning
    weightzoo lmc 3 12 --points 11 --json
"""

from __future__ import annotations

import argparse
import json
from typing import Any

_ALIGN_EPILOG = """\
The aligned model is stored in POPULATION (default "<model's population>/aligned-to-<reference>") with
lineage: parents {MODEL: model, REFERENCE: reference}, op "align.<method>", params (method, seed,
iterations, L2 distance to the reference before and after). Classifiers (mlp, cnn, resnet) are evaluated
on the data set's train/val/test splits and their metrics recorded.

methods:
  weight_matching      coordinate descent over permutations, linear assignment on summed inner products
                       of the weights (needs no data; seedable random order)
  activation_matching  correlation of hidden activations on a batch of training inputs, one assignment
                       per permutation (mlp, siren, cnn, resnet)

Several models (MODEL... REFERENCE) or every model of a population (--from POPULATION REFERENCE) are
aligned in one batched run and stored in one write. --workers N aligns them in N shards on a local process
pool, --ray [ADDRESS] as Ray tasks (a local Ray, or the cluster at ADDRESS); the workers get tensors only,
this process writes the aligned models, their lineage and metrics, exactly as an in-process run does.

examples:
  weightzoo align 12 3
  weightzoo align 12 3 --method activation_matching --seed 1 --population digits-mlp/canonical
  weightzoo align 12 13 14 3
  weightzoo align --from digits-mlp --final 3 --workers 2          # a population, on a 2-process pool
  weightzoo align --from digits-mlp 3 --ray HEAD:6379 --workers 8  # on a Ray cluster
"""

_LMC_EPILOG = """\
Evaluates all points of the path (and of the aligned path) as one stacked population. Barriers:
  loss barrier = max_t loss(t) - ((1-t) loss(0) + t loss(1))
  acc barrier  = max_t ((1-t) acc(0) + t acc(1)) - acc(t)
BatchNorm models get their running statistics recomputed at every point on the training split
(--no-bn-reset keeps the interpolated statistics). Nothing is written to the zoo.

examples:
  weightzoo lmc 3 12
  weightzoo lmc 3 12 --align --points 11
  weightzoo lmc 3 12 --align --json
"""


def _open(args: argparse.Namespace) -> Any:
    from zoo.facade import Zoo

    return Zoo.open(args.root, url=args.url, create=False)


def _metric(rec: Any, name: str) -> str:
    v = rec.metric(name.split("_", 1)[1], name.split("_", 1)[0])
    return "-" if v is None else f"{v:.4f}"


def _sources(z: Any, args: argparse.Namespace) -> list[int]:
    """The ids to align: the MODEL arguments, then the models of --from (only final checkpoints with --final)."""
    from zoo.errors import ConfigError, NotFoundError

    ids = [z.get(m).id for m in args.models]
    if args.from_population:
        q = z.population(args.from_population)
        found = (q.final() if args.final else q).ids()
        if not found:
            raise NotFoundError(f"population {args.from_population!r} has no models to align")
        ids += [i for i in found if i not in set(ids)]
    elif args.final:
        raise ConfigError("--final picks the last checkpoints of --from POPULATION; give --from")
    if not ids:
        raise ConfigError("name the model(s) to align (MODEL... REFERENCE) or a population (--from POPULATION REFERENCE)")
    return ids


def cmd_align(args: argparse.Namespace) -> int:
    from analysis.align import canonicalize
    from zoo.cli import executor_options
    from zoo.threads import torch_threads

    z = _open(args)
    try:
        ids, ref = _sources(z, args), z.get(args.reference)
        with torch_threads(args.threads):
            recs = canonicalize(
                z, ids, ref.id, method=args.method, population=args.population, seed=args.seed, max_iter=args.max_iter,
                dataset=args.dataset, dataset_root=args.data_root, evaluate=not args.no_eval, **executor_options(args),
            )  # fmt: skip
        if len(recs) > 1 or args.from_population:
            return _print_many(z, recs, ref, args)
        src, rec = z.get(ids[0]), recs[0]
        edge = next(e for e in rec.parents() if e.role == "model")
        p = edge.params
        if args.json:
            print(json.dumps({"model": rec.to_dict(), "params": p,
                              "metrics": rec.metrics().to_dict(orient="records")}, indent=2, default=str))  # fmt: skip
            return 0
        print(f"aligned model {src.id} to reference {ref.id} by {p['method']} (seed {p['seed']}, "
              f"{p['iterations']} sweep(s))")  # fmt: skip
        print(f"stored as model {rec.id} in population {rec.population!r} (op {rec.op})")
        drop = 1 - p["distance_after"] / p["distance_before"] if p["distance_before"] else 0.0
        print(f"L2 distance to the reference: {p['distance_before']:.4f} -> {p['distance_after']:.4f} ({drop:.1%} lower)")
        from zoo.models.architectures import is_classifier

        if not args.no_eval and is_classifier(rec.arch_config):
            print(f"{'':14s}{'source':>10s}{'aligned':>10s}")
            for m in ("test_acc", "test_loss", "val_acc"):
                print(f"{m:14s}{_metric(src, m):>10s}{_metric(rec, m):>10s}")
        return 0
    finally:
        z.close()


def _print_many(z: Any, recs: list[Any], ref: Any, args: argparse.Namespace) -> int:
    params = [next(e for e in r.parents() if e.role == "model").params for r in recs]
    if args.json:
        print(json.dumps({"reference": ref.id, "models": [{"id": r.id, "name": r.name, "population": r.population,
                          "source": p["model"], **{k: p[k] for k in ("iterations", "distance_before", "distance_after")}}
                          for r, p in zip(recs, params, strict=True)]}, indent=2, default=str))  # fmt: skip
        return 0
    before = sum(p["distance_before"] for p in params) / len(params)
    after = sum(p["distance_after"] for p in params) / len(params)
    pops = sorted({r.population for r in recs})
    print(f"aligned {len(recs)} models to reference {ref.id} by {params[0]['method']} (seed {params[0]['seed']})")
    print(f"stored as models {recs[0].id}..{recs[-1].id} in population(s) {', '.join(repr(p) for p in pops)} (op {recs[0].op})")
    print(f"mean L2 distance to the reference: {before:.4f} -> {after:.4f} ({1 - after / before if before else 0.0:.1%} lower)")
    return 0


def cmd_lmc(args: argparse.Namespace) -> int:
    from analysis.lmc import linear_mode_connectivity

    z = _open(args)
    try:
        rep = linear_mode_connectivity(
            z, args.a, args.b, align=args.align, method=args.method, seed=args.seed, points=args.points,
            split=args.split, dataset=args.dataset, dataset_root=args.data_root, bn_reset=not args.no_bn_reset,
        )  # fmt: skip
    finally:
        z.close()
    if args.json:
        print(json.dumps(rep.to_dict(), indent=2))
        return 0
    cols = [("naive", rep.naive)] + ([("aligned", rep.aligned)] if rep.aligned is not None else [])
    print(f"linear path from model {rep.a} (t=0) to model {rep.b} (t=1) on the {args.split} split"
          + (" (BatchNorm statistics recomputed at every point)" if rep.naive.bn_reset else ""))  # fmt: skip
    head = f"{'t':>6s}" + "".join(f"{n + ' loss':>15s}{n + ' acc':>14s}" for n, _ in cols)
    print(head)
    for i, t in enumerate(rep.naive.t.tolist()):
        print(f"{t:6.3f}" + "".join(f"{float(c.loss[i]):15.4f}{float(c.acc[i]):14.4f}" for _, c in cols))
    for n, c in cols:
        print(f"{n:8s} loss barrier {c.loss_barrier:.4f}   accuracy barrier {c.acc_barrier:.4f}")
    if rep.aligned is not None and rep.naive.loss_barrier > 0:
        p = rep.align_params
        print(f"alignment ({p['method']}): loss barrier x{rep.aligned.loss_barrier / rep.naive.loss_barrier:.3f}; "
              f"L2 distance {p['distance_before']:.3f} -> {p['distance_after']:.3f}")  # fmt: skip
    return 0


def register(subparsers: Any, common: argparse.ArgumentParser) -> None:
    """Add ``align`` and ``lmc`` to the ``weightzoo`` CLI (the ``weightzoo.commands`` entry-point hook)."""
    from analysis.align import aligners
    from zoo.cli import executor_args

    fmt = argparse.RawDescriptionHelpFormatter
    s = subparsers.add_parser(
        "align", parents=[common], formatter_class=fmt, epilog=_ALIGN_EPILOG,
        help="align a model's hidden neurons to a reference model (git re-basin) and store the result",
        description="Permute the hidden neurons of MODEL (or of several models, or of a population) to match "
                    "REFERENCE (same architecture); store and evaluate the result.",
    )  # fmt: skip
    s.add_argument("models", nargs="*", metavar="MODEL", help="id or name of a model to align (several: one batched run)")
    s.add_argument("reference", help="id or name of the reference model (left unchanged)")
    s.add_argument("--from", dest="from_population", metavar="POPULATION",
                   help="align every model of this population (with any MODELs given)")
    s.add_argument("--final", action="store_true", help="with --from: only the last checkpoint of each run")
    s.add_argument("--method", choices=aligners(), default="weight_matching", help="alignment method (default: weight_matching)")
    s.add_argument("--population", help='population for the aligned model (default: "<population>/aligned-to-<reference>")')
    s.add_argument("--seed", type=int, default=0, help="seed of weight matching's random permutation order (default 0)")
    s.add_argument("--max-iter", type=int, default=None, help="most sweeps of weight matching (default 100)")
    s.add_argument("--dataset", default="digits", help="data set for evaluation and activation matching (default digits)")
    s.add_argument("--data-root", help="folder with the data set's files (not needed for digits)")
    s.add_argument("--no-eval", action="store_true", help="do not evaluate the aligned model")
    executor_args(s)
    s.set_defaults(func=cmd_align)

    s = subparsers.add_parser(
        "lmc", parents=[common], formatter_class=fmt, epilog=_LMC_EPILOG,
        help="loss/accuracy along the linear path between two models, and its barrier (optionally after alignment)",
        description="Linear mode connectivity between models A and B (same architecture, classifiers).",
    )  # fmt: skip
    s.add_argument("a", help="id or name of the model at t=0 (the reference when aligning)")
    s.add_argument("b", help="id or name of the model at t=1 (aligned to A with --align)")
    s.add_argument("--align", action="store_true", help="also show the path after aligning B to A")
    s.add_argument("--method", choices=aligners(), default="weight_matching", help="alignment method for --align")
    s.add_argument("--seed", type=int, default=0, help="alignment seed (default 0)")
    s.add_argument("--points", type=int, default=25, help="points on the path, endpoints included (default 25)")
    s.add_argument("--split", default="test", choices=("train", "val", "test"), help="split to evaluate (default test)")
    s.add_argument("--dataset", default="digits", help="data set (default digits)")
    s.add_argument("--data-root", help="folder with the data set's files (not needed for digits)")
    s.add_argument("--no-bn-reset", action="store_true", help="keep interpolated BatchNorm statistics instead of recomputing them")
    s.set_defaults(func=cmd_lmc)
