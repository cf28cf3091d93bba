"""Functional forward passes over a population of same-architecture models with stacked weights.

A population of ``N`` models is a dict ``params: name -> Tensor[N, ...]``: every tensor of the
models' state dicts (same names as the ``nn.Module``'s, BatchNorm buffers included) stacked along a
new leading axis. The forwards below run all ``N`` models at once, with no Python loop over models:

- dense layers are one ``bmm``/``baddbmm`` (or one GEMM against the concatenated weights when the
  input is shared by all models);
- convolutions run in a "grouped" layout ``[B, N*C, H, W]`` (model ``n``'s channel ``c`` sits at
  ``n*C + c``) as one ``conv2d`` with ``groups=N``; a shared input needs no copy (``groups=1``
  against the concatenated kernels);
- BatchNorm over the grouped layout normalises each (model, channel) pair on its own: running
  statistics in eval mode, batch statistics (and an in-place running-stat update, as
  ``nn.BatchNorm2d`` does) in training mode.

Dense layers run "feature-major" (``h: [N, features, B]``, samples last): every layer is one
contiguous ``baddbmm`` and the logits come out class-major ``[N, out, B]``, where softmax,
cross-entropy and max over classes are fast. Inputs are either shared by all models
(``x: [B, *in]``) or per model (``x: [N, B, *in]``); outputs are ``[N, B, out]``, returned as a
transposed view of the class-major result (``out.transpose(1, 2)`` is contiguous and free).

Every function is differentiable (the population trainer backpropagates through them). Dropout takes a per-model probability ``Tensor[N]``; its masks are drawn either from
torch's global generator or, reproducibly per model, from a counter-based hash of per-model keys
(:func:`keyed_uniform`), so that a model's masks do not depend on which other models share its batch.

This module is pure tensor code: it imports torch and the standard library only.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

#: Activations by config name; the architectures registry uses the same names for its modules.
ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "relu": F.relu,
    "gelu": F.gelu,
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "leaky_relu": F.leaky_relu,
    "silu": F.silu,
}

#: In-place variants, used when no gradient is needed (saves an allocation per layer).
_INPLACE: dict[str, Callable[[Tensor], Tensor]] = {
    "relu": torch.relu_,
    "tanh": torch.tanh_,
    "sigmoid": torch.sigmoid_,
    "leaky_relu": F.leaky_relu_,
    "silu": lambda h: F.silu(h, inplace=True),
}


def activate(h: Tensor, name: str) -> Tensor:
    """Apply activation ``name``; in place when autograd does not need ``h``."""
    if not (torch.is_grad_enabled() and h.requires_grad) and name in _INPLACE:
        return _INPLACE[name](h)
    return ACTIVATIONS[name](h)


#: nn.BatchNorm2d's defaults, which the stacked BatchNorm follows.
BN_MOMENTUM = 0.1
BN_EPS = 1e-5

Params = Mapping[str, Tensor]

# ----------------------------------------------------------------------------------------------
# Reproducible per-model random numbers


def _i64(c: int) -> int:
    """An unsigned 64-bit constant as the signed int64 with the same bits."""
    return c - (1 << 64) if c >= (1 << 63) else c


_GOLDEN = _i64(0x9E3779B97F4A7C15)
_MIX1 = _i64(0xBF58476D1CE4E5B9)
_MIX2 = _i64(0x94D049BB133111EB)


def _shr(z: Tensor, s: int) -> Tensor:
    """Logical right shift of int64 bits (torch's ``>>`` is arithmetic)."""
    return (z >> s) & ((1 << (64 - s)) - 1)


def _splitmix(z: Tensor) -> Tensor:
    """SplitMix64's finaliser on int64 tensors (multiplications wrap modulo 2**64)."""
    z = (z ^ _shr(z, 30)) * _MIX1
    z = (z ^ _shr(z, 27)) * _MIX2
    return z ^ _shr(z, 31)


def _to_i32(z: Tensor) -> Tensor:
    """The low 32 bits of int64 values as int32 (two's complement)."""
    low = z & 0xFFFFFFFF
    return torch.where(low >= (1 << 31), low - (1 << 32), low).to(torch.int32)


def _lowbias32(z: Tensor) -> Tensor:
    """A 32-bit integer hash (hash-prospector's "lowbias32") on int32 tensors."""
    z = z ^ ((z >> 16) & 0xFFFF)
    z = z * _LB1
    z = z ^ ((z >> 15) & 0x1FFFF)
    z = z * _LB2
    return z ^ ((z >> 15) & 0x1FFFF)


_LB1, _LB2 = 0x21F0AAAD, 0x735A2D97  # both < 2**31: valid int32 multipliers


def keyed_uniform(keys: Tensor, shape: tuple[int, ...], salt: int = 0) -> Tensor:
    """Uniform [0, 1) numbers that depend only on each model's key, the salt and the position.

    A counter-based generator: a per-model 32-bit base (SplitMix64 of key and salt) plus the
    element index, hashed with a 32-bit integer hash and cut to 24 bits. Model ``n``'s numbers are
    the same whatever the other keys in ``keys`` are, so per-model dropout masks are reproducible
    independently of the population a model is trained in. Use a fresh key (or salt) per draw.

    Shapes:
        keys: ``[N]`` int64; returns ``[N, *shape]`` float32 on ``keys.device``.
    """
    numel = math.prod(shape)
    salted = keys.to(torch.int64) * _GOLDEN + _splitmix(torch.tensor(salt, dtype=torch.int64))
    base = _to_i32(_splitmix(salted)).view(-1, 1)
    z = _lowbias32(base + torch.arange(numel, dtype=torch.int32, device=keys.device))
    return (((z >> 8) & 0xFFFFFF).to(torch.float32) * (1.0 / (1 << 24))).view(len(keys), *shape)


def dropout(
    h: Tensor,
    p: Tensor | None,
    training: bool,
    *,
    keys: Tensor | None = None,
    salt: int = 0,
) -> Tensor:
    """Inverted dropout with a per-model probability (a no-op unless ``training``).

    Shapes:
        h: ``[N, ...]`` (any per-model layout); p: ``[N]`` probabilities in [0, 1]; keys: ``[N]`` int64 or None (then
        masks come from torch's global generator). Returns ``h``'s shape.
    """
    if not training or p is None:
        return h
    n = h.shape[0]
    u = (
        torch.rand(h.shape, device=h.device)
        if keys is None
        else keyed_uniform(keys, tuple(h.shape[1:]), salt)
    )
    pb = p.to(device=h.device, dtype=h.dtype).view(n, *([1] * (h.dim() - 1)))
    scale = torch.where(pb < 1, 1.0 / (1.0 - pb).clamp_min(1e-12), torch.zeros_like(pb))
    return h * (u >= pb).to(h.dtype) * scale


# ----------------------------------------------------------------------------------------------
# Building blocks


def to_feature_major(x: Tensor) -> Tensor:
    """Samples-last view of dense inputs (no copy).

    Shapes:
        x: ``[B, in]`` (shared) -> ``[in, B]``; ``[N, B, in]`` (per model) -> ``[N, in, B]``.
    """
    return x.transpose(-1, -2)


def linear_fm(h: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """N stacked ``nn.Linear`` layers in the feature-major layout (samples last).

    Feature-major keeps every layer one contiguous ``baddbmm`` (``W @ h``) and puts classes on
    axis 1, where softmax, cross-entropy and max over classes are fast; a shared input is one GEMM
    against all models' stacked weights.

    Shapes:
        h: ``[in, B]`` (shared) or ``[N, in, B]`` (per model); weight: ``[N, out, in]``;
        bias: ``[N, out]`` or None. Returns ``[N, out, B]``.
    """
    n, out, inp = weight.shape
    if h.dim() == 2:
        w = weight.reshape(n * out, inp)
        y = w @ h if bias is None else torch.addmm(bias.reshape(n * out, 1), w, h)
        return y.view(n, out, h.shape[1])
    if bias is None:
        return torch.bmm(weight, h)
    return torch.baddbmm(bias.unsqueeze(2), weight, h)


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """N stacked ``nn.Linear`` layers (samples-first convenience over :func:`linear_fm`).

    Shapes:
        x: ``[B, in]`` (shared) or ``[N, B, in]`` (per model); weight: ``[N, out, in]``;
        bias: ``[N, out]`` or None. Returns ``[N, B, out]`` (a transposed view).
    """
    return linear_fm(to_feature_major(x), weight, bias).transpose(1, 2)


def to_grouped(x: Tensor) -> Tensor:
    """Per-model images to the grouped layout.

    Shapes:
        x: ``[N, B, C, H, W]``; returns ``[B, N*C, H, W]``.
    """
    n, b, c, h, w = x.shape
    return x.transpose(0, 1).reshape(b, n * c, h, w)


def grouped_pool(h: Tensor, n: int) -> Tensor:
    """Global average pool of the grouped layout, to per-model features in feature-major layout.

    Shapes:
        h: ``[B, N*C, H, W]``; returns ``[N, C, B]``.
    """
    b = h.shape[0]
    return h.mean(dim=(2, 3)).view(b, n, -1).permute(1, 2, 0)


def conv2d(h: Tensor, weight: Tensor, bias: Tensor | None, *, shared: bool, stride: int = 1) -> Tensor:
    """N stacked ``nn.Conv2d`` layers (square kernel, 'same' padding ``k // 2``).

    Shapes:
        h: ``[B, C_in, H, W]`` when ``shared`` (all models see the same images), else the grouped
        ``[B, N*C_in, H, W]``; weight: ``[N, C_out, C_in, k, k]``; bias: ``[N, C_out]`` or None.
        Returns the grouped ``[B, N*C_out, H', W']``.
    """
    n, c_out, c_in, k, _ = weight.shape
    w = weight.reshape(n * c_out, c_in, k, k)
    b = None if bias is None else bias.reshape(n * c_out)
    return F.conv2d(h, w, b, stride=stride, padding=k // 2, groups=1 if shared else n)


def batch_norm(h: Tensor, params: Params, prefix: str, training: bool) -> Tensor:
    """N stacked ``nn.BatchNorm2d`` layers over the grouped layout.

    Uses ``{prefix}.weight``, ``.bias``, ``.running_mean``, ``.running_var`` and, if present,
    ``.num_batches_tracked``. In training mode the statistics are each (model, channel)'s batch
    statistics and the running buffers in ``params`` are updated in place (momentum 0.1), as
    ``nn.BatchNorm2d`` does; in eval mode the running statistics are used.

    Shapes:
        h: ``[B, N*C, H, W]``; each tensor of the layer ``[N, C]`` (num_batches_tracked ``[N]``).
        Returns ``h``'s shape.
    """
    mean, var = params[f"{prefix}.running_mean"], params[f"{prefix}.running_var"]
    flat_mean, flat_var = mean.reshape(-1), var.reshape(-1)
    out = F.batch_norm(
        h,
        flat_mean,
        flat_var,
        params[f"{prefix}.weight"].reshape(-1),
        params[f"{prefix}.bias"].reshape(-1),
        training=training,
        momentum=BN_MOMENTUM,
        eps=BN_EPS,
    )
    if training:
        with torch.no_grad():
            if flat_mean.data_ptr() != mean.data_ptr():  # reshape copied: write the update back
                mean.copy_(flat_mean.view_as(mean))
            if flat_var.data_ptr() != var.data_ptr():
                var.copy_(flat_var.view_as(var))
            tracked = params.get(f"{prefix}.num_batches_tracked")
            if tracked is not None:
                tracked.add_(1)
    return out


def _count_layers(params: Params, prefix: str) -> int:
    n = 0
    while f"{prefix}.{n}.weight" in params:
        n += 1
    if n == 0:
        raise KeyError(f"no '{prefix}.0.weight' in params; got {sorted(params)[:8]}")
    return n


def population_size(params: Params) -> int:
    """N, the leading axis shared by every stacked tensor."""
    return next(iter(params.values())).shape[0]


# ----------------------------------------------------------------------------------------------
# Whole networks


def mlp_forward(
    params: Params,
    x: Tensor,
    *,
    activation: str = "relu",
    training: bool = False,
    dropout_p: Tensor | None = None,
    dropout_keys: Tensor | None = None,
    taps: dict[str, list[Tensor]] | None = None,
) -> Tensor:
    """N stacked MLPs ``layers.{i}.weight/bias``: linear, activation, dropout, ..., linear.

    ``taps``: when a dict, every hidden activation is appended to ``taps[group]`` (the permutation
    group it belongs to, as in :mod:`weightspace.spec`) in its kernel layout: feature-major
    ``[N, n, B]`` for dense layers, grouped ``[B, N*C, H, W]`` for convs (see :func:`to_grouped`).

    Shapes:
        params: ``layers.{i}.weight [N, out_i, in_i]``, ``layers.{i}.bias [N, out_i]``;
        x: ``[B, in]`` or ``[N, B, in]``; dropout_p, dropout_keys: ``[N]``. Returns ``[N, B, out]``
        (a transposed view of the feature-major ``[N, out, B]`` result).
    """
    depth = _count_layers(params, "layers")
    h = to_feature_major(x)
    for i in range(depth):
        h = linear_fm(h, params[f"layers.{i}.weight"], params.get(f"layers.{i}.bias"))
        if i < depth - 1:
            h = activate(h, activation)
            if taps is not None:
                taps.setdefault(f"layers.{i}", []).append(h)
            h = dropout(h, dropout_p, training, keys=dropout_keys, salt=i)
    return h.transpose(1, 2)


def siren_forward(params: Params, x: Tensor, *, w0: float = 30.0, taps: dict[str, list[Tensor]] | None = None) -> Tensor:
    """N stacked SIRENs: ``sin(w0 * linear(h))`` for every layer but the last, which is linear.
    ``taps``: as for :func:`mlp_forward`.

    Shapes:
        params: ``layers.{i}.weight [N, out_i, in_i]``, ``layers.{i}.bias [N, out_i]``;
        x: coordinates ``[B, in]`` (shared) or ``[N, B, in]``. Returns ``[N, B, out]``.
    """
    depth = _count_layers(params, "layers")
    h = to_feature_major(x)
    for i in range(depth):
        h = linear_fm(h, params[f"layers.{i}.weight"], params.get(f"layers.{i}.bias"))
        if i < depth - 1:
            h = torch.sin(w0 * h)
            if taps is not None:
                taps.setdefault(f"layers.{i}", []).append(h)
    return h.transpose(1, 2)


def _grouped_input(x: Tensor) -> tuple[Tensor, bool]:
    """Images ``[B, C, H, W]`` stay shared; ``[N, B, C, H, W]`` go to the grouped layout.

    (Channels-last memory format was measured 4-6x slower end to end for training here: NCHW.)
    """
    if x.dim() == 4:
        return x, True
    if x.dim() == 5:
        return to_grouped(x), False
    raise ValueError(f"images must be [B, C, H, W] or [N, B, C, H, W], got shape {tuple(x.shape)}")


def cnn_forward(
    params: Params,
    x: Tensor,
    *,
    activation: str = "relu",
    pool: str = "none",
    training: bool = False,
    dropout_p: Tensor | None = None,
    dropout_keys: Tensor | None = None,
    taps: dict[str, list[Tensor]] | None = None,
) -> Tensor:
    """N stacked CNNs: [conv, (BN), activation, (2x2 pool)] per layer, global average pool, dropout, head.
    ``taps``: as for :func:`mlp_forward` (each conv layer's output after its activation, before pooling).

    Shapes:
        params: ``convs.{i}.weight [N, C_out, C_in, k, k]``, ``convs.{i}.bias [N, C_out]`` (absent
        with BN), ``norms.{i}.* [N, C_out]``, ``head.weight [N, out, C]``, ``head.bias [N, out]``;
        x: ``[B, C, H, W]`` or ``[N, B, C, H, W]``. Returns ``[N, B, out]``.
    """
    n = population_size(params)
    h, shared = _grouped_input(x)
    for i in range(_count_layers(params, "convs")):
        h = conv2d(h, params[f"convs.{i}.weight"], params.get(f"convs.{i}.bias"), shared=shared)
        shared = False
        if f"norms.{i}.weight" in params:
            h = batch_norm(h, params, f"norms.{i}", training)
        h = activate(h, activation)
        if taps is not None:
            taps.setdefault(f"convs.{i}", []).append(h)
        if pool == "max":
            h = F.max_pool2d(h, 2)
        elif pool == "avg":
            h = F.avg_pool2d(h, 2)
    feats = dropout(grouped_pool(h, n), dropout_p, training, keys=dropout_keys)
    return linear_fm(feats, params["head.weight"], params["head.bias"]).transpose(1, 2)


def _basic_block(
    h: Tensor, params: Params, prefix: str, activation: str, training: bool, taps: dict[str, list[Tensor]] | None = None
) -> Tensor:
    """One residual basic block in the grouped layout (stride 2 when the channel count grows)."""
    c_in = params[f"{prefix}.conv1.weight"].shape[2]
    c_out = params[f"{prefix}.conv1.weight"].shape[1]
    stride = 2 if c_out != c_in else 1
    out = conv2d(h, params[f"{prefix}.conv1.weight"], None, shared=False, stride=stride)
    out = activate(batch_norm(out, params, f"{prefix}.bn1", training), activation)
    if taps is not None:
        taps.setdefault(f"{prefix}.conv1", []).append(out)
    out = conv2d(out, params[f"{prefix}.conv2.weight"], None, shared=False)
    out = batch_norm(out, params, f"{prefix}.bn2", training)
    if f"{prefix}.shortcut.conv.weight" in params:
        h = conv2d(h, params[f"{prefix}.shortcut.conv.weight"], None, shared=False, stride=stride)
        h = batch_norm(h, params, f"{prefix}.shortcut.bn", training)
    return activate(out + h, activation)


def resnet_forward(
    params: Params,
    x: Tensor,
    *,
    activation: str = "relu",
    training: bool = False,
    dropout_p: Tensor | None = None,
    dropout_keys: Tensor | None = None,
    taps: dict[str, list[Tensor]] | None = None,
) -> Tensor:
    """N stacked small ResNets: stem (conv, BN, act), basic blocks, global average pool, dropout, head.

    Block ``stages.{i}.{j}`` has ``conv1``/``bn1``/``conv2``/``bn2`` and, when its shape changes,
    ``shortcut.conv``/``shortcut.bn`` (1x1, stride 2). A block is strided (2) exactly when its
    output channels differ from its input channels (the first block of every stage after the first).
    ``taps``: as for :func:`mlp_forward`; the residual stream of stage ``i`` (``stages.{i}``, the
    stem's output for stage 0) gets every point on it, in order.

    Shapes:
        params: conv weights ``[N, C_out, C_in, k, k]``, BN tensors ``[N, C]``, ``head.weight
        [N, out, C]``; x: ``[B, C, H, W]`` or ``[N, B, C, H, W]``. Returns ``[N, B, out]``.
    """
    n = population_size(params)
    h, shared = _grouped_input(x)
    h = conv2d(h, params["stem.conv.weight"], None, shared=shared)
    h = activate(batch_norm(h, params, "stem.bn", training), activation)
    if taps is not None:
        taps.setdefault("stages.0", []).append(h)
    stage = 0
    while f"stages.{stage}.0.conv1.weight" in params:
        block = 0
        while f"stages.{stage}.{block}.conv1.weight" in params:
            h = _basic_block(h, params, f"stages.{stage}.{block}", activation, training, taps)
            if taps is not None:
                taps.setdefault(f"stages.{stage}", []).append(h)
            block += 1
        stage += 1
    feats = dropout(grouped_pool(h, n), dropout_p, training, keys=dropout_keys)
    return linear_fm(feats, params["head.weight"], params["head.bias"]).transpose(1, 2)


__all__ = [
    "ACTIVATIONS",
    "activate",
    "keyed_uniform",
    "dropout",
    "to_feature_major",
    "linear_fm",
    "linear",
    "to_grouped",
    "grouped_pool",
    "conv2d",
    "batch_norm",
    "population_size",
    "mlp_forward",
    "siren_forward",
    "cnn_forward",
    "resnet_forward",
]
