"""Every field a request schema accepts has a test showing its effect or its 400.

The request schemas are found by introspection: every ``*Request`` struct of every wire layer
(``corral.server.<api>.schemas``) and every struct reachable from their fields (messages, tools,
content parts...). A test claims the fields it demonstrates with ``@pytest.mark.fields("api.Struct.field",
...)`` (the wire name: ``ollama.CreateRequest.from``, ``openai.ChatCompletionRequest._debug_render_only``);
this test reads those markers from the test files' source, so a field added to a schema without a test
that claims it fails the suite, and so does a claim naming a field that no longer exists.

Every request struct also refuses unknown fields: a field a client sends that the schema does not
know is a 400 naming it, never silently dropped.
"""

from __future__ import annotations

import ast
import importlib
import inspect
from pathlib import Path

import msgspec
import pytest
from msgspec import inspect as mi

TESTS = Path(__file__).resolve().parent
APIS = ("ollama", "openai", "anthropic", "responses", "llamaserver")

# Fields with no test claiming them yet (empty: every field of every API is claimed). This list may only
# shrink: a field here that a test claims is an error, and a field in neither place fails the suite.
PENDING: frozenset[str] = frozenset()


def _walk(t: mi.Type, api: str, found: dict[str, type[msgspec.Struct]]) -> None:
    if isinstance(t, mi.StructType):
        _visit(t.cls, api, found)
    elif isinstance(t, mi.ListType | mi.SetType | mi.FrozenSetType | mi.VarTupleType):
        _walk(t.item_type, api, found)
    elif isinstance(t, mi.TupleType):
        for item in t.item_types:
            _walk(item, api, found)
    elif isinstance(t, mi.DictType):
        _walk(t.value_type, api, found)
    elif isinstance(t, mi.UnionType):
        for member in t.types:
            _walk(member, api, found)


def _visit(cls: type[msgspec.Struct], api: str, found: dict[str, type[msgspec.Struct]]) -> None:
    key = f"{api}.{cls.__name__}"
    if key in found:
        return
    found[key] = cls
    for f in mi.type_info(cls).fields:  # type: ignore[union-attr]
        _walk(f.type, api, found)


def request_structs() -> dict[str, type[msgspec.Struct]]:
    """``api.Struct`` -> class, for every request schema and every struct inside one."""
    found: dict[str, type[msgspec.Struct]] = {}
    for api in APIS:
        module = importlib.import_module(f"corral.server.{api}.schemas")
        for name, cls in sorted(vars(module).items()):
            if (inspect.isclass(cls) and issubclass(cls, msgspec.Struct) and name.endswith("Request")
                    and cls.__module__ == module.__name__):
                _visit(cls, api, found)
    return found


def request_fields() -> set[str]:
    """``api.Struct.field`` (the field's wire name) for every field of every request struct."""
    out = set()
    for key, cls in request_structs().items():
        for f in mi.type_info(cls).fields:  # type: ignore[union-attr]
            out.add(f"{key}.{f.encode_name}")
    return out


def _marker_fields(decorator: ast.expr) -> list[str]:
    """The strings of a ``pytest.mark.fields(...)`` decorator (empty for any other decorator)."""
    if not (isinstance(decorator, ast.Call) and isinstance(decorator.func, ast.Attribute)
            and decorator.func.attr == "fields"):
        return []
    names = []
    for arg in decorator.args:
        assert isinstance(arg, ast.Constant) and isinstance(arg.value, str), (
            f"line {decorator.lineno}: pytest.mark.fields takes string literals")
        names.append(arg.value)
    return names


def claims() -> dict[str, list[str]]:
    """``api.Struct.field`` -> the tests (``path::name``) that claim it."""
    out: dict[str, list[str]] = {}
    for path in sorted(TESTS.rglob("test_*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                continue
            for dec in node.decorator_list:
                for name in _marker_fields(dec):
                    assert node.name.startswith(("test_", "Test")), (
                        f"{path.name}:{node.lineno}: @pytest.mark.fields on {node.name}, which is not a test")
                    out.setdefault(name, []).append(f"{path.relative_to(TESTS)}::{node.name}")
    return out


def test_every_request_field_has_a_test() -> None:
    fields = request_fields()
    claimed = claims()
    missing = sorted(fields - claimed.keys() - PENDING)
    assert not missing, (
        f"{len(missing)} request field(s) have no test showing their effect or their 400 "
        "(claim them with @pytest.mark.fields(...)):\n  " + "\n  ".join(missing))


def test_every_claim_names_a_real_field() -> None:
    fields = request_fields()
    stale = {name: tests for name, tests in claims().items() if name not in fields}
    assert not stale, f"claims of fields no schema has: {stale}"


def test_pending_list_only_shrinks() -> None:
    fields, claimed = request_fields(), claims()
    assert PENDING <= fields, f"pending fields no schema has: {sorted(PENDING - fields)}"
    done = sorted(PENDING & claimed.keys())
    assert not done, f"claimed now, so remove from PENDING: {done}"


@pytest.mark.parametrize("key", sorted(request_structs()))
def test_request_structs_refuse_unknown_fields(key: str) -> None:
    cls = request_structs()[key]
    assert cls.__struct_config__.forbid_unknown_fields, (
        f"{key} silently drops fields it does not know: give it forbid_unknown_fields=True")


def test_the_walk_finds_nested_structs() -> None:
    found = request_structs()
    # nested structs, reached only through other structs' fields, are part of the walk
    for key in ("ollama.ChatMessage", "ollama.ToolCallFunction", "openai.ContentPart", "openai.ImageURL"):
        assert key in found
    assert "ollama.GenerateResponse" not in found  # responses are not requests
    assert "ollama.CreateRequest.from" in request_fields()  # wire names, not Python names
