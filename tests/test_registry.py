"""The one generic plug-in registry (zoo.registry.Registry)."""

from __future__ import annotations

import sys
import types

import pytest

from zoo.errors import ConfigError, DuplicateError, ZooError
from zoo.registry import Registry


def test_register_get_and_names():
    reg: Registry[int] = Registry("widget")
    reg.register("b", 2)

    @reg.register("a")
    def a():  # decorator form returns the object unchanged
        return 1

    assert reg.get("a") is a and reg.get("b") == 2
    assert reg.names() == ["a", "b"] and list(reg) == ["a", "b"] and len(reg) == 2
    assert "a" in reg and "c" not in reg


def test_unknown_name_lists_valid_ones():
    reg: Registry[int] = Registry("family", plural="families")
    reg.register("mlp", 1)
    reg.register("cnn", 2)
    with pytest.raises(ConfigError, match=r"unknown family 'mpl'; valid families: cnn, mlp"):
        reg.get("mpl")
    with pytest.raises(ZooError):
        reg.get(None)  # type: ignore[arg-type]


def test_duplicate_and_bad_names_refused():
    reg: Registry[int] = Registry("widget")
    reg.register("a", 1)
    with pytest.raises(DuplicateError, match="already registered"):
        reg.register("a", 2)
    assert reg.get("a") == 1  # the first one stays
    with pytest.raises(ConfigError):
        reg.register("", 3)
    reg.unregister("a")
    assert reg.names() == []


def test_lazy_module_imported_on_first_use(monkeypatch):
    reg: Registry[str] = Registry("widget")
    imported = []

    mod = types.ModuleType("_wz_lazy_plugin")

    def fake_import(name):
        imported.append(name)
        reg.register("heavy", "loaded")
        return mod

    reg.register_lazy("heavy", "_wz_lazy_plugin")
    assert reg.names() == ["heavy"] and imported == []
    monkeypatch.setattr("zoo.registry.importlib.import_module", fake_import)
    assert reg.get("heavy") == "loaded" and imported == ["_wz_lazy_plugin"]


def test_lazy_module_missing_dependency_gives_hint():
    reg: Registry[str] = Registry("widget")
    reg.register_lazy("ghost", "_wz_no_such_module_", hint="pip install ghost")
    with pytest.raises(ConfigError, match="not installed.*pip install ghost"):
        reg.get("ghost")


def test_builtins_module_imported_once_on_first_lookup(monkeypatch):
    reg: Registry[int] = Registry("widget", builtins="_wz_builtins_")
    imported = []

    def fake_import(name):
        imported.append(name)
        reg.register("x", 1)  # what the built-ins module does at import
        return types.ModuleType(name)

    monkeypatch.setattr("zoo.registry.importlib.import_module", fake_import)
    assert imported == []  # creating the registry imports nothing
    assert reg.get("x") == 1 and reg.names() == ["x"] and "x" in reg
    assert imported == ["_wz_builtins_"]  # once, however many lookups


def test_entry_point_plugins_are_registered_on_first_use(monkeypatch):
    import importlib.metadata as md

    mod = types.ModuleType("_wz_plugin_pkg_")
    mod.thing = "from the plug-in"
    monkeypatch.setitem(sys.modules, "_wz_plugin_pkg_", mod)
    eps = [md.EntryPoint("plugged", "_wz_plugin_pkg_:thing", "weightzoo.widgets"),
           md.EntryPoint("builtin", "_wz_plugin_pkg_:thing", "weightzoo.widgets")]  # fmt: skip
    monkeypatch.setattr(md, "entry_points", lambda group: [e for e in eps if e.group == group])
    reg: Registry[str] = Registry("widget", entry_points="weightzoo.widgets")
    reg.register("builtin", "mine")
    assert reg.names() == ["builtin", "plugged"]
    assert reg.get("plugged") == "from the plug-in"
    assert reg.get("builtin") == "mine"  # a registered item wins over a plug-in of the same name
