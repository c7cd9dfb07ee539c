"""The core's layer order holds: no module imports a layer above its own, and the store has no import cycle.

Every import counts, also one inside a function or under ``TYPE_CHECKING``: a lazy import is still
a dependency, and hiding one is how layering quietly erodes.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

CORE = Path(__file__).resolve().parents[1] / "core"

# Top to bottom; a module may import its own layer and any layer below it, never one above.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("testing", ("corral.testing",)),  # the test kit drives every layer
    ("cli", ("corral.cli",)),
    ("server", ("corral.server",)),
    ("engine", ("corral.engine",)),
    ("scheduler", ("corral.scheduler", "corral.slotpool")),
    ("runner", ("corral.runner",)),
    ("selection", ("corral.selection",)),
    ("store/plugins", ("corral.store", "corral.plugins", "corral.defaults")),
    ("prompts", ("corral.prompts",)),
    ("types/errors/config", ("corral.types", "corral.errors", "corral.config", "corral.spec", "corral.jobs",
                             "corral.conversation", "corral.options", "corral.names", "corral.gguf",
                             "corral.textstream", "corral.lazycall", "corral.hookspecs", "corral.media",
                             "corral.rpcgate", "corral.gbnf", "corral.memory", "corral")),
]


def module_name(path: Path) -> str:
    parts = ["corral", *path.relative_to(CORE).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(CORE.rglob("*.py"))}


def layer_of(module: str) -> int:
    """Index into LAYERS of ``module`` (the most specific prefix wins)."""
    best, best_len = -1, -1
    for i, (_name, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            package = prefix != "corral" and module.startswith(prefix + ".")  # "corral" is just __init__
            if (module == prefix or package) and len(prefix) > best_len:
                best, best_len = i, len(prefix)
    assert best >= 0, f"{module} belongs to no layer: add it to LAYERS"
    return best


def imports_of(module: str) -> set[str]:
    """The corral modules ``module`` imports (``from pkg import sub`` counts as importing ``pkg.sub``)."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    return imports_in(path.read_text(encoding="utf-8"), package)


def imports_in(source: str, package: str) -> set[str]:
    out: set[str] = set()
    for node in ast.walk(ast.parse(source)):  # every import: top level, in functions, under TYPE_CHECKING
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: drop (level - 1) trailing parts of the package
                parts = package.split(".")
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                out.add(sub if sub in MODULES else base)
    return {m for m in out if m == "corral" or m.startswith("corral.")}


def test_every_module_has_a_layer() -> None:
    for module in MODULES:
        layer_of(module)


def test_no_module_imports_a_layer_above_its_own() -> None:
    upward = []
    for module in MODULES:
        mine = layer_of(module)
        for target in sorted(imports_of(module)):
            theirs = layer_of(target)
            if theirs < mine:
                upward.append(f"{module} ({LAYERS[mine][0]}) imports {target} ({LAYERS[theirs][0]})")
    assert not upward, "imports that run up the layers:\n" + "\n".join(upward)


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a path that starts and ends at the same node, or None."""
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_the_store_modules_form_no_import_cycle() -> None:
    store = {m for m in MODULES if m.startswith("corral.store.")}  # the package __init__ only re-exports
    graph = {m: imports_of(m) & store for m in store}
    cycle = find_cycle(graph)
    assert cycle is None, "the store's modules import each other in a cycle: " + " -> ".join(cycle or [])


@pytest.mark.parametrize(("graph", "cyclic"), [
    ({"a": {"b"}, "b": {"c"}, "c": set()}, False),
    ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, True),
    ({"a": {"a"}}, True),
])
def test_the_cycle_finder_finds_cycles(graph: dict[str, set[str]], cyclic: bool) -> None:
    assert (find_cycle(graph) is not None) is cyclic


def test_the_checks_see_lazy_and_type_checking_imports() -> None:
    source = """
from typing import TYPE_CHECKING
from corral import errors
from . import layout
if TYPE_CHECKING:
    from corral.engine import Engine
def later():
    import corral.server.app
    from .create import create
"""
    assert imports_in(source, "corral.store") == {"corral.errors", "corral.store.layout", "corral.engine",
                                                  "corral.server.app", "corral.store.create"}
    assert layer_of("corral.store.layout") > layer_of("corral.engine") > layer_of("corral.server.app")
