"""Landscape metrics, algorithm by algorithm, against exact references: power-law fits (a plain loop of
Clauset et al.'s procedure, Pareto samples of known exponent), spectra (per-matrix SVDs), the Hessian
(torch.autograd.functional.hessian of models of a few hundred to a few thousand parameters) and linear CKA
(hand-computed values, invariances, permuted copies)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.autograd.functional import hessian

from analysis.landscape.cka import activations, linear_cka, model_cka, population_cka
from analysis.landscape.hessian import (
    hutchinson_trace,
    hvp,
    layer_groups,
    population_loss,
    sharpness,
    split_params,
    top_eigenvalue,
)
from analysis.landscape.powerlaw import STATUS, fit_power_law
from analysis.landscape.spectral import layer_matrices, layer_names, metric_split, population_spectra
from tests.test_spec import jitter_bn
from weightspace.spec import apply_permutation, random_permutation, spec_for
from zoo.errors import ConfigError, MismatchError
from zoo.models.architectures import init_state
from zoo.models.datasets import load_dataset

pytestmark = pytest.mark.usefixtures("one_thread")

MLP_SMALL = {"family": "mlp", "in_features": 64, "hidden": [16], "out_features": 10}  # 1,210 parameters
MLP_DIGITS = {"family": "mlp", "in_features": 64, "hidden": [32], "out_features": 10}  # 2,410 parameters
CNN_BN = {"family": "cnn", "channels": [3, 4], "batchnorm": True, "out_features": 10}


# ------------------------------------------------------------------------------------ power law
def naive_fit(ev: np.ndarray, small_n: int = 20, min_tail_small: int = 8) -> tuple[float, float, float, int]:
    """Clauset et al.'s procedure written as a plain loop over candidate cutoffs (the test's reference)."""
    x = np.sort(ev[ev > 1e-5])
    n_all = len(x)
    small = n_all < small_n
    best = (math.inf, math.nan, math.nan, 0)
    for i in range(n_all - 1):
        tail = x[i:]
        n = len(tail)
        if n < (min(min_tail_small, n_all) if small else 2):
            continue
        s = np.sum(np.log(tail / x[i]))
        if s <= 1e-12:
            continue
        a = 1 + ((n - 1) if small else n) / s
        if not a > 1:
            continue
        d = np.max(np.abs(1 - (tail / x[i]) ** (1 - a) - np.arange(n) / n))
        if d < best[0]:
            best = (d, a, x[i], n)
    return best[1], best[2], best[0], best[3]


def test_power_law_fit_equals_the_plain_loop_of_clauset_et_al():
    rng = np.random.default_rng(0)
    rows = []
    for m in (9, 12, 19, 20, 32, 64, 90):
        w = rng.standard_normal((2 * m, m)) * rng.standard_t(3, size=(2 * m, m))
        ev = np.linalg.svd(w, compute_uv=False) ** 2
        ev[: m // 10] = rng.uniform(0, 1e-6, m // 10)  # some eigenvalues under the threshold: ignored
        rows.append(np.pad(ev, (0, 90 - m)))  # zero padding: ignored as well
    fit = fit_power_law(torch.tensor(np.stack(rows)))
    for k, ev in enumerate(rows):
        alpha, xmin, ks, n_tail = naive_fit(ev)
        assert fit.alpha[k].item() == pytest.approx(alpha, rel=1e-9)
        assert fit.xmin[k].item() == pytest.approx(xmin, rel=1e-12)
        assert fit.ks[k].item() == pytest.approx(ks, rel=1e-9)
        assert fit.n_tail[k].item() == n_tail
        assert fit.n_evals[k].item() == int((ev > 1e-5).sum())
    want = [STATUS["small_sample"] if n < 20 else STATUS["ok"] for n in fit.n_evals.tolist()]
    assert fit.status.tolist() == want and want.count(STATUS["small_sample"]) == 4


def test_power_law_recovers_a_known_exponent_with_a_covering_interval():
    g = torch.Generator().manual_seed(1)
    true_alpha = 2.5
    u = torch.rand(1500, generator=g, dtype=torch.float64)
    pareto = 0.5 * (1 - u) ** (-1 / (true_alpha - 1))  # inverse CDF of p(x) ~ x^-2.5 above 0.5
    body = torch.rand(300, generator=g, dtype=torch.float64) * 0.4 + 0.05  # a non-power-law bulk below
    fit = fit_power_law(torch.cat([body, pareto]), bootstrap=40, seed=0)
    assert fit.status.item() == STATUS["ok"]
    assert fit.alpha.item() == pytest.approx(true_alpha, abs=0.12)
    assert fit.alpha_lo.item() < true_alpha < fit.alpha_hi.item()
    assert fit.alpha_hi.item() - fit.alpha_lo.item() < 0.6
    assert fit.sigma.item() == pytest.approx((fit.alpha.item() - 1) / math.sqrt(fit.n_tail.item()))
    assert fit.xmin.item() >= 0.45  # the cutoff lands at the power law's start, not in the bulk


def test_power_law_status_is_explicit_for_every_spectrum():
    g = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(24, 24, generator=g, dtype=torch.float64))
    spectra = torch.stack([
        torch.nn.functional.pad(torch.rand(5, generator=g, dtype=torch.float64) + 0.1, (0, 35)),  # 5 eigenvalues
        torch.nn.functional.pad(torch.linalg.svdvals(q) ** 2, (0, 16)),  # orthogonal: all equal, no power law
        torch.nn.functional.pad(torch.rand(12, generator=g, dtype=torch.float64) + 0.1, (0, 28)),
        torch.rand(40, generator=g, dtype=torch.float64) + 0.1,
    ])  # fmt: skip
    fit = fit_power_law(spectra)
    assert fit.status_names() == ["too_few_eigenvalues", "failed", "small_sample", "ok"]
    assert math.isnan(fit.alpha[0]) and math.isnan(fit.alpha[1]) and fit.n_tail[:2].tolist() == [0, 0]
    assert fit.n_evals.tolist() == [5, 24, 12, 40]
    assert torch.isfinite(fit.alpha[2:]).all() and (fit.alpha[2:] > 1).all()


def test_power_law_bootstrap_is_seeded_and_rows_are_independent():
    g = torch.Generator().manual_seed(3)
    ev = torch.linalg.svdvals(torch.randn(6, 48, 32, generator=g)).double() ** 2
    a, b, c = (fit_power_law(ev, bootstrap=30, seed=s) for s in (7, 7, 8))
    assert torch.equal(a.alpha_lo, b.alpha_lo) and torch.equal(a.alpha_hi, b.alpha_hi)
    assert not torch.equal(a.alpha_lo, c.alpha_lo)
    assert torch.equal(a.alpha, c.alpha)  # the point estimate does not depend on the bootstrap
    one = fit_power_law(ev[2])
    assert one.alpha.item() == pytest.approx(a.alpha[2].item(), rel=1e-12) and one.alpha.dim() == 0


def test_power_law_refuses_bad_arguments():
    with pytest.raises(ConfigError, match=r"\[B, M\]"):
        fit_power_law(torch.rand(2, 3, 4))
    with pytest.raises(ConfigError, match="ci"):
        fit_power_law(torch.rand(30), ci=1.5)
    with pytest.raises(ConfigError, match="bootstrap"):
        fit_power_law(torch.rand(30), bootstrap=-1)


# ------------------------------------------------------------------------------------ spectra
def test_layer_spectra_match_per_model_svds_and_convs_are_sliced_per_kernel_position():
    states = [jitter_bn(init_state(CNN_BN, s), s) for s in range(3)]
    stacked = {k: torch.stack([s[k] for s in states]) for k in states[0]}
    assert list(layer_names(stacked)) == ["convs.0", "convs.1", "head"]
    spectra = {s.layer: s for s in population_spectra(stacked, bootstrap=0)}
    conv = spectra["convs.1"]
    assert conv.kind == "conv" and conv.n_matrices == 9 and conv.evals.shape == (3, 9 * 3)
    for n, st in enumerate(states):
        w = st["convs.1.weight"].double()  # [4, 3, 3, 3]
        per_pos = torch.cat([torch.linalg.svdvals(w[:, :, i, j]) for i in range(3) for j in range(3)])
        torch.testing.assert_close(conv.evals[n], torch.sort(per_pos**2).values)
        assert conv.spectral_norm[n].item() == pytest.approx(per_pos.max().item(), rel=1e-6)
        head = st["head.weight"].double()
        sv = torch.linalg.svdvals(head)
        assert spectra["head"].spectral_norm[n].item() == pytest.approx(torch.linalg.matrix_norm(head, ord=2).item(), rel=1e-6)
        assert spectra["head"].stable_rank[n].item() == pytest.approx((head.square().sum() / sv.max() ** 2).item(), rel=1e-6)
        p = sv / sv.sum()
        assert spectra["head"].effective_rank[n].item() == pytest.approx(math.exp(-(p * p.log()).sum().item()), rel=1e-6)
    # conv slices: kernel position (i, j) is matrix i * kw + j
    mats, kind = layer_matrices(stacked["convs.1.weight"])
    assert kind == "conv" and torch.equal(mats[1, 5], stacked["convs.1.weight"][1, :, :, 1, 2])


def test_effective_and_stable_rank_of_known_matrices():
    eye = torch.eye(10).repeat(2, 1, 1)
    eye[1, 3:] = 0  # rank 3
    s = population_spectra({"w.weight": eye}, bootstrap=0)[0]
    assert s.effective_rank.tolist() == pytest.approx([10.0, 3.0])
    assert s.stable_rank.tolist() == pytest.approx([10.0, 3.0])
    assert s.spectral_norm.tolist() == pytest.approx([1.0, 1.0])
    assert s.fit.status_names() == ["failed", "too_few_eigenvalues"]  # 10 equal eigenvalues; 3 above 1e-5


def test_a_model_with_non_finite_weights_fails_explicitly_without_touching_the_others():
    w = torch.randn(3, 40, 30, generator=torch.Generator().manual_seed(0))
    w[1, 0, 0] = math.nan
    s = population_spectra({"a.weight": w}, bootstrap=5)[0]
    assert s.fit.status_names() == ["ok", "failed", "ok"]
    assert math.isnan(s.spectral_norm[1]) and math.isnan(s.fit.alpha[1])
    alone = population_spectra({"a.weight": w[2:]}, bootstrap=5)[0]
    assert s.spectral_norm[2].item() == pytest.approx(alone.spectral_norm[0].item())


def test_metric_split_keeps_short_names_and_shortens_long_ones_uniquely():
    assert metric_split("layers.0") == "layers.0"
    long_a, long_b = "model.decoder.layers.11.self_attn.out_proj.lora_A", "model.decoder.layers.11.self_attn.out_proj.lora_B"
    assert len(metric_split(long_a + "_x")) <= 50 and metric_split(long_a + "_x") != metric_split(long_b + "_x")


# ------------------------------------------------------------------------------------ Hessian
def _digits(n: int = 200, flat: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    ds = load_dataset("digits")
    ds = ds.flat() if flat else ds
    return ds.X_train[:n].float(), ds.y_train[:n]


def exact_hessian(cfg: dict, state: dict, X: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, slice]]:
    """The model's full Hessian by torch.autograd.functional.hessian on its flat trainable vector."""
    trainable, buffers = split_params(cfg, {k: v.unsqueeze(0) for k, v in state.items()})
    names = list(trainable)
    shapes = [trainable[k].shape[1:] for k in names]
    sizes = [int(np.prod(s)) for s in shapes]
    loss = population_loss(cfg, buffers, X, y)

    def f(flat: torch.Tensor) -> torch.Tensor:
        parts = torch.split(flat, sizes)
        return loss({k: p.view(1, *s) for k, p, s in zip(names, parts, shapes, strict=True)})

    flat0 = torch.cat([trainable[k].reshape(-1) for k in names])
    H = hessian(f, flat0, vectorize=True).double()
    offs = np.cumsum([0, *sizes])
    return H, {k: slice(int(offs[i]), int(offs[i + 1])) for i, k in enumerate(names)}


@pytest.fixture(scope="module")
def trained_mlp() -> tuple[dict[str, torch.Tensor], torch.Tensor, dict[str, slice]]:
    """A digits MLP (64-32-10, 2,410 parameters) trained for 8 epochs, and its exact Hessian on 256 samples."""
    from zoo.build.training import TrainSpec, train_population

    ck = list(train_population(TrainSpec(config=MLP_DIGITS, n=1, seeds=[0], epochs=8), load_dataset("digits").flat(),
                               progress=False))[-1]  # fmt: skip
    X, y = _digits(256)
    H, where = exact_hessian(MLP_DIGITS, ck.model(0), X, y)
    assert H.shape == (2410, 2410)
    return ck.model(0), H, where


@pytest.mark.parametrize("method", ["hutch++", "hutchinson"])
def test_hvp_trace_and_power_iteration_match_the_exact_hessian(trained_mlp, method):
    X, y = _digits(256)
    state, H, where = trained_mlp
    est = sharpness(MLP_DIGITS, {k: v.unsqueeze(0) for k, v in state.items()}, X, y, probes=150, method=method,
                    iters=200, tol=1e-6, keys=[11])  # fmt: skip
    tr = H.trace().item()
    assert abs(est.trace.item() - tr) < 4 * est.trace_se.item(), (est.trace, tr)
    if method == "hutch++":
        assert abs(est.trace.item() - tr) < 0.05 * tr  # the target: within 5% of the exact trace
    ev = torch.linalg.eigvalsh(H)
    top = ev[ev.abs().argmax()].item()
    assert est.top_eig.item() == pytest.approx(top, rel=1e-3)
    assert abs(est.top_eig.item() - top) <= est.top_eig_residual.item() + 1e-6  # the residual bounds the error
    for layer, d in est.layers.items():
        blk = slice(where[f"{layer}.weight"].start, where[f"{layer}.bias"].stop)
        Hb = H[blk, blk]
        assert abs(d["trace"].item() - Hb.trace().item()) < 4 * d["trace_se"].item() + 1e-9, layer
        evb = torch.linalg.eigvalsh(Hb)
        assert d["top_eig"].item() == pytest.approx(evb[evb.abs().argmax()].item(), rel=1e-3)


def test_batched_hessian_vector_products_are_each_models_own():
    X, y = _digits(64)
    states = [init_state(MLP_SMALL, s) for s in range(2)]
    stacked = {k: torch.stack([s[k] for s in states]) for k in states[0]}
    trainable, buffers = split_params(MLP_SMALL, stacked)
    v = {k: torch.randn(t.shape, generator=torch.Generator().manual_seed(1)) for k, t in trainable.items()}
    hv = hvp(population_loss(MLP_SMALL, buffers, X, y), trainable, v)
    for n, st in enumerate(states):
        H, where = exact_hessian(MLP_SMALL, st, X, y)
        flat_v = torch.cat([v[k][n].reshape(-1) for k in trainable]).double()
        flat_hv = torch.cat([hv[k][n].reshape(-1) for k in trainable]).double()
        torch.testing.assert_close(flat_hv, H @ flat_v, rtol=1e-4, atol=1e-5)


def test_hessian_of_a_batchnorm_cnn_matches_the_exact_hessian():
    X, y = _digits(32, flat=False)
    state = jitter_bn(init_state(CNN_BN, 0), 0)
    H, _ = exact_hessian(CNN_BN, state, X, y)
    est = sharpness(CNN_BN, {k: v.unsqueeze(0) for k, v in state.items()}, X, y, probes=120, iters=150, tol=1e-7,
                    per_layer=False)  # fmt: skip
    assert abs(est.trace.item() - H.trace().item()) < 4 * est.trace_se.item()
    ev = torch.linalg.eigvalsh(H)
    assert est.top_eig.item() == pytest.approx(ev[ev.abs().argmax()].item(), rel=1e-3)


def test_hutchinson_is_exact_on_a_diagonal_hessian_and_power_iteration_finds_its_largest_entry():
    d = torch.tensor([[1.0, -3.0, 0.5], [2.0, 0.25, 7.0]])  # two "models", diagonal Hessians

    def loss(p: dict[str, torch.Tensor]) -> torch.Tensor:
        return 0.5 * (d * p["w"] ** 2).sum()

    params = {"w": torch.ones(2, 3)}
    tr, se, per = hutchinson_trace(loss, params, probes=5, method="hutchinson", groups={"w": ["w"]})
    assert tr.tolist() == pytest.approx([-1.5, 9.25]) and se.tolist() == pytest.approx([0.0, 0.0], abs=1e-12)
    assert per["w"][0].tolist() == pytest.approx([-1.5, 9.25])
    lam, res, it = top_eigenvalue(loss, params, iters=500, tol=1e-10)
    assert lam.tolist() == pytest.approx([-3.0, 7.0], rel=1e-5) and it < 500


def test_hutch_plus_plus_is_exact_when_the_sketch_spans_the_hessian():
    a = torch.tensor([[1.0, 2.0, -2.0, 0.5], [0.0, 3.0, 1.0, 1.0]])  # rank-1 Hessians a a^T per model

    def loss(p: dict[str, torch.Tensor]) -> torch.Tensor:
        return 0.5 * ((a * p["w"]).sum(1) ** 2).sum()

    tr, se, _ = hutchinson_trace(loss, {"w": torch.zeros(2, 4)}, probes=6, method="hutch++")
    assert tr.tolist() == pytest.approx(a.square().sum(1).tolist(), rel=1e-5) and se.max().item() < 1e-5
    plain, plain_se, _ = hutchinson_trace(loss, {"w": torch.zeros(2, 4)}, probes=6, method="hutchinson")
    assert plain_se.max().item() > 0.1  # plain Hutchinson is noisy on the same Hessian
    with pytest.raises(ConfigError, match="trace method"):
        hutchinson_trace(loss, {"w": torch.zeros(2, 4)}, method="exact")


def test_a_models_estimates_do_not_depend_on_its_population():
    X, y = _digits(128)
    states = [init_state(MLP_SMALL, s) for s in range(3)]
    stacked = {k: torch.stack([s[k] for s in states]) for k in states[0]}
    together = sharpness(MLP_SMALL, stacked, X, y, probes=8, iters=20, keys=[5, 6, 7], seed=3)
    alone = sharpness(MLP_SMALL, {k: v[1:2] for k, v in stacked.items()}, X, y, probes=8, iters=20, keys=[6], seed=3,
                      model_chunk=1)  # fmt: skip
    assert together.trace[1].item() == pytest.approx(alone.trace.item(), rel=1e-4)
    assert together.layers["layers.0"]["trace"][1].item() == pytest.approx(alone.layers["layers.0"]["trace"].item(), rel=1e-4)
    other_seed = sharpness(MLP_SMALL, {k: v[1:2] for k, v in stacked.items()}, X, y, probes=8, iters=20, keys=[6], seed=4)
    assert other_seed.trace.item() != pytest.approx(alone.trace.item(), rel=1e-6)


def test_layer_groups_pair_weights_with_their_biases_only():
    trainable, _ = split_params(CNN_BN, {k: v.unsqueeze(0) for k, v in init_state(CNN_BN, 0).items()})
    assert layer_groups(trainable) == {"convs.0": ["convs.0.weight"], "convs.1": ["convs.1.weight"],
                                       "head": ["head.weight", "head.bias"]}  # fmt: skip
    assert "norms.0.running_mean" not in trainable


def test_hessian_of_an_inr_fit_matches_the_exact_hessian_and_each_model_has_its_own_image():
    """A SIREN's loss is the MSE of its fit of its own image: two SIRENs on two images, against the exact Hessian."""
    from zoo.models.datasets import inr_targets

    siren = {"family": "siren", "in_features": 2, "hidden": [12, 12], "out_features": 1}
    data = inr_targets(load_dataset("digits"), n=2, seed=3)
    states = [init_state(siren, s) for s in (0, 1)]
    stacked = {k: torch.stack([s[k] for s in states]) for k in states[0]}
    est = sharpness(siren, stacked, data.coords, data.targets, probes=120, iters=300, tol=1e-8, keys=[1, 2])
    for n, st in enumerate(states):
        H, _ = exact_hessian(siren, st, data.coords, data.targets[n])  # its own image only
        assert H.shape == (205, 205)
        assert abs(est.trace[n].item() - H.trace().item()) < 4 * est.trace_se[n].item() + 1e-9
        ev = torch.linalg.eigvalsh(H)
        assert est.top_eig[n].item() == pytest.approx(ev[ev.abs().argmax()].item(), rel=1e-3)
    trainable, buffers = split_params(siren, stacked)  # each model's product is with its own image's Hessian
    v = {k: torch.randn(t.shape, generator=torch.Generator().manual_seed(2)) for k, t in trainable.items()}
    hv = hvp(population_loss(siren, buffers, data.coords, data.targets), trainable, v)
    flat_v = torch.cat([v[k][0].reshape(-1) for k in trainable]).double()
    flat_hv = torch.cat([hv[k][0].reshape(-1) for k in trainable]).double()
    own, _ = exact_hessian(siren, states[0], data.coords, data.targets[0])
    other, _ = exact_hessian(siren, states[0], data.coords, data.targets[1])
    torch.testing.assert_close(flat_hv, own @ flat_v, rtol=1e-4, atol=1e-5)
    assert (flat_hv - other @ flat_v).norm() > 0.05 * flat_hv.norm()
    with pytest.raises(MismatchError, match="3 target images for 2 models"):
        sharpness(siren, stacked, data.coords, data.targets[[0, 1, 1]])


def test_hessian_refuses_models_that_cannot_be_evaluated():
    X, y = _digits(8)
    with pytest.raises(ConfigError, match="raw"):
        sharpness({"family": "raw", "tensors": {}}, {"w": torch.zeros(1, 2, 2)}, X, y)
    with pytest.raises(ConfigError, match="probes"):
        hutchinson_trace(lambda p: p["w"].sum(), {"w": torch.zeros(1, 2)}, probes=1)


# ------------------------------------------------------------------------------------ CKA
def test_linear_cka_hand_computed_and_invariances():
    X = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])  # centred, X^T X = 2 I
    Y = torch.tensor([[1.0], [0.0], [-1.0], [0.0]])  # the first column of X
    # ||Y^T X||_F^2 = 4, ||X^T X||_F = 2 sqrt(2), ||Y^T Y||_F = 2  ->  4 / (4 sqrt 2) = 1/sqrt 2
    assert linear_cka(X, Y).item() == pytest.approx(1 / math.sqrt(2))
    g = torch.Generator().manual_seed(0)
    A = torch.randn(50, 8, generator=g)
    Q, _ = torch.linalg.qr(torch.randn(8, 8, generator=g))
    assert linear_cka(A, 3.0 * A @ Q + 5.0).item() == pytest.approx(1.0, abs=1e-10)
    B = torch.randn(50, 70, generator=g)  # more features than samples: the Gram form
    assert linear_cka(A, B).item() == pytest.approx(linear_cka(B, A).item(), abs=1e-12)
    wide = linear_cka(A.repeat(1, 10), B)  # Gram form, same value as the feature form of A (repeat scales A)
    assert wide.item() == pytest.approx(linear_cka(A, B).item(), rel=1e-9)
    assert 0.0 < linear_cka(A, B).item() < 1.0
    with pytest.raises(MismatchError, match="same samples"):
        linear_cka(A, B[:10])


@pytest.mark.parametrize("cfg", [MLP_SMALL, CNN_BN, {"family": "resnet", "width": 4, "blocks": [1, 1]}],
                         ids=["mlp", "cnn_bn", "resnet"])
def test_cka_of_a_model_with_its_permuted_copy_is_one_at_every_layer(cfg):
    flat = cfg["family"] == "mlp"
    X, _ = _digits(64, flat=flat)
    state = init_state(cfg, 0) if flat else jitter_bn(init_state(cfg, 0), 0)
    spec = spec_for(cfg)
    permuted = apply_permutation(spec, random_permutation(spec, state, torch.Generator().manual_seed(1)), state)
    res = model_cka(cfg, permuted, cfg, state, X)
    assert "logits" in res and len(res) >= 2
    assert all(v == pytest.approx(1.0, abs=1e-5) for v in res.values()), res
    other = model_cka(cfg, init_state(cfg, 5) if flat else jitter_bn(init_state(cfg, 5), 5), cfg, state, X)
    assert min(other.values()) < 0.99


def test_population_cka_matches_pairs_and_compares_other_widths():
    X, _ = _digits(64)
    states = [init_state(MLP_SMALL, s) for s in range(3)]
    stacked = {k: torch.stack([s[k] for s in states]) for k in states[0]}
    ref_cfg = dict(MLP_SMALL, hidden=[40])
    ref = init_state(ref_cfg, 9)
    pop = population_cka(MLP_SMALL, stacked, ref_cfg, ref, X, model_chunk=2)
    assert list(pop) == ["layers.0", "logits"]
    for n, st in enumerate(states):
        pair = model_cka(MLP_SMALL, st, ref_cfg, ref, X)
        assert pop["layers.0"][n].item() == pytest.approx(pair["layers.0"], rel=1e-9)
    acts = activations(MLP_SMALL, stacked, X)
    assert acts["layers.0"].shape == (3, 64, 16) and acts["logits"].shape == (3, 64, 10)
    with pytest.raises(MismatchError, match="inputs of shape"):
        activations(MLP_SMALL, stacked, X[:, :10])
    deeper = dict(MLP_SMALL, hidden=[16, 16])
    assert list(population_cka(deeper, {k: v.unsqueeze(0) for k, v in init_state(deeper, 0).items()}, MLP_SMALL,
                               states[0], X)) == ["layers.0", "logits"]  # only the layers both have  # fmt: skip
