"""The encoder registry (a :class:`zoo.registry.Registry`): register by name, look up with an error
listing the valid names, heavy encoders imported on first use, plug-ins through the
``weightzoo.encoders`` entry-point group."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from zoo.errors import ConfigError
from zoo.registry import Registry

__all__ = ["ENCODERS", "register_encoder", "register_lazy", "get_encoder", "make_encoder", "encoders"]

#: every encoder class by name
ENCODERS: Registry[type] = Registry("encoder", entry_points="weightzoo.encoders")
T = TypeVar("T", bound=type)


def register_encoder(name: str) -> Callable[[T], T]:
    """Class decorator: register an :class:`~weightspace.encoders.base.Encoder` subclass as ``name``."""
    ENCODERS.check_free(name)
    def deco(cls: T) -> T:
        ENCODERS.register(name, cls)
        cls.name = name  # type: ignore[attr-defined]
        return cls

    return deco


def register_lazy(name: str, module: str, hint: str = "") -> None:
    """Register encoder ``name`` as living in ``module``, imported on first use (for encoders with heavy or
    optional dependencies, e.g. torch_geometric: importing it costs seconds at every CLI start)."""
    ENCODERS.register_lazy(name, module, hint)


def encoders() -> list[str]:
    """Names of the registered encoders (lazy ones included)."""
    return ENCODERS.names()


def get_encoder(name: str) -> type:
    """The encoder class registered as ``name``."""
    return ENCODERS.get(name)


def make_encoder(name: str, **config: Any) -> Any:
    """An unfitted encoder ``name`` built from its configuration (the constructor's arguments)."""
    cls = get_encoder(name)
    try:
        return cls(**config)
    except TypeError as e:
        import inspect

        valid = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
        raise ConfigError(f"bad configuration for encoder {name!r} ({e}); options: {', '.join(valid)}") from None
