"""A grammar that makes the model call a tool (``tool_choice`` required / a named tool), in its own syntax, or
that makes its calls follow their schemas once it opens one (strict tools with ``tool_choice`` auto)."""

from __future__ import annotations

import json
import re
from typing import Any

from corral.conversation import Tool
from corral.errors import GrammarError, InvalidRequestError
from corral.prompts.grammar import gbnf_literal, schema_to_gbnf
from corral.prompts.schemanorm import normalize_schema
from corral.types import JsonConstraint

# What closes a call after its JSON, for the openers whose templates close them.
_CLOSERS = {"<tool_call>": "</tool_call>"}
_BRACKETED = "[TOOL_CALLS]"  # Mistral's opener: the calls follow as a JSON array, with no space


def _rebase_refs(schema: Any, base: str) -> Any:
    """``schema`` with its local ``$ref``s pointing into the combined schema at ``base``."""
    if isinstance(schema, dict):
        out = {k: _rebase_refs(v, base) for k, v in schema.items()}
        ref = schema.get("$ref")
        if isinstance(ref, str) and ref.startswith("#"):
            out["$ref"] = base + ref[1:]
        return out
    if isinstance(schema, list):
        return [_rebase_refs(v, base) for v in schema]
    return schema


def _arguments_schema(tool: Tool, base: str) -> dict[str, Any]:
    """The tool's parameters as the arguments' schema, its local ``$ref``s pointing at ``base``; one the
    converter cannot express is relaxed to any JSON object (the call is still forced and still parsed;
    only its arguments are unconstrained)."""
    params = tool.parameters or {"type": "object"}
    try:
        schema_to_gbnf(params)
    except GrammarError:
        return {"type": "object"}
    rebased: dict[str, Any] = _rebase_refs(params, base)
    return rebased


def _call_schema(tools: list[Tool], only: str) -> dict[str, Any]:
    """The schema of one call of one of ``tools`` (or of ``only``): ``{"name": ..., "arguments": ...}``.

    Raises:
        InvalidRequestError: no tools, or ``only`` names none of them.
    """
    if not tools:
        raise InvalidRequestError("tool_choice requires a tool to call, but the request has no tools")
    chosen = [t for t in tools if not only or t.name == only]
    if not chosen:
        raise InvalidRequestError(
            f"tool_choice names the tool {only!r}, which is not among the request's tools")
    # Each tool's schema goes under $defs (a path of objects only, which $ref can walk), and its own
    # local references are rebased there.
    alternatives, defs = [], {}
    for i, t in enumerate(chosen):
        defs[f"tool{i}"] = _arguments_schema(t, f"#/$defs/tool{i}")
        props = {"name": {"const": t.name}, "arguments": {"$ref": f"#/$defs/tool{i}"}}
        alternatives.append({"type": "object", "additionalProperties": False,
                             "required": ["name", "arguments"], "properties": props})
    return {"anyOf": alternatives, "$defs": defs}


def tool_call_grammar(tools: list[Tool], tag: str, only: str = "", lazy: bool = False) -> str:
    """GBNF whose every match is one call of one of ``tools`` (or of ``only``), written after the
    template's call opener ``tag`` ("{" = a bare JSON object) the way the output parser reads it;
    ``lazy``: the same without the opener (what follows it, for a lazy constraint).

    Raises:
        InvalidRequestError: no tools, or ``only`` names none of them.
    """
    call = schema_to_gbnf(_call_schema(tools, only))
    call = re.sub(r"^root ::=", "call ::=", call, count=1, flags=re.M)
    opener = "" if lazy else gbnf_literal(tag)
    if tag == "{":
        head, tail = "", ""
    elif tag == _BRACKETED:
        return f'root ::= {opener} "[" call "]"\n' + call
    else:
        head, tail = f"{opener} space ".lstrip(), _CLOSERS.get(tag, "")
    closing = f" {gbnf_literal(tail)}" if tail else ""
    return f"root ::= {head}call{closing}\n" + call


def tool_call_constraint(tools: list[Tool], tag: str, only: str = "",
                         markers: tuple[str, str] | None = None, inside: bool = False,
                         lazy: bool = False) -> JsonConstraint:
    """The language of ``tool_call_grammar`` as a schema and the call's syntax around it, for backends
    that compile schemas themselves (call it once ``tool_call_grammar`` accepted the tools); ``lazy``:
    free text until the opener (see ``JsonConstraint.lazy``)."""
    text = json.dumps(normalize_schema(_call_schema(tools, only)), separators=(",", ":"), ensure_ascii=False)
    opener = "" if tag == "{" else tag
    return JsonConstraint(schema=text, think_markers=markers, think_inside=inside, opener=opener,
                          bracketed=tag == _BRACKETED, closer=_CLOSERS.get(tag, ""), lazy=lazy)
