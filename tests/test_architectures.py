"""The architectures registry: configs, hashes, shapes, state-dict checks, instantiation."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from zoo.errors import ConfigError, DuplicateError, MismatchError
from zoo.models import architectures as arch

CONFIGS = {
    "mlp": {"family": "mlp", "in_features": 64, "hidden": [32], "out_features": 10, "activation": "relu"},
    "cnn": {"family": "cnn", "in_channels": 1, "image_size": 8, "channels": [8, 16], "out_features": 10},
    "cnn_bn": {"family": "cnn", "channels": [4, 6], "batchnorm": True, "pool": "max"},
    "siren": {"family": "siren", "in_features": 2, "hidden": [32, 32], "out_features": 1, "w0": 30.0},
    "resnet": {"family": "resnet", "width": 4, "blocks": [1, 2]},
}


def test_known_families() -> None:
    assert {"mlp", "cnn", "siren", "resnet"} <= set(arch.known_families())


@pytest.mark.parametrize("name", CONFIGS)
def test_param_shapes_match_module(name: str) -> None:
    config = CONFIGS[name]
    state = arch.build_module(config).state_dict()
    assert arch.param_shapes(config) == {k: tuple(v.shape) for k, v in state.items()}
    assert set(arch.parameter_names(config)) == {k for k, _ in arch.build_module(config).named_parameters()}


def test_normalize_fills_defaults_and_hash_is_spelling_independent() -> None:
    short = {"family": "siren", "w0": 30}
    full = {"family": "siren", "in_features": 2, "hidden": (32, 32), "out_features": 1, "w0": 30.0}
    assert arch.normalize_config(short) == arch.normalize_config(full)
    assert arch.config_hash(short) == arch.config_hash(full)
    assert len(arch.config_hash(short)) == 64
    assert arch.config_hash(short) != arch.config_hash({**full, "w0": 20.0})
    assert arch.normalize_config({"family": "mlp"})["hidden"] == [32]


def test_unknown_family_lists_valid_ones() -> None:
    with pytest.raises(ConfigError) as e:
        arch.normalize_config({"family": "transformer"})
    for family in ("mlp", "cnn", "siren", "resnet"):
        assert family in str(e.value)
    with pytest.raises(ConfigError):
        arch.build_module({"layers": 3})


def test_unknown_key_lists_valid_keys() -> None:
    with pytest.raises(ConfigError, match="hidden"):
        arch.normalize_config({"family": "mlp", "hiden": [3]})


@pytest.mark.parametrize(
    "bad",
    [
        {"family": "mlp", "in_features": 0},
        {"family": "mlp", "in_features": True},
        {"family": "mlp", "activation": "swish"},
        {"family": "mlp", "dropout": 1.0},
        {"family": "cnn", "kernel_size": 4},
        {"family": "cnn", "channels": []},
        {"family": "cnn", "pool": "max", "channels": [2, 2, 2, 2], "image_size": 8},
        {"family": "siren", "w0": -1},
        {"family": "resnet", "blocks": [1, 0]},
    ],
)
def test_bad_values_are_refused(bad: dict) -> None:
    with pytest.raises(ConfigError):
        arch.normalize_config(bad)


def test_raw_family_is_hashable_but_not_buildable() -> None:
    raw = {"family": "raw", "source": "hf:some/model"}
    assert arch.normalize_config(raw) == raw
    assert len(arch.config_hash(raw)) == 64
    assert not arch.can_build(raw)
    assert not arch.can_build(None)
    assert not arch.can_build({"family": "nope"})
    assert arch.can_build({"family": "mlp"})
    with pytest.raises(ConfigError, match="raw"):
        arch.build_module(raw)


def test_check_state_dict_names_missing_unexpected_and_wrong_shapes() -> None:
    config = CONFIGS["mlp"]
    state = arch.build_module(config).state_dict()
    arch.check_state_dict(config, state)
    broken = dict(state)
    del broken["layers.1.bias"]
    broken["layers.9.weight"] = torch.zeros(1)
    broken["layers.0.weight"] = torch.zeros(31, 64)
    with pytest.raises(MismatchError) as e:
        arch.check_state_dict(config, broken)
    msg = str(e.value)
    assert (
        "layers.1.bias" in msg and "layers.9.weight" in msg and "layers.0.weight" in msg and "(31, 64)" in msg
    )


def test_check_stacked() -> None:
    config = CONFIGS["cnn_bn"]
    states = [arch.init_state(config, s) for s in range(3)]
    stacked = {k: torch.stack([s[k] for s in states]) for k in states[0]}
    assert arch.check_stacked(config, stacked) == 3
    stacked["head.bias"] = stacked["head.bias"][:2]
    with pytest.raises(MismatchError):
        arch.check_stacked(config, stacked)


@pytest.mark.parametrize("name", CONFIGS)
def test_instantiate_round_trips(name: str) -> None:
    config = CONFIGS[name]
    state = arch.init_state(config, seed=3)
    module = arch.instantiate(config, state)
    assert not module.training
    for k, v in module.state_dict().items():
        assert torch.equal(v, state[k])


def test_init_state_is_seeded_scaled_and_leaves_global_rng_alone() -> None:
    config = CONFIGS["cnn_bn"]
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = arch.init_state(config, seed=7)
    after = torch.rand(1)
    assert torch.equal(before, after)
    b = arch.init_state(config, seed=7)
    c = arch.init_state(config, seed=7, init_scale=2.0)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert torch.allclose(c["convs.0.weight"], 2 * a["convs.0.weight"])
    assert torch.equal(c["norms.0.weight"], a["norms.0.weight"])  # norm layers are not scaled


def test_siren_init_bounds() -> None:
    config = {"family": "siren", "in_features": 2, "hidden": [64, 64], "w0": 30.0}
    state = arch.init_state(config, seed=0)
    assert state["layers.0.weight"].abs().max() <= 1 / 2
    assert state["layers.1.weight"].abs().max() <= math.sqrt(6 / 64) / 30
    assert state["layers.1.weight"].abs().max() > 0.5 * math.sqrt(6 / 64) / 30


def test_register_refuses_duplicates_and_accepts_new() -> None:
    with pytest.raises(DuplicateError):
        arch.register_architecture("mlp")

    @arch.register_architecture("linear", fields={"in_features": (4, arch.positive_int)})
    def _linear(cfg: dict) -> nn.Module:
        return nn.Linear(cfg["in_features"], 1)

    assert "linear" in arch.known_families()
    assert arch.param_shapes({"family": "linear"}) == {"weight": (1, 4), "bias": (1,)}
    try:
        with pytest.raises(DuplicateError):
            arch.register_architecture("linear")
    finally:
        arch.FAMILIES.unregister("linear")
    assert "linear" not in arch.known_families()
