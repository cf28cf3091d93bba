"""Permutation specs: the declared tables, fx tracing, applying and drawing permutations."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from weightspace.spec import (
    PermutationSpec,
    apply_permutation,
    conv,
    dense,
    identity_permutation,
    invert_permutation,
    norm,
    random_permutation,
    spec_for,
    trace_spec,
)
from zoo.errors import ConfigError, MismatchError
from zoo.models.architectures import build_module, init_state, instantiate, param_shapes

CONFIGS = {
    "mlp": {"family": "mlp", "in_features": 6, "hidden": [7, 5], "out_features": 3},
    "siren": {"family": "siren", "in_features": 2, "hidden": [6, 6], "out_features": 1},
    "cnn": {"family": "cnn", "channels": [4, 5], "out_features": 3},
    "cnn_bn": {"family": "cnn", "channels": [4, 5], "batchnorm": True, "pool": "max", "out_features": 3},
    "resnet": {"family": "resnet", "width": 3, "blocks": [2, 1, 1], "out_features": 3},
}


def inputs(cfg: dict, n: int = 5) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    if cfg["family"] in ("mlp", "siren"):
        return torch.randn(n, cfg["in_features"], generator=g)
    return torch.randn(n, 1, 8, 8, generator=g)


def jitter_bn(state: dict, seed: int = 0) -> dict:
    """Non-trivial BatchNorm statistics and affine parameters (fresh ones are 0/1 and hide mistakes)."""
    g = torch.Generator().manual_seed(seed)
    out = dict(state)
    for k, v in state.items():
        if k.endswith(("running_mean", "bias")) and v.dim() == 1:
            out[k] = v + 0.1 * torch.randn(v.shape, generator=g)
        elif k.endswith("running_var") or (k.endswith("weight") and v.dim() == 1):
            out[k] = v * (0.5 + torch.rand(v.shape, generator=g))
    return out


def partition(spec: PermutationSpec) -> list[list[tuple[str, int]]]:
    """The spec up to the names of its permutations."""
    return sorted(sorted(v) for v in spec.perm_to_axes.values())


# ------------------------------------------------------------------------------- declared specs
def test_mlp_spec_is_the_expected_table():
    spec = spec_for(CONFIGS["mlp"])
    assert spec.axes == {
        "layers.0.weight": ("layers.0", None),
        "layers.0.bias": ("layers.0",),
        "layers.1.weight": ("layers.1", "layers.0"),
        "layers.1.bias": ("layers.1",),
        "layers.2.weight": (None, "layers.1"),
        "layers.2.bias": (None,),
    }
    assert spec.sizes(param_shapes(CONFIGS["mlp"])) == {"layers.0": 7, "layers.1": 5}


def test_cnn_batchnorm_tensors_follow_their_conv():
    spec = spec_for(CONFIGS["cnn_bn"])
    for i in range(2):
        assert spec.axes[f"convs.{i}.weight"][0] == f"convs.{i}"
        for t in ("weight", "bias", "running_mean", "running_var"):
            assert spec.axes[f"norms.{i}.{t}"] == (f"convs.{i}",)
        assert spec.axes[f"norms.{i}.num_batches_tracked"] == ()
    assert spec.axes["convs.1.weight"] == ("convs.1", "convs.0", None, None)
    assert spec.axes["head.weight"] == (None, "convs.1")
    assert "convs.0.bias" not in spec.axes  # BN convs have no bias


def test_resnet_spec_ties_residual_streams():
    spec = spec_for(CONFIGS["resnet"])
    ax = spec.axes
    # stage 0's stream: the stem and every block's output side
    assert ax["stem.conv.weight"][0] == ax["stem.bn.weight"][0] == "stages.0"
    for j in range(2):
        assert ax[f"stages.0.{j}.conv2.weight"][0] == ax[f"stages.0.{j}.bn2.running_mean"][0] == "stages.0"
        assert ax[f"stages.0.{j}.conv1.weight"][1] == "stages.0"  # blocks read the stream
    # stage 1: the first block's shortcut and conv2 write the new stream and read the old one
    assert ax["stages.1.0.shortcut.conv.weight"][:2] == ("stages.1", "stages.0")
    assert ax["stages.1.0.shortcut.bn.weight"] == ("stages.1",)
    assert ax["stages.1.0.conv2.weight"][0] == "stages.1"
    assert ax["stages.1.0.conv1.weight"][:2] == ("stages.1.0.conv1", "stages.0")
    assert ax["stages.1.0.conv2.weight"][1] == "stages.1.0.conv1"
    assert ax["head.weight"] == (None, "stages.2")
    streams = [p for p in spec.perms if p.count(".") == 1]
    assert streams == ["stages.0", "stages.1", "stages.2"]


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_traced_spec_matches_declared_spec(name):
    cfg = CONFIGS[name]
    declared = spec_for(cfg)
    traced = spec_for(build_module(cfg))
    assert set(declared.axes) == set(param_shapes(cfg)) == set(traced.axes)
    assert partition(declared) == partition(traced)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_random_permutation_keeps_the_function(name):
    cfg = CONFIGS[name]
    state = jitter_bn(init_state(cfg, 1))
    spec = spec_for(cfg)
    perms = random_permutation(spec, state, torch.Generator().manual_seed(3))
    permuted = apply_permutation(spec, perms, state)
    assert any(not torch.equal(permuted[k], state[k]) for k in state)
    x = inputs(cfg)
    with torch.no_grad():
        torch.testing.assert_close(instantiate(cfg, permuted)(x), instantiate(cfg, state)(x), rtol=1e-5, atol=1e-5)
    back = apply_permutation(spec, invert_permutation(perms), permuted)
    assert all(torch.equal(back[k], state[k]) for k in state)


def test_stacked_population_with_per_model_permutations():
    cfg = CONFIGS["cnn_bn"]
    spec = spec_for(cfg)
    states = [jitter_bn(init_state(cfg, s), s) for s in range(3)]
    stacked = {k: torch.stack([s[k] for s in states]) for k in states[0]}
    perms = random_permutation(spec, stacked, torch.Generator().manual_seed(0), batch=3)
    assert perms["convs.0"].shape == (3, 4)
    out = apply_permutation(spec, perms, stacked)
    for i, s in enumerate(states):
        one = apply_permutation(spec, {p: v[i] for p, v in perms.items()}, s)
        assert all(torch.equal(out[k][i], one[k]) for k in s)
    shared = apply_permutation(spec, {p: v[0] for p, v in perms.items()}, stacked)  # one perm for all
    assert torch.equal(shared["convs.1.weight"][2], apply_permutation(spec, {p: v[0] for p, v in perms.items()}, states[2])["convs.1.weight"])
    ident = identity_permutation(spec, stacked, batch=3)
    assert all(torch.equal(apply_permutation(spec, ident, stacked)[k], stacked[k]) for k in stacked)


# ------------------------------------------------------------------------------- tracing
class Gated(nn.Module):
    """Linear -> LayerNorm -> GELU, a residual add of two Linear branches, then a head."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(4, 6)
        self.ln = nn.LayerNorm(6)
        self.a = nn.Linear(6, 6)
        self.head = nn.Linear(6, 2)

    def forward(self, x):
        h = torch.nn.functional.gelu(self.ln(self.inp(x)))
        h = h + torch.relu(self.a(h))
        return self.head(h)


def test_trace_ties_a_residual_add_and_keeps_the_function():
    m = Gated()
    spec = trace_spec(m)
    assert spec.axes["inp.weight"] == ("inp", None)
    assert spec.axes["ln.weight"] == ("inp",)
    assert spec.axes["a.weight"] == ("inp", "inp")  # the add ties a's outputs to the stream
    assert spec.axes["head.weight"] == (None, "inp")
    state = {k: v.detach().clone() for k, v in m.state_dict().items()}
    perms = random_permutation(spec, state, torch.Generator().manual_seed(0))
    x = torch.randn(3, 4)
    with torch.no_grad():
        y = m(x)
        m.load_state_dict(apply_permutation(spec, perms, state))
        torch.testing.assert_close(m(x), y, rtol=1e-5, atol=1e-6)


class WithAttention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(4, 4)
        self.att = nn.MultiheadAttention(4, 1)

    def forward(self, x):
        h = self.proj(x)
        return self.att(h, h, h)[0]


class FlattenFeatureMap(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c = nn.Conv2d(1, 3, 3, padding=1)
        self.fc = nn.Linear(3 * 8 * 8, 2)

    def forward(self, x):
        return self.fc(self.c(x).flatten(1))


class Concat(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.fc = nn.Linear(4, 3), nn.Linear(4, 3), nn.Linear(6, 2)

    def forward(self, x):
        return self.fc(torch.cat([self.a(x), self.b(x)], dim=1))


@pytest.mark.parametrize("module", [WithAttention, FlattenFeatureMap, Concat], ids=lambda c: c.__name__)
def test_trace_refuses_what_it_cannot_derive(module):
    with pytest.raises(ConfigError, match="(?i)declare the (permutation )?spec by hand"):
        spec_for(module())


def test_global_pool_then_flatten_is_fine():
    m = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    spec = spec_for(m)
    assert spec.axes["1.running_var"] == ("0",) and spec.axes["1.num_batches_tracked"] == ()
    assert spec.axes["5.weight"] == (None, "0")


# ------------------------------------------------------------------------------- by hand, errors
def test_hand_declared_spec_and_json_round_trip():
    spec = PermutationSpec({**dense("fc1", None, "P1"), **norm("bn", "P1"), **conv("c", "P1", None, bias=False)})
    assert spec.perms == ["P1"]
    assert spec.axes["c.weight"] == (None, "P1", None, None)
    assert PermutationSpec.from_dict(spec.to_dict()) == spec
    assert hash(PermutationSpec.from_dict(spec.to_dict())) == hash(spec)  # usable as a cache key
    assert "P1" in repr(spec)


def test_errors_are_zoo_errors():
    spec = spec_for(CONFIGS["mlp"])
    state = init_state(CONFIGS["mlp"], 0)
    with pytest.raises(ConfigError, match="unknown permutation"):
        apply_permutation(spec, {"nope": torch.arange(3)}, state)
    with pytest.raises(MismatchError, match="length"):
        apply_permutation(spec, {"layers.0": torch.arange(3)}, state)
    with pytest.raises(MismatchError, match="not in the permutation spec"):
        apply_permutation(spec, {}, {**state, "extra": torch.zeros(2)})
    other = init_state({**CONFIGS["mlp"], "hidden": [7, 4]}, 0)
    with pytest.raises(MismatchError, match="different lengths"):
        spec.sizes({**state, "layers.2.weight": other["layers.2.weight"]})
    with pytest.raises(ConfigError, match="no permutation spec for architecture family 'raw'"):
        spec_for({"family": "raw", "tensors": {}})
    with pytest.raises(ConfigError, match="unknown architecture family"):
        spec_for({"family": "transformer"})
    with pytest.raises(ConfigError, match="permutation names"):
        PermutationSpec({"w": ("P", 3)})
