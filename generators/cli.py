"""``weightzoo generate train|sample|finetune``: weight generators from the shell.

Plugged into the ``weightzoo`` CLI through the ``weightzoo.commands`` entry-point group
(``generate = "generators.cli:register"`` in pyproject.toml).

    weightzoo generate train --population digits-mlp-seeds --method flow --name mlp-flow
    weightzoo generate train --population digits-inr-shared --method diffusion --condition label --name inr-ddim
    weightzoo generate sample mlp-flow -n 100 --seed 0 --png run.png
    weightzoo generate sample inr-ddim -n 50 --condition 3 --guidance 2.0
    weightzoo generate sample mlp-flow -n 1000 --workers 2             # in 2 shards (--ray [ADDRESS]: on Ray)
    weightzoo generate finetune mlp-flow -n 20 --corruption gaussian_noise --severity 5
"""

from __future__ import annotations

import argparse
import copy
import json
from typing import Any

from zoo.errors import ConfigError

__all__ = ["register"]


def _open(args: argparse.Namespace) -> Any:
    from zoo.facade import Zoo

    return Zoo.open(args.root, url=args.url, create=False)


def _number(text: str | None) -> Any:
    if text is None:
        return None
    try:
        v = float(text)
    except ValueError:
        raise ConfigError(f"--condition must be a number (an accuracy, a hyperparameter value or a class), not {text!r}") from None
    return int(v) if v.is_integer() and "." not in text else v


def cmd_train(args: argparse.Namespace) -> int:
    from generators.api import train

    params = json.loads(args.config) if args.config else {}
    if not isinstance(params, dict):
        raise ConfigError("--config must be a JSON object of generator options, e.g. '{\"train_steps\": 3000}'")
    if args.steps is not None:
        params["train_steps"] = args.steps
    if args.denoiser:
        params["denoiser"] = args.denoiser
    holdout: Any = float(args.holdout) if "." in args.holdout else int(args.holdout)
    z = _open(args)
    rec = train(z, args.population, args.method, name=args.name, condition=args.condition, holdout=holdout,
                held_out_population=args.held_out_population, params=params, seed=args.seed,
                progress=not args.no_progress, threads=args.threads)  # fmt: skip
    g = rec.generator
    out = {"model_id": rec.id, "name": rec.name, "population": rec.population, "method": g.name,
           "n_train": len([e for e in rec.parents() if e.role == "train"]), "condition": args.condition,
           "train_seconds": rec.metric("fit_seconds"), "final_loss": g.history_[-1] if g.history_ else None}  # fmt: skip
    if args.json:
        print(json.dumps(out, indent=2, default=str))
    else:
        print(f"trained {g.name} generator {rec.name!r} (model {rec.id}) on {out['n_train']} models of {args.population} "
              f"in {out['train_seconds']:.1f}s, final loss {out['final_loss']:.4f}")
    return 0


def format_summary(run: Any) -> str:
    """The run's summary table and verdict as text."""
    v, s = run.verdict, run.summary
    qname = "acc" if "val_acc_median" in s.get("samples", {}) else "psnr"
    lines = [f"run {run.run}: {s['samples']['n']} samples ({run.params['sampler']}, {run.params['nfe']} network "
             f"evaluations per sample, {run.seconds['sample']:.2f}s; evaluated in {run.seconds.get('evaluate', 0):.1f}s)",
             f"{'group':<16}{qname + ' med':>10}{qname + ' p5':>10}{'novelty med':>13}{'ratio':>8}{'near-copy':>11}"
             f"{'in range':>10}"]  # fmt: skip
    for kind, g in s.items():
        lines.append(f"{kind:<16}{g['quality_median']:>10.4f}{g['quality_p5']:>10.4f}{g['novelty_median']:>13.4f}"
                     f"{g['novelty_ratio']:>8.2f}{g['near_copy_fraction']:>11.1%}{g['inside_train_range']:>10.1%}")  # fmt: skip
    extra = f", class match {s['samples']['class_match_fraction']:.1%}" if "class_match_fraction" in s["samples"] else ""
    lines.append(f"verdict: {v['verdict'].upper()} (samples' novelty {s['samples']['novelty_median']:.3f} vs noise copies "
                 f"at the same {qname} {v['noise_novelty_at_quality']:.3f}; {qname} vs noise at the same novelty "
                 f"{v['quality_gain_vs_noise']:+.4f}; novelty ratio {v['novelty_ratio']:.2f} vs {v['reference']}{extra})")  # fmt: skip
    return "\n".join(lines)


def cmd_sample(args: argparse.Namespace) -> int:
    from generators.api import sample
    from zoo.cli import executor_options

    z = _open(args)
    if args.png:
        from zoo.io.figures import check_png_path

        check_png_path(args.png, overwrite=args.overwrite, zoo_roots=[z.root])
    run = sample(z, args.generator, n=args.n, condition=_number(args.condition), guidance=args.guidance, steps=args.steps,
                 sampler=args.sampler, seed=args.seed, temperature=args.temperature, arch=args.for_population,
                 store=not args.no_store, threads=args.threads, **executor_options(args))  # fmt: skip
    out = run.to_dict()
    if args.png:
        from generators.evaluate import plot_run
        from zoo.io.figures import save_png

        qlabel = "test accuracy" if "val_acc_median" in run.summary["samples"] else "PSNR (dB)"
        out["png"] = str(save_png(plot_run(run.result, quality_label=qlabel), args.png, overwrite=args.overwrite,
                                  zoo_roots=[z.root]))  # fmt: skip
    if args.json:
        print(json.dumps(out, indent=2, default=str))
    else:
        print(format_summary(run))
        if run.sample_ids:
            print(f"stored {len(run.sample_ids)} samples in population {z.get(run.sample_ids[0]).population!r}; "
                  f"tables {', '.join(run.tables)}")
        if "png" in out:
            print(f"plot: {out['png']}")
    return 0


def _inner_common(common: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """A copy of the common options whose defaults are "not given" (``SUPPRESS``), for the parsers of
    ``generate train|sample``: argparse copies a sub-parser's values over those the outer parser already
    parsed, so with plain defaults ``generate --root R train`` would lose ``--root R``. With this copy the
    options work before and after ``train``/``sample``; the shared ``common`` parser is left untouched."""
    inner = copy.deepcopy(common)
    for action in inner._actions:  # argparse has no public way to change an inherited option's default
        action.default = argparse.SUPPRESS
    return inner


def cmd_finetune(args: argparse.Namespace) -> int:
    from generators.api import finetune_inits

    z = _open(args)
    corruption = None if args.corruption in ("", "none") else args.corruption
    out = finetune_inits(z, args.generator, n=args.n, corruption=corruption, severity=args.severity,
                         train_fraction=args.train_fraction, epochs=args.epochs, lr=args.lr, seed=args.seed,
                         store=not args.no_store, threads=args.threads)  # fmt: skip
    if args.json:
        print(json.dumps(out, indent=2, default=str))
        return 0
    print(f"shifted task {out['task']}: random-init final val acc (the target) {out['target']:.4f} after {out['epochs']} epochs")
    print(f"{'init':<12}{'n':>4}{'start test':>12}{'final test':>12}{'epochs to target':>18}{'/ epochs':>10}{'/ random':>10}")
    for name, g in out["groups"].items():
        e = "never" if g["epochs_to_target"] is None else str(g["epochs_to_target"])
        r = "-" if g["ratio"] is None else f"{g['ratio']:.3f}"
        vr = "-" if g["vs_random"] is None else f"{g['vs_random']:.3f}"
        print(f"{name:<12}{g['n']:>4}{g['start_test']:>12.4f}{g['final_test']:>12.4f}{e:>18}{r:>10}{vr:>10}")
    if "table" in out:
        print(f"curves: table {out['table']}")
    return 0


def _threads_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: the generators' matmuls "
                                                              "are small, and more threads than free cores stall them)")  # fmt: skip


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add ``generate train`` and ``generate sample`` to the ``weightzoo`` subcommands."""
    from zoo.cli import executor_args

    g = sub.add_parser("generate", parents=[common], help="weight generators: train on a population, sample new models and judge them",
                       description="generate train: learn a population's weights (flow matching or diffusion) and store the "
                                   "generator; generate sample: sample new models, evaluate them against the memorisation "
                                   "baselines and store them. --root etc. go before or after train/sample.")  # fmt: skip
    gs = g.add_subparsers(dest="generate_command", required=True)
    inner = _inner_common(common)
    s = gs.add_parser("train", parents=[inner], help="train a flow-matching or diffusion generator and store it",
                      description="Canonicalise (weight matching), normalise, and learn the population's weights.")  # fmt: skip
    s.add_argument("-p", "--population", required=True)
    s.add_argument("--method", default="flow", choices=["flow", "diffusion"])
    s.add_argument("--name", required=True, help="the generator's model name (samples go to <name>/samples)")
    s.add_argument("--condition", help="condition on a metric (acc = val_acc, test_acc, ...) or hyperparameter (lr, "
                                       "label: an INR's digit)")  # fmt: skip
    s.add_argument("--denoiser", choices=["mlp", "transformer"])
    s.add_argument("--steps", type=int, help="training steps (default 1500; 3000 with a scalar --condition such as acc)")
    s.add_argument("--holdout", default="0.1", help="fraction (0.1) or number (50) of models held out as the novelty "
                                                    "reference (default 0.1)")  # fmt: skip
    s.add_argument("--held-out-population", help="a population of other seeds of the same recipe as the reference instead")
    s.add_argument("--config", help="generator options as JSON, e.g. '{\"denoiser_params\": {\"width\": 256}}'")
    s.add_argument("--seed", type=int, default=0)
    _threads_option(s)
    s.set_defaults(func=cmd_train)

    s = gs.add_parser("sample", parents=[inner], help="sample models from a stored generator, evaluate and store them",
                      description="Sample N models, evaluate them against the memorisation baselines and store them. "
                                  "--workers N samples in N shards on a local process pool, --ray [ADDRESS] as Ray "
                                  "tasks; this process draws the starting noise, evaluates and writes the samples, so "
                                  "the same shards give the same models on every executor.")  # fmt: skip
    s.add_argument("generator", help="the generator's model name or id")
    s.add_argument("-n", type=int, default=100, help="how many models (default 100)")
    s.add_argument("--condition", help="the condition value (an accuracy, a hyperparameter value, a class)")
    s.add_argument("--guidance", type=float, default=1.0, help="classifier-free guidance scale (1: plain conditional)")
    s.add_argument("--steps", type=int, help="sampling steps (default: the generator's)")
    s.add_argument("--sampler", choices=["euler", "heun", "midpoint", "ddim", "ddpm"])
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--temperature", type=float, default=1.0, help="scale of the starting noise (default 1; below 1: "
                                                                  "nearer the learned modes, less diverse)")  # fmt: skip
    s.add_argument("--for-population", help="refuse unless the generator was trained on this population's architecture")
    s.add_argument("--png", help="write the accuracy-vs-novelty plot to this .png file")
    s.add_argument("--overwrite", action="store_true", help="replace an existing --png file")
    s.add_argument("--no-store", action="store_true", help="evaluate only; write nothing to the zoo")
    _threads_option(s)
    executor_args(s, threads=False)
    s.set_defaults(func=cmd_sample)

    s = gs.add_parser("finetune", parents=[inner], help="generated models as initialisations on a shifted digits task",
                      description="Fine-tune N generated models, N random inits and N training models with one recipe on "
                                  "digits with every split corrupted (and/or a smaller training subset); report the epochs "
                                  "each needs to reach the random inits' final validation accuracy.")  # fmt: skip
    s.add_argument("generator", help="the generator's model name or id (an unconditioned classifier generator)")
    s.add_argument("-n", type=int, default=20, help="models per group (default 20)")
    s.add_argument("--corruption", default="gaussian_noise", help="zoo.models.corruptions kind applied to every split, or 'none'")
    s.add_argument("--severity", type=int, default=5, help="1..5 (default 5)")
    s.add_argument("--train-fraction", type=float, default=1.0, help="keep this fraction of the training split (default 1)")
    s.add_argument("--epochs", type=int, default=24)
    s.add_argument("--lr", type=float, default=5e-3)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--no-store", action="store_true", help="write nothing to the zoo")
    _threads_option(s)
    s.set_defaults(func=cmd_finetune)
