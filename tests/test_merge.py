"""Merge methods: the registry, hand-computed results on tiny tensors, and a conformance suite."""

from __future__ import annotations

import math

import pytest
import torch

from analysis.merging import (
    TensorContext,
    get_method,
    list_methods,
    merge_method,
    merge_state_dicts,
    unregister,
)
from analysis.merging.registry import Fraction, PerModel
from analysis.merging.sparsify import magnitude_outliers, random_keep, top_k_mask
from zoo.errors import ConfigError, DuplicateError, MismatchError

T = torch.tensor
BASE = T([0.0, 0.0, 0.0, 0.0])
M3 = [T([1.0, -2.0, 3.0, 0.0]), T([-1.0, 1.0, 2.0, 5.0]), T([2.0, -3.0, -1.0, 1.0])]


# ------------------------------------------------------------------------------------- registry
def test_registry_lists_every_method_of_the_brief():
    names = set(list_methods())
    assert {"linear", "metric_weighted", "slerp", "task_arithmetic", "ties", "dare_ties", "dare_linear",
            "breadcrumbs", "breadcrumbs_ties", "model_stock", "opcm"} <= names  # fmt: skip


def test_unknown_method_lists_valid_names():
    with pytest.raises(ConfigError, match="unknown merge method .*; valid merge methods: .*ties"):
        get_method("tiez")


def test_duplicate_registration_refused():
    with pytest.raises(DuplicateError):

        @merge_method("ties")
        def ties(tensors, base, *, x: float = 1.0):  # pragma: no cover
            return tensors[0]


def test_custom_method_registers_with_typed_params():
    @merge_method("test_first", per_model=("w",))
    def first(tensors, base, *, w: list[float] = 1.0, flag: bool = False):  # type: ignore[assignment]
        return tensors[0] * (2 if flag else 1)

    try:
        m = get_method("test_first")
        assert [p.name for p in m.params] == ["w", "flag"]
        assert m.resolve(2, {"flag": "true"}) == {"w": [1.0, 1.0], "flag": True}
        assert torch.equal(m([T([1.0]), T([2.0])], flag=True), T([2.0]))
        with pytest.raises(ConfigError, match="unknown parameter"):
            m.resolve(2, {"nope": 1})
        with pytest.raises(ConfigError, match="must be true or false"):
            m.resolve(2, {"flag": 3})
    finally:
        unregister("test_first")


def test_per_model_marker_and_from_metrics_declaration():
    @merge_method("test_scaled", from_metrics={"score": "acc"})
    def scaled(tensors, base, *, share: PerModel[Fraction] = 1.0, score: PerModel[float] = 1.0):
        return sum(t * s for t, s in zip(tensors, share, strict=True))

    try:
        m = get_method("test_scaled")
        assert [(p.name, p.per_model, str(p.range)) for p in m.params] == [
            ("share", True, "(0, 1]"), ("score", True, "None")]  # fmt: skip
        assert m.from_metrics == {"score": "acc"}
        assert m.resolve(2, {"share": [0.5, 1.0]})["share"] == [0.5, 1.0]
        with pytest.raises(ConfigError, match=r"share.*\(0, 1\]"):
            m.resolve(2, {"share": 1.5})
    finally:
        unregister("test_scaled")
    with pytest.raises(TypeError, match="not per-model"):
        @merge_method("test_bad_from", from_metrics={"flag": "acc"})
        def bad(tensors, base, *, flag: bool = False):  # pragma: no cover
            return tensors[0]
    assert "test_bad_from" not in list_methods()


def test_task_arithmetic_family_rows_declare_their_parameters():
    from analysis.merging.methods import TASK_ARITHMETIC_FAMILY

    names = {v.name for v in TASK_ARITHMETIC_FAMILY}
    assert names == {"task_arithmetic", "ties", "dare_linear", "dare_ties", "breadcrumbs", "breadcrumbs_ties"}
    params = {n: [p.name for p in get_method(n).params] for n in names}
    assert params["task_arithmetic"] == ["weight", "normalize", "lambda", "int8_mask"]
    assert params["ties"] == ["weight", "density", "normalize", "rescale", "rescale_norm", "lambda", "int8_mask"]
    assert params["breadcrumbs"][:3] == ["weight", "density", "gamma"]
    assert get_method("ties").resolve(1, {})["normalize"] is True and get_method("dare_ties").resolve(1, {})["rescale"]
    assert get_method("breadcrumbs").resolve(1, {})["density"] == [0.9]
    assert get_method("ties").chunking == "magnitude" and get_method("dare_linear").chunking == "elementwise"


def test_resolve_per_model_and_global_parameters():
    m = get_method("ties")
    r = m.resolve(2, {"density": 0.3, "lambda": 2}, [{"weight": 0.5}, {"density": 0.9}])
    assert r["weight"] == [0.5, 1.0] and r["density"] == [0.3, 0.9] and r["lambda"] == 2.0 and r["normalize"] is True
    with pytest.raises(ConfigError, match="global parameter"):
        m.resolve(2, {}, [{"lambda": 2}, {}])
    with pytest.raises(ConfigError, match="must be a number"):
        m.resolve(2, {"density": "lots"})


# ---------------------------------------------------------------------------- hand-computed cases
def test_ties_three_tiny_vectors_by_hand():
    # trim to top 2 of 4 by magnitude: [0,-2,3,0], [0,0,2,5], [2,-3,0,0]; summed signs: + - + +;
    # disjoint means of agreeing entries: 2, (-2-3)/2, (3+2)/2, 5
    out = get_method("ties")(M3, BASE, density=0.5)
    assert torch.allclose(out, T([2.0, -2.5, 2.5, 5.0]))
    # base 1: deltas [0,-3,2,-1] [-2,0,1,4] [1,-4,-2,0] -> trimmed [0,-3,2,0] [-2,0,0,4] [0,-4,-2,0];
    # sums -2,-7,0,4 elect - - + + (a zero sum elects +); means -2, -3.5, 2, 4; times lambda 2
    out = get_method("ties")(M3, BASE + 1, density=0.5, **{"lambda": 2.0})
    assert torch.allclose(out, 1 + 2 * T([-2.0, -3.5, 2.0, 4.0]))


def test_ties_without_normalize_sums_agreeing_entries():
    out = get_method("ties")(M3, BASE, density=0.5, normalize=False)
    assert torch.allclose(out, T([2.0, -5.0, 5.0, 5.0]))


def test_task_arithmetic_by_hand():
    out = get_method("task_arithmetic")(M3, BASE + 1, weight=[1.0, 0.5, 2.0], **{"lambda": 0.5})
    want = 1 + 0.5 * ((M3[0] - 1) + 0.5 * (M3[1] - 1) + 2 * (M3[2] - 1))
    assert torch.allclose(out, want)


def test_dare_density_one_is_task_arithmetic():
    ta = get_method("task_arithmetic")(M3, BASE + 0.5, weight=[1.0, 0.3, 0.7])
    for name in ("dare_linear",):
        assert torch.allclose(get_method(name)(M3, BASE + 0.5, weight=[1.0, 0.3, 0.7], density=1.0), ta)


def test_dare_drops_with_probability_and_rescales():
    g = torch.Generator().manual_seed(1)
    base = torch.zeros(200_000)
    x = [torch.randn(200_000, generator=g)]
    out = get_method("dare_linear")(x, base, density=0.25, ctx=TensorContext("w", 3))
    kept = out != 0
    assert abs(kept.float().mean().item() - 0.25) < 0.01
    assert torch.allclose(out[kept], x[0][kept] / 0.25)
    again = get_method("dare_linear")(x, base, density=0.25, ctx=TensorContext("w", 3))
    assert torch.equal(out, again)  # seeded
    other = get_method("dare_linear")(x, base, density=0.25, ctx=TensorContext("w", 4))
    assert not torch.equal(out, other)


def test_random_keep_is_chunk_invariant():
    whole = random_keep(3_000_000, 0.5, seed=9)
    parts = torch.cat([random_keep(1_048_576, 0.5, 9, 0), random_keep(3_000_000 - 1_048_576, 0.5, 9, 1_048_576)])
    assert torch.equal(whole, parts)


def test_breadcrumbs_masks_outliers_and_small_by_hand():
    # n=4, density .5 -> keep 2, gamma .25 -> drop the largest 1, so drop the smallest 1
    d = T([1.0, -2.0, 3.0, 0.5])
    assert torch.equal(magnitude_outliers(d, 0.5, 0.25), T([1.0, -2.0, 0.0, 0.0]))
    out = get_method("breadcrumbs")(M3, BASE, density=0.5, gamma=0.25)
    assert torch.allclose(out, T([3.0, -1.0, 2.0, 1.0]))


def test_top_k_mask_is_exact_with_ties():
    x = T([1.0, 1.0, 1.0, 1.0, 0.0])
    assert top_k_mask(x, 2).tolist() == [True, True, False, False, False]
    assert top_k_mask(x, 2, ties="last").tolist() == [False, False, True, True, False]
    big = torch.randn(2_000_003, generator=torch.Generator().manual_seed(0)).abs()
    m = top_k_mask(big, 700_000)
    assert int(m.sum()) == 700_000 and big[m].min() >= big[~m].max()


def test_slerp_endpoints_and_orthogonal_midpoint():
    a, b = T([1.0, 0.0]), T([0.0, 1.0])
    s = get_method("slerp")
    assert torch.allclose(s([b], a, t=0.0), a) and torch.allclose(s([b], a, t=1.0), b)
    h = math.sqrt(0.5)
    assert torch.allclose(s([b], a, t=0.5), T([h, h]))
    assert torch.allclose(s([a, b], None, t=0.5), T([h, h]))  # two models, no base


def test_slerp_falls_back_to_lerp_for_colinear():
    a = T([1.0, 2.0, 3.0])
    assert torch.allclose(get_method("slerp")([2 * a], a, t=0.25), 1.25 * a)


def test_slerp_needs_exactly_two():
    with pytest.raises(ConfigError, match="exactly"):
        get_method("slerp")(M3, BASE)


def test_linear_soup_and_weights():
    lin = get_method("linear")
    assert torch.allclose(lin(M3), sum(M3) / 3)
    assert torch.allclose(lin(M3[:2], weight=[3.0, 1.0]), (3 * M3[0] + M3[1]) / 4)
    assert torch.allclose(lin(M3[:2], weight=[3.0, 1.0], normalize=False), 3 * M3[0] + M3[1])
    with pytest.raises(ConfigError, match="sum to zero"):
        lin(M3[:2], weight=[1.0, -1.0])


def test_metric_weighted_softmax_and_inverse():
    mw = get_method("metric_weighted")
    w = torch.softmax(-T([0.5, 1.5]) / 0.5, 0)
    assert torch.allclose(mw(M3[:2], loss=[0.5, 1.5], temperature=0.5), w[0] * M3[0] + w[1] * M3[1])
    assert torch.allclose(mw(M3[:2], loss=[1.0, 3.0], scheme="inverse"), 0.75 * M3[0] + 0.25 * M3[1])
    with pytest.raises(ConfigError, match="positive"):
        mw(M3[:2], loss=[0.0, 1.0], scheme="inverse")


def test_model_stock_ratio_from_angle():
    base = torch.zeros(2)
    d1, d2 = T([1.0, 0.0]), T([0.0, 1.0])  # orthogonal: cos 0 -> t 0 -> the base
    assert torch.allclose(get_method("model_stock")([d1, d2], base), base)
    d2 = T([math.cos(math.pi / 3), math.sin(math.pi / 3)])  # cos 1/2 -> t = 2*.5/(1+.5) = 2/3
    out = get_method("model_stock")([d1, d2], base)
    assert torch.allclose(out, (2 / 3) * (d1 + d2) / 2)


def test_opcm_projects_new_task_off_previous_subspace():
    base = torch.zeros(2, 2)
    t1 = T([[3.0, 0.0], [0.0, 0.0]])  # merged so far: rank one along e1 e1^T
    t2 = T([[1.0, 2.0], [0.0, 4.0]])  # its (0,0) component is projected out, the rest kept
    out = get_method("opcm")([t1, t2], base, alpha=0.5)
    total = t1 + T([[0.0, 2.0], [0.0, 0.0]])  # the diagonal (1,1) entry is dropped too (reference impl.)
    avg = (t1.norm() + t2.norm()) / 2
    assert torch.allclose(out, total * avg / total.norm(), atol=1e-6)


# ------------------------------------------------------------------------------ conformance suite
def _inputs(method, k=3, shape=(3, 5)):
    g = torch.Generator().manual_seed(0)
    model = torch.randn(shape, generator=g)
    base = torch.randn(shape, generator=g)
    k = max(method.min_models, min(k, method.max_models or k))
    return model, base, k


def _params(method, k):
    return {"loss": [0.3] * k} if method.name == "metric_weighted" else {}


@pytest.mark.parametrize("name", list_methods())
def test_conformance_copies_of_base_give_the_model(name):
    """Every method: k copies of a model merged onto itself as base return that model."""
    m = get_method(name)
    model, _, k = _inputs(m)
    k = 1 if m.name == "slerp" else k  # slerp: a base and one model
    out = m([model.clone() for _ in range(k)], model.clone() if m.base != "ignored" else None, **_params(m, k))
    assert out.shape == model.shape and out.dtype == model.dtype
    assert torch.allclose(out, model, atol=1e-6)


@pytest.mark.parametrize("name", [n for n in list_methods() if get_method(n).copies_give_model])
def test_conformance_identical_copies_give_the_model(name):
    """Where mathematically true, k identical copies (any base) merge to that model."""
    m = get_method(name)
    model, base, k = _inputs(m)
    if m.name == "slerp":
        out = m([model.clone(), model.clone()], None)
    else:
        out = m([model.clone() for _ in range(k)], base if m.base != "ignored" else None, **_params(m, k))
    assert torch.allclose(out, model, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("name", list_methods())
def test_conformance_dtype_and_shape_preserved_inputs_untouched(name, dtype):
    m = get_method(name)
    model, base, k = _inputs(m)
    g = torch.Generator().manual_seed(1)
    xs = [(model + 0.1 * torch.randn(model.shape, generator=g)).to(dtype) for _ in range(k)]
    if m.name == "slerp":
        xs = xs[:1]
    copies = [x.clone() for x in xs]
    b = base.to(dtype) if m.base != "ignored" else None
    b_copy = b.clone() if b is not None else None
    out = m(xs, b, **_params(m, len(xs)))
    assert out.dtype == dtype and out.shape == model.shape
    assert torch.isfinite(out.float()).all()
    assert all(torch.equal(x, c) for x, c in zip(xs, copies, strict=True))
    if b is not None:
        assert torch.equal(b, b_copy)


@pytest.mark.parametrize("name", list_methods())
def test_conformance_shape_mismatch_raises(name):
    m = get_method(name)
    model, base, k = _inputs(m)
    xs = [model] * max(k - 1, 1) + [torch.zeros(2, 2)]
    with pytest.raises(MismatchError):
        m(xs, base if m.base != "ignored" else None, **_params(m, len(xs)))
    if m.base != "ignored":
        with pytest.raises(MismatchError, match="base"):
            m([model] * (1 if m.name == "slerp" else k), torch.zeros(7), **_params(m, k))


@pytest.mark.parametrize("name", list_methods())
def test_conformance_missing_tensor_raises(name):
    m = get_method(name)
    model, base, k = _inputs(m)
    n = 1 if m.name == "slerp" else k
    sd = [{"a": model.clone(), "b": model.clone()} for _ in range(n)]
    del sd[-1]["b"]
    b = {"a": base, "b": base} if m.base != "ignored" else None
    with pytest.raises(MismatchError, match="lacks"):
        merge_state_dicts(name, sd, b, **_params(m, n))


def test_integer_tensors_pass_through():
    steps = [T([5]), T([7])]
    assert torch.equal(get_method("linear")(steps), T([5]))
    assert torch.equal(get_method("ties")(steps, T([3]), density=0.5), T([3]))


def test_merge_state_dicts_in_memory():
    sds = [{"w": torch.full((2, 2), float(i)), "n": T([i])} for i in range(3)]
    out = merge_state_dicts("linear", sds)
    assert torch.allclose(out["w"], torch.ones(2, 2)) and torch.equal(out["n"], T([0]))


# ------------------------------------------------------------------------- streamed selections
def _old_selection(a: torch.Tensor, method: str, density: float, gamma: float = 0.01):
    """The reference: cuts from ``top_cut`` (kthvalue) on the whole tensor."""
    from analysis.merging.sparsify import Cut, Selection, keep_count, top_cut

    n = a.numel()
    if method == "magnitude":
        return Selection(keep=top_cut(a, keep_count(density, n)))
    keep = int(density * n)
    bottom = max(0, n - keep - int(gamma * n))
    small = top_cut(-a, bottom)
    small = Cut(-small.thr, small.quota, small.ties, small.first, small.everything, small.nothing, lower=True)
    return Selection(drop_small=small, drop_large=top_cut(a, n - bottom - keep, first=False))


@pytest.mark.parametrize("chunk", [7, 100, 10_000])
def test_radix_selection_from_chunks_equals_whole_tensor_cut(chunk):
    """The two-pass radix select over chunks gives the exact cuts (values, ties, quotas) of a sort."""
    from analysis.merging.sparsify import SelectionBuilder

    g = torch.Generator().manual_seed(chunk)
    for trial in range(6):
        n = int(torch.randint(1, 700, (1,), generator=g))
        a = (torch.randn(n, generator=g) * 0.01).abs()
        if trial % 2:
            a = torch.round(a * 300) / 300  # many ties at every threshold
        a[: n // 4] = 0.0
        for method, density, gamma in [("magnitude", 0.3, 0.0), ("magnitude", 0.999, 0.0), ("magnitude_outliers", 0.6, 0.1),
                                       ("magnitude_outliers", 0.95, 0.2), ("magnitude_outliers", 0.2, 0.0)]:  # fmt: skip
            b = SelectionBuilder(method, density, gamma, n)
            passes = 0
            while b.passes_left:
                for i in range(0, n, chunk):
                    b.add(a[i : i + chunk])
                b.next_pass()
                passes += 1
            assert passes <= 2
            got, want = b.selection(), _old_selection(a, method, density, gamma)
            assert got == want, (method, density, gamma, n)
            masks = [got.mask(a[i : i + chunk]) for i in range(0, n, chunk)]
            assert torch.equal(torch.cat(masks), want.mask(a))


def test_radix_select_stats_by_hand():
    from analysis.merging.sparsify import RadixSelect

    a = T([0.5, 2.0, 0.0, 2.0, 1.0, 0.5, 3.0])
    r = RadixSelect(7, [1, 2, 4, 7])
    while r.passes_left:
        r.add(a[:3])
        r.add(a[3:])
        r.next_pass()
    assert r.stat(1) == (3.0, 0, 1) and r.stat(2) == (2.0, 1, 2) and r.stat(4) == (1.0, 3, 1) and r.stat(7) == (0.0, 6, 1)
    top2 = r.largest(2)  # 3.0 and one of the two 2.0s: the first by position
    assert (top2.thr, top2.quota, top2.ties) == (2.0, 1, 2)
    low4 = r.smallest(4)  # 0.0, 0.5, 0.5, 1.0
    assert (low4.thr, low4.quota, low4.ties, low4.lower) == (1.0, 1, 1, True)
    assert torch.equal(top2.mask(a)[0], T([0, 1, 0, 0, 0, 0, 1]).bool())
    assert torch.equal(low4.mask(a)[0], T([1, 0, 1, 0, 1, 1, 0]).bool())


def test_inplace_sparsification_equals_the_functional_one():
    from analysis.merging.sparsify import sparsify

    g = torch.Generator().manual_seed(3)
    d = torch.randn(5000, generator=g)
    for method, kw in [("magnitude", {"rescale": "l1"}), ("magnitude", {}), ("random", {"rescale": "density", "seed": 4}),
                       ("random", {"rescale": "l2", "seed": 4}), ("magnitude_outliers", {"gamma": 0.05})]:  # fmt: skip
        want = sparsify(d, method, 0.4, **kw)
        scratch = d.clone()
        got = sparsify(scratch, method, 0.4, inplace=True, **kw)
        assert got.data_ptr() == scratch.data_ptr() and torch.equal(got, want), method
    assert torch.equal(sparsify(d, "random", 0.0, inplace=False), torch.zeros_like(d))


def test_slerp_matches_the_mergekit_formula_in_float64():
    """Angle of the normalised vectors, interpolation of the original ones (not of the unit vectors)."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(300, generator=g) * 3
    b = a + torch.randn(300, generator=g)
    a64, b64 = a.double(), b.double()
    dot = float((a64 / a64.norm()) @ (b64 / b64.norm()))
    th = math.acos(dot)
    want = (math.sin(0.3 * th) * b64 + math.sin(0.7 * th) * a64) / math.sin(th)
    got = get_method("slerp")([b], a, t=0.3)
    assert torch.allclose(got.double(), want, rtol=1e-6, atol=1e-6)
    z = torch.zeros(4)  # a zero vector counts as norm 1 (no division by zero), as in mergekit
    assert torch.allclose(get_method("slerp")([T([1.0, 2, 3, 4])], z, t=0.5), T([1.0, 2, 3, 4]) * math.sin(math.pi / 4))
