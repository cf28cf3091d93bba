"""``weightzoo explain-diff`` and ``weightzoo interpret train``: the weight-diff interpreter from the shell.

Plugged into the ``weightzoo`` CLI through the ``weightzoo.commands`` entry-point group
(``interpret = "weightspace.interpret.cli:register"`` in pyproject.toml).

    weightzoo interpret train -p digits-mlp-diffs --epochs 60 --to-zoo --write-table diff_pred
    weightzoo explain-diff digits-mlp-diffs/00012/e006                  # parent from the lineage
    weightzoo explain-diff 4242 --parent 17 --interpreter 9001 --json
    weightzoo interpret predict -p digits-mlp-diffs-heldout --write-table heldout_pred   # newest interpreter
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from zoo.errors import ConfigError

__all__ = ["register"]


def _open(args: argparse.Namespace) -> Any:
    from zoo import Zoo

    return Zoo.open(args.root, url=args.url, create=False)


def _model(text: str | None) -> Any:
    if text is None:
        return None
    return int(text) if text.isdigit() else text


def cmd_explain(args: argparse.Namespace) -> int:
    from weightspace.interpret.store import explain_diff

    z = _open(args)
    interp: Any = _model(args.interpreter)
    if args.interpreter_dir:
        if interp is not None:
            raise ConfigError("give at most one of --interpreter ID and --interpreter-dir DIR")
        from weightspace.interpret.model import load_interpreter

        interp = load_interpreter(args.interpreter_dir)
    ex = explain_diff(z, _model(args.child), _model(args.parent), interpreter=interp)
    if args.json:
        print(json.dumps(ex.to_dict(), indent=2, default=str))
        return 0
    d = ex.description
    print(f"child {ex.child} vs parent {ex.parent}" + (f" (interpreter {ex.interpreter})" if ex.interpreter else ""))
    print(d.sentence)
    for k, v in d.fields.items():
        print(f"  {k}: {v}  (p={d.confidence[k]:.2f})")
    top = sorted(d.kind_probs.items(), key=lambda kv: -kv[1])[:3]
    print("  kind probabilities: " + ", ".join(f"{k} {p:.2f}" for k, p in top))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from weightspace.cli import encoder_config
    from weightspace.interpret.fields import DEFAULT_FIELDS
    from weightspace.interpret.run import train_interpreter
    from weightspace.interpret.store import store_interpreter, write_predictions
    from zoo.io.outpath import guard_output_dir

    if args.save:  # refuse an unsafe folder before training
        guard_output_dir(args.save, overwrite=args.overwrite, what="interpreter folder", zoo_roots=[args.root])
    config = encoder_config(args)
    fields = [s.strip() for s in args.fields.split(",")] if args.fields else list(DEFAULT_FIELDS)
    ranks = [int(r) for r in args.ranks.split(",")] if args.ranks else None
    z = _open(args)
    res = train_interpreter(z, args.population, args.encoder, config, fields=fields, view=args.view, seed=args.seed,
                            test_fraction=args.test_fraction, ranks=ranks, progress=not args.no_progress)  # fmt: skip
    out = res.to_dict()
    if args.save:
        res.interpreter.save(args.save, overwrite=args.overwrite)
        out["saved_to"] = args.save
    if args.to_zoo:
        rec = store_interpreter(z, res.interpreter, trained_on=res.train, metrics=res.metrics)
        out["model_id"], out["model_name"] = rec.id, rec.name
    if args.write_table:
        info = write_predictions(z, res.interpreter, args.write_table, population=args.population,
                                 train_ids=res.train.child_ids, test_ids=res.test.child_ids,
                                 produced_by=out.get("model_id"))  # fmt: skip
        out["table"] = info.name
    if args.json:
        print(json.dumps(out, indent=2, default=str))
        return 0
    m = res.metrics
    print(f"interpreter ({res.interpreter.encoder}, {res.interpreter.view} view) on {res.train.population}: "
          f"{len(res.train)} train / {len(res.test)} test diffs ({out['held_out_parents']} held-out parents), "
          f"trained in {res.train_seconds:.1f}s")  # fmt: skip
    print("  " + ", ".join(f"{k}={v:.3f}" for k, v in m.items() if v is not None and not k.startswith("n")))
    for k in ("saved_to", "model_id", "table"):
        if k in out:
            print(f"{k}: {out[k]}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from weightspace.interpret.data import load_diffs
    from weightspace.interpret.store import find_interpreter, interpreter_from_zoo, write_predictions

    z = _open(args)
    data = load_diffs(z, args.population)
    mid = z.get(_model(args.interpreter)).id if args.interpreter else find_interpreter(z, data.config)
    interp = interpreter_from_zoo(z, mid)
    info = write_predictions(z, interp, args.write_table, data=data, produced_by=mid)
    scores = interp.score(data)
    out = {"interpreter": mid, "population": args.population, "table": info.name, "n": len(data), "scores": scores}
    if args.json:
        print(json.dumps(out, indent=2, default=str))
        return 0
    print(f"interpreter {mid} on {args.population}: {len(data)} diffs -> table {info.name}")
    print("  " + ", ".join(f"{k}={v:.3f}" for k, v in scores.items() if v is not None and not k.startswith("n")))
    return 0


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add ``explain-diff`` and ``interpret train`` to the ``weightzoo`` subcommands."""
    from weightspace.encoders import encoders
    from weightspace.interpret.fields import FIELDS
    from weightspace.interpret.model import VIEWS

    s = sub.add_parser("explain-diff", parents=[common], help="say what a fine-tune changed, from the weight diff",
                       description="Read the diff child - parent with a stored interpreter and print its description "
                                   "(kind, classes, corruption, trigger, target) with confidences. Writes nothing.")  # fmt: skip
    s.add_argument("child", help="the fine-tuned model (id or name)")
    s.add_argument("--parent", help="the model it was fine-tuned from (default: its lineage parent)")
    s.add_argument("--interpreter", help="a stored interpreter's id or name (default: the newest one trained on the "
                                         "child's architecture)")  # fmt: skip
    s.add_argument("--interpreter-dir", help="a folder saved with `weightzoo interpret train --save`")
    s.set_defaults(func=cmd_explain)

    g = sub.add_parser("interpret", parents=[common], help="the weight-diff interpreter: train it on labelled diffs",
                       description="interpret train: fit an interpreter on a population of labelled fine-tune children "
                                   "(weightzoo build digits-mlp-diffs) with whole parents held out, score it, store it; "
                                   "interpret predict: read another population's diffs with a stored one. "
                                   "Give --root etc. after the subcommand.")  # fmt: skip
    gs = g.add_subparsers(dest="interpret_command", required=True)
    t = gs.add_parser("train", parents=[common], help="train and score an interpreter (held-out parents)")
    t.add_argument("-p", "--population", default="digits-mlp-diffs", help="labelled diffs (default digits-mlp-diffs)")
    t.add_argument("--encoder", default="np_diff", choices=encoders(),
                   help="np_diff (default: NP layers over the diff + per-tensor statistics), np, gmn (CNNs too), probe, "
                        "flat_mlp: one multi-head network; stats: one scikit-learn model per field")
    t.add_argument("--epochs", type=int)
    t.add_argument("--config", help="encoder options as JSON, e.g. '{\"hidden\": 64}'")
    t.add_argument("--augment", help="augmentations of the diffs, comma-separated (permute,noise,dropout) or a JSON list")
    t.add_argument("--fields", help=f"comma-separated fields to predict (default all: {','.join(FIELDS)})")
    t.add_argument("--view", default="diff", choices=list(VIEWS), help="diff: child - parent (default); child: the child alone")
    t.add_argument("--ranks", help="only children of these fine-tune ranks, e.g. 0 (full) or 0,4")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--test-fraction", type=float, default=0.2, help="fraction of parents held out (default 0.2)")
    t.add_argument("--save", help="save the interpreter into this folder (new or empty)")
    t.add_argument("--overwrite", action="store_true", help="with --save: replace a folder weightzoo wrote")
    t.add_argument("--to-zoo", action="store_true",
                   help="store it in the zoo (op train.interpreter, lineage from every child it trained on)")
    t.add_argument("--write-table", metavar="NAME",
                   help="write its reading of every diff of the population as the derived table NAME")
    t.set_defaults(func=cmd_train)

    t = gs.add_parser("predict", parents=[common], help="read every labelled diff of a population with a stored "
                                                         "interpreter, score it and write the readings as a table")  # fmt: skip
    t.add_argument("-p", "--population", required=True, help="labelled diffs (children of a finetune.change recipe)")
    t.add_argument("--interpreter", help="a stored interpreter's id or name (default: the newest for the architecture)")
    t.add_argument("--write-table", metavar="NAME", required=True, help="the derived table to write")
    t.set_defaults(func=cmd_predict)
