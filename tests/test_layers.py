"""The dependency direction of DESIGN.md, checked on the source: every import (module level or inside a
function; only ``if TYPE_CHECKING:`` blocks are exempt) goes down the layers, never up.

Packages: kernels -> zoo -> weightspace -> analysis / generators -> app. Inside zoo:
core modules (errors, settings, registry, names, jsonlimits, progress) -> models -> store -> query
-> io -> build -> facade -> cli/doctor; ``zoo/__init__`` is the public API over all of them.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {"kernels": 0, "zoo": 1, "weightspace": 2, "analysis": 3, "generators": 3, "app": 4}
ZOO_LAYERS = {"core": 0, "models": 1, "store": 2, "query": 3, "io": 4, "build": 5, "facade": 6, "cli": 7}
ZOO_SUBPACKAGES = ("models", "store", "query", "io", "build")


def zoo_layer(module: str) -> str | None:
    """The layer of a ``zoo`` module (None for the package itself, the public API)."""
    parts = module.split(".")
    if len(parts) == 1:
        return None
    if parts[1] in ZOO_SUBPACKAGES:
        return parts[1]
    if parts[1] == "facade":
        return "facade"
    if parts[1] in ("cli", "doctor"):
        return "cli"
    return "core"


def _type_checking_lines(tree: ast.Module) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for sub in node.body:
                lines.update(range(sub.lineno, (sub.end_lineno or sub.lineno) + 1))
    return lines


def imports(path: Path) -> list[tuple[int, str]]:
    """``(line, imported module)`` for every absolute import in a file, TYPE_CHECKING blocks left out
    (``from zoo import x`` counts as importing ``zoo.x``)."""
    tree = ast.parse(path.read_text(), str(path))
    skip = _type_checking_lines(tree)
    out = []
    for node in ast.walk(tree):
        if not isinstance(node, (ast.Import, ast.ImportFrom)) or node.lineno in skip:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "zoo":
                out += [(node.lineno, f"zoo.{a.name}") for a in node.names]
            else:
                out.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
    return out


def _module(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


SOURCES = sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py") if "migrations" not in p.parts)


def test_the_layers_cover_the_code() -> None:
    assert len(SOURCES) > 50
    assert {_module(p).split(".")[0] for p in SOURCES} == set(PACKAGES)


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_go_down_the_layers(path: Path) -> None:
    me = _module(path)
    my_pkg = me.split(".")[0]
    bad = []
    for line, target in imports(path):
        pkg = target.split(".")[0]
        if pkg not in PACKAGES:
            continue
        if PACKAGES[pkg] > PACKAGES[my_pkg] or (pkg != my_pkg and PACKAGES[pkg] == PACKAGES[my_pkg]):
            bad.append(f"line {line}: {me} imports {target} (a higher or sibling package; use an entry point)")
        elif pkg == my_pkg == "zoo" and me != "zoo":
            mine, theirs = zoo_layer(me), zoo_layer(target)
            if theirs is None:
                bad.append(f"line {line}: {me} imports the public package `zoo` (import the module it needs)")
            elif ZOO_LAYERS[theirs] > ZOO_LAYERS[mine]:
                bad.append(f"line {line}: {me} ({mine}) imports {target} ({theirs}), a higher layer of zoo/")
    assert not bad, "\n".join(bad)


def test_the_check_sees_upward_imports(tmp_path: Path) -> None:
    f = tmp_path / "m.py"
    f.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from zoo.facade import Zoo\n"
                 "def f():\n    from zoo.build.builder import build\n")  # fmt: skip
    assert imports(f) == [(1, "typing"), (5, "zoo.build.builder")]
    assert zoo_layer("zoo.build.builder") == "build" and zoo_layer("zoo.store.packs") == "store"


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_module_imports_a_private_name_of_another(path: Path) -> None:
    """A helper shared between modules gets a public name; ``_name`` stays inside its module."""
    tree = ast.parse(path.read_text(), str(path))
    bad = [
        f"line {node.lineno}: from {node.module} import {a.name}"
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in PACKAGES
        for a in node.names
        if a.name.startswith("_") and not a.name.startswith("__")
    ]
    assert not bad, "\n".join(bad)
