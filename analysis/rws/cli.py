"""``weightzoo rws extract|patch|unpatch|eval|ls``: robust weight signatures from the shell.

Plugged into the ``weightzoo`` CLI through the ``weightzoo.commands`` entry-point group
(``rws = "analysis.rws.cli:register"`` in pyproject.toml).

    weightzoo rws extract digits-mlp-robust/00003/e006 --bits 4 --granularity channel
    weightzoo rws patch CLEAN SIG1 SIG2 --alpha 1.0            # show accuracy before/after; nothing written
    weightzoo rws patch CLEAN SIG1 --alpha 0.8 --to-zoo        # store the patched model (op patch.rws)
    weightzoo rws unpatch PATCHED --to-zoo                     # take every signature off again
    weightzoo rws eval MODEL --corruptions rotate,occlusion --severities 3,5
"""

from __future__ import annotations

import argparse
import json
import math
from typing import Any

from zoo.errors import ConfigError

__all__ = ["register", "parse_alpha", "parse_ints"]

_EPILOG = """\
A signature (Cai et al. 2023) is (robust - base) with its projection on (clean - base) removed, kept for
the shallowest layers and min-max quantised; it is stored as a model row (raw tensors, op rws.extract,
parents robust/base/clean). Patching adds sum_k (alpha_k / K) * signature_k to a clean model (op patch.rws);
unpatching subtracts the same sum (exact up to float32 rounding). See docs/signatures.md.

examples:
  weightzoo build digits-mlp && weightzoo build digits-mlp-robust-mix
  weightzoo rws extract digits-mlp-robust-mix/00008/e006 --bits 4
  weightzoo rws extract digits-mlp-robust-mix/00008/e006 --layers 2 --rank 8,full --bits 4   # low rank, ~16x smaller
  weightzoo rws ls
  weightzoo rws patch digits-mlp-robust-mix/00000/e006 digits-mlp-robust-mix/00008/e006/rws-1L-4bit-tensor --alpha 1
  weightzoo rws patch digits-mlp-robust-mix/00000/e006 digits-mlp-robust-mix/00008/e006/rws-2L-r8_f-4bit-tensor --alpha auto
  weightzoo rws eval digits-mlp-robust-mix/00000/e006 --corruptions all --severities 3,5
"""


def parse_alpha(text: str) -> float | list[float] | str:
    """``"1.0"`` -> 1.0; ``"1,0.5"`` -> [1.0, 0.5] (one per signature); ``"auto"`` (chosen on the validation
    split). Not a number: ConfigError."""
    if str(text).strip().lower() == "auto":
        return "auto"
    parts = [p.strip() for p in str(text).split(",")]
    try:
        vals = [float(p) for p in parts]
    except ValueError:
        raise ConfigError(f"--alpha must be a number (e.g. 1.0), one number per signature (1.0,0.5) or auto, "
                          f"got {text!r}") from None  # fmt: skip
    from analysis.rws.patch import check_alpha

    vals = [check_alpha(v, "--alpha") for v in vals]
    return vals[0] if len(vals) == 1 else vals


def parse_rank(text: str | None) -> int | list[int | None] | None:
    """``"8"`` -> 8 (every kept layer); ``"8,full"`` -> [8, None] (one per kept layer; full: dense)."""
    if text is None:
        return None
    parts = [p.strip().lower() for p in str(text).split(",")]
    try:
        vals = [None if p in ("full", "f", "dense") else int(p) for p in parts]
    except ValueError:
        raise ConfigError(f"--rank must be an integer, or one per kept layer with 'full' for a dense layer (8,full), "
                          f"got {text!r}") from None  # fmt: skip
    return vals[0] if len(vals) == 1 and vals[0] is not None else vals


def parse_floats(text: str | None, what: str) -> list[float] | None:
    if text is None:
        return None
    try:
        return [float(p) for p in str(text).split(",") if p.strip()]
    except ValueError:
        raise ConfigError(f"{what} must be numbers separated by commas (e.g. 0.5,1,1.5), got {text!r}") from None


def parse_ints(text: str | None, what: str) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(p) for p in str(text).split(",") if p.strip()]
    except ValueError:
        raise ConfigError(f"{what} must be integers separated by commas (e.g. 3,5), got {text!r}") from None


def _open(args: argparse.Namespace) -> Any:
    from zoo.facade import Zoo

    return Zoo.open(args.root, url=args.url, create=False)


def _bits(text: str) -> int | None:
    from analysis.rws.quant import check_bits

    try:
        return check_bits(int(text))
    except ValueError:
        raise ConfigError(f"--bits must be 8, 4, 2 or 32, got {text!r}") from None


def cmd_extract(args: argparse.Namespace) -> int:
    from analysis.rws.store import extract_signature, load_signature

    if args.layers is not None and args.norm_share is not None:
        raise ConfigError("give either --layers or --norm-share, not both")
    z = _open(args)
    try:
        rec = extract_signature(z, args.robust, base=args.base, clean=args.clean, layers=args.layers,
                                norm_share=args.norm_share, bits=_bits(args.bits), granularity=args.granularity,
                                projection=not args.no_projection, rank=parse_rank(args.rank), energy=args.energy,
                                density=args.density, population=args.population, name=args.name)  # fmt: skip
        sig = load_signature(z, rec.id)
        ratio = rec.metric("storage_ratio")
        out = {"id": rec.id, "name": rec.name, "population": rec.population, "layers": sig.layers,
               "bits": sig.bits or 32, "granularity": sig.granularity, "projection": sig.projection,
               "corruption": sig.corruption, "severity": sig.severity, "kept_share": sig.kept_share,
               "nbytes": rec.nbytes, "storage_ratio": ratio, "quant_error": sig.quantization_error,
               "approx_error": sig.approximation_error, "relative_error": sig.relative_error,
               "forms": {k: f.layout() for k, f in (sig.forms or {}).items()},
               "parents": {e.role: e.parent for e in rec.parents()}}  # fmt: skip
    finally:
        z.close()
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    print(f"stored signature {out['name']!r} (model {out['id']}) in population {out['population']!r}, op rws.extract")
    print(f"  from robust {out['parents'].get('robust')} (base {out['parents'].get('base')}, clean "
          f"{out['parents'].get('clean', '-')}), corruption {out['corruption']} severity {out['severity']}")  # fmt: skip
    print(f"  kept layers {', '.join(out['layers'])} ({out['kept_share']:.1%} of the squared norm); "
          f"{out['bits']} bit {out['granularity']}, max quantisation error {out['quant_error']:.3g}")  # fmt: skip
    shaped = [f"{k} rank {f['rank']}" if f["form"] == "lowrank" else f"{k} {f['count']} of {math.prod(f['shape'])} entries"
              for k, f in out["forms"].items() if f["form"] != "dense"]  # fmt: skip
    if shaped:
        print(f"  {'; '.join(shaped)}: relative error {out['approx_error']:.3f} before quantisation, "
              f"{out['relative_error']:.3f} after")  # fmt: skip
    print(f"  {out['nbytes']:,} bytes: {ratio:.1f}x smaller than the full model")
    return 0


def _before_after(df: Any, names: dict[int, str]) -> str:
    from analysis.rws.evaluate import summary

    tab = summary(df)
    cols = [c for c in tab.columns if c != "model"]
    lines = [f"{'':24s}" + "".join(f"{c[:16]:>17s}" for c in cols)]
    for _, row in tab.iterrows():
        lines.append(f"{names.get(int(row['model']), str(int(row['model'])))[:24]:24s}" + "".join(f"{row[c]:17.4f}" for c in cols))
    return "\n".join(lines)


def _corruption_args(args: argparse.Namespace, sigs: list[Any]) -> tuple[list[str], list[int]]:
    from analysis.rws.evaluate import corruption_names, severity_list

    if args.corruptions:
        kinds = corruption_names(args.corruptions)
    else:
        kinds = list(dict.fromkeys(s.corruption for s in sigs if s.corruption)) or corruption_names(None)
    sevs = parse_ints(args.severities, "--severities")
    if sevs is None:
        sevs = sorted({int(s.severity) for s in sigs if s.severity}) or [3]
    return kinds, severity_list(sevs)


def cmd_patch(args: argparse.Namespace) -> int:
    import torch

    from analysis.rws.evaluate import corruption_accuracy, corruption_names, severity_list
    from analysis.rws.store import load_signature, patch_model
    from zoo.models.architectures import is_classifier

    alpha = parse_alpha(args.alpha)
    if not 0 <= args.max_clean_drop <= 100:
        raise ConfigError(f"--max-clean-drop is in points of accuracy, from 0 to 100, got {args.max_clean_drop}")
    if args.corruptions:  # checked before anything is written
        corruption_names(args.corruptions)
    if args.severities:
        severity_list(parse_ints(args.severities, "--severities"))
    z = _open(args)
    try:
        rec = z.get(args.model)
        res = patch_model(z, rec.id, args.signatures, alpha=alpha, normalize=not args.no_normalize,
                          strict=not args.any_arch, align=args.align, to_zoo=args.to_zoo, population=args.population,
                          name=args.name, evaluate=not args.no_eval, max_clean_drop=args.max_clean_drop / 100,
                          alphas=parse_floats(args.alpha_grid, "--alpha-grid"))  # fmt: skip
        sigs = [load_signature(z, s) for s in res.signatures]
        kinds, sevs = _corruption_args(args, sigs)
        table = None
        if is_classifier(res.config) and not args.no_eval:
            before = rec.state_dict()
            both = {k: torch.stack([before[k], res.state[k]]) for k in res.state}
            table = corruption_accuracy(res.config, both, corruptions=kinds, severities=sevs)
    finally:
        z.close()
    out = {"model": rec.id, "signatures": res.signatures, "coefficients": res.coefficients, "params": res.params,
           "stored": res.record.id if res.record is not None else None,
           "accuracy": table.to_dict(orient="records") if table is not None else None}  # fmt: skip
    if args.json:
        print(json.dumps(out, indent=2, default=str))
        return 0
    coefs = ", ".join(f"{c:g}" for c in res.coefficients)
    if (sel := res.params.get("alpha_selection")) is not None:
        print(f"alpha {sel['alpha']:g} chosen on the validation split from {sel['grid']} "
              + ("(the best corrupted accuracy losing at most " f"{100 * sel['max_clean_drop']:g} point(s) of clean accuracy)"
                 if sel["within_budget"] else "(no candidate kept within the clean-accuracy budget: the least loss)"))  # fmt: skip
    print(f"patched model {rec.id} with signature(s) {res.signatures} at coefficients {coefs}"
          + (" (aligned to each signature's base first)" if args.align else ""))  # fmt: skip
    if res.record is not None:
        print(f"stored as model {res.record.id} in population {res.record.population!r} (op patch.rws)")
    else:
        print("not stored (add --to-zoo to store the patched model)")
    if table is not None:
        print(_before_after(table, {0: f"model {rec.id}", 1: "patched"}))
    return 0


def cmd_unpatch(args: argparse.Namespace) -> int:
    from analysis.rws.store import unpatch_model

    z = _open(args)
    try:
        res = unpatch_model(z, args.patched, args.signatures or None, to_zoo=args.to_zoo, population=args.population,
                            name=args.name)  # fmt: skip
    finally:
        z.close()
    out = {"patched": res.model, "signatures": res.signatures, "coefficients": res.coefficients,
           "max_error": res.max_error, "stored": res.record.id if res.record is not None else None}  # fmt: skip
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    print(f"took signature(s) {res.signatures} off model {res.model}")
    if res.max_error is not None:
        print(f"largest difference from the original model: {res.max_error:.3g} (float32 rounding)")
    print(f"stored as model {res.record.id} (op unpatch.rws)" if res.record is not None else "not stored (add --to-zoo)")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from analysis.rws.evaluate import evaluate_corruptions

    sevs = parse_ints(args.severities, "--severities") or [3]
    z = _open(args)
    try:
        df = evaluate_corruptions(z, args.models, corruptions=args.corruptions or "all", severities=sevs,
                                  dataset=args.dataset, dataset_root=args.data_root, record=not args.no_record)  # fmt: skip
    finally:
        z.close()
    if args.json:
        print(df.to_json(orient="records", indent=2))
        return 0
    print(_before_after(df, {}))
    if not args.no_record:
        print("recorded as metrics acc/loss, split test and test/KIND/SEVERITY")
    return 0


def cmd_ls(args: argparse.Namespace) -> int:
    z = _open(args)
    try:
        recs = z.models().tag("rws").records()
        rows = []
        for r in recs:
            hp = r.hparams()
            rows.append({"id": r.id, "name": r.name, "corruption": hp.get("corruption"), "severity": hp.get("severity"),
                         "layers": hp.get("n_layers"), "bits": hp.get("bits"), "granularity": hp.get("granularity"),
                         "projection": hp.get("projection"), "nbytes": r.nbytes, "ratio": r.metric("storage_ratio"),
                         "form": hp.get("form", "dense"), "rank": hp.get("rank"), "density": hp.get("density")})  # fmt: skip
    finally:
        z.close()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("no signatures in this zoo yet: `weightzoo rws extract ROBUST_MODEL`")
        return 0
    print(f"{'id':>6}  {'corruption':15s}{'sev':>4}{'layers':>7}{'form':>8}{'bits':>5}  {'gran':8s}{'proj':>5}{'bytes':>9}"
          f"{'ratio':>7}  name")  # fmt: skip
    for r in rows:
        form = {"lowrank": f"r<={r['rank']}", "sparse": f"d{r['density']}"}.get(r["form"], "dense")
        print(f"{r['id']:>6}  {str(r['corruption']):15s}{str(r['severity']):>4}{str(r['layers']):>7}{form:>8}{str(r['bits']):>5}  "
              f"{str(r['granularity']):8s}{'yes' if r['projection'] else 'no':>5}{r['nbytes']:>9,}{r['ratio'] or 0:>7.1f}  {r['name']}")  # fmt: skip
    return 0


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add ``rws extract|patch|unpatch|eval|ls`` to the ``weightzoo`` subcommands."""
    from analysis.rws.quant import GRANULARITIES

    fmt = argparse.RawDescriptionHelpFormatter
    g = sub.add_parser("rws", parents=[common], formatter_class=fmt, epilog=_EPILOG,
                       help="robust weight signatures: extract, patch, unpatch, evaluate corruption accuracy",
                       description="Robust weight signatures (Cai et al. 2023). Give --root etc. after the subcommand.")  # fmt: skip
    gs = g.add_subparsers(dest="rws_command", required=True)

    s = gs.add_parser("extract", parents=[common], help="extract a robust model's signature and store it (op rws.extract)")
    s.add_argument("robust", help="id or name of the robust fine-tune")
    s.add_argument("--base", help="the model it was fine-tuned from (default: its finetune parent)")
    s.add_argument("--clean", help="the clean fine-tune of the base, for the projection (default: the base's null fine-tune)")
    s.add_argument("--layers", type=int, help="keep the first K layers")
    s.add_argument("--norm-share", type=float, help="keep the shallowest layers holding this share of the norm (default 0.8)")
    s.add_argument("--bits", default="8", help="8, 4 or 2 (min-max quantisation), or 32: float (default 8)")
    s.add_argument("--granularity", choices=GRANULARITIES, default="tensor", help="quantise per tensor or per output channel")
    s.add_argument("--no-projection", action="store_true", help="keep robust - base without removing the clean direction")
    s.add_argument("--rank", help="store each kept weight as a truncated SVD of this rank; one per kept layer with "
                   "'full' for dense (8,full)")  # fmt: skip
    s.add_argument("--energy", type=float, help="instead of --rank: the smallest rank holding this share of the squared "
                   "singular values (0.9)")  # fmt: skip
    s.add_argument("--density", type=float, help="instead: keep this share of each kept weight's entries, the largest")
    s.add_argument("--population", help="population of the signature (default <robust population>/rws-<layout>)")
    s.add_argument("--name", help="model name of the signature (default <robust name>/rws-<layout>)")
    s.set_defaults(func=cmd_extract)

    s = gs.add_parser("patch", parents=[common], help="add signatures to a model; show corruption accuracy before/after")
    s.add_argument("model", help="id or name of the model to patch (a clean classifier)")
    s.add_argument("signatures", nargs="+", help="ids or names of signatures")
    s.add_argument("--alpha", default="1.0", help="scale: one number, one per signature (1.0,0.5), or auto: chosen on "
                   "the validation split; default 1.0")  # fmt: skip
    s.add_argument("--max-clean-drop", type=float, default=1.0,
                   help="--alpha auto: most clean validation accuracy to lose, in points (default 1)")  # fmt: skip
    s.add_argument("--alpha-grid", help="--alpha auto: candidates (default 0.25,0.5,...,2)")
    s.add_argument("--no-normalize", action="store_true", help="add alpha_k * signature_k (default alpha_k / K)")
    s.add_argument("--align", action="store_true", help="re-basin the model to each signature's base first (other seeds)")
    s.add_argument("--any-arch", action="store_true", help="patch any model whose kept tensors have the signature's shapes")
    s.add_argument("--to-zoo", action="store_true", help="store the patched model (op patch.rws) and record its metrics")
    s.add_argument("--population", help="population of the stored model (default <model population>/patched)")
    s.add_argument("--name", help="model name of the stored model")
    s.add_argument("--corruptions", help="corruptions to show (comma separated, or all; default: the signatures')")
    s.add_argument("--severities", help="severities to show (default: the signatures')")
    s.add_argument("--no-eval", action="store_true", help="do not evaluate")
    s.set_defaults(func=cmd_patch)

    s = gs.add_parser("unpatch", parents=[common], help="take signatures off a patched model (exact up to rounding)")
    s.add_argument("patched", help="id or name of a model made by rws patch --to-zoo")
    s.add_argument("signatures", nargs="*", help="signatures to take off (default: all it was patched with)")
    s.add_argument("--to-zoo", action="store_true", help="store the result (op unpatch.rws)")
    s.add_argument("--population", help="population of the stored model (default: the patched model's)")
    s.add_argument("--name", help="model name of the stored model")
    s.set_defaults(func=cmd_unpatch)

    s = gs.add_parser("eval", parents=[common], help="clean and corrupted test accuracy of models, recorded as metrics")
    s.add_argument("models", nargs="+", help="ids or names of classifier models")
    s.add_argument("--corruptions", help="comma separated digits-c corruptions, or all (default all)")
    s.add_argument("--severities", help="comma separated severities 1..5 (default 3)")
    s.add_argument("--dataset", default="digits", help="data set (default digits: digits-c)")
    s.add_argument("--data-root", help="folder with the data set's files (not needed for digits)")
    s.add_argument("--no-record", action="store_true", help="print only; do not store the metrics")
    s.set_defaults(func=cmd_eval)

    s = gs.add_parser("ls", parents=[common], help="list the signatures in the zoo")
    s.set_defaults(func=cmd_ls)
