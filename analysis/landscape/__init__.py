"""Landscape and spectral metrics of model populations, written back to the zoo as metrics.

- :mod:`~analysis.landscape.powerlaw`: batched power-law fits of spectra (alpha, KS cutoff, bootstrap, status)
- :mod:`~analysis.landscape.spectral`: per-layer spectra of N stacked models (one batched SVD per layer)
- :mod:`~analysis.landscape.hessian`: Hessian trace (Hutchinson) and top eigenvalue (power iteration), batched
- :mod:`~analysis.landscape.cka`: linear CKA between models' activations
- :mod:`~analysis.landscape.metrics`: the zoo front door (``landscape``), metric names and splits
- :mod:`~analysis.landscape.report`: rank correlations of hyperparameters vs metrics, the phase map

    from analysis.landscape import landscape
    run = landscape(zoo, "digits-mlp", metrics=("spectral", "hessian", "cka"))

See docs/landscape.md.
"""

from analysis.landscape.cka import linear_cka, model_cka, population_cka
from analysis.landscape.hessian import SharpnessEstimate, hutchinson_trace, sharpness, top_eigenvalue
from analysis.landscape.metrics import (
    FAMILIES,
    METRIC_FAMILIES,
    LandscapeRun,
    MetricFamily,
    cka_metrics,
    hessian_metrics,
    landscape,
    resolve_models,
    spectral_metrics,
)
from analysis.landscape.powerlaw import STATUS, PowerLawFit, fit_power_law
from analysis.landscape.spectral import LayerSpectrum, population_spectra, spectra_frame

__all__ = [
    "FAMILIES", "METRIC_FAMILIES", "MetricFamily", "LandscapeRun", "landscape", "resolve_models", "spectral_metrics", "hessian_metrics", "cka_metrics",
    "STATUS", "PowerLawFit", "fit_power_law", "LayerSpectrum", "population_spectra", "spectra_frame",
    "SharpnessEstimate", "sharpness", "hutchinson_trace", "top_eigenvalue", "linear_cka", "model_cka",
    "population_cka",
]  # fmt: skip
