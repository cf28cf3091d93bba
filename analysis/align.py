"""Re-basin alignment: permute a model's hidden neurons to match a reference model (Git Re-Basin).

Two aligners, registered by name (:func:`get_aligner`, :func:`aligners`):

* ``"weight_matching"``: coordinate descent over the spec's permutations, in a seeded random order;
  each step solves one linear assignment (``scipy.optimize.linear_sum_assignment``) maximising the
  summed inner products of every tensor that permutation touches, the other permutations held
  fixed; stops when a full sweep improves nothing (or after ``max_iter`` sweeps). Needs weights only.
* ``"activation_matching"``: runs both models on a data batch, correlates each hidden layer's
  activations unit by unit, and solves one assignment per permutation. Needs data; for the built-in
  families (mlp, siren, cnn, resnet).

Both work on a whole stacked population at once (:func:`align_population`): cost matrices for all N
models are one batched matmul per tensor; only the assignments run per model.
:func:`align_and_store` and :func:`canonicalize` write aligned models back to the zoo with lineage.

    from analysis.align import align, align_and_store
    res = align(state_b, state_a, config=cfg)            # AlignResult; res.model(0) is b aligned to a
    rec = align_and_store(zoo, model_id, reference_id)   # stored in "<pop>/aligned-to-<ref>", evaluated
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

from kernels import batched as K
from weightspace.spec import (
    PermutationSpec,
    apply_permutation,
    identity_permutation,
    permute_tensor,
    spec_for,
)
from zoo.errors import ConfigError, MismatchError, NotFoundError
from zoo.models.architectures import config_hash, input_shape, is_classifier, normalize_config
from zoo.registry import Registry

__all__ = [
    "AlignResult",
    "Aligner",
    "register_aligner",
    "get_aligner",
    "aligners",
    "weight_matching",
    "activation_matching",
    "hidden_activations",
    "align",
    "align_population",
    "align_shard",
    "align_and_store",
    "canonicalize",
    "l2_distance",
]

#: Families whose models :func:`align_and_store` evaluates (classifiers the zoo can evaluate).


# ----------------------------------------------------------------------------------------------
# Results and the registry


@dataclass
class AlignResult:
    """The outcome of aligning N models to one reference.

    Shapes:
        perms: ``perm -> [N, n]`` int64 (model ``k``'s new neuron ``i`` is its old neuron ``perms[p][k, i]``);
        aligned: ``name -> [N, *shape]``; distance_before, distance_after: ``[N]`` L2 distances to the
        reference over all floating tensors; iterations: ``[N]`` sweeps run (1 for activation matching).
    """

    method: str
    perms: dict[str, Tensor]
    aligned: dict[str, Tensor]
    distance_before: Tensor
    distance_after: Tensor
    iterations: Tensor
    seed: int = 0
    seconds: float = 0.0
    spec: PermutationSpec | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return int(self.distance_before.shape[0])

    def model(self, i: int = 0) -> dict[str, Tensor]:
        """Model ``i``'s aligned state dict."""
        return {k: v[i] for k, v in self.aligned.items()}

    def perm(self, i: int = 0) -> dict[str, Tensor]:
        """Model ``i``'s permutations (``perm -> [n]``)."""
        return {k: v[i] for k, v in self.perms.items()}

    def params(self, i: int = 0) -> dict[str, Any]:
        """The JSON-able parameters recorded on the lineage edge of model ``i``."""
        return {
            "method": self.method,
            "seed": self.seed,
            "iterations": int(self.iterations[i]),
            "distance_before": float(self.distance_before[i]),
            "distance_after": float(self.distance_after[i]),
        }


class Aligner(Protocol):
    """``aligner(spec, reference, population, *, config, data, seed, max_iter) -> (perms [N, n], iterations [N])``."""

    def __call__(
        self,
        spec: PermutationSpec,
        reference: Mapping[str, Tensor],
        population: Mapping[str, Tensor],
        *,
        config: Mapping[str, Any] | None,
        data: Tensor | None,
        seed: int,
        max_iter: int,
    ) -> tuple[dict[str, Tensor], Tensor]: ...


#: every aligner by name (plug-ins through the ``weightzoo.alignment_methods`` entry-point group)
ALIGNERS: Registry[Aligner] = Registry("alignment method", entry_points="weightzoo.alignment_methods")


def register_aligner(name: str) -> Callable[[Aligner], Aligner]:
    """Register an aligner under ``name`` (refuses a name already taken)."""
    ALIGNERS.check_free(name)
    return ALIGNERS.register(name)


def aligners() -> list[str]:
    """The registered aligners' names."""
    return ALIGNERS.names()


def get_aligner(name: str) -> Aligner:
    """The aligner called ``name``; :class:`ConfigError` listing the valid names otherwise."""
    return ALIGNERS.get(name)


# ----------------------------------------------------------------------------------------------
# Shared maths


def _floats(state: Mapping[str, Tensor]) -> list[str]:
    return [k for k, v in state.items() if v.is_floating_point()]


def l2_distance(reference: Mapping[str, Tensor], population: Mapping[str, Tensor]) -> Tensor:
    """L2 distance of each stacked model to the reference, over all floating tensors.

    Shapes:
        reference: ``name -> [*shape]``; population: ``name -> [N, *shape]``; returns ``[N]`` float64.
    """
    total = None
    for k in _floats(population):
        d = (population[k].double() - reference[k].double().unsqueeze(0)).flatten(1).pow(2).sum(1)
        total = d if total is None else total + d
    if total is None:
        raise MismatchError("no floating-point tensors to compare")
    return total.sqrt()


def _assign(cost: Tensor, old: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor | None]:
    """Per-model maximum-weight assignments.

    Shapes:
        cost: ``[N, n, n]``; old: ``[N, n]`` or None. Returns ``(perm [N, n], objective [N],
        objective of old [N] or None)`` (objectives in float64).
    """
    # imported here, not at module import: every `weightzoo` command loads this module's CLI plug-in
    from scipy.optimize import linear_sum_assignment

    c = cost.detach().numpy().astype(np.float64, copy=False)
    # minimise -c after subtracting row then column minima (Jonker-Volgenant's reduction): every
    # assignment's objective moves by the same constant, so the optimum is the same, and scipy's
    # shortest-augmenting-path solver starts closer to it (measured ~20% faster on trained MLPs)
    m = -c
    m = m - m.min(axis=2, keepdims=True)
    m = m - m.min(axis=1, keepdims=True)
    perms = np.empty(c.shape[:2], dtype=np.int64)
    for k in range(c.shape[0]):
        _, perms[k] = linear_sum_assignment(m[k])
    new_obj = torch.from_numpy(np.take_along_axis(c, perms[:, :, None], 2)[:, :, 0].sum(1))
    old_obj = None if old is None else torch.from_numpy(np.take_along_axis(c, old.numpy()[:, :, None], 2)[:, :, 0].sum(1))
    return torch.from_numpy(perms), new_obj, old_obj


# ----------------------------------------------------------------------------------------------
# Weight matching


def _weight_cost(
    spec: PermutationSpec,
    p: str,
    n: int,
    reference: Mapping[str, Tensor],
    population: Mapping[str, Tensor],
    perms: Mapping[str, Tensor],
) -> Tensor:
    """``C[k, i, j] = sum over tensors touching p of <ref neuron i, model k's neuron j>`` with every
    other permutation of model ``k`` applied. Shapes: returns ``[N, n, n]``."""
    n_models = next(iter(population.values())).shape[0]
    cost = torch.zeros(n_models, n, n)
    for name, axis in spec.perm_to_axes[p]:
        wa = reference[name]
        if not wa.is_floating_point():
            continue
        wb = permute_tensor(population[name], spec.axes[name], perms, batched=True, skip_axis=axis)
        wa = wa.float().movedim(axis, 0).reshape(n, -1)  # [n, d]
        wb = wb.float().movedim(axis + 1, 1).reshape(n_models, n, -1)  # [N, n, d]
        cost += torch.matmul(wa, wb.transpose(1, 2))
    return cost


@register_aligner("weight_matching")
def weight_matching(
    spec: PermutationSpec,
    reference: Mapping[str, Tensor],
    population: Mapping[str, Tensor],
    *,
    config: Mapping[str, Any] | None = None,
    data: Tensor | None = None,
    seed: int = 0,
    max_iter: int = 100,
) -> tuple[dict[str, Tensor], Tensor]:
    """Git Re-Basin weight matching for N models at once (see the module docstring).

    Every sweep visits the permutations in one random order drawn from ``seed`` (the same order for
    all models, so a model gets the same result aligned alone or in a population, up to float
    rounding). A model stops when a sweep improves none of its assignments.

    Shapes:
        reference: ``name -> [*shape]``; population: ``name -> [N, *shape]``. Returns
        ``(perm -> [N, n], iterations [N])``.
    """
    sizes = spec.sizes(reference)
    n_models = next(iter(population.values())).shape[0]
    perms = identity_permutation(spec, sizes, batch=n_models)
    names = list(sizes)
    p2a = spec.perm_to_axes
    touching = {p: sorted({name for name, _ in p2a[p]}) for p in names}
    # a permutation's cost depends on the other permutations of the tensors it touches (and on
    # itself when it acts on two axes of one tensor): re-solve it only when one of those changed
    depends = {p: {q for name in touching[p] for q in spec.axes[name] if q is not None and (q != p or spec.axes[name].count(p) > 1)}
               for p in names}  # fmt: skip
    affects = {p: {q for q in names if p in depends[q]} for p in names}
    dirty = {p: torch.ones(n_models, dtype=torch.bool) for p in names}
    gen = torch.Generator().manual_seed(int(seed))
    active = torch.ones(n_models, dtype=torch.bool)
    iters = torch.zeros(n_models, dtype=torch.long)
    for _ in range(max_iter):
        if not active.any():
            break
        progress = torch.zeros(n_models, dtype=torch.bool)
        for j in torch.randperm(len(names), generator=gen).tolist():
            p = names[j]
            todo = active & dirty[p]
            if not todo.any():
                continue  # nothing it depends on changed: the same assignment would come out
            if bool(todo.all()):
                idx, sub, sub_perms = None, population, perms
            else:
                idx = todo.nonzero().squeeze(1)
                sub = {name: population[name][idx] for name in touching[p]}
                sub_perms = {q: perms[q][idx] for q in depends[p] | {p}}
            cost = _weight_cost(spec, p, sizes[p], reference, sub, sub_perms)
            old = sub_perms[p]
            new, new_obj, old_obj = _assign(cost, old)
            improved = new_obj > old_obj + 1e-12 * new_obj.abs().clamp_min(1.0)
            changed = (new != old).any(1)
            sel = torch.arange(n_models) if idx is None else idx
            progress[sel] |= improved
            perms[p][sel] = new
            dirty[p][sel] = False
            for q in affects[p]:
                dirty[q][sel[changed]] = True
        iters[active] += 1
        active &= progress
    return perms, iters


# ----------------------------------------------------------------------------------------------
# Activation matching


def _per_model_channels(h: Tensor, n_models: int) -> Tensor:
    """Grouped conv activations ``[B, N*C, H, W]`` -> samples ``[N, B*H*W, C]``."""
    b, nc, hh, ww = h.shape
    return h.view(b, n_models, nc // n_models, hh, ww).permute(1, 0, 3, 4, 2).reshape(n_models, -1, nc // n_models)


def hidden_activations(config: Mapping[str, Any], params: Mapping[str, Tensor], x: Tensor) -> dict[str, Tensor]:
    """Post-activation hidden features of a stacked population, keyed by the spec's permutation names.

    For a residual stream (resnet ``stages.{i}``) the samples of every point on the stream (stem or
    block outputs) are concatenated. Conv features count each position of each image as a sample.

    Shapes:
        params: ``name -> [N, *shape]``; x: ``[B, *in]``. Returns ``perm -> [N, S, n]``.
    """
    from zoo.build.evaluate import functional_forward

    cfg = normalize_config(config)
    n = K.population_size(params)
    x = x.float()
    if len(input_shape(cfg)) == 1:
        x = x.reshape(x.shape[0], -1)
    taps: dict[str, list[Tensor]] = {}
    with torch.no_grad():
        try:
            functional_forward(cfg, params, x, taps=taps)
        except ConfigError as e:
            raise ConfigError(f"activation matching needs a batched forward ({e}); use weight_matching") from None
    # the kernels' layouts -> samples [N, S, n]: dense [N, n, B] is transposed, grouped convs are split per model
    return {k: torch.cat([t.transpose(1, 2) if t.dim() == 3 else _per_model_channels(t, n) for t in v], dim=1)
            for k, v in taps.items()}  # fmt: skip


def _standardize(a: Tensor) -> Tensor:
    a = a.double()
    a = a - a.mean(dim=-2, keepdim=True)
    return a / (a.pow(2).mean(dim=-2, keepdim=True).sqrt() + 1e-8)


@register_aligner("activation_matching")
def activation_matching(
    spec: PermutationSpec,
    reference: Mapping[str, Tensor],
    population: Mapping[str, Tensor],
    *,
    config: Mapping[str, Any] | None = None,
    data: Tensor | None = None,
    seed: int = 0,
    max_iter: int = 1,
) -> tuple[dict[str, Tensor], Tensor]:
    """Match hidden units by the correlation of their activations on ``data`` (one assignment per perm).

    Each model's activations are those of the model as it is (a permutation only relabels units), so
    the permutations are independent and one pass suffices; ``seed`` and ``max_iter`` are unused.
    Dead units (constant activations) correlate 0 with everything and are matched arbitrarily.

    Shapes:
        reference: ``name -> [*shape]``; population: ``name -> [N, *shape]``; data: ``[B, *in]``.
    """
    if config is None or data is None:
        raise ConfigError("activation matching needs the architecture config and a data batch (config=..., data=X)")
    n_models = next(iter(population.values())).shape[0]
    ref_acts = hidden_activations(config, {k: v.unsqueeze(0) for k, v in reference.items()}, data)
    # chunk models so one chunk's activations stay around 256 MB
    per_model = sum(a[0].numel() for a in ref_acts.values()) * 8
    chunk = max(1, (256 << 20) // max(per_model, 1))
    sizes = spec.sizes(reference)
    missing = set(sizes) - set(ref_acts)
    if missing:
        raise ConfigError(f"no activations for permutation(s) {sorted(missing)}; use weight_matching for this spec")
    perms: dict[str, list[Tensor]] = {p: [] for p in sizes}
    za = {p: _standardize(ref_acts[p][0]) for p in sizes}
    for s in range(0, n_models, chunk):
        acts = hidden_activations(config, {k: v[s : s + chunk] for k, v in population.items()}, data)
        for p in sizes:
            zb = _standardize(acts[p])  # [n_chunk, S, n]
            corr = torch.matmul(za[p].T, zb) / zb.shape[1]  # [n_chunk, n, n]
            perms[p].append(_assign(corr)[0])
    return {p: torch.cat(v) for p, v in perms.items()}, torch.ones(n_models, dtype=torch.long)


# ----------------------------------------------------------------------------------------------
# Front doors


def _resolve_config(config: Any, *candidates: Any) -> dict[str, Any] | None:
    if config is not None:
        return normalize_config(config)
    for c in candidates:
        cfg = getattr(c, "arch_config", None) if not isinstance(c, Mapping) else None
        if cfg is None and hasattr(c, "config") and not isinstance(c, Mapping):
            try:
                cfg = c.config
            except Exception:  # a query without a population
                cfg = None
        if isinstance(cfg, Mapping):
            return normalize_config(cfg)
    return None


def _resolve_reference(reference: Any, zoo: Any) -> tuple[dict[str, Tensor], Any]:
    """A reference given as a state dict, a ModelRecord or a model id/name (with a zoo)."""
    if isinstance(reference, Mapping):
        return dict(reference), None
    if hasattr(reference, "state_dict") and hasattr(reference, "arch_config"):
        return reference.state_dict(), reference
    if zoo is None:
        raise ConfigError("give the reference as a state dict (or a model id together with a zoo population)")
    rec = zoo.get(reference)
    return rec.state_dict(), rec


def align_population(
    population: Any,
    reference: Any,
    *,
    method: str = "weight_matching",
    spec: PermutationSpec | None = None,
    config: Mapping[str, Any] | None = None,
    data: Tensor | None = None,
    seed: int = 0,
    max_iter: int | None = None,
    workers: int = 1,
    executor: Any = None,
    address: str | None = None,
    timeout: float = 30.0,
) -> AlignResult:
    """Align every model of a population to one reference (canonicalisation).

    Args:
        population: a stacked population ``{name: [N, ...]}``, or a zoo query/:class:`~zoo.Population`.
        reference: a state dict, a :class:`~zoo.ModelRecord`, or (with a zoo query) a model id/name.
        method: a registered aligner (:func:`aligners`): ``"weight_matching"`` (default) or
            ``"activation_matching"`` (needs ``data``).
        spec: the permutation spec; default ``spec_for(config)``.
        config: the architecture config; default the population's or the reference record's.
        data: inputs for activation matching (``[B, *in]``, as the model takes them).
        seed: seeds weight matching's random order of permutations.
        max_iter: the most sweeps of weight matching (default 100).
        workers, executor, address, timeout: where the assignments run (:mod:`zoo.build.executors`):
            by default here; with ``workers > 1`` (a process pool), ``executor="ray"`` or a Ray ``address``
            the models are cut into ``workers`` shards aligned by :func:`align_shard`, which gets the
            reference, the shard's tensors and the spec. This process applies the permutations and
            measures the distances, so the result is the same on every executor (each model's assignment
            is its own; a test compares them exactly).
    """
    aligner = get_aligner(method)
    zoo = getattr(population, "zoo", None)
    ref_state, ref_rec = _resolve_reference(reference, zoo)
    cfg = _resolve_config(config, population, ref_rec)
    stacked = dict(population) if isinstance(population, Mapping) else population.stack()
    if not stacked:
        raise NotFoundError("the population to align is empty")
    if spec is None:
        if cfg is None:
            raise ConfigError("give the architecture config (config=...) or a permutation spec (spec=...)")
        spec = spec_for(cfg)
    spec.check(ref_state)
    ref_sizes = spec.sizes(ref_state)
    if any(v.dim() == 0 for v in stacked.values()) or spec.sizes(stacked) != ref_sizes or not _is_stacked(spec, stacked):
        raise MismatchError("the population must be stacked tensors [N, ...] of the reference's architecture")
    for k, v in stacked.items():
        if k in ref_state and tuple(v.shape[1:]) != tuple(ref_state[k].shape):
            raise MismatchError(f"tensor {k!r}: population has {tuple(v.shape[1:])}, reference {tuple(ref_state[k].shape)}")
    t0 = time.perf_counter()
    kwargs: dict[str, Any] = {"config": cfg, "data": data, "seed": int(seed)}
    if max_iter is not None:
        kwargs["max_iter"] = int(max_iter)
    from zoo.build.executors import executor_scope

    with executor_scope(executor, workers, address=address, timeout=timeout) as ex:
        if ex is None:
            perms, iters = aligner(spec, ref_state, stacked, **kwargs)
        else:
            perms, iters = _align_sharded(ex, method, spec, ref_state, stacked, kwargs)
    aligned = apply_permutation(spec, perms, stacked)
    seconds = time.perf_counter() - t0
    return AlignResult(
        method=method,
        perms=perms,
        aligned=aligned,
        distance_before=l2_distance(ref_state, stacked),
        distance_after=l2_distance(ref_state, aligned),
        iterations=iters,
        seed=int(seed),
        seconds=seconds,
        spec=spec,
    )


def align_shard(shared: tuple, population: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], Tensor]:
    """One shard of :func:`align_population` (an executor task, run in a worker): ``shared`` is
    ``(method, spec, reference, aligner keyword arguments)``; returns the shard's ``(perms, iterations)``.

    Shapes:
        population: ``name -> [n, *shape]``; returns ``(perm -> [n, size], [n])``.
    """
    from zoo.threads import torch_threads

    method, spec, reference, kwargs = shared
    with torch_threads(1):  # one thread per worker: the workers share the cores
        return get_aligner(method)(spec, reference, population, **kwargs)


def _align_sharded(ex: Any, method: str, spec: PermutationSpec, reference: Mapping[str, Tensor],
                   stacked: Mapping[str, Tensor], kwargs: dict[str, Any]) -> tuple[dict[str, Tensor], Tensor]:  # fmt: skip
    from zoo.build.executors import shard_bounds

    n = K.population_size(stacked)
    tasks = [({k: v[a:b].clone() for k, v in stacked.items()},) for a, b in shard_bounds(n, ex.workers)]
    parts = list(ex.map(align_shard, tasks, shared=(method, spec, dict(reference), kwargs)))
    return {p: torch.cat([part[0][p] for part in parts]) for p in parts[0][0]}, torch.cat([part[1] for part in parts])


def _is_stacked(spec: PermutationSpec, stacked: Mapping[str, Tensor]) -> bool:
    from weightspace.spec import is_batched

    return is_batched(spec, stacked)


def align(
    model: Mapping[str, Tensor],
    reference: Mapping[str, Tensor],
    *,
    method: str = "weight_matching",
    spec: PermutationSpec | None = None,
    config: Mapping[str, Any] | None = None,
    data: Tensor | None = None,
    seed: int = 0,
    max_iter: int | None = None,
) -> AlignResult:
    """Align one model's state dict to a reference's (an :class:`AlignResult` of N=1; ``.model()``)."""
    return align_population(
        {k: v.unsqueeze(0) for k, v in model.items()}, reference,
        method=method, spec=spec, config=config, data=data, seed=seed, max_iter=max_iter,
    )  # fmt: skip


# ----------------------------------------------------------------------------------------------
# Writing back to the zoo


def default_data(config: Mapping[str, Any], dataset: str = "digits", dataset_root: str | None = None, n: int = 1024) -> Tensor:
    """A batch of training inputs shaped for ``config`` (flattened for mlp), for activation matching."""
    from zoo.models.datasets import load_dataset

    cfg = normalize_config(config)
    ds = load_dataset(dataset, root=dataset_root)
    X = ds.X_train[:n]
    takes = input_shape(cfg)
    if len(takes) == 1:
        X = X.reshape(X.shape[0], -1)
    if tuple(X.shape[1:]) != takes:
        raise MismatchError(f"{dataset} inputs are {tuple(X.shape[1:])} but the model takes {takes}; pass data=")
    return X


def _population_name(rec: Any, ref: Any) -> str:
    return f"{rec.population}/aligned-to-{ref.id}" if rec.population else f"aligned-to-{ref.id}"


def check_same_arch(recs: Sequence[Any], ref: Any) -> dict[str, Any]:
    if ref.arch_config is None:
        raise ConfigError(f"reference model {ref.id} has no architecture config; it cannot be aligned")
    h = config_hash(ref.arch_config)
    for r in recs:
        if r.arch_config is None or config_hash(r.arch_config) != h:
            raise MismatchError(
                f"model {r.id} ({r.architecture}) and reference {ref.id} ({ref.architecture}) have different "
                "architectures; align models of one architecture"
            )
    return normalize_config(ref.arch_config)


def canonicalize(
    zoo: Any,
    models: Sequence[int | str] | int | str,
    reference: int | str,
    *,
    method: str = "weight_matching",
    population: str | None = None,
    seed: int = 0,
    max_iter: int | None = None,
    data: Tensor | None = None,
    dataset: str = "digits",
    dataset_root: str | None = None,
    evaluate: bool = True,
    workers: int = 1,
    executor: Any = None,
    address: str | None = None,
    timeout: float = 30.0,
) -> list[Any]:
    """Align many stored models (ids, or a population's name) to one reference and store them in one write.

    Each aligned model is added to ``population`` (default ``"<source population>/aligned-to-<ref>"``)
    with parents ``{model: "model", reference: "reference"}``, op ``"align.<method>"`` and params
    (method, seed, iterations, distance before/after, reference), and evaluated on ``dataset``
    (train/val/test) when it is a classifier (mlp, cnn, resnet). Returns the new records.

    ``workers``/``executor``/``address``/``timeout``: align in shards on a process pool or Ray
    (:func:`align_population`); the workers get tensors only, and this process writes every aligned model,
    its lineage and its metrics (evaluated here), in the models' order, so the zoo ends exactly as after
    an in-process run.
    """
    from zoo.build.executors import executor_scope

    if isinstance(models, int) or (isinstance(models, str) and models.isdigit()):
        ids: list[Any] = [models]
    elif isinstance(models, str):  # a population's name
        ids = zoo.population(models).ids()
    else:
        ids = list(models)
    if not ids:
        raise NotFoundError(f"no models to align in {models!r}")
    recs = [zoo.get(m) for m in ids]
    ref = zoo.get(reference)
    cfg = check_same_arch(recs, ref)
    if method == "activation_matching" and data is None:
        data = default_data(cfg, dataset, dataset_root)
    with executor_scope(executor, workers, address=address, timeout=timeout) as ex:  # fail before any work
        return _canonicalize(zoo, recs, ref, cfg, method, population, seed, max_iter, data, dataset, dataset_root,
                             evaluate, ex)  # fmt: skip


def _canonicalize(zoo: Any, recs: list[Any], ref: Any, cfg: dict[str, Any], method: str, population: str | None,
                  seed: int, max_iter: int | None, data: Tensor | None, dataset: str, dataset_root: str | None,
                  evaluate: bool, ex: Any) -> list[Any]:  # fmt: skip
    from zoo import NewModel

    res = align_population(zoo.stack([r.id for r in recs]), ref.state_dict(), method=method, config=cfg,
                           data=data, seed=seed, max_iter=max_iter, executor=ex)  # fmt: skip
    pops = {population or _population_name(r, ref) for r in recs}
    for p in sorted(pops):
        zoo.create_population(p, arch=cfg, exist_ok=True, description=f"models aligned to model {ref.id} by {method}")
    items = []
    for i, r in enumerate(recs):
        params = dict(res.params(i), reference=ref.id, model=r.id)
        items.append(NewModel(
            res.model(i), arch=cfg, population=population or _population_name(r, ref),
            parents={r.id: "model", ref.id: "reference"} if r.id != ref.id else {r.id: "model"},
            op=f"align.{method}", params=params, hparams=r.hparams(), run=r.run, step=r.step,
        ))  # fmt: skip
    out = zoo.add_many(items)
    if evaluate and is_classifier(cfg):
        # here, not in shards: a population's losses in shards of another size differ in the last bits
        zoo.evaluate([o.id for o in out], dataset=dataset, splits=("train", "val", "test"), dataset_root=dataset_root)
    return zoo.records([o.id for o in out])


def align_and_store(
    zoo: Any,
    model_id: int | str,
    reference_id: int | str,
    *,
    method: str = "weight_matching",
    population: str | None = None,
    seed: int = 0,
    max_iter: int | None = None,
    data: Tensor | None = None,
    dataset: str = "digits",
    dataset_root: str | None = None,
    evaluate: bool = True,
) -> Any:
    """Align a stored model to a stored reference and add the result to the zoo (see :func:`canonicalize`).

    Returns the new :class:`~zoo.ModelRecord`; its lineage edge's params hold the method, seed,
    iterations and L2 distance to the reference before and after.
    """
    return canonicalize(
        zoo, [model_id], reference_id, method=method, population=population, seed=seed, max_iter=max_iter,
        data=data, dataset=dataset, dataset_root=dataset_root, evaluate=evaluate,
    )[0]  # fmt: skip


def mixup_aligner(
    seed: int = 0,
) -> Callable[[Mapping[str, Tensor], Mapping[str, Tensor], PermutationSpec], dict[str, Tensor]]:
    """``align(population, reference, spec) -> aligned population`` by weight matching, for
    weight-space mixup (:mod:`weightspace.augment`). Registered as the ``weight_matching`` entry point
    of the ``weightzoo.aligners`` group, so weightspace can use it without importing analysis.

    Shapes:
        population: ``name -> [N, ...]`` stacked weights of any family ``spec`` describes;
        reference: ``name -> [...]``.
    """

    def align(population: Mapping[str, Tensor], reference: Mapping[str, Tensor], spec: PermutationSpec) -> dict[str, Tensor]:
        return align_population(dict(population), dict(reference), seed=seed, spec=spec).aligned

    return align
