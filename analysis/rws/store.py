"""Signatures and patched models in the zoo: every one a row of the ``models`` table, with lineage.

**A signature is a model row.** Its tensors are the stored form of :class:`~analysis.rws.Signature`
(per kept tensor its parts, see :mod:`analysis.rws.forms`: ``NAME::codes`` (uint8, packed),
``NAME::lo`` and ``NAME::step``, or ``NAME`` in float32; low rank ``NAME::left...``/``NAME::right...``;
sparse ``NAME::values...`` and ``NAME::mask`` or ``NAME::index``), so its architecture is a ``raw``
config (tensor names, dtypes, shapes: it cannot be run or evaluated, only applied). Its lineage edges
(op ``rws.extract``) come from the robust model (role ``robust``), the base it was fine-tuned from
(``base``) and the clean fine-tune whose direction was projected out (``clean``); the edge params hold
:meth:`Signature.meta` (the target architecture, kept layers, each tensor's layout (shape, form, bits,
granularity, rank or count and coding), projection, corruption, severity, layer shares, errors), which
is all :func:`load_signature` needs besides the tensors. Hyperparameters (``corruption``, ``severity``,
``bits``, ``granularity``, ``n_layers``, ``projection``, ``form``, ``rank``, ``energy``, ``density``),
metrics (``storage_ratio`` = robust model bytes / signature bytes, ``kept_share``, ``quant_error``,
``approx_error``, ``relative_error``) and tags (``rws``, ``rws:CORRUPTION``) make signatures
queryable in SQL. A population holds one architecture, so the default population is
``<robust population>/rws-<layout>`` (:func:`layout_tag`): one population per layout.

**A patched model is a model row** of the patched model's architecture, in
``<model population>/patched`` by default, with op ``patch.rws``, parents ``{model: "model",
signature: "signature", ...}`` and params ``alpha``, ``coefficients``, ``signatures`` (ids, in order),
``normalize``, ``aligned`` (and the permutations used), ``bn_reset``, ``alpha_selection`` (``alpha="auto"``:
the validation choice, :func:`analysis.rws.choose_alpha`). :func:`unpatch_model` reads them
back and takes the signatures off (op ``unpatch.rws`` when stored).

    from analysis.rws import extract_signature, patch_model, evaluate_corruptions
    sig = extract_signature(z, "digits-mlp-robust/00003/e006")            # base and clean found by lineage
    res = patch_model(z, clean_id, [sig.id], alpha=1.0)                   # stored, evaluated
    evaluate_corruptions(z, [clean_id, res.record.id], corruptions=["rotate"])
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from analysis.rws.patch import alpha_list, check_applicable, coefficients, combined_delta, permute_signature
from analysis.rws.select import alpha_grid, bn_data, check_budget, choose_alpha, has_bn, recompute_bn
from analysis.rws.signature import Signature, extract
from zoo.errors import ConfigError, DuplicateError, MismatchError, NotFoundError
from zoo.models.architectures import config_hash, is_classifier, normalize_config

__all__ = [
    "EXTRACT_OP", "PATCH_OP", "UNPATCH_OP", "PatchResult", "find_base", "find_clean", "extract_signature",
    "is_signature", "load_signature", "patch_model", "unpatch_model", "layout_tag",
]  # fmt: skip

EXTRACT_OP = "rws.extract"
PATCH_OP = "patch.rws"
UNPATCH_OP = "unpatch.rws"


# ------------------------------------------------------------------------------------------ lookups
def find_base(zoo: Any, robust: Any) -> Any:
    """The model ``robust`` was fine-tuned from (its ``finetune`` lineage parent)."""
    for e in zoo.lineage(robust.id, max_depth=1):
        if e.op == "finetune":
            return zoo.get(e.parent)
    raise NotFoundError(f"model {robust.id} has no finetune parent in its lineage; give the base model (--base MODEL)")


def find_clean(zoo: Any, robust: Any, base: Any) -> Any:
    """The clean (``null``) fine-tune of ``base``: preferably in ``robust``'s population at its step."""
    kids = [e.child for e in zoo.lineage(base.id, direction="down", max_depth=1) if e.op == "finetune" and e.child != robust.id]
    cands = [r for r in zoo.records(kids) if r.hparams().get("change") == "null"]
    if not cands:
        raise NotFoundError(
            f"no clean (null) fine-tune of base model {base.id} found; give one with --clean MODEL (clean=...), or "
            "extract without the projection (--no-projection)"
        )
    cands.sort(key=lambda r: (r.population != robust.population, r.step != robust.step, r.id))
    return cands[0]


def layout_tag(sig: Signature) -> str:
    """``1L-8bit-tensor``, ``2L-fp32``, ``1L-r8-4bit-tensor``, ``2L-r8_f-8bit-tensor`` (rank 8, then dense),
    ``1L-e0.9-r7-8bit-tensor`` (energy 0.9 came to rank 7), ``1L-d0.2-8bit-tensor`` (``-noproj`` without the
    projection): a signature's layout, so that one population holds signatures of one set of tensor shapes."""
    q = "fp32" if sig.bits is None else f"{sig.bits}bit-{sig.granularity}"
    if sig.energy is not None:  # the ranks it came to: a population holds one set of tensor shapes
        got = [next((f.rank for t, f in (sig.forms or {}).items() if t.rsplit(".", 1)[0] == n and f.rank), None)
               for n in sig.layers]  # fmt: skip
        q = f"e{sig.energy:g}-r" + "_".join("f" if r is None else str(r) for r in got) + f"-{q}"
    elif sig.density is not None:
        q = f"d{sig.density:g}-{q}"
    elif sig.rank is not None:
        ranks = [sig.rank.get(n) for n in sig.layers] if isinstance(sig.rank, dict) else sig.rank
        ranks = ranks if isinstance(ranks, list) else [ranks]
        q = "r" + "_".join("f" if r is None else str(r) for r in ranks) + f"-{q}"
    return f"{len(sig.layers)}L-{q}" + ("" if sig.projection else "-noproj")


def _edge(zoo: Any, model: Any, op: str) -> Any:
    """The model's first lineage edge made by ``op``, or None."""
    key = model.id if hasattr(model, "id") else model
    return next((e for e in zoo.lineage(key, max_depth=1) if e.op == op), None)


def is_signature(zoo: Any, model: Any) -> bool:
    """True when the model was made by ``rws.extract``."""
    return _edge(zoo, model, EXTRACT_OP) is not None


def _signature_edge(zoo: Any, rec: Any) -> Any:
    if (e := _edge(zoo, rec, EXTRACT_OP)) is not None:
        return e
    raise ConfigError(f"model {rec.id} ({rec.name or rec.population}) is not a robust weight signature; signatures are "
                      "made by `weightzoo rws extract` (op rws.extract)")  # fmt: skip


def load_signature(zoo: Any, key: int | str) -> Signature:
    """The :class:`Signature` stored as model ``key`` (id or name)."""
    rec = zoo.get(key)
    edge = _signature_edge(zoo, rec)
    return Signature.from_state_dict(rec.state_dict(), edge.params)


def _same_arch(a: Any, b: Any, what: str) -> None:
    if a.arch_config is None or b.arch_config is None or config_hash(a.arch_config) != config_hash(b.arch_config):
        raise MismatchError(f"the robust model {a.id} ({a.architecture}) and the {what} model {b.id} ({b.architecture}) "
                            "have different architectures; a signature needs models of one architecture")  # fmt: skip


def _form_name(sig: Signature) -> str:
    """``lowrank`` / ``sparse`` when any kept tensor is stored so, else ``dense``."""
    forms = {f.form for f in (sig.forms or {}).values()}
    return "lowrank" if "lowrank" in forms else "sparse" if "sparse" in forms else "dense"


def _max_rank(sig: Signature) -> int | None:
    ranks = [f.rank for f in (sig.forms or {}).values() if f.rank is not None]
    return max(ranks) if ranks else None


# ------------------------------------------------------------------------------------------ extract
def extract_signature(
    zoo: Any,
    robust: int | str,
    *,
    base: int | str | None = None,
    clean: int | str | None = None,
    layers: int | None = None,
    norm_share: float | None = None,
    bits: int | None = 8,
    granularity: str = "tensor",
    projection: bool = True,
    rank: int | Sequence[int | None] | Mapping[str, int | None] | None = None,
    energy: float | None = None,
    density: float | None = None,
    population: str | None = None,
    name: str | None = None,
) -> Any:
    """Extract the signature of stored model ``robust`` and store it (op ``rws.extract``); its record.

    ``rank`` / ``energy`` / ``density`` store the kept weights low rank or sparse (see
    :func:`analysis.rws.extract`); the edge params say per tensor which form it has.

    ``base`` defaults to ``robust``'s finetune parent, ``clean`` to that parent's null fine-tune
    (:func:`find_clean`). Corruption and severity are read from ``robust``'s hyperparameters
    (``change_corruption``, ``change_severity``) when it is a robust fine-tune of the builder.
    """
    rec = zoo.get(robust)
    if rec.arch_config is None or rec.arch_config.get("family") == "raw":
        raise ConfigError(f"model {rec.id} has no buildable architecture; extract signatures of models the zoo can build")
    base_rec = zoo.get(base) if base is not None else find_base(zoo, rec)
    _same_arch(rec, base_rec, "base")
    clean_rec = None
    if projection:
        clean_rec = zoo.get(clean) if clean is not None else find_clean(zoo, rec, base_rec)
        _same_arch(rec, clean_rec, "clean")
    hp = rec.hparams()
    sig = extract(rec.state_dict(), base_rec.state_dict(), clean_rec.state_dict() if clean_rec else None,
                  config=rec.arch_config, layers=layers, norm_share=norm_share, bits=bits, granularity=granularity,
                  projection=projection, corruption=hp.get("change_corruption"),
                  severity=hp.get("change_severity"), rank=rank, energy=energy, density=density)  # fmt: skip
    tag = layout_tag(sig)
    population = population or f"{rec.population or 'rws'}/rws-{tag}"
    name = name or f"{rec.name or f'model-{rec.id}'}/rws-{tag}"
    try:
        taken = zoo.get(name)
    except NotFoundError:
        taken = None
    if taken is not None:
        raise DuplicateError(f"a model named {name!r} exists already (model {taken.id}): this signature was extracted "
                             "before; use it, or give another name (--name)")  # fmt: skip
    parents = {rec.id: "robust", base_rec.id: "base"}
    if clean_rec is not None:
        parents[clean_rec.id] = "clean"
    params = {**sig.meta(), "robust": rec.id, "base": base_rec.id, "clean": clean_rec.id if clean_rec else None,
              "full_nbytes": rec.nbytes}  # fmt: skip
    hparams = {"corruption": sig.corruption, "severity": sig.severity, "bits": sig.bits or 32,
               "granularity": sig.granularity, "n_layers": len(sig.layers), "projection": sig.projection,
               "form": _form_name(sig), "rank": _max_rank(sig), "energy": sig.energy, "density": sig.density}  # fmt: skip
    metrics = {"storage_ratio": rec.nbytes / max(1, sig.nbytes), "kept_share": sig.kept_share,
               "quant_error": sig.quantization_error, "approx_error": sig.approximation_error,
               "relative_error": sig.relative_error}  # fmt: skip
    tags = ["rws"] + ([f"rws:{sig.corruption}"] if sig.corruption else [])
    return zoo.add(sig.state_dict(), population=population, name=name, parents=parents, op=EXTRACT_OP, params=params,
                   hparams={k: v for k, v in hparams.items() if v is not None}, metrics=metrics, tags=tags)  # fmt: skip


# ------------------------------------------------------------------------------------------ patch
@dataclass
class PatchResult:
    """A patched (or unpatched) model: its weights, how it was made and, when stored, its record.

    Shapes: state ``name -> [*shape]`` (the model's architecture).
    """

    state: dict[str, Tensor]
    config: dict[str, Any]
    model: int
    signatures: list[int]
    coefficients: list[float]
    params: dict[str, Any] = field(default_factory=dict)
    record: Any = None
    #: unpatch only: the largest |unpatched - original model| (None when the original is not in the zoo)
    max_error: float | None = None


def _sub_spec(sig: Signature) -> Any:
    """The permutation spec of the signature's architecture, restricted to the signature's tensors."""
    from weightspace.spec import PermutationSpec, spec_for

    full = spec_for(sig.target)
    return PermutationSpec({k: full.axes[k] for k in sig.deltas})


def _align_perms(sig: Signature, model_state: Mapping[str, Tensor], base_state: Mapping[str, Tensor],
                 model_cfg: Mapping[str, Any], seed: int) -> tuple[Any, dict[str, Tensor]]:  # fmt: skip
    """Weight-match the model to the signature's base; the spec of the signature's tensors and the perms.

    Same architecture: the whole model is matched. Otherwise only the signature's tensors (their
    shapes must match): their permutations come from the signature's architecture.
    """
    from analysis.align import align

    sub = _sub_spec(sig)
    if config_hash(normalize_config(model_cfg)) == config_hash(sig.target):
        res = align(dict(model_state), dict(base_state), config=model_cfg, seed=seed)
    else:
        res = align({k: model_state[k] for k in sig.deltas}, {k: base_state[k] for k in sig.deltas}, spec=sub, seed=seed)
    return sub, {p: v for p, v in res.perm(0).items() if p in sub.perms}


def patch_model(
    zoo: Any,
    model: int | str,
    signatures: Sequence[int | str],
    *,
    alpha: float | Sequence[float] | str = 1.0,
    normalize: bool = True,
    strict: bool = True,
    align: bool = False,
    seed: int = 0,
    bn_reset: bool | None = None,
    max_clean_drop: float = 0.01,
    alphas: Sequence[float] | None = None,
    to_zoo: bool = True,
    population: str | None = None,
    name: str | None = None,
    evaluate: bool = True,
    dataset: str = "digits",
    dataset_root: str | None = None,
) -> PatchResult:
    """Patch stored model ``model`` with stored signatures (see :func:`analysis.rws.patch`).

    Args:
        alpha: one scale or one per signature; each signature is added at ``alpha_k / K``
            (``normalize``, the paper's composition) or ``alpha_k``. ``"auto"``: one alpha chosen on
            the validation split from ``alphas`` (default 0.25..2), the best corrupted accuracy
            losing at most ``max_clean_drop`` clean accuracy (:func:`analysis.rws.choose_alpha`);
            the choice and what every candidate did are stored in the lineage params.
        strict: the model must have the signatures' architecture (else: only the kept tensors' shapes).
        align: first weight-match the model to each signature's base (re-basin, :mod:`analysis.align`)
            and move the signature into the model's neuron order (for models of other seeds/subsets).
        bn_reset: recompute BatchNorm statistics on the clean training split plus its copies under the
            signatures' corruptions (default: when the model has BatchNorm).
        to_zoo: store the patched model (op ``patch.rws``) and, with ``evaluate``, record its clean
            accuracy and its accuracy under the signatures' corruptions.

    Bad input (an unknown model, a signature of another architecture, a model that is itself a
    signature, alpha that is not a number) raises before anything is written.
    """
    rec = zoo.get(model)
    if is_signature(zoo, rec):
        raise ConfigError(f"model {rec.id} is a signature itself; patch a model (a clean classifier) with signatures")
    if rec.arch_config is None or rec.arch_config.get("family") == "raw":
        raise ConfigError(f"model {rec.id} has no buildable architecture; patch models the zoo can build")
    if isinstance(signatures, str | int):
        signatures = [signatures]
    if not signatures:
        raise ConfigError("give at least one signature to patch with")
    sig_recs = [zoo.get(s) for s in signatures]
    if len({r.id for r in sig_recs}) != len(sig_recs):
        raise ConfigError("a signature is given twice; give each once (scale it with alpha instead)")
    sigs = [load_signature(zoo, r.id) for r in sig_recs]
    auto = isinstance(alpha, str)
    if auto:
        if alpha != "auto":
            raise ConfigError(f"alpha must be a number, one number per signature, or 'auto' (chosen on the validation "
                              f"split), got {alpha!r}")  # fmt: skip
        check_budget(max_clean_drop)
        alpha_grid(alphas)
        missing = [r.id for r, s in zip(sig_recs, sigs, strict=True) if not s.corruption]
        if missing:
            raise ConfigError(f"signature(s) {missing} record no corruption to choose alpha on; give alpha as a number")
    else:
        coefficients(len(sigs), alpha, normalize=normalize)
    cfg = normalize_config(rec.arch_config)
    state = rec.state_dict()
    for r, s in zip(sig_recs, sigs, strict=True):
        check_applicable(s, state, cfg, strict=strict, label=f"signature {r.id}")
    perms_used: list[dict[str, list[int]]] = []
    if align:
        moved = []
        for r, s in zip(sig_recs, sigs, strict=True):
            base_id = _signature_edge(zoo, r).params.get("base")
            if base_id is None:
                raise NotFoundError(f"signature {r.id} records no base model to align to; patch without align")
            from weightspace.spec import invert_permutation

            sub, perms = _align_perms(s, state, zoo.get(base_id).state_dict(), cfg, seed)
            moved.append(permute_signature(s, sub, invert_permutation(perms)))
            perms_used.append({p: v.tolist() for p, v in perms.items()})
        sigs = moved
    choice = None
    if auto:
        choice = choose_alpha(cfg, state, sigs, alphas=alphas, max_clean_drop=max_clean_drop, normalize=normalize,
                              strict=strict, bn_reset=bn_reset, dataset=dataset, dataset_root=dataset_root)  # fmt: skip
        alpha = choice.alpha
    coefs = coefficients(len(sigs), alpha, normalize=normalize)  # type: ignore[arg-type]
    total = combined_delta(sigs, coefs)
    out = {k: (v.float() + total[k]).to(v.dtype) if k in total else v for k, v in state.items()}
    do_bn = has_bn(out) if bn_reset is None else bool(bn_reset)
    if do_bn and has_bn(out):
        X = bn_data(cfg, sigs, dataset, dataset_root)
        out = {k: v[0] for k, v in recompute_bn(cfg, {k: v.unsqueeze(0) for k, v in out.items()}, X).items()}
    used = alpha_list(len(sigs), alpha)  # type: ignore[arg-type]
    params = {"alpha": used[0] if len(set(used)) == 1 else used, "coefficients": coefs, "normalize": normalize,
              "signatures": [r.id for r in sig_recs], "corruptions": [s.corruption for s in sigs], "model": rec.id,
              "aligned": align, "perms": perms_used if align else None, "bn_reset": bool(do_bn and has_bn(out)),
              "strict": strict, "alpha_selection": choice.params() if choice is not None else None}  # fmt: skip
    result = PatchResult(out, cfg, rec.id, [r.id for r in sig_recs], coefs, params)
    if not to_zoo:
        return result
    parents = {rec.id: "model", **{r.id: "signature" for r in sig_recs}}
    result.record = zoo.add(out, arch=cfg, population=population or f"{rec.population or 'rws'}/patched", name=name,
                            parents=parents, op=PATCH_OP, params=params,
                            hparams={"alpha": params["alpha"], "n_signatures": len(sigs),
                                     "corruptions": [s.corruption for s in sigs]},
                            tags=["rws-patched"], run=rec.run, step=rec.step)  # fmt: skip
    if evaluate and is_classifier(cfg):
        _evaluate_patched(zoo, [result.record.id], sigs, dataset, dataset_root)
        result.record = zoo.get(result.record.id)
    return result


def _evaluate_patched(zoo: Any, ids: list[int], sigs: Sequence[Signature], dataset: str, dataset_root: str | None) -> None:
    from analysis.rws.evaluate import evaluate_corruptions

    zoo.evaluate(ids, dataset=dataset, splits=("train", "val"), dataset_root=dataset_root)
    by_sev: dict[int, list[str]] = {}
    for s in sigs:
        if s.corruption:
            by_sev.setdefault(int(s.severity or 3), []).append(s.corruption)
    if not by_sev:
        zoo.evaluate(ids, dataset=dataset, splits=("test",), dataset_root=dataset_root)
    for sev, kinds in by_sev.items():
        evaluate_corruptions(zoo, ids, corruptions=kinds, severities=[sev], dataset=dataset, dataset_root=dataset_root)


def _patch_edge(zoo: Any, rec: Any) -> Any:
    if (e := _edge(zoo, rec, PATCH_OP)) is not None:
        return e
    raise ConfigError(f"model {rec.id} was not made by patching (op {PATCH_OP}); unpatch a patched model, or use "
                      "analysis.rws.unpatch on weights with the signatures and alpha you patched them with")  # fmt: skip


def unpatch_model(
    zoo: Any,
    patched: int | str,
    signatures: Sequence[int | str] | None = None,
    *,
    to_zoo: bool = False,
    population: str | None = None,
    name: str | None = None,
) -> PatchResult:
    """Take signatures off a stored patched model, with the coefficients (and alignment) it was patched with.

    ``signatures`` defaults to all of them, which restores the original model up to float32 rounding
    (``max_error`` reports the largest deviation from it). A subset leaves the others at their
    coefficients (``alpha / K`` of the original patch, not renormalised). BatchNorm statistics
    recomputed at patch time are not restored (the original model's are in the zoo).
    """
    rec = zoo.get(patched)
    edge = _patch_edge(zoo, rec)
    p = edge.params
    recorded: list[int] = list(p["signatures"])
    chosen = recorded if signatures is None else [zoo.get(s).id for s in signatures]
    if not chosen:
        raise ConfigError("give at least one signature to take off")
    missing = [s for s in chosen if s not in recorded]
    if missing:
        raise ConfigError(f"model {rec.id} was not patched with signature(s) {missing}; it was patched with {recorded}")
    from weightspace.spec import invert_permutation

    sigs, coefs = [], []
    for sid in chosen:
        i = recorded.index(sid)
        s = load_signature(zoo, sid)
        if p.get("aligned") and p.get("perms"):
            perms = {k: torch.tensor(v, dtype=torch.long) for k, v in p["perms"][i].items()}
            s = permute_signature(s, _sub_spec(s), invert_permutation(perms))
        sigs.append(s)
        coefs.append(float(p["coefficients"][i]))
    state = rec.state_dict()
    total = combined_delta(sigs, coefs)
    out = {k: (v.float() - total[k]).to(v.dtype) if k in total else v for k, v in state.items()}
    cfg = normalize_config(rec.arch_config)
    result = PatchResult(out, cfg, rec.id, chosen, coefs, {"signatures": chosen, "coefficients": coefs, "patched": rec.id})
    if sorted(chosen) == sorted(recorded):
        orig = zoo.get(p["model"]).state_dict()
        result.max_error = max((float((out[k].float() - orig[k].float()).abs().max()) for k in total), default=0.0)
        result.params["max_error"] = result.max_error
    if to_zoo:
        parents = {rec.id: "patched", **{s: "signature" for s in chosen}}
        result.record = zoo.add(out, arch=cfg, population=population or rec.population, name=name, parents=parents,
                                op=UNPATCH_OP, params=result.params, tags=["rws-unpatched"], run=rec.run, step=rec.step)  # fmt: skip
    return result
