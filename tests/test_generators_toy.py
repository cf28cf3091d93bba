"""Generators on toy distributions: samplers, schedulers, conditioning, guidance, save/load."""

from __future__ import annotations

import pytest
import torch

from generators.base import load_generator_state
from generators.diffusion import DIFFUSION_SAMPLERS, make_scheduler
from generators.flow import FLOW_SAMPLERS, ode_sample
from generators.registry import DENOISERS, GENERATORS, make_generator
from weightspace.spec import PermutationSpec
from zoo.errors import ConfigError

MODES = torch.tensor([[2.0, 2.0], [-2.0, 2.0], [-2.0, -2.0], [2.0, -2.0]])
SPEC = PermutationSpec({"x": (None,)})
NET = {"width": 96, "depth": 2}


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Small networks train several times faster on one thread (and do not fight the other tests)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _mixture(n: int = 512, seed: int = 0) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    k = torch.randint(0, 4, (n,), generator=g)
    return {"x": MODES[k] + 0.15 * torch.randn(n, 2, generator=g)}, k


def _mode_stats(x: torch.Tensor) -> tuple[float, torch.Tensor, torch.Tensor]:
    d = torch.cdist(x, MODES)
    near, which = d.min(1)
    frac = float((near < 0.6).float().mean())
    share = torch.bincount(which, minlength=4).float() / len(x)
    return frac, share, which


def _fit(method: str, condition=None, **kw):
    X, _ = _mixture()  # the same draw as the labels of callers that condition on the mode
    params = {"denoiser_params": NET, "train_steps": 800, "batch_size": 128, "lr": 2e-3,
              "prepare": {"canonicalize": False}, "latent_dim": 0, **kw}  # the samplers on the raw coordinates
    return make_generator(method, **params).fit(X, spec=SPEC, condition=condition)


def test_registries_list_the_families_with_a_clear_error() -> None:
    assert {"flow", "diffusion"} <= set(GENERATORS.names())
    assert {"mlp", "transformer"} <= set(DENOISERS.names())
    with pytest.raises(ConfigError, match="valid generators: diffusion, flow"):
        GENERATORS.get("flwo")
    assert set(FLOW_SAMPLERS) == {"euler", "heun", "midpoint"} and set(DIFFUSION_SAMPLERS) == {"ddim", "ddpm"}


def test_ode_samplers_integrate_a_known_flow() -> None:
    # dx/dt = x: exact solution x0 * e; second-order samplers are much closer than Euler
    x0 = torch.ones(3, 1)
    errs = {s: float((ode_sample(lambda x, t: x, x0, 10, s)[0] - torch.e).abs().max()) for s in FLOW_SAMPLERS}
    assert errs["euler"] > 0.1 and errs["heun"] < 0.01 and errs["midpoint"] < 0.01
    assert ode_sample(lambda x, t: x, x0, 10, "heun")[1] == 20


def test_schedulers_do_not_clip_and_trailing_ddim_starts_at_pure_noise() -> None:
    ddim = make_scheduler("ddim")
    ddim.set_timesteps(5)
    assert int(ddim.timesteps[0]) == 999 and not ddim.config.clip_sample
    assert ddim.config.timestep_spacing == "trailing"
    # one DDIM step from t=999 with the true epsilon of a sample far outside [-1, 1] recovers it unclipped
    x0 = torch.full((2, 3), 5.0)
    eps = torch.randn(2, 3)
    xt = make_scheduler("ddpm").add_noise(x0, eps, torch.tensor([999, 999]))
    pred = ddim.step(eps, ddim.timesteps[0], xt, eta=0.0).pred_original_sample
    torch.testing.assert_close(pred, x0, rtol=1e-3, atol=1e-3)


@pytest.fixture(scope="module")
def flow():
    return _fit("flow")


@pytest.fixture(scope="module")
def diffusion():
    return _fit("diffusion")


@pytest.mark.parametrize("sampler", ["heun", "euler"])
def test_flow_samples_the_modes_of_a_gaussian_mixture(flow, sampler: str) -> None:
    gen = flow
    x = gen.sample(400, sampler=sampler, steps=20, seed=1)["x"]
    frac, share, _ = _mode_stats(x)
    assert frac > 0.85, frac
    assert share.min() > 0.12, share  # every mode is covered
    assert gen.nfe_ == (40 if sampler == "heun" else 20)


@pytest.mark.parametrize("sampler,steps", [("ddim", 20), ("ddpm", 100)])
def test_diffusion_samples_the_modes(diffusion, sampler: str, steps: int) -> None:
    gen = diffusion
    x = gen.sample(400, sampler=sampler, steps=steps, seed=2)["x"]
    frac, share, _ = _mode_stats(x)
    assert frac > 0.7, frac
    assert float(x.abs().max()) < 6.0  # v-prediction: no sample explodes at the first (t = 999) step
    assert share.min() > 0.12, share
    assert gen.nfe_ == steps


def test_class_conditioning_with_guidance_and_save_load() -> None:
    X, k = _mixture()
    gen = _fit("flow", condition=k.numpy())
    for mode in (0, 2):
        x = gen.sample(200, condition=mode, guidance=2.0, seed=3)["x"]
        _, _, which = _mode_stats(x)
        assert float((which == mode).float().mean()) > 0.9
    assert gen.nfe_ == 80  # guided: conditional + unconditional pass per step
    doc, tensors = gen.state()
    again = load_generator_state(doc, tensors)
    torch.testing.assert_close(again.sample(50, condition=1, seed=4)["x"], gen.sample(50, condition=1, seed=4)["x"])
    with pytest.raises(ConfigError, match="not in the training set"):
        gen.sample(5, condition=7)


def test_scalar_condition_range_is_checked() -> None:
    X, _ = _mixture(64)
    gen = make_generator("diffusion", denoiser_params={"width": 32, "depth": 1}, train_steps=5,
                         prepare={"canonicalize": False}).fit(X, spec=SPEC, condition=X["x"][:, 0].numpy())
    lo, hi = gen.cond_info_["min"], gen.cond_info_["max"]
    assert gen.sample(3, condition=(lo + hi) / 2)["x"].shape == (3, 2)
    with pytest.raises(ConfigError, match="outside the trained range"):
        gen.sample(3, condition=hi + 1.0)
    with pytest.raises(ConfigError, match="at least 16"):
        make_generator("flow").fit({"x": X["x"][:10]}, spec=SPEC)


def test_transformer_denoiser_maps_flat_vectors_through_tokens() -> None:
    net = DENOISERS.get("transformer")(10, layout=[7, 3], token_size=4, width=16, depth=1, heads=2)
    assert net.n_tokens == 3
    torch.nn.init.normal_(net.out.weight)
    x = torch.randn(5, 10)
    out = net(x, torch.rand(5))
    assert out.shape == (5, 10)
    assert torch.isfinite(out).all()
