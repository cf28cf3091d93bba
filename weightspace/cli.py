"""``weightzoo train-encoder`` and ``weightzoo similar``: weight-space encoders from the shell.

Plugged into the ``weightzoo`` CLI through the ``weightzoo.commands`` entry-point group
(``encoders = "weightspace.cli:register"`` in pyproject.toml).

    weightzoo train-encoder accuracy --encoder np                     # digits-mlp: predict test accuracy
    weightzoo train-encoder inr-class --encoder np --augment rescale,noise --to-zoo
    weightzoo train-encoder hparam-bucket --encoder stats --save enc/
    weightzoo train-encoder accuracy --encoder probe --to-zoo --write-table acc_pred   # outputs as a SQL table
    weightzoo similar digits-mlp/00007/e024 --encoder-model 1234 --k 5
    weightzoo encode acc_pred --encoder-model 1234 -p digits-mlp --workers 2   # a stored encoder over a population
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from zoo.errors import ConfigError

__all__ = ["register", "weight_matching_align", "encoder_config"]


def weight_matching_align(seed: int = 0) -> Any:
    """An ``align(population, reference, spec) -> aligned population`` callable for mixup, found through the
    ``weightzoo.aligners`` entry-point group (``analysis.align`` provides ``weight_matching``), so that
    weightspace never imports analysis (DESIGN.md's dependency direction)."""
    from importlib.metadata import entry_points

    found = [ep for ep in entry_points(group="weightzoo.aligners") if ep.name == "weight_matching"]
    if not found:
        raise ConfigError("no 'weight_matching' aligner is installed (entry-point group weightzoo.aligners); "
                          "reinstall weightzoo (pip install -e .) to register analysis.align")  # fmt: skip
    return found[0].load()(seed)


def _open(args: argparse.Namespace) -> Any:
    from zoo.facade import Zoo

    return Zoo.open(args.root, url=args.url, create=False)


def _augment_list(text: str | None) -> list[Any]:
    if not text:
        return []
    text = text.strip()
    return json.loads(text) if text.startswith("[") else [s.strip() for s in text.split(",") if s.strip()]


def encoder_config(args: argparse.Namespace) -> dict[str, Any]:
    """The encoder options of a training command: ``--config`` (a JSON object), ``--epochs``, ``--augment``."""
    config = json.loads(args.config) if args.config else {}
    if not isinstance(config, dict):
        raise ConfigError("--config must be a JSON object of encoder options, e.g. '{\"hidden\": 64}'")
    if args.epochs is not None:
        config["epochs"] = args.epochs
    aug = _augment_list(args.augment)
    if aug:
        config["augment"] = aug
    return config


def cmd_train_encoder(args: argparse.Namespace) -> int:
    from weightspace.tasks import run_task, store_encoder, write_outputs
    from zoo.io.outpath import guard_output_dir, staged_output_dir

    if args.save:  # refuse an unsafe folder before training
        guard_output_dir(args.save, overwrite=args.overwrite, what="encoder folder", zoo_roots=[args.root])
    config = encoder_config(args)
    aug = config.get("augment", [])
    uses_mixup = any((a == "mixup") or (isinstance(a, dict) and a.get("name") == "mixup") for a in aug)
    z = _open(args)
    res = run_task(z, args.encoder, args.task, config, population=args.population, seed=args.seed,
                   test_fraction=args.test_fraction, align=weight_matching_align(args.seed) if uses_mixup else None,
                   progress=not args.no_progress)  # fmt: skip
    out = res.to_dict()
    if args.save:
        with staged_output_dir(args.save, overwrite=args.overwrite, what="encoder folder", zoo_roots=[args.root]) as tmp:
            res.encoder.write_files(tmp)
        out["saved_to"] = str(args.save)
    if args.to_zoo:
        rec = store_encoder(z, res)
        out["model_id"], out["model_population"] = rec.id, rec.population
    if args.write_table:
        info = write_outputs(z, res.encoder, args.write_table, result=res, produced_by=out.get("model_id"))
        out["table"] = info.name
    if args.json:
        print(json.dumps(out, indent=2, default=str))
    else:
        m = ", ".join(f"{k}={v:.4f}" for k, v in res.metrics.items())
        print(f"{res.task} on {res.population}: encoder {res.encoder.name}, {res.n_train} train / {res.n_test} test models "
              f"(split by run), trained in {res.train_seconds:.1f}s: {m}")
        for k in ("saved_to", "model_id", "table"):
            if k in out:
                print(f"{k}: {out[k]}")
    return 0


def cmd_similar(args: argparse.Namespace) -> int:
    from weightspace.encoders import load_encoder
    from weightspace.tasks import encoder_from_zoo, similar

    z = _open(args)
    if (args.encoder_model is None) == (args.encoder_dir is None):
        raise ConfigError("give exactly one of --encoder-model ID (an encoder stored with --to-zoo) or --encoder-dir DIR")
    enc = encoder_from_zoo(z, args.encoder_model) if args.encoder_model is not None else load_encoder(args.encoder_dir)
    model: Any = int(args.model) if args.model.isdigit() else args.model
    df = similar(z, model, enc, population=args.population, k=args.k, metric=args.metric)
    if args.json:
        print(df.to_json(orient="records", indent=2))
    else:
        import pandas as pd

        with pd.option_context("display.max_columns", 12, "display.width", 160):
            print(df.to_string(index=False))
    return 0


def cmd_encode(args: argparse.Namespace) -> int:
    from weightspace.encoders import load_encoder
    from weightspace.tasks import encoder_from_zoo, write_outputs
    from zoo.cli import executor_options

    if (args.encoder_model is None) == (args.encoder_dir is None):
        raise ConfigError("give exactly one of --encoder-model ID (an encoder stored with --to-zoo) or --encoder-dir DIR")
    z = _open(args)
    population = args.population
    if args.encoder_model is not None:
        enc = encoder_from_zoo(z, args.encoder_model)
        population = population or z.get(args.encoder_model).hparams().get("trained_on")
    else:
        enc = load_encoder(args.encoder_dir)
    if not population:
        raise ConfigError("give the population to encode (-p POPULATION)")
    info = write_outputs(z, enc, args.table, population=population, produced_by=args.encoder_model,
                         embeddings=not args.no_embeddings, **executor_options(args))  # fmt: skip
    out = {"table": info.name, "rows": info.n_rows, "population": population, "encoder": enc.name,
           "columns": info.columns, "produced_by": info.produced_by}  # fmt: skip
    if args.json:
        print(json.dumps(out, indent=2, default=str))
    else:
        print(f"wrote {info.n_rows} rows of encoder {enc.name!r} outputs on {population!r} to table {info.name!r} "
              f"(columns {', '.join(info.columns)}); query it with `weightzoo query \"select * from {info.name} limit 5\"`")
    return 0


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add ``train-encoder``, ``similar`` and ``encode`` to the ``weightzoo`` subcommands."""
    from weightspace.encoders import encoders
    from weightspace.tasks import TASKS
    from zoo.cli import executor_args

    s = sub.add_parser("train-encoder", parents=[common], help="train a weight-space encoder on a task and score it",
                       description="Train on a run-grouped split (no run on both sides) and score on the held-out runs.")  # fmt: skip
    s.add_argument("task", choices=sorted(TASKS), help="accuracy | inr-class | hparam-bucket")
    s.add_argument("--encoder", default="np", choices=encoders(),
                   help="np: permutation-equivariant NP layers; gmn: graph metanetwork (torch_geometric); probe: "
                        "learned probe inputs run through the models; flat_mlp, stats: baselines. np and gmn take "
                        "probe features with --config '{\"probes\": 32}' (needed for INRs)")  # fmt: skip
    s.add_argument("-p", "--population", help="population (default: digits-mlp, or digits-inr for inr-class)")
    s.add_argument("--epochs", type=int)
    s.add_argument("--augment", help="comma-separated: permute,rescale,noise,dropout,mixup (or a JSON list)")
    s.add_argument("--config", help="encoder options as JSON, e.g. '{\"hidden\": 64, \"lr\": 0.001}'")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--test-fraction", type=float, default=0.2)
    s.add_argument("--save", help="save the trained encoder into this folder (new or empty)")
    s.add_argument("--overwrite", action="store_true",
                   help="with --save: replace a folder weightzoo wrote (never a zoo or another folder)")
    s.add_argument("--to-zoo", action="store_true",
                   help="store the trained encoder in the zoo (op train.encoder, lineage to the models it trained on)")
    s.add_argument("--write-table", metavar="NAME",
                   help="write predictions + embeddings of every model of the population (and its train/test side) "
                        "as the derived table NAME, queryable with `weightzoo query`/Zoo.sql")  # fmt: skip
    s.set_defaults(func=cmd_train_encoder)

    s = sub.add_parser("similar", parents=[common], help="nearest models in an encoder's embedding space")
    s.add_argument("model", help="model id or name")
    s.add_argument("--encoder-model", type=int, help="id of an encoder stored with train-encoder --to-zoo")
    s.add_argument("--encoder-dir", help="folder of an encoder saved with train-encoder --save")
    s.add_argument("-p", "--population", help="search this population (default: the model's)")
    s.add_argument("--k", type=int, default=5)
    s.add_argument("--metric", default="cosine", choices=["cosine", "euclidean"])
    s.set_defaults(func=cmd_similar)

    s = sub.add_parser(
        "encode", parents=[common], help="run a trained encoder over a population and write its outputs as a table",
        description="Predictions (and embeddings) of a trained encoder for every model of a population, written as "
                    "the derived table TABLE (columns model_id, prediction, embedding), queryable with `weightzoo query`. "
                    "--workers N runs the population in N shards on a local process pool, --ray [ADDRESS] as Ray "
                    "tasks; the workers get the encoder and the weights, this process writes the table.",
    )  # fmt: skip
    s.add_argument("table", help="name of the derived table to write (replaced if it exists)")
    s.add_argument("--encoder-model", type=int, help="id of an encoder stored with train-encoder --to-zoo")
    s.add_argument("--encoder-dir", help="folder of an encoder saved with train-encoder --save")
    s.add_argument("-p", "--population", help="population to encode (default: the one the stored encoder trained on)")
    s.add_argument("--no-embeddings", action="store_true", help="write predictions only")
    executor_args(s, threads=False)
    s.set_defaults(func=cmd_encode)
