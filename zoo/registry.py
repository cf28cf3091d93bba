"""One small registry for every family of plug-ins.

Architectures, permutation-spec builders, encoders, aligners, merge methods, generators, ... are all
"a name -> an object" table with the same needs: refuse a name taken twice, look a name up with an
error that lists the valid ones, import heavy plug-ins only when first used, and let installed
packages add their own through an entry-point group. :class:`Registry` is that table::

    GENERATORS: Registry[type[Generator]] = Registry("generator", entry_points="weightzoo.generators")

    @GENERATORS.register("flow")
    class FlowGenerator(Generator): ...

    GENERATORS.register_lazy("latent", "generators.latent", hint="pip install 'weightzoo[extra]'")
    GENERATORS.get("flow")          # the class
    GENERATORS.get("flwo")          # ConfigError: unknown generator 'flwo'; valid generators: flow, latent
    GENERATORS.names()              # ['flow', 'latent']

Conformance test suites parametrise over ``REGISTRY.names()``, so registering an item enrols it in
its checks. The registry holds no other state and knows nothing of what it stores.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar, overload

from zoo.errors import ConfigError, DuplicateError

__all__ = ["Registry"]

T = TypeVar("T")


class Registry(Generic[T]):
    """A name -> plug-in table with lazy modules, entry-point plug-ins and one error wording.

    ``kind`` names what is stored ("encoder", "merge method", ...) in every message (``plural`` where
    adding an "s" is wrong).
    ``builtins`` is a module imported on first lookup that registers the built-in items (so that
    importing the registry itself stays cheap). ``entry_points`` is an entry-point group whose items
    are ``name = "module:attr"``; an item is loaded (and registered as ``name``) on first lookup.
    """

    def __init__(
        self,
        kind: str,
        *,
        plural: str | None = None,
        builtins: str | None = None,
        entry_points: str | None = None,
    ) -> None:
        self.kind = kind
        self.plural = plural or f"{kind}s"
        self._items: dict[str, T] = {}
        # name -> (module that registers it on import, install hint, attribute to register if it does not)
        self._lazy: dict[str, tuple[str, str, str]] = {}
        self._builtins = builtins
        self._entry_points = entry_points
        self._loaded = builtins is None and entry_points is None

    # -- registration ------------------------------------------------------------------------------

    @overload
    def register(self, name: str) -> Callable[[T], T]: ...

    @overload
    def register(self, name: str, obj: T) -> T: ...

    def register(self, name: str, obj: Any = None) -> Any:
        """Register ``obj`` as ``name``; without ``obj``, a decorator doing it.

        A name taken already raises :class:`DuplicateError` (a lazily declared name is taken by the
        module that declared it when that module registers it).
        """
        self.check_free(name)

        def deco(item: T) -> T:
            self._lazy.pop(name, None)  # the lazily declared module is registering it now
            self._items[name] = item
            return item

        return deco if obj is None else deco(obj)

    def check_free(self, name: str) -> None:
        """Raise unless ``name`` can be registered (a non-empty string not taken; a lazily declared name
        stays free for the module that declared it)."""
        if not isinstance(name, str) or not name:
            raise ConfigError(f"a {self.kind} needs a non-empty string name, got {name!r}")
        if name in self._items:
            raise DuplicateError(
                f"a {self.kind} named {name!r} is already registered; pick another name "
                f"(registered: {', '.join(self.names(load=False))})"
            )

    def register_lazy(self, name: str, module: str, hint: str = "") -> None:
        """Declare that ``module`` registers ``name`` when imported (for plug-ins whose dependencies are
        heavy or optional: they are imported on first use). ``hint`` says how to install what it needs."""
        if name in self._items or name in self._lazy:
            raise DuplicateError(f"a {self.kind} named {name!r} is already registered; pick another name")
        self._lazy[name] = (module, hint, "")

    def unregister(self, name: str) -> None:
        """Remove ``name`` (for plug-ins and tests); an unknown name is ignored."""
        self._items.pop(name, None)
        self._lazy.pop(name, None)

    # -- lookup ------------------------------------------------------------------------------------

    def names(self, *, load: bool = True) -> list[str]:
        """Every registered name (lazy ones included), sorted."""
        if load:
            self._load()
        return sorted(set(self._items) | set(self._lazy))

    def get(self, name: str) -> T:
        """The item registered as ``name``; :class:`ConfigError` listing the valid names otherwise."""
        self._load()
        if isinstance(name, str) and name not in self._items and name in self._lazy:
            module, hint, attr = self._lazy[name]
            try:
                mod = importlib.import_module(module)
            except ImportError as e:
                raise ConfigError(
                    f"{self.kind} {name!r} needs a package that is not installed ({e})" + (f"; {hint}" if hint else "")
                ) from None
            if name not in self._items and attr:
                try:
                    self.register(name, getattr(mod, attr))
                except AttributeError:
                    raise ConfigError(f"{self.kind} plug-in {name!r}: {module} has no attribute {attr!r}") from None
        try:
            return self._items[name]
        except (KeyError, TypeError):
            raise ConfigError(
                f"unknown {self.kind} {name!r}; valid {self.plural}: {', '.join(self.names()) or '(none registered)'}"
            ) from None

    def items(self) -> list[tuple[str, T]]:
        """``(name, item)`` for every loaded item (lazy ones are imported)."""
        return [(n, self.get(n)) for n in self.names()]

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._items or name in self._lazy

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names(load=False)})"

    # -- plug-ins ----------------------------------------------------------------------------------

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True  # set first: the modules imported below call register()
        if self._builtins:
            importlib.import_module(self._builtins)
        if self._entry_points:
            from importlib.metadata import entry_points

            for ep in entry_points(group=self._entry_points):
                if ep.name not in self._items and ep.name not in self._lazy:  # a built-in of that name wins
                    module, _, attr = ep.value.partition(":")
                    self._lazy[ep.name] = (module.strip(), f"it is the plug-in {ep.value!r}", attr.strip())
