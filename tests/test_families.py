"""Conformance suite over every registered architecture family (zoo.architectures.FAMILIES).

Registering a family enrols it here: its default config must build, its batched forward must equal
the per-model nn.Module, its permutation spec must round-trip and keep the function, and the hidden
activations its forward taps must be the spec's permutation groups.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from zoo.build.evaluate import functional_forward
from zoo.errors import ConfigError
from zoo.models import architectures as archs

FAMILIES = archs.FAMILIES.names()
N = 3


def _population(cfg: dict) -> tuple[dict[str, torch.Tensor], list[dict[str, torch.Tensor]]]:
    states = [archs.init_state(cfg, seed) for seed in range(N)]
    return {k: torch.stack([s[k] for s in states]) for k in states[0]}, states


def _inputs(cfg: dict, b: int = 5) -> torch.Tensor:
    return torch.randn(b, *archs.input_shape(cfg), generator=torch.Generator().manual_seed(0))


def test_builtin_families_are_registered():
    assert {"mlp", "cnn", "siren", "resnet"} <= set(FAMILIES)


@pytest.mark.parametrize("name", FAMILIES)
def test_family_declares_what_the_code_needs(name: str):
    fam = archs.get_family(name)
    cfg = archs.normalize_config({"family": name})
    assert fam.head in ("classifier", "regressor", "inr")
    assert archs.is_classifier(cfg) == (fam.head == "classifier")
    shape = archs.input_shape(cfg)
    assert len(shape) in (1, 3) and all(d > 0 for d in shape)
    assert isinstance(archs.build_module(cfg), nn.Module)
    assert archs.activation_floats(cfg) > 0


@pytest.mark.parametrize("name", FAMILIES)
def test_batched_forward_equals_per_model_modules(name: str):
    cfg = archs.normalize_config({"family": name})
    stacked, states = _population(cfg)
    x = _inputs(cfg)
    out = functional_forward(cfg, stacked, x)
    assert out.shape[:2] == (N, x.shape[0])
    for i, state in enumerate(states):
        module = archs.instantiate(cfg, state).eval()
        with torch.no_grad():
            torch.testing.assert_close(out[i], module(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", FAMILIES)
def test_spec_round_trips_and_permutations_keep_the_function(name: str):
    from weightspace.spec import apply_permutation, invert_permutation, random_permutation, spec_for

    cfg = archs.normalize_config({"family": name})
    stacked, _ = _population(cfg)
    spec = spec_for(cfg)
    assert set(spec.axes) == set(archs.param_shapes(cfg))
    perms = random_permutation(spec, stacked, torch.Generator().manual_seed(1), batch=N)
    permuted = apply_permutation(spec, perms, stacked)
    assert any(not torch.equal(permuted[k], stacked[k]) for k in stacked)  # something moved
    back = apply_permutation(spec, invert_permutation(perms), permuted)
    for k in stacked:
        assert torch.equal(back[k], stacked[k]), k
    x = _inputs(cfg)
    torch.testing.assert_close(functional_forward(cfg, permuted, x), functional_forward(cfg, stacked, x),
                               rtol=1e-4, atol=1e-5)  # fmt: skip


@pytest.mark.parametrize("name", FAMILIES)
def test_forward_taps_are_the_spec_permutation_groups(name: str):
    from analysis.align import hidden_activations
    from weightspace.spec import spec_for

    cfg = archs.normalize_config({"family": name})
    stacked, _ = _population(cfg)
    acts = hidden_activations(cfg, stacked, _inputs(cfg))
    spec = spec_for(cfg)
    assert set(acts) == set(spec.perms)
    sizes = spec.sizes(stacked)
    for perm, a in acts.items():
        assert a.shape[0] == N and a.shape[2] == sizes[perm], perm


def test_a_new_family_is_one_registration():
    """A family without a declared spec gets a traced one; without a forward it is refused for batched use."""
    from weightspace.spec import spec_for

    @archs.register_architecture("two_layer", fields={"width": (4, archs.positive_int)}, head="regressor",
                                 input_shape=lambda c: (3,))  # fmt: skip
    def _build(cfg: dict) -> nn.Module:
        return nn.Sequential(nn.Linear(3, cfg["width"]), nn.ReLU(), nn.Linear(cfg["width"], 1))

    try:
        cfg = {"family": "two_layer", "width": 5}
        assert archs.input_shape(cfg) == (3,) and not archs.is_classifier(cfg)
        spec = spec_for(cfg)  # traced with torch.fx
        assert spec.axes["0.weight"][0] is not None and spec.axes["0.weight"][0] == spec.axes["2.weight"][1]
        with pytest.raises(ConfigError, match="no batched forward for architecture family 'two_layer'"):
            functional_forward(cfg, _population(cfg)[0], torch.randn(2, 3))
    finally:
        archs.FAMILIES.unregister("two_layer")
    with pytest.raises(ConfigError, match="unknown architecture family 'two_layer'"):
        archs.get_family("two_layer")
