"""The ``weightzoo`` command line: one entry point, one subcommand per task.

    weightzoo demo                      build the demo zoo from sklearn digits and print a summary
    weightzoo build digits-cnn          train a built-in recipe (or a recipe file) into the zoo
    weightzoo ls                        populations; `ls -p digits-mlp` lists models
    weightzoo show 42                   one model: architecture, metrics, hparams, lineage, tensors
    weightzoo query "select ..."        read-only SQL (DuckDB) over the catalog
    weightzoo tables                    derived tables (learner outputs); `tables show NAME`, `tables drop NAME`
    weightzoo ingest PATH|ORG/NAME      checkpoints, folders, sharded checkpoints, HF repos
    weightzoo export 42 OUT_DIR         HF-style folder (safetensors, config.json, model card)
    weightzoo verify | gc | lineage 42 | tag 42 good | push 42 org/name

Every command takes ``--root`` (default ``$WEIGHTZOO_HOME`` or ``~/.weightzoo``), ``--url`` (a
SQLAlchemy URL for the catalog, e.g. PostgreSQL) and ``--packs`` (``s3://bucket/prefix`` for a new zoo's
packs; see docs/scale-out.md). Errors print one line saying what was wrong and what
to do, and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from collections.abc import Sequence
from typing import Any

from zoo import jsonlimits
from zoo.errors import ConfigError, ZooError


def _open(args: argparse.Namespace, create: bool = True) -> Any:
    from zoo.facade import Zoo

    return Zoo.open(args.root, url=args.url, create=create, packs=getattr(args, "packs", None),
                    packs_cache=getattr(args, "packs_cache", None))  # fmt: skip


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, default=str))


def _table(df: Any, max_rows: int = 50) -> str:
    import pandas as pd

    with pd.option_context("display.max_rows", max_rows, "display.max_columns", 30, "display.width", 160):
        return df.to_string(index=False, max_rows=max_rows)


# ------------------------------------------------------------------------------------ commands
def cmd_demo(args: argparse.Namespace) -> int:
    from zoo.build.demo import run_demo

    z = _open(args)
    print(f"Building the demo zoo in {z.root} (sklearn digits; no download) ...")
    run_demo(z, quick=args.quick, progress=not args.no_progress, out=print)
    if args.app:
        return cmd_app(args)
    return 0


def cmd_build(args: argparse.Namespace) -> int:
    from zoo.build.builder import build
    from zoo.build.recipes import Recipe

    recipe = Recipe.load(args.recipe)
    if args.n is not None or args.epochs is not None:
        recipe = recipe.scaled(n=args.n, epochs=args.epochs)
    if args.name:
        recipe.name = args.name
    z = _open(args)
    rep = build(z, recipe, progress=not args.no_progress, resume=not args.no_resume, dataset_root=args.data_root,
                threads=args.threads, **executor_options(args))  # fmt: skip
    if args.json:
        _print_json(rep.__dict__)
    else:
        print(rep)
    return 130 if rep.interrupted else 0


def cmd_recipes(args: argparse.Namespace) -> int:
    from zoo.build.recipes import Recipe, builtin_recipes

    for name in builtin_recipes():
        r = Recipe.load(name)
        print(f"{name:22s} {r.description}")
    return 0


def cmd_ls(args: argparse.Namespace) -> int:
    z = _open(args, create=False)
    if args.architectures:
        rows = [{"id": a.id, "name": a.name, "family": a.family, "config": a.config} for a in z.architectures()]
        if args.json:
            _print_json(rows)
        else:
            for r in rows:
                print(f"{r['id']:4d}  {r['name']:28s} {json.dumps(r['config'])[:110]}")
        return 0
    if args.population is None and not args.all:
        pops = z.populations()
        if args.json:
            _print_json([p.__dict__ for p in pops])
            return 0
        if not pops:
            print(f"no populations in {z.root}; run `weightzoo demo` or `weightzoo build RECIPE`")
        for p in pops:
            print(f"{p.name:32s} {p.n_models:7d} models  arch={p.architecture}  {p.description}")
        s = z.summary()
        print(f"\n{s['models']} models, {s['pack_bytes'] / 1e6:.1f} MB in {s['packs']} packs, dedup ratio {s['dedup_ratio']:.2f}")
        return 0
    q = z.models() if args.population is None else z.population(args.population)
    if args.final:
        q = q.final()
    if args.tag:
        q = q.tag(*args.tag)
    total = q.count()
    df = q.limit(args.limit).df()
    if args.json:
        print(df.to_json(orient="records", default_handler=str))
    else:
        cols = [c for c in df.columns if c not in ("created_at", "source", "nbytes")]
        print(_table(df[cols], args.limit))
        if total > args.limit:
            print(f"... {total - args.limit} more (use --limit)")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    z = _open(args, create=False)
    m = z.get(args.model)
    info = m.to_dict()
    info["architecture_config"] = m.arch_config
    info["hparams"] = m.hparams()
    info["tags"] = m.tags()
    mets = m.metrics()
    info["metrics"] = mets.drop(columns=["model_id"]).to_dict(orient="records")
    info["parents"] = [e.__dict__ for e in m.parents()]
    info["children"] = [e.__dict__ for e in m.children()]
    shapes = z.sql(
        f"select t.name, b.dtype, b.shape, b.numel, b.l2, b.std, b.absmax from tensors t join blobs b on b.id = t.blob_id "
        f"where t.model_id = {int(m.id)} order by t.position"
    )
    info["tensors"] = shapes.to_dict(orient="records")
    if args.json:
        _print_json(info)
        return 0
    print(f"model {m.id}  {m.name or ''}")
    for k in ("population", "architecture", "run", "step", "op", "source", "n_params", "created_at"):
        print(f"  {k:13s} {info[k]}")
    print(f"  {'config':13s} {json.dumps(m.arch_config)[:140]}")
    if info["hparams"]:
        print("  hparams       " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in info["hparams"].items()))
    if info["tags"]:
        print("  tags          " + ", ".join(info["tags"]))
    if not mets.empty:
        print("  metrics")
        for r in mets.itertuples():
            print(f"    {(r.split + '_' if r.split else '') + r.name:16s} {r.value:.4f}" + (f"  (step {r.step})" if r.step is not None else ""))
    for label, edges, attr in (("parents", m.parents(), "parent"), ("children", m.children(), "child")):
        if edges:
            print(f"  {label:13s} " + ", ".join(f"{getattr(e, attr)} ({e.op}, {e.role})" for e in edges[:10]))
    print("  tensors")
    print("    " + _table(shapes, 40).replace("\n", "\n    "))
    return 0


def cmd_query(args: argparse.Namespace) -> int:
    z = _open(args, create=False)
    df = z.sql(args.sql, memory_limit=args.memory_limit, timeout=args.timeout, threads=args.threads)
    if args.json:
        print(df.to_json(orient="records", default_handler=str))
    elif args.csv:
        print(df.to_csv(index=False), end="")
    else:
        print(_table(df, args.limit))
    return 0


def _short_vector(v: object, keep: int = 4) -> object:
    """A vector cell as ``[a, b, c, d, ... (n)]`` for the terminal (CSV/JSON output keep every value)."""
    if hasattr(v, "__len__") and not isinstance(v, str) and len(v) > keep:  # type: ignore[arg-type]
        head = ", ".join(f"{float(x):.4g}" for x in list(v)[:keep])  # type: ignore[call-overload]
        return f"[{head}, ... ({len(v)})]"  # type: ignore[arg-type]
    return v


def cmd_tables(args: argparse.Namespace) -> int:
    z = _open(args, create=False)
    if args.action == "list":
        if args.name is not None:
            raise ZooError(f"`weightzoo tables list` takes no table name; did you mean `weightzoo tables show {args.name}`?")
        infos = z.tables()
        if args.json:
            _print_json([t.to_dict() for t in infos])
            return 0
        if not infos:
            print(f"no derived tables in {z.root}; learners write them with Zoo.write_table(name, dataframe)")
        for t in infos:
            cols = ", ".join(f"{c} {ty}" for c, ty in t.columns.items())
            by = f"  by model {t.produced_by}" if t.produced_by is not None else ""
            print(f"{t.name:28s} {t.n_rows:9d} rows  {t.nbytes / 1e6:8.2f} MB{by}  ({cols[:100]})"
                  + (f"\n{'':28s} {t.description}" if t.description else ""))  # fmt: skip
        return 0
    if args.name is None:
        raise ZooError(f"name the table: `weightzoo tables {args.action} NAME` (list them with `weightzoo tables`)")
    if args.action == "drop":
        info = z.table_info(args.name)
        z.drop_table(args.name)
        print(f"dropped table {args.name} ({info.n_rows} rows)")
        return 0
    info = z.table_info(args.name)
    df = z.table(args.name)
    shown = df.head(args.limit)
    if args.json:
        _print_json({**info.to_dict(), "rows": json.loads(shown.to_json(orient="records", default_handler=str))})
        return 0
    if args.csv:
        print(shown.to_csv(index=False), end="")
        return 0
    by = f", produced by model {info.produced_by}" if info.produced_by is not None else ""
    print(f"table {info.name}: {info.n_rows} rows{by}, updated {info.updated_at}")
    if info.description:
        print(f"  {info.description}")
    print("  columns: " + ", ".join(f"{c} {ty}" for c, ty in info.columns.items()))
    print(_table(shown.apply(lambda col: col.map(_short_vector)), args.limit))
    if info.n_rows > args.limit:
        print(f"... {info.n_rows - args.limit} more (use --limit)")
    return 0


def cmd_ingest(args: argparse.Namespace) -> int:
    z = _open(args)
    arch: Any = None
    if args.arch:
        arch = jsonlimits.loads(args.arch, "--arch") if args.arch.strip().startswith("{") else args.arch
    with warnings.catch_warnings():  # skipped links etc.: one plain line each on stderr
        warnings.showwarning = lambda msg, *_a, **_k: print(f"weightzoo ingest: warning: {msg}", file=sys.stderr)
        recs = z.ingest(args.source, population=args.population, arch=arch, tags=args.tag or (), revision=args.revision,
                        cache_dir=args.cache_dir, offline=True if args.offline else None,
                        progress=not args.no_progress, follow_symlinks=args.follow_symlinks)  # fmt: skip
    if args.json:
        _print_json([r.to_dict() for r in recs])
    else:
        ids = [r.id for r in recs]
        print(f"ingested {len(recs)} model(s): ids {ids[0]}..{ids[-1]}" if len(ids) > 1 else f"ingested model {ids[0]}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from zoo.io.outpath import guard_output_dir

    guard_output_dir(args.out_dir, overwrite=args.overwrite, what="export folder", zoo_roots=[args.root])
    z = _open(args, create=False)
    out = z.export(args.model, args.out_dir, overwrite=args.overwrite, max_shard_size=args.max_shard_size)
    print(f"exported model {args.model} to {out}")
    return 0


def cmd_push(args: argparse.Namespace) -> int:
    import tempfile

    from zoo.io.export import push_to_hub

    z = _open(args, create=False)
    with tempfile.TemporaryDirectory() as tmp:
        folder = z.export(args.model, f"{tmp}/model")
        url = push_to_hub(folder, args.repo_id, private=args.private)
    print(f"pushed model {args.model} to {url}")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    z = _open(args, create=False)
    rep = z.verify(rehash=not args.no_rehash, progress=not args.no_progress)
    if args.json:
        _print_json(rep.to_dict())
    else:
        print(rep)
    return 0 if rep.ok else 1


def cmd_gc(args: argparse.Namespace) -> int:
    z = _open(args, create=False)
    rep = z.gc(grace_seconds=args.grace, dry_run=args.dry_run, repack=args.compact)
    if args.json:
        _print_json(rep.to_dict())
    else:
        print(rep)
        if args.compact:
            print(f"repacked {len(rep.repacked)} population(s) into stacking order: {', '.join(rep.repacked) or '-'}")
    return 0


def cmd_repack(args: argparse.Namespace) -> int:
    z = _open(args, create=False)
    rep = z.repack(args.population, dry_run=args.dry_run)
    if args.json:
        _print_json(rep.to_dict())
    else:
        print(rep)
    return 0


def cmd_lineage(args: argparse.Namespace) -> int:
    z = _open(args, create=False)
    direction = "both" if args.both else ("down" if args.down else "up")
    edges = z.lineage(args.model, direction=direction, max_depth=args.depth)
    if args.json:
        _print_json([e.__dict__ for e in edges])
        return 0
    if not edges:
        print(f"model {args.model} has no recorded {'descendants' if direction == 'down' else 'ancestors'}")
    for e in edges:
        params = json.dumps(e.params)
        print(f"{e.parent:>8} -> {e.child:<8} {e.op:22s} role={e.role:10s} {params[:80]}")
    return 0


def cmd_tag(args: argparse.Namespace) -> int:
    z = _open(args, create=False)
    (z.untag if args.remove else z.tag)(args.model, *args.tags)
    print(f"model {args.model}: tags {', '.join(z.tags(args.model)) or '(none)'}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    z = _open(args, create=False)
    models: list = list(args.models)
    if args.population:
        models += z.population(args.population).ids()
    if not models:
        raise ZooError("name models to evaluate (ids/names) or a population with -p")
    from zoo.threads import torch_threads

    with torch_threads(args.threads):
        df = z.evaluate(models, dataset=args.dataset, splits=args.split or ["test"], dataset_root=args.data_root,
                        record=not args.no_record, **executor_options(args))  # fmt: skip
    if args.json:
        print(df.to_json(orient="records"))
    else:
        print(_table(df, 50))
        parts = [f"mean accuracy {df['acc'].mean():.4f}"] if df["acc"].notna().any() else []
        if "psnr" in df and df["psnr"].notna().any():  # INRs: the fit of their own image
            parts.append(f"mean psnr {df['psnr'].mean():.2f} dB")
        print(" / ".join(parts) + f" over {df['model_id'].nunique()} model(s)" + ("" if args.no_record else "; recorded"))
    return 0


def cmd_app(args: argparse.Namespace) -> int:
    import importlib.util
    import os
    import subprocess
    from pathlib import Path

    main = Path(__file__).resolve().parent.parent / "app" / "Home.py"
    missing = [m for m in ("streamlit", "plotly") if importlib.util.find_spec(m) is None]
    if missing or not main.exists():
        raise ZooError(f"the explorer needs {' and '.join(missing) or 'the app pages'}: pip install 'weightzoo[app]'")
    port = getattr(args, "port", None) or 8501
    host = getattr(args, "host", None) or "localhost"
    if not 1 <= port <= 65535:
        raise ConfigError(f"--port must be between 1 and 65535, got {port}")
    root = ["--", "--root", str(Path(args.root).expanduser().resolve())] if args.root is not None else []
    env = dict(os.environ)
    if args.url:  # through the environment: a catalog URL may hold a password
        env["WEIGHTZOO_URL"] = args.url
    headless = bool(getattr(args, "no_browser", False))
    # offline-friendly: no usage statistics sent from the browser
    cmd = [sys.executable, "-m", "streamlit", "run", str(main), "--browser.gatherUsageStats", "false",
           "--server.port", str(port), "--server.address", host, "--server.headless", str(headless).lower(), *root]
    shown = "localhost" if host in ("0.0.0.0", "::") else host
    tunnel = f"; from another machine: ssh -L {port}:localhost:{port} THIS_HOST, then open http://localhost:{port}"
    local = host in ("localhost", "127.0.0.1")
    print(f"weightzoo explorer on http://{shown}:{port}  (Ctrl-C stops it{tunnel if local else ''})", flush=True)
    if getattr(args, "dry_run", False):
        print(" ".join(cmd))
        return 0
    return subprocess.call(cmd, env=env)


def cmd_doctor(args: argparse.Namespace) -> int:
    from zoo.doctor import checks

    report = checks(args.root, args.url)
    if args.json:
        _print_json([{"part": c.part, "ok": c.ok, "detail": c.detail} for c in report])
    else:
        width = max(len(c.part) for c in report)
        for c in report:
            print(f"{'ok ' if c.ok else 'NO '} {c.part:<{width}}  {c.detail}")
    core = {"weightzoo", "python", "torch", "sql over the catalog", "zoo"}
    return 0 if all(c.ok for c in report if c.part in core) else 1


# ------------------------------------------------------------------------------------ parser
def executor_args(s: argparse.ArgumentParser, *, threads: bool = True) -> None:
    """Add ``--workers N``, ``--ray [ADDRESS]`` and ``--ray-timeout`` (where a job's shards run,
    docs/scale-out.md) and, with ``threads``, ``--threads N``. The one home of these options: the store's
    commands and the learners' (``weightzoo align``, ``encode``, ``generate sample``) all add them here and
    read them back with :func:`executor_options`."""
    s.add_argument("--workers", type=int, default=1, metavar="N",
                   help="run the shards in N worker processes (a local process pool, or N CPUs of a local Ray)")
    s.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS",
                   help="run the shards as Ray tasks: a local Ray (no ADDRESS) or the cluster at ADDRESS "
                        "(host:port or ray://host:10001); needs pip install 'weightzoo[ray]'")  # fmt: skip
    s.add_argument("--ray-timeout", type=float, default=30.0, metavar="SECONDS",
                   help="seconds to wait for the Ray cluster at ADDRESS to answer (default 30)")
    if threads:
        s.add_argument("--threads", type=int, default=1, metavar="N",
                       help="torch threads per process (default 1: small models run fastest on one thread when "
                            "other work shares the cores; raise it for CNNs/ResNets on an idle machine)")  # fmt: skip


def executor_options(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments of a job's Python API (``workers``, ``executor``, ``address``, ``timeout``) from
    the options :func:`executor_args` added."""
    ray = args.ray is not None
    return {"workers": args.workers, "executor": "ray" if ray else None,
            "address": args.ray if ray and args.ray != "local" else None, "timeout": args.ray_timeout}  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--root", help="zoo root folder (default: $WEIGHTZOO_HOME or ~/.weightzoo)")
    common.add_argument("--url", help="SQLAlchemy URL of the catalog (default: SQLite in the root), e.g. postgresql://u@host/db")
    common.add_argument("--packs", help="where a new zoo keeps its packs: s3://bucket/prefix or a folder (default: "
                        "$WEIGHTZOO_PACKS, else ROOT/packs; recorded in the catalog); file-system options from "
                        "$WEIGHTZOO_STORAGE_OPTIONS (JSON) or the usual AWS_* variables")  # fmt: skip
    common.add_argument("--packs-cache", help="local read-cache folder for packs in a bucket ($WEIGHTZOO_PACKS_CACHE)")
    common.add_argument("--json", action="store_true", help="machine-readable JSON output")
    common.add_argument("--no-progress", action="store_true", help="hide progress bars")
    common.add_argument("--debug", action="store_true", help="show the full traceback of an error (also WEIGHTZOO_DEBUG=1)")

    p = argparse.ArgumentParser(
        prog="weightzoo",
        description="A checkpoint store for populations of trained models (weight-space learning).",
        epilog="Start with `weightzoo demo`, then `weightzoo ls` and `weightzoo query \"select * from model_overview limit 5\"`.",
    )
    from zoo.doctor import version

    p.add_argument("--version", action="version", version=f"weightzoo {version()}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("demo", parents=[common], help="build the demo zoo from sklearn digits and print a summary",
                       description="Build the demo zoo from scikit-learn's bundled digits (no download):\n"
                       "300 digits MLPs with random training hyperparameters, each saved at 3 epochs (900\n"
                       "checkpoints), and 500 SIRENs, one per digits image; then print a summary (accuracy\n"
                       "histogram per epoch, INR fit quality) and queries to try. About 1-2 minutes on two\n"
                       "cores; a second run resumes and trains nothing. --quick builds a small zoo in seconds.",
                       epilog="examples:\n  weightzoo demo              # into $WEIGHTZOO_HOME or ~/.weightzoo\n"
                       "  weightzoo demo --root /tmp/wz --app   # then open the explorer on it",
                       formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    s.add_argument("--quick", action="store_true", help="a small demo (fewer models, fewer epochs) in seconds")
    s.add_argument("--app", action="store_true", help="open the Streamlit explorer afterwards")
    s.set_defaults(func=cmd_demo)

    s = sub.add_parser("build", parents=[common], help="train a population recipe into the zoo (resumable)")
    s.add_argument("recipe", help="built-in recipe name (see `weightzoo recipes`) or a .yml/.json recipe file")
    s.add_argument("--n", type=int, help="number of runs (random searches)")
    s.add_argument("--epochs", type=int, help="train this many epochs (checkpoints scaled to fit)")
    s.add_argument("--name", help="population name (default: the recipe's)")
    s.add_argument("--data-root", help="folder with MNIST/Fashion-MNIST/CIFAR-10 files, for recipes using them")
    s.add_argument("--no-resume", action="store_true", help="retrain runs that are already in the zoo")
    executor_args(s)
    s.set_defaults(func=cmd_build)

    s = sub.add_parser("recipes", parents=[common], help="list the built-in population recipes")
    s.set_defaults(func=cmd_recipes)

    s = sub.add_parser("ls", parents=[common], help="list populations, or models with -p/--all")
    s.add_argument("-p", "--population", help="list the models of this population")
    s.add_argument("--all", action="store_true", help="list all models")
    s.add_argument("--architectures", action="store_true", help="list architectures")
    s.add_argument("--final", action="store_true", help="only the last checkpoint of each run")
    s.add_argument("--tag", action="append", help="only models with this tag (repeatable)")
    s.add_argument("--limit", type=int, default=30)
    s.set_defaults(func=cmd_ls)

    s = sub.add_parser("show", parents=[common], help="show one model (by id or name)")
    s.add_argument("model")
    s.set_defaults(func=cmd_show)

    s = sub.add_parser(
        "query", parents=[common], help="run a read-only SQL query (DuckDB) over the catalog",
        description="Tables: models, populations, architectures, metrics (model_id, name, split, step, value), "
        "hyperparameters (model_id, name, value, value_num, value_text), lineage (child_id, parent_id, role, op, params), "
        "tags, tensors (model_id, name, blob_id), blobs (id, dtype, shape, l2, mean, std, absmax), packs, "
        "derived_tables, and every derived table by name (see `weightzoo tables`). "
        "Views: model_overview, metrics_wide, hparams_wide.",
    )  # fmt: skip
    s.add_argument("sql")
    s.add_argument("--csv", action="store_true", help="CSV output")
    s.add_argument("--limit", type=int, default=100, help="rows to print (table output)")
    s.add_argument("--memory-limit", metavar="SIZE", help="stop the query past this much memory, e.g. 2GB, 512MB, "
                   "50%% of RAM (default: $WEIGHTZOO_SQL_MEMORY, else 25%% of RAM)")  # fmt: skip
    s.add_argument("--timeout", metavar="SECONDS", help="stop the query after this long, 0 = never "
                   "(default: $WEIGHTZOO_SQL_TIMEOUT, else 60)")  # fmt: skip
    s.add_argument("--threads", metavar="N", help="DuckDB threads (default: $WEIGHTZOO_SQL_THREADS, else up to 4)")
    s.set_defaults(func=cmd_query)

    s = sub.add_parser(
        "tables", parents=[common], help="list, show or drop derived tables (learner outputs queryable with SQL)",
        description="Derived tables hold learner outputs (predictions, embeddings, weight statistics) written with "
        "Zoo.write_table(name, dataframe). `weightzoo query` can join them with the catalog, e.g. "
        "\"select m.name, p.pred from model_overview m join encoder_preds p on p.model_id = m.id\".",
        epilog="Examples: `weightzoo tables`; `weightzoo tables show encoder_preds --limit 5`; "
        "`weightzoo tables drop encoder_preds`.",
    )  # fmt: skip
    s.add_argument("action", nargs="?", choices=["list", "show", "drop"], default="list",
                   help="list (default) all tables; show NAME: its columns and first rows; drop NAME: delete it")  # fmt: skip
    s.add_argument("name", nargs="?", help="table name (for show and drop)")
    s.add_argument("--limit", type=int, default=20, help="rows to print for show (default 20)")
    s.add_argument("--csv", action="store_true", help="CSV output for show")
    s.set_defaults(func=cmd_tables)

    s = sub.add_parser("ingest", parents=[common], help="add checkpoints: file, folder, sharded index, or HF repo id")
    s.add_argument("source", help="path to .safetensors/.pt/.pth/.bin, a folder, or an HF repo id (org/name)")
    s.add_argument("-p", "--population", help="put the models in this population")
    s.add_argument("--arch", help="architecture: a registered name or a JSON config")
    s.add_argument("--tag", action="append", help="tag every ingested model (repeatable)")
    s.add_argument("--revision", help="HF revision (branch, tag or commit)")
    s.add_argument("--cache-dir", help="HF cache folder (default: huggingface_hub's)")
    s.add_argument("--offline", action="store_true", help="never touch the network: read HF repos from the local cache only")
    s.add_argument("--follow-symlinks", action="store_true",
                   help="read file links leading outside the folder and follow directory links (default: refuse / skip)")
    s.set_defaults(func=cmd_ingest)

    s = sub.add_parser("export", parents=[common], help="write a model as an HF-style folder")
    s.add_argument("model")
    s.add_argument("out_dir")
    s.add_argument("--overwrite", action="store_true",
                   help="replace an existing folder that weightzoo wrote (never a zoo or another folder)")
    s.add_argument("--max-shard-size", type=int, help="bytes per safetensors shard (default: one file)")
    s.set_defaults(func=cmd_export)

    s = sub.add_parser("push", parents=[common], help="export a model and upload it to the Hugging Face Hub")
    s.add_argument("model")
    s.add_argument("repo_id")
    s.add_argument("--private", action="store_true")
    s.set_defaults(func=cmd_push)

    s = sub.add_parser("verify", parents=[common], help="re-hash every blob; report missing, corrupt and orphan data")
    s.add_argument("--no-rehash", action="store_true", help="check presence and offsets only (fast)")
    s.set_defaults(func=cmd_verify)

    s = sub.add_parser("gc", parents=[common], help="remove unreferenced data, orphan packs and temp files; compact")
    s.add_argument("--grace", type=float, default=3600.0, help="spare orphans younger than this many seconds (default 3600)")
    s.add_argument("--dry-run", action="store_true", help="report what would be removed")
    s.add_argument("--compact", action="store_true",
                   help="also rewrite populations written in many batches into one pack in stacking order (repack)")
    s.set_defaults(func=cmd_gc)

    s = sub.add_parser("repack", parents=[common], help="rewrite populations written in many batches into one pack each, in stacking order")
    s.add_argument("-p", "--population", default=None, help="only this population (default: every population)")
    s.add_argument("--dry-run", action="store_true", help="report what would be rewritten")
    s.set_defaults(func=cmd_repack)

    s = sub.add_parser("lineage", parents=[common], help="a model's ancestors (default) or descendants")
    s.add_argument("model")
    s.add_argument("--down", action="store_true", help="descendants instead of ancestors")
    s.add_argument("--both", action="store_true", help="ancestors and descendants")
    s.add_argument("--depth", type=int, help="at most this many generations")
    s.set_defaults(func=cmd_lineage)

    s = sub.add_parser("tag", parents=[common], help="add (or --remove) tags on a model")
    s.add_argument("model")
    s.add_argument("tags", nargs="+")
    s.add_argument("--remove", action="store_true")
    s.set_defaults(func=cmd_tag)

    s = sub.add_parser("app", parents=[common], help="open the Streamlit explorer",
                       description="Serve the Streamlit explorer. On a remote machine: `weightzoo app --no-browser`, "
                       "then on your laptop `ssh -L 8501:localhost:8501 HOST` and open http://localhost:8501.")
    s.add_argument("--port", type=int, default=8501, help="port to serve on (default 8501)")
    s.add_argument("--host", default="localhost",
                   help="address to listen on (default localhost: only this machine; 0.0.0.0 for every interface)")
    s.add_argument("--no-browser", action="store_true", help="do not open a browser (remote or shared machines)")
    s.add_argument("--dry-run", action="store_true", help=argparse.SUPPRESS)  # print the command (tests)
    s.set_defaults(func=cmd_app)

    s = sub.add_parser("doctor", parents=[common], help="what is installed and usable (extras, browser, zoo schema)")
    s.set_defaults(func=cmd_doctor)

    s = sub.add_parser("eval", parents=[common], help="evaluate models on a data set and record the metrics",
                       description="Evaluate stored classifiers on a data set's splits (loss, accuracy) and INRs "
                       "(SIRENs built by an INR recipe) on their own image (MSE, PSNR), batched per architecture; "
                       "the metrics are recorded unless --no-record.")  # fmt: skip
    s.add_argument("models", nargs="*", help="model ids or names")
    s.add_argument("-p", "--population", help="evaluate every model of this population")
    s.add_argument("--dataset", default="digits")
    s.add_argument("--data-root", help="folder with MNIST/Fashion-MNIST/CIFAR-10 files")
    s.add_argument("--split", action="append", help="split(s) to evaluate (default: test)")
    s.add_argument("--no-record", action="store_true", help="print only; do not store the metrics")
    executor_args(s)
    s.set_defaults(func=cmd_eval)

    # Commands of the other packages (alignment, merging, encoders, ...) plug in through the
    # "weightzoo.commands" entry-point group: functions taking (subparsers, common parent parser).
    # The store itself knows nothing of them.
    from importlib.metadata import entry_points

    for ep in sorted(entry_points(group="weightzoo.commands"), key=lambda e: e.name):
        try:
            ep.load()(sub, common)
        except ImportError as e:  # an optional extra is not installed: leave the command out
            print(f"weightzoo: command {ep.name!r} unavailable ({e})", file=sys.stderr)
    return p


def _one_line(msg: object) -> str:
    """An error message as one printable line: newlines joined, control/bidi/invisible characters escaped."""
    text = " ".join(part.strip() for part in str(msg).splitlines() if part.strip())
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)


def _user_message(e: BaseException) -> str:
    """The one-line message for an error a user can cause (ZooErrors say it themselves)."""
    if isinstance(e, ZooError):
        return _one_line(e)
    if isinstance(e, RecursionError):
        return ("the input is nested too deeply to process (a JSON or YAML config with thousands of levels?); "
                "flatten it. Run with --debug for the traceback")  # fmt: skip
    if isinstance(e, UnicodeError):
        return (f"text that is not valid UTF-8 ({_one_line(e)}); names, paths and files read as text must be "
                "UTF-8. Run with --debug for the traceback")  # fmt: skip
    name = _one_line(e.filename) if getattr(e, "filename", None) else ""  # an OSError
    where = f": {name[:200]}..." if len(name) > 200 else f": {name}" if name else ""
    return (f"{_one_line(getattr(e, 'strerror', None) or e)}{where}; check the path, its permissions and the free "
            "disk space. Run with --debug for the traceback")  # fmt: skip


def _debug_wanted(argv: Sequence[str]) -> bool:
    return "--debug" in argv or os.environ.get("WEIGHTZOO_DEBUG", "").strip().lower() not in ("", "0", "false", "no")


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command. Every error a user can cause prints one line ``weightzoo CMD: error: ...`` and exits 2.

    ``--debug`` (or ``WEIGHTZOO_DEBUG=1``) re-raises instead, showing the full traceback.
    """
    from zoo.names import encodable

    argv = list(sys.argv[1:] if argv is None else argv)
    debug = _debug_wanted(argv)
    for i, a in enumerate(argv, 1):
        if isinstance(a, str) and not encodable(a):
            print(f"weightzoo: error: argument {i} ({ascii(a)}) is not valid UTF-8 text; names, paths and queries "
                  "must be UTF-8 (check the terminal's locale or rename the file)", file=sys.stderr)  # fmt: skip
            return 2
    args = build_parser().parse_args(argv)
    cmd = f"weightzoo {args.command}"
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(f"{cmd}: interrupted; the store is consistent (writes are atomic)", file=sys.stderr)
        return 130
    except (ZooError, RecursionError, UnicodeError, OSError) as e:
        if debug:
            raise
        print(f"{cmd}: error: {_user_message(e)}", file=sys.stderr)
        return 2

if __name__ == "__main__":
    sys.exit(main())
