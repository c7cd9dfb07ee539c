"""Lexer and parser for the Go text/template subset that Ollama's Modelfile TEMPLATEs use."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from corral.errors import TemplateError

Token = tuple[str, Any, int]  # (kind, value, line) from the action lexer

MAX_TEMPLATE_CHARS = 1 << 20  # a Modelfile TEMPLATE is a few KiB; 1 MiB bounds parse time
MAX_NESTING = 100  # nested if/range/with/define and parentheses; real templates nest under 10


# ---- AST ------------------------------------------------------------------------------------------
@dataclass
class Text:
    text: str


@dataclass
class Field:
    """`.A.B` (names) applied to dot, or to `receiver` when it is a Var/Pipe/literal operand."""

    names: list[str]
    line: int
    receiver: Any = None


@dataclass
class Var:
    name: str  # "$" or "$x"
    line: int


@dataclass
class Dot:
    line: int


@dataclass
class Ident:
    """A function name."""

    name: str
    line: int


@dataclass
class Literal:
    value: Any


@dataclass
class Command:
    args: list[Any]
    line: int


@dataclass
class Pipe:
    cmds: list[Command]
    decl: list[str] = field(default_factory=list)
    assign: bool = False  # `=` instead of `:=`
    line: int = 0


@dataclass
class Action:
    pipe: Pipe
    line: int


@dataclass
class Branch:
    kind: str  # if | range | with
    pipe: Pipe
    body: list[Any]
    else_body: list[Any] | None
    line: int


@dataclass
class Control:
    kind: str  # break | continue
    line: int


@dataclass
class Include:
    """`{{ template "name" pipeline }}`."""

    name: str
    pipe: Pipe | None
    line: int


# ---- lexer ----------------------------------------------------------------------------------------
_TOKEN = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<decl>:=)
  | (?P<assign>=)
  | (?P<pipe>\|)
  | (?P<lparen>\()
  | (?P<rparen>\))
  | (?P<comma>,)
  | (?P<str>"(?:[^"\\\n]|\\.)*")
  | (?P<raw>`[^`]*`)
  | (?P<char>'(?:[^'\\\n]|\\.[^']*)')
  | (?P<num>[+-]?(?:0[xX][0-9a-fA-F_]+|(?:\d[\d_]*)?\.?\d[\d_]*(?:[eE][+-]?\d+)?))
  | (?P<var>\$[A-Za-z0-9_]*)
  | (?P<field>(?:\.[A-Za-z_][A-Za-z0-9_]*)+)
  | (?P<dot>\.)
  | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
    """,
    re.VERBOSE,
)
_GO_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", '"': '"', "'": "'", "a": "\a", "b": "\b",
               "f": "\f", "v": "\v", "0": "\0"}


def _unquote(s: str, line: int) -> str:
    out: list[str] = []
    i = 0
    body = s[1:-1]
    while i < len(body):
        c = body[i]
        if c != "\\":
            out.append(c)
            i += 1
            continue
        e = body[i + 1]
        if e in "xuU":
            width = {"x": 2, "u": 4, "U": 8}[e]
            hexpart = body[i + 2 : i + 2 + width]
            if len(hexpart) != width or not re.fullmatch(r"[0-9a-fA-F]+", hexpart):
                raise TemplateError(f"template: :{line}: invalid syntax in string {s}")
            out.append(chr(int(hexpart, 16)))
            i += 2 + width
        elif e in _GO_ESCAPES:
            out.append(_GO_ESCAPES[e])
            i += 2
        else:
            raise TemplateError(f"template: :{line}: invalid syntax in string {s}")
    return "".join(out)


def _lex_action(src: str, line: int) -> list[Token]:
    """Tokens of one action's inside; a token keeps the line it starts on."""
    toks: list[Token] = []
    pos = 0
    prev = ""  # kind of the token just before, "ws" after whitespace
    while pos < len(src):
        m = _TOKEN.match(src, pos)
        if m is None:
            raise TemplateError(f"template: :{line}: unexpected {src[pos]!r} in command")
        kind = m.lastgroup or ""
        text = m.group()
        if kind == "field" and prev in ("var", "rparen"):
            # Go: a field glued to a variable or `)` chains on that operand (`$m.Role`); after a
            # space it is a separate argument on dot (`and $x .Content`)
            kind = "chain"
        prev = kind
        if kind == "ws":
            line += text.count("\n")
        elif kind == "str":
            toks.append(("lit", _unquote(text, line), line))
        elif kind == "raw":
            toks.append(("lit", text[1:-1], line))
            line += text.count("\n")
        elif kind == "char":
            toks.append(("lit", ord(_unquote('"' + text[1:-1] + '"', line)), line))
        elif kind == "num":
            toks.append(("lit", _parse_number(text, line), line))
        elif kind == "ident" and text in ("true", "false"):
            toks.append(("lit", text == "true", line))
        elif kind == "ident" and text == "nil":
            toks.append(("nil", None, line))
        else:
            toks.append((kind, text, line))
        pos = m.end()
    return toks


def _parse_number(text: str, line: int) -> int | float:
    t = text.replace("_", "")
    try:
        if re.fullmatch(r"[+-]?0[xX][0-9a-fA-F]+", t):
            return int(t, 16)
        if re.fullmatch(r"[+-]?\d+", t):
            return int(t)
        return float(t)
    except ValueError:
        raise TemplateError(f"template: :{line}: bad number syntax: {text!r}") from None


@dataclass
class _Item:
    kind: str  # text | action
    value: Any  # str for text, token list for action
    line: int
    raw: str = ""


def _split(src: str) -> list[_Item]:
    """Text and `{{ }}` actions, with trim markers applied and comments dropped."""
    items: list[_Item] = []
    pos = 0
    line = 1
    trim_next = False
    while True:
        start = src.find("{{", pos)
        text = src[pos:] if start < 0 else src[pos:start]
        if trim_next:
            text = text.lstrip(" \t\r\n")
        # `{{- ` trims the whitespace before the action; the dash needs a space after it
        trim_left = start >= 0 and src[start + 2 : start + 3] == "-" and src[start + 3 : start + 4] in (
            " ", "\t", "\r", "\n")
        if trim_left:
            text = text.rstrip(" \t\r\n")
        if text:
            items.append(_Item("text", text, line))
        if start < 0:
            break
        line += src.count("\n", pos, start)
        body_start = start + (4 if trim_left else 2)
        if src.startswith("/*", body_start):
            cend = src.find("*/", body_start + 2)
            if cend < 0:
                raise TemplateError(f"template: :{line}: unclosed comment")
            after = cend + 2
            trim_next = False
            if src.startswith(" -}}", after):
                trim_next = True
                after += 4
            elif src.startswith("}}", after):
                after += 2
            else:
                raise TemplateError(f"template: :{line}: comment ends before closing delimiter")
            line += src.count("\n", start, after)
            pos = after
            continue
        end = _find_close(src, body_start, line)
        inner = src[body_start:end]
        trim_next = inner.endswith((" -", "\t-", "\n-", "\r-"))
        if trim_next:
            inner = inner[:-1]
        items.append(_Item("action", _lex_action(inner, line), line, inner.strip()))
        close_len = 2
        line += src.count("\n", start, end + close_len)
        pos = end + close_len
    return items


def _find_close(src: str, pos: int, line: int) -> int:
    """Index of the `}}` closing the action at `pos`, skipping quoted strings."""
    i = pos
    while i < len(src):
        c = src[i]
        if c == '"' or c == "'":
            j = i + 1
            while j < len(src) and src[j] != c:
                if src[j] == "\\":
                    j += 1
                elif src[j] == "\n":
                    raise TemplateError(f"template: :{line}: unterminated quoted string")
                j += 1
            i = j + 1
            continue
        if c == "`":
            j = src.find("`", i + 1)
            if j < 0:
                raise TemplateError(f"template: :{line}: unterminated raw quoted string")
            i = j + 1
            continue
        if src.startswith("}}", i):
            return i
        i += 1
    raise TemplateError(f"template: :{line}: unclosed action")


# ---- parser ---------------------------------------------------------------------------------------
_KEYWORDS = {"if", "else", "end", "range", "with", "define", "template", "block", "break", "continue"}


class _Parser:
    def __init__(self, items: list[_Item]) -> None:
        self.items = items
        self.i = 0
        self.defines: dict[str, list[Any]] = {}
        self.range_depth = 0
        # Go checks variables while parsing: each name declared so far in an enclosing scope
        self.vars: list[str] = ["$"]
        self.nesting = 0

    def nest(self, line: int) -> None:
        """Enter one level of nesting (the caller leaves it in a finally); bounded before Python's stack."""
        self.nesting += 1
        if self.nesting > MAX_NESTING:
            raise TemplateError(f"template: :{line}: nesting deeper than {MAX_NESTING} levels")

    def parse_list(self, stop: tuple[str, ...]) -> tuple[list[Any], _Item | None]:
        """Nodes until an action whose first keyword is in `stop` (returned, unconsumed)."""
        nodes: list[Any] = []
        while self.i < len(self.items):
            it = self.items[self.i]
            if it.kind == "text":
                nodes.append(Text(it.value))
                self.i += 1
                continue
            toks = it.value
            kw = toks[0][1] if toks and toks[0][0] == "ident" and toks[0][1] in _KEYWORDS else None
            if kw in stop:
                return nodes, it
            self.i += 1
            if kw is None:
                if not toks:
                    raise TemplateError(f"template: :{it.line}: missing value for command")
                nodes.append(Action(self.parse_pipe(toks, it.line, decl_ok=True), it.line))
            elif kw in ("if", "range", "with"):
                nodes.append(self.parse_branch(kw, toks[1:], it.line))
            elif kw in ("break", "continue"):
                if self.range_depth == 0:
                    raise TemplateError(f"template: :{it.line}: {{{{{kw}}}}} outside {{{{range}}}}")
                if len(toks) > 1:
                    raise TemplateError(f"template: :{it.line}: unexpected {toks[1][1]!r} in {kw}")
                nodes.append(Control(kw, it.line))
            elif kw in ("define", "block"):
                nodes.extend(self.parse_define(kw, toks[1:], it.line))
            elif kw == "template":
                nodes.append(self.parse_include(toks[1:], it.line))
            else:
                raise TemplateError(f"template: :{it.line}: unexpected {{{{{kw}}}}}")
        return nodes, None

    def parse_branch(self, kind: str, toks: list[Token], line: int) -> Branch:
        # Go's parseControl: what the pipeline, the body or the else part declares ends at {{end}}
        mark = len(self.vars)
        self.nest(line)
        try:
            return self._parse_branch(kind, toks, line)
        finally:
            del self.vars[mark:]
            self.nesting -= 1

    def _parse_branch(self, kind: str, toks: list[Token], line: int) -> Branch:
        if not toks:
            raise TemplateError(f"template: :{line}: missing value for {kind}")
        pipe = self.parse_pipe(toks, line, decl_ok=True, range_decl=kind == "range")
        if kind == "range":
            self.range_depth += 1
        body, end = self.parse_list(("else", "end"))
        if kind == "range":
            self.range_depth -= 1
        if end is None:
            raise TemplateError(f"template: :{line}: unexpected EOF: {{{{{kind}}}}} has no {{{{end}}}}")
        self.i += 1
        else_body = None
        etoks = end.value
        if etoks[0][1] == "else":
            chained = len(etoks) > 1 and etoks[1][0] == "ident" and etoks[1][1] in ("if", "with")
            if chained and kind != "range":
                # `else if` / `else with`: a nested branch that shares this branch's {{end}}
                else_body = [self.parse_branch_chain(etoks[1][1], etoks[2:], end.line)]
                return Branch(kind, pipe, body, else_body, line)
            if len(etoks) > 1:
                raise TemplateError(f"template: :{end.line}: unexpected {etoks[1][1]!r} in else")
            else_body, end2 = self.parse_list(("end", "else"))
            if end2 is None or end2.value[0][1] != "end":
                raise TemplateError(f"template: :{line}: expected {{{{end}}}} for {{{{{kind}}}}}")
            self.i += 1
        elif len(etoks) > 1:
            raise TemplateError(f"template: :{end.line}: unexpected {etoks[1][1]!r} in end")
        return Branch(kind, pipe, body, else_body, line)

    def parse_branch_chain(self, kind: str, toks: list[Token], line: int) -> Branch:
        # identical to parse_branch; the shared {{end}} is consumed by the innermost branch
        return self.parse_branch(kind, toks, line)

    def parse_define(self, kw: str, toks: list[Token], line: int) -> list[Any]:
        if not toks or toks[0][0] != "lit" or not isinstance(toks[0][1], str):
            raise TemplateError(f"template: :{line}: {kw} needs a quoted template name")
        name = toks[0][1]
        saved, self.vars = self.vars, ["$"]  # a defined template sees only `$`
        self.nest(line)
        try:
            body, end = self.parse_list(("end",))
        finally:
            self.vars = saved
            self.nesting -= 1
        if end is None:
            raise TemplateError(f"template: :{line}: unexpected EOF: {{{{{kw}}}}} has no {{{{end}}}}")
        self.i += 1
        self.defines[name] = body
        if kw == "block":
            pipe = self.parse_pipe(toks[1:], line) if len(toks) > 1 else None
            return [Include(name, pipe, line)]
        return []

    def parse_include(self, toks: list[Token], line: int) -> Include:
        if not toks or toks[0][0] != "lit" or not isinstance(toks[0][1], str):
            raise TemplateError(f"template: :{line}: template needs a quoted template name")
        pipe = self.parse_pipe(toks[1:], line) if len(toks) > 1 else None
        return Include(toks[0][1], pipe, line)

    def parse_pipe(self, toks: list[Token], line: int, decl_ok: bool = False,
                   range_decl: bool = False) -> Pipe:
        decl: list[str] = []
        assign = False
        # `$x :=`, `$x =`, and for range `$i, $e :=`
        if decl_ok and toks and toks[0][0] == "var":
            if len(toks) > 1 and toks[1][0] in ("decl", "assign"):
                decl, assign, toks = [toks[0][1]], toks[1][0] == "assign", toks[2:]
            elif range_decl and len(toks) > 3 and toks[1][0] == "comma" and toks[2][0] == "var" \
                    and toks[3][0] in ("decl", "assign"):
                decl, assign, toks = [toks[0][1], toks[2][1]], toks[3][0] == "assign", toks[4:]
        # Go's parser knows the names before it reads the value (`{{$x := $x}}` parses; it fails
        # when run), and an assignment counts as a use that declares nothing new at run time
        self.vars.extend(decl)
        cmds: list[Command] = []
        cur: list[Any] = []
        pos = 0
        while pos < len(toks):
            kind, val, tline = toks[pos]
            if kind == "pipe":
                if not cur:
                    raise TemplateError(f"template: :{tline}: missing command before '|'")
                cmds.append(Command(cur, tline))
                cur = []
                pos += 1
                continue
            node, pos = self.parse_operand(toks, pos)
            cur.append(node)
        if not cur:
            raise TemplateError(f"template: :{line}: missing value for command")
        cmds.append(Command(cur, line))
        for c in cmds[1:]:
            if isinstance(c.args[0], Literal):
                raise TemplateError(f"template: :{c.line}: non executable command in pipeline stage 2")
        return Pipe(cmds, decl, assign, line)

    def parse_operand(self, toks: list[Token], pos: int) -> tuple[Any, int]:
        kind, val, line = toks[pos]
        pos += 1
        node: Any
        if kind == "lit":
            node = Literal(val)
        elif kind == "nil":
            node = Literal(None)
        elif kind == "dot":
            node = Dot(line)
        elif kind == "field":
            node = Field(val[1:].split("."), line)
        elif kind == "var":
            if val not in self.vars:
                raise TemplateError(f'template: :{line}: undefined variable "{val}"')
            node = Var(val, line)
        elif kind == "ident":
            if val in _KEYWORDS:
                raise TemplateError(f"template: :{line}: unexpected <{val}> in command")
            node = Ident(val, line)
        elif kind == "lparen":
            depth, end = 1, pos
            while end < len(toks) and depth:
                depth += {"lparen": 1, "rparen": -1}.get(toks[end][0], 0)
                end += 1
            if depth:
                raise TemplateError(f"template: :{line}: unclosed left paren")
            self.nest(line)
            try:
                node = self.parse_pipe(toks[pos : end - 1], line)
            finally:
                self.nesting -= 1
            pos = end
        elif kind == "rparen":
            raise TemplateError(f"template: :{line}: unexpected right paren")
        else:
            raise TemplateError(f"template: :{line}: unexpected {val!r} in operand")
        # a field chain glued to a variable or a parenthesized pipeline: `$m.Role`, `(index . 0).Name`
        if pos < len(toks) and toks[pos][0] == "chain" and kind in ("var", "lparen"):
            node = Field(toks[pos][1][1:].split("."), line, receiver=node)
            pos += 1
        return node, pos


@dataclass
class GoTemplate:
    """A parsed template: the root node list, `define`d templates and the source text."""

    root: list[Any]
    defines: dict[str, list[Any]]
    source: str


def parse(src: str) -> GoTemplate:
    """Parse Go text/template source; syntax outside the supported subset raises TemplateError."""
    if len(src) > MAX_TEMPLATE_CHARS:
        raise TemplateError(
            f"template is too long ({len(src)} characters; the limit is {MAX_TEMPLATE_CHARS})")
    p = _Parser(_split(src))
    nodes, stray = p.parse_list(())
    if stray is not None:  # parse_list(()) never stops early; kept for the type checker
        raise TemplateError(f"template: :{stray.line}: unexpected {stray.raw}")
    # a stray {{end}} / {{else}} at top level surfaces as an "unexpected" from parse_list
    return GoTemplate(nodes, p.defines, src)


def walk_fields(nodes: list[Any]) -> list[Field]:
    """Every Field node, in source order (used for variable detection and the legacy cut)."""
    out: list[Field] = []

    def visit(n: Any) -> None:
        if isinstance(n, Field):
            out.append(n)
            if n.receiver is not None:
                visit(n.receiver)
        elif isinstance(n, Action):
            visit(n.pipe)
        elif isinstance(n, Pipe):
            for c in n.cmds:
                for a in c.args:
                    visit(a)
        elif isinstance(n, Branch):
            visit(n.pipe)
            for b in n.body:
                visit(b)
            for b in n.else_body or []:
                visit(b)
        elif isinstance(n, Include) and n.pipe is not None:
            visit(n.pipe)

    for node in nodes:
        visit(node)
    return out
