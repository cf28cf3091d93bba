"""The merge-method registry: a method is one decorated function over the tensors of one name.

A merge method is a plain function::

    @merge_method("linear", reference="https://arxiv.org/abs/2203.05482")
    def linear(tensors, base, *, weight: PerModel[float] = 1.0, normalize: bool = True) -> Tensor: ...

* ``tensors``: the models' tensors for one parameter name (a list, same shape and dtype),
* ``base``: the base model's tensor for that name, or ``None``,
* keyword-only parameters: the method's typed configuration. Their annotations and defaults *are*
  the config schema (:meth:`MergeMethod.resolve` checks and converts values against them).
  Every number must be finite; a valid range is declared in the annotation with
  ``Annotated[float, Range(...)]`` or the aliases :data:`Fraction` (0, 1], :data:`Unit` [0, 1],
  :data:`Positive` (0, inf) and :data:`NonNegative` [0, inf), e.g. ``density: list[Fraction]``.
  A parameter annotated ``PerModel[X]`` takes one value per model (``weight``, ``density``, ...); a
  scalar given for it is broadcast, and the function receives a list. A parameter named ``ctx``
  receives a :class:`TensorContext` (tensor name and a per-tensor seed) and is not configuration.
* ``from_metrics={"loss": "loss"}`` declares that a per-model parameter may be filled from each zoo
  model's stored metric of that name (val, then test, then train split) when it is not given, so
  neither the engine nor the explorer needs to know any method by name.
* ``chunking`` (:data:`Chunking`) says how the engine may split a large tensor.

The registry (a :class:`zoo.registry.Registry`, plug-ins through the ``weightzoo.merge_methods``
entry-point group) refuses duplicate names (:class:`~zoo.errors.DuplicateError`) and a lookup of an
unknown name raises :class:`~zoo.errors.ConfigError` listing the valid ones.
"""

from __future__ import annotations

import inspect
import math
import types
import typing
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, TypeVar, Union, get_args, get_origin

from torch import Tensor

from zoo.errors import ConfigError, MismatchError
from zoo.registry import Registry

__all__ = [
    "METHODS",
    "Chunking",
    "Fraction",
    "PerModel",
    "MergeMethod",
    "NonNegative",
    "ParamSpec",
    "Positive",
    "Range",
    "Unit",
    "TensorContext",
    "get_method",
    "list_methods",
    "merge_method",
    "register",
    "unregister",
]

MergeFn = Callable[..., Tensor]
_REQUIRED = inspect.Parameter.empty


@dataclass(frozen=True)
class TensorContext:
    """What a method may know besides the tensors: the parameter name and a per-tensor seed.

    ``seed`` is derived from the merge seed and the tensor name only, so a random method (DARE)
    gives the same result whatever order the tensors are merged in.
    """

    name: str = ""
    merge_seed: int = 0
    #: where this chunk starts in the flattened tensor (chunked merges; 0 for a whole tensor)
    offset: int = 0
    #: whole-tensor statistics a method computed beforehand (e.g. TIES's magnitude cuts per model)
    stats: Any = None

    @property
    def seed(self) -> int:
        return (self.merge_seed * 1_000_003 + zlib.crc32(self.name.encode())) % (2**63 - 1)


@dataclass(frozen=True)
class Range:
    """The valid values of a numeric parameter: ``lo`` .. ``hi`` (``None``: unbounded), each end
    open or closed. Any numeric parameter must also be finite, with or without a range."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False

    def contains(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.lo is not None and (value <= self.lo if self.lo_open else value < self.lo):
            return False
        return not (self.hi is not None and (value >= self.hi if self.hi_open else value > self.hi))

    def __str__(self) -> str:
        if self.lo is None and self.hi is None:
            return "a finite number"
        left = "-inf" if self.lo is None else f"{self.lo:g}"
        right = "inf" if self.hi is None else f"{self.hi:g}"
        lb = "(" if self.lo is None or self.lo_open else "["
        rb = ")" if self.hi is None or self.hi_open else "]"
        return f"{lb}{left}, {right}{rb}"


#: any finite number (the range of a plain ``float`` or ``int`` parameter)
FINITE = Range()
#: a fraction that keeps something: 0 < x <= 1 (densities)
Fraction = Annotated[float, Range(0, 1, lo_open=True)]
#: 0 <= x <= 1 (interpolation factors, shares)
Unit = Annotated[float, Range(0, 1)]
#: x > 0, finite (temperatures)
Positive = Annotated[float, Range(0, None, lo_open=True)]
#: x >= 0, finite (tolerances)
NonNegative = Annotated[float, Range(0, None)]

_T = TypeVar("_T")
#: a parameter with one value per model: ``weight: PerModel[float] = 1.0``, ``density: PerModel[Fraction]``.
#: A scalar (the default, or a value given globally) is broadcast; the method receives a list.
PerModel = Union[_T, list[_T]]  # noqa: UP007 - a generic alias needs typing.Union on Python 3.11

#: how the engine may split a large tensor: ``"elementwise"`` (any flat chunks), ``"magnitude"`` /
#: ``"magnitude_outliers"`` (flat chunks after two radix-select passes computing each model's
#: magnitude selection, handed over as ``ctx.stats``), ``"slerp"`` (flat chunks after a pass
#: accumulating the dot product and norms); ``None`` on a method: whole tensors only
Chunking = Literal["elementwise", "magnitude", "magnitude_outliers", "slerp"]


def _per_model_element(tp: Any) -> Any | None:
    """``X`` when ``tp`` is ``PerModel[X]`` (``X | list[X]``), else ``None``."""
    if get_origin(tp) not in (types.UnionType, typing.Union):
        return None
    args = get_args(tp)
    if len(args) != 2:
        return None
    for a, b in (args, args[::-1]):
        if get_origin(b) is list and get_args(b) == (a,):
            return a
    return None


def split_range(tp: Any) -> tuple[Any, Range | None]:
    """``Annotated[float, Range(...)]`` -> ``(float, Range(...))``; other types -> ``(tp, None)``."""
    if get_origin(tp) is Annotated:
        base, *meta = get_args(tp)
        return base, next((m for m in meta if isinstance(m, Range)), None)
    return tp, None


def check_number(value: Any, rng: Range | None, what: str) -> Any:
    """``value`` itself when it is not a number, or a finite number in ``rng``; else :class:`ConfigError`."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return value
    rng = rng or FINITE
    if not rng.contains(float(value)):
        raise ConfigError(f"{what} must be {'in ' if rng is not FINITE else ''}{rng}, got {value!r}; "
                          "give a value in that range")  # fmt: skip
    return value


@dataclass(frozen=True)
class ParamSpec:
    """One typed configuration parameter of a method (read from the function's signature)."""

    name: str
    type: Any
    default: Any = _REQUIRED
    per_model: bool = False
    #: the function's argument name (``lambda_`` for the config name ``lambda``)
    arg: str = ""
    #: valid values of a numeric parameter (``None``: any finite number)
    range: Range | None = None

    @property
    def required(self) -> bool:
        return self.default is _REQUIRED

    def describe(self) -> str:
        t = _type_name(self.type)
        d = "required" if self.required else f"default {self.default!r}"
        r = f" in {self.range}" if self.range is not None else ""
        return f"{self.name}: {t}{' per model' if self.per_model else ''}{r} ({d})"

    def convert(self, value: Any, method: str) -> Any:
        """``value`` checked and converted to this parameter's type; numbers must be finite and in range."""
        what = f"{method}: parameter {self.name!r}"
        return check_number(_convert(value, self.type, what), self.range, what)


@dataclass(frozen=True)
class MergeMethod:
    """A registered merge method: its function, parameter schema and input contract."""

    name: str
    fn: MergeFn
    params: tuple[ParamSpec, ...]
    base: Literal["required", "optional", "ignored"] = "optional"
    min_models: int = 1
    max_models: int | None = None
    reference: str = ""
    summary: str = ""
    #: merging k identical copies (with any base) returns that model
    copies_give_model: bool = True
    #: how the engine may split a large tensor (:data:`Chunking`; ``None``: whole tensors only)
    chunking: Chunking | None = None
    #: per-model parameter -> the stored metric that fills it for zoo models when it is not given
    from_metrics: Mapping[str, str] = field(default_factory=dict)
    takes_ctx: bool = field(default=False, repr=False)

    def param(self, name: str) -> ParamSpec:
        for p in self.params:
            if p.name == name:
                return p
        raise ConfigError(f"merge method {self.name!r} has no parameter {name!r}; it takes: {self.param_names()}")

    def param_names(self) -> str:
        return ", ".join(p.name for p in self.params) or "(no parameters)"

    def resolve(
        self,
        n_models: int,
        parameters: Mapping[str, Any] | None = None,
        model_parameters: Sequence[Mapping[str, Any] | None] | None = None,
        *,
        require: bool = True,
    ) -> dict[str, Any]:
        """The full, typed parameter set for ``n_models`` models.

        ``parameters`` are global (a per-model parameter given here applies to every model unless
        the model sets its own); ``model_parameters[i]`` are model ``i``'s own. Unknown names,
        missing required values, wrong types, non-finite numbers and numbers outside a
        parameter's range raise :class:`ConfigError`. ``require=False`` skips missing required
        values (a check of what was given, before the inputs that may supply them are opened);
        their entries are then left out.
        """
        parameters = dict(parameters or {})
        model_parameters = list(model_parameters or [None] * n_models)
        if len(model_parameters) != n_models:
            raise ConfigError(f"{self.name}: got parameters for {len(model_parameters)} models, expected {n_models}")
        known = {p.name for p in self.params}
        for where, d in [("parameters", parameters)] + [(f"models[{i}].parameters", m or {}) for i, m in enumerate(model_parameters)]:
            unknown = sorted(set(d) - known)
            if unknown:
                raise ConfigError(
                    f"{self.name}: unknown parameter(s) {unknown} in {where}; {self.name} takes: {self.param_names()}"
                )
        out: dict[str, Any] = {}
        for p in self.params:
            if p.per_model:
                vals = []
                for i, m in enumerate(model_parameters):
                    if m and p.name in m:
                        v = m[p.name]
                    elif p.name in parameters:
                        v = parameters[p.name]
                        if isinstance(v, list | tuple):  # one value per model, given globally
                            if len(v) != n_models:
                                raise ConfigError(f"{self.name}: {p.name!r} has {len(v)} values for {n_models} models")
                            v = v[i]
                    elif not p.required:
                        v = p.default
                    elif not require:
                        continue
                    else:
                        raise ConfigError(f"{self.name}: model {i} needs parameter {p.name!r} (give it per model or globally)")
                    vals.append(p.convert(v, self.name))
                if len(vals) == n_models:
                    out[p.name] = vals
            else:
                bad = [i for i, m in enumerate(model_parameters) if m and p.name in m]
                if bad:
                    raise ConfigError(
                        f"{self.name}: {p.name!r} is a global parameter; set it under `parameters:`, not per model ({bad})"
                    )
                if p.name in parameters:
                    out[p.name] = p.convert(parameters[p.name], self.name)
                elif p.required and require:
                    raise ConfigError(f"{self.name}: parameter {p.name!r} is required")
                elif p.required:
                    continue
                else:
                    out[p.name] = p.default
        return out

    def __call__(
        self, tensors: Sequence[Tensor], base: Tensor | None = None, *, ctx: TensorContext | None = None, **params: Any
    ) -> Tensor:
        """Merge one tensor name. ``params`` are typed values (see :meth:`resolve`)."""
        tensors = list(tensors)
        _check_inputs(self.name, tensors, base)
        first = tensors[0]
        if not first.is_floating_point():  # integer buffers (BatchNorm step counters, ids): not merged
            return (base if base is not None else first).clone()
        resolved = self.resolve(len(tensors), params)
        kwargs = {p.arg: resolved[p.name] for p in self.params}
        if self.takes_ctx:
            kwargs["ctx"] = ctx or TensorContext()
        out = self.fn(tensors, base, **kwargs)
        return out.to(first.dtype)

    def describe(self) -> str:
        lines = [f"{self.name}: {self.summary}".rstrip(": ")]
        lines.append(f"  base model: {self.base}; models: {self.min_models}..{self.max_models or 'any'}")
        lines += [f"  {p.describe()}" for p in self.params]
        if self.reference:
            lines.append(f"  reference: {self.reference}")
        return "\n".join(lines)


#: every merge method by name; the built-ins are imported on first lookup
METHODS: Registry[MergeMethod] = Registry(
    "merge method", builtins="analysis.merging.methods", entry_points="weightzoo.merge_methods"
)


def register(method: MergeMethod) -> MergeMethod:
    """Make ``method`` available by name; a taken name raises :class:`DuplicateError`."""
    return METHODS.register(method.name, method)


def unregister(name: str) -> None:
    """Remove a method (for plugins and tests)."""
    METHODS.unregister(name)


def get_method(name: str) -> MergeMethod:
    """A method by name; an unknown name raises :class:`ConfigError` listing the valid ones."""
    return METHODS.get(name)


def list_methods() -> list[str]:
    """Names of every registered method, sorted."""
    return METHODS.names()


def merge_method(
    name: str,
    *,
    per_model: Sequence[str] = (),
    base: Literal["required", "optional", "ignored"] = "optional",
    min_models: int = 1,
    max_models: int | None = None,
    reference: str = "",
    copies_give_model: bool = True,
    chunking: Chunking | None = None,
    from_metrics: Mapping[str, str] | None = None,
) -> Callable[[MergeFn], MergeMethod]:
    """Register the decorated function as merge method ``name`` (see the module docstring).

    ``per_model`` (older form) lists parameters taking one value per model; ``PerModel[X]``
    annotations say the same in the signature.
    """

    def decorator(fn: MergeFn) -> MergeMethod:
        sig = inspect.signature(fn)
        hints = typing.get_type_hints(fn, include_extras=True)
        params, takes_ctx = [], False
        for p in list(sig.parameters.values())[2:]:
            if p.name == "ctx":
                takes_ctx = True
                continue
            if p.kind is not inspect.Parameter.KEYWORD_ONLY:
                raise TypeError(f"merge method {name}: parameter {p.name!r} must be keyword-only (after *)")
            tp = hints.get(p.name, Any)
            element = _per_model_element(tp)
            is_per_model = element is not None or p.name in per_model
            if element is not None:
                tp = element
            elif p.name in per_model:
                tp = get_args(tp)[0] if get_origin(tp) in (list, Sequence) else tp
            tp, rng = split_range(tp)
            cfg_name = p.name[:-1] if p.name.endswith("_") else p.name
            spec = ParamSpec(cfg_name, tp, p.default, is_per_model, arg=p.name, range=rng)
            if not spec.required and spec.default is not None:
                try:
                    spec.convert(spec.default, name)
                except ConfigError as e:
                    raise TypeError(f"merge method {name}: the default of {cfg_name!r} is invalid: {e}") from None
            params.append(spec)
        missing = set(per_model) - {p.name for p in params}
        if missing:
            raise TypeError(f"merge method {name}: per_model names {sorted(missing)} are not parameters")
        filled = dict(from_metrics or {})
        not_per_model = sorted(set(filled) - {p.name for p in params if p.per_model})
        if not_per_model:
            raise TypeError(f"merge method {name}: from_metrics names {not_per_model} are not per-model parameters")
        doc = inspect.getdoc(fn) or ""
        return register(
            MergeMethod(
                name=name, fn=fn, params=tuple(params), base=base, min_models=min_models, max_models=max_models,
                reference=reference, summary=doc.split("\n\n")[0].replace("\n", " "), copies_give_model=copies_give_model,
                chunking=chunking, from_metrics=filled, takes_ctx=takes_ctx,
            )
        )  # fmt: skip

    return decorator


def _check_inputs(method: str, tensors: list[Tensor], base: Tensor | None) -> None:
    if not tensors:
        raise MismatchError(f"{method}: no model tensors to merge")
    shape = tensors[0].shape
    for i, t in enumerate(tensors):
        if not isinstance(t, Tensor):
            raise MismatchError(f"{method}: model {i} gave a {type(t).__name__}, not a tensor")
        if t.shape != shape:
            raise MismatchError(f"{method}: model {i} has shape {tuple(t.shape)}, model 0 has {tuple(shape)}; "
                                "merged models must share one architecture")  # fmt: skip
    if base is not None and base.shape != shape:
        raise MismatchError(f"{method}: the base has shape {tuple(base.shape)}, the models {tuple(shape)}")


# ------------------------------------------------------------------------------ type conversion
def _type_name(tp: Any) -> str:
    if get_origin(tp) is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if get_origin(tp) in (types.UnionType, typing.Union):
        return " | ".join(_type_name(a) for a in get_args(tp))
    return getattr(tp, "__name__", str(tp))


def _convert(value: Any, tp: Any, what: str) -> Any:
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin is Literal:
        if value not in get_args(tp):
            raise ConfigError(f"{what} must be one of {list(get_args(tp))}, got {value!r}")
        return value
    if origin in (types.UnionType, typing.Union):
        if value is None and type(None) in get_args(tp):
            return None
        errors = []
        for a in get_args(tp):
            if a is type(None):
                continue
            try:
                return _convert(value, a, what)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{what}: bad value {value!r}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ConfigError(f"{what} must be true or false, got {value!r}")
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise ConfigError(f"{what} must be a number, got {value!r}")
        try:
            return float(value)
        except ValueError:
            raise ConfigError(f"{what} must be a number, got {value!r}") from None
    if tp is int:
        if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, float) and value.is_integer())):
            raise ConfigError(f"{what} must be an integer, got {value!r}")
        return int(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{what} must be a string, got {value!r}")
        return value
    return value
