"""Per-layer weight spectra of a whole population at once: spectral norm, stable rank, effective rank, alpha.

A *layer* is every floating tensor of two or more dimensions in the state dict (``layers.0.weight``,
``convs.1.weight``, ``head.weight``, ...; biases and normalisation parameters are vectors and are
not layers), named by its module (the tensor name without ``.weight``). Its spectrum is the
eigenvalues of ``W^T W`` (the squared singular values of ``W``), computed for all ``N`` models of
a population with one batched ``torch.linalg.svdvals`` per layer, never a loop over models.

Layers as WeightWatcher treats them:

- a dense weight ``[out, in]`` is one matrix;
- a convolution ``[out, in, kh, kw]`` is ``kh * kw`` matrices ``[out, in]``, one per kernel
  position, whose eigenvalues are pooled into one spectrum of ``kh * kw * min(out, in)``
  eigenvalues (WeightWatcher's default for Conv2d);
- any other tensor ``[d0, d1, ...]`` is flattened to ``[d0, d1 * ...]``.

Per layer and model:

- ``spectral_norm``: the largest singular value (for a convolution, the largest over its kernel
  positions, as WeightWatcher's ``sv_max``);
- ``stable_rank``: ``sum(sigma^2) / max(sigma^2)`` over the pooled spectrum
  (``||W||_F^2 / ||W||_2^2`` for a dense layer);
- ``effective_rank``: ``exp(H(p))`` with ``p_i = sigma_i / sum(sigma)`` (Roy & Vetterli 2007);
- the power-law fit of the pooled eigenvalues (:mod:`analysis.landscape.powerlaw`): ``alpha`` with
  its bootstrap interval, cutoff, KS distance, tail size and status.

A model whose layer holds NaN or infinite weights gets NaN metrics for that layer and the status
``failed`` (the other models are unaffected).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import pandas as pd
import torch
from torch import Tensor

from analysis.landscape.powerlaw import STATUS, PowerLawFit, fit_power_law
from zoo.errors import ConfigError, MismatchError

__all__ = [
    "LayerSpectrum",
    "layer_names",
    "layer_matrices",
    "population_spectra",
    "spectra_frame",
    "metric_split",
]

#: the catalog's metric split column holds at most this many characters
MAX_SPLIT = 50


@dataclass
class LayerSpectrum:
    """One layer of a population: its pooled spectrum and the metrics derived from it.

    Shapes:
        evals: ``[N, M]`` eigenvalues of ``W^T W`` pooled over the layer's matrices, ascending;
        spectral_norm, stable_rank, effective_rank: ``[N]``; fit: :class:`PowerLawFit` of ``[N]``.
    """

    layer: str
    tensor: str
    shape: tuple[int, ...]
    kind: str  # "dense", "conv" or "flattened"
    n_matrices: int
    evals: Tensor
    spectral_norm: Tensor
    stable_rank: Tensor
    effective_rank: Tensor
    fit: PowerLawFit


def layer_names(params: Mapping[str, Tensor], *, stacked: bool = True) -> dict[str, str]:
    """``{layer: tensor name}`` of the tensors that are layers (floating, two or more dimensions each).

    ``stacked``: the tensors carry a leading model axis ``[N, ...]`` (not counted).
    """
    lead = 1 if stacked else 0
    out = {}
    for name, t in params.items():
        if t.is_floating_point() and t.dim() - lead >= 2:
            out[name[: -len(".weight")] if name.endswith(".weight") else name] = name
    return out


def layer_matrices(w: Tensor) -> tuple[Tensor, str]:
    """The matrices whose spectra make up a layer, for all models at once.

    Shapes:
        w: ``[N, out, in]``, ``[N, out, in, kh, kw]`` or ``[N, d0, d1, ...]``. Returns
        ``([N, S, out, in], kind)``: ``S = 1`` for dense layers, ``kh * kw`` for convolutions
        (one matrix per kernel position), 1 for other tensors flattened to ``[d0, d1 * ...]``.
    """
    if w.dim() < 3:
        raise MismatchError(f"a layer needs a stacked tensor of two or more dimensions per model, got shape {tuple(w.shape)}")
    n = w.shape[0]
    if w.dim() == 3:
        return w.unsqueeze(1), "dense"
    if w.dim() == 5:
        o, i, kh, kw = w.shape[1:]
        return w.permute(0, 3, 4, 1, 2).reshape(n, kh * kw, o, i), "conv"
    return w.reshape(n, 1, w.shape[1], -1), "flattened"


def population_spectra(
    params: Mapping[str, Tensor],
    *,
    layers: Sequence[str] | None = None,
    bootstrap: int = 100,
    seed: int = 0,
    min_evals: int = 8,
    thresh: float = 1e-5,
) -> list[LayerSpectrum]:
    """Spectra and spectral metrics of every layer of ``N`` stacked models.

    Args:
        params: a stacked population (``Zoo.population(...).stack()``).
        layers: layer names to analyse (default: every layer, see :func:`layer_names`).
        bootstrap: replicates of alpha's confidence interval (0: none).
        seed: seeds the bootstrap.
        min_evals, thresh: see :func:`analysis.landscape.powerlaw.fit_power_law`.

    Shapes:
        params: ``name -> [N, *shape]``. Each result holds ``[N]`` metrics.
    """
    found = layer_names(params)
    if not found:
        raise MismatchError("these models have no layer with a weight matrix (no floating tensor of 2+ dimensions)")
    if layers is not None:
        unknown = [x for x in layers if x not in found]
        if unknown:
            raise ConfigError(f"unknown layer(s) {unknown}; the layers are: {', '.join(found)}")
        found = {k: found[k] for k in layers}
    out = []
    for idx, (layer, tname) in enumerate(found.items()):
        w = params[tname].detach()
        mats, kind = layer_matrices(w.float() if w.dtype in (torch.float16, torch.bfloat16) else w)
        n, s, rows, cols = mats.shape
        finite = torch.isfinite(mats).flatten(1).all(1)  # a model with NaN/inf weights: its metrics NaN, fit failed
        mats = torch.where(finite.view(-1, 1, 1, 1), mats, torch.zeros((), dtype=mats.dtype))
        sv = torch.linalg.svdvals(mats.reshape(n * s, rows, cols)).reshape(n, s * min(rows, cols)).double()
        sv[~finite] = math.nan
        sv = torch.sort(sv, dim=1).values
        ev = sv * sv
        smax = sv[:, -1]
        total = sv.sum(1)
        p = sv / total.clamp_min(1e-300).unsqueeze(1)
        entropy = -(p * torch.log(p.clamp_min(1e-300))).sum(1)
        fit = fit_power_law(ev, bootstrap=bootstrap, seed=seed + idx, min_evals=min_evals, thresh=thresh)
        fit.status[~finite] = STATUS["failed"]
        nan = torch.full_like(smax, math.nan)
        out.append(LayerSpectrum(
            layer=layer, tensor=tname, shape=tuple(w.shape[1:]), kind=kind, n_matrices=s, evals=ev,
            spectral_norm=smax,
            stable_rank=torch.where(smax > 0, ev.sum(1) / (smax * smax).clamp_min(1e-300), nan),
            effective_rank=torch.where(total > 0, torch.exp(entropy), nan),
            fit=fit,
        ))  # fmt: skip
    return out


def metric_split(layer: str) -> str:
    """The metric split naming ``layer``: the layer name itself, or (over 50 characters) its first 36
    characters, ``~`` and a 12-digit hash, so every split fits the catalog's column and stays unique."""
    if len(layer) <= MAX_SPLIT:
        return layer
    return f"{layer[:36]}~{hashlib.sha1(layer.encode()).hexdigest()[:12]}"


def spectra_frame(spectra: Sequence[LayerSpectrum], model_ids: Sequence[int]) -> pd.DataFrame:
    """One row per (model, layer): every metric of :class:`LayerSpectrum`, the fit's status by name.

    Columns: model_id, layer, tensor, kind, n_matrices, n_evals, spectral_norm, stable_rank,
    effective_rank, alpha, alpha_lo, alpha_hi, alpha_sigma, xmin, ks, n_tail, status, lambda_max.
    """
    frames = []
    for s in spectra:
        if s.evals.shape[0] != len(model_ids):
            raise MismatchError(f"{len(model_ids)} model ids for {s.evals.shape[0]} models")
        f = s.fit
        frames.append(pd.DataFrame({
            "model_id": list(model_ids), "layer": s.layer, "tensor": s.tensor, "kind": s.kind,
            "n_matrices": s.n_matrices, "n_evals": f.n_evals.tolist(),
            "spectral_norm": s.spectral_norm.tolist(), "stable_rank": s.stable_rank.tolist(),
            "effective_rank": s.effective_rank.tolist(), "alpha": f.alpha.tolist(), "alpha_lo": f.alpha_lo.tolist(),
            "alpha_hi": f.alpha_hi.tolist(), "alpha_sigma": f.sigma.tolist(), "xmin": f.xmin.tolist(),
            "ks": f.ks.tolist(), "n_tail": f.n_tail.tolist(), "status": f.status_names(),
            "lambda_max": s.evals[:, -1].tolist(),
        }))  # fmt: skip
    return pd.concat(frames, ignore_index=True)
