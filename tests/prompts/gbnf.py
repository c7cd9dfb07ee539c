"""A GBNF recognizer for tests: parses llama.cpp grammar syntax, tells whether a text is in the language."""

from __future__ import annotations

import functools
import re
import sys
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Lit:
    text: str


@dataclass(frozen=True)
class Cls:
    ranges: tuple[tuple[str, str], ...]
    negated: bool

    def matches(self, c: str) -> bool:
        inside = any(a <= c <= b for a, b in self.ranges)
        return inside != self.negated


@dataclass(frozen=True)
class Ref:
    name: str


@dataclass(frozen=True)
class Seq:
    items: tuple[Any, ...]


@dataclass(frozen=True)
class Alt:
    options: tuple[Any, ...]


@dataclass(frozen=True)
class Rep:
    item: Any
    lo: int
    hi: int | None


_ESC = {"n": "\n", "r": "\r", "t": "\t", "\\": "\\", '"': '"', "[": "[", "]": "]", "-": "-", "^": "^"}


def _char(s: str, i: int) -> tuple[str, int]:
    if s[i] != "\\":
        return s[i], i + 1
    e = s[i + 1]
    if e in "xuU":
        w = {"x": 2, "u": 4, "U": 8}[e]
        return chr(int(s[i + 2 : i + 2 + w], 16)), i + 2 + w
    return _ESC[e], i + 2


class GrammarSyntaxError(ValueError):
    pass


def parse(text: str) -> dict[str, Any]:
    """Rules of a grammar (rule name -> expression); raises GrammarSyntaxError like llama.cpp would."""
    rules: dict[str, Any] = {}
    # join continuation lines: a rule starts at `name ::=`
    chunks = re.split(r"^(?=[a-zA-Z0-9-]+\s*::=)", text, flags=re.M)
    for chunk in chunks:
        chunk = re.sub(r"#[^\n]*", "", chunk) if '"#' not in chunk and "[#" not in chunk else chunk
        if not chunk.strip():
            continue
        m = re.match(r"([a-zA-Z0-9-]+)\s*::=", chunk)
        if not m:
            raise GrammarSyntaxError(f"expected rule at {chunk[:40]!r}")
        expr, pos = _parse_alt(chunk, m.end())
        if chunk[pos:].strip():
            raise GrammarSyntaxError(f"trailing text in rule {m.group(1)}: {chunk[pos:pos + 40]!r}")
        if m.group(1) in rules:
            raise GrammarSyntaxError(f"duplicate rule {m.group(1)}")
        rules[m.group(1)] = expr
    for name, expr in rules.items():
        for ref in _refs(expr):
            if ref not in rules:
                raise GrammarSyntaxError(f"rule {name} refers to undefined rule {ref}")
    if "root" not in rules:
        raise GrammarSyntaxError("no root rule")
    return rules


def _refs(e: Any) -> list[str]:
    if isinstance(e, Ref):
        return [e.name]
    if isinstance(e, (Seq, Alt)):
        return [r for x in (e.items if isinstance(e, Seq) else e.options) for r in _refs(x)]
    if isinstance(e, Rep):
        return _refs(e.item)
    return []


def _skip(s: str, i: int) -> int:
    while i < len(s) and s[i] in " \t\n\r":
        i += 1
    return i


def _parse_alt(s: str, i: int) -> tuple[Any, int]:
    options = []
    seq, i = _parse_seq(s, i)
    options.append(seq)
    while True:
        j = _skip(s, i)
        if j < len(s) and s[j] == "|":
            seq, i = _parse_seq(s, j + 1)
            options.append(seq)
        else:
            return (options[0] if len(options) == 1 else Alt(tuple(options))), i


def _parse_seq(s: str, i: int) -> tuple[Any, int]:
    items = []
    while True:
        i = _skip(s, i)
        if i >= len(s) or s[i] in "|)":
            break
        c = s[i]
        if c == '"':
            j = i + 1
            out = []
            while s[j] != '"':
                ch, j = _char(s, j)
                out.append(ch)
            item: Any = Lit("".join(out))
            i = j + 1
        elif c == "[":
            j = i + 1
            neg = s[j] == "^"
            j += neg
            ranges = []
            while s[j] != "]":
                a, j = _char(s, j)
                b = a
                if s[j] == "-" and s[j + 1] != "]":
                    b, j = _char(s, j + 1)
                ranges.append((a, b))
            item = Cls(tuple(ranges), neg)
            i = j + 1
        elif c == "(":
            item, i = _parse_alt(s, i + 1)
            i = _skip(s, i)
            if i >= len(s) or s[i] != ")":
                raise GrammarSyntaxError("expected )")
            i += 1
        elif re.match(r"[a-zA-Z0-9-]", c):
            m = re.match(r"[a-zA-Z0-9-]+", s[i:])
            assert m
            if re.match(r"\s*::=", s[i + m.end():]):
                break  # the next rule starts
            item = Ref(m.group())
            i += m.end()
        else:
            raise GrammarSyntaxError(f"unexpected {c!r} at {s[i:i + 30]!r}")
        # postfix operators
        while i < len(s) and s[i] in "*+?{":
            if s[i] == "*":
                item, i = Rep(item, 0, None), i + 1
            elif s[i] == "+":
                item, i = Rep(item, 1, None), i + 1
            elif s[i] == "?":
                item, i = Rep(item, 0, 1), i + 1
            else:
                m = re.match(r"\{(\d+)(,(\d*))?\}", s[i:])
                if not m:
                    raise GrammarSyntaxError(f"bad repetition at {s[i:i + 20]!r}")
                lo = int(m.group(1))
                hi = lo if m.group(2) is None else (int(m.group(3)) if m.group(3) else None)
                item, i = Rep(item, lo, hi), i + m.end()
        items.append(item)
    return (items[0] if len(items) == 1 else Seq(tuple(items))), i


# ---- matching -------------------------------------------------------------------------------------
def matches(rules: dict[str, Any], text: str) -> bool:
    """Whether the whole of `text` is in the grammar's language (set-of-positions matcher)."""
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 20000))

    @functools.cache
    def ends(e: Any, pos: int) -> frozenset[int]:
        if isinstance(e, Lit):
            return frozenset([pos + len(e.text)]) if text.startswith(e.text, pos) else frozenset()
        if isinstance(e, Cls):
            return frozenset([pos + 1]) if pos < len(text) and e.matches(text[pos]) else frozenset()
        if isinstance(e, Ref):
            return ends(rules[e.name], pos)
        if isinstance(e, Seq):
            cur = frozenset([pos])
            for x in e.items:
                cur = frozenset(q for p in cur for q in ends(x, p))
                if not cur:
                    break
            return cur
        if isinstance(e, Alt):
            return frozenset(q for o in e.options for q in ends(o, pos))
        if isinstance(e, Rep):
            result: set[int] = set()
            cur = frozenset([pos])
            n = 0
            while cur:
                if n >= e.lo:
                    result |= cur
                if e.hi is not None and n >= e.hi:
                    break
                nxt = frozenset(q for p in cur for q in ends(e.item, p) if q != p)
                cur = nxt - (result if n >= e.lo else frozenset())
                n += 1
            return frozenset(result)
        raise TypeError(e)

    return len(text) in ends(rules["root"], 0)
