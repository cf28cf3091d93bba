"""The generator and denoiser registries (:class:`zoo.registry.Registry`).

    GENERATORS.get("flow")        # FlowGenerator; installed packages add their own via "weightzoo.generators"
    DENOISERS.get("transformer")  # TransformerDenoiser
"""

from __future__ import annotations

from typing import Any

from zoo.registry import Registry

__all__ = ["GENERATORS", "DENOISERS", "make_generator"]

GENERATORS: Registry[Any] = Registry("generator", builtins="generators.builtin", entry_points="weightzoo.generators")
DENOISERS: Registry[Any] = Registry("denoiser", builtins="generators.nets", entry_points="weightzoo.denoisers")


def make_generator(name: str, **params: Any) -> Any:
    """An unfitted generator ``name`` built from its configuration (the constructor's arguments)."""
    from zoo.errors import ConfigError

    cls = GENERATORS.get(name)
    try:
        return cls(**params)
    except TypeError as e:
        import inspect

        valid = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
        raise ConfigError(f"bad configuration for generator {name!r} ({e}); options: {', '.join(valid)}") from None
