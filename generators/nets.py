"""Denoising networks of the generators (they know nothing of the sampler or the noise schedule).

Every denoiser maps ``(x [B, D], t [B], cond [B], drop [B]) -> [B, D]``: a noisy flat weight vector, the
time in [0, 1] (flow time, or diffusion timestep / number of training timesteps), the condition (a
normalised scalar, or a class index stored as a float) and a mask of rows whose condition is dropped
(classifier-free guidance: the learned "no condition" embedding is used for them).

* ``mlp`` (:class:`MLPDenoiser`): residual MLP with a time + condition embedding over the flat view.
* ``transformer`` (:class:`TransformerDenoiser`): a small transformer over the token view (fixed-size
  chunks per tensor, see :class:`~generators.prepare.WeightPreparer`), with token-position and
  layer embeddings; time and condition enter as one extra token.

Shapes: x ``[B, D]``; t, cond ``[B]`` float; drop ``[B]`` bool; output ``[B, D]``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from generators.registry import DENOISERS
from zoo.errors import ConfigError

__all__ = ["time_embedding", "ConditionEmbedding", "MLPDenoiser", "TransformerDenoiser"]

COND_KINDS = ("none", "scalar", "class")


def time_embedding(t: Tensor, dim: int, scale: float = 1000.0) -> Tensor:
    """Sinusoidal embedding ``[B, dim]`` of times ``t [B]`` in [0, 1] (scaled by ``scale``)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / max(half, 1))
    ang = (t.float() * scale)[:, None] * freqs[None]
    return torch.cat([ang.sin(), ang.cos()], 1)


class ConditionEmbedding(nn.Module):
    """Embeds a condition (``none``, a normalised ``scalar``, or a ``class`` index) with a learned null."""

    def __init__(self, kind: str, dim: int, n_classes: int = 0) -> None:
        super().__init__()
        if kind not in COND_KINDS:
            raise ConfigError(f"unknown condition kind {kind!r}; valid: {', '.join(COND_KINDS)}")
        self.kind = kind
        self.null = nn.Parameter(torch.zeros(dim))
        if kind == "scalar":
            self.net = nn.Sequential(nn.Linear(16, dim), nn.SiLU(), nn.Linear(dim, dim))
        elif kind == "class":
            if n_classes < 1:
                raise ConfigError("class conditioning needs at least one class")
            self.table = nn.Embedding(n_classes, dim)

    def forward(self, cond: Tensor | None, drop: Tensor | None, batch: int) -> Tensor:
        null = self.null.expand(batch, -1)
        if self.kind == "none" or cond is None:
            return null
        if self.kind == "scalar":
            emb = self.net(time_embedding(cond, 16, scale=100.0))
        else:
            emb = self.table(cond.long())
        if drop is not None:
            emb = torch.where(drop[:, None], null, emb)
        return emb


class _Block(nn.Module):
    def __init__(self, width: int, dropout: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.ff = nn.Sequential(nn.Linear(width, width * 2), nn.SiLU(), nn.Dropout(dropout), nn.Linear(width * 2, width))
        self.mod = nn.Linear(width, 2 * width)  # scale/shift from the time + condition embedding

    def forward(self, h: Tensor, e: Tensor) -> Tensor:
        scale, shift = self.mod(e).chunk(2, -1)
        return h + self.ff(self.norm(h) * (1 + scale) + shift)


@DENOISERS.register("mlp")
class MLPDenoiser(nn.Module):
    """Residual MLP over the flat view with adaptive (time + condition) modulation in every block."""

    def __init__(
        self,
        dim: int,
        *,
        cond_kind: str = "none",
        n_classes: int = 0,
        width: int = 256,
        depth: int = 2,
        dropout: float = 0.0,
        layout: Sequence[int] | None = None,
        token_size: int = 64,
    ) -> None:
        super().__init__()
        del layout, token_size  # the flat view needs no layout
        self.time = nn.Sequential(nn.Linear(128, width), nn.SiLU(), nn.Linear(width, width))
        self.cond = ConditionEmbedding(cond_kind, width, n_classes)
        self.inp = nn.Linear(dim, width)
        self.blocks = nn.ModuleList(_Block(width, dropout) for _ in range(depth))
        self.norm = nn.LayerNorm(width)
        self.out = nn.Linear(width, dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: Tensor, t: Tensor, cond: Tensor | None = None, drop: Tensor | None = None) -> Tensor:
        e = nn.functional.silu(self.time(time_embedding(t, 128)) + self.cond(cond, drop, x.shape[0]))
        h = self.inp(x)
        for b in self.blocks:
            h = b(h, e)
        return self.out(self.norm(h))


@DENOISERS.register("transformer")
class TransformerDenoiser(nn.Module):
    """A small transformer over the token view; ``layout`` is the number of weights per tensor
    (``WeightPreparer.numels_``), ``token_size`` the numbers per token."""

    def __init__(
        self,
        dim: int,
        *,
        cond_kind: str = "none",
        n_classes: int = 0,
        width: int = 128,
        depth: int = 4,
        heads: int = 4,
        dropout: float = 0.0,
        layout: Sequence[int] | None = None,
        token_size: int = 64,
    ) -> None:
        super().__init__()
        layout = list(layout) if layout is not None else [dim]
        if sum(layout) != dim:
            raise ConfigError(f"the token layout covers {sum(layout)} numbers, but the vectors have {dim}")
        idx, layer = [], []
        pos = 0
        for li, m in enumerate(layout):
            t = -(-m // token_size)
            chunk = torch.full((t * token_size,), -1, dtype=torch.long)
            chunk[:m] = torch.arange(pos, pos + m)
            idx.append(chunk)
            layer += [li] * t
            pos += m
        gather = torch.cat(idx)
        self.register_buffer("gather", gather.clamp_min(0), persistent=False)
        self.register_buffer("pad", gather < 0, persistent=False)
        self.register_buffer("scatter", (gather >= 0).nonzero().squeeze(1), persistent=False)
        self.register_buffer("layer_ids", torch.tensor(layer), persistent=False)
        self.n_tokens, self.token_size = len(layer), token_size
        self.inp = nn.Linear(token_size, width)
        self.pos = nn.Parameter(torch.randn(self.n_tokens, width) * 0.02)
        self.layer_emb = nn.Embedding(len(layout), width)
        self.time = nn.Sequential(nn.Linear(128, width), nn.SiLU(), nn.Linear(width, width))
        self.cond = ConditionEmbedding(cond_kind, width, n_classes)
        enc = nn.TransformerEncoderLayer(width, heads, 4 * width, dropout, batch_first=True, norm_first=True, activation="gelu")
        self.encoder = nn.TransformerEncoder(enc, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.out = nn.Linear(width, token_size)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: Tensor, t: Tensor, cond: Tensor | None = None, drop: Tensor | None = None) -> Tensor:
        b = x.shape[0]
        tok = x[:, self.gather].masked_fill(self.pad, 0.0).reshape(b, self.n_tokens, self.token_size)
        h = self.inp(tok) + self.pos + self.layer_emb(self.layer_ids)
        e = self.time(time_embedding(t, 128)) + self.cond(cond, drop, b)
        h = self.encoder(torch.cat([e[:, None], h], 1))[:, 1:]
        out = self.out(self.norm(h)).reshape(b, -1)
        return out[:, self.scatter]
