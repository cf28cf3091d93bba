"""Permutation specs: which tensor axes share a hidden-neuron permutation (as in Git Re-Basin).

Hidden neurons of a network can be reordered without changing its function, provided every tensor
that touches a layer's neurons is reordered the same way: the rows of the layer's weight and its
bias, the columns of the next layer's weight, its BatchNorm tensors, and (in a ResNet) every tensor
on the same residual stream. A :class:`PermutationSpec` is the small declarative table saying so:

    spec = PermutationSpec({
        "layers.0.weight": ("layers.0", None),        # [out, in]: rows by perm "layers.0"
        "layers.0.bias":   ("layers.0",),
        "layers.1.weight": (None, "layers.0"),        # columns by the same perm; outputs fixed
        "layers.1.bias":   (None,),
    })

Every algorithm (weight matching, activation matching, random permutations for augmentation,
canonicalisation for generators, equivariant encoders) reads this table and nothing else.

Getting a spec:

* :func:`spec_for` on an architecture config (``mlp``, ``siren``, ``cnn`` with or without
  BatchNorm, ``resnet``): declared from the config, with readable permutation names
  (``layers.{i}``, ``convs.{i}``, ``stages.{i}`` for the residual stream of stage ``i``,
  ``stages.{i}.{j}.conv1`` inside a block).
* :func:`spec_for` on an ``nn.Module``: traced with ``torch.fx`` for chains of Linear / Conv /
  BatchNorm / LayerNorm / elementwise activations / pooling / residual additions; anything else
  (attention, concatenation, reshapes of feature maps, ...) is refused with a :class:`ConfigError`.
* by hand, with the helpers :func:`dense`, :func:`conv` and :func:`norm`.

Conventions. A permutation ``perm`` (an int64 tensor ``[n]``) acts on an axis by ``take``:
the permuted tensor's entry ``i`` along that axis is the old entry ``perm[i]`` (new neuron ``i`` is old
neuron ``perm[i]``). Stacked populations (every tensor ``[N, *shape]``) are detected from the
tensors' ranks; their permutations may be shared (``[n]``) or per model (``[N, n]``).
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zoo.errors import ConfigError, MismatchError
from zoo.models.architectures import build_module, can_build, normalize_config, param_shapes
from zoo.registry import Registry

Axes = tuple[str | None, ...]
Perms = Mapping[str, Tensor]

__all__ = [
    "Axes",
    "PermutationSpec",
    "ChainLayer",
    "layer_chain",
    "dense",
    "conv",
    "norm",
    "spec_for",
    "register_spec_builder",
    "trace_spec",
    "apply_permutation",
    "random_permutation",
    "identity_permutation",
    "invert_permutation",
    "is_batched",
]


# ----------------------------------------------------------------------------------------------
# The table


@dataclass(frozen=True, eq=True)
class PermutationSpec:
    """For each state-dict name, the permutation acting on each of its axes (or None).

    ``axes["layers.0.weight"] == ("layers.0", None)``: axis 0 of that tensor is permuted by the
    permutation named ``"layers.0"``, axis 1 by none. Tensors that no permutation touches are
    listed with all-None axes (e.g. ``num_batches_tracked: ()``), so a spec covers a whole state dict.
    """

    axes: Mapping[str, Axes]

    def __post_init__(self) -> None:
        clean: dict[str, Axes] = {}
        for name, ax in dict(self.axes).items():
            if not isinstance(name, str) or not isinstance(ax, tuple | list):
                raise ConfigError(
                    f"a permutation spec maps tensor names to tuples (one permutation name or None per axis); "
                    f"got {name!r}: {ax!r}"
                )
            if any(p is not None and not (isinstance(p, str) and p) for p in ax):
                raise ConfigError(f"axes of {name!r} must be permutation names (str) or None, got {ax!r}")
            clean[name] = tuple(ax)
        object.__setattr__(self, "axes", clean)

    def __hash__(self) -> int:  # usable as a cache key (the table is immutable after construction)
        return hash(tuple(sorted(self.axes.items())))

    # -- views of the table
    @property
    def perms(self) -> list[str]:
        """Permutation names, in order of first appearance."""
        return list(self.perm_to_axes)

    @property
    def perm_to_axes(self) -> dict[str, list[tuple[str, int]]]:
        """``perm name -> [(tensor name, axis), ...]``: every axis a permutation acts on."""
        out: dict[str, list[tuple[str, int]]] = {}
        for name, ax in self.axes.items():
            for i, p in enumerate(ax):
                if p is not None:
                    out.setdefault(p, []).append((name, i))
        return out

    def sizes(self, shapes: Mapping[str, Tensor | Iterable[int]]) -> dict[str, int]:
        """Each permutation's size, read from tensors or shapes (stacked ``[N, ...]`` or not).

        Raises :class:`MismatchError` when a tensor's rank does not fit the spec or two axes sharing a
        permutation have different lengths.
        """
        dims = {k: tuple(v.shape) if isinstance(v, Tensor) else tuple(v) for k, v in shapes.items()}
        offset = _offset(self, dims)
        out: dict[str, int] = {}
        where: dict[str, str] = {}
        for name, shape in dims.items():
            for i, p in enumerate(self.axes.get(name, ())):
                if p is None:
                    continue
                n = shape[i + offset]
                if p in out and out[p] != n:
                    raise MismatchError(
                        f"permutation {p!r} acts on axes of different lengths: {where[p]} has {out[p]}, "
                        f"{name} axis {i} has {n}; the spec does not fit these tensors"
                    )
                out.setdefault(p, n)
                where.setdefault(p, f"{name} axis {i}")
        return out

    def check(self, state: Mapping[str, Tensor | Iterable[int]]) -> dict[str, int]:
        """Check that ``state`` has exactly the spec's tensors with consistent shapes; return the sizes."""
        missing = [k for k in self.axes if k not in state]
        extra = [k for k in state if k not in self.axes]
        if missing or extra:
            raise MismatchError(
                f"the permutation spec does not fit this state dict: missing {missing[:5]}, not in the spec {extra[:5]}; "
                "derive the spec from the model's own architecture (spec_for(config))"
            )
        return self.sizes(state)

    # -- JSON round trip (a spec is stored with learners that use it)
    def to_dict(self) -> dict[str, list[str | None]]:
        return {k: list(v) for k, v in self.axes.items()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Iterable[str | None]]) -> PermutationSpec:
        return cls({k: tuple(v) for k, v in d.items()})

    def __repr__(self) -> str:
        return f"PermutationSpec({len(self.axes)} tensors, perms={self.perms})"


# ----------------------------------------------------------------------------------------------
# The layer chain of a spec (the one walker: NP views, neural graphs)


@dataclass(frozen=True)
class ChainLayer:
    """One layer of a chain: tensor names and the permutations on its input/output neurons."""

    weight: str
    bias: str | None
    p_in: str | None
    p_out: str | None


def layer_chain(spec: PermutationSpec, *, what: str = "this view needs a chain of layers") -> list[ChainLayer]:
    """The spec's weight layers (rank >= 2: dense or conv) in forward order, input layer first.

    Each layer's input permutation is the previous layer's output permutation; the first reads fixed
    inputs, the walk ends at a layer with fixed outputs. Raises :class:`ConfigError` (prefixed with
    ``what``) when two layers read the same neurons (residual or branching architectures) or a
    permuted tensor is left out of the chain (BatchNorm, a second head, ...).
    """
    weights = {k: ax for k, ax in spec.axes.items() if len(ax) >= 2}
    by_in: dict[str | None, str] = {}
    for k, ax in weights.items():
        if ax[1] in by_in:
            raise ConfigError(f"{what}; {k!r} and {by_in[ax[1]]!r} read the same neurons "
                              "(a residual or branching architecture)")  # fmt: skip
        by_in[ax[1]] = k
    chain: list[ChainLayer] = []
    p: str | None = None
    while p in by_in:
        w = by_in.pop(p)
        prefix = w.rsplit(".", 1)[0]
        b = f"{prefix}.bias" if f"{prefix}.bias" in spec.axes else None
        chain.append(ChainLayer(w, b, p, weights[w][0]))
        p = weights[w][0]
        if p is None:
            break
    used = {x for lay in chain for x in (lay.weight, lay.bias) if x}
    left = [k for k, ax in spec.axes.items() if k not in used and any(a is not None for a in ax)]
    if left or not chain or by_in:
        raise ConfigError(f"{what}; left over: {left[:4] or sorted(by_in.values())[:4]}")
    return chain


# ----------------------------------------------------------------------------------------------
# Hand-declaration helpers (Git Re-Basin's dense/conv/norm)


def dense(name: str, p_in: str | None, p_out: str | None, bias: bool = True) -> dict[str, Axes]:
    """A linear layer ``name``: ``weight [out, in]`` by ``(p_out, p_in)``, ``bias [out]`` by ``(p_out,)``."""
    out: dict[str, Axes] = {f"{name}.weight": (p_out, p_in)}
    if bias:
        out[f"{name}.bias"] = (p_out,)
    return out


def conv(name: str, p_in: str | None, p_out: str | None, bias: bool = True, spatial: int = 2) -> dict[str, Axes]:
    """A conv layer ``name``: ``weight [out, in, *k]`` by ``(p_out, p_in, None, ...)``, ``bias [out]``."""
    out: dict[str, Axes] = {f"{name}.weight": (p_out, p_in, *([None] * spatial))}
    if bias:
        out[f"{name}.bias"] = (p_out,)
    return out


def norm(name: str, p: str | None, running_stats: bool = True, affine: bool = True) -> dict[str, Axes]:
    """A BatchNorm/LayerNorm ``name``: weight, bias (and running_mean/var) by ``p``; num_batches_tracked by none."""
    out: dict[str, Axes] = {}
    if affine:
        out.update({f"{name}.weight": (p,), f"{name}.bias": (p,)})
    if running_stats:
        out.update({f"{name}.running_mean": (p,), f"{name}.running_var": (p,), f"{name}.num_batches_tracked": ()})
    return out


# ----------------------------------------------------------------------------------------------
# Specs of the built-in families

SpecBuilder = Callable[[dict], PermutationSpec]
#: architecture family -> ``builder(normalized config) -> PermutationSpec``
SPEC_BUILDERS: Registry[SpecBuilder] = Registry("spec builder", entry_points="weightzoo.spec_builders")


def register_spec_builder(family: str) -> Callable[[SpecBuilder], SpecBuilder]:
    """Register ``builder(normalized config) -> PermutationSpec`` for an architecture family."""
    SPEC_BUILDERS.check_free(family)
    return SPEC_BUILDERS.register(family)


@register_spec_builder("mlp")
@register_spec_builder("siren")
def _mlp_spec(cfg: dict) -> PermutationSpec:
    depth = len(cfg["hidden"]) + 1
    axes: dict[str, Axes] = {}
    for i in range(depth):
        p_in = f"layers.{i - 1}" if i > 0 else None
        p_out = f"layers.{i}" if i < depth - 1 else None
        axes.update(dense(f"layers.{i}", p_in, p_out))
    return PermutationSpec(axes)


@register_spec_builder("cnn")
def _cnn_spec(cfg: dict) -> PermutationSpec:
    axes: dict[str, Axes] = {}
    bn = cfg["batchnorm"]
    for i in range(len(cfg["channels"])):
        axes.update(conv(f"convs.{i}", f"convs.{i - 1}" if i else None, f"convs.{i}", bias=not bn))
    if bn:
        for i in range(len(cfg["channels"])):
            axes.update(norm(f"norms.{i}", f"convs.{i}"))
    axes.update(dense("head", f"convs.{len(cfg['channels']) - 1}", None))
    return PermutationSpec(axes)


@register_spec_builder("resnet")
def _resnet_spec(cfg: dict) -> PermutationSpec:
    """Residual streams: one permutation per stage (``stages.{i}``), shared by the stem (stage 0),
    every block's second conv/BN and the stage's shortcut; one inner permutation per block."""
    axes: dict[str, Axes] = {**conv("stem.conv", None, "stages.0", bias=False), **norm("stem.bn", "stages.0")}
    for i, n_blocks in enumerate(cfg["blocks"]):
        stream = f"stages.{i}"
        for j in range(n_blocks):
            pre = f"stages.{i}.{j}"
            inner = f"{pre}.conv1"
            into = f"stages.{i - 1}" if (j == 0 and i > 0) else stream
            axes.update(conv(f"{pre}.conv1", into, inner, bias=False))
            axes.update(norm(f"{pre}.bn1", inner))
            axes.update(conv(f"{pre}.conv2", inner, stream, bias=False))
            axes.update(norm(f"{pre}.bn2", stream))
            if j == 0 and i > 0:
                axes.update(conv(f"{pre}.shortcut.conv", into, stream, bias=False, spatial=2))
                axes.update(norm(f"{pre}.shortcut.bn", stream))
    axes.update(dense("head", f"stages.{len(cfg['blocks']) - 1}", None))
    return PermutationSpec(axes)


def spec_for(model: Any) -> PermutationSpec:
    """The permutation spec of an architecture config, an ``nn.Module``, or a stored model record.

    A config of a family with a registered spec builder (mlp, siren, cnn, resnet) gets its declared
    spec; any other buildable family, and a module, is traced with ``torch.fx`` (:func:`trace_spec`);
    a :class:`PermutationSpec` is returned unchanged.
    Raises :class:`ConfigError` when no spec can be derived.
    """
    if isinstance(model, PermutationSpec):
        return model
    if isinstance(model, nn.Module):
        return trace_spec(model)
    cfg = getattr(model, "arch_config", model)  # a zoo ModelRecord
    if not isinstance(cfg, Mapping):
        raise ConfigError(
            f"spec_for needs an architecture config, an nn.Module or a model record, got {type(model).__name__}"
        )
    cfg = normalize_config(cfg)
    if cfg["family"] not in SPEC_BUILDERS and can_build(cfg):
        return trace_spec(build_module(cfg))  # a family without a declared spec: trace its module
    if cfg["family"] not in SPEC_BUILDERS:
        raise ConfigError(
            f"no permutation spec for architecture family {cfg['family']!r} (specs are known for "
            f"{', '.join(SPEC_BUILDERS.names())}); trace a module with spec_for(module) or declare one by hand "
            "with PermutationSpec({tensor name: (perm or None per axis)})"
        )
    spec = SPEC_BUILDERS.get(cfg["family"])(cfg)
    shapes = param_shapes(cfg)
    if set(shapes) != set(spec.axes):  # a builder out of step with the architecture: a bug, say so
        raise ConfigError(f"the {cfg['family']} spec builder does not cover the state dict: {sorted(set(shapes) ^ set(spec.axes))}")
    spec.sizes(shapes)
    return PermutationSpec({k: spec.axes[k] for k in shapes})  # state-dict order


# ----------------------------------------------------------------------------------------------
# Tracing arbitrary modules with torch.fx

_ELEMENTWISE_MODULES = (
    nn.ReLU, nn.ReLU6, nn.GELU, nn.Tanh, nn.Sigmoid, nn.SiLU, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU,
    nn.Softplus, nn.Mish, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.Identity, nn.Dropout,
    nn.Dropout1d, nn.Dropout2d, nn.AlphaDropout, nn.PReLU,
)  # fmt: skip
_POOL_MODULES = (nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d)
_ADAPTIVE_MODULES = (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d)
_UNARY_FUNCS = {
    torch.relu, F.relu, F.relu6, F.gelu, F.silu, F.leaky_relu, F.elu, F.selu, F.softplus, F.mish, F.hardtanh,
    F.hardswish, torch.sigmoid, F.sigmoid, torch.tanh, F.tanh, torch.sin, torch.cos, torch.exp, F.dropout,
    torch.abs, torch.neg, operator.neg,
}  # fmt: skip
_UNARY_METHODS = {"relu", "sigmoid", "tanh", "sin", "cos", "exp", "abs", "neg", "contiguous", "clone", "float"}
_BINARY = {operator.add, operator.sub, operator.mul, operator.truediv, torch.add, torch.sub, torch.mul, torch.div}
_BINARY_METHODS = {"add", "sub", "mul", "div"}
_POOL_FUNCS = {F.max_pool1d, F.max_pool2d, F.avg_pool1d, F.avg_pool2d}
_ADAPTIVE_FUNCS = {F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_max_pool1d, F.adaptive_max_pool2d}
_REDUCE = {"mean", "amax", "sum", "max"}

_FIXED = 0  # the union-find class of axes no permutation may touch (inputs, outputs)


@dataclass
class _Val:
    """What the tracer knows of a traced value: its feature-axis class and layout."""

    var: int  # union-find id of its feature axis (``_FIXED``: input-like, not permutable)
    spatial: int | None  # None: features last ([B, F]); k: channels at dim 1 with k spatial dims
    collapsed: bool = False  # spatial dims are all 1 (after adaptive pooling to 1)


class _Tracer:
    def __init__(self, module: nn.Module) -> None:
        self.module = module
        self.parent: list[int] = [_FIXED]
        self.origin: dict[int, str] = {}
        self.mod_io: dict[str, tuple[int, int]] = {}  # module name -> (in var, out var) of its first call
        self.axes: dict[str, tuple[int | None, ...]] = {}  # tensor name -> var per axis (None: no perm)

    # union-find with a FIXED class
    def new(self, origin: str) -> int:
        self.parent.append(len(self.parent))
        self.origin[len(self.parent) - 1] = origin
        return len(self.parent) - 1

    def find(self, v: int) -> int:
        while self.parent[v] != v:
            self.parent[v] = self.parent[self.parent[v]]
            v = self.parent[v]
        return v

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if rb == _FIXED or (ra != _FIXED and ra > rb):
            ra, rb = rb, ra
        self.parent[rb] = ra  # the FIXED class, else the older class, is the root

    def refuse(self, node: Any, what: str) -> ConfigError:
        return ConfigError(
            f"cannot derive a permutation spec for {type(self.module).__name__}: {what} (at fx node {node.name!r}). "
            "Supported: chains of Linear, Conv1d/2d, BatchNorm, LayerNorm, elementwise activations, dropout, "
            "pooling, global average pooling, flatten after it, and residual additions. Declare the spec by hand "
            "with PermutationSpec({tensor name: (perm or None per axis)})"
        )

    def run(self) -> PermutationSpec:
        import torch.fx

        try:
            gm = torch.fx.symbolic_trace(self.module)
        except Exception as e:  # data-dependent control flow and the like
            raise ConfigError(
                f"torch.fx cannot trace {type(self.module).__name__} ({type(e).__name__}: {e}); "
                "declare the permutation spec by hand with PermutationSpec({...})"
            ) from None
        env: dict[Any, _Val | None] = {}
        modules = dict(gm.named_modules())
        for node in gm.graph.nodes:
            if node.op == "placeholder":
                env[node] = _Val(_FIXED, -1)  # unknown layout: feeds a Linear or a Conv
            elif node.op == "get_attr":
                raise self.refuse(node, f"the tensor {node.target!r} is used outside of a module")
            elif node.op == "call_module":
                env[node] = self.call_module(node, modules[node.target], [env.get(a) for a in _node_args(node)])
            elif node.op in ("call_function", "call_method"):
                env[node] = self.call_function(node, env)
            elif node.op == "output":
                for a in _flatten(node.args):
                    if isinstance(a, torch.fx.Node) and isinstance(env.get(a), _Val):
                        self.union(env[a].var, _FIXED)
        return self.spec()

    def call_module(self, node: Any, m: nn.Module, args: list[_Val | None]) -> _Val:
        name = node.target
        x = args[0] if args else None
        if not isinstance(x, _Val):
            raise self.refuse(node, f"module {name!r} is not applied to a traced tensor")
        if isinstance(m, nn.Linear):
            if x.spatial not in (None, -1) and not x.collapsed:
                raise self.refuse(node, f"Linear {name!r} is applied to a feature map (flatten it after global pooling)")
            return self.layer(name, x.var, lambda o, i: ((o, i), (o,)), bias=m.bias is not None, spatial=None)
        if isinstance(m, nn.Conv1d | nn.Conv2d):
            if m.groups != 1:
                raise self.refuse(node, f"grouped conv {name!r} (groups={m.groups})")
            if x.spatial is None:
                raise self.refuse(node, f"conv {name!r} is applied to flat features")
            k = 1 if isinstance(m, nn.Conv1d) else 2
            return self.layer(name, x.var, lambda o, i: ((o, i, *([None] * k)), (o,)), bias=m.bias is not None, spatial=k)
        if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d | nn.LayerNorm | nn.GroupNorm):
            if isinstance(m, nn.LayerNorm) and (len(m.normalized_shape) != 1 or x.spatial not in (None, -1)):
                raise self.refuse(node, f"LayerNorm {name!r} over more than the feature axis")
            if isinstance(m, nn.GroupNorm) and m.num_groups not in (1, m.num_channels):
                raise self.refuse(node, f"GroupNorm {name!r} with {m.num_groups} groups of channels")
            self.bind(name, x.var, x.var)
            for pname, t in list(m.named_parameters(recurse=False)) + list(m.named_buffers(recurse=False)):
                self.axes[f"{name}.{pname}"] = (x.var,) if t.dim() == 1 else ()
            return x
        if isinstance(m, _ELEMENTWISE_MODULES):
            if isinstance(m, nn.PReLU) and m.num_parameters != 1:
                raise self.refuse(node, f"PReLU {name!r} with per-channel slopes")
            for pname, _ in m.named_parameters(recurse=False):
                self.axes[f"{name}.{pname}"] = (None,)
            return x
        if isinstance(m, _POOL_MODULES):
            return x
        if isinstance(m, _ADAPTIVE_MODULES):
            size = m.output_size if isinstance(m.output_size, tuple) else (m.output_size,)
            return _Val(x.var, x.spatial, all(s == 1 for s in size) or x.collapsed)
        if isinstance(m, nn.Flatten):
            return self.flatten(node, x, m.start_dim)
        raise self.refuse(node, f"module {name!r} of type {type(m).__name__} is not supported")

    def layer(self, name: str, v_in: int, axes_of: Callable, *, bias: bool, spatial: int | None) -> _Val:
        if name in self.mod_io:  # a module called again (shared weights): same perms as its first call
            first_in, first_out = self.mod_io[name]
            self.union(first_in, v_in)
            return _Val(first_out, spatial)
        out = self.new(name)
        self.bind(name, v_in, out)
        w, b = axes_of(out, v_in)
        self.axes[f"{name}.weight"] = w
        if bias:
            self.axes[f"{name}.bias"] = b
        return _Val(out, spatial)

    def bind(self, name: str, v_in: int, v_out: int) -> None:
        if name in self.mod_io:
            self.union(self.mod_io[name][0], v_in)
            self.union(self.mod_io[name][1], v_out)
        else:
            self.mod_io[name] = (v_in, v_out)

    def flatten(self, node: Any, x: _Val, start_dim: int) -> _Val:
        if start_dim != 1:
            raise self.refuse(node, f"flatten from dim {start_dim}")
        if x.spatial in (None, -1) or x.collapsed:
            return _Val(x.var, None)
        raise self.refuse(node, "flattening a feature map mixes channels with positions")

    def call_function(self, node: Any, env: dict[Any, _Val | None]) -> _Val | None:
        import torch.fx

        target = node.target
        vals = [env.get(a) if isinstance(a, torch.fx.Node) else None for a in node.args]
        tensors = [v for v in vals if isinstance(v, _Val)]
        is_method = node.op == "call_method"
        if is_method and target in ("size", "dim") or (not is_method and target is getattr):
            return None  # shape arithmetic: not a tensor
        if not tensors:
            if any(isinstance(a, torch.fx.Node) and env.get(a) is not None for a in _flatten(node.args)):
                raise self.refuse(node, f"{_label(node)} on a list of tensors")
            return None
        x = tensors[0]
        if (is_method and target in _UNARY_METHODS) or (not is_method and target in _UNARY_FUNCS):
            return x
        if (is_method and target in _BINARY_METHODS) or (not is_method and target in _BINARY):
            for other in tensors[1:]:
                if x.spatial not in (-1,) and other.spatial not in (-1,) and (x.spatial is None) != (other.spatial is None):
                    raise self.refuse(node, f"{_label(node)} of a feature map with flat features")
                self.union(x.var, other.var)
            return x
        if not is_method and target in _POOL_FUNCS:
            return x
        if not is_method and target in _ADAPTIVE_FUNCS:
            size = node.args[1] if len(node.args) > 1 else node.kwargs.get("output_size")
            size = size if isinstance(size, tuple | list) else (size,)
            return _Val(x.var, x.spatial, all(s == 1 for s in size) or x.collapsed)
        if (is_method and target == "flatten") or (not is_method and target is torch.flatten):
            start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
            return self.flatten(node, x, start)
        if (is_method and target in ("view", "reshape")) or (not is_method and target is torch.reshape):
            if x.spatial == -1:  # the raw input: its layout is the caller's business
                return x
            if x.collapsed:
                return _Val(x.var, None)
            raise self.refuse(node, "reshaping features or a feature map")
        if (is_method and target in _REDUCE) or (not is_method and target in (torch.mean, torch.amax, torch.sum)):
            dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
            keep = node.kwargs.get("keepdim", node.args[2] if len(node.args) > 2 else False)
            dims = tuple(dims) if isinstance(dims, tuple | list) else (dims,)
            k = x.spatial if isinstance(x.spatial, int) and x.spatial > 0 else None
            spatial_dims = {*range(2, 2 + k), *range(-k, 0)} if k else set()
            if k and dims and set(dims) <= spatial_dims and len(set(d % (2 + k) for d in dims)) == k:
                return _Val(x.var, k, True) if keep else _Val(x.var, None)
            raise self.refuse(node, f"{_label(node)} over dims {dims} (only global pooling over all spatial dims)")
        raise self.refuse(node, f"{_label(node)} is not supported")

    def spec(self) -> PermutationSpec:
        names: dict[int, str] = {}
        for v in sorted(self.origin):
            r = self.find(v)
            if r != _FIXED and r not in names:
                names[r] = self.origin[v]
        state = self.module.state_dict()
        axes: dict[str, Axes] = {}
        for key, t in state.items():
            vars_ = self.axes.get(key)
            if vars_ is None:  # a tensor of a module the forward never used
                axes[key] = (None,) * t.dim()
                continue
            axes[key] = tuple(None if v is None or self.find(v) == _FIXED else names[self.find(v)] for v in vars_)
        spec = PermutationSpec(axes)
        spec.sizes(state)
        return spec


def _node_args(node: Any) -> list[Any]:
    return list(node.args)


def _flatten(args: Any) -> list[Any]:
    out: list[Any] = []
    for a in args if isinstance(args, tuple | list) else [args]:
        if isinstance(a, tuple | list):
            out += _flatten(a)
        elif isinstance(a, dict):
            out += _flatten(list(a.values()))
        else:
            out.append(a)
    return out


def _label(node: Any) -> str:
    t = node.target
    return f"method .{t}()" if node.op == "call_method" else f"function {getattr(t, '__name__', t)}"


def trace_spec(module: nn.Module) -> PermutationSpec:
    """Derive a spec by tracing ``module`` with ``torch.fx`` (see the module docstring for what is supported).

    Permutations are named after the module that produces them (``"features.0"``); a residual
    addition ties its operands' permutations into one; the network's inputs and outputs are fixed.
    """
    return _Tracer(module).run()


# ----------------------------------------------------------------------------------------------
# Using a spec


def _offset(spec: PermutationSpec, dims: Mapping[str, tuple[int, ...]]) -> int:
    """0 for a single model's tensors, 1 for a stacked population's (decided from the ranks)."""
    offs = set()
    for name, shape in dims.items():
        ax = spec.axes.get(name)
        if ax is None:
            continue
        d = len(shape) - len(ax)
        if d not in (0, 1):
            raise MismatchError(
                f"tensor {name!r} has shape {shape} but the spec gives it {len(ax)} axes; "
                "give one model's tensors or a stacked population [N, ...]"
            )
        offs.add(d)
    if len(offs) > 1:
        raise MismatchError("some tensors are stacked [N, ...] and others are not; stack all or none")
    return offs.pop() if offs else 0


def is_batched(spec: PermutationSpec, state: Mapping[str, Tensor]) -> bool:
    """True when ``state`` is a stacked population (every tensor ``[N, *shape]``)."""
    return _offset(spec, {k: tuple(v.shape) for k, v in state.items()}) == 1


def permute_tensor(t: Tensor, axes: Axes, perms: Perms, batched: bool, skip_axis: int | None = None) -> Tensor:
    """Permute one tensor's axes by ``perms`` (all but ``skip_axis``).

    Shapes:
        t: ``[*shape]`` or ``[N, *shape]`` when ``batched``; perms: ``[n]`` or, batched, ``[N, n]``.
    """
    off = int(batched)
    for i, p in enumerate(axes):
        if p is None or i == skip_axis or p not in perms:
            continue
        idx = perms[p].to(device=t.device, dtype=torch.long)
        d = i + off
        if idx.dim() == 1:
            t = t.index_select(d, idx)
        else:
            if not batched or idx.shape[0] != t.shape[0]:
                raise MismatchError(
                    f"per-model permutation {p!r} of shape {tuple(idx.shape)} needs a stacked population of "
                    f"{idx.shape[0]} models, got a tensor of shape {tuple(t.shape)}"
                )
            view = [1] * t.dim()
            view[0], view[d] = idx.shape[0], idx.shape[1]
            t = torch.take_along_dim(t, idx.view(view), dim=d)
    return t


def apply_permutation(spec: PermutationSpec, perms: Perms, state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Permute a state dict (or a stacked population) by ``perms``; the function it computes is unchanged.

    ``perms`` maps permutation names to int64 tensors ``[n]`` (or ``[N, n]``, one per model, for a
    stacked state); permutations left out are the identity. Tensors the spec does not list raise
    :class:`MismatchError`.

    Shapes:
        state: ``name -> [*shape]`` or stacked ``name -> [N, *shape]``; returns the same shapes.
    """
    unknown_perms = set(perms) - set(spec.perms)
    if unknown_perms:
        raise ConfigError(f"unknown permutation(s) {sorted(unknown_perms)}; this spec has {spec.perms}")
    extra = [k for k in state if k not in spec.axes]
    if extra:
        raise MismatchError(f"tensor(s) {extra[:5]} are not in the permutation spec; use the spec of this architecture")
    sizes = spec.sizes(state)
    for p, idx in perms.items():
        if p in sizes and idx.shape[-1] != sizes[p]:
            raise MismatchError(f"permutation {p!r} has length {idx.shape[-1]}, but its axes have {sizes[p]}")
    batched = is_batched(spec, state)
    return {k: permute_tensor(v, spec.axes[k], perms, batched) for k, v in state.items()}


def _sizes_of(spec: PermutationSpec, state_or_shapes: Mapping[str, Any] | Mapping[str, int]) -> dict[str, int]:
    if state_or_shapes and all(isinstance(v, int) for v in state_or_shapes.values()) and set(state_or_shapes) <= set(spec.perms):
        return dict(state_or_shapes)  # already perm sizes
    return spec.sizes(state_or_shapes)


def random_permutation(
    spec: PermutationSpec,
    state_or_shapes: Mapping[str, Any],
    generator: torch.Generator | None = None,
    *,
    batch: int | None = None,
) -> dict[str, Tensor]:
    """A uniformly random permutation for every permutation of the spec.

    ``state_or_shapes``: a state dict, a stacked population, ``{name: shape}`` or ``{perm: size}``.
    With ``batch=N`` each of N models gets its own draw.

    Shapes:
        returns ``perm -> [n]`` int64, or ``[N, n]`` with ``batch``.
    """
    out = {}
    for p, n in _sizes_of(spec, state_or_shapes).items():
        if batch is None:
            out[p] = torch.randperm(n, generator=generator)
        else:
            out[p] = torch.argsort(torch.rand(batch, n, generator=generator), dim=1)
    return out


def identity_permutation(spec: PermutationSpec, state_or_shapes: Mapping[str, Any], *, batch: int | None = None) -> dict[str, Tensor]:
    """The identity for every permutation (``[n]``, or ``[N, n]`` with ``batch``)."""
    out = {}
    for p, n in _sizes_of(spec, state_or_shapes).items():
        a = torch.arange(n)
        out[p] = a if batch is None else a.expand(batch, n).clone()
    return out


def invert_permutation(perms: Perms) -> dict[str, Tensor]:
    """The inverse permutations: ``apply(inv, apply(perms, s)) == s``. Works on ``[n]`` and ``[N, n]``."""
    return {p: torch.argsort(v, dim=-1) for p, v in perms.items()}
