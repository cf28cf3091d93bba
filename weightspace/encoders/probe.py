"""``"probe"``: learned probe inputs run through every model; an MLP reads the responses (ProbeGen-style).

Instead of reading weights through an architecture that respects their symmetries, the probe encoder
*runs* each model (batched, with its stacked weights, through :func:`zoo.build.evaluate.functional_forward`)
on ``n_probes`` learned inputs and feeds the outputs ``[N, n_probes, out]`` to an MLP head. The probes
are trained jointly with the head, from the task's labels only (no data set is read). This follows
"Deep Linear Probe Generators for Weight Space Learning" (Kahana et al. 2024): probes come from a
shared *deep linear generator* (``generator="linear"``: latent codes through a stack of linear layers
with no non-linearity, an implicit low-rank prior that regularises the probes) or are free parameters
(``generator="free"``).

A model's outputs do not change under any function-preserving transformation of its weights -- hidden
neuron permutations, positive rescaling of ReLU units, ... -- so the encoder is invariant to all of
them by construction (tested). It works for every family with a batched forward (mlp, cnn, siren,
resnet) and needs the architecture config: ``fit(X, y, arch=zoo.population(name).config)``
(:func:`weightspace.tasks.run_task` passes it).

Shapes: probes ``[n_probes, *in]`` (``*in`` = ``(features,)`` for mlp/siren, ``(C, H, W)`` for
cnn/resnet); responses ``[B, n_probes, out]``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from weightspace.encoders.base import TorchEncoder
from weightspace.encoders.registry import register_encoder
from zoo.errors import ConfigError

__all__ = ["ProbeEncoder", "ProbeNet", "ProbeInputs", "ProbeFeatures", "probe_input_shape", "chain_activations", "RawChain"]

GENERATORS = ("linear", "free")


def probe_input_shape(arch: Mapping[str, Any]) -> tuple[int, ...]:
    """The input shape of one sample for an architecture config, as its family declares it
    (:func:`zoo.models.architectures.input_shape`: features for dense nets, ``(C, H, W)`` for image nets)."""
    from zoo.models.architectures import input_shape

    try:
        return input_shape(arch)
    except ConfigError as e:
        raise ConfigError(f"the probe encoder cannot run this architecture: {e}") from None


#: (weights, biases) of a dense chain, raw (not normalised): ``[B, n_out, n_in]``, ``[B, n_out]``
RawChain = list[tuple[Tensor, Tensor | None]]


def chain_activations(raw: RawChain, x: Tensor, arch: Mapping[str, Any]) -> list[Tensor]:
    """Every layer's output on shared inputs ``x [P, n_0]``: ``[B, P, n_l]`` for l = 1..L (hidden layers
    after their non-linearity, the last one linear), for mlp (its ``activation``) and siren (``sin(w0 .)``)."""
    from kernels.batched import activate

    fam = arch["family"]
    if fam not in ("mlp", "siren"):
        raise ConfigError(f"probe features need an mlp or siren chain, not {fam!r}")
    h = x.unsqueeze(0).expand(raw[0][0].shape[0], -1, -1)
    outs = []
    for i, (w, b) in enumerate(raw):
        h = torch.baddbmm(b.unsqueeze(1), h, w.transpose(1, 2)) if b is not None else torch.bmm(h, w.transpose(1, 2))
        if i < len(raw) - 1:
            h = torch.sin(float(arch["w0"]) * h) if fam == "siren" else activate(h, arch["activation"])
        outs.append(h)
    return outs


class ProbeInputs(nn.Module):
    """Learned probe inputs ``[n_probes, d]``: free parameters, or a deep linear generator applied to fixed
    random latent codes (ProbeGen). ``forward() -> [n_probes, d]``."""

    def __init__(self, n_probes: int, d: int, *, generator: str = "linear", latent: int = 32, depth: int = 2,
                 probe_range: float = 1.0) -> None:  # fmt: skip
        super().__init__()
        if generator not in GENERATORS:
            raise ConfigError(f"unknown probe generator {generator!r}; valid: {', '.join(GENERATORS)}")
        if n_probes < 1 or depth < 1 or latent < 1:
            raise ConfigError("n_probes, depth and latent must be positive")
        self.generator = generator
        if generator == "linear":
            self.register_buffer("codes", torch.randn(n_probes, latent))
            dims = [latent] + [max(latent, d)] * (depth - 1) + [d]
            self.gen = nn.Sequential(*(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:], strict=True)))
            with torch.no_grad():  # outputs start with std ~ probe_range
                for lin in self.gen:
                    nn.init.normal_(lin.weight, std=1.0 / math.sqrt(lin.in_features))
                    nn.init.zeros_(lin.bias)
                self.gen[-1].weight.mul_(probe_range)
        else:
            self.probes = nn.Parameter(torch.empty(n_probes, d).uniform_(-probe_range, probe_range))

    def forward(self) -> Tensor:
        return self.gen(self.codes) if self.generator == "linear" else self.probes


class ProbeFeatures:
    """Mixin for weight-reading :class:`~weightspace.encoders.base.TorchEncoder` subclasses with an optional
    ``probes`` option (probe features, Kofinas et al. 2024): with ``probes > 0`` the encoder needs the
    architecture, ``_prepare`` receives ``(normalised, raw)`` stacked weights (raw ones to run the models),
    and :meth:`_probe_inputs` builds the learned probes for a dense chain."""

    probes: int
    probe_range: float

    def _set_arch(self, arch: Mapping[str, Any] | None) -> None:
        if self.probes and arch is None:
            raise ConfigError(
                f"{self.name} probe features run the models: fit(X, y, arch=zoo.population(name).config)"  # type: ignore[attr-defined]
            )
        super()._set_arch(arch)  # type: ignore[misc]

    def _normalize(self, raw: Mapping[str, Tensor]) -> Any:
        normed = self.normalizer_.transform(raw)  # type: ignore[attr-defined]
        return (normed, raw) if self.probes else normed

    def _n_probes(self) -> int:
        P = int(self.probes)
        if P < 0:
            raise ConfigError(f"probes must be >= 0, got {P}")
        return P

    def _probe_inputs(self, n_in: int) -> tuple[ProbeInputs, dict[str, Any]]:
        """The learned probes (``[probes, n_in]``) and the architecture they run through (mlp or siren)."""
        arch = getattr(self, "arch_", None)
        if arch is None or arch["family"] not in ("mlp", "siren"):
            raise ConfigError(f"{self.name} probe features support mlp and siren populations")  # type: ignore[attr-defined]
        return ProbeInputs(self._n_probes(), n_in, probe_range=float(self.probe_range)), arch


class ProbeNet(nn.Module):
    """Probe generator + batched forward of the input models + MLP head.

    ``forward(params) -> [B, n_out]`` where ``params`` is a stacked population ``name -> [B, ...]``.
    """

    def __init__(
        self,
        arch: Mapping[str, Any],
        n_out: int,
        *,
        n_probes: int,
        generator: str,
        latent: int,
        depth: int,
        head_hidden: int,
        dropout: float,
        n_model_out: int,
        probe_range: float,
    ) -> None:
        super().__init__()
        self.arch = dict(arch)
        self.shape = probe_input_shape(arch)
        self.inputs = ProbeInputs(n_probes, math.prod(self.shape), generator=generator, latent=latent, depth=depth,
                                  probe_range=probe_range)  # fmt: skip
        feat = n_probes * n_model_out
        self.norm = nn.LayerNorm(feat)
        self.embedder = nn.Sequential(
            nn.Linear(feat, head_hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(head_hidden, head_hidden), nn.ReLU()
        )
        self.out = nn.Sequential(nn.Dropout(dropout), nn.Linear(head_hidden, n_out))

    def probe_inputs(self) -> Tensor:
        """The current probes ``[n_probes, *in]``."""
        return self.inputs().reshape(-1, *self.shape)

    def responses(self, params: Mapping[str, Tensor]) -> Tensor:
        """The models' outputs on the probes ``[B, n_probes, out]``."""
        from zoo.build.evaluate import functional_forward

        return functional_forward(self.arch, params, self.probe_inputs())

    def embed(self, params: Mapping[str, Tensor]) -> Tensor:
        r = self.responses(params)
        r = torch.asinh(r)  # tames the tails of large logits, keeps sign and order
        return self.embedder(self.norm(r.reshape(r.shape[0], -1)))

    def forward(self, params: Mapping[str, Tensor]) -> Tensor:
        return self.out(self.embed(params))


@register_encoder("probe")
class ProbeEncoder(TorchEncoder):
    """Learned probe inputs run through each model, an MLP on the responses (invariant to every
    function-preserving transformation of the weights). Needs ``fit(..., arch=config)``.

    Args:
        task: ``"regression"`` or ``"classification"``.
        n_probes: how many probe inputs; generator: ``"linear"`` (deep linear generator from fixed latent
            codes, as ProbeGen) or ``"free"`` (probes are parameters); latent, depth: the generator's
            latent size and number of linear layers; probe_range: the initial spread of the probes
            (uniform in ``[-r, r]`` for free probes; the generator's output std for linear ones).
        head_hidden: width of the head (the embedding dimension of :meth:`transform`); dropout: in the head.
        epochs, batch_size, lr, weight_decay, seed: training (AdamW, cosine schedule).
        augment: augmentation steps; ``noise``/``dropout`` change the function, ``permute``/``rescale``
            do not (the encoder is invariant to them).
        target: regression targets as ``"rank"`` or ``"standard"`` (see :class:`~weightspace.encoders.NPEncoder`).
    """

    needs_spec = False
    needs_arch = True
    normalize_inputs = False

    def __init__(
        self,
        task: str = "regression",
        n_probes: int = 64,
        generator: str = "linear",
        latent: int = 32,
        depth: int = 2,
        probe_range: float = 1.0,
        head_hidden: int = 256,
        dropout: float = 0.1,
        epochs: int = 100,
        batch_size: int = 64,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        augment: Sequence[Any] = (),
        target: str = "rank",
        seed: int = 0,
    ) -> None:
        self._store_params(locals())

    def _prepare(self, stacked: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return dict(stacked)

    def _build_net(self, n_out: int) -> nn.Module:
        arch = self.arch_
        n_model_out = int(arch.get("out_features") or arch.get("num_classes") or 0)
        if n_model_out <= 0:
            raise ConfigError(f"cannot tell the output size of architecture {arch.get('family')!r}")
        return ProbeNet(arch, n_out, n_probes=int(self.n_probes), generator=self.generator, latent=int(self.latent),
                        depth=int(self.depth), head_hidden=int(self.head_hidden), dropout=float(self.dropout),
                        n_model_out=n_model_out, probe_range=float(self.probe_range))  # fmt: skip

    def probes(self) -> Tensor:
        """The learned probe inputs ``[n_probes, *in]`` (e.g. to look at them as images)."""
        self._check_fitted()
        with torch.no_grad():
            return self.net_.probe_inputs().clone()
