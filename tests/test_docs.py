"""Docs are checked by tests: every hook in corral.hookspecs is documented with its signature."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from corral.plugins import load_plugins

DOCS = Path(__file__).resolve().parent.parent / "docs" / "plugins.md"


def _hooks() -> dict[str, tuple[str, ...]]:
    host = load_plugins(None, load_entrypoints=False)
    return {name: getattr(host.hook, name).spec.argnames
            for name in dir(host.hook) if name.startswith("corral_")}


def test_every_hookspec_is_known() -> None:
    assert len(_hooks()) >= 9


@pytest.mark.parametrize("hook", sorted(_hooks()))
def test_hook_is_documented_with_exact_signature(hook: str) -> None:
    signature = f"{hook}({', '.join(_hooks()[hook])})"
    text = DOCS.read_text(encoding="utf-8")
    # a heading of its own, so each hook has a section that states its contract
    assert re.search(rf"^### `{re.escape(signature)}`$", text, re.MULTILINE), (
        f"docs/plugins.md has no '### `{signature}`' section")


def test_documented_hooks_exist() -> None:
    text = DOCS.read_text(encoding="utf-8")
    documented = set(re.findall(r"^### `(corral_\w+)\(", text, re.MULTILINE))
    assert documented == set(_hooks())


@pytest.mark.parametrize("variable", ["CORRAL_LOAD_PLUGINS", "CORRAL_DISABLE_PLUGINS", "CORRAL_EXTRA_PLUGINS",
                                      "CORRAL_BACKEND", "[project.entry-points.corral]"])
def test_plugin_settings_are_documented(variable: str) -> None:
    assert variable in DOCS.read_text(encoding="utf-8")
