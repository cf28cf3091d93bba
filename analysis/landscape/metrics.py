"""Landscape and spectral metrics of zoo populations, computed batched and written back as metrics.

    from analysis.landscape import landscape
    run = landscape(zoo, "digits-mlp", metrics=("spectral", "hessian", "cka"))
    run.frames["spectral"]          # one row per (model, layer)
    zoo.population("digits-mlp").df()[["esd_alpha", "train_hessian_trace", "test_cka"]]

Models are read through the public zoo API (``Zoo.records``, ``Zoo.stack``), grouped by architecture
(a population holds one), and every metric family is computed for a whole group at once. Results are
written with :meth:`zoo.Zoo.add_metrics_many` (one transaction per family: all or nothing), so SQL
(``metrics``, ``metrics_wide``, ``model_overview``) and the explorer see them. Re-running appends new
rows; readers take the latest. NaN values (no fit) are not written: the status metric says why.

Metric names and splits (``<layer>`` is the module name, e.g. ``layers.0``, ``convs.1``, ``head``;
``<data>`` the data split used):

=========================  ===================  =====================================================
name                        split                value
=========================  ===================  =====================================================
spectral_norm               <layer>              largest singular value
stable_rank                 <layer> / ""         sum(sigma^2) / max(sigma^2) ("": mean over layers)
effective_rank              <layer> / ""         exp(entropy of sigma / sum(sigma)) ("": mean)
esd_alpha                   <layer> / ""         power-law exponent of the ESD ("": mean of fitted layers)
esd_alpha_lo, esd_alpha_hi  <layer>              bootstrap confidence interval of esd_alpha
esd_alpha_sigma             <layer>              (alpha - 1) / sqrt(n_tail)
esd_xmin, esd_ks, esd_tail  <layer>              cutoff, KS distance, eigenvalues in the tail
esd_evals                   <layer>              eigenvalues above 1e-5 in the layer's spectrum
esd_status                  <layer>              0 ok, 1 small_sample, 2 too_few_eigenvalues, 3 failed
esd_alpha_weighted          ""                   mean of alpha * log10(lambda_max) (WeightWatcher)
log_spectral_norm           ""                   mean of log10(lambda_max) over layers (WeightWatcher)
esd_layers, esd_fitted      ""                   layers, and layers with a power-law fit
hessian_trace(_se)          <data>, <data>/<l>   Hutchinson trace and its standard error (INRs:
                                                 <data> = ``train``, the image each was fitted to)
hessian_top_eig(_residual)  <data>, <data>/<l>   power-iteration eigenvalue, ||Hv - lambda v||
hessian_samples             <data>               data samples in the Hessian's batch (INRs: pixels)
cka                         <data>, <data>/<l>   linear CKA to the reference (<data>: mean of layers;
                                                 INRs: ``coords``, their coordinate grid)
cka_reference               <data>               the reference model's id
=========================  ===================  =====================================================

A split longer than the catalog's 50 characters is shortened (:func:`analysis.landscape.spectral.metric_split`).
"""

from __future__ import annotations

import fnmatch
import functools
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pandas as pd
import torch

from analysis.landscape.cka import population_cka
from analysis.landscape.hessian import check_trace_options, sharpness
from analysis.landscape.powerlaw import STATUS
from analysis.landscape.spectral import metric_split, population_spectra, spectra_frame
from zoo.errors import ConfigError, NotFoundError
from zoo.models.architectures import config_hash, get_family, is_classifier
from zoo.registry import Registry

if TYPE_CHECKING:
    from zoo import Zoo

__all__ = [
    "FAMILIES",
    "METRIC_FAMILIES",
    "MetricFamily",
    "register_metric_family",
    "ModelGroup",
    "LandscapeRun",
    "resolve_models",
    "spectral_metrics",
    "hessian_metrics",
    "cka_metrics",
    "landscape",
]



@dataclass(frozen=True)
class MetricFamily:
    """A family of landscape metrics: how it is computed and what it needs, checked before any work.

    ``compute(zoo, groups, *, record, progress, **options) -> DataFrame`` computes the family for every
    :class:`ModelGroup` and writes its metrics (``frame.attrs["rows_written"]``). ``needs``: ``"weights"``
    (any model, raw state dicts included), ``"classifier"`` (buildable classifiers) or ``"runnable"``
    (classifiers and implicit neural representations). ``check(zoo, options)`` refuses bad options
    before anything runs.
    """

    name: str
    compute: Callable[..., pd.DataFrame]
    needs: str = "weights"
    check: Callable[[Any, dict[str, Any], list[ModelGroup]], None] | None = None


#: the landscape metric families (``weightzoo landscape --metrics``); plug-ins through the
#: ``weightzoo.landscape_metrics`` entry-point group (``name = "module:MetricFamily object"``)
METRIC_FAMILIES: Registry[MetricFamily] = Registry(
    "landscape metric family", plural="landscape metric families", entry_points="weightzoo.landscape_metrics")

#: the built-in families, in the order :func:`landscape` runs them
FAMILIES = ("spectral", "hessian", "cka")

Rows = dict[int, list[tuple[str, str, int | None, float]]]


@dataclass
class ModelGroup:
    """Models of one architecture: their ids, config and populations."""

    config: dict[str, Any]
    ids: list[int]
    populations: list[str]


@dataclass
class LandscapeRun:
    """What :func:`landscape` computed: per-family frames, rows written, seconds per family."""

    groups: list[ModelGroup]
    frames: dict[str, pd.DataFrame] = field(default_factory=dict)
    rows_written: int = 0
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def model_ids(self) -> list[int]:
        return [i for g in self.groups for i in g.ids]


# ------------------------------------------------------------------------------------ which models
def resolve_models(zoo: Zoo, models: str | Sequence[int | str] | Any, *, final: bool = False,
                   limit: int | None = None) -> list[ModelGroup]:  # fmt: skip
    """The models to analyse, grouped by architecture.

    ``models`` is a population name, a pattern of population names (``digits-phase/*``: shell-style
    wildcards), a :class:`zoo.ModelQuery`, or a list of model ids / names. ``final`` keeps the last
    checkpoint of each run; ``limit`` the first ``limit`` models of each group.
    """
    from zoo.query.fluent import ModelQuery

    if isinstance(models, str):
        names = [p.name for p in zoo.populations()]
        pops = [n for n in names if fnmatch.fnmatchcase(n, models)] if any(c in models for c in "*?[") else [models]
        if not pops or (len(pops) == 1 and pops[0] not in names):
            raise NotFoundError(f"no population matches {models!r}; populations: {', '.join(names[:20]) or '(none)'}")
        ids = []
        for p in pops:
            q = zoo.population(p)
            ids += (q.final() if final else q).ids()
    elif isinstance(models, ModelQuery):
        ids = (models.final() if final else models).ids()
    else:
        ids = [int(m) if isinstance(m, int) else zoo.get(m).id for m in models]  # ids are checked by records()
        if final:
            ids = [i for i in zoo.models().final().ids_in(ids).ids()]
    if not ids:
        raise NotFoundError(f"no models to analyse in {models!r}" + (" (final checkpoints)" if final else ""))
    try:
        recs = zoo.records(ids)
    except KeyError as e:
        raise NotFoundError(f"no model {e.args[0]} in the zoo; find ids with `weightzoo ls`") from None
    groups: dict[str, ModelGroup] = {}
    for r in recs:
        key = config_hash(r.arch_config)
        g = groups.setdefault(key, ModelGroup(r.arch_config, [], []))
        g.ids.append(r.id)
        if r.population and r.population not in g.populations:
            g.populations.append(r.population)
    out = list(groups.values())
    if limit is not None:
        for g in out:
            g.ids = g.ids[: int(limit)]
    return out


def _groups(zoo: Zoo, models: Any, final: bool, limit: int | None) -> list[ModelGroup]:
    return models if isinstance(models, list) and models and isinstance(models[0], ModelGroup) else \
        resolve_models(zoo, models, final=final, limit=limit)  # fmt: skip


def _check_evaluable(groups: Iterable[ModelGroup], what: str, *, inr: bool = False) -> None:
    """Refuse, before any work, models that cannot be run on labelled data (raw state dicts; INRs unless ``inr``)."""
    for g in groups:
        fam = g.config.get("family")
        if fam != "raw" and (is_classifier(g.config) or (inr and get_family(g.config).head == "inr")):
            continue
        why = ("a raw state dict has no builder, so it cannot be evaluated" if fam == "raw" else
               f"architecture family {fam!r} is not a classifier ({get_family(g.config).head})")  # fmt: skip
        raise ConfigError(
            f"cannot compute {what} for models {g.ids[:5]} of {', '.join(g.populations) or 'no population'}: they "
            f"must run on {'their inputs' if inr else 'labelled data'}, and {why}. Compute the spectral metrics "
            "instead (weight-only), or give the models a buildable classifier config."
        )


def _write(zoo: Zoo, rows: Rows, record: bool) -> int:
    if not record or not rows:
        return 0
    return zoo.add_metrics_many([(mid, [r for r in rs if math.isfinite(r[3])]) for mid, rs in rows.items()])


def _done(frame: pd.DataFrame, written: int) -> pd.DataFrame:
    frame.attrs["rows_written"] = written
    return frame


def _progress(total: int, desc: str, show: bool) -> Any:
    from zoo.progress import progress_bar

    return progress_bar(total=total, desc=desc, unit="model", disable=not show)


# ------------------------------------------------------------------------------------ spectral
def spectral_metrics(
    zoo: Zoo,
    models: Any,
    *,
    final: bool = False,
    limit: int | None = None,
    bootstrap: int = 100,
    seed: int = 0,
    record: bool = True,
    progress: bool = False,
) -> pd.DataFrame:
    """Per-layer spectra of the models (any family, raw state dicts included), written as metrics.

    Returns one row per (model, layer) (:func:`analysis.landscape.spectral.spectra_frame`).
    """
    groups = _groups(zoo, models, final, limit)
    frames, rows = [], {}
    bar = _progress(sum(len(g.ids) for g in groups), "spectra", progress)
    for g in groups:
        spectra = population_spectra(zoo.stack(g.ids), bootstrap=bootstrap, seed=seed)
        frame = spectra_frame(spectra, g.ids)
        frames.append(frame)
        _spectral_rows(frame, rows)
        bar.update(len(g.ids))
    bar.close()
    return _done(pd.concat(frames, ignore_index=True), _write(zoo, rows, record))


def _spectral_rows(frame: pd.DataFrame, rows: Rows) -> None:
    per_layer = {"spectral_norm": "spectral_norm", "stable_rank": "stable_rank", "effective_rank": "effective_rank",
                 "esd_alpha": "alpha", "esd_alpha_lo": "alpha_lo", "esd_alpha_hi": "alpha_hi",
                 "esd_alpha_sigma": "alpha_sigma", "esd_xmin": "xmin", "esd_ks": "ks", "esd_tail": "n_tail",
                 "esd_evals": "n_evals"}  # fmt: skip
    f = frame.assign(status_code=frame["status"].map(STATUS), split=frame["layer"].map(metric_split))
    for r in f.itertuples(index=False):
        out = rows.setdefault(int(r.model_id), [])
        out += [(name, r.split, None, float(getattr(r, col))) for name, col in per_layer.items()]
        out.append(("esd_status", r.split, None, float(r.status_code)))
    fitted = f[f["status_code"] <= STATUS["small_sample"]]
    log_lmax = f.assign(log_lmax=f["lambda_max"].clip(lower=1e-300).map(math.log10))
    whole = log_lmax.groupby("model_id").agg(stable_rank=("stable_rank", "mean"), effective_rank=("effective_rank", "mean"),
                                             log_spectral_norm=("log_lmax", "mean"), esd_layers=("layer", "size"))  # fmt: skip
    fl = fitted.assign(aw=fitted["alpha"] * fitted["lambda_max"].clip(lower=1e-300).map(math.log10))
    fit_sum = fl.groupby("model_id").agg(esd_alpha=("alpha", "mean"), esd_alpha_weighted=("aw", "mean"),
                                         esd_fitted=("alpha", "size"))  # fmt: skip
    whole = whole.join(fit_sum, how="left").fillna({"esd_fitted": 0})
    for mid, r in whole.iterrows():
        rows.setdefault(int(mid), []).extend((str(k), "", None, float(v)) for k, v in r.items())


# ------------------------------------------------------------------------------------ data
@functools.lru_cache(maxsize=4)
def _dataset(dataset: str, root: str | None) -> Any:
    from zoo.models.datasets import load_dataset

    return load_dataset(dataset, root=root)


def _batch(cfg: dict, dataset: str, split: str, samples: int | None, seed: int, dataset_root: str | None
           ) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """A seeded subset of ``samples`` inputs of ``split``, laid out for ``cfg`` (the same for every group)."""
    X, y = _dataset(dataset, dataset_root).for_architecture(cfg).split(split)
    if samples is not None and samples < len(X):
        idx = torch.randperm(len(X), generator=torch.Generator().manual_seed(int(seed)))[: int(samples)]
        idx = idx.sort().values
        X, y = X[idx], y[idx]
    return X.float(), y


def _coords(dataset: str, dataset_root: str | None) -> torch.Tensor:
    """The pixel-coordinate grid of the data set's images (an INR's inputs). Shapes: ``[H * W, 2]``."""
    from zoo.models.datasets import inr_targets

    return inr_targets(_dataset(dataset, dataset_root), n=1).coords


def _inr_batches(zoo: Zoo, groups: Iterable[ModelGroup], split: str, dataset_root: str | None
                 ) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:  # fmt: skip
    """``{id(group): (pixel grid [P, 2], each model's own image [N, P, C])}`` for the INR groups; refuses a
    split other than ``train`` (an INR's data is its image) and INRs whose image is unknown (added by hand)."""
    from zoo.build.inr import stored_inr_data

    inrs = [g for g in groups if get_family(g.config).head == "inr"]
    if inrs and split != "train":
        raise ConfigError(f"an INR's data is the image it was fitted to (split 'train'), not split {split!r}; "
                          "compute the Hessian of INRs with split='train'")  # fmt: skip
    out = {}
    for g in inrs:
        data = stored_inr_data(zoo, g.ids, dataset_root=dataset_root)
        out[id(g)] = (data.coords, data.targets)
    return out


# ------------------------------------------------------------------------------------ hessian
def hessian_metrics(
    zoo: Zoo,
    models: Any,
    *,
    final: bool = False,
    limit: int | None = None,
    dataset: str = "digits",
    split: str = "train",
    samples: int | None = 512,
    probes: int = 100,
    method: str = "hutch++",
    iters: int = 100,
    tol: float = 1e-4,
    seed: int = 0,
    per_layer: bool = True,
    dataset_root: str | None = None,
    record: bool = True,
    progress: bool = False,
) -> pd.DataFrame:
    """Hessian trace and top eigenvalue of classifiers on a seeded batch of ``samples`` inputs of ``split``,
    and of INRs on the image each was fitted to (every pixel; ``split`` must be ``train``).

    Returns one row per (model, layer) with ``layer = ""`` for the whole model: trace, trace_se,
    top_eig, top_eig_residual. Raw state dicts, models that are neither classifiers nor INRs, and INRs
    whose image is unknown (added by hand) raise :class:`ConfigError` before anything is computed or written.
    """
    groups = _groups(zoo, models, final, limit)
    _check_evaluable(groups, "the Hessian", inr=True)
    inr_data = _inr_batches(zoo, groups, split, dataset_root)  # refused here, before any work
    frames, rows = [], {}
    bar = _progress(sum(len(g.ids) for g in groups), "hessian", progress)
    for g in groups:
        X, y = inr_data.get(id(g)) or _batch(g.config, dataset, split, samples, seed, dataset_root)
        est = sharpness(g.config, zoo.stack(g.ids), X, y, probes=probes, method=method, iters=iters, tol=tol, seed=seed,
                        keys=g.ids, per_layer=per_layer, progress=bar.update)  # fmt: skip
        parts = {"": {"trace": est.trace, "trace_se": est.trace_se, "top_eig": est.top_eig,
                      "top_eig_residual": est.top_eig_residual}, **est.layers}  # fmt: skip
        for layer, vals in parts.items():
            frames.append(pd.DataFrame({"model_id": g.ids, "layer": layer, **{k: v.tolist() for k, v in vals.items()}}))
            sp = split if not layer else metric_split(f"{split}/{layer}")
            for k, mid in enumerate(g.ids):
                rows.setdefault(mid, []).extend(
                    (f"hessian_{name}", sp, None, float(v[k])) for name, v in vals.items())
                if not layer:
                    rows[mid].append(("hessian_samples", split, None, float(est.n_samples)))
    bar.close()
    return _done(pd.concat(frames, ignore_index=True), _write(zoo, rows, record))


# ------------------------------------------------------------------------------------ cka
def _default_reference(zoo: Zoo, ids: Sequence[int]) -> int:
    """The model with the best recorded test accuracy among ``ids`` (the first one when none has one)."""
    m = zoo.metrics()
    m = m[(m["model_id"].isin(list(ids))) & (m["name"] == "acc") & (m["split"] == "test")]
    if m.empty:
        return int(ids[0])
    return int(m.sort_values("value", ascending=False, kind="stable")["model_id"].iloc[0])


def cka_metrics(
    zoo: Zoo,
    models: Any,
    *,
    reference: int | str | None = None,
    final: bool = False,
    limit: int | None = None,
    dataset: str = "digits",
    split: str = "test",
    samples: int | None = 512,
    seed: int = 0,
    dataset_root: str | None = None,
    record: bool = True,
    progress: bool = False,
) -> pd.DataFrame:
    """Linear CKA of every model against ``reference`` on a seeded batch of ``split``, layer by layer.

    Implicit neural representations (SIRENs) are compared on their inputs, the coordinate grid of the
    data set's images (split ``coords``), instead of a data split.

    ``reference`` defaults to the model with the best test accuracy among the models of its family
    (one reference for a grid of populations that differ in width). Returns one
    row per (model, layer): model_id, reference_id, layer, cka.
    """
    groups = _groups(zoo, models, final, limit)
    _check_evaluable(groups, "CKA", inr=True)
    ref_rec = zoo.get(reference) if reference is not None else None
    if ref_rec is not None:
        _check_evaluable([ModelGroup(ref_rec.arch_config, [ref_rec.id], [ref_rec.population or ""])], "CKA", inr=True)
    frames, rows = [], {}
    bar = _progress(sum(len(g.ids) for g in groups), "cka", progress)
    by_family: dict[str, list[int]] = {}  # the default reference: one per family over all groups
    for g in groups:
        by_family.setdefault(g.config["family"], []).extend(g.ids)
    for g in groups:
        ref = ref_rec if ref_rec is not None else zoo.get(_default_reference(zoo, by_family[g.config["family"]]))
        inr = get_family(g.config).head == "inr"
        X = _coords(dataset, dataset_root) if inr else _batch(g.config, dataset, split, samples, seed, dataset_root)[0]
        res = population_cka(g.config, zoo.stack(g.ids), ref.arch_config, ref.state_dict(), X, progress=bar.update)
        mean = torch.stack(list(res.values())).mean(0)
        for layer, v in {"": mean, **res}.items():
            frames.append(pd.DataFrame({"model_id": g.ids, "reference_id": ref.id, "layer": layer, "cka": v.tolist()}))
            where = "coords" if inr else split
            sp = where if not layer else metric_split(f"{where}/{layer}")
            for k, mid in enumerate(g.ids):
                rows.setdefault(mid, []).append(("cka", sp, None, float(v[k])))
                if not layer:
                    rows[mid].append(("cka_reference", where, None, float(ref.id)))
    bar.close()
    return _done(pd.concat(frames, ignore_index=True), _write(zoo, rows, record))


# ------------------------------------------------------------------------------------ all
def landscape(
    zoo: Zoo,
    models: Any,
    *,
    metrics: Sequence[str] = ("spectral",),
    final: bool = False,
    limit: int | None = None,
    record: bool = True,
    progress: bool = False,
    options: dict[str, dict[str, Any]] | None = None,
    on_family: Callable[[str, float], None] | None = None,
) -> LandscapeRun:
    """Compute the metric families ``metrics`` (names in :data:`METRIC_FAMILIES`) for ``models`` and write them.

    ``options`` passes keyword arguments per family (``{"hessian": {"probes": 200}, "cka":
    {"reference": 12}}``). Every family's input is checked before the first one runs, so a bad request
    (an unknown family, a raw state dict asked for the Hessian) writes nothing.
    """
    if isinstance(metrics, str) or not metrics:
        raise ConfigError(f"give the metric families as a list, e.g. ['spectral', 'hessian'], not {metrics!r}; "
                          f"choose from {', '.join(METRIC_FAMILIES.names())}")  # fmt: skip
    fams = [METRIC_FAMILIES.get(m) for m in dict.fromkeys(metrics)]  # unknown names: ConfigError listing the valid ones
    options = dict(options or {})
    for name in options:
        METRIC_FAMILIES.get(name)
    groups = resolve_models(zoo, models, final=final, limit=limit)
    for fam in fams:  # every check before the first family runs: a refused request writes nothing
        if fam.needs != "weights":
            _check_evaluable(groups, f"the {fam.name} metrics", inr=fam.needs == "runnable")
        if fam.check is not None:
            fam.check(zoo, options.get(fam.name, {}), groups)
    run = LandscapeRun(groups)
    order = {n: i for i, n in enumerate(FAMILIES)}
    for fam in sorted(fams, key=lambda f: order.get(f.name, len(order))):
        t0 = time.perf_counter()
        run.frames[fam.name] = fam.compute(zoo, groups, record=record, progress=progress, **options.get(fam.name, {}))
        run.seconds[fam.name] = time.perf_counter() - t0
        run.rows_written += int(run.frames[fam.name].attrs.get("rows_written", 0))
        if on_family is not None:
            on_family(fam.name, run.seconds[fam.name])
    return run


def register_metric_family(family: MetricFamily) -> MetricFamily:
    """Register a :class:`MetricFamily` (refuses a name taken); plug-ins may also use the entry-point group."""
    return METRIC_FAMILIES.register(family.name, family)


def _check_hessian(zoo: Zoo, opts: dict[str, Any], groups: list[ModelGroup]) -> None:
    check_trace_options(opts.get("probes", 100), opts.get("method", "hutch++"))
    _inr_batches(zoo, groups, opts.get("split", "train"), opts.get("dataset_root"))  # before any family writes


def _check_cka(zoo: Zoo, opts: dict[str, Any], groups: list[ModelGroup]) -> None:
    if opts.get("reference") is not None:
        ref = zoo.get(opts["reference"])
        _check_evaluable([ModelGroup(ref.arch_config, [ref.id], [ref.population or ""])], "CKA", inr=True)


register_metric_family(MetricFamily("spectral", spectral_metrics, needs="weights"))
register_metric_family(MetricFamily("hessian", hessian_metrics, needs="runnable", check=_check_hessian))
register_metric_family(MetricFamily("cka", cka_metrics, needs="runnable", check=_check_cka))
