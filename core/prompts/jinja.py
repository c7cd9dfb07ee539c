"""GGUF Jinja chat templates rendered in jinja2's sandbox with limits on time, size and recursion."""

from __future__ import annotations

import datetime as _dt
import functools
import json
import re
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import jinja2
import jinja2.ext
import jinja2.sandbox
from jinja2 import nodes

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
    """Line tracer for template frames only: stops any loop after the time limit, however it is written."""

    def __init__(self, seconds: float) -> None:
        self.deadline = time.monotonic() + seconds
        self.count = 0

    def global_trace(self, frame: Any, event: str, arg: Any) -> Any:
        if frame.f_code.co_filename == "<template>":
            self.check()
            return self.local_trace
        return None

    def local_trace(self, frame: Any, event: str, arg: Any) -> Any:
        self.count += 1
        if self.count & 0x3F == 0:
            self.check()
        return self.local_trace

    def check(self) -> None:
        if time.monotonic() > self.deadline:
            raise TemplateError(f"chat template took longer than {TIME_LIMIT_S:g} s to render")


# The largest string or list the running render may build (per thread: renders run on worker threads).
_limit = threading.local()


def _max_value() -> int:
    return getattr(_limit, "value", MAX_VALUE_CHARS)


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


def _too_large() -> TemplateError:
    return TemplateError("chat template builds a value that is too large")


def _check(v: Any) -> Any:
    if _size(v) > _max_value():
        raise _too_large()
    return v


_WIDTH = re.compile(r"%[-+ #0]*(\d+)|\{[^{}]*:[^{}]*?(\d+)[^{}]*\}")


def _check_widths(fmt: Any) -> None:
    """Refuse %-format or str.format field widths that would allocate more than the limit."""
    if isinstance(fmt, str):
        for m in _WIDTH.finditer(fmt):
            if int(m.group(1) or m.group(2)) > _max_value():
                raise _too_large()


def _check_args(name: str, target: Any, args: tuple[Any, ...]) -> None:
    """Estimate, before running, what a size-multiplying string operation would build."""
    if name in ("center", "ljust", "rjust", "zfill", "expandtabs", "indent", "wordwrap", "truncate"):
        if any(isinstance(a, int) and a > _max_value() for a in args):
            raise _too_large()
    elif name in ("format", "format_map"):
        _check_widths(target)
    elif name == "replace" and isinstance(target, str) and len(args) >= 2:
        old, new = str(args[0]), str(args[1])
        hits = len(target) + 1 if not old else target.count(old)
        if len(target) + hits * max(0, len(new) - len(old)) > _max_value():
            raise _too_large()


def _checked_join(join: Any) -> Any:
    def checked(seq: Any) -> Any:
        parts = list(seq)
        if sum(len(str(p)) for p in parts) > _max_value():
            raise _too_large()
        return join(parts)

    return checked


class _Env(jinja2.sandbox.ImmutableSandboxedEnvironment):
    """The sandbox, plus size checks on everything that can multiply a value's size.

    Operators, `~` concatenation (the compiled template's join helpers), str methods and filters
    are checked before they run where the size is predictable, and their results after.
    """

    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "*":
            for a, b in ((left, right), (right, left)):
                if _size(a) and isinstance(b, int) and _size(a) * b > _max_value():
                    raise _too_large()
        elif operator == "**":
            if isinstance(left, int) and isinstance(right, int) and abs(left) > 1 and right > 256:
                raise TemplateError("chat template computes a number that is too large")
        elif operator == "%":
            _check_widths(left)
        return _check(super().call_binop(context, operator, left, right))

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
        target = getattr(__obj, "__self__", None)
        if isinstance(target, str):
            _check_args(getattr(__obj, "__name__", ""), target, args + tuple(kwargs.values()))
        return _check(super().call(__context, __obj, *args, **kwargs))



def _checked_filter(name: str, fn: Any) -> Any:
    skip = 1 if getattr(fn, "jinja_pass_arg", None) else 0  # context/environment comes first

    @functools.wraps(fn)
    def checked(*args: Any, **kwargs: Any) -> Any:
        if len(args) > skip:
            _check_args(name, args[skip], args[skip + 1:] + tuple(kwargs.values()))
        return _check(fn(*args, **kwargs))

    return checked


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
    # compiled templates call filters straight from this table, so the size checks wrap each one
    env.filters = {name: _checked_filter(name, fn) for name, fn in env.filters.items()}
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
        tmpl = _environment().from_string(source)
    except jinja2.TemplateSyntaxError as e:
        raise TemplateError(f"chat template syntax error at line {e.lineno}: {e.message}") from None
    # `~` compiles to calls of these module-level helpers: swap in size-checked ones
    namespace = tmpl.root_render_func.__globals__
    for helper in ("str_join", "markup_join"):
        if helper in namespace:
            namespace[helper] = _checked_join(namespace[helper])
    return tmpl


def render(source: str, variables: dict[str, Any]) -> str:
    """Render a Jinja chat template with `variables`; every failure is a TemplateError."""
    tmpl = compile_template(source)
    # a template may copy its input a few times over, never grow it without bound
    _limit.value = max(MAX_VALUE_CHARS, 4 * _input_size(variables))
    guard = _Guard(TIME_LIMIT_S)
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
