"""Augmentations: permutation and ReLU rescaling preserve the function exactly; noise, dropout, mixup."""

from __future__ import annotations

import pytest
import torch

from weightspace.augment import Augmenter, gaussian_noise, mixup, permute, rescale, weight_dropout
from weightspace.spec import spec_for
from zoo.errors import ConfigError, MismatchError
from zoo.models.architectures import init_state, instantiate

CFG = {"family": "mlp", "in_features": 6, "hidden": [8, 7], "out_features": 3, "activation": "relu"}


def stacked(n: int = 4) -> dict[str, torch.Tensor]:
    states = [init_state(CFG, s) for s in range(n)]
    return {k: torch.stack([s[k] for s in states]).double() for k in states[0]}


def outputs(X: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    n = next(iter(X.values())).shape[0]
    return torch.stack([instantiate(CFG, {k: v[i] for k, v in X.items()}).double()(x) for i in range(n)])


@pytest.mark.parametrize("fn", [permute, rescale])
def test_symmetries_preserve_the_function(fn) -> None:
    X, x = stacked(), torch.randn(16, 6, dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)
    Y = fn(X, spec_for(CFG), generator=gen)
    assert any(not torch.equal(Y[k], X[k]) for k in X)
    torch.testing.assert_close(outputs(Y, x), outputs(X, x), rtol=1e-5, atol=1e-6)  # instantiate() holds float32 weights


def test_rescale_scales_rows_and_columns() -> None:
    X = stacked(2)
    Y = rescale(X, spec_for(CFG), low=2.0, high=2.0)
    torch.testing.assert_close(Y["layers.0.weight"], 2 * X["layers.0.weight"])
    torch.testing.assert_close(Y["layers.0.bias"], 2 * X["layers.0.bias"])
    torch.testing.assert_close(Y["layers.1.weight"], X["layers.1.weight"])  # *2 rows, /2 columns
    torch.testing.assert_close(Y["layers.2.weight"], X["layers.2.weight"] / 2)
    torch.testing.assert_close(Y["layers.2.bias"], X["layers.2.bias"])
    with pytest.raises(ConfigError):
        rescale(X, spec_for(CFG), low=0.0)


def test_noise_dropout_mixup() -> None:
    X = stacked()
    gen = torch.Generator().manual_seed(0)
    N = gaussian_noise(X, std=0.1, generator=gen)
    rel = (N["layers.0.weight"] - X["layers.0.weight"]).std() / X["layers.0.weight"].std()
    assert 0.05 < float(rel) < 0.2
    D = weight_dropout(X, p=0.5, generator=gen)
    frac = float((D["layers.0.weight"] == 0).double().mean())
    assert 0.35 < frac < 0.65
    M = mixup(X, X, 0.3)
    torch.testing.assert_close(M["layers.0.weight"], X["layers.0.weight"])
    half = mixup(X, {k: torch.zeros_like(v) for k, v in X.items()}, torch.full((4,), 0.5))
    torch.testing.assert_close(half["layers.1.weight"], X["layers.1.weight"] / 2)
    with pytest.raises(MismatchError):
        mixup(X, {k: v[:, :1] for k, v in X.items()}, 0.5)


def test_augmenter_config_and_mixup_needs_align() -> None:
    X = {k: v.float() for k, v in stacked().items()}
    with pytest.raises(ConfigError, match="valid"):
        Augmenter(["flip"])
    with pytest.raises(ConfigError, match="options"):
        Augmenter([{"name": "noise", "sigma": 1}])
    aug = Augmenter(["mixup"])
    with pytest.raises(ConfigError, match="align"):
        aug.prepare(X, None)
    calls = []

    def identity_align(pop, ref, spec):
        calls.append((len(next(iter(pop.values()))), spec))
        return pop

    with pytest.raises(ConfigError, match="spec"):
        Augmenter(["mixup"]).prepare(X, identity_align)
    aug = Augmenter([{"name": "mixup", "prob": 1.0}, "permute", "rescale", "noise", "dropout"]).prepare(
        X, identity_align, spec_for(CFG))
    y = torch.arange(4).float()
    aug.set_targets(y)
    out, y2 = aug(X, y, spec_for(CFG), index=torch.arange(4), generator=torch.Generator().manual_seed(0))
    assert calls == [(4, spec_for(CFG))] and set(out) == set(X) and y2.shape == y.shape
    assert aug.to_config()[0] == {"name": "mixup", "alpha": 0.2, "prob": 1.0}
