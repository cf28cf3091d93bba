"""Denoising diffusion on canonicalised weights: DDPM training, DDPM and DDIM sampling with diffusers'
schedulers (the scheduler knows nothing of the network; a fresh one is made for every sampling run, so
no step counter leaks between runs).

Training: ``x_t = DDPMScheduler.add_noise(x0, eps, t)`` at ``t ~ U{0..T-1}``; the denoiser predicts
``v = sqrt(ab) eps - sqrt(1 - ab) x0`` (default; ``"epsilon"`` and ``"sample"`` too). Epsilon
prediction makes few-step "trailing" DDIM divide its first step's error by ``sqrt(ab_T)`` (~0.006):
measured on a 2-D toy, a few samples land at |x| ~ 100; on digits-mlp every sample exploded. Sampling: ``ddim`` (deterministic,
``eta=0``, "trailing" timestep spacing so that few steps start from pure noise) or ``ddpm``
(ancestral). ``clip_sample`` is off: prepared weights are standardised, not in [-1, 1].

    gen = DiffusionGenerator(train_steps=1500).fit(X, config=cfg)
    new = gen.sample(100, sampler="ddim", steps=50)        # gen.nfe_ == 50
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
from torch import Tensor

from generators.base import Generator
from generators.registry import GENERATORS
from zoo.errors import ConfigError

__all__ = ["DiffusionGenerator", "DIFFUSION_SAMPLERS", "make_scheduler"]

DiffusionSampler = Literal["ddim", "ddpm"]
DIFFUSION_SAMPLERS: tuple[str, ...] = get_args(DiffusionSampler)


def make_scheduler(kind: str, *, train_timesteps: int = 1000, beta_schedule: str = "linear",
                   prediction_type: str = "epsilon") -> object:  # fmt: skip
    """A fresh diffusers scheduler: ``ddpm`` (also the training noise schedule) or ``ddim`` ("trailing")."""
    from diffusers import DDIMScheduler, DDPMScheduler

    common = {"num_train_timesteps": int(train_timesteps), "beta_schedule": beta_schedule, "clip_sample": False,
              "prediction_type": prediction_type}  # fmt: skip
    if kind == "ddpm":
        return DDPMScheduler(**common, variance_type="fixed_small")
    if kind == "ddim":
        return DDIMScheduler(**common, timestep_spacing="trailing", set_alpha_to_one=False)
    raise ConfigError(f"unknown diffusion sampler {kind!r}; valid: {', '.join(DIFFUSION_SAMPLERS)}")


@GENERATORS.register("diffusion")
class DiffusionGenerator(Generator):
    """DDPM/DDIM weight generator (see the module docstring; the options are :class:`FlowGenerator`'s
    plus the noise schedule: ``train_timesteps``, ``beta_schedule``, ``prediction_type``)."""

    name = "diffusion"

    def __init__(
        self,
        denoiser: str = "mlp",
        denoiser_params: dict | None = None,
        train_steps: int | None = None,
        batch_size: int = 64,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        cond_dropout: float = 0.1,
        ema: float = 0.995,
        prepare: dict | None = None,
        condition_kind: str | None = None,
        sampler: str = "ddim",
        steps: int = 50,
        train_timesteps: int = 1000,
        beta_schedule: str = "linear",
        prediction_type: str = "v_prediction",
        latent_dim: int | None = None,
        seed: int = 0,
    ) -> None:
        denoiser_params = denoiser_params or {}
        prepare = prepare or {}
        self._store_params(locals())
        if sampler not in DIFFUSION_SAMPLERS:
            raise ConfigError(f"unknown diffusion sampler {sampler!r}; valid: {', '.join(DIFFUSION_SAMPLERS)}")
        if prediction_type not in ("epsilon", "sample", "v_prediction"):
            raise ConfigError(f"prediction_type must be epsilon, sample or v_prediction, not {prediction_type!r}")

    def _scheduler(self, kind: str) -> object:
        return make_scheduler(kind, train_timesteps=self.train_timesteps, beta_schedule=self.beta_schedule,
                              prediction_type=self.prediction_type)  # fmt: skip

    def _setup(self) -> None:
        self.noise_schedule_ = self._scheduler("ddpm")

    def _loss(self, x1: Tensor, cond: Tensor | None, drop: Tensor | None, gen: torch.Generator) -> Tensor:
        sched = self.noise_schedule_
        t = torch.randint(0, int(self.train_timesteps), (x1.shape[0],), generator=gen)
        eps = torch.randn(x1.shape, generator=gen)
        xt = sched.add_noise(x1, eps, t)  # type: ignore[attr-defined]
        out = self.net_(xt, t.float() / self.train_timesteps, cond, drop)
        if self.prediction_type == "epsilon":
            target = eps
        elif self.prediction_type == "sample":
            target = x1
        else:
            target = sched.get_velocity(x1, eps, t)  # type: ignore[attr-defined]
        return (out - target).pow(2).mean()

    def default_steps(self, sampler: str) -> int:
        return int(self.train_timesteps) if sampler == "ddpm" and int(self.steps) <= 0 else int(self.steps)

    def _sample_flat(self, noise: Tensor, cond: Tensor | None, guidance: float, steps: int, sampler: str,
                     gen: torch.Generator) -> tuple[Tensor, int]:  # fmt: skip
        sched = self._scheduler(sampler)
        sched.set_timesteps(min(steps, int(self.train_timesteps)))  # type: ignore[attr-defined]
        x, b, nfe = noise * sched.init_noise_sigma, noise.shape[0], 0  # type: ignore[attr-defined]
        for t in sched.timesteps:  # type: ignore[attr-defined]
            out = self._velocity(x, torch.full((b,), float(t) / self.train_timesteps), cond, guidance)
            nfe += 1
            kw = {"eta": 0.0} if sampler == "ddim" else {"generator": gen}
            x = sched.step(out, t, x, **kw).prev_sample  # type: ignore[attr-defined]
        return x, nfe
