"""Batched population kernels agree with the per-model nn.Module, for every family."""

from __future__ import annotations

import math

import pytest
import torch

from kernels import batched
from zoo.build import evaluate
from zoo.build.evaluate import evaluate_module_loop, evaluate_population, functional_forward
from zoo.models.architectures import build_module, init_state, instantiate, normalize_config

N, B = 4, 6
CONFIGS = {
    "mlp": {"family": "mlp", "in_features": 12, "hidden": [16, 8], "out_features": 5, "activation": "gelu"},
    "mlp_linear": {"family": "mlp", "in_features": 12, "hidden": [], "out_features": 3},
    "cnn": {"family": "cnn", "channels": [4, 6], "activation": "leaky_relu"},
    "cnn_bn_pool": {"family": "cnn", "in_channels": 3, "channels": [4, 5], "batchnorm": True, "pool": "max"},
    "cnn_avgpool_k5": {
        "family": "cnn",
        "channels": [3],
        "kernel_size": 5,
        "pool": "avg",
        "activation": "silu",
    },
    "siren": {"family": "siren", "in_features": 2, "hidden": [16, 16], "out_features": 3, "w0": 30.0},
    "resnet": {"family": "resnet", "in_channels": 2, "width": 4, "blocks": [2, 1]},
}


def _population(config: dict, n: int = N) -> tuple[list[dict], dict]:
    """n random models with randomised BN statistics and affine parameters (so eval mode is tested)."""
    gen = torch.Generator().manual_seed(0)
    states = [init_state(config, seed) for seed in range(n)]
    for state in states:
        for k, v in state.items():
            if k.endswith("running_mean") or (".bn" in k or "norms" in k) and k.endswith("bias"):
                v.copy_(torch.randn(v.shape, generator=gen))
            elif k.endswith("running_var") or (".bn" in k or "norms" in k) and k.endswith("weight"):
                v.copy_(torch.rand(v.shape, generator=gen) + 0.5)
    return states, {k: torch.stack([s[k] for s in states]) for k in states[0]}


def _inputs(config: dict, lead: tuple[int, ...]) -> torch.Tensor:
    cfg = normalize_config(config)
    if cfg["family"] in ("mlp", "siren"):
        return torch.randn(*lead, B, cfg["in_features"])
    return torch.randn(*lead, B, cfg["in_channels"], cfg["image_size"], cfg["image_size"])


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("per_model", [False, True], ids=["shared_x", "per_model_x"])
def test_batched_forward_equals_module_forward(name: str, per_model: bool) -> None:
    config = CONFIGS[name]
    states, params = _population(config)
    x = _inputs(config, (N,) if per_model else ())
    out = functional_forward(config, params, x)
    assert out.shape == (N, B, normalize_config(config)["out_features"])
    for i, state in enumerate(states):
        ref = instantiate(config, state)(x[i] if per_model else x)
        torch.testing.assert_close(out[i], ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["cnn_bn_pool", "resnet"])
def test_batchnorm_training_mode_matches_module(name: str) -> None:
    config = CONFIGS[name]
    states, params = _population(config)
    x = _inputs(config, (N,))
    out = functional_forward(config, params, x, training=True)
    for i, state in enumerate(states):
        module = instantiate(config, state).train()
        ref = module(x[i])
        torch.testing.assert_close(out[i], ref, rtol=1e-4, atol=1e-4)
        for k, v in module.state_dict().items():  # running stats updated in place, per model
            torch.testing.assert_close(params[k][i], v, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["mlp", "cnn_bn_pool", "resnet", "siren"])
def test_gradients_match_module(name: str) -> None:
    config = CONFIGS[name]
    states, params = _population(config, n=2)
    leaves = {
        k: v.clone().requires_grad_(v.is_floating_point() and "running" not in k) for k, v in params.items()
    }
    x = _inputs(config, (2,))
    functional_forward(config, leaves, x, training=True).pow(2).sum().backward()
    for i, state in enumerate(states):
        module = instantiate(config, state).train()
        module(x[i]).pow(2).sum().backward()
        for k, p in module.named_parameters():
            torch.testing.assert_close(leaves[k].grad[i], p.grad, rtol=1e-3, atol=1e-4)


def test_per_model_dropout_affects_only_its_model() -> None:
    config = CONFIGS["mlp"]
    _, params = _population(config)
    x = _inputs(config, ())
    keys = torch.arange(N)
    p = torch.tensor([0.0, 0.5, 0.0, 0.9])
    out = functional_forward(config, params, x, training=True, dropout=p, dropout_keys=keys)
    clean = functional_forward(config, params, x)
    torch.testing.assert_close(out[0], clean[0])
    torch.testing.assert_close(out[2], clean[2])
    assert not torch.allclose(out[1], clean[1]) and not torch.allclose(out[3], clean[3])
    # the masks depend on the model's own key only: model 1 alone gives the same output
    alone = functional_forward(
        config,
        {k: v[1:2] for k, v in params.items()},
        x,
        training=True,
        dropout=p[1:2],
        dropout_keys=keys[1:2],
    )
    torch.testing.assert_close(alone[0], out[1])
    # eval mode ignores dropout
    torch.testing.assert_close(functional_forward(config, params, x, dropout=p), clean)


def test_dropout_keeps_expected_fraction_and_scale() -> None:
    h = torch.ones(3, 200, 50)
    p = torch.tensor([0.0, 0.3, 1.0])
    out = batched.dropout(h, p, True, keys=torch.tensor([1, 2, 3]))
    assert torch.equal(out[0], h[0])
    assert abs((out[1] > 0).float().mean().item() - 0.7) < 0.02
    assert torch.allclose(out[1][out[1] > 0], torch.tensor(1 / 0.7))
    assert torch.equal(out[2], torch.zeros_like(h[2]))


def test_keyed_uniform_is_per_key_and_uniform() -> None:
    a = batched.keyed_uniform(torch.tensor([5, 9, 11]), (40, 30), salt=2)
    b = batched.keyed_uniform(torch.tensor([9]), (40, 30), salt=2)
    torch.testing.assert_close(a[1], b[0], rtol=0, atol=0)
    assert not torch.equal(a[0], a[1])
    assert not torch.equal(a, batched.keyed_uniform(torch.tensor([5, 9, 11]), (40, 30), salt=3))
    assert 0 <= a.min() and a.max() < 1 and abs(a.mean().item() - 0.5) < 0.02


def test_linear_shared_and_per_model_agree() -> None:
    w, b, x = torch.randn(N, 7, 5), torch.randn(N, 7), torch.randn(B, 5)
    torch.testing.assert_close(batched.linear(x, w, b), batched.linear(x.expand(N, B, 5), w, b))


@pytest.mark.parametrize("name", ["mlp", "cnn_bn_pool", "resnet"])
def test_evaluate_population_equals_module_loop(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    config = CONFIGS[name]
    _, params = _population(config, n=5)
    cfg = normalize_config(config)
    x = _inputs(config, ())
    x = torch.cat([x] * 4)  # 24 samples
    y = torch.randint(0, cfg["out_features"], (len(x),))
    ref = evaluate_module_loop(config, params, x, y)
    monkeypatch.setattr(evaluate, "MEMORY_BUDGET", 1)  # forces one model per chunk
    res = evaluate_population(config, params, x, y, batch_size=7)
    torch.testing.assert_close(res.loss, ref.loss, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(res.accuracy, ref.accuracy)


def test_evaluate_per_model_inputs_labels_and_mask() -> None:
    config = CONFIGS["mlp"]
    _, params = _population(config)
    x = _inputs(config, (N,))
    y = torch.randint(0, 5, (N, B))
    ref = evaluate_module_loop(config, params, x, y)
    res = evaluate_population(config, params, x, y)
    torch.testing.assert_close(res.loss, ref.loss)
    mask = torch.zeros(N, B, dtype=torch.bool)
    mask[:, :3] = True
    masked = evaluate_population(config, params, x, y, mask=mask)
    first = evaluate_module_loop(config, params, x[:, :3], y[:, :3])
    torch.testing.assert_close(masked.loss, first.loss)
    torch.testing.assert_close(masked.accuracy, first.accuracy)


def test_evaluate_regression_reports_mse_and_psnr() -> None:
    config = CONFIGS["siren"]
    _, params = _population(config)
    coords = torch.rand(B, 2) * 2 - 1
    targets = torch.rand(N, B, 3)
    res = evaluate_population(config, params, coords, targets, task="regression")
    ref = evaluate_module_loop(config, params, coords, targets, task="regression")
    torch.testing.assert_close(res.loss, ref.loss)
    assert torch.isnan(res.accuracy).all()
    rng = targets.reshape(N, -1).amax(1) - targets.reshape(N, -1).amin(1)
    torch.testing.assert_close(res.psnr, 10 * torch.log10(rng**2 / res.loss))
    assert set(res.as_dict("train_")) == {"train_loss", "train_psnr"}


def test_unknown_task_is_refused() -> None:
    from zoo.errors import ConfigError

    _, params = _population(CONFIGS["mlp"], n=1)
    with pytest.raises(ConfigError, match="classification"):
        evaluate_population(CONFIGS["mlp"], params, torch.randn(2, 12), torch.zeros(2), task="ranking")


def test_module_dropout_is_config_default_in_batched_training() -> None:
    config = {**CONFIGS["mlp"], "dropout": 0.5}
    _, params = _population(config)
    x = _inputs(config, ())
    train = functional_forward(config, params, x, training=True)
    assert not torch.allclose(train, functional_forward(config, params, x))
    assert math.isclose(build_module(config).dropout.p, 0.5)
