"""``weightzoo landscape``: landscape and spectral metrics of a population from the shell.

Plugged into the ``weightzoo`` CLI through the ``weightzoo.commands`` entry-point group
(``landscape = "analysis.landscape.cli:register"`` in pyproject.toml).

    weightzoo landscape digits-mlp                                   # spectral metrics of every model
    weightzoo landscape digits-mlp --final --metrics spectral,hessian,cka
    weightzoo landscape "digits-mlp-phases/*" --metrics spectral,hessian,cka --report phases.png
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from zoo.errors import ConfigError

__all__ = ["register"]

_EPILOG = """\
POPULATION is a population name or a shell-style pattern of names ("digits-mlp-phases/*": a phase
grid whose width varies is one population per width). Every model is analysed batched (stacked
weights) and the results are written to the zoo as metrics (see docs/landscape.md for the names):

  spectral  per-layer spectral norm, stable rank, effective rank and the ESD's power-law alpha
            (KS cutoff, bootstrap interval, status: ok / small_sample / too_few_eigenvalues / failed);
            any model, raw state dicts included
  hessian   Hessian trace (Hutchinson, with its standard error) and top eigenvalue (power iteration,
            with its residual), whole model and per layer, on a seeded batch of the training split;
            classifiers, and INRs built by an INR recipe (on the image each was fitted to)
  cka       linear CKA of every model's activations to a reference model on the test split, per layer;
            classifiers (SIRENs: on their coordinate grid)

--report writes the phase map (PNG): the metric families over a grid of two hyperparameters
(--x/--y, default width x batch size), medians over seeds, and prints the rank correlations of
hyperparameters with metrics.

examples:
  weightzoo landscape digits-mlp --final
  weightzoo landscape digits-cnn --metrics spectral,hessian --probes 200 --samples 1024
  weightzoo build digits-mlp-phases
  weightzoo landscape "digits-mlp-phases/*" --metrics spectral,hessian,cka --report phases.png
"""


def _families(text: str) -> list[str]:
    from analysis.landscape.metrics import METRIC_FAMILIES

    fams = [f.strip() for f in text.split(",") if f.strip()]
    if not fams:
        raise ConfigError(f"--metrics: give a comma-separated subset of {', '.join(METRIC_FAMILIES.names())}")
    for f in fams:
        METRIC_FAMILIES.get(f)  # ConfigError listing the valid families
    return fams


def cmd_landscape(args: argparse.Namespace) -> int:
    from analysis.landscape.metrics import landscape
    from zoo.facade import Zoo

    fams = _families(args.metrics)
    for name in ("bootstrap", "probes", "iters", "samples", "limit"):
        v = getattr(args, name)
        if v is not None and v < (2 if name == "probes" else 0 if name == "bootstrap" else 1):
            raise ConfigError(f"--{name} must be at least {2 if name == 'probes' else 0 if name == 'bootstrap' else 1}, got {v}")
    z = Zoo.open(args.root, url=args.url, create=False)
    try:
        if args.report:
            from zoo.io.figures import check_png_path

            check_png_path(args.report, overwrite=args.overwrite, zoo_roots=[z.root])  # refuse before the work
        opts: dict[str, dict[str, Any]] = {
            "spectral": {"bootstrap": args.bootstrap, "seed": args.seed},
            "hessian": {"probes": args.probes, "method": args.trace_method, "iters": args.iters, "samples": args.samples, "seed": args.seed,
                        "dataset": args.dataset, "dataset_root": args.data_root},
            "cka": {"reference": args.reference, "samples": args.samples, "seed": args.seed, "dataset": args.dataset,
                    "dataset_root": args.data_root},
        }  # fmt: skip
        run = landscape(z, args.population, metrics=fams, final=args.final, limit=args.limit, record=not args.no_record,
                        progress=not args.no_progress, options={f: opts[f] for f in fams if f in opts})  # fmt: skip
        out: dict[str, Any] = {"population": args.population, "models": len(run.model_ids),
                               "populations": sorted({p for g in run.groups for p in g.populations}),
                               "seconds": {k: round(v, 3) for k, v in run.seconds.items()},
                               "rows_written": run.rows_written, "summary": _summary(run)}  # fmt: skip
        corr = None
        if args.report:
            from analysis.landscape.report import phase_map, population_table, rank_correlations

            table = population_table(z, args.population, final=args.final)
            corr = rank_correlations(table)
            phase_map(table, args.report, x=f"hp_{args.x}", y=f"hp_{args.y}", overwrite=args.overwrite, zoo_roots=[z.root])
            out["report"] = str(args.report)
            out["rank_correlations"] = corr.head(args.top).to_dict(orient="records")
    finally:
        z.close()
    if args.json:
        print(json.dumps(out, indent=2, default=str))
        return 0
    print(f"{out['models']} model(s) of {', '.join(out['populations']) or args.population}: "
          + ", ".join(f"{k} in {v:.2f}s" for k, v in out["seconds"].items())
          + (f"; {run.rows_written} metric rows written" if not args.no_record else "; nothing written (--no-record)"))  # fmt: skip
    for fam, stats in out["summary"].items():
        print(f"  {fam:9s} " + "   ".join(f"{k} {v}" for k, v in stats.items()))
    if corr is not None:
        print(f"rank correlations (Spearman), top {min(args.top, len(corr))} of {len(corr)}:")
        for r in corr.head(args.top).itertuples(index=False):
            print(f"  {r.hparam:>14s} ~ {r.metric:<26s} rho {r.rho:+.3f}  p {r.p_value:.2g}  n {r.n}")
        print(f"phase map: {out['report']}")
    return 0


def _summary(run: Any) -> dict[str, dict[str, str]]:
    """Medians of the whole-model numbers per family, and the spectral fits' status counts."""
    out: dict[str, dict[str, str]] = {}
    if "spectral" in run.frames:
        f = run.frames["spectral"]
        counts = f["status"].value_counts()
        out["spectral"] = {"layers": str(f["layer"].nunique()),
                           "median alpha": f"{f['alpha'].median():.3f}",
                           "fits": ", ".join(f"{k} {int(v)}" for k, v in counts.items())}  # fmt: skip
    if "hessian" in run.frames:
        f = run.frames["hessian"]
        w = f[f["layer"] == ""]
        out["hessian"] = {"median trace": f"{w['trace'].median():.4g}", "median se": f"{w['trace_se'].median():.3g}",
                          "median top eig": f"{w['top_eig'].median():.4g}"}  # fmt: skip
    if "cka" in run.frames:
        f = run.frames["cka"]
        w = f[f["layer"] == ""]
        out["cka"] = {"reference": ", ".join(map(str, sorted(w["reference_id"].unique()))),
                      "median cka": f"{w['cka'].median():.3f}"}  # fmt: skip
    return out


def register(subparsers: Any, common: argparse.ArgumentParser) -> None:
    """Add ``landscape`` to the ``weightzoo`` CLI (the ``weightzoo.commands`` entry-point hook)."""
    s = subparsers.add_parser(
        "landscape", parents=[common], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=_EPILOG,
        help="spectral (ESD alpha, ranks), sharpness (Hessian) and CKA metrics of a population, stored as metrics",
        description="Compute landscape and spectral metrics for every model of POPULATION at once and store them.",
    )  # fmt: skip
    s.add_argument("population", help="population name or pattern (quote wildcards: \"digits-mlp-phases/*\")")
    s.add_argument("--metrics", default="spectral", help="comma-separated families: spectral,hessian,cka (default spectral)")
    s.add_argument("--report", help="write the phase map to this .png and print rank correlations")
    s.add_argument("--x", default="width", help="phase map x axis: a hyperparameter (default width)")
    s.add_argument("--y", default="batch_size", help="phase map y axis: a hyperparameter (default batch_size; or lr)")
    s.add_argument("--overwrite", action="store_true", help="replace an existing --report file")
    s.add_argument("--top", type=int, default=12, help="rank correlations to print (default 12)")
    s.add_argument("--final", action="store_true", help="only the last checkpoint of each run")
    s.add_argument("--limit", type=int, help="at most this many models per architecture")
    s.add_argument("--bootstrap", type=int, default=100, help="bootstrap replicates of alpha's interval (default 100; 0: none)")
    s.add_argument("--probes", type=int, default=100, help="Hessian-vector products of the trace estimate (default 100)")
    s.add_argument("--trace-method", choices=["hutch++", "hutchinson"], default="hutch++",
                   help="trace estimator (default hutch++: Hutchinson with low-rank deflation)")
    s.add_argument("--iters", type=int, default=100, help="most power iterations (default 100)")
    s.add_argument("--samples", type=int, default=512, help="data samples for the Hessian and CKA batches (default 512)")
    s.add_argument("--reference", help="CKA reference model, id or name (default: best test accuracy)")
    s.add_argument("--dataset", default="digits", help="data set (default digits)")
    s.add_argument("--data-root", help="folder with the data set's files (not needed for digits)")
    s.add_argument("--seed", type=int, default=0, help="seeds the bootstrap, probes, start vectors and data batches")
    s.add_argument("--no-record", action="store_true", help="compute and print only; write nothing to the zoo")
    s.set_defaults(func=cmd_landscape)
