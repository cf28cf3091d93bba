"""A population report: which hyperparameters move which metric, and a phase map over a 2-D grid.

- :func:`population_table`: one row per model, its metrics and hyperparameters (``ModelQuery.df``),
  over one or many populations (a phase grid that varies the width is one population per width).
- :func:`rank_correlations`: Spearman's rank correlation of every varying numeric hyperparameter with
  every whole-model metric, with its p-value and the number of models (scipy.stats.spearmanr).
- :func:`phase_map`: in the manner of "A Model Zoo on Phase Transitions in Neural Networks"
  (Schurholt et al. 2024) and the load-temperature diagrams of Yang et al. (2021): for a grid of two
  hyperparameters (width x batch size, width x learning rate), the median of each metric family over
  the seeds of every cell, one heat map per family, all on one figure (PNG).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from zoo.errors import ConfigError

if TYPE_CHECKING:
    from zoo import Zoo

__all__ = ["PHASE_METRICS", "population_table", "rank_correlations", "phase_grid", "phase_map", "landscape_metric_columns"]

#: the metric families of the phase map: (column, title, log10 scale)
PHASE_METRICS: tuple[tuple[str, str, bool], ...] = (
    ("test_acc", "performance: test accuracy", False),
    ("esd_alpha", "spectral: ESD alpha (mean of layers)", False),
    ("stable_rank", "spectral: stable rank (mean of layers)", False),
    ("train_hessian_trace", "sharpness: Hessian trace (log10)", True),
    ("train_hessian_top_eig", "sharpness: top Hessian eigenvalue (log10)", True),
    ("test_cka", "similarity: CKA to the reference", False),
)

#: whole-model columns never correlated (uncertainties, bookkeeping)
_SKIP_SUFFIXES = ("_se", "_residual", "_lo", "_hi", "_status", "_samples", "_reference", "_sigma", "_layers", "_fitted")


def population_table(zoo: Zoo, models: Any, *, final: bool = True, per_layer: bool = False) -> pd.DataFrame:
    """One row per model with its metrics (``<split>_<name>``) and hyperparameters (``hp_<name>``).

    ``models``: a population name, a pattern (``digits-mlp-phases/*``), a ``ModelQuery`` or ids.
    Per-layer metrics (split ``<layer>`` or ``<data>/<layer>``) are dropped unless ``per_layer``.
    """
    from analysis.landscape.metrics import resolve_models

    groups = resolve_models(zoo, models, final=final)
    df = zoo.models().ids_in([i for g in groups for i in g.ids]).df()
    if per_layer:
        return df
    prefixes = {k.rsplit(".", 1)[0] for g in groups for k in _tensor_names(g.config)}
    keep = [c for c in df.columns if "/" not in c and not any(c.startswith(p + "_") for p in prefixes)]
    return df[keep]


def _tensor_names(config: dict) -> list[str]:
    from zoo.models.architectures import RAW_FAMILY, param_shapes

    if config.get("family") == RAW_FAMILY:
        return list(config.get("tensors", {}))
    return list(param_shapes(config))


def landscape_metric_columns(df: pd.DataFrame) -> list[str]:
    """The numeric metric columns of a :func:`population_table` (bookkeeping and uncertainties left out)."""
    base = {"id", "name", "population", "architecture", "run", "step", "op", "source", "n_params", "nbytes", "created_at"}
    return [c for c in df.columns if c not in base and not c.startswith("hp_") and not c.endswith(_SKIP_SUFFIXES)
            and pd.api.types.is_numeric_dtype(df[c])]  # fmt: skip


def _numeric_hparams(df: pd.DataFrame) -> list[str]:
    out = []
    for c in df.columns:
        if not c.startswith("hp_") or c == "hp_seed":
            continue
        v = pd.to_numeric(df[c], errors="coerce")
        if v.notna().sum() >= 3 and v.nunique() > 1:
            out.append(c)
    return out


def rank_correlations(df: pd.DataFrame, *, hparams: Sequence[str] | None = None, metrics: Sequence[str] | None = None,
                      min_models: int = 5) -> pd.DataFrame:  # fmt: skip
    """Spearman's rank correlation of each hyperparameter with each metric.

    Defaults: every numeric ``hp_*`` column that varies (the seed excluded), every whole-model metric
    (:func:`landscape_metric_columns`). Pairs with fewer than ``min_models`` models with both values are
    left out. Returns columns hparam, metric, rho, p_value, n, sorted by ``|rho|`` descending.
    """
    from scipy.stats import spearmanr

    hp = list(hparams) if hparams is not None else _numeric_hparams(df)
    ms = list(metrics) if metrics is not None else landscape_metric_columns(df)
    missing = [c for c in [*hp, *ms] if c not in df.columns]
    if missing:
        raise ConfigError(f"no column(s) {missing} in the table; columns: {', '.join(map(str, df.columns[:40]))}")
    rows = []
    for h in hp:
        x = pd.to_numeric(df[h], errors="coerce")
        for m in ms:
            y = pd.to_numeric(df[m], errors="coerce")
            ok = x.notna() & y.notna()
            if ok.sum() < min_models or x[ok].nunique() < 2 or y[ok].nunique() < 2:
                continue
            res = spearmanr(x[ok], y[ok])
            rows.append({"hparam": h[3:], "metric": m, "rho": float(res.statistic), "p_value": float(res.pvalue),
                         "n": int(ok.sum())})  # fmt: skip
    out = pd.DataFrame(rows, columns=["hparam", "metric", "rho", "p_value", "n"])
    return out.reindex(out["rho"].abs().sort_values(ascending=False).index).reset_index(drop=True)


def phase_grid(df: pd.DataFrame, metric: str, *, x: str = "hp_width", y: str = "hp_batch_size", agg: str = "median"
               ) -> pd.DataFrame:  # fmt: skip
    """The ``agg`` of ``metric`` over the models of every (x, y) cell: rows y ascending, columns x ascending."""
    for c in (x, y, metric):
        if c not in df.columns:
            raise ConfigError(f"no column {c!r} in the table; give an existing hyperparameter (hp_...) or metric")
    d = df[[x, y, metric]].apply(pd.to_numeric, errors="coerce")
    xs = sorted(d[x].dropna().unique())
    ys = sorted(d[y].dropna().unique())
    grid = d.dropna().groupby([y, x])[metric].agg(agg).unstack()
    return grid.reindex(index=ys, columns=xs)  # every cell of the grid, NaN where no model has the metric


def phase_map(
    df: pd.DataFrame,
    path: str | os.PathLike[str] | None = None,
    *,
    x: str = "hp_width",
    y: str = "hp_batch_size",
    metrics: Sequence[tuple[str, str, bool]] | None = None,
    overwrite: bool = False,
    zoo_roots: Sequence[Any] = (),
    title: str | None = None,
) -> Any:
    """Draw the phase map: one heat map per metric family over the (x, y) grid, medians over seeds.

    ``metrics``: ``(column, title, log10)`` triples (default :data:`PHASE_METRICS`, those present in
    ``df``). Writes ``path`` (a ``.png``; refused inside a zoo, replaced only with ``overwrite``) when
    given and returns the matplotlib figure.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    if path is not None:
        from zoo.io.figures import check_png_path

        check_png_path(path, overwrite=overwrite, zoo_roots=zoo_roots)  # before the work
    chosen = [m for m in (metrics or PHASE_METRICS) if m[0] in df.columns and df[m[0]].notna().any()]
    if not chosen:
        raise ConfigError(
            f"none of the metrics {[m[0] for m in (metrics or PHASE_METRICS)]} is in the table; compute them "
            "first (weightzoo landscape POPULATION --metrics spectral,hessian,cka)"
        )
    cols = min(3, len(chosen))
    rows = math.ceil(len(chosen) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.8 * rows), squeeze=False)
    for ax in axes.flat[len(chosen):]:
        ax.axis("off")
    for ax, (col, name, log) in zip(axes.flat, chosen, strict=False):
        grid = phase_grid(df, col, x=x, y=y)
        vals = grid.to_numpy(dtype=float)
        shown = np.log10(np.clip(vals, 1e-12, None)) if log else vals
        im = ax.imshow(shown, origin="lower", aspect="auto", cmap="viridis")
        ax.set_xticks(range(grid.shape[1]), [_fmt(v) for v in grid.columns])
        ax.set_yticks(range(grid.shape[0]), [_fmt(v) for v in grid.index])
        ax.set_xlabel(x.removeprefix("hp_"))
        ax.set_ylabel(y.removeprefix("hp_"))
        ax.set_title(name, fontsize=10)
        for (i, j), v in np.ndenumerate(vals):
            if math.isfinite(v):
                ax.text(j, i, f"{v:.3g}", ha="center", va="center", fontsize=7,
                        color="white" if shown[i, j] < np.nanmean(shown) else "black")  # fmt: skip
        fig.colorbar(im, ax=ax, shrink=0.85)
    n_models = int(df[[x, y]].dropna().shape[0])
    fig.suptitle(title or f"phase map: {len(chosen)} metric families over {x.removeprefix('hp_')} x "
                 f"{y.removeprefix('hp_')} (median of {n_models} models' cells)")  # fmt: skip
    fig.tight_layout()
    if path is not None:
        from zoo.io.figures import save_png

        save_png(fig, path, overwrite=overwrite, zoo_roots=zoo_roots)
    return fig


def _fmt(v: Any) -> str:
    f = float(v)
    return str(int(f)) if f.is_integer() else f"{f:.3g}"


def default_png(population: str) -> Path:
    """A file name for a population's phase map in the current folder."""
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in population).strip("_") or "population"
    return Path(f"{safe}-landscape.png")
