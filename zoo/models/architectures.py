"""The architectures registry: an architecture config (a JSON dict) -> a ``torch.nn.Module`` builder.

Every stored model carries an architecture config, a JSON-able dict with a ``"family"`` key. For
the families below the registry can build the module, list its state-dict shapes, check a state
dict against it and instantiate a stored model. Configs are canonicalised by
:func:`normalize_config` (defaults filled in, values validated and typed), so two spellings of the
same architecture get the same :func:`config_hash`.

Families and their keys (default in brackets):

``mlp`` -- fully connected network: linear, activation, dropout, ..., linear. Inputs ``[B, in]``
(images are flattened).
    - ``in_features`` [64]: input size.
    - ``hidden`` [[32]]: hidden layer widths (may be empty: a linear model).
    - ``out_features`` [10]: output size (classes).
    - ``activation`` ["relu"]: one of relu, gelu, tanh, sigmoid, leaky_relu, silu.
    - ``dropout`` [0.0]: dropout probability after every hidden activation.
    State dict: ``layers.{i}.weight [out_i, in_i]``, ``layers.{i}.bias [out_i]``.

``cnn`` -- small CNN: per layer conv (stride 1, 'same' padding), optional BatchNorm, activation,
optional 2x2 pooling; then global average pooling, dropout and a linear head. Inputs ``[B, C, H, W]``.
    - ``in_channels`` [1], ``image_size`` [8] (square images; checked against the pooling).
    - ``channels`` [[8, 16]]: output channels of each conv layer (at least one).
    - ``kernel_size`` [3]: odd.
    - ``batchnorm`` [false]: BatchNorm2d after each conv (the convs then have no bias).
    - ``activation`` ["relu"]: as for mlp.
    - ``pool`` ["none"]: "none", "max" or "avg" (2x2, after each layer's activation).
    - ``dropout`` [0.0]: before the head.
    - ``out_features`` [10].
    State dict: ``convs.{i}.weight [C_out, C_in, k, k]``, ``convs.{i}.bias [C_out]`` (without BN),
    ``norms.{i}.{weight,bias,running_mean,running_var} [C_out]`` and ``norms.{i}.num_batches_tracked
    []`` (with BN), ``head.weight [out, C_last]``, ``head.bias [out]``.

``siren`` -- implicit neural representation (Sitzmann et al. 2020): ``sin(w0 * linear(x))`` for
every layer but the last, which is linear; SIREN init (first layer U(-1/in, 1/in), later layers
U(-sqrt(6/in)/w0, sqrt(6/in)/w0), biases as ``nn.Linear``). Inputs are coordinates ``[B, in]``.
    - ``in_features`` [2], ``hidden`` [[32, 32]] (at least one), ``out_features`` [1], ``w0`` [30.0].
    State dict: as mlp.

``resnet`` -- small ResNet: stem (3x3 conv, BN, activation), stages of residual basic blocks
(3x3 conv, BN, act, 3x3 conv, BN, + shortcut, act), global average pooling, dropout, linear head.
Stage ``i`` has ``width * 2**i`` channels; its first block has stride 2 (i > 0) and a 1x1 conv + BN
shortcut. Inputs ``[B, C, H, W]``.
    - ``in_channels`` [1], ``image_size`` [8], ``width`` [16], ``blocks`` [[1, 1]] (blocks per stage),
      ``activation`` ["relu"], ``dropout`` [0.0], ``out_features`` [10].
    State dict: ``stem.conv.weight``, ``stem.bn.*``, ``stages.{i}.{j}.conv1.weight``,
    ``stages.{i}.{j}.bn1.*``, ``stages.{i}.{j}.conv2.weight``, ``stages.{i}.{j}.bn2.*``,
    ``stages.{i}.{j}.shortcut.conv.weight``, ``stages.{i}.{j}.shortcut.bn.*``, ``head.weight``,
    ``head.bias`` (convs have no bias; ``bn.*`` = weight, bias, running_mean, running_var,
    num_batches_tracked).

``raw`` -- an arbitrary state dict without a builder: accepted by :func:`normalize_config` and
:func:`config_hash` (any JSON-able keys), refused by :func:`build_module`; :func:`can_build` is False.

New families are registered with :func:`register_architecture` (one decorated builder per family).
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from kernels import batched
from zoo.errors import ConfigError, DuplicateError, MismatchError
from zoo.jsonlimits import check_config
from zoo.registry import Registry

RAW_FAMILY = "raw"

# ----------------------------------------------------------------------------------------------
# Field checks: (key, value) -> canonical value, or ConfigError


Check = Callable[[str, Any], Any]


def positive_int(key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"architecture key {key!r} must be a positive integer, got {value!r}")
    return int(value)


def int_list(min_len: int = 0) -> Check:
    def check(key: str, value: Any) -> list[int]:
        if not isinstance(value, list | tuple) or len(value) < min_len:
            raise ConfigError(
                f"architecture key {key!r} must be a list of at least {min_len} positive integers, got {value!r}"
            )
        return [positive_int(f"{key}[{i}]", v) for i, v in enumerate(value)]

    return check


def probability(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value < 1.0:
        raise ConfigError(f"architecture key {key!r} must be a number in [0, 1), got {value!r}")
    return float(value)


def positive_float(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0 or math.isinf(value):
        raise ConfigError(f"architecture key {key!r} must be a positive number, got {value!r}")
    return float(value)


def boolean(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"architecture key {key!r} must be true or false, got {value!r}")
    return value


def choice(*options: str) -> Check:
    def check(key: str, value: Any) -> str:
        if value not in options:
            raise ConfigError(f"architecture key {key!r} must be one of {', '.join(options)}; got {value!r}")
        return value

    return check


ACTIVATION_NAMES = ("relu", "gelu", "tanh", "sigmoid", "leaky_relu", "silu")
activation_choice = choice(*ACTIVATION_NAMES)

# ----------------------------------------------------------------------------------------------
# The registry


#: what a family's output means: class logits (evaluated by accuracy), a regression target, or an
#: implicit neural representation (coordinates in, signal out; evaluated by PSNR)
Head = Literal["classifier", "regressor", "inr"]


@dataclass(frozen=True)
class Family:
    """A registered architecture family: the one home of what the code knows about it.

    Its builder and config schema, what its output is (``head``), and the shape of one input sample
    (``input_shape(config)``: ``(in_features,)`` for dense nets, ``(C, H, W)`` for image nets). The
    permutation spec of a family lives in :mod:`weightspace.spec` (registered under the same name,
    else traced with torch.fx); its batched forward in :mod:`kernels.batched`.
    """

    name: str
    builder: Callable[[dict], nn.Module]
    fields: Mapping[str, tuple[Any, Check]]  # key -> (default, check)
    validate: Callable[[dict], None] | None = None
    head: Head = "classifier"
    input_shape: Callable[[dict], tuple[int, ...]] | None = None
    #: a loose upper bound on the activation floats one sample needs (sizes evaluation batches)
    activation_floats: Callable[[dict], int] | None = None
    #: the batched forward of N stacked models: ``forward(cfg, params, x, *, training, dropout,
    #: dropout_keys, taps) -> [N, B, out]`` (:func:`zoo.build.evaluate.functional_forward` dispatches to it)
    forward: Callable[..., Tensor] | None = None

    @property
    def is_classifier(self) -> bool:
        return self.head == "classifier"


#: every buildable family by name (``raw`` is accepted by configs but is not a family: it has no builder)
FAMILIES: Registry[Family] = Registry("architecture family", plural="architecture families",
                                      entry_points="weightzoo.architectures")


def register_architecture(
    family: str,
    *,
    fields: Mapping[str, tuple[Any, Check]] | None = None,
    validate: Callable[[dict], None] | None = None,
    head: Head = "classifier",
    input_shape: Callable[[dict], tuple[int, ...]] | None = None,
    activation_floats: Callable[[dict], int] | None = None,
    forward: Callable[..., Tensor] | None = None,
) -> Callable[[Callable[[dict], nn.Module]], Callable[[dict], nn.Module]]:
    """Decorator registering ``builder(normalized_config) -> nn.Module`` under ``family``.

    ``fields`` maps every config key (but ``family``) to ``(default, check)``; ``validate`` checks
    constraints between keys; ``head`` says what the output is; ``input_shape(cfg)`` gives one
    sample's input shape; ``forward`` is the batched forward over stacked weights (optional: without
    it the family's models are stored and built, but not evaluated as a population). Refuses a name already taken (:class:`DuplicateError`).
    """
    if family == RAW_FAMILY:
        raise DuplicateError(f"architecture family {RAW_FAMILY!r} is reserved for state dicts without a builder")
    FAMILIES.check_free(family)

    def decorator(builder: Callable[[dict], nn.Module]) -> Callable[[dict], nn.Module]:
        FAMILIES.register(family, Family(family, builder, dict(fields or {}), validate, head, input_shape,
                                         activation_floats, forward))  # fmt: skip
        return builder

    return decorator


def get_family(config: Mapping[str, Any] | str) -> Family:
    """The :class:`Family` of a config (or of a family name); :class:`ConfigError` for ``raw`` or unknown."""
    name = config if isinstance(config, str) else _family(config)
    if name == RAW_FAMILY:
        raise ConfigError(
            "architecture family 'raw' has no builder: such models can be stored, compared and merged but "
            f"not run; give the model a buildable config ({', '.join(known_families())})"
        )
    return FAMILIES.get(name)


def is_classifier(config: Mapping[str, Any] | None) -> bool:
    """True when ``config`` is a buildable classifier (evaluated by accuracy on a labelled data set)."""
    try:
        return config is not None and get_family(config).is_classifier
    except ConfigError:
        return False


def input_shape(config: Mapping[str, Any]) -> tuple[int, ...]:
    """The shape of one input sample of ``config``'s models (``[B, *input_shape]`` is a batch)."""
    fam = get_family(config)
    if fam.input_shape is None:
        raise ConfigError(f"architecture family {fam.name!r} does not declare its input shape")
    return tuple(int(d) for d in fam.input_shape(normalize_config(config)))


def describe_input(config: Mapping[str, Any]) -> str:
    """One sample's input in words: ``[64] features`` or ``1 channel(s) of 8x8``."""
    shape = input_shape(config)
    if len(shape) == 1:
        return f"[{shape[0]}] features"
    return f"{shape[0]} channel(s) of {'x'.join(map(str, shape[1:]))}"


def activation_floats(config: Mapping[str, Any]) -> int:
    """A loose upper bound on the activation floats one model needs per sample (1024 when undeclared)."""
    try:
        fam = get_family(config)
    except ConfigError:
        return 1024
    return int(fam.activation_floats(normalize_config(config))) if fam.activation_floats else 1024


def known_families() -> list[str]:
    """The families that have a builder, sorted (``"raw"`` is accepted too but has none)."""
    return FAMILIES.names()


def _family(config: Mapping[str, Any] | None) -> str:
    if not isinstance(config, Mapping):
        raise ConfigError(f"an architecture config must be a dict with a 'family' key, got {config!r}")
    family = config.get("family")
    if not isinstance(family, str) or (family != RAW_FAMILY and family not in FAMILIES):
        raise ConfigError(
            f"unknown architecture family {family!r}; valid families: "
            f"{', '.join(known_families())} (or {RAW_FAMILY!r} for state dicts without a builder)"
        )
    return family


def normalize_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """The canonical form of a config: defaults filled in, values validated and typed.

    Raises :class:`ConfigError` for an unknown family (listing the valid ones), an unknown key
    (listing the valid keys), a bad value, or a config over the size/depth bounds of
    :mod:`zoo.jsonlimits` (the one guard for every config the catalog stores).
    """
    check_config(config)
    family = _family(config)
    if family == RAW_FAMILY:
        try:
            return json.loads(json.dumps(dict(config), sort_keys=True))
        except (TypeError, ValueError) as e:
            raise ConfigError(f"a 'raw' architecture config must be JSON-able: {e}") from None
    spec = FAMILIES.get(family)
    unknown = sorted(set(config) - set(spec.fields) - {"family"})
    if unknown:
        raise ConfigError(
            f"unknown key(s) {', '.join(map(repr, unknown))} for architecture family {family!r}; "
            f"valid keys: family, {', '.join(spec.fields)}"
        )
    out: dict[str, Any] = {"family": family}
    for key, (default, check) in spec.fields.items():
        out[key] = check(key, config.get(key, default))
    if spec.validate is not None:
        spec.validate(out)
    return out


def canonical_json(config: Mapping[str, Any]) -> str:
    """The canonical JSON text of a config (normalised, sorted keys, no spaces)."""
    return json.dumps(normalize_config(config), sort_keys=True, separators=(",", ":"))


def config_hash(config: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of the canonical JSON of ``normalize_config(config)``."""
    return hashlib.sha256(canonical_json(config).encode()).hexdigest()


def can_build(config: Mapping[str, Any] | None) -> bool:
    """True when ``config`` names a registered family and is valid (False for raw/unknown/None)."""
    try:
        return _family(config) != RAW_FAMILY and bool(normalize_config(config))
    except ConfigError:
        return False


def build_module(config: Mapping[str, Any]) -> nn.Module:
    """A freshly initialised module for ``config`` (PyTorch's default init; SIREN init for siren)."""
    norm = normalize_config(config)
    if norm["family"] == RAW_FAMILY:
        raise ConfigError(
            "architecture family 'raw' has no builder: such models can be stored, compared and merged "
            f"but not instantiated; give the model a buildable config ({', '.join(known_families())})"
        )
    return FAMILIES.get(norm["family"]).builder(norm)


@functools.lru_cache(maxsize=256)
def _shapes_and_params(canonical: str) -> tuple[tuple[tuple[str, tuple[int, ...]], ...], frozenset[str]]:
    with torch.device("meta"):
        module = build_module(json.loads(canonical))
    shapes = tuple((k, tuple(v.shape)) for k, v in module.state_dict().items())
    return shapes, frozenset(name for name, _ in module.named_parameters())


def param_shapes(config: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """State-dict names -> shapes (parameters and buffers such as BN running stats), in module order."""
    return dict(_shapes_and_params(canonical_json(config))[0])


def parameter_names(config: Mapping[str, Any]) -> list[str]:
    """The trainable tensors' names (the state dict minus buffers), in module order."""
    shapes, params = _shapes_and_params(canonical_json(config))
    return [k for k, _ in shapes if k in params]


def check_state_dict(config: Mapping[str, Any], state: Mapping[str, Tensor]) -> None:
    """Raise :class:`MismatchError` unless ``state`` has exactly the names and shapes of ``config``."""
    _check(config, {k: tuple(v.shape) for k, v in state.items()}, lead=())


def check_stacked(config: Mapping[str, Any], params: Mapping[str, Tensor]) -> int:
    """Check a stacked population (every tensor ``[N, *shape]``) against ``config``; return N."""
    sizes = {v.shape[0] if v.dim() else None for v in params.values()}
    if len(sizes) != 1 or None in sizes:
        raise MismatchError(
            "stacked population tensors must share one leading (model) axis; got leading sizes "
            f"{sorted(s for s in sizes if s is not None)}{' and a scalar' if None in sizes else ''}"
        )
    (n,) = sizes
    _check(config, {k: tuple(v.shape) for k, v in params.items()}, lead=(n,))
    return int(n)


def _check(config: Mapping[str, Any], got: Mapping[str, tuple[int, ...]], lead: tuple[int, ...]) -> None:
    want = {k: lead + s for k, s in param_shapes(config).items()}
    missing = [k for k in want if k not in got]
    unexpected = [k for k in got if k not in want]
    wrong = [f"{k}: expected {want[k]}, got {got[k]}" for k in want if k in got and got[k] != want[k]]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing keys: {', '.join(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {', '.join(unexpected)}")
        if wrong:
            parts.append(f"wrong shapes: {'; '.join(wrong)}")
        raise MismatchError(
            f"state dict does not fit architecture {canonical_json(config)}: {' | '.join(parts)}. "
            "Check that the config matches the checkpoint (layer sizes, batchnorm, family)."
        )


def instantiate(config: Mapping[str, Any], state: Mapping[str, Tensor]) -> nn.Module:
    """Build the module for ``config``, load ``state`` strictly and put it in eval mode."""
    check_state_dict(config, state)
    module = build_module(config)
    module.load_state_dict(dict(state), strict=True)
    return module.eval()


def init_state(config: Mapping[str, Any], seed: int, init_scale: float = 1.0) -> dict[str, Tensor]:
    """A fresh state dict drawn by ``build_module`` under ``torch.manual_seed(seed)``.

    The global RNG state is restored afterwards. Weights and biases of linear and conv layers are
    multiplied by ``init_scale`` (normalisation layers and buffers are left as they are).
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module = build_module(config)
    if init_scale != 1.0:
        with torch.no_grad():
            for m in module.modules():
                if isinstance(m, nn.Linear | nn.Conv2d):
                    for p in m.parameters(recurse=False):
                        p.mul_(init_scale)
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


# ----------------------------------------------------------------------------------------------
# Modules (one concept each)

_ACTIVATION_MODULES: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "leaky_relu": nn.LeakyReLU,
    "silu": nn.SiLU,
}


def make_activation(name: str) -> nn.Module:
    """The activation module for a config name (see ``ACTIVATION_NAMES``)."""
    return _ACTIVATION_MODULES[name]()


class MLP(nn.Module):
    """Linear, activation, dropout, ..., linear. Shapes: ``[B, *in]`` (flattened) -> ``[B, out]``."""

    def __init__(self, widths: list[int], activation: str = "relu", dropout: float = 0.0) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:], strict=True))
        self.activation = make_activation(activation)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        x = x.flatten(1)
        for layer in self.layers[:-1]:
            x = self.dropout(self.activation(layer(x)))
        return self.layers[-1](x)


class ConvNet(nn.Module):
    """[conv, (BN), act, (pool)] x L, global average pool, dropout, linear head.

    Shapes: ``[B, C, H, W]`` -> ``[B, out]``.
    """

    def __init__(
        self,
        in_channels: int,
        channels: list[int],
        out_features: int,
        *,
        kernel_size: int = 3,
        batchnorm: bool = False,
        activation: str = "relu",
        pool: str = "none",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        ins = [in_channels, *channels[:-1]]
        self.convs = nn.ModuleList(
            nn.Conv2d(a, b, kernel_size, padding=kernel_size // 2, bias=not batchnorm)
            for a, b in zip(ins, channels, strict=True)
        )
        self.norms = nn.ModuleList(nn.BatchNorm2d(c) for c in channels) if batchnorm else nn.ModuleList()
        self.activation = make_activation(activation)
        self.pool = {"none": nn.Identity, "max": lambda: nn.MaxPool2d(2), "avg": lambda: nn.AvgPool2d(2)}[
            pool
        ]()
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(channels[-1], out_features)

    def forward(self, x: Tensor) -> Tensor:
        for i, conv in enumerate(self.convs):
            x = conv(x)
            if len(self.norms):
                x = self.norms[i](x)
            x = self.pool(self.activation(x))
        return self.head(self.dropout(x.mean(dim=(2, 3))))


class Siren(nn.Module):
    """SIREN: ``sin(w0 * linear(x))`` per hidden layer, a linear last layer; SIREN init.

    Shapes: coordinates ``[B, in]`` -> ``[B, out]``.
    """

    def __init__(self, widths: list[int], w0: float = 30.0) -> None:
        super().__init__()
        self.w0 = w0
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:], strict=True))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Sitzmann et al. 2020: U(-1/in, 1/in) first, U(-sqrt(6/in)/w0, sqrt(6/in)/w0) after."""
        with torch.no_grad():
            for i, layer in enumerate(self.layers):
                fan_in = layer.in_features
                bound = 1.0 / fan_in if i == 0 else math.sqrt(6.0 / fan_in) / self.w0
                layer.weight.uniform_(-bound, bound)

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.layers[:-1]:
            x = torch.sin(self.w0 * layer(x))
        return self.layers[-1](x)


class ConvBN(nn.Module):
    """A bias-free conv followed by BatchNorm (``conv.*``, ``bn.*``)."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int, stride: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel_size, stride=stride, padding=kernel_size // 2, bias=False)
        self.bn = nn.BatchNorm2d(c_out)

    def forward(self, x: Tensor) -> Tensor:
        return self.bn(self.conv(x))


class BasicBlock(nn.Module):
    """ResNet basic block: conv-BN-act-conv-BN plus shortcut, then act. Stride 2 iff channels change."""

    def __init__(self, c_in: int, c_out: int, activation: str = "relu") -> None:
        super().__init__()
        stride = 1 if c_in == c_out else 2
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = ConvBN(c_in, c_out, 1, stride) if c_in != c_out else None
        self.activation = make_activation(activation)

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn2(self.conv2(self.activation(self.bn1(self.conv1(x)))))
        return self.activation(out + (x if self.shortcut is None else self.shortcut(x)))


class ResNet(nn.Module):
    """Stem, stages of basic blocks (stage i: width * 2**i channels), pool, dropout, head."""

    def __init__(
        self,
        in_channels: int,
        width: int,
        blocks: list[int],
        out_features: int,
        activation: str = "relu",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.stem = ConvBN(in_channels, width, 3)
        self.activation = make_activation(activation)
        stages, c = [], width
        for i, n_blocks in enumerate(blocks):
            c_out = width * 2**i
            stage = [BasicBlock(c if j == 0 else c_out, c_out, activation) for j in range(n_blocks)]
            stages.append(nn.Sequential(*stage))
            c = c_out
        self.stages = nn.ModuleList(stages)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(c, out_features)

    def forward(self, x: Tensor) -> Tensor:
        x = self.activation(self.stem(x))
        for stage in self.stages:
            x = stage(x)
        return self.head(self.dropout(x.mean(dim=(2, 3))))


# ----------------------------------------------------------------------------------------------
# Built-in families


def _check_cnn(cfg: dict) -> None:
    if cfg["kernel_size"] % 2 == 0:
        raise ConfigError(f"cnn 'kernel_size' must be odd ('same' padding), got {cfg['kernel_size']}")
    if cfg["pool"] != "none" and cfg["image_size"] < 2 ** len(cfg["channels"]):
        raise ConfigError(
            f"cnn with {len(cfg['channels'])} pooled layers needs image_size >= {2 ** len(cfg['channels'])}, "
            f"got {cfg['image_size']}; use fewer layers or pool='none'"
        )


def _check_resnet(cfg: dict) -> None:
    if cfg["image_size"] < 2 ** (len(cfg["blocks"]) - 1):
        raise ConfigError(
            f"resnet with {len(cfg['blocks'])} stages needs image_size >= {2 ** (len(cfg['blocks']) - 1)}, "
            f"got {cfg['image_size']}"
        )


# Batched forwards (kernels.batched) of the built-in families: (cfg, params, x, ...) -> [N, B, out]
def _mlp_forward(cfg: dict, params: Any, x: Tensor, *, training: bool = False, dropout: Any = None,
                 dropout_keys: Any = None, taps: Any = None) -> Tensor:  # fmt: skip
    return batched.mlp_forward(params, x, activation=cfg["activation"], training=training, dropout_p=dropout,
                               dropout_keys=dropout_keys, taps=taps)  # fmt: skip


def _cnn_forward(cfg: dict, params: Any, x: Tensor, *, training: bool = False, dropout: Any = None,
                 dropout_keys: Any = None, taps: Any = None) -> Tensor:  # fmt: skip
    return batched.cnn_forward(params, x, activation=cfg["activation"], pool=cfg["pool"], training=training,
                               dropout_p=dropout, dropout_keys=dropout_keys, taps=taps)  # fmt: skip


def _siren_forward(cfg: dict, params: Any, x: Tensor, *, training: bool = False, dropout: Any = None,
                   dropout_keys: Any = None, taps: Any = None) -> Tensor:  # fmt: skip
    return batched.siren_forward(params, x, w0=cfg["w0"], taps=taps)


def _resnet_forward(cfg: dict, params: Any, x: Tensor, *, training: bool = False, dropout: Any = None,
                    dropout_keys: Any = None, taps: Any = None) -> Tensor:  # fmt: skip
    return batched.resnet_forward(params, x, activation=cfg["activation"], training=training, dropout_p=dropout,
                                  dropout_keys=dropout_keys, taps=taps)  # fmt: skip


@register_architecture(
    "mlp",
    fields={
        "in_features": (64, positive_int),
        "hidden": ([32], int_list(0)),
        "out_features": (10, positive_int),
        "activation": ("relu", activation_choice),
        "dropout": (0.0, probability),
    },
    forward=_mlp_forward,
    head="classifier",
    input_shape=lambda c: (c["in_features"],),
    activation_floats=lambda c: 3 * max(c["in_features"], c["out_features"], *c["hidden"]),
)
def _build_mlp(cfg: dict) -> nn.Module:
    return MLP([cfg["in_features"], *cfg["hidden"], cfg["out_features"]], cfg["activation"], cfg["dropout"])


@register_architecture(
    "cnn",
    fields={
        "in_channels": (1, positive_int),
        "image_size": (8, positive_int),
        "channels": ([8, 16], int_list(1)),
        "kernel_size": (3, positive_int),
        "batchnorm": (False, boolean),
        "activation": ("relu", activation_choice),
        "pool": ("none", choice("none", "max", "avg")),
        "dropout": (0.0, probability),
        "out_features": (10, positive_int),
    },
    forward=_cnn_forward,
    head="classifier",
    input_shape=lambda c: (c["in_channels"], c["image_size"], c["image_size"]),
    activation_floats=lambda c: 4 * max(c["channels"]) * c["image_size"] ** 2,
    validate=_check_cnn,
)
def _build_cnn(cfg: dict) -> nn.Module:
    return ConvNet(
        cfg["in_channels"],
        cfg["channels"],
        cfg["out_features"],
        kernel_size=cfg["kernel_size"],
        batchnorm=cfg["batchnorm"],
        activation=cfg["activation"],
        pool=cfg["pool"],
        dropout=cfg["dropout"],
    )


@register_architecture(
    "siren",
    fields={
        "in_features": (2, positive_int),
        "hidden": ([32, 32], int_list(1)),
        "out_features": (1, positive_int),
        "w0": (30.0, positive_float),
    },
    forward=_siren_forward,
    head="inr",
    input_shape=lambda c: (c["in_features"],),
    activation_floats=lambda c: 3 * max(c["in_features"], c["out_features"], *c["hidden"]),
)
def _build_siren(cfg: dict) -> nn.Module:
    return Siren([cfg["in_features"], *cfg["hidden"], cfg["out_features"]], cfg["w0"])


@register_architecture(
    "resnet",
    fields={
        "in_channels": (1, positive_int),
        "image_size": (8, positive_int),
        "width": (16, positive_int),
        "blocks": ([1, 1], int_list(1)),
        "activation": ("relu", activation_choice),
        "dropout": (0.0, probability),
        "out_features": (10, positive_int),
    },
    validate=_check_resnet,
    forward=_resnet_forward,
    head="classifier",
    input_shape=lambda c: (c["in_channels"], c["image_size"], c["image_size"]),
    activation_floats=lambda c: 6 * c["width"] * c["image_size"] ** 2,
)
def _build_resnet(cfg: dict) -> nn.Module:
    return ResNet(
        cfg["in_channels"],
        cfg["width"],
        cfg["blocks"],
        cfg["out_features"],
        cfg["activation"],
        cfg["dropout"],
    )


__all__ = [
    "RAW_FAMILY",
    "ACTIVATION_NAMES",
    "FAMILIES",
    "Family",
    "Head",
    "activation_floats",
    "describe_input",
    "get_family",
    "input_shape",
    "is_classifier",
    "register_architecture",
    "known_families",
    "normalize_config",
    "canonical_json",
    "config_hash",
    "can_build",
    "build_module",
    "param_shapes",
    "parameter_names",
    "check_state_dict",
    "check_stacked",
    "instantiate",
    "init_state",
    "make_activation",
    "MLP",
    "ConvNet",
    "Siren",
    "ConvBN",
    "BasicBlock",
    "ResNet",
]
