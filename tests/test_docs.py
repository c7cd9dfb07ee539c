"""Docs and tests keep up with the hooks (datasette's habit): every hookspec in corral.hookspecs has a
docstring, a section in docs/plugins.md with its exact signature, and a test named ``test_hook_<hook>``."""

from __future__ import annotations

import ast
import functools
import inspect
import re
from pathlib import Path

import pytest

from corral import hookspecs
from corral.plugins import load_plugins

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs" / "plugins.md"


def _declared() -> dict[str, ast.FunctionDef]:
    """Every function hookspecs.py defines at module level, read from its source."""
    tree = ast.parse(Path(hookspecs.__file__).read_text(encoding="utf-8"))
    return {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}


def _hooks() -> dict[str, tuple[str, ...]]:
    """The hooks a plugin host knows, with their argument names."""
    host = load_plugins(None, load_entrypoints=False)
    return {name: getattr(host.hook, name).spec.argnames
            for name in dir(host.hook) if name.startswith("corral_")}


HOOKS = sorted(_hooks())


def test_every_function_in_hookspecs_is_a_hookspec() -> None:
    # a function there without @hookspec would be a hook nobody can implement
    assert set(_declared()) == set(HOOKS)
    for name, node in _declared().items():
        assert any("hookspec" in ast.unparse(d) for d in node.decorator_list), f"{name} lacks @hookspec"


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_has_a_docstring(hook: str) -> None:
    doc = inspect.getdoc(getattr(hookspecs, hook)) or ""
    assert len(doc.split()) >= 8, f"corral.hookspecs.{hook} needs a docstring that states its contract"


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_is_documented_with_exact_signature(hook: str) -> None:
    signature = f"{hook}({', '.join(_hooks()[hook])})"
    text = DOCS.read_text(encoding="utf-8")
    # a heading of its own, so each hook has a section that states its contract
    assert re.search(rf"^### `{re.escape(signature)}`$", text, re.MULTILINE), (
        f"docs/plugins.md has no '### `{signature}`' section")


def test_documented_hooks_exist() -> None:
    text = DOCS.read_text(encoding="utf-8")
    documented = set(re.findall(r"^### `(corral_\w+)\(", text, re.MULTILINE))
    assert documented == set(HOOKS)


@functools.cache
def _test_names() -> set[str]:
    names: set[str] = set()
    for path in (ROOT / "tests").rglob("test_*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        names |= {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)}
    return names


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_has_a_test_named_for_it(hook: str) -> None:
    assert f"test_hook_{hook}" in _test_names(), f"no test named test_hook_{hook} (see tests/test_hooks.py)"


@pytest.mark.parametrize("variable", ["CORRAL_LOAD_PLUGINS", "CORRAL_DISABLE_PLUGINS", "CORRAL_EXTRA_PLUGINS",
                                      "CORRAL_BACKEND", "[project.entry-points.corral]"])
def test_plugin_settings_are_documented(variable: str) -> None:
    assert variable in DOCS.read_text(encoding="utf-8")
