"""GGUF Jinja chat templates rendered in jinja2's sandbox with limits on time, size and recursion."""

from __future__ import annotations

import datetime as _dt
import functools
import json
import sys
import time
from collections.abc import Iterator
from typing import Any

import jinja2
import jinja2.ext
import jinja2.sandbox
from jinja2 import nodes
from jinja2.utils import Namespace

from corral.errors import TemplateError

MAX_TEMPLATE_CHARS = 1 << 20  # real chat templates are under 64 KiB
MAX_OUTPUT_CHARS = 8 << 20
MAX_VALUE_CHARS = 4 << 20  # the largest string/list a `*`, `+` or `%` inside the template may build
TIME_LIMIT_S = 2.0


class _GenerationTag(jinja2.ext.Extension):
    """`{% generation %}…{% endgeneration %}`: HF's assistant-mask marker; renders its body as is."""

    tags = {"generation"}

    def parse(self, parser: Any) -> Any:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return nodes.Scope(body, lineno=lineno)


class _Guard:
    """Line tracer for template frames only: bounds time and value sizes however a loop is written.

    The sandbox's operator hooks cannot see `~` concatenation or `{% set %}`, so after every line of
    template code the frame's locals are checked for strings or lists beyond `max_value`.
    """

    def __init__(self, seconds: float, max_value: int) -> None:
        self.deadline = time.monotonic() + seconds
        self.max_value = max_value
        self.count = 0

    def global_trace(self, frame: Any, event: str, arg: Any) -> Any:
        if frame.f_code.co_filename == "<template>":
            self.check()
            return self.local_trace
        return None

    def local_trace(self, frame: Any, event: str, arg: Any) -> Any:
        self.count += 1
        for v in frame.f_locals.values():
            held = v._Namespace__attrs.values() if isinstance(v, Namespace) else ()
            if _size(v) > self.max_value or any(_size(x) > self.max_value for x in held):
                raise TemplateError("chat template builds a value that is too large")
        if self.count & 0x3F == 0:
            self.check()
        return self.local_trace

    def check(self) -> None:
        if time.monotonic() > self.deadline:
            raise TemplateError(f"chat template took longer than {TIME_LIMIT_S:g} s to render")


def _input_size(v: Any, depth: int = 0) -> int:
    if isinstance(v, str):
        return len(v)
    if depth > 20:
        return 0
    if isinstance(v, dict):
        return sum(_input_size(x, depth + 1) for x in v.values())
    if isinstance(v, (list, tuple)):
        return sum(_input_size(x, depth + 1) for x in v)
    return 0


def _size(v: Any) -> int:
    return len(v) if isinstance(v, (str, bytes, list, tuple)) else 0


class _Env(jinja2.sandbox.ImmutableSandboxedEnvironment):
    # every operator that can multiply the size of a value is checked before it runs
    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "*":
            for a, b in ((left, right), (right, left)):
                if _size(a) and isinstance(b, int) and _size(a) * b > MAX_VALUE_CHARS:
                    raise TemplateError("chat template builds a value that is too large")
        elif operator == "**":
            if isinstance(left, int) and isinstance(right, int) and abs(left) > 1 and right > 256:
                raise TemplateError("chat template computes a number that is too large")
        result = super().call_binop(context, operator, left, right)
        if _size(result) > MAX_VALUE_CHARS:
            raise TemplateError("chat template builds a value that is too large")
        return result


def _raise_exception(message: str) -> None:
    raise TemplateError(f"chat template error: {message}")


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None,
            separators: tuple[str, str] | None = None, sort_keys: bool = False) -> str:
    # compat(hf): transformers' tojson keeps Python's default ", " / ": " separators and no escaping
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                      sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return _dt.datetime.now().strftime(fmt)


@functools.lru_cache(maxsize=1)
def _environment() -> _Env:
    env = _Env(trim_blocks=True, lstrip_blocks=True,
               extensions=[jinja2.ext.loopcontrols, _GenerationTag])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env


@functools.lru_cache(maxsize=32)
def compile_template(source: str) -> jinja2.Template:
    """Compile (and cache) a chat template; syntax errors are TemplateError naming the line."""
    if len(source) > MAX_TEMPLATE_CHARS:
        raise TemplateError(
            f"chat template is too long ({len(source)} characters; limit {MAX_TEMPLATE_CHARS})")
    try:
        return _environment().from_string(source)
    except jinja2.TemplateSyntaxError as e:
        raise TemplateError(f"chat template syntax error at line {e.lineno}: {e.message}") from None


def render(source: str, variables: dict[str, Any]) -> str:
    """Render a Jinja chat template with `variables`; every failure is a TemplateError."""
    tmpl = compile_template(source)
    # a template may copy its input a few times over, never grow it without bound
    guard = _Guard(TIME_LIMIT_S, max(MAX_VALUE_CHARS, 4 * _input_size(variables)))
    previous = sys.gettrace()
    out: list[str] = []
    total = 0
    sys.settrace(guard.global_trace)
    try:
        chunks: Iterator[str] = tmpl.generate(**variables)
        for chunk in chunks:
            total += len(chunk)
            if total > MAX_OUTPUT_CHARS:
                raise TemplateError(f"chat template output exceeds {MAX_OUTPUT_CHARS} characters")
            out.append(chunk)
            guard.check()
    except TemplateError:
        raise
    except jinja2.exceptions.SecurityError as e:
        raise TemplateError(f"chat template tried an unsafe operation: {e}") from None
    except RecursionError:
        raise TemplateError("chat template recursion is too deep") from None
    except (jinja2.TemplateError, ArithmeticError, TypeError, ValueError, KeyError, IndexError,
            AttributeError, MemoryError) as e:
        raise TemplateError(f"chat template failed to render: {type(e).__name__}: {e}") from None
    finally:
        sys.settrace(previous)
    return "".join(out)


_SYS_NEEDLE = "<<corral-system-needle>>"


@functools.lru_cache(maxsize=32)
def supports_system_role(source: str) -> bool:
    """Whether a template renders a system message (many raise or silently drop it)."""
    probe = [{"role": "system", "content": _SYS_NEEDLE}, {"role": "user", "content": "hi"}]
    try:
        out = render(source, {"messages": probe, "add_generation_prompt": False, "bos_token": "",
                              "eos_token": ""})
    except TemplateError:
        return False
    return _SYS_NEEDLE in out


def render_chat(source: str, messages: list[dict[str, Any]], variables: dict[str, Any]) -> str:
    """Render a conversation; for a template without a system role, system text joins the first user turn.

    compat(llama.cpp): the same polyfill as its chat-template runtime (system, "\\n", user text).
    """
    if any(m.get("role") == "system" for m in messages) and not supports_system_role(source):
        merged: list[dict[str, Any]] = []
        pending = ""
        for m in messages:
            if m.get("role") == "system":
                pending = f"{pending}\n{m.get('content', '')}" if pending else str(m.get("content", ""))
                continue
            if pending and m.get("role") == "user":
                content = str(m.get("content", ""))
                m = {**m, "content": pending + ("\n" + content if content else "")}
                pending = ""
            merged.append(m)
        if pending:
            merged.append({"role": "user", "content": pending})
        messages = merged
    return render(source, {**variables, "messages": messages})
