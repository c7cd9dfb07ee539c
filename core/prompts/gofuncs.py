"""Go template values and functions: fmt-style printing, truthiness, the builtins and Ollama's additions."""

from __future__ import annotations

import datetime as _dt
import json
import math
import re
from collections.abc import Callable, Mapping
from typing import Any

from corral.errors import TemplateError


class Struct(dict[str, Any]):
    """A Go struct value: missing fields are an error, unlike a map's (missingkey=zero)."""

    type_name = "struct"
    stringer = False  # has a String() method that fmt uses


class JsonMap(dict[str, Any]):
    """A Go map type whose String() is its JSON (Ollama's ToolCallFunctionArguments)."""

    stringer = True


class PropertyType(list[str]):
    """Ollama's api.PropertyType: a property's JSON-schema type(s), a []string that prints as the type.

    compat(ollama): String() is "" for none, the type for one, `[a b]` for several; its JSON is a
    string for one type and an array otherwise. Templates range over it (gpt-oss's does).
    """

    def go_string(self) -> str:
        return "" if not self else self[0] if len(self) == 1 else "[" + " ".join(self) + "]"


# ---- value formatting (fmt's %v) ------------------------------------------------------------------
def go_str(v: Any) -> str:
    if v is None:
        return "<no value>"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return v
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return _go_float(v)
    if isinstance(v, PropertyType):
        return v.go_string()
    if getattr(v, "stringer", False):
        # compat(ollama): api.Tool, ToolFunction and the call arguments print as JSON (String())
        return go_json(v)
    if isinstance(v, Struct):
        return "{" + " ".join(go_str(x) for x in v.values()) + "}"
    if isinstance(v, Mapping):
        return "map[" + " ".join(f"{go_str(k)}:{go_str(v[k])}" for k in sorted(v, key=str)) + "]"
    if isinstance(v, (list, tuple)):
        return "[" + " ".join(go_str(x) for x in v) + "]"
    if isinstance(v, bytes):
        return "[" + " ".join(str(b) for b in v) + "]"
    return str(v)


def _go_float(f: float) -> str:
    # Go's %v for float64 is %g with the shortest representation and exponent from 1e21
    if math.isinf(f):
        return "+Inf" if f > 0 else "-Inf"
    if math.isnan(f):
        return "NaN"
    if f == int(f) and abs(f) < 1e21:
        return str(int(f))
    r = repr(f)
    if "e" in r:
        mant, exp = r.split("e")
        sign = "-" if exp.startswith("-") else "+"
        return f"{mant}e{sign}{abs(int(exp)):02d}"
    return r


def truth(v: Any) -> bool:
    """Go template truthiness: false, 0, nil and empty strings/slices/maps are false; structs true."""
    if isinstance(v, Struct):
        return True
    if v is None:
        return False
    if isinstance(v, (bool, int, float, str, list, tuple, dict, bytes)):
        return bool(v)
    return True


_MAX_FMT_NUM = 1_000_000


# ---- functions ------------------------------------------------------------------------------------
def _printf(fmt: str, *args: Any) -> str:
    out: list[str] = []
    ai = 0
    i = 0
    spec = re.compile(r"%([-+# 0]*)(\d+|\*)?(?:\.(\d+))?([a-zA-Z%])")
    while i < len(fmt):
        if fmt[i] != "%":
            j = fmt.find("%", i)
            j = len(fmt) if j < 0 else j
            out.append(fmt[i:j])
            i = j
            continue
        m = spec.match(fmt, i)
        if m is None:
            out.append("%!(NOVERB)")
            break
        i = m.end()
        flags, width, prec, verb = m.group(1), m.group(2), m.group(3), m.group(4)
        if verb == "%":
            out.append("%")
            continue
        if ai >= len(args):
            out.append(f"%!{verb}(MISSING)")
            continue
        a = args[ai]
        ai += 1
        # compat(go): fmt refuses widths and precisions past 1e6 (printing %!(BADWIDTH)/%!(BADPREC));
        # checking before formatting also keeps `%999999999d` from allocating a gigabyte
        if prec is not None and int(prec) > _MAX_FMT_NUM:
            out.append("%!(BADPREC)")
            prec = None
        s = _format_one(verb, a, prec)
        if width and width != "*":
            w = int(width)
            if w > _MAX_FMT_NUM:
                out.append("%!(BADWIDTH)")
                w = 0
            s = s.ljust(w) if "-" in flags else (s.rjust(w, "0") if "0" in flags else s.rjust(w))
        out.append(s)
    if ai < len(args):
        out.append("%!(EXTRA " + ", ".join(f"{type(a).__name__}={go_str(a)}" for a in args[ai:]) + ")")
    return "".join(out)


def _format_one(verb: str, a: Any, prec: str | None) -> str:
    if verb in "vs":
        return go_str(a)
    if verb == "q":
        return json.dumps(go_str(a), ensure_ascii=False)
    if verb == "d" and isinstance(a, int) and not isinstance(a, bool):
        return str(a)
    if verb == "t" and isinstance(a, bool):
        return go_str(a)
    if verb in "fFeEgG" and isinstance(a, (int, float)) and not isinstance(a, bool):
        p = 6 if prec is None else int(prec)
        return f"{float(a):.{p}{verb.lower() if verb in 'F' else verb}}" if verb != "g" or prec else go_str(
            float(a))
    if verb in "xX" and isinstance(a, (int, str)):
        s = format(a, verb) if isinstance(a, int) else a.encode().hex()
        return s.upper() if verb == "X" else s
    if verb == "c" and isinstance(a, int):
        return chr(a)
    return f"%!{verb}({type(a).__name__}={go_str(a)})"


def _go_print(*args: Any) -> str:
    # fmt.Sprint adds a space between operands when neither side is a string
    out = ""
    for i, a in enumerate(args):
        if i and not isinstance(a, str) and not isinstance(args[i - 1], str):
            out += " "
        out += go_str(a)
    return out


def _index(item: Any, *keys: Any) -> Any:
    for k in keys:
        if isinstance(item, Mapping):
            item = item.get(k)
        elif isinstance(item, (list, tuple, str)):
            if not isinstance(k, int) or isinstance(k, bool):
                raise TemplateError(
                    f"error calling index: cannot index slice/array with type {type(k).__name__}")
            if not 0 <= k < len(item):
                raise TemplateError(f"error calling index: index out of range: {k}")
            item = item[k] if not isinstance(item, str) else ord(item[k])
        elif item is None:
            raise TemplateError("error calling index: index of untyped nil")
        else:
            raise TemplateError(f"error calling index: can't index item of type {type(item).__name__}")
    return item


def _slice(item: Any, *idx: Any) -> Any:
    if not isinstance(item, (list, tuple, str)):
        raise TemplateError(f"error calling slice: can't slice item of type {type(item).__name__}")
    if len(idx) > 3:
        raise TemplateError(f"error calling slice: too many slice indexes: {len(idx)}")
    n = len(item)
    lo = idx[0] if idx else 0
    hi = idx[1] if len(idx) > 1 else n
    if any(not isinstance(x, int) or isinstance(x, bool) for x in (lo, hi)):
        raise TemplateError("error calling slice: slice indexes must be integers")
    if not 0 <= lo <= hi <= n:
        raise TemplateError(f"error calling slice: invalid slice index: {lo} > {hi}" if lo > hi
                            else f"error calling slice: index out of range: {hi}")
    return item[lo:hi]


def _len(v: Any) -> int:
    if isinstance(v, (str, list, tuple, dict, bytes)):
        return len(v.encode() if isinstance(v, str) else v)
    raise TemplateError(f"error calling len: len of type {type(v).__name__}")


def _basic(v: Any, fn: str) -> Any:
    if isinstance(v, (bool, int, float, str)) or v is None:
        return v
    raise TemplateError(f"error calling {fn}: incompatible type for comparison")


def _eq(a: Any, *bs: Any) -> bool:
    if not bs:
        raise TemplateError("error calling eq: missing argument for comparison")
    a = _basic(a, "eq")
    for b in bs:
        b = _basic(b, "eq")
        if a is None or b is None:
            if a is b:
                return True
            continue
        if isinstance(a, str) != isinstance(b, str) or isinstance(a, bool) != isinstance(b, bool):
            raise TemplateError("error calling eq: incompatible types for comparison")
        if a == b:
            return True
    return False


def _cmp(name: str, op: Callable[[Any, Any], bool]) -> Callable[[Any, Any], bool]:
    def f(a: Any, b: Any) -> bool:
        a, b = _basic(a, name), _basic(b, name)
        if isinstance(a, str) != isinstance(b, str) or a is None or b is None or isinstance(a, bool) \
                or isinstance(b, bool):
            raise TemplateError(f"error calling {name}: incompatible types for comparison")
        return op(a, b)

    return f


def go_json(v: Any) -> str:
    """Go's json.Marshal: compact, with <, > and & escaped as HTML-safe \\u sequences."""
    s = json.dumps(_to_wire(v), separators=(",", ":"), ensure_ascii=False)
    return s.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _to_wire(v: Any) -> Any:
    wire = getattr(v, "wire", None)
    if wire is not None:
        return wire
    if isinstance(v, PropertyType):
        return v[0] if len(v) == 1 else list(v)
    if isinstance(v, Mapping):
        return {str(k): _to_wire(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_to_wire(x) for x in v]
    if isinstance(v, bytes):
        import base64

        return base64.b64encode(v).decode()
    return v


_TS_TYPES = {"string": "string", "number": "number", "integer": "number", "boolean": "boolean",
             "array": "any[]", "object": "Record<string, any>", "null": "null"}


def to_typescript_type(prop: Any) -> str:
    """Ollama's ToolProperty.ToTypeScriptType: a JSON-schema property's type in TypeScript."""
    prop = getattr(prop, "wire", prop)  # an api.ToolProperty struct: read its JSON-schema fields
    if not isinstance(prop, Mapping):
        return "any"
    if prop.get("anyOf"):
        return " | ".join(to_typescript_type(p) for p in prop["anyOf"])
    t = prop.get("type")
    types = [t] if isinstance(t, str) else list(t or [])
    if not types:
        return "any"
    return " | ".join(_TS_TYPES.get(x, "any") for x in types)


def _html(*args: Any) -> str:
    s = _go_print(*args)
    return (s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&#34;")
            .replace("'", "&#39;").replace("\0", "\uFFFD"))


def _urlquery(*args: Any) -> str:
    from urllib.parse import quote_plus

    return quote_plus(_go_print(*args))


FUNCS: dict[str, Callable[..., Any]] = {
    "not": lambda a: not truth(a),
    "len": _len,
    "index": _index,
    "slice": _slice,
    "print": _go_print,
    "println": lambda *a: " ".join(go_str(x) for x in a) + "\n",
    "printf": lambda fmt, *a: _printf(fmt, *a),
    "eq": _eq,
    "ne": lambda a, b: not _eq(a, b),
    "lt": _cmp("lt", lambda a, b: a < b),
    "le": _cmp("le", lambda a, b: a <= b),
    "gt": _cmp("gt", lambda a, b: a > b),
    "ge": _cmp("ge", lambda a, b: a >= b),
    "html": _html,
    "urlquery": _urlquery,
    "js": lambda *a: json.dumps(_go_print(*a))[1:-1].replace("'", "\\'"),
    # Ollama's additions (template/template.go funcs)
    "json": go_json,
    "toTypeScriptType": to_typescript_type,
    "currentDate": lambda: _dt.date.today().strftime("%Y-%m-%d"),
    "yesterdayDate": lambda: (_dt.date.today() - _dt.timedelta(days=1)).strftime("%Y-%m-%d"),
}


