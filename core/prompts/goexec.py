"""Evaluator for parsed Go templates, with Go's builtins and Ollama's template functions."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from corral.errors import TemplateError
from corral.prompts.gofuncs import FUNCS, Struct, go_str, truth
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
TIME_LIMIT_S = 2.0  # wall time of one execution, checked as it runs
YIELD_EVERY_S, YIELD_FOR_S = 0.005, 0.001


class _Break(Exception):
    pass


class _Continue(Exception):
    pass


# ---- execution ------------------------------------------------------------------------------------
class Limits:
    """The step, output and time budget of one render, shared by every execution it makes (Ollama's
    legacy templates run once per turn)."""

    def __init__(self) -> None:
        self.steps = 0
        self.size = 0
        self.deadline = time.monotonic() + TIME_LIMIT_S
        self.yielded = time.monotonic()


class _Exec:
    """Go's exec state: one flat variable stack; a control structure pops what it pushed.

    As in text/template, `{{$x := v}}` pushes onto the stack and stays until the enclosing
    if/with/range ends (a plain list of nodes opens no scope); `{{$x = v}}` overwrites the nearest
    `$x`; a range iteration pops back to the mark taken after its pipeline; `{{template}}` runs
    with a fresh stack holding only `$`.
    """

    def __init__(self, tmpl: GoTemplate, limits: Limits | None = None) -> None:
        self.tmpl = tmpl
        self.out: list[str] = []
        self.limits = limits or Limits()
        self.depth = 0
        self.vars: list[list[Any]] = []  # [name, value] pairs, innermost last

    def emit(self, s: str) -> None:
        self.limits.size += len(s)
        if self.limits.size > MAX_OUTPUT_CHARS:
            raise TemplateError(f"template output exceeds the limit of {MAX_OUTPUT_CHARS} characters")
        self.out.append(s)

    def tick(self, line: int) -> None:
        lim = self.limits
        lim.steps += 1
        if lim.steps > MAX_STEPS:
            raise TemplateError(f"template: :{line}: evaluation exceeds {MAX_STEPS} steps")
        if lim.steps & 0xFF == 0:
            now = time.monotonic()
            if now > lim.deadline:
                raise TemplateError(f"template: :{line}: execution took longer than {TIME_LIMIT_S:g} s")
            if now - lim.yielded > YIELD_EVERY_S:
                # a long render gives the GIL and the CPU away briefly, so on a loaded machine the
                # event loop is never stuck behind it waiting for the OS to reschedule this thread
                time.sleep(YIELD_FOR_S)
                lim.yielded = time.monotonic()

    def run_list(self, nodes: list[Any], dot: Any) -> None:
        for n in nodes:
            self.run_node(n, dot)

    def run_node(self, n: Any, dot: Any) -> None:
        if isinstance(n, Text):
            self.emit(n.text)
            return
        self.tick(getattr(n, "line", 0))
        if isinstance(n, Action):
            v = self.eval_pipe(n.pipe, dot)
            if not n.pipe.decl:
                self.emit(go_str(v))
        elif isinstance(n, Branch):
            self.run_branch(n, dot)
        elif isinstance(n, Control):
            raise _Break() if n.kind == "break" else _Continue()
        elif isinstance(n, Include):
            body = self.tmpl.defines.get(n.name)
            if body is None:
                raise TemplateError(f'template: :{n.line}: no such template "{n.name}"')
            if self.depth >= MAX_DEPTH:
                raise TemplateError(f"template: :{n.line}: exceeded maximum template depth ({MAX_DEPTH})")
            new_dot = self.eval_pipe(n.pipe, dot) if n.pipe is not None else None
            saved, self.vars = self.vars, [["$", new_dot]]
            self.depth += 1
            try:
                self.run_list(body, new_dot)
            finally:
                self.depth -= 1
                self.vars = saved

    def run_branch(self, n: Branch, dot: Any) -> None:
        if n.kind == "range":
            self.run_range(n, dot)
            return
        mark = len(self.vars)
        try:
            v = self.eval_pipe(n.pipe, dot)
            if truth(v):
                self.run_list(n.body, v if n.kind == "with" else dot)
            elif n.else_body is not None:
                self.run_list(n.else_body, dot)
        finally:
            del self.vars[mark:]

    def run_range(self, n: Branch, dot: Any) -> None:
        outer = len(self.vars)
        try:
            v = self.eval_pipe(n.pipe, dot)
            if isinstance(v, Mapping):
                pairs = [(k, v[k]) for k in sorted(v, key=str)]
            elif isinstance(v, (list, tuple)):
                pairs = list(enumerate(v))
            elif isinstance(v, int) and not isinstance(v, bool):
                if v > MAX_STEPS:
                    raise TemplateError(f"template: :{n.line}: range over {v} exceeds {MAX_STEPS} steps")
                pairs = [(i, i) for i in range(max(0, v))]
            elif v is None or v == "":
                pairs = []
            else:
                raise TemplateError(f"template: :{n.line}: range can't iterate over {go_str(v)}")
            if not pairs:
                if n.else_body is not None:
                    self.run_list(n.else_body, dot)
                return
            mark = len(self.vars)
            decl = n.pipe.decl
            for k, elem in pairs:
                self.tick(n.line)
                # Go: one variable gets the element; two get (index or key, element)
                if n.pipe.assign:
                    for name, val in zip(decl, (k, elem) if len(decl) == 2 else (elem,), strict=True):
                        self.set_var(name, val, n.line)
                elif len(decl) == 1:
                    self.vars[-1][1] = elem
                elif len(decl) == 2:
                    self.vars[-2][1], self.vars[-1][1] = k, elem
                try:
                    self.run_list(n.body, elem)
                except _Continue:
                    pass
                except _Break:
                    break
                finally:
                    del self.vars[mark:]
        finally:
            del self.vars[outer:]

    def lookup_var(self, name: str, line: int) -> Any:
        for entry in reversed(self.vars):
            if entry[0] == name:
                return entry[1]
        raise TemplateError(f"template: :{line}: undefined variable: {name}")

    def set_var(self, name: str, value: Any, line: int) -> None:
        for entry in reversed(self.vars):
            if entry[0] == name:
                entry[1] = value
                return
        raise TemplateError(f"template: :{line}: undefined variable: {name}")

    def eval_pipe(self, p: Pipe, dot: Any) -> Any:
        val: Any = None
        has_val = False
        for c in p.cmds:
            val = self.eval_cmd(c, dot, val, has_val)
            has_val = True
        for name in p.decl:
            if p.assign:
                self.set_var(name, val, p.line)
            else:
                self.vars.append([name, val])
        return val

    def eval_cmd(self, c: Command, dot: Any, piped: Any, has_piped: bool) -> Any:
        head = c.args[0]
        if isinstance(head, Ident):
            if head.name in ("and", "or"):
                return self.eval_logic(head.name, c, dot, piped, has_piped)
            fn = FUNCS.get(head.name)
            if fn is None:
                raise TemplateError(f'template: :{head.line}: function "{head.name}" not defined')
            args = [self.eval_arg(a, dot) for a in c.args[1:]]
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
            except (ValueError, ArithmeticError, RecursionError) as e:  # chr(-1), float(10**400), ...
                raise TemplateError(f"template: :{head.line}: error calling {head.name}: {e}") from None
        if len(c.args) > 1 or has_piped:
            raise TemplateError(f"template: :{c.line}: can't give argument to non-function {_describe(head)}")
        return self.eval_arg(head, dot)

    def eval_logic(self, name: str, c: Command, dot: Any, piped: Any, has_piped: bool) -> Any:
        # Go 1.18+: and/or stop evaluating at the first argument that decides the result
        operands: list[Any] = list(c.args[1:])
        if has_piped:
            operands.append(Literal(piped))
        if not operands:
            raise TemplateError(
                f"template: :{c.line}: wrong number of args for {name}: want at least 1 got 0")
        v: Any = None
        for a in operands:
            v = self.eval_arg(a, dot)
            if (name == "and") != truth(v):
                return v
        return v

    def eval_arg(self, a: Any, dot: Any) -> Any:
        if isinstance(a, Literal):
            return a.value
        if isinstance(a, Dot):
            return dot
        if isinstance(a, Var):
            return self.lookup_var(a.name, a.line)
        if isinstance(a, Field):
            base = dot if a.receiver is None else self.eval_arg(a.receiver, dot)
            return self.field_chain(base, a)
        if isinstance(a, Pipe):
            return self.eval_pipe(a, dot)
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


def execute(tmpl: GoTemplate, data: Any, root: list[Any] | None = None, limits: Limits | None = None) -> str:
    """Render `tmpl` (or an edited copy of its node list, `root`) with `data` as dot and `$`.

    ``limits`` carries the step, output and time budget across several executions of one render.
    """
    ex = _Exec(tmpl, limits)
    ex.vars.append(["$", data])
    try:
        ex.run_list(tmpl.root if root is None else root, data)
    except RecursionError:
        raise TemplateError("template nests too deeply") from None
    except (_Break, _Continue):  # the parser rejects these outside range; kept as a guard
        raise TemplateError("template: break or continue outside range") from None
    return "".join(ex.out)
