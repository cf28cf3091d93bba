"""The encoder registry: register by name (duplicates refused), look up with an error listing valid names."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from zoo.errors import ConfigError, DuplicateError

__all__ = ["register_encoder", "register_lazy", "get_encoder", "make_encoder", "encoders"]

_ENCODERS: dict[str, type] = {}
#: name -> (module that registers it on import, pip hint if its optional dependency is missing)
_LAZY: dict[str, tuple[str, str]] = {}
T = TypeVar("T", bound=type)


def register_encoder(name: str) -> Callable[[T], T]:
    """Class decorator: register an :class:`~weightspace.encoders.base.Encoder` subclass as ``name``."""
    if name in _ENCODERS:
        raise DuplicateError(f"an encoder named {name!r} is already registered")

    def deco(cls: T) -> T:
        _LAZY.pop(name, None)  # a lazily registered encoder's module is being imported
        _ENCODERS[name] = cls
        cls.name = name  # type: ignore[attr-defined]
        return cls

    return deco


def register_lazy(name: str, module: str, hint: str = "") -> None:
    """Register encoder ``name`` as living in ``module``, imported on first use (for encoders with heavy or
    optional dependencies, e.g. torch_geometric: importing it costs seconds at every CLI start)."""
    if name in _ENCODERS or name in _LAZY:
        raise DuplicateError(f"an encoder named {name!r} is already registered")
    _LAZY[name] = (module, hint)


def encoders() -> list[str]:
    """Names of the registered encoders (lazy ones included)."""
    return sorted(set(_ENCODERS) | set(_LAZY))


def get_encoder(name: str) -> type:
    """The encoder class registered as ``name``."""
    if name not in _ENCODERS and name in _LAZY:
        import importlib

        module, hint = _LAZY[name]
        try:
            importlib.import_module(module)
        except ImportError as e:
            raise ConfigError(f"encoder {name!r} needs a package that is not installed ({e}); {hint}") from None
    try:
        return _ENCODERS[name]
    except KeyError:
        raise ConfigError(f"unknown encoder {name!r}; valid: {', '.join(encoders())}") from None


def make_encoder(name: str, **config: Any) -> Any:
    """An unfitted encoder ``name`` built from its configuration (the constructor's arguments)."""
    cls = get_encoder(name)
    try:
        return cls(**config)
    except TypeError as e:
        import inspect

        valid = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
        raise ConfigError(f"bad configuration for encoder {name!r} ({e}); options: {', '.join(valid)}") from None
