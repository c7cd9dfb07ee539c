"""JSON schema to GBNF: sampled outputs validate, valid documents are accepted, unsupported parts are 400s."""

from __future__ import annotations

import json

import jsonschema
import pytest

from corral.errors import GrammarError
from corral.prompts import JSON_GBNF, schema_to_gbnf
from corral.prompts.grammar import int_range
from corral.testing.gbnf import matches, parse_gbnf, sample_grammar

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 12},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "email": {"type": "string", "format": "uuid"},
        "tags": {"type": "array", "items": {"enum": ["a", "b", "c"]}, "minItems": 1, "maxItems": 3},
        "kind": {"const": "person"},
        "score": {"type": ["number", "null"]},
        "ok": {"type": "boolean"},
    },
    "required": ["name", "age", "kind"],
    "additionalProperties": False,
}
TREE = {
    "$defs": {
        "node": {
            "type": "object",
            "properties": {"value": {"type": "integer"},
                           "children": {"type": "array", "items": {"$ref": "#/$defs/node"}, "maxItems": 2}},
            "required": ["value"],
        }
    },
    "$ref": "#/$defs/node",
}
SCHEMAS = {
    "person": PERSON,
    "tree": TREE,
    "anyof": {"anyOf": [{"type": "string", "maxLength": 3}, {"type": "integer", "minimum": -5, "maximum": 5},
                        {"type": "array", "items": {"type": "boolean"}}]},
    "open-object": {"type": "object", "properties": {"a": {"type": "integer"}},
                    "additionalProperties": {"type": "string"}},
    "all-optional": {"type": "object", "properties": {"x": {"type": "integer"}, "y": {"type": "integer"},
                                                      "z": {"type": "string"}}},
    "allof": {"allOf": [
        {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]},
        {"properties": {"b": {"type": "integer", "exclusiveMinimum": 10}}, "required": ["b"]},
    ]},
    "date": {"type": "object", "properties": {"d": {"type": "string", "format": "date"},
                                              "t": {"type": "string", "format": "date-time"}},
             "required": ["d", "t"]},
    "tuple": {"type": "array", "prefixItems": [{"type": "string"}, {"type": "integer"}]},
    "enum-mixed": {"enum": ["x", 1, None, True, {"k": [1, 2]}]},
}


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_sampled_outputs_validate(name: str) -> None:
    schema = SCHEMAS[name]
    grammar = schema_to_gbnf(schema)
    rules = parse_gbnf(grammar)  # well-formed: every rule defined, root present
    for seed in range(25):
        text = sample_grammar(grammar, seed=seed)
        jsonschema.validate(json.loads(text), schema)
        assert matches(rules, text)  # the test recognizer agrees with the sampler


VALID_DOCS = [
    ("person", {"name": "Ann", "age": 150, "kind": "person"}),
    ("person", {"name": "Bo", "age": 0, "kind": "person", "tags": ["c", "a"], "score": None, "ok": False}),
    ("person", {"name": "Cy", "age": 42, "kind": "person", "email": "123e4567-e89b-12d3-a456-426614174000"}),
    ("tree", {"value": 1, "children": [{"value": 2}, {"value": 3, "children": []}]}),
    ("anyof", -5),
    ("anyof", "abc"),
    ("open-object", {"a": 1, "zz": "q"}),
    ("all-optional", {}),
    ("all-optional", {"y": 2}),
    ("all-optional", {"x": 1, "z": "s"}),
    ("allof", {"a": "x", "b": 11}),
    ("tuple", ["s", 3]),
    ("enum-mixed", {"k": [1, 2]}),
]
INVALID_DOCS = [
    ("person", {"name": "Ann", "age": 151, "kind": "person"}),  # above maximum
    ("person", {"name": "", "age": 1, "kind": "person"}),  # minLength
    ("person", {"name": "Ann", "kind": "person"}),  # required
    ("person", {"name": "Ann", "age": 1, "kind": "robot"}),  # const
    ("person", {"name": "Ann", "age": 1, "kind": "person", "extra": 1}),  # additionalProperties false
    ("person", {"name": "A", "age": 1, "kind": "person", "tags": []}),  # minItems
    ("person", {"name": "A", "age": 1, "kind": "person", "tags": ["d"]}),  # enum
    ("anyof", 6),
    ("anyof", "abcd"),
    ("allof", {"a": "x", "b": 10}),  # exclusiveMinimum
    ("tree", {"value": 1, "children": [{"value": 2}, {"value": 3}, {"value": 4}]}),  # maxItems
]


@pytest.mark.parametrize(("name", "doc"), VALID_DOCS)
def test_valid_documents_are_accepted(name: str, doc: object) -> None:
    rules = parse_gbnf(schema_to_gbnf(SCHEMAS[name]))
    assert matches(rules, json.dumps(doc, separators=(",", ":")))
    if name != "enum-mixed":  # const/enum values are matched in their compact form only
        assert matches(rules, json.dumps(doc))


@pytest.mark.parametrize(("name", "doc"), INVALID_DOCS)
def test_invalid_documents_are_rejected(name: str, doc: object) -> None:
    rules = parse_gbnf(schema_to_gbnf(SCHEMAS[name]))
    assert not matches(rules, json.dumps(doc))


@pytest.mark.parametrize(("lo", "hi"), [(0, 150), (-20, 7), (5, None), (None, -3), (-999, -100), (37, 4021),
                                        (None, 12), (0, 0), (-1, 1), (100, 100)])
def test_integer_ranges_are_exact(lo: int | None, hi: int | None) -> None:
    rules = parse_gbnf(f"root ::= {int_range(lo, hi)}")
    edges = {b + d for b in (lo, hi) if b is not None for d in (-11, -10, -9, -2, -1, 0, 1, 2, 9, 10, 11)}
    for n in sorted(set(range(-130, 130)) | edges | {-1000, -999, 999, 1000, 4021, 4022}):
        inside = (lo is None or n >= lo) and (hi is None or n <= hi)
        assert matches(rules, str(n)) == inside, n
    assert not matches(rules, "007")  # no leading zeros
    assert matches(rules, "123456789012") == (hi is None and (lo is None or lo <= 123456789012))


def test_json_grammar_is_any_object() -> None:
    rules = parse_gbnf(JSON_GBNF)
    assert matches(rules, '{"a": [1, 2.5, -3e4, "x\\n", true, null, {}]}')
    assert not matches(rules, "[1, 2]")  # format json asks for an object
    for seed in range(10):
        assert isinstance(json.loads(sample_grammar(JSON_GBNF, seed=seed)), dict)


@pytest.mark.parametrize(("schema", "named"), [
    ({"type": "string", "pattern": "^a+$"}, "pattern"),
    ({"type": "number", "minimum": 0.5}, "minimum"),
    ({"not": {"type": "string"}}, "not"),
    ({"type": "object", "properties": {"a": {"type": "array", "uniqueItems": True}}}, "uniqueItems"),
    ({"$ref": "https://example.com/s.json"}, "https://example.com/s.json"),
    ({"$ref": "#/$defs/missing"}, "#/$defs/missing"),
    ({"type": "string", "format": "email"}, "email"),
    ({"type": "integer", "minimum": 5, "maximum": 1}, "empty"),
    ({"type": "widget"}, "widget"),
    ({"enum": []}, "enum"),
])
def test_unsupported_schema_names_the_part(schema: dict, named: str) -> None:
    with pytest.raises(GrammarError, match=named.replace("$", r"\$").replace(".", r"\.")):
        schema_to_gbnf(schema)


def test_property_names_with_odd_characters() -> None:
    schema = {"type": "object", "properties": {"a b\"c": {"type": "string"}, "ünï": {"type": "integer"}},
              "required": ["a b\"c", "ünï"]}
    grammar = schema_to_gbnf(schema)
    doc = json.loads(sample_grammar(grammar, seed=3))
    jsonschema.validate(doc, schema)
