"""Bounds for one untrusted Jinja render: sizes checked before an operation runs, memory, time."""

from __future__ import annotations

import os
import re
import sys
import threading
import time
from collections.abc import Iterable
from typing import Any

from corral.errors import TemplateError

MAX_VALUE_CHARS = 4 << 20  # the largest string one operation inside a template may build
MAX_ITEMS = 1 << 18  # the longest list one operation may build (each item costs ~50 bytes or more)
MAX_INT_BITS = 1 << 16  # integers past ~20,000 digits are no part of any chat template
MEMORY_LIMIT = 128 << 20  # bytes a render may hold on top of its input
TIME_LIMIT_S = 2.0
YIELD_EVERY_S, YIELD_FOR_S = 0.005, 0.001
_LARGE = 64 << 10  # values at least this big are counted against the memory limit
_MAX_DEPTH = 64  # nesting walked when estimating a value's printed size


def _rss() -> int | None:
    """This process's resident memory in bytes (Linux), or None where /proc is missing."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


class Budget:
    """What one render may still spend. Limits scale with the input: a template may copy its input
    a few times over (real templates do), never grow it without bound."""

    def __init__(self, input_chars: int, input_items: int, seconds: float) -> None:
        self.value_limit = max(MAX_VALUE_CHARS, 4 * input_chars)
        self.item_limit = max(MAX_ITEMS, 4 * input_items)
        self.memory_limit = max(MEMORY_LIMIT, 16 * input_chars)
        self.deadline = time.monotonic() + seconds
        self.seconds = seconds
        self.ledger = 0  # bytes of large values built so far: an upper bound of what the render holds
        self.rss0 = _rss()
        self.yielded = time.monotonic()

    def charge(self, v: Any) -> None:
        """Count a value the template built; past the memory limit, measure what is really held."""
        size = sys.getsizeof(v) if isinstance(v, (str, bytes, list, tuple, dict)) else 0
        if size < _LARGE:
            return
        self.ledger += size
        if self.ledger <= self.memory_limit:
            return
        # Short-lived copies (a string rebuilt in a loop) inflate the ledger; the process's resident
        # memory says what is really held, so resync to it and refuse only real growth.
        rss = _rss()
        if rss is None or self.rss0 is None or rss - self.rss0 > self.memory_limit:
            raise TemplateError(f"chat template uses more than {self.memory_limit >> 20} MiB of memory")
        self.ledger = max(0, rss - self.rss0)

    def check_time(self) -> None:
        now = time.monotonic()
        if now > self.deadline:
            raise TemplateError(f"chat template took longer than {self.seconds:g} s to render")
        if now - self.yielded > YIELD_EVERY_S:
            # a long render gives the GIL and the CPU away briefly, so on a loaded machine the
            # event loop is never stuck behind it waiting for the OS to reschedule this thread
            time.sleep(YIELD_FOR_S)
            self.yielded = time.monotonic()


_current = threading.local()  # the running render's Budget (renders run on worker threads)


def budget() -> Budget:
    b = getattr(_current, "budget", None)
    if b is None:  # outside render(): a fresh default budget, so helpers never run unbounded
        b = Budget(0, 0, TIME_LIMIT_S)
    return b


def start(variables: dict[str, Any], seconds: float) -> Budget:
    chars, items = _input_size(variables)
    b = Budget(chars, items, seconds)
    _current.budget = b
    return b


def finish() -> None:
    _current.budget = None


def _input_size(v: Any, depth: int = 0) -> tuple[int, int]:
    if isinstance(v, str):
        return len(v), 0
    if depth > 20:
        return 0, 0
    if isinstance(v, dict):
        vals: Iterable[Any] = v.values()
    elif isinstance(v, (list, tuple)):
        vals = v
    else:
        return 0, 0
    chars, items = 0, len(v)
    for x in vals:
        c, i = _input_size(x, depth + 1)
        chars, items = chars + c, items + i
    return chars, items


def too_large() -> TemplateError:
    return TemplateError("chat template builds a value that is too large")


# ---- estimates, made before an operation runs ------------------------------------------------------
def printed_size(v: Any, limit: int) -> int:
    """About how many characters str()/json.dumps of ``v`` produce; stops counting past ``limit``.

    Shared references count each time they appear, as printing repeats them.
    """
    total = 0
    stack: list[tuple[Any, int]] = [(v, 0)]
    while stack:
        x, depth = stack.pop()
        if isinstance(x, str):
            total += len(x) + 2
        elif isinstance(x, bool) or x is None:
            total += 5
        elif isinstance(x, int):
            total += x.bit_length() * 3 // 10 + 2
        elif isinstance(x, (bytes, float)):
            total += len(x) * 4 + 3 if isinstance(x, bytes) else 24
        elif isinstance(x, (list, tuple, dict)):
            if depth > _MAX_DEPTH:
                raise TemplateError("chat template value nests too deeply")
            total += 2 + 2 * len(x)
            if isinstance(x, dict):
                stack.extend((k, depth + 1) for k in x)
                stack.extend((y, depth + 1) for y in x.values())
            else:
                stack.extend((y, depth + 1) for y in x)
        else:
            total += 64
        if total > limit:
            return total
    return total


def check_printable(v: Any) -> None:
    """Refuse, before printing it, a value whose text would be too large."""
    if not isinstance(v, str) and printed_size(v, budget().value_limit) > budget().value_limit:
        raise too_large()


def check_result(v: Any) -> Any:
    """After an operation: its result is within the size limits, and counted against memory."""
    b = budget()
    if isinstance(v, str) and len(v) > b.value_limit:
        raise too_large()
    if isinstance(v, (list, tuple, dict)) and len(v) > b.item_limit:
        raise too_large()
    b.charge(v)
    return v


def _size(v: Any) -> int:
    return len(v) if isinstance(v, (str, bytes, list, tuple)) else 0


def check_binop(operator: str, left: Any, right: Any) -> None:
    """Refuse `*`, `**`, `+` and `%` whose result would be too large, from the operands alone."""
    b = budget()
    if operator == "*":
        for a, n in ((left, right), (right, left)):
            if _size(a) and isinstance(n, int):
                limit = b.value_limit if isinstance(a, (str, bytes)) else b.item_limit
                if _size(a) * n > limit:
                    raise too_large()
        if _is_int(left) and _is_int(right) and left.bit_length() + right.bit_length() > MAX_INT_BITS:
            raise TemplateError("chat template computes a number that is too large")
    elif operator == "**":
        if _is_int(left) and _is_int(right) and abs(left) > 1 and right > 0 \
                and right * left.bit_length() > MAX_INT_BITS:
            raise TemplateError("chat template computes a number that is too large")
    elif operator == "+":
        if isinstance(left, str) and isinstance(right, str) and len(left) + len(right) > b.value_limit:
            raise too_large()
        if isinstance(left, (list, tuple)) and isinstance(right, (list, tuple)) \
                and len(left) + len(right) > b.item_limit:
            raise too_large()
    elif operator == "%" and isinstance(left, str):
        check_format(left, right)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


# %-style (`%-08.3f`, `%*d`) and str.format (`{0:>{1}}`, `{:.{p}f}`) widths and precisions
_PERCENT = re.compile(r"%(?:\([^)]*\))?[-+ #0]*(\d+|\*)?(?:\.(\d+|\*))?")
_BRACE_SPEC = re.compile(r"\{[^{}]*:([^{}]*)\}")
_NESTED = re.compile(r"\{[^{}]*:[^{}]*\{")


def check_format(fmt: str, args: Any) -> None:
    """Refuse a format string whose widths, precisions or arguments would print too much."""
    limit = budget().value_limit
    for m in _PERCENT.finditer(fmt):
        for n in m.groups():
            if n == "*":
                raise TemplateError("chat template formats with a width taken from its arguments")
            if n is not None and int(n) > limit:
                raise too_large()
    if _NESTED.search(fmt):
        raise TemplateError("chat template formats with a width taken from its arguments")
    for m in _BRACE_SPEC.finditer(fmt):
        for n in re.findall(r"\d+", m.group(1)):
            if int(n) > limit:
                raise too_large()
    if len(fmt) + printed_size(args, limit) > limit:
        raise too_large()


def check_str_method(name: str, target: str, args: tuple[Any, ...]) -> None:
    """Estimate, before running, what a size-changing str method (or filter of the same name) builds."""
    b = budget()
    limit = b.value_limit
    ints = [a for a in args if _is_int(a)]
    if name in ("center", "ljust", "rjust", "zfill", "truncate"):
        if any(n > limit for n in ints):
            raise too_large()
    elif name == "expandtabs":
        if ints and len(target) + target.count("\t") * ints[0] > limit:
            raise too_large()
    elif name == "indent":
        width = args[0] if args else 4
        pad = len(width) if isinstance(width, str) else width if _is_int(width) else 0
        if len(target) + (target.count("\n") + 1) * pad > limit:
            raise too_large()
    elif name == "wordwrap":
        if len(target) > b.item_limit:  # textwrap splits into one Python object per word
            raise too_large()
    elif name in ("format", "format_map"):
        check_format(target, args)
    elif name == "join":
        if args:
            check_join(args[0], target)
    elif name == "replace" and len(args) >= 2:
        old, new = str(args[0]), str(args[1])
        hits = len(target) + 1 if not old else target.count(old)
        if len(target) + hits * max(0, len(new) - len(old)) > limit:
            raise too_large()
    elif name in ("split", "rsplit", "splitlines"):
        sep = args[0] if args and isinstance(args[0], str) and name != "splitlines" else None
        pieces = target.count(sep) if sep else sum(target.count(c) for c in " \t\n\r\f\v")
        if pieces + 1 > b.item_limit:
            raise too_large()


def check_join(parts: Any, sep: Any = "") -> list[Any]:
    """The parts of a join, refused before joining when the result would be too large."""
    b = budget()
    items = []
    for p in parts:
        items.append(p)
        if len(items) > b.item_limit:
            raise too_large()
    size = len(str(sep)) * max(0, len(items) - 1) if isinstance(sep, str) else 0
    for p in items:
        size += len(p) if isinstance(p, str) else printed_size(p, b.value_limit)
        if size > b.value_limit:
            raise too_large()
    return items


def bounded_list(it: Iterable[Any]) -> list[Any]:
    """list(it), stopping as soon as it grows past the item limit."""
    limit = budget().item_limit
    out = []
    for x in it:
        out.append(x)
        if len(out) > limit:
            raise too_large()
    return out


class Guard:
    """Line tracer for template frames only: stops any loop after the time limit, however it is written.

    Frames of other code (jinja's runtime, filters) get one check per call, so a filter looping over
    calls is stopped too.
    """

    def __init__(self, b: Budget) -> None:
        self.budget = b
        self.count = 0

    def global_trace(self, frame: Any, event: str, arg: Any) -> Any:
        self.count += 1
        if frame.f_code.co_filename == "<template>":
            self.budget.check_time()
            return self.local_trace
        if self.count & 0x3F == 0:
            self.budget.check_time()
        return None

    def local_trace(self, frame: Any, event: str, arg: Any) -> Any:
        self.count += 1
        if self.count & 0x3F == 0:
            self.budget.check_time()
        return self.local_trace
