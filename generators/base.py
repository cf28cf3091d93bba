"""The generator contract (scikit-learn style) and the training loop the families share.

* configuration is only the constructor's arguments (:meth:`Generator.get_params`), JSON-able;
* ``fit(X, *, config, condition=None, spec=None, align=None)`` returns ``self``; learned state ends in ``_``
  (``prep_``: the :class:`~generators.prepare.WeightPreparer`, ``latent_``: the
  :class:`~generators.latent.PCALatent` the denoiser works in when ``latent_dim > 0``, ``net_``: the
  denoiser);
* ``sample(n, condition=None, guidance=1.0, steps=None, seed=0, temperature=1.0)`` returns a stacked population
  ``{name: [n, *shape]}`` of the architecture it was fitted on; ``nfe_`` is the number of network
  evaluations per sample of the last call;
* :meth:`Generator.state` / :func:`load_generator_state` round-trip a fitted generator through JSON +
  tensors (the zoo stores it as a model, :func:`generators.api.store_generator`).

A family (flow matching, diffusion) implements ``_loss(x1, cond, drop, gen)`` and ``_sample_flat(...)``;
the sampler (ODE steps, diffusers' schedulers) stays apart from the network.

Conditioning: ``condition`` is one value per training model: floats (``scalar``: an accuracy, a
hyperparameter; normalised to [0, 1] over the trained range, sampling outside it is refused) or
integer classes (``class``: the digit an INR draws). Rows have their condition dropped with
probability ``cond_dropout`` in training, and sampling mixes ``uncond + guidance * (cond - uncond)``
(classifier-free guidance; ``guidance=1`` is the plain conditional model).
"""

from __future__ import annotations

import inspect
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from generators.latent import PCALatent
from generators.prepare import AlignFn, WeightPreparer
from generators.registry import DENOISERS
from weightspace.spec import PermutationSpec
from weightspace.views import check_stacked
from zoo.errors import ConfigError, CorruptFileError, MismatchError

__all__ = ["Generator", "load_generator_state", "MIN_MODELS"]

#: The fewest training models a generator accepts.
MIN_MODELS = 16
#: ``latent_dim=None``: this many principal components, except for denoisers that read the token view.
DEFAULT_LATENT_DIM = 32
#: ... and this many for a generator conditioned on a scalar (an accuracy, a hyperparameter): the top 32
#: components of a mixed population keep what separates good from bad models, not what makes the best
#: ones best (measured on digits-mlp: 13-18% of the top-decile models stay there projected on 32, 22-29%
#: on 64), and the top-decile hit rate of accuracy-conditioned flows went from 6-17% (32 components, 1,500
#: steps) to 21-47% with no near-copies (docs/benchmarks.md).
SCALAR_CONDITION_LATENT_DIM = 64
#: ``train_steps=None``: this many optimiser steps, and :data:`SCALAR_CONDITION_TRAIN_STEPS` with a scalar
#: condition (one distribution per condition value is more to learn; 1,500 steps in 64 components hit 11-21%).
DEFAULT_TRAIN_STEPS = 1500
SCALAR_CONDITION_TRAIN_STEPS = 3000
TOKEN_DENOISERS = ("transformer",)
Stacked = Mapping[str, Tensor]


class Generator:
    """Base class of the weight generators (see the module docstring)."""

    name: ClassVar[str] = ""
    denoiser: str
    denoiser_params: dict
    train_steps: int | None
    batch_size: int
    lr: float
    weight_decay: float
    cond_dropout: float
    ema: float
    prepare: dict
    condition_kind: str | None
    latent_dim: int | None
    seed: int

    def _store_params(self, params: Mapping[str, Any]) -> None:
        for k in inspect.signature(type(self).__init__).parameters:
            if k != "self":
                v = params[k]
                setattr(self, k, list(v) if isinstance(v, tuple) else (dict(v) if isinstance(v, Mapping) else v))

    def get_params(self) -> dict[str, Any]:
        """The constructor's arguments (the configuration)."""
        return {p: getattr(self, p) for p in inspect.signature(type(self).__init__).parameters if p != "self"}

    def clone(self) -> Generator:
        return type(self)(**json.loads(json.dumps(self.get_params())))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.get_params().items())})"

    @property
    def fitted(self) -> bool:
        return hasattr(self, "net_")

    def _check_fitted(self) -> None:
        if not self.fitted:
            raise ConfigError(f"generator {self.name!r} is not fitted yet; call fit(X, config=...) first")

    # -- conditions --------------------------------------------------------------------------------

    def _fit_condition(self, condition: Sequence[Any] | None, n: int) -> Tensor | None:
        if condition is None:
            self.cond_kind_, self.cond_info_ = "none", {}
            return None
        c = np.asarray(condition)
        if c.shape != (n,):
            raise MismatchError(f"{n} models but a condition of shape {c.shape}; give one value per model")
        kind = self.condition_kind or ("class" if np.issubdtype(c.dtype, np.integer) else "scalar")
        if kind == "class":
            classes = sorted(int(v) for v in np.unique(c))
            self.cond_kind_, self.cond_info_ = "class", {"classes": classes}
            index = {v: i for i, v in enumerate(classes)}
            return torch.tensor([index[int(v)] for v in c], dtype=torch.float32)
        if kind != "scalar":
            raise ConfigError(f"condition_kind must be 'scalar' or 'class', not {kind!r}")
        c = c.astype(np.float64)
        if not np.isfinite(c).all():
            raise ConfigError("the condition has NaN/inf values; drop those models or pick another condition")
        lo, hi = float(c.min()), float(c.max())
        self.cond_kind_, self.cond_info_ = "scalar", {"min": lo, "max": hi}
        return torch.tensor((c - lo) / ((hi - lo) or 1.0), dtype=torch.float32)

    def encode_condition(self, value: Any, n: int) -> Tensor | None:
        """The network's condition ``[n]`` for a sampling request (one value, or one per sample)."""
        self._check_fitted()
        if value is None:
            return None
        if self.cond_kind_ == "none":
            raise ConfigError(f"generator {self.name!r} was trained without a condition; sample without one")
        v = np.broadcast_to(np.asarray(value, dtype=np.float64), (n,))
        if self.cond_kind_ == "class":
            classes = self.cond_info_["classes"]
            bad = sorted({float(x) for x in v if float(x) not in classes})
            if bad:
                raise ConfigError(f"class {bad[0]:g} was not in the training set; trained classes: {classes}")
            return torch.tensor([classes.index(int(x)) for x in v], dtype=torch.float32)
        lo, hi = self.cond_info_["min"], self.cond_info_["max"]
        if (v < lo - 1e-9).any() or (v > hi + 1e-9).any():
            raise ConfigError(f"condition {float(v[(v < lo) | (v > hi)][0]):g} is outside the trained range "
                              f"[{lo:.4g}, {hi:.4g}]; ask for a value inside it")  # fmt: skip
        return torch.tensor((v - lo) / ((hi - lo) or 1.0), dtype=torch.float32)

    # -- fitting -----------------------------------------------------------------------------------

    @property
    def space_dim(self) -> int:
        """The number of coordinates the denoiser works on: the latent's, else the flat view's."""
        return self.latent_.dim_ if self.latent_ is not None else self.prep_.dim_

    def _build_net(self) -> nn.Module:
        cls = DENOISERS.get(self.denoiser)
        n_classes = len(self.cond_info_.get("classes", []))
        layout = [self.latent_.dim_] if self.latent_ is not None else self.prep_.numels_
        try:
            return cls(self.space_dim, cond_kind=self.cond_kind_, n_classes=n_classes, layout=layout,
                       token_size=int(self.prep_.token_size), **self.denoiser_params)  # fmt: skip
        except TypeError as e:
            raise ConfigError(f"bad denoiser_params for denoiser {self.denoiser!r}: {e}") from None

    def fit(
        self,
        X: Stacked,
        *,
        config: Mapping[str, Any] | None = None,
        condition: Sequence[Any] | None = None,
        spec: PermutationSpec | None = None,
        align: AlignFn | None = None,
        progress: bool = False,
    ) -> Generator:
        """Fit on a stacked training population ``X`` of one architecture (``config``: its config)."""
        n = check_stacked(X)
        if n < MIN_MODELS:
            raise ConfigError(f"a generator needs at least {MIN_MODELS} training models, got {n}; build a larger population")
        self.arch_ = dict(config) if config is not None else None
        cond = self._fit_condition(condition, n)
        self.prep_ = WeightPreparer(**self.prepare)
        data = self.prep_.fit_transform(X, spec=spec, config=config, align=align).float()
        k = self.latent_dim if self.latent_dim is not None else self.default_latent_dim()
        self.latent_ = PCALatent(int(k)).fit(data) if k else None
        if self.latent_ is not None:
            data = self.latent_.transform(data)
        torch.manual_seed(int(self.seed))
        self.net_ = self._build_net()
        self._setup()
        self.history_ = self._train(data, cond, progress)
        self.net_.eval()
        return self

    def default_latent_dim(self) -> int:
        """The latent of ``latent_dim=None`` (after :meth:`fit` has seen the condition): 0 (the token view)
        for token denoisers, :data:`SCALAR_CONDITION_LATENT_DIM` with a scalar condition, else
        :data:`DEFAULT_LATENT_DIM`."""
        if self.denoiser in TOKEN_DENOISERS:
            return 0
        return SCALAR_CONDITION_LATENT_DIM if getattr(self, "cond_kind_", "none") == "scalar" else DEFAULT_LATENT_DIM

    def resolved_train_steps(self) -> int:
        """The training steps of ``train_steps=None``: :data:`SCALAR_CONDITION_TRAIN_STEPS` with a scalar
        condition, else :data:`DEFAULT_TRAIN_STEPS`."""
        if self.train_steps is not None:
            return int(self.train_steps)
        scalar = getattr(self, "cond_kind_", "none") == "scalar"
        return SCALAR_CONDITION_TRAIN_STEPS if scalar else DEFAULT_TRAIN_STEPS

    def _setup(self) -> None:
        """Family-specific state built before training (e.g. the noise schedule)."""

    def _train(self, data: Tensor, cond: Tensor | None, progress: bool) -> list[float]:
        from tqdm.auto import tqdm

        net, steps, n = self.net_, self.resolved_train_steps(), data.shape[0]
        opt = torch.optim.AdamW(net.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        warm = max(1, steps // 20)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps))
        )
        ema = {k: v.detach().clone() for k, v in net.state_dict().items()} if self.ema > 0 else None
        gen = torch.Generator().manual_seed(int(self.seed))
        bs = min(int(self.batch_size), n)
        history, run, perm, pos = [], 0.0, torch.randperm(n, generator=gen), 0
        net.train()
        bar = tqdm(range(steps), desc=f"train {self.name}", disable=not progress, leave=False)
        for step in bar:
            if pos + bs > n:
                perm, pos = torch.randperm(n, generator=gen), 0
            idx = perm[pos : pos + bs]
            pos += bs
            c = cond[idx] if cond is not None else None
            drop = torch.rand(bs, generator=gen) < self.cond_dropout if c is not None else None
            loss = self._loss(data[idx], c, drop, gen)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            opt.step()
            sched.step()
            if ema is not None:
                with torch.no_grad():
                    for k, v in net.state_dict().items():
                        ema[k].lerp_(v, 1 - self.ema) if v.is_floating_point() else ema[k].copy_(v)
            run = loss.item() if step == 0 else 0.98 * run + 0.02 * loss.item()
            if (step + 1) % max(1, steps // 50) == 0 or step == steps - 1:
                history.append(round(run, 6))
                bar.set_postfix(loss=f"{run:.4f}")
        if ema is not None:
            net.load_state_dict(ema)
        return history

    # -- family hooks ------------------------------------------------------------------------------

    def _loss(self, x1: Tensor, cond: Tensor | None, drop: Tensor | None, gen: torch.Generator) -> Tensor:
        raise NotImplementedError

    def _sample_flat(self, noise: Tensor, cond: Tensor | None, guidance: float, steps: int, sampler: str,
                     gen: torch.Generator) -> tuple[Tensor, int]:  # fmt: skip
        raise NotImplementedError

    def default_steps(self, sampler: str) -> int:
        raise NotImplementedError

    def _velocity(self, x: Tensor, t: Tensor, cond: Tensor | None, guidance: float) -> Tensor:
        """The network's output with classifier-free guidance (one batched pass of 2B rows when guided)."""
        if cond is None:
            return self.net_(x, t)
        if guidance == 1.0:
            return self.net_(x, t, cond, torch.zeros(x.shape[0], dtype=torch.bool))
        b = x.shape[0]
        drop = torch.cat([torch.zeros(b, dtype=torch.bool), torch.ones(b, dtype=torch.bool)])
        out = self.net_(torch.cat([x, x]), torch.cat([t, t]), torch.cat([cond, cond]), drop)
        c, u = out[:b], out[b:]
        return u + guidance * (c - u)

    # -- sampling ----------------------------------------------------------------------------------

    @torch.no_grad()
    def sample_flat(self, n: int, *, condition: Any = None, guidance: float = 1.0, steps: int | None = None,
                    sampler: str | None = None, seed: int = 0, temperature: float = 1.0) -> Tensor:  # fmt: skip
        """``n`` prepared (normalised, canonical) flat vectors ``[n, D]``; sets ``nfe_``.

        ``temperature`` scales the starting noise (below 1: samples nearer the modes the generator
        learned, less diverse; 1: the trained distribution)."""
        noise, cond, steps, sampler, gen = self.sampling_inputs(n, condition=condition, guidance=guidance, steps=steps,
                                                                sampler=sampler, seed=seed, temperature=temperature)  # fmt: skip
        return self.sample_flat_from(noise, cond, guidance=guidance, steps=steps, sampler=sampler, generator=gen)

    def sampling_inputs(self, n: int, *, condition: Any = None, guidance: float = 1.0, steps: int | None = None,
                        sampler: str | None = None, seed: int = 0,
                        temperature: float = 1.0) -> tuple[Tensor, Tensor | None, int, str, torch.Generator]:  # fmt: skip
        """The first half of :meth:`sample_flat`: check the request and draw what the sampler starts from:
        ``(noise [n, space_dim], encoded condition [n] or None, steps, sampler, the random stream after the
        noise)``. Raises :class:`ConfigError` on a bad request, before any sampling."""
        self._check_fitted()
        if int(n) < 1:
            raise ConfigError(f"ask for at least one sample, not {n}")
        if not float(temperature) > 0:
            raise ConfigError(f"temperature must be > 0, got {temperature}")
        sampler = sampler or self.sampler  # type: ignore[attr-defined]
        steps = int(steps or self.default_steps(sampler))
        if steps < 1:
            raise ConfigError(f"steps must be a positive integer, got {steps}")
        if float(guidance) < 0:
            raise ConfigError(f"guidance must be >= 0, got {guidance}")
        cond = self.encode_condition(condition, int(n))
        gen = torch.Generator().manual_seed(int(seed))
        noise = torch.randn(int(n), self.space_dim, generator=gen) * float(temperature)
        return noise, cond, steps, sampler, gen

    @torch.no_grad()
    def sample_flat_from(self, noise: Tensor, cond: Tensor | None, *, guidance: float, steps: int, sampler: str,
                         generator: torch.Generator) -> Tensor:  # fmt: skip
        """The second half of :meth:`sample_flat`: run the sampler from the starting ``noise`` (already drawn
        and scaled) with the encoded condition ``cond`` (:meth:`encode_condition`; None: unconditional) and
        the random stream ``generator`` of stochastic samplers (ddpm); sets ``nfe_``. A shard of a sampling
        run (:func:`generators.api.sample_shard`) calls it on its rows of the noise.

        Shapes:
            noise: ``[n, space_dim]``; cond: ``[n]`` or None; returns ``[n, D]`` prepared flat vectors.
        """
        self._check_fitted()
        self.net_.eval()
        out, nfe = self._sample_flat(noise, cond, float(guidance), int(steps), sampler, generator)
        self.nfe_ = nfe * (2 if cond is not None and float(guidance) != 1.0 else 1)
        self.last_steps_, self.last_sampler_ = int(steps), sampler
        return self.latent_.inverse_transform(out) if self.latent_ is not None else out

    def sample(self, n: int, *, condition: Any = None, guidance: float = 1.0, steps: int | None = None,
               sampler: str | None = None, seed: int = 0, temperature: float = 1.0) -> dict[str, Tensor]:  # fmt: skip
        """``n`` new models as a stacked population ``{name: [n, *shape]}``."""
        flat = self.sample_flat(n, condition=condition, guidance=guidance, steps=steps, sampler=sampler, seed=seed,
                                temperature=temperature)  # fmt: skip
        return self.prep_.inverse_transform(flat)

    # -- persistence -------------------------------------------------------------------------------

    def state(self) -> tuple[dict[str, Any], dict[str, Tensor]]:
        """``(JSON-able document, tensors)``: rebuilt by :func:`load_generator_state`."""
        self._check_fitted()
        prep_doc, prep_t = self.prep_.state()
        doc = {"generator": self.name, "params": self.get_params(), "state": {
            "prep_": prep_doc, "cond_kind_": self.cond_kind_, "cond_info_": self.cond_info_,
            "history_": self.history_, "arch_": self.arch_}}  # fmt: skip
        tensors = {f"net.{k}": v.detach().contiguous() for k, v in self.net_.state_dict().items()}
        tensors.update({f"prep.{k}": v for k, v in prep_t.items()})
        if self.latent_ is not None:
            doc["state"]["latent_"], lat_t = self.latent_.state()
            tensors.update({f"latent.{k}": v for k, v in lat_t.items()})
        return doc, tensors


def load_generator_state(doc: Mapping[str, Any], tensors: Mapping[str, Tensor]) -> Generator:
    """Rebuild a fitted generator from :meth:`Generator.state`."""
    from generators.registry import make_generator

    try:
        gen = make_generator(doc["generator"], **doc["params"])
        st = doc["state"]
        gen.prep_ = WeightPreparer.from_state(st["prep_"], {k[5:]: v for k, v in tensors.items() if k.startswith("prep.")})
        gen.cond_kind_, gen.cond_info_ = st["cond_kind_"], dict(st["cond_info_"])
        gen.history_, gen.arch_ = list(st["history_"]), st["arch_"]
        lat = st.get("latent_")
        gen.latent_ = None if lat is None else PCALatent.from_state(lat, {k[7:]: v for k, v in tensors.items()
                                                                          if k.startswith("latent.")})  # fmt: skip
    except (KeyError, TypeError) as e:
        raise CorruptFileError(f"not a saved generator document ({e})") from None
    gen.net_ = gen._build_net()
    gen._setup()
    try:
        gen.net_.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("net.")})
    except RuntimeError as e:
        raise CorruptFileError(f"the saved weights do not fit generator {gen.name!r}: {e}") from None
    gen.net_.eval()
    return gen
