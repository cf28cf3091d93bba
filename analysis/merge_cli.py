"""``weightzoo merge``: merge models from a mergekit-style YAML config or from one-off flags.

    weightzoo merge merge.yml OUT_DIR                        # mergekit-style config -> HF folder
    weightzoo merge merge.yml --to-zoo --population merged   # ... -> the zoo, with lineage
    weightzoo merge --method ties --base 3 --models 4 5 6 --density 0.5 --out DIR
    weightzoo merge --list-methods                           # every method with its parameters

Plugged into the ``weightzoo`` command through the ``weightzoo.commands`` entry point
(``merge = "analysis.merge_cli:register"``); ``python -m analysis.merge_cli`` runs it standalone.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

import yaml

from zoo.errors import ConfigError, ZooError

__all__ = ["cmd_merge", "main", "register"]

EPILOG = """\
models are named by local path (a .safetensors file, an HF-style or sharded folder), Hugging Face
repo id (org/name; read from the local HF cache when offline), or zoo model: zoo:42, 42, zoo:NAME.

config (mergekit-style YAML):
  merge_method: ties
  base_model: zoo:3
  models:
    - model: zoo:4
      parameters: {weight: 1.0, density: 0.5}
    - model: ./finetune-b
      parameters: {weight: 0.5, density: 0.5}
  parameters: {normalize: true, lambda: 1.0}
  dtype: float32

methods: see `weightzoo merge --list-methods` and docs/merging.md.
"""


def register(subparsers: Any, common: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add ``merge`` to the ``weightzoo`` command (the ``weightzoo.commands`` entry-point hook)."""
    s = subparsers.add_parser(
        "merge", parents=[common], help="merge models (TIES, DARE, SLERP, model soups, ...) tensor by tensor",
        description=__doc__.split("\n\n")[0], epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    s.add_argument("config", nargs="?", help="mergekit-style YAML config (omit when using --method)")
    s.add_argument("out_dir", nargs="?", help="output folder (HF-style: safetensors shards, config.json, README.md)")
    s.add_argument("--out", dest="out_flag", metavar="DIR", help="output folder (same as OUT_DIR)")
    s.add_argument("--to-zoo", action="store_true", help="store the merged model in the zoo (with lineage)")
    s.add_argument("--population", help="population of the stored model (with --to-zoo)")
    s.add_argument("--name", help="name of the stored model (with --to-zoo)")
    s.add_argument("--tag", action="append", default=[], help="tag of the stored model (repeatable)")
    s.add_argument("--no-eval", action="store_true", help="do not evaluate a stored mlp/cnn/resnet merge")
    s.add_argument("--dataset", help="evaluation data set (default: the base's dataset hyperparameter, else digits)")
    s.add_argument("--max-shard-size", default="2GB", help="largest output shard, e.g. 2GB, 500MB (default 2GB)")
    s.add_argument("--overwrite", action="store_true",
                   help="replace an existing output folder that weightzoo wrote (never a zoo or another folder)")  # fmt: skip
    s.add_argument("--offline", action="store_true", default=None, help="never touch the network for HF repo ids")
    s.add_argument("--threads", type=int, default=1,
                   help="torch threads for the arithmetic (default 1: the merge is memory-bound, and with more "
                        "threads the OpenMP workers spin whenever another process holds a CPU)")  # fmt: skip
    s.add_argument("--list-methods", action="store_true", help="list the merge methods and their parameters, then exit")
    g = s.add_argument_group("one-off merges (instead of a config file)")
    g.add_argument("--method", help="merge method, e.g. ties, dare_ties, task_arithmetic, slerp, linear, model_stock")
    g.add_argument("--base", help="base model (zoo id/name, path or HF repo id)")
    g.add_argument("--models", nargs="+", metavar="MODEL", help="models to merge")
    g.add_argument("--weight", nargs="+", type=float, help="weight(s): one for all models or one per model")
    g.add_argument("--density", nargs="+", type=float, help="density(ies): fraction of each task vector kept")
    g.add_argument("--gamma", nargs="+", type=float, help="breadcrumbs: fraction of largest deltas dropped")
    g.add_argument("--lambda", dest="lambda_", type=float, help="scale of the merged task vector")
    g.add_argument("--t", type=float, help="slerp: interpolation factor (0 = base, 1 = the other model)")
    g.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                   help="any other method parameter, e.g. --param normalize=false (repeatable)")  # fmt: skip
    g.add_argument("--dtype", help="output dtype: float32, bfloat16, float16 (default: the inputs')")
    g.add_argument("--seed", type=int, help="seed of DARE's random drops (default 0)")
    s.set_defaults(func=cmd_merge)
    return s


def _flags_config(args: argparse.Namespace) -> dict[str, Any]:
    if not args.models:
        raise ConfigError("--method needs --models (and usually --base)")
    n = len(args.models)
    per_model: dict[str, list[float]] = {}
    for key in ("weight", "density", "gamma"):
        vals = getattr(args, key)
        if vals is None:
            continue
        if len(vals) not in (1, n):
            raise ConfigError(f"--{key} takes one value or one per model ({n}), got {len(vals)}")
        per_model[key] = vals * n if len(vals) == 1 else vals
    params: dict[str, Any] = {}
    if args.lambda_ is not None:
        params["lambda"] = args.lambda_
    if args.t is not None:
        params["t"] = args.t
    for item in args.param:
        if "=" not in item:
            raise ConfigError(f"--param takes KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        params[k.strip()] = yaml.safe_load(v)
    models = [{"model": m, "parameters": {k: v[i] for k, v in per_model.items()}} for i, m in enumerate(args.models)]
    cfg: dict[str, Any] = {"merge_method": args.method, "models": models, "parameters": params}
    if args.base is not None:
        cfg["base_model"] = args.base
    if args.dtype:
        cfg["dtype"] = args.dtype
    if args.seed is not None:
        cfg["seed"] = args.seed
    return cfg


def _needs_zoo(cfg: Any) -> bool:
    from analysis.merging.sources import zoo_key

    refs = ([cfg.base_model] if cfg.base_model is not None else []) + [m.model for m in cfg.models]
    return any(zoo_key(r) is not None for r in refs)


def _keep_freed_memory() -> None:
    """glibc only: keep freed chunk-sized blocks (< 64 MB) in the heap for reuse.

    A streamed merge allocates and frees the same few MB-sized temporaries for every chunk;
    glibc's default returns them to the OS each time, and faulting the pages back costs about as
    much as the arithmetic. Peak memory is unchanged (it is set by the live blocks). Process-wide,
    hence in the command rather than in the library.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 64 << 20)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 256 << 20)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):  # not glibc
        pass


def cmd_merge(args: argparse.Namespace) -> int:
    from analysis.merging import MergeConfig, get_method, list_methods, merge
    from analysis.merging.engine import check_config
    from zoo.io.outpath import guard_output_dir

    if args.list_methods:
        for name in list_methods():
            print(get_method(name).describe())
        return 0
    if args.method:
        if args.config and args.out_dir:
            raise ConfigError("give a config file or --method flags, not both")
        out_dir = args.out_flag or args.out_dir or args.config  # with --method the first positional is OUT_DIR
        cfg = MergeConfig.from_dict(_flags_config(args))
    else:
        if not args.config:
            raise ConfigError("give a merge config (CONFIG.yml) or --method with --models; see --help")
        for flag in ("base", "models", "weight", "density", "gamma", "lambda_", "t", "dtype", "seed"):
            if getattr(args, flag) not in (None, []):
                raise ConfigError(f"--{flag.rstrip('_')} only applies with --method; put it in the config file")
        if args.param:
            raise ConfigError("--param only applies with --method; put parameters in the config file")
        out_dir = args.out_flag or args.out_dir
        cfg = MergeConfig.from_yaml(args.config)
    if out_dir is None and not args.to_zoo:
        raise ConfigError("give an output folder (OUT_DIR or --out) and/or --to-zoo")
    # refuse bad parameters and unsafe output folders before any zoo or model is opened
    check_config(cfg)
    if out_dir is not None:
        guard_output_dir(out_dir, overwrite=args.overwrite, what="merge output folder", zoo_roots=[args.root])
    for note in cfg.notes:
        print(f"note: {note}", file=sys.stderr)
    _keep_freed_memory()
    zoo = None
    if args.to_zoo or _needs_zoo(cfg) or args.root or args.url:
        from zoo.facade import Zoo

        zoo = Zoo.open(args.root, url=args.url, create=args.to_zoo)
    try:
        res = merge(
            cfg, out_dir=out_dir, zoo=zoo, to_zoo=args.to_zoo, population=args.population, name=args.name,
            tags=args.tag, max_shard_size=args.max_shard_size, overwrite=args.overwrite, evaluate=not args.no_eval,
            dataset=args.dataset, progress=not args.no_progress, offline=args.offline, threads=args.threads,
        )  # fmt: skip
    finally:
        if zoo is not None:
            zoo.close()
    if args.json:
        print(json.dumps({"method": res.method, "out_dir": str(res.out_dir) if res.out_dir else None,
                          "model_id": res.model_id, "metrics": res.metrics, "n_tensors": res.n_tensors,
                          "seconds": res.seconds, "params": res.params, "notes": res.notes}, indent=2, default=str))  # fmt: skip
        return 0
    print(f"merged {res.n_tensors} tensors with {res.method} in {res.seconds:.1f}s")
    if res.out_dir:
        print(f"  wrote {res.out_dir}")
    if res.model_id is not None:
        print(f"  stored as zoo model {res.model_id}")
    for k, v in res.metrics.items():
        print(f"  {k}: {v:.4f}")
    for note in res.notes[len(cfg.notes) :]:  # the config's own notes were printed up front
        print(f"note: {note}", file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``merge`` standalone (``python -m analysis.merge_cli CONFIG OUT_DIR ...``)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--root", help="zoo root folder (default: $WEIGHTZOO_HOME or ~/.weightzoo)")
    common.add_argument("--url", help="SQLAlchemy URL of the catalog")
    common.add_argument("--json", action="store_true", help="machine-readable JSON output")
    common.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p = argparse.ArgumentParser(prog="weightzoo")
    sub = p.add_subparsers(dest="command", required=True)
    register(sub, common)
    args = p.parse_args(["merge", *(sys.argv[1:] if argv is None else argv)])
    try:
        return int(args.func(args) or 0)
    except ZooError as e:
        print(f"weightzoo merge: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
