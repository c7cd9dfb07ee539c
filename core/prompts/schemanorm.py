"""JSON schemas rewritten to mean exactly what their GBNF conversion means, for backends that compile
schemas themselves (llguidance): declared properties close an object, required keys come first."""

from __future__ import annotations

import json
from typing import Any

from corral.prompts.grammar import _ANNOTATIONS
from corral.types import JsonConstraint

__all__ = ["json_constraint", "normalize_schema"]

# Annotations a schema compiler may not know; they never change the language, so they go.
_DROP = _ANNOTATIONS - {"$defs", "definitions"}
# `format: "json"`: any JSON object, as JSON_GBNF says
_ANY_OBJECT: dict[str, Any] = {"type": "object"}


def normalize_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """The schema with the GBNF converter's readings made explicit (call after ``schema_to_gbnf``
    accepted it, so every reference resolves and every keyword is supported).

    - an object that declares properties and says nothing about others is closed;
    - properties are listed required first, in declared order (the GBNF fixes that order);
    - ``allOf`` is merged, and ``anyOf``/``oneOf`` alternatives inherit their siblings, as there;
    - ``prefixItems`` is a fixed tuple; annotations are dropped.
    """
    normalized: dict[str, Any] = _Normalizer(schema).walk(schema)
    return normalized


class _Normalizer:
    def __init__(self, root: dict[str, Any]) -> None:
        self.root = root

    def deref(self, ref: str) -> Any:
        target: Any = self.root
        for part in [p for p in ref.lstrip("#").split("/") if p]:
            target = target[part.replace("~1", "/").replace("~0", "~")]
        return target

    def walk(self, s: Any) -> Any:
        if not isinstance(s, dict):
            return s
        s = {k: v for k, v in s.items() if k not in _DROP}
        for key in ("anyOf", "oneOf"):
            if key in s:
                base = {k: v for k, v in s.items() if k != key}
                alts = [{**base, **a} if base and isinstance(a, dict) else a for a in s[key]]
                return self.with_defs({"anyOf": [self.walk(a) for a in alts]}, s)
        if "allOf" in s:
            return self.walk(self.merge_all_of(s))
        out: dict[str, Any] = {}
        for k, v in s.items():
            if k in ("$defs", "definitions"):
                out[k] = {name: self.walk(sub) for name, sub in v.items()}
            elif k in ("items", "additionalProperties", "unevaluatedProperties"):
                out[k] = self.walk(v)
            elif k == "prefixItems":
                out[k] = [self.walk(sub) for sub in v]
            elif k == "properties":
                required = set(s.get("required") or [])
                order = [p for p in v if p in required] + [p for p in v if p not in required]
                out[k] = {p: self.walk(v[p]) for p in order}
            else:
                out[k] = v
        if out.get("properties") and "additionalProperties" not in out and "unevaluatedProperties" not in out:
            out["additionalProperties"] = False  # compat(llama.cpp): declared properties close the object
        if "prefixItems" in out and "items" not in out:
            out["items"] = False
        return out

    def with_defs(self, out: dict[str, Any], s: dict[str, Any]) -> dict[str, Any]:
        for k in ("$defs", "definitions"):
            if k in s:
                out[k] = {name: self.walk(sub) for name, sub in s[k].items()}
        return out

    def merge_all_of(self, s: dict[str, Any]) -> dict[str, Any]:
        merged: dict[str, Any] = {k: v for k, v in s.items() if k != "allOf"}
        for sub in s["allOf"]:
            if isinstance(sub, dict) and "$ref" in sub:
                sub = self.deref(sub["$ref"])
            for k, v in sub.items():
                if k == "properties":
                    merged["properties"] = {**merged.get("properties", {}), **v}
                elif k == "required":
                    merged["required"] = list(dict.fromkeys([*merged.get("required", []), *v]))
                else:
                    merged[k] = v
        return merged


def json_constraint(fmt: dict[str, Any] | str, markers: tuple[str, str] | None = None,
                    inside: bool = False) -> JsonConstraint:
    """The schema form of a `format`: "json", or a schema (object or JSON text) that ``schema_to_gbnf``
    has accepted. That converter stays the one place that refuses a schema, so a schema refused
    for one backend is refused, with the same 400, for every backend."""
    if fmt == "json":
        schema = _ANY_OBJECT
    else:
        if isinstance(fmt, str):
            fmt = json.loads(fmt)
        assert isinstance(fmt, dict)
        schema = normalize_schema(fmt)
    text = json.dumps(schema, sort_keys=False, separators=(",", ":"), ensure_ascii=False)
    return JsonConstraint(schema=text, think_markers=markers, think_inside=inside)
