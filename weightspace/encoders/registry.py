"""The encoder registry: register by name (duplicates refused), look up with an error listing valid names."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from zoo.errors import ConfigError, DuplicateError

__all__ = ["register_encoder", "get_encoder", "make_encoder", "encoders"]

_ENCODERS: dict[str, type] = {}
T = TypeVar("T", bound=type)


def register_encoder(name: str) -> Callable[[T], T]:
    """Class decorator: register an :class:`~weightspace.encoders.base.Encoder` subclass as ``name``."""
    if name in _ENCODERS:
        raise DuplicateError(f"an encoder named {name!r} is already registered")

    def deco(cls: T) -> T:
        _ENCODERS[name] = cls
        cls.name = name  # type: ignore[attr-defined]
        return cls

    return deco


def encoders() -> list[str]:
    """Names of the registered encoders."""
    return sorted(_ENCODERS)


def get_encoder(name: str) -> type:
    """The encoder class registered as ``name``."""
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
