"""Evaluator for parsed Go templates, with Go's builtins and Ollama's template functions."""

from __future__ import annotations

import datetime as _dt
import json
import math
import re
from collections.abc import Callable, Mapping
from typing import Any

from corral.errors import TemplateError
from corral.prompts.goparse import (
    Action,
    Branch,
    Command,
    Control,
    Dot,
    Field,
    GoTemplate,
    Ident,
    Include,
    Literal,
    Pipe,
    Text,
    Var,
)

MAX_OUTPUT_CHARS = 8 << 20  # a prompt larger than this cannot fit any context anyway
MAX_STEPS = 2_000_000  # node evaluations; bounds runaway loops over huge data
MAX_DEPTH = 64  # nested {{template}} calls


class Struct(dict):
    """A Go struct value: missing fields are an error, unlike a map's (missingkey=zero)."""

    type_name = "struct"
    stringer = False  # has a String() method that fmt uses


class JsonMap(dict):
    """A Go map type whose String() is its JSON (Ollama's ToolCallFunctionArguments)."""

    stringer = True


class _Break(Exception):
    pass


class _Continue(Exception):
    pass


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
        s = _format_one(verb, a, prec)
        if width and width != "*":
            w = int(width)
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


# ---- execution ------------------------------------------------------------------------------------
class _Exec:
    def __init__(self, tmpl: GoTemplate) -> None:
        self.tmpl = tmpl
        self.out: list[str] = []
        self.size = 0
        self.steps = 0
        self.depth = 0

    def emit(self, s: str) -> None:
        self.size += len(s)
        if self.size > MAX_OUTPUT_CHARS:
            raise TemplateError(f"template output exceeds the limit of {MAX_OUTPUT_CHARS} characters")
        self.out.append(s)

    def tick(self, line: int) -> None:
        self.steps += 1
        if self.steps > MAX_STEPS:
            raise TemplateError(f"template: :{line}: evaluation exceeds {MAX_STEPS} steps")

    def run_list(self, nodes: list[Any], dot: Any, scope: list[dict[str, Any]]) -> None:
        scope.append({})
        try:
            for n in nodes:
                self.run_node(n, dot, scope)
        finally:
            scope.pop()

    def run_node(self, n: Any, dot: Any, scope: list[dict[str, Any]]) -> None:
        if isinstance(n, Text):
            self.emit(n.text)
            return
        self.tick(getattr(n, "line", 0))
        if isinstance(n, Action):
            v = self.eval_pipe(n.pipe, dot, scope)
            if not n.pipe.decl:
                self.emit(go_str(v))
        elif isinstance(n, Branch):
            self.run_branch(n, dot, scope)
        elif isinstance(n, Control):
            raise _Break() if n.kind == "break" else _Continue()
        elif isinstance(n, Include):
            body = self.tmpl.defines.get(n.name)
            if body is None:
                raise TemplateError(f'template: :{n.line}: no such template "{n.name}"')
            if self.depth >= MAX_DEPTH:
                raise TemplateError(f"template: :{n.line}: exceeded maximum template depth ({MAX_DEPTH})")
            new_dot = self.eval_pipe(n.pipe, dot, scope) if n.pipe is not None else None
            self.depth += 1
            try:
                self.run_list(body, new_dot, [{"$": new_dot}])
            finally:
                self.depth -= 1

    def run_branch(self, n: Branch, dot: Any, scope: list[dict[str, Any]]) -> None:
        if n.kind == "range":
            self.run_range(n, dot, scope)
            return
        scope.append({})
        try:
            v = self.eval_pipe(n.pipe, dot, scope)
            if truth(v):
                self.run_list(n.body, v if n.kind == "with" else dot, scope)
            elif n.else_body is not None:
                self.run_list(n.else_body, dot, scope)
        finally:
            scope.pop()

    def run_range(self, n: Branch, dot: Any, scope: list[dict[str, Any]]) -> None:
        scope.append({})
        try:
            pipe = Pipe(n.pipe.cmds, [], False, n.pipe.line)
            v = self.eval_pipe(pipe, dot, scope)
            if isinstance(v, Mapping):
                pairs = [(k, v[k]) for k in sorted(v, key=str)]
            elif isinstance(v, (list, tuple)):
                pairs = list(enumerate(v))
            elif isinstance(v, int) and not isinstance(v, bool):
                pairs = [(i, i) for i in range(max(0, v))]
                if v > MAX_STEPS:
                    raise TemplateError(f"template: :{n.line}: range over {v} exceeds {MAX_STEPS} steps")
            elif v is None:
                pairs = []
            else:
                raise TemplateError(f"template: :{n.line}: range can't iterate over {go_str(v)}")
            if not pairs:
                if n.else_body is not None:
                    self.run_list(n.else_body, dot, scope)
                return
            for k, elem in pairs:
                self.tick(n.line)
                frame: dict[str, Any] = {}
                if len(n.pipe.decl) == 1:
                    frame[n.pipe.decl[0]] = elem
                elif len(n.pipe.decl) == 2:
                    frame[n.pipe.decl[0]] = k
                    frame[n.pipe.decl[1]] = elem
                scope.append(frame)
                try:
                    self.run_list(n.body, elem, scope)
                except _Continue:
                    pass
                except _Break:
                    break
                finally:
                    scope.pop()
        finally:
            scope.pop()

    def lookup_var(self, name: str, scope: list[dict[str, Any]], line: int) -> Any:
        for frame in reversed(scope):
            if name in frame:
                return frame[name]
        raise TemplateError(f"template: :{line}: undefined variable: {name}")

    def eval_pipe(self, p: Pipe, dot: Any, scope: list[dict[str, Any]]) -> Any:
        val: Any = None
        has_val = False
        for c in p.cmds:
            val = self.eval_cmd(c, dot, scope, val, has_val)
            has_val = True
        if p.decl:
            name = p.decl[0]
            if p.assign:
                for frame in reversed(scope):
                    if name in frame:
                        frame[name] = val
                        break
                else:
                    raise TemplateError(f"template: :{p.line}: undefined variable: {name}")
            else:
                # `:=` declares in the enclosing block (the frame that run_list/run_branch pushed)
                scope[-1][name] = val
        return val

    def eval_cmd(self, c: Command, dot: Any, scope: list[dict[str, Any]], piped: Any, has_piped: bool) -> Any:
        head = c.args[0]
        if isinstance(head, Ident):
            if head.name in ("and", "or"):
                return self.eval_logic(head.name, c, dot, scope, piped, has_piped)
            fn = FUNCS.get(head.name)
            if fn is None:
                raise TemplateError(f'template: :{head.line}: function "{head.name}" not defined')
            args = [self.eval_arg(a, dot, scope) for a in c.args[1:]]
            if has_piped:
                args.append(piped)
            try:
                return fn(*args)
            except TemplateError as e:
                raise TemplateError(f"template: :{head.line}: executing: {e.message}") from None
            except TypeError:
                raise TemplateError(
                    f"template: :{head.line}: wrong number or type of args for {head.name}: got {len(args)}"
                ) from None
        if len(c.args) > 1 or has_piped:
            raise TemplateError(f"template: :{c.line}: can't give argument to non-function {_describe(head)}")
        return self.eval_arg(head, dot, scope)

    def eval_logic(self, name: str, c: Command, dot: Any, scope: list[dict[str, Any]], piped: Any,
                   has_piped: bool) -> Any:
        # Go 1.18+: and/or stop evaluating at the first argument that decides the result
        operands: list[Any] = list(c.args[1:])
        if has_piped:
            operands.append(Literal(piped))
        if not operands:
            raise TemplateError(
                f"template: :{c.line}: wrong number of args for {name}: want at least 1 got 0")
        v: Any = None
        for a in operands:
            v = self.eval_arg(a, dot, scope)
            if (name == "and") != truth(v):
                return v
        return v

    def eval_arg(self, a: Any, dot: Any, scope: list[dict[str, Any]]) -> Any:
        if isinstance(a, Literal):
            return a.value
        if isinstance(a, Dot):
            return dot
        if isinstance(a, Var):
            return self.lookup_var(a.name, scope, a.line)
        if isinstance(a, Field):
            base = dot if a.receiver is None else self.eval_arg(a.receiver, dot, scope)
            return self.field_chain(base, a)
        if isinstance(a, Pipe):
            return self.eval_pipe(a, dot, scope)
        if isinstance(a, Ident):
            fn = FUNCS.get(a.name)
            if fn is None:
                raise TemplateError(f'template: :{a.line}: function "{a.name}" not defined')
            if a.name in ("and", "or"):
                raise TemplateError(
                    f"template: :{a.line}: wrong number of args for {a.name}: want at least 1")
            try:
                return fn()
            except TypeError:
                raise TemplateError(
                    f"template: :{a.line}: wrong number of args for {a.name}: got 0") from None
        raise TemplateError(f"template: unexpected node {a!r}")

    def field_chain(self, base: Any, f: Field) -> Any:
        v = base
        for name in f.names:
            if isinstance(v, Struct):
                if name not in v:
                    raise TemplateError(
                        f"template: :{f.line}: executing: can't evaluate field {name} in type {v.type_name}")
                v = v[name]
            elif isinstance(v, Mapping):
                v = v.get(name)  # missingkey=zero
            elif v is None:
                # compat(ollama): Go errors on nil pointers; a missing map value chained further is nil
                v = None
            else:
                raise TemplateError(
                    f"template: :{f.line}: executing: can't evaluate field {name} in type {type(v).__name__}")
        return v


def _describe(n: Any) -> str:
    if isinstance(n, Field):
        return "." + ".".join(n.names)
    if isinstance(n, Var):
        return n.name
    if isinstance(n, Literal):
        return go_str(n.value)
    return "."


def execute(tmpl: GoTemplate, data: Any, root: list[Any] | None = None) -> str:
    """Render `tmpl` (or an edited copy of its node list, `root`) with `data` as dot and `$`."""
    ex = _Exec(tmpl)
    try:
        ex.run_list(tmpl.root if root is None else root, data, [{"$": data}])
    except RecursionError:
        raise TemplateError("template nests too deeply") from None
    except (_Break, _Continue):  # the parser rejects these outside range; kept as a guard
        raise TemplateError("template: break or continue outside range") from None
    return "".join(ex.out)
