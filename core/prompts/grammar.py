"""JSON schema to GBNF (llama.cpp's grammar format), and the plain JSON grammar for `format: "json"`."""

from __future__ import annotations

import json
import math
import re
from typing import Any

from corral.errors import GrammarError

_SPACE = r'space ::= | " " | "\n" [ \t]{0,20}'
_CHAR = r'char ::= [^"\\\x7F\x00-\x1F] | [\\] (["\\bfnrt] | "u" [0-9a-fA-F]{4})'
_PRIMITIVES: dict[str, str] = {
    "boolean": '("true" | "false") space',
    "null": '"null" space',
    "integer": '("-"? ([0-9] | [1-9] [0-9]{0,15})) space',
    "number": '("-"? ([0-9] | [1-9] [0-9]{0,15})) ("." [0-9]{1,16})? ([eE] [-+]? [0-9]{1,4})? space',
    "string": '"\\"" char* "\\"" space',
    "value": "object | array | string | number | boolean | null",
    "object": '"{" space ( string ":" space value ("," space string ":" space value)* )? "}" space',
    "array": '"[" space ( value ("," space value)* )? "]" space',
}
_DEPS = {"string": ["char"], "value": ["object", "array", "string", "number", "boolean", "null"],
         "object": ["string", "value"], "array": ["value"]}
# string formats with a fixed shape (llama.cpp supports the same ones)
_FORMATS = {
    "date": r'"\"" [0-9]{4} "-" ( "0" [1-9] | "1" [0-2] ) "-" '
            r'( "0" [1-9] | [1-2] [0-9] | "3" [0-1] ) "\"" space',
    "time": r'"\"" ( [01] [0-9] | "2" [0-3] ) ":" [0-5] [0-9] ":" [0-5] [0-9] ( "." [0-9]{3} )? '
            r'( "Z" | ( "+" | "-" ) ( [01] [0-9] | "2" [0-3] ) ":" [0-5] [0-9] ) "\"" space',
    "date-time": r'"\"" [0-9]{4} "-" ( "0" [1-9] | "1" [0-2] ) "-" ( "0" [1-9] | [1-2] [0-9] | "3" [0-1] ) '
                 r'"T" ( [01] [0-9] | "2" [0-3] ) ":" [0-5] [0-9] ":" [0-5] [0-9] ( "." [0-9]{3} )? '
                 r'( "Z" | ( "+" | "-" ) ( [01] [0-9] | "2" [0-3] ) ":" [0-5] [0-9] ) "\"" space',
    "uuid": r'"\"" [0-9a-fA-F]{8} "-" [0-9a-fA-F]{4} "-" [0-9a-fA-F]{4} "-" [0-9a-fA-F]{4} "-" '
            r'[0-9a-fA-F]{12} "\"" space',
}
# keywords that only annotate a schema; everything else must be understood or refused
_ANNOTATIONS = {"title", "description", "default", "examples", "$schema", "$id", "$comment", "deprecated",
                "readOnly", "writeOnly", "$defs", "definitions", "contentEncoding", "contentMediaType",
                "discriminator", "nullable", "strict"}
_HANDLED = {"type", "enum", "const", "anyOf", "oneOf", "allOf", "$ref", "properties", "required",
            "additionalProperties", "items", "prefixItems", "minItems", "maxItems", "minLength", "maxLength",
            "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "format", "unevaluatedProperties"}
MAX_RULES = 10_000
# Compile and per-token cost grow with these; past them a schema is refused with a 400 naming the limit.
MAX_DEPTH = 64  # nested schemas (objects in arrays in ...)
MAX_ENUM = 1024  # values of one enum (each is an alternative every token is checked against)
MAX_REPEAT = 4096  # minItems/maxItems/minLength/maxLength: llama.cpp expands a repetition rule per count
MAX_GRAMMAR_CHARS = 256 << 10


def gbnf_literal(s: str) -> str:
    """A GBNF quoted string matching `s` exactly."""
    out = []
    for c in s:
        if c in '"\\':
            out.append("\\" + c)
        elif c == "\n":
            out.append("\\n")
        elif c == "\r":
            out.append("\\r")
        elif c == "\t":
            out.append("\\t")
        elif ord(c) < 0x20 or ord(c) == 0x7F:
            out.append(f"\\x{ord(c):02X}")
        else:
            out.append(c)
    return '"' + "".join(out) + '"'


def _json_literal(v: Any) -> str:
    return gbnf_literal(json.dumps(v, separators=(",", ":"), ensure_ascii=False)) + " space"


# ---- integer ranges -------------------------------------------------------------------------------
def _digits_between(a: str, b: str) -> list[str]:
    """Alternatives matching every digit string of len(a) from a to b (same length, a <= b)."""
    if not a:
        return [""]
    if a == b:
        return [gbnf_literal(a)]
    n = len(a)
    rest = n - 1
    anyrest = f" [0-9]{{{rest}}}" if rest > 1 else (" [0-9]" if rest == 1 else "")
    if a[0] == b[0]:
        return [f"{gbnf_literal(a[0])} ({' | '.join(_digits_between(a[1:], b[1:]))})"]
    lo_full = a[1:] == "0" * rest
    hi_full = b[1:] == "9" * rest
    alts = []
    first_lo = int(a[0]) if lo_full else int(a[0]) + 1
    last_hi = int(b[0]) if hi_full else int(b[0]) - 1
    if not lo_full:
        alts.append(f"{gbnf_literal(a[0])} ({' | '.join(_digits_between(a[1:], '9' * rest))})")
    if first_lo <= last_hi:
        cls = f"[{first_lo}]" if first_lo == last_hi else f"[{first_lo}-{last_hi}]"
        alts.append(cls + anyrest)
    if not hi_full:
        alts.append(f"{gbnf_literal(b[0])} ({' | '.join(_digits_between('0' * rest, b[1:]))})")
    return alts


def _nonneg_range(lo: int, hi: int | None) -> list[str]:
    """Alternatives for decimal integers in [lo, hi] (hi None = unbounded), lo >= 0, no leading zeros."""
    alts: list[str] = []
    n = lo
    while hi is None or n <= hi:
        width = len(str(n))
        top = 10**width - 1
        end = top if hi is None else min(hi, top)
        alts.extend(_digits_between(str(n), str(end)))
        if end == top and hi is None:
            alts.append(f"[1-9] [0-9]{{{width},15}}")  # any longer number
            break
        n = end + 1
    return alts


def int_range(lo: int | None, hi: int | None) -> str:
    """GBNF for the integers in [lo, hi]; None leaves that side open."""
    if lo is not None and hi is not None and lo > hi:
        raise GrammarError(f"integer range is empty: minimum {lo} > maximum {hi}")
    alts: list[str] = []
    if lo is None or lo < 0:  # negative part: "-" then magnitudes
        neg_hi = -1 if hi is None or hi >= 0 else hi
        mags = _nonneg_range(-neg_hi, None if lo is None else -lo)
        alts.append(f'"-" ({" | ".join(mags)})')
    if hi is None or hi >= 0:
        alts.extend(_nonneg_range(max(lo or 0, 0), hi))
    return "(" + " | ".join(alts) + ")"


# ---- the converter --------------------------------------------------------------------------------
class _Converter:
    def __init__(self, root: dict[str, Any]) -> None:
        self.root = root
        self.rules: dict[str, str] = {"space": _SPACE.split(" ::= ", 1)[1]}
        self.refs: dict[str, str] = {}
        self.depth = 0
        self.by_body: dict[str, list[str]] = {}
        self.suffix: dict[str, int] = {}  # next free numeric suffix per rule name

    def add(self, name: str, body: str) -> str:
        name = re.sub(r"[^a-zA-Z0-9-]+", "-", name).strip("-") or "r"
        # rules with this body already (indexed, so a big schema converts in linear time)
        for existing in self.by_body.get(body, ()):
            if self.rules.get(existing) == body and (
                    existing == name or re.fullmatch(re.escape(name) + r"(-\d+)?", existing)):
                return existing
        i = self.suffix.get(name, 0)
        key = name if i == 0 else f"{name}-{i}"
        while key in self.rules or key in _PRIMITIVES or key == "char":
            i += 1
            key = f"{name}-{i}"
        self.suffix[name] = i
        if len(self.rules) > MAX_RULES:
            raise GrammarError("JSON schema is too large to convert")
        self.rules[key] = body
        self.by_body.setdefault(body, []).append(key)
        return key

    def primitive(self, name: str) -> str:
        if name not in self.rules:
            if name == "char":
                self.rules["char"] = _CHAR.split(" ::= ", 1)[1]
                return name
            self.rules[name] = _PRIMITIVES[name]
            for d in _DEPS.get(name, []):
                self.primitive(d)
        return name

    def resolve_ref(self, ref: str, path: str) -> str:
        if ref in self.refs:
            return self.refs[ref]
        if not ref.startswith("#"):
            raise GrammarError(
                f"unsupported $ref {ref!r} at {path}: only local references (#/...) are supported")
        target: Any = self.root
        for part in [p for p in ref[1:].split("/") if p]:
            part = part.replace("~1", "/").replace("~0", "~")
            if not isinstance(target, dict) or part not in target:
                raise GrammarError(f"$ref {ref!r} at {path} does not resolve")
            target = target[part]
        name = self.add("ref-" + (ref.rsplit("/", 1)[-1] or "root"), "")  # reserve first: refs may recurse
        self.refs[ref] = name
        self.rules[name] = self.body(target, ref)
        return name

    def visit(self, schema: Any, name: str, path: str) -> str:
        """A rule name for `schema` (adding rules as needed)."""
        body = self.body(schema, path, name)
        if re.fullmatch(r"[a-zA-Z0-9-]+", body):
            return body
        return self.add(name, body)

    def body(self, schema: Any, path: str, name: str = "root") -> str:
        self.depth += 1
        try:
            if self.depth > MAX_DEPTH:
                raise GrammarError(f"JSON schema nests deeper than {MAX_DEPTH} levels at {path[:200]}")
            return self._body(schema, path, name)
        finally:
            self.depth -= 1

    def _body(self, schema: Any, path: str, name: str) -> str:
        if schema is True or schema == {}:
            return self.primitive("value")
        if schema is False:
            raise GrammarError(f"schema at {path} is false: nothing can match it")
        if not isinstance(schema, dict):
            raise GrammarError(f"schema at {path} must be an object, not {type(schema).__name__}")
        for key in schema:
            if key not in _HANDLED and key not in _ANNOTATIONS:
                raise GrammarError(f"unsupported JSON schema keyword {key!r} at {path}")
        if "$ref" in schema:
            return self.resolve_ref(schema["$ref"], path)
        if "const" in schema:
            return _json_literal(schema["const"])
        if "enum" in schema:
            if not isinstance(schema["enum"], list) or not schema["enum"]:
                raise GrammarError(f"enum at {path} must be a non-empty array")
            if len(schema["enum"]) > MAX_ENUM:
                n = len(schema["enum"])
                raise GrammarError(f"enum at {path} has {n} values; the limit is {MAX_ENUM}")
            return "(" + " | ".join(_json_literal(v) for v in schema["enum"]) + ")"
        for key in ("anyOf", "oneOf"):
            if key in schema:
                subs = schema[key]
                if not isinstance(subs, list) or not subs:
                    raise GrammarError(f"{key} at {path} must be a non-empty array")
                if len(subs) > MAX_ENUM:
                    raise GrammarError(f"{key} at {path} has {len(subs)} choices; the limit is {MAX_ENUM}")
                base = {k: v for k, v in schema.items() if k != key and k not in _ANNOTATIONS}
                alts = [self.visit({**base, **s} if base and isinstance(s, dict) else s, f"{name}-{i}",
                                   f"{path}/{key}/{i}") for i, s in enumerate(subs)]
                return "(" + " | ".join(alts) + ")"
        if "allOf" in schema:
            return self.body(self.merge_all_of(schema, path), path, name)
        t = schema.get("type")
        if isinstance(t, list):
            if not t:
                raise GrammarError(f"type at {path} is an empty list")
            alts = [self.visit({**schema, "type": x}, f"{name}-{x}", path) for x in t]
            return "(" + " | ".join(alts) + ")"
        if t is None:
            if "properties" in schema or "additionalProperties" in schema:
                t = "object"
            elif "items" in schema or "prefixItems" in schema:
                t = "array"
            else:
                return self.primitive("value")
        if t == "object":
            return self.object_body(schema, name, path)
        if t == "array":
            return self.array_body(schema, name, path)
        if t == "string":
            return self.string_body(schema, path)
        if t == "integer":
            return self.integer_body(schema, path)
        if t == "number":
            for k in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
                if k in schema:
                    raise GrammarError(f"unsupported JSON schema keyword {k!r} for type number at {path}")
            return self.primitive("number")
        if t in ("boolean", "null"):
            return self.primitive(t)
        raise GrammarError(f"unsupported type {t!r} at {path}")

    def merge_all_of(self, schema: dict[str, Any], path: str) -> dict[str, Any]:
        merged: dict[str, Any] = {k: v for k, v in schema.items() if k != "allOf"}
        for i, sub in enumerate(schema["allOf"]):
            if isinstance(sub, dict) and "$ref" in sub:
                sub = self.deref(sub["$ref"], f"{path}/allOf/{i}")
            if not isinstance(sub, dict):
                raise GrammarError(f"allOf at {path} must hold objects")
            for k, v in sub.items():
                if k == "properties":
                    merged["properties"] = {**merged.get("properties", {}), **v}
                elif k == "required":
                    merged["required"] = list(dict.fromkeys([*merged.get("required", []), *v]))
                elif k in merged and merged[k] != v and k not in _ANNOTATIONS:
                    raise GrammarError(f"unsupported allOf at {path}: conflicting {k!r}")
                else:
                    merged[k] = v
        return merged

    def deref(self, ref: str, path: str) -> Any:
        target: Any = self.root
        for part in [p for p in ref.lstrip("#").split("/") if p]:
            if not isinstance(target, dict) or part not in target:
                raise GrammarError(f"$ref {ref!r} at {path} does not resolve")
            target = target[part]
        return target

    def object_body(self, schema: dict[str, Any], name: str, path: str) -> str:
        props = schema.get("properties") or {}
        if not isinstance(props, dict):
            raise GrammarError(f"properties at {path} must be an object")
        required = [k for k in props if k in set(schema.get("required") or [])]
        missing = [k for k in schema.get("required") or [] if k not in props]
        extra = schema.get("additionalProperties", schema.get("unevaluatedProperties"))
        if extra is None:
            # compat(llama.cpp): declared properties close the object; a bare object is open
            extra = not props
        kv: dict[str, str] = {}
        for k, sub in props.items():
            value = self.visit(sub, f"{name}-{k}", f"{path}/properties/{k}")
            kv[k] = self.add(f"{name}-{k}-kv", f'{_json_literal(k)} ":" space {value}')
        for k in missing:
            if extra is False:
                raise GrammarError(
                    f"required property {k!r} at {path} is not declared and extra keys are not allowed")
            value = self.visit(extra if isinstance(extra, dict) else True, f"{name}-{k}", path)
            kv[k] = self.add(f"{name}-{k}-kv", f'{_json_literal(k)} ":" space {value}')
            required.append(k)
        optional = [k for k in props if k not in required]
        opt_rule = None
        for i in range(len(optional) - 1, -1, -1):
            nxt = opt_rule
            body = kv[optional[i]] if nxt is None else f'{kv[optional[i]]} ( "," space {nxt} )? | {nxt}'
            opt_rule = self.add(f"{name}-opt-{i}", body)
        add_rule = None
        if extra is not False:
            value = self.visit(extra if isinstance(extra, dict) else True, f"{name}-additional", path)
            add_rule = self.add(f"{name}-additional-kv", f'{self.primitive("string")} ":" space {value}')
        req = ' "," space '.join(kv[k] for k in required)
        if req:
            inner = req + (f' ( "," space {opt_rule} )?' if opt_rule else "") + (
                f' ( "," space {add_rule} )*' if add_rule else "")
        elif opt_rule and add_rule:
            inner = f'( {opt_rule} ( "," space {add_rule} )* | {add_rule} ( "," space {add_rule} )* )?'
        elif opt_rule:
            inner = f"{opt_rule}?"
        elif add_rule:
            inner = f'( {add_rule} ( "," space {add_rule} )* )?'
        else:
            inner = ""
        return f'"{{" space {inner} "}}" space'.replace("  ", " ")

    def array_body(self, schema: dict[str, Any], name: str, path: str) -> str:
        lo = _count(schema, "minItems", path) or 0
        hi = _count(schema, "maxItems", path)
        if hi is not None and hi < lo:
            raise GrammarError(f"maxItems < minItems at {path}")
        if "prefixItems" in schema:
            prefix = schema["prefixItems"]
            sized = "minItems" in schema or "maxItems" in schema
            if schema.get("items", False) not in (False, None) or sized:
                raise GrammarError(f"unsupported prefixItems at {path}: only fixed tuples are supported")
            items = [self.visit(s, f"{name}-{i}", f"{path}/prefixItems/{i}") for i, s in enumerate(prefix)]
            return '"[" space ' + ' "," space '.join(items) + ' "]" space'
        item = self.visit(schema.get("items", True), f"{name}-item", f"{path}/items")
        if hi == 0:
            return '"[" space "]" space'
        if lo == 0:
            more = f"{{0,{hi - 1}}}" if hi is not None else "*"
            return f'"[" space ( {item} ( "," space {item} ){more} )? "]" space'
        more = f"{{{lo - 1},{hi - 1}}}" if hi is not None else f"{{{lo - 1},}}"
        return f'"[" space {item} ( "," space {item} ){more} "]" space'

    def string_body(self, schema: dict[str, Any], path: str) -> str:
        fmt = schema.get("format")
        if fmt is not None:
            if fmt not in _FORMATS:
                raise GrammarError(f"unsupported string format {fmt!r} at {path}")
            return _FORMATS[fmt]
        lo = _count(schema, "minLength", path) or 0
        hi = _count(schema, "maxLength", path)
        if hi is not None and hi < lo:
            raise GrammarError(f"maxLength < minLength at {path}")
        self.primitive("char")
        if lo == 0 and hi is None:
            return self.primitive("string")
        rep = f"{{{lo},}}" if hi is None else f"{{{lo},{hi}}}"
        return f'"\\"" char{rep} "\\"" space'

    def integer_body(self, schema: dict[str, Any], path: str) -> str:
        def bound(key: str, excl: str, step: int) -> int | None:
            vals: list[int | float] = []
            if key in schema:
                vals.append(schema[key])
            if excl in schema and not isinstance(schema[excl], bool):
                vals.append(schema[excl] + step)
            if not vals:
                return None
            for v in vals:
                if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
                    raise GrammarError(f"{key} at {path} must be a number")

            return max(math.ceil(v) for v in vals) if step > 0 else min(math.floor(v) for v in vals)

        lo = bound("minimum", "exclusiveMinimum", 1)
        hi = bound("maximum", "exclusiveMaximum", -1)
        if lo is None and hi is None:
            return self.primitive("integer")
        return int_range(lo, hi) + " space"


def _count(schema: dict[str, Any], key: str, path: str) -> int | None:
    """A repetition count (minItems, maxLength, ...): a non-negative integer up to MAX_REPEAT, or None."""
    v = schema.get(key)
    if v is None:
        return None
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    if not isinstance(v, int) or isinstance(v, bool) or v < 0:
        raise GrammarError(f"{key} at {path} must be a non-negative integer, not {json.dumps(v)[:40]}")
    if v > MAX_REPEAT:
        raise GrammarError(f"{key} at {path} is {v}; the limit is {MAX_REPEAT}")
    return v


def schema_to_gbnf(schema: dict[str, Any]) -> str:
    """Convert a JSON schema to a GBNF grammar whose `root` matches exactly the valid documents.

    Raises:
        GrammarError: the schema uses something that cannot be expressed (the message names it).
    """
    if not isinstance(schema, dict):
        raise GrammarError("format must be a JSON schema object")
    conv = _Converter(schema)
    body = conv.body(schema, "#")
    rules = {"root": body, **{k: v for k, v in conv.rules.items() if k != "root"}}
    grammar = "".join(f"{k} ::= {v}\n" for k, v in rules.items())
    if len(grammar) > MAX_GRAMMAR_CHARS:
        raise GrammarError(f"JSON schema makes a grammar of {len(grammar)} characters; "
                           f"the limit is {MAX_GRAMMAR_CHARS}")
    return grammar


def with_think_block(grammar: str, markers: tuple[str, str], *, inside: bool) -> str:
    """Let a thinking model reason before the constrained answer: `[open] text close ws` then `grammar`.

    `inside`: the prompt already opened the block, so output starts in the reasoning text. The text
    may not contain the close marker's first two characters in a row (they must start the marker).
    """
    open_, close = markers
    c0, c1 = (gbnf_literal(c)[1:-1].replace("]", "\\]") for c in close[:2])
    rules = re.sub(r"^root ::=", "answer ::=", grammar, count=1, flags=re.M)
    block = f'think-text {gbnf_literal(close)} think-ws'
    head = block if inside else f"( {gbnf_literal(open_)} {block} )?"
    return (f"root ::= {head} answer\n"
            f'think-text ::= ( [^{c0}] | "{c0}" [^{c1}] )*\n'
            "think-ws ::= [ \\t\\n]{0,8}\n" + rules)


def _json_grammar() -> str:
    conv = _Converter({})
    conv.primitive("value")
    rules = {"root": "object", **conv.rules}
    return "".join(f"{k} ::= {v}\n" for k, v in rules.items())


# `format: "json"`: any JSON object (what Ollama's JSON grammar allows at the top level)
JSON_GBNF = _json_grammar()
