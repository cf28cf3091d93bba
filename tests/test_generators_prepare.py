"""generators.prepare: canonicalise, normalise, flat/token views and the exact inverse."""

from __future__ import annotations

import pytest
import torch

from generators.prepare import WeightPreparer
from weightspace.spec import apply_permutation, random_permutation, spec_for
from zoo.build.evaluate import functional_forward
from zoo.errors import ConfigError, MismatchError
from zoo.models.architectures import init_state

MLP = {"family": "mlp", "in_features": 8, "hidden": [16, 12], "out_features": 4}
CNN = {"family": "cnn", "in_channels": 1, "image_size": 8, "channels": [4, 6], "kernel_size": 3, "out_features": 5}


def _population(cfg: dict, n: int) -> dict[str, torch.Tensor]:
    states = [init_state(cfg, seed) for seed in range(n)]
    return {k: torch.stack([s[k] for s in states]) for k in states[0]}


@pytest.mark.parametrize("cfg", [MLP, CNN], ids=["mlp", "cnn"])
def test_round_trip_is_bit_exact_up_to_the_permutation(cfg: dict) -> None:
    X = _population(cfg, 6)
    prep = WeightPreparer(dtype="float64", token_size=7)
    flat = prep.fit_transform(X, config=cfg)
    assert flat.shape == (6, sum(v[0].numel() for v in X.values() if v.is_floating_point()))
    back = prep.inverse_transform(flat)
    aligned = prep.align_to_reference(X)
    for k in aligned:
        assert back[k].dtype == X[k].dtype
        assert torch.equal(back[k], aligned[k]), k
    # the aligned models compute the same functions as the originals (a permutation, nothing else)
    x = torch.randn(5, 8) if cfg["family"] == "mlp" else torch.randn(5, 1, 8, 8)
    torch.testing.assert_close(functional_forward(cfg, back, x), functional_forward(cfg, X, x), rtol=1e-5, atol=1e-5)
    # normalised: every tensor has mean 0 and std 1 over the population
    assert abs(float(flat.mean())) < 1e-6
    # token view: exact inverse, padding zero, token layers in order
    tokens = prep.to_tokens(flat)
    assert tokens.shape == (6, prep.n_tokens_, 7)
    assert torch.equal(prep.from_tokens(tokens), flat)
    assert not tokens[:, ~prep.token_mask()].any()
    assert prep.token_layer_ == sorted(prep.token_layer_)


def test_canonicalisation_undoes_random_permutations() -> None:
    X = _population(MLP, 1)
    spec = spec_for(MLP)
    perms = random_permutation(spec, X, torch.Generator().manual_seed(3), batch=5)
    permuted = apply_permutation(spec, perms, {k: v.expand(5, *v.shape[1:]) for k, v in X.items()})
    prep = WeightPreparer(refine=0, dtype="float64")
    flat = prep.fit_transform(permuted, config=MLP)
    assert torch.allclose(flat, flat[:1].expand_as(flat))  # every permuted copy lands on the reference


def test_float32_round_trip_and_state_survives_save() -> None:
    X = _population(MLP, 5)
    prep = WeightPreparer()
    flat = prep.fit_transform(X, config=MLP)
    assert flat.dtype == torch.float32
    doc, tensors = prep.state()
    again = WeightPreparer.from_state(doc, tensors)
    assert torch.equal(again.transform(X), prep.transform(X))
    back = again.inverse_transform(flat)
    for k, v in prep.align_to_reference(X).items():
        torch.testing.assert_close(back[k], v, rtol=0, atol=1e-6)


def test_bad_input() -> None:
    X = _population(MLP, 4)
    with pytest.raises(ConfigError, match="config"):
        WeightPreparer().fit(X)
    prep = WeightPreparer().fit(X, config=MLP)
    with pytest.raises(MismatchError, match="numbers per model"):
        prep.inverse_transform(torch.zeros(2, 3))
    with pytest.raises(MismatchError):
        prep.transform(_population(CNN, 2))
