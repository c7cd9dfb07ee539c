"""GGUF Jinja chat templates rendered in jinja2's sandbox with limits on time, size and recursion."""

from __future__ import annotations

import datetime as _dt
import functools
import json
import sys
from collections.abc import Iterator
from typing import Any

import jinja2
import jinja2.ext
import jinja2.sandbox
import jinja2.utils
from jinja2 import nodes

from corral.errors import TemplateError
from corral.prompts import jinja_bounds as bounds

MAX_TEMPLATE_CHARS = 1 << 20  # real chat templates are under 64 KiB
MAX_OUTPUT_CHARS = 8 << 20
TIME_LIMIT_S = bounds.TIME_LIMIT_S
_MAX_RANGE = 100_000  # items `range()` may produce (jinja's sandbox default)
_MAX_JSON_INDENT = 16
# filters that pass values through or pick from them: their input needs no printed-size estimate
_PICKING_FILTERS = frozenset({
    "length", "count", "first", "last", "map", "select", "reject", "selectattr", "rejectattr", "sort",
    "unique", "dictsort", "groupby", "items", "batch", "min", "max", "random", "default", "d", "attr",
    "abs", "int", "float", "round", "boolean", "reverse", "sum", "list", "slice",
})


class _GenerationTag(jinja2.ext.Extension):
    """`{% generation %}…{% endgeneration %}`: HF's assistant-mask marker; renders its body as is."""

    tags = {"generation"}

    def parse(self, parser: Any) -> Any:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return nodes.Scope(body, lineno=lineno)


class _InputList(list):  # type: ignore[type-arg]
    """A list handed to the template: read-only there, as every input is."""


def _as_input(v: Any, depth: int = 0) -> Any:
    if depth > 32:
        return v
    if isinstance(v, dict):
        return {k: _as_input(x, depth + 1) for k, x in v.items()}
    if isinstance(v, list):
        return _InputList(_as_input(x, depth + 1) for x in v)
    return v


class _Env(jinja2.sandbox.ImmutableSandboxedEnvironment):
    """The sandbox, plus size checks on everything that can multiply a value's size.

    Operators, `~` concatenation (the compiled template's join helpers), str methods, filters and
    printed expressions are checked before they run, from their operands' sizes, and their results
    counted after (corral.prompts.jinja_bounds).
    """

    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        bounds.check_binop(operator, left, right)
        return bounds.check_result(super().call_binop(context, operator, left, right))

    def is_safe_attribute(self, obj: Any, attr: str, value: Any) -> bool:
        # compat(llama.cpp): templates keep queues with list.append and pop (Kimi K2's does); only
        # on lists the template built itself (the input arrives as _InputList), bounded by `call`
        if type(obj) is list and attr in ("append", "pop"):
            return jinja2.sandbox.SandboxedEnvironment.is_safe_attribute(self, obj, attr, value)
        return bool(super().is_safe_attribute(obj, attr, value))

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
        target = getattr(__obj, "__self__", None)
        if isinstance(target, str):
            bounds.check_str_method(getattr(__obj, "__name__", ""), target, args + tuple(kwargs.values()))
        elif isinstance(target, list) and len(target) >= bounds.MAX_ITEMS:
            raise bounds.too_large()
        return bounds.check_result(super().call(__context, __obj, *args, **kwargs))

    def wrap_str_format(self, value: Any) -> Any:
        # the sandbox swaps `str.format` for its own formatter on attribute access: check that one too
        fmt = super().wrap_str_format(value)
        if fmt is None:
            return None
        target = value.__self__

        def checked(*args: Any, **kwargs: Any) -> str:
            bounds.check_format(target, args + tuple(kwargs.values()))
            return str(bounds.check_result(fmt(*args, **kwargs)))

        return checked


def _checked_filter(name: str, fn: Any) -> Any:
    skip = 1 if getattr(fn, "jinja_pass_arg", None) else 0  # context/environment comes first

    @functools.wraps(fn)
    def checked(*args: Any, **kwargs: Any) -> Any:
        if len(args) > skip:
            value, rest = args[skip], args[skip + 1:] + tuple(kwargs.values())
            if isinstance(value, str):
                bounds.check_str_method(name, value, rest)
            elif name not in _PICKING_FILTERS:  # the filter prints its input: estimate that first
                bounds.check_printable(value)
            if name == "join":
                args = (*args[:skip], bounds.check_join(value, rest[0] if rest else ""), *args[skip + 1:])
            elif name == "format":
                bounds.check_format(str(value), rest)
            elif name == "list":
                return bounds.check_result(bounds.bounded_list(value))
            elif name == "slice" and rest and isinstance(rest[0], int) and rest[0] > _MAX_RANGE:
                raise bounds.too_large()
            elif name == "sum":
                start = kwargs.get("start", args[skip + 2] if len(args) > skip + 2 else 0)
                if not isinstance(start, (int, float)):  # adding lists or strings is quadratic
                    raise TemplateError("chat template: sum adds numbers only")
        return bounds.check_result(fn(*args, **kwargs))

    return checked


def _finalize(value: Any) -> Any:
    """Every `{{ expression }}`: refuse, before printing, a value whose text is too large."""
    bounds.check_printable(value)
    return value


def _raise_exception(message: str) -> None:
    raise TemplateError(f"chat template error: {message}")


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None,
            separators: tuple[str, str] | None = None, sort_keys: bool = False) -> str:
    if isinstance(indent, int) and indent > _MAX_JSON_INDENT:
        raise TemplateError(f"chat template: tojson indent is limited to {_MAX_JSON_INDENT}")
    # compat(hf): transformers' tojson keeps Python's default ", " / ": " separators and no escaping
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                      sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return _dt.datetime.now().strftime(fmt[:256])


def _lipsum(n: int = 5, html: bool = True, min: int = 20, max: int = 100) -> str:  # noqa: A002
    if not all(isinstance(x, int) and 0 <= x <= 1000 for x in (n, min, max)):
        raise TemplateError("chat template: lipsum arguments are limited to 1000")
    return str(jinja2.utils.generate_lorem_ipsum(n=n, html=html, min=min, max=max))


@functools.lru_cache(maxsize=1)
def _environment() -> _Env:
    env = _Env(trim_blocks=True, lstrip_blocks=True, finalize=_finalize,
               extensions=[jinja2.ext.loopcontrols, _GenerationTag])
    env.filters["tojson"] = _tojson
    # compiled templates call filters straight from this table, so the size checks wrap each one
    env.filters = {name: _checked_filter(name, fn) for name, fn in env.filters.items()}
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.globals["lipsum"] = _lipsum
    return env


def _checked_concat(join: Any) -> Any:
    def checked(seq: Any) -> Any:
        return bounds.check_result(join(bounds.check_join(seq)))

    return checked


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
    except (RecursionError, SyntaxError, MemoryError):  # Python's own limits on nesting
        raise TemplateError("chat template nests too deeply") from None
    # `~` compiles to calls of these module-level helpers: swap in size-checked ones
    namespace = tmpl.root_render_func.__globals__
    for helper in ("str_join", "markup_join"):
        if helper in namespace:
            namespace[helper] = _checked_concat(namespace[helper])
    return tmpl


def render(source: str, variables: dict[str, Any]) -> str:
    """Render a Jinja chat template with `variables`; every failure is a TemplateError.

    Runs on the caller's thread (never call it on the event loop): time is bounded by a tracer on
    this thread, memory by the size checks, both per render.
    """
    tmpl = compile_template(source)
    budget = bounds.start(variables, TIME_LIMIT_S)
    guard = bounds.Guard(budget)
    previous = sys.gettrace()
    out: list[str] = []
    total = 0
    sys.settrace(guard.global_trace)
    try:
        chunks: Iterator[str] = tmpl.generate(**_as_input(variables))
        for chunk in chunks:
            total += len(chunk)
            if total > MAX_OUTPUT_CHARS:
                raise TemplateError(f"chat template output exceeds {MAX_OUTPUT_CHARS} characters")
            out.append(chunk)
            budget.check_time()
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
        bounds.finish()
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
