"""Linear mode connectivity: interpolation, barriers, batched curves, BatchNorm statistics, the zoo front door."""

from __future__ import annotations

import json

import pytest
import torch

from analysis.lmc import (
    barrier,
    interpolate,
    interpolate_pairs,
    linear_mode_connectivity,
    lmc_curve,
    lmc_curves,
    reset_bn_stats,
)
from tests.test_align import DIGITS_MLP, _cli, trained_zoo  # noqa: F401  (the module-scoped fixture)
from tests.test_spec import jitter_bn
from zoo.build.evaluate import evaluate_population
from zoo.errors import ConfigError, MismatchError
from zoo.models.architectures import build_module, init_state
from zoo.models.datasets import load_dataset

CNN_BN = {"family": "cnn", "channels": [4, 6], "batchnorm": True, "out_features": 10}


def test_interpolation_endpoints_and_midpoint():
    a, b = init_state(CNN_BN, 0), jitter_bn(init_state(CNN_BN, 1))
    pts = interpolate(a, b, torch.tensor([0.0, 0.5, 1.0]))
    for k in a:
        assert pts[k].shape == (3, *a[k].shape)
        if a[k].is_floating_point():
            torch.testing.assert_close(pts[k][0], a[k])
            torch.testing.assert_close(pts[k][2], b[k])
            torch.testing.assert_close(pts[k][1], (a[k] + b[k]) / 2)
        else:  # num_batches_tracked comes from a
            assert torch.equal(pts[k][2], a[k])
    pairs = interpolate_pairs({k: torch.stack([a[k], b[k]]) for k in a}, {k: torch.stack([b[k], a[k]]) for k in a}, torch.tensor([0.0, 1.0]))
    assert torch.equal(pairs["convs.0.weight"][1], b["convs.0.weight"])  # pair 0 at t=1
    assert torch.equal(pairs["convs.0.weight"][2], b["convs.0.weight"])  # pair 1 at t=0
    with pytest.raises(MismatchError):
        interpolate(a, init_state({**CNN_BN, "channels": [4, 5]}, 0), torch.tensor([0.0, 1.0]))


def test_barrier_formula():
    t = torch.linspace(0, 1, 5)
    loss = torch.tensor([1.0, 2.0, 3.0, 2.5, 2.0])  # line from 1 to 2: 1.25, 1.5, 1.75 in the middle
    assert float(barrier(t, loss)) == pytest.approx(1.5)
    acc = torch.tensor([0.9, 0.8, 0.5, 0.7, 0.7])  # line 0.85, 0.8, 0.75: worst drop at t=.5
    assert float(barrier(t, acc, higher_is_better=True)) == pytest.approx(0.3)
    assert barrier(t, torch.stack([loss, loss * 0])).tolist() == pytest.approx([1.5, 0.0])


def test_curve_of_a_model_with_itself_is_flat_and_batched_curves_match_single_ones():
    ds = load_dataset("digits").flat()
    X, y = ds.X_test, ds.y_test
    a, b, c = (init_state(DIGITS_MLP, s) for s in range(3))
    flat = lmc_curve(DIGITS_MLP, a, a, X, y, points=5)
    assert flat.loss_barrier == pytest.approx(0.0, abs=1e-6) and flat.acc_barrier == pytest.approx(0.0, abs=1e-6)
    many = lmc_curves(DIGITS_MLP, {k: torch.stack([a[k], b[k]]) for k in a}, {k: torch.stack([b[k], c[k]]) for k in a},
                      X, y, points=7)  # fmt: skip
    for cur, (u, v) in zip(many, [(a, b), (b, c)], strict=True):
        one = lmc_curve(DIGITS_MLP, u, v, X, y, points=7)
        torch.testing.assert_close(cur.loss, one.loss)
        assert cur.loss_barrier == pytest.approx(one.loss_barrier, abs=1e-6)
    with pytest.raises(ConfigError, match="at least 2 points"):
        lmc_curve(DIGITS_MLP, a, b, X, y, points=1)
    with pytest.raises(ConfigError, match="increasing"):
        lmc_curve(DIGITS_MLP, a, b, X, y, t=torch.tensor([0.0, 0.7, 0.5, 1.0]))


def test_reset_bn_stats_stores_the_batch_statistics():
    state = jitter_bn(init_state(CNN_BN, 0))
    X = load_dataset("digits").X_train[:256]
    out = reset_bn_stats(CNN_BN, {k: v[None] for k, v in state.items()}, X)
    # reference: nn.Module in train mode with a cumulative average (momentum=None) over one batch
    m = build_module(CNN_BN)
    m.load_state_dict(state)
    for bn in m.norms:
        bn.reset_running_stats()
        bn.momentum = None
    m.train()
    with torch.no_grad():
        m(X)
    ref = m.state_dict()
    for k in state:
        if "running" in k:
            torch.testing.assert_close(out[k][0], ref[k], rtol=1e-4, atol=1e-5)
        else:
            assert torch.equal(out[k][0], state[k])
    assert torch.equal(reset_bn_stats(DIGITS_MLP, {"x": torch.ones(1, 2)}, X)["x"], torch.ones(1, 2))  # no BN: a copy


def test_bn_reset_changes_the_curve_of_a_batchnorm_model():
    ds = load_dataset("digits")
    a, b = jitter_bn(init_state(CNN_BN, 0), 0), jitter_bn(init_state(CNN_BN, 1), 1)
    plain = lmc_curve(CNN_BN, a, b, ds.X_test, ds.y_test, points=3)
    reset = lmc_curve(CNN_BN, a, b, ds.X_test, ds.y_test, points=3, bn_data=ds.X_train[:256])
    assert reset.bn_reset and not plain.bn_reset
    assert not torch.allclose(plain.loss, reset.loss)
    pop = reset_bn_stats(CNN_BN, {k: v[None] for k, v in a.items()}, ds.X_train[:256])
    direct = evaluate_population(CNN_BN, pop, ds.X_test, ds.y_test)
    assert float(reset.loss[0]) == pytest.approx(float(direct.loss[0]), rel=1e-5)


def test_alignment_lowers_the_barrier_between_trained_mlps(trained_zoo):  # noqa: F811
    rep = linear_mode_connectivity(trained_zoo, "mlp0", "mlp1", align=True, points=9)
    assert len(rep.naive.t) == 9
    assert rep.naive.loss_barrier > 0.02
    assert rep.aligned.loss_barrier < 0.5 * rep.naive.loss_barrier
    torch.testing.assert_close(rep.aligned.loss[[0, -1]], rep.naive.loss[[0, -1]])  # same endpoints (functions)
    assert rep.align_params["distance_after"] < rep.align_params["distance_before"]
    plain = linear_mode_connectivity(trained_zoo, "mlp0", "mlp1", points=9)
    assert plain.aligned is None and plain.naive.loss_barrier == pytest.approx(rep.naive.loss_barrier)


def test_cli_lmc(trained_zoo, capsys):  # noqa: F811
    root = str(trained_zoo.root)
    args = _cli().parse_args(["lmc", "mlp0", "mlp1", "--align", "--points", "5", "--root", root])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "naive    loss barrier" in out and "aligned  loss barrier" in out
    args = _cli().parse_args(["lmc", "mlp0", "mlp1", "--points", "3", "--root", root, "--json"])
    assert args.func(args) == 0
    doc = json.loads(capsys.readouterr().out)
    assert len(doc["naive"]["t"]) == 3 and doc["aligned"] is None
    args = _cli().parse_args(["lmc", "mlp0", "cnn0", "--root", root])
    with pytest.raises(MismatchError):
        args.func(args)
