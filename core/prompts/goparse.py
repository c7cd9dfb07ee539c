"""Parser for the Go text/template subset that Ollama's Modelfile TEMPLATEs use: the AST and the
parser over golex's actions."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from corral.errors import TemplateError
from corral.prompts.golex import Item, Token, split_actions

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


# ---- parser ---------------------------------------------------------------------------------------
_KEYWORDS = {"if", "else", "end", "range", "with", "define", "template", "block", "break", "continue"}


class _Parser:
    def __init__(self, items: list[Item]) -> None:
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

    def parse_list(self, stop: tuple[str, ...]) -> tuple[list[Any], Item | None]:
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
    p = _Parser(split_actions(src))
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
