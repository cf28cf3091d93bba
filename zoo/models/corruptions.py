"""Image corruptions for robustness work (after ImageNet-C / CIFAR-10-C, sized for small images).

Every corruption takes a batch ``x`` of shape ``[n, C, H, W]`` with pixels in [0, 1], a
``severity`` from 1 (mild) to 5 (strong) and a ``seed``; the same arguments always give the same
output. Results are clipped to [0, 1].

For inputs in a *normalised* space (``(pixel - mean) / std``, as :func:`zoo.models.datasets.load_dataset`
returns by default) pass that ``mean`` and ``std``: the batch is mapped back to [0, 1], corrupted,
and normalised again.

>>> from zoo.corruptions import corrupt, CORRUPTIONS
>>> x_noisy = corrupt(x, "gaussian_noise", severity=3, seed=0)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from zoo.errors import ConfigError, MismatchError

__all__ = ["CORRUPTIONS", "SEVERITIES", "corrupt"]

#: the parameter of each corruption at severities 1..5
SEVERITIES: dict[str, tuple[float, ...]] = {
    "gaussian_noise": (0.04, 0.08, 0.12, 0.18, 0.26),  # noise std
    "shot_noise": (500.0, 250.0, 100.0, 50.0, 25.0),  # photons per unit intensity (fewer = noisier)
    "impulse_noise": (0.01, 0.03, 0.06, 0.10, 0.15),  # fraction of pixels set to 0 or 1
    "gaussian_blur": (0.5, 0.75, 1.0, 1.25, 1.5),  # kernel std in pixels
    "contrast": (0.75, 0.6, 0.45, 0.3, 0.15),  # kept fraction of the deviation from the mean
    "brightness": (0.1, 0.2, 0.3, 0.4, 0.5),  # added intensity
    "pixelate": (0.8, 0.65, 0.5, 0.35, 0.25),  # kept fraction of each side's resolution
    "rotate": (8.0, 16.0, 24.0, 32.0, 40.0),  # rotation angle in degrees (sign drawn per image)
    "occlusion": (0.25, 0.375, 0.5, 0.625, 0.75),  # side of a black square, as a fraction of the image side
}


def _gaussian_noise(x: Tensor, c: float, gen: torch.Generator) -> Tensor:
    return x + c * torch.randn(x.shape, generator=gen, dtype=x.dtype)


def _shot_noise(x: Tensor, c: float, gen: torch.Generator) -> Tensor:
    return torch.poisson(x.clamp(0.0, 1.0) * c, generator=gen) / c


def _impulse_noise(x: Tensor, c: float, gen: torch.Generator) -> Tensor:
    u = torch.rand(x.shape, generator=gen)
    out = x.clone()
    out[u < c / 2] = 0.0
    out[(u >= c / 2) & (u < c)] = 1.0
    return out


def _gaussian_blur(x: Tensor, sigma: float, gen: torch.Generator) -> Tensor:
    radius = max(1, math.ceil(3 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype)
    kernel = torch.exp(-0.5 * (t / sigma) ** 2)
    kernel = kernel / kernel.sum()
    c = x.shape[1]
    out = F.pad(x, (radius, radius, radius, radius), mode="replicate")
    out = F.conv2d(out, kernel.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)  # along W
    return F.conv2d(out, kernel.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)  # along H


def _contrast(x: Tensor, c: float, gen: torch.Generator) -> Tensor:
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * c + mean


def _brightness(x: Tensor, c: float, gen: torch.Generator) -> Tensor:
    return x + c


def _pixelate(x: Tensor, c: float, gen: torch.Generator) -> Tensor:
    # Box-downsample, then upsample bilinearly: with nearest upsampling (ImageNet-C) the distance
    # to the clean image is not monotone in severity on 8x8 digits (aliasing at non-dividing sizes).
    h, w = x.shape[-2:]
    small = F.interpolate(x, size=(max(1, round(h * c)), max(1, round(w * c))), mode="area")
    return F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)


def _rotate(x: Tensor, degrees: float, gen: torch.Generator) -> Tensor:
    # Rotate each image about its centre by +-degrees (the sign drawn per image), bilinear, zero fill.
    n = x.shape[0]
    sign = torch.randint(0, 2, (n,), generator=gen).to(x.dtype) * 2 - 1
    a = sign * math.radians(degrees)
    cos, sin, zero = a.cos(), a.sin(), torch.zeros_like(a)
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _occlusion(x: Tensor, c: float, gen: torch.Generator) -> Tensor:
    # Set a square of side round(c * side) at a random position (per image) to 0 (cutout).
    n, _, h, w = x.shape
    sh, sw = max(1, round(h * c)), max(1, round(w * c))
    top = torch.randint(0, h - sh + 1, (n,), generator=gen).view(n, 1, 1, 1)
    left = torch.randint(0, w - sw + 1, (n,), generator=gen).view(n, 1, 1, 1)
    rows = torch.arange(h).view(1, 1, h, 1)
    cols = torch.arange(w).view(1, 1, 1, w)
    box = (rows >= top) & (rows < top + sh) & (cols >= left) & (cols < left + sw)
    return x.masked_fill(box, 0.0)


_FUNCTIONS: dict[str, Callable[[Tensor, float, torch.Generator], Tensor]] = {
    "gaussian_noise": _gaussian_noise,
    "shot_noise": _shot_noise,
    "impulse_noise": _impulse_noise,
    "gaussian_blur": _gaussian_blur,
    "contrast": _contrast,
    "brightness": _brightness,
    "pixelate": _pixelate,
    "rotate": _rotate,
    "occlusion": _occlusion,
}

#: names accepted by :func:`corrupt`
CORRUPTIONS: tuple[str, ...] = tuple(_FUNCTIONS)


def corrupt(
    x: Tensor,
    kind: str,
    severity: int = 3,
    seed: int = 0,
    *,
    mean: Sequence[float] | Tensor | None = None,
    std: Sequence[float] | Tensor | None = None,
) -> Tensor:
    """Apply corruption ``kind`` at ``severity`` (1..5) to an image batch, deterministically.

    Args:
        x: ``[n, C, H, W]`` pixels in [0, 1], or normalised pixels when ``mean``/``std`` are given.
        kind: one of :data:`CORRUPTIONS`.
        severity: 1 (mild) to 5 (strong).
        seed: seeds the random corruptions (noise); same seed, same output.
        mean, std: per-channel ``[C]`` statistics ``x`` is normalised with, if any.

    Returns:
        a new tensor of ``x``'s shape and dtype, in the same space as ``x``.

    Shapes:
        x: ``[n, C, H, W]`` -> ``[n, C, H, W]``.
    """
    if kind not in _FUNCTIONS:
        raise ConfigError(f"unknown corruption {kind!r}; valid kinds: {', '.join(CORRUPTIONS)}")
    if isinstance(severity, bool) or not isinstance(severity, int) or not 1 <= severity <= 5:
        raise ConfigError(f"severity must be an integer from 1 to 5, got {severity!r}")
    if x.ndim != 4:
        raise MismatchError(
            f"corrupt expects an image batch [n, C, H, W], got shape {tuple(x.shape)}; "
            "reshape flat inputs with x.view(n, *dataset.image_shape)"
        )
    if (mean is None) != (std is None):
        raise ConfigError("pass both mean and std (the normalisation of x), or neither")
    dtype = x.dtype
    img = x.detach().to(torch.float32)
    if mean is not None and std is not None:
        m = torch.as_tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        s = torch.as_tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        img = img * s + m
    gen = torch.Generator().manual_seed(int(seed))
    out = _FUNCTIONS[kind](img, SEVERITIES[kind][severity - 1], gen).clamp(0.0, 1.0)
    if mean is not None and std is not None:
        out = (out - m) / s
    return out.to(dtype)
