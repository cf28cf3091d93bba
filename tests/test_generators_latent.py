"""generators.latent: the PCA latent (exactness, whitening, persistence) and generators that learn in it."""

from __future__ import annotations

import pytest
import torch

from generators.base import load_generator_state
from generators.latent import PCALatent
from generators.registry import make_generator
from tests.test_generators_toy import _one_thread  # noqa: F401  (autouse: small networks train faster on one thread)
from weightspace.spec import PermutationSpec
from zoo.errors import ConfigError, MismatchError


def _low_rank(n: int = 40, d: int = 30, rank: int = 3, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    basis = torch.linalg.qr(torch.randn(d, rank, generator=g, dtype=torch.float64))[0].T  # [rank, d] orthonormal
    scales = torch.tensor([5.0, 2.0, 0.5], dtype=torch.float64)[:rank]
    return 1.5 + (torch.randn(n, rank, generator=g, dtype=torch.float64) * scales) @ basis


def test_full_rank_latent_reproduces_the_training_vectors_and_whitens_them() -> None:
    full = torch.randn(20, 30, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    lat = PCALatent(dim=100).fit(full)
    assert lat.dim_ == 19  # capped at N - 1
    torch.testing.assert_close(lat.inverse_transform(lat.transform(full)).double(), full, rtol=0, atol=1e-5)
    x = _low_rank()
    assert PCALatent(dim=100).fit(x).dim_ == 3  # and at the rank: no direction without variance
    # the three real directions carry everything, with unit variance after whitening, in order of variance
    lat3 = PCALatent(dim=3).fit(x)
    assert lat3.explained_ == pytest.approx(1.0, abs=1e-9)
    z3 = lat3.transform(x).double()
    torch.testing.assert_close(z3.std(0), torch.ones(3, dtype=torch.float64), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(z3.mean(0), torch.zeros(3, dtype=torch.float64), rtol=0, atol=1e-5)
    torch.testing.assert_close(lat3.scale_, torch.tensor([5.0, 2.0, 0.5], dtype=torch.float64), rtol=0.35, atol=0)
    torch.testing.assert_close(lat3.inverse_transform(z3.float()).double(), x, rtol=0, atol=1e-4)
    # two directions: the third is dropped, and the share of variance kept says so
    lat2 = PCALatent(dim=2).fit(x)
    assert 0.95 < lat2.explained_ < 1.0


def test_latent_state_round_trips_and_bad_input_is_refused() -> None:
    x = _low_rank()
    lat = PCALatent(dim=3).fit(x)
    doc, tensors = lat.state()
    again = PCALatent.from_state(doc, tensors)
    assert torch.equal(again.transform(x), lat.transform(x))
    with pytest.raises(MismatchError, match="do not fit this latent"):
        lat.transform(x[:, :5])
    with pytest.raises(ConfigError, match="not fitted"):
        PCALatent(3).transform(x)
    with pytest.raises(ConfigError, match="positive integer"):
        PCALatent(0).fit(x)
    with pytest.raises(MismatchError, match="damaged"):
        PCALatent.from_state(doc, {**tensors, "scale": tensors["scale"][:2]})


@pytest.mark.parametrize("method", ["flow", "diffusion"])
def test_a_generator_in_the_latent_samples_inside_the_training_span(method: str) -> None:
    x = _low_rank(n=64).float()
    spec = PermutationSpec({"w": (None,)})
    gen = make_generator(method, latent_dim=3, train_steps=300, batch_size=64, lr=2e-3,
                         denoiser_params={"width": 64, "depth": 1}, prepare={"canonicalize": False}).fit({"w": x}, spec=spec)  # fmt: skip
    assert gen.space_dim == 3 and gen.net_.inp.in_features == 3
    s = gen.sample(200, seed=1, steps=10)["w"].double()
    # samples live in the 3-D span of the training set: nothing orthogonal to it
    centred = s - x.double().mean(0)
    basis = gen.latent_.components_  # in the normalised space: same span, rescaled per tensor by one scalar
    inside = centred @ basis.T @ basis
    assert float((centred - inside).norm() / centred.norm()) < 1e-3
    # and spread like it (the generator learned the scales, not the identity)
    ratio = s.std(0).norm() / x.double().std(0).norm()
    assert 0.6 < float(ratio) < 1.4, float(ratio)
    # a lower temperature draws nearer the centre
    cold = gen.sample(200, seed=1, steps=10, temperature=0.3)["w"].double()
    assert float((cold - x.double().mean(0)).norm(dim=1).median()) < float(centred.norm(dim=1).median())
    again = load_generator_state(*gen.state())
    torch.testing.assert_close(again.sample(5, seed=2, steps=4)["w"], gen.sample(5, seed=2, steps=4)["w"])
    with pytest.raises(ConfigError, match="temperature"):
        gen.sample(2, temperature=0.0)


def test_the_default_latent_depends_on_the_denoiser() -> None:
    x = {"w": _low_rank(n=40, d=50, rank=3).float()}
    spec = PermutationSpec({"w": (None,)})
    fast = {"train_steps": 2, "prepare": {"canonicalize": False}}
    mlp = make_generator("flow", **fast).fit(x, spec=spec)
    assert mlp.latent_dim is None and mlp.latent_.dim_ == 3  # 32 asked, capped at the rank
    tok = make_generator("flow", denoiser="transformer", denoiser_params={"width": 16, "depth": 1, "heads": 2},
                         **fast).fit(x, spec=spec)  # fmt: skip
    assert tok.latent_ is None and tok.space_dim == 50  # the transformer reads the token view
    assert make_generator("flow", latent_dim=0, **fast).fit(x, spec=spec).latent_ is None


@pytest.mark.parametrize("method", ["flow", "diffusion"])
def test_a_scalar_condition_defaults_to_a_larger_latent_and_longer_training(method: str) -> None:
    x = {"w": _low_rank(n=100, d=80, rank=3).float() + 0.01 * torch.randn(100, 80, generator=torch.Generator().manual_seed(1))}
    spec = PermutationSpec({"w": (None,)})
    fast = {"prepare": {"canonicalize": False}, "denoiser_params": {"width": 8, "depth": 1}}
    acc = torch.linspace(0.5, 0.9, 100).numpy()
    scalar = make_generator(method, train_steps=2, **fast).fit(x, spec=spec, condition=acc)
    plain = make_generator(method, train_steps=2, **fast).fit(x, spec=spec)
    label = make_generator(method, train_steps=2, **fast).fit(x, spec=spec, condition=(torch.arange(100) % 3).numpy())
    assert scalar.latent_.dim_ == 64 and plain.latent_.dim_ == 32 and label.latent_.dim_ == 32  # 99 directions available
    assert make_generator(method, latent_dim=16, train_steps=2, **fast).fit(x, spec=spec, condition=acc).latent_.dim_ == 16
    unset = make_generator(method, **fast)
    assert unset.train_steps is None and unset.resolved_train_steps() == 1500
    unset.cond_kind_ = "scalar"
    assert unset.resolved_train_steps() == 3000
    unset.cond_kind_ = "class"
    assert unset.resolved_train_steps() == 1500
    assert scalar.resolved_train_steps() == 2  # an explicit value wins
    again = load_generator_state(*scalar.state())
    assert again.train_steps == 2 and again.latent_.dim_ == 64 and again.cond_kind_ == "scalar"
