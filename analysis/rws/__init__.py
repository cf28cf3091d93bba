"""Robust weight signatures (Cai et al. 2023): extract, quantise, store, patch, compose, unpatch, evaluate.

A robust fine-tune's weight change from its clean parent, with its projection on a clean fine-tune's
change removed and only the shallowest layers kept, is a *signature* of the robustness it learnt;
adding it (scaled) to a clean model patches that robustness in, subtracting takes it off again, and
several add up. See docs/signatures.md.

In memory (state dicts)::

    from analysis.rws import extract, patch, unpatch, corruption_accuracy
    sig = extract(robust_sd, base_sd, clean_sd, config=cfg, norm_share=0.8, bits=8)
    small = extract(robust_sd, base_sd, clean_sd, config=cfg, layers=2, rank=[8, None], bits=4)  # low rank
    patched = patch(clean_sd, [sig], alpha=1.0, config=cfg)
    choose_alpha(cfg, clean_sd, [sig]).alpha      # alpha chosen on the validation split

In the zoo (signatures and patched models are model rows with lineage)::

    from analysis.rws import extract_signature, patch_model, unpatch_model, evaluate_corruptions
    s = extract_signature(z, "digits-mlp-robust/00003/e006")      # op rws.extract
    p = patch_model(z, clean_id, [s.id], alpha=1.0)                # op patch.rws, evaluated
    p = patch_model(z, clean_id, [s.id], alpha="auto")             # alpha chosen on the validation split
    evaluate_corruptions(z, [clean_id, p.record.id], corruptions=["rotate"], severities=[3])

Command line: ``weightzoo rws extract|patch|unpatch|eval``.
"""

from analysis.rws.evaluate import (
    corruption_accuracy,
    corruption_names,
    evaluate_corruptions,
    severity_list,
    summary,
)
from analysis.rws.forms import FORMS, Form, decode_parts, encode, lowrank_bound
from analysis.rws.layers import Layer, layers_of
from analysis.rws.patch import (
    alpha_list,
    check_alpha,
    check_applicable,
    coefficients,
    patch,
    permute_signature,
    unpatch,
)
from analysis.rws.quant import BITS, GRANULARITIES, QTensor, quantize
from analysis.rws.select import ALPHA_GRID, AlphaChoice, bn_data, choose_alpha, recompute_bn
from analysis.rws.signature import Signature, extract, layer_ranks, project_out, select_layers
from analysis.rws.store import (
    EXTRACT_OP,
    PATCH_OP,
    UNPATCH_OP,
    PatchResult,
    extract_signature,
    find_base,
    find_clean,
    is_signature,
    layout_tag,
    load_signature,
    patch_model,
    unpatch_model,
)

__all__ = [
    "BITS", "GRANULARITIES", "QTensor", "quantize", "Layer", "layers_of", "Signature", "extract", "project_out",
    "select_layers", "alpha_list", "check_alpha", "check_applicable", "coefficients", "patch", "unpatch",
    "permute_signature", "corruption_accuracy", "corruption_names", "severity_list", "evaluate_corruptions", "summary",
    "EXTRACT_OP", "PATCH_OP", "UNPATCH_OP", "PatchResult", "extract_signature", "find_base", "find_clean",
    "is_signature", "layout_tag", "load_signature", "patch_model", "unpatch_model", "FORMS", "Form", "decode_parts",
    "encode", "lowrank_bound", "ALPHA_GRID", "AlphaChoice", "bn_data", "choose_alpha", "recompute_bn", "layer_ranks",
]  # fmt: skip
