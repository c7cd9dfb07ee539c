"""GBNF for tests: parse a grammar, sample a string it accepts (the fake backend honours `format`),
and tell whether a text is in its language."""

from __future__ import annotations

import json
import random
import re
import sys
from typing import Any

from corral.errors import GrammarError

__all__ = ["constrain_calls", "matches", "parse_gbnf", "sample_grammar"]

# Grammar tree nodes, as tuples to stay small: ("lit", str) ("cls", ranges, negated) ("any",)
# ("ref", name) ("seq", [nodes]) ("alt", [nodes]) ("rep", node, lo, hi_or_None)
Node = tuple[Any, ...]
Rules = dict[str, Node]
_NAME = r"[a-zA-Z0-9_-]+"
_RULE_START = re.compile(rf"^[ \t]*({_NAME})[ \t]*::=", re.MULTILINE)
_NICE = "abcdefghijklmnopqrstuvwxyz0123456789 "
_MAX_OUTPUT = 400  # past this many characters every choice takes the shortest way out
_MAX_DEPTH = 24


def _strip_comments(text: str) -> str:
    out, i, n = [], 0, len(text)
    quote: str | None = None
    while i < n:
        c = text[i]
        if quote:
            out.append(c)
            if c == "\\" and i + 1 < n:
                out.append(text[i + 1])
                i += 1
            elif c == quote:
                quote = None
        elif c in "\"[":
            quote = '"' if c == '"' else "]"
            out.append(c)
        elif c == "#":
            while i < n and text[i] != "\n":
                i += 1
            continue
        else:
            out.append(c)
        i += 1
    return "".join(out)


class _Parser:
    def __init__(self, text: str) -> None:
        self.s, self.i = text, 0

    def error(self, what: str) -> GrammarError:
        return GrammarError(f"grammar does not parse: {what} at {self.s[self.i:self.i + 20]!r}")

    def ws(self) -> None:
        while self.i < len(self.s) and self.s[self.i] in " \t\r\n":
            self.i += 1

    def alternates(self) -> Node:
        alts = [self.sequence()]
        while self.i < len(self.s) and self.s[self.i] == "|":
            self.i += 1
            alts.append(self.sequence())
        return alts[0] if len(alts) == 1 else ("alt", alts)

    def sequence(self) -> Node:
        items: list[Node] = []
        while True:
            self.ws()
            if self.i >= len(self.s) or self.s[self.i] in "|)":
                break
            items.append(self.postfix(self.atom()))
        return items[0] if len(items) == 1 else ("seq", items)

    def postfix(self, node: Node) -> Node:
        while self.i < len(self.s):
            c = self.s[self.i]
            if c in "*+?":
                self.i += 1
                node = ("rep", node, 0 if c != "+" else 1, 1 if c == "?" else None)
            elif c == "{":
                m = re.compile(r"\{\s*(\d+)\s*(,\s*(\d*)\s*)?\}").match(self.s, self.i)
                if not m:
                    raise self.error("bad repetition")
                lo = int(m.group(1))
                hi = lo if m.group(2) is None else (int(m.group(3)) if m.group(3) else None)
                node = ("rep", node, lo, hi)
                self.i = m.end()
            else:
                break
        return node

    def char(self, end: str) -> str:
        c = self.s[self.i]
        if c != "\\":
            self.i += 1
            return c
        esc = self.s[self.i + 1 : self.i + 2]
        simple = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", '"': '"', "[": "[", "]": "]", "-": "-",
                  "^": "^", "/": "/"}
        if esc in simple:
            self.i += 2
            return simple[esc]
        width = {"x": 2, "u": 4, "U": 8}.get(esc)
        if width is None:
            raise self.error("bad escape")
        digits = self.s[self.i + 2 : self.i + 2 + width]
        if len(digits) != width or not all(d in "0123456789abcdefABCDEF" for d in digits):
            raise self.error("bad escape")
        self.i += 2 + width
        return chr(int(digits, 16))

    def atom(self) -> Node:
        s = self.s
        c = s[self.i]
        if c == '"':
            self.i += 1
            chars = []
            while self.i < len(s) and s[self.i] != '"':
                chars.append(self.char('"'))
            if self.i >= len(s):
                raise self.error("unterminated string")
            self.i += 1
            return ("lit", "".join(chars))
        if c == "[":
            self.i += 1
            negated = s[self.i : self.i + 1] == "^"
            self.i += negated
            ranges = []
            while self.i < len(s) and s[self.i] != "]":
                lo = self.char("]")
                hi = lo
                if s[self.i : self.i + 1] == "-" and s[self.i + 1 : self.i + 2] not in ("]", ""):
                    self.i += 1
                    hi = self.char("]")
                ranges.append((ord(lo), ord(hi)))
            if self.i >= len(s):
                raise self.error("unterminated character class")
            self.i += 1
            return ("cls", ranges, negated)
        if c == "(":
            self.i += 1
            node = self.alternates()
            self.ws()
            if s[self.i : self.i + 1] != ")":
                raise self.error("missing )")
            self.i += 1
            return node
        if c == ".":
            self.i += 1
            return ("any",)
        m = re.compile(_NAME).match(s, self.i)
        if not m:
            raise self.error("unexpected character")
        self.i = m.end()
        return ("ref", m.group())


def parse_gbnf(text: str) -> Rules:
    """Parse GBNF into rule trees; raises GrammarError for syntax errors and undefined rules."""
    text = _strip_comments(text)
    starts = list(_RULE_START.finditer(text))
    if not starts or text[: starts[0].start()].strip():
        raise GrammarError("grammar does not parse: expected 'name ::= ...'")
    rules: Rules = {}
    for m, nxt in zip(starts, [*starts[1:], None], strict=True):
        body = text[m.end() : nxt.start() if nxt else len(text)]
        p = _Parser(body)
        node = p.alternates()
        p.ws()
        if p.i != len(body):
            raise p.error("unexpected text")
        rules[m.group(1)] = node
    for name in _refs(rules):
        if name not in rules:
            raise GrammarError(f"grammar uses undefined rule {name!r}")
    if "root" not in rules:
        raise GrammarError('grammar has no "root" rule')
    return rules


def _refs(rules: Rules) -> set[str]:
    found: set[str] = set()

    def walk(n: Node) -> None:
        if n[0] == "ref":
            found.add(n[1])
        elif n[0] in ("seq", "alt"):
            for c in n[1]:
                walk(c)
        elif n[0] == "rep":
            walk(n[1])

    for node in rules.values():
        walk(node)
    return found


def _node_cost(n: Node, cost: dict[str, float]) -> float:
    """Shortest expansion length of node ``n``, given each rule's in ``cost``."""
    kind = n[0]
    if kind == "lit":
        return len(n[1])
    if kind in ("cls", "any"):
        return 1
    if kind == "ref":
        return cost[n[1]]
    if kind == "seq":
        return sum(_node_cost(x, cost) for x in n[1])
    if kind == "alt":
        return min(_node_cost(x, cost) for x in n[1])
    return 0 if n[2] == 0 else n[2] * _node_cost(n[1], cost)


def _costs(rules: Rules) -> dict[str, float]:
    """Shortest expansion length of each rule (a fixpoint; inf where a rule never terminates)."""
    cost = dict.fromkeys(rules, float("inf"))
    changed = True
    while changed:
        changed = False
        for name, node in rules.items():
            v = _node_cost(node, cost)
            if v < cost[name]:
                cost[name], changed = v, True
    return cost


class _Sampler:
    def __init__(self, rules: Rules, rng: random.Random) -> None:
        self.rules, self.rng = rules, rng
        self.out: list[str] = []
        self.cost = _costs(rules)
        self.length = 0

    def node_cost(self, n: Node) -> float:
        return _node_cost(n, self.cost)

    def emit(self, text: str) -> None:
        self.out.append(text)
        self.length += len(text)

    def gen(self, n: Node, depth: int) -> None:
        short = depth > _MAX_DEPTH or self.length > _MAX_OUTPUT
        kind = n[0]
        if kind == "lit":
            self.emit(n[1])
        elif kind == "cls":
            self.emit(self.pick_char(n[1], n[2]))
        elif kind == "any":
            self.emit(self.rng.choice(_NICE[:26]))
        elif kind == "ref":
            self.gen(self.rules[n[1]], depth + 1)
        elif kind == "seq":
            for x in n[1]:
                self.gen(x, depth)
        elif kind == "alt":
            finite = [x for x in n[1] if self.node_cost(x) != float("inf")]
            if short:
                choice = min(finite, key=self.node_cost)
            else:
                choice = self.rng.choice(finite)
            self.gen(choice, depth + 1)
        else:
            _, child, lo, hi = n
            extra = 0 if short or self.node_cost(child) == float("inf") else self.rng.randrange(3)
            count = lo + extra if hi is None else min(hi, lo + extra)
            for _ in range(count):
                self.gen(child, depth + 1)

    def pick_char(self, ranges: list[tuple[int, int]], negated: bool) -> str:
        def inside(ch: str) -> bool:
            return any(lo <= ord(ch) <= hi for lo, hi in ranges) != negated

        nice = [ch for ch in _NICE if inside(ch)]
        if nice:
            return self.rng.choice(nice)
        if negated:
            for code in range(33, 0x3000):
                if inside(chr(code)):
                    return chr(code)
            raise GrammarError("a character class excludes every character")
        lo, hi = self.rng.choice(ranges)
        return chr(self.rng.randint(lo, hi)) if lo <= hi else chr(lo)


def sample_grammar(grammar: str, *, seed: int = 0, start: str = "root") -> str:
    """A string the grammar accepts, chosen pseudo-randomly from ``seed`` (same seed, same string)."""
    rules = parse_gbnf(grammar)
    sampler = _Sampler(rules, random.Random(seed))
    if sampler.cost.get(start, float("inf")) == float("inf"):
        raise GrammarError(f"grammar rule {start!r} can never finish")
    sampler.gen(rules[start], 0)
    return "".join(sampler.out)



def matches(grammar: str | Rules, text: str, *, start: str = "root") -> bool:
    """Whether the whole of ``text`` is in the language of ``grammar`` (GBNF text or `parse_gbnf` rules)."""
    rules = parse_gbnf(grammar) if isinstance(grammar, str) else grammar
    memo: dict[tuple[int, int], frozenset[int]] = {}  # (id(node), start) -> end positions

    def ends(n: Node, pos: int) -> frozenset[int]:
        key = (id(n), pos)
        if key in memo:
            return memo[key]
        kind = n[0]
        if kind == "lit":
            found = frozenset([pos + len(n[1])]) if text.startswith(n[1], pos) else frozenset()
        elif kind in ("cls", "any"):
            inside = pos < len(text) and (kind == "any" or
                                          any(lo <= ord(text[pos]) <= hi for lo, hi in n[1]) != n[2])
            found = frozenset([pos + 1]) if inside else frozenset()
        elif kind == "ref":
            found = ends(rules[n[1]], pos)
        elif kind == "seq":
            found = frozenset([pos])
            for x in n[1]:
                found = frozenset(q for p in found for q in ends(x, p))
                if not found:
                    break
        elif kind == "alt":
            found = frozenset(q for x in n[1] for q in ends(x, pos))
        else:  # ("rep", child, lo, hi): breadth-first over repetition counts
            _, child, lo, hi = n
            result: set[int] = set()
            cur, count = frozenset([pos]), 0
            while cur:
                if count >= lo:
                    result |= cur
                if hi is not None and count >= hi:
                    break
                # past the minimum, an empty repetition adds nothing (and would never end)
                step = frozenset(q for p in cur for q in ends(child, p) if count < lo or q != p)
                cur = step - result if count >= lo else step
                count += 1
            found = frozenset(result)
        memo[key] = found
        return found

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 20000))  # nested rules recurse once per level
    try:
        return len(text) in ends(rules[start], 0)
    finally:
        sys.setrecursionlimit(limit)


def constrain_calls(text: str, opener: str, closer: str, grammar: str, *, seed: int = 0) -> str:
    """``text`` under a lazy tool-call constraint (``JsonConstraint.lazy``), as the fake backend
    honours it: free text stays; after each ``opener`` (outside none: the fake model does not reason),
    the call up to its ``closer`` or its JSON's end is kept when ``grammar`` accepts it and replaced by
    a sample of ``grammar`` when not. No opener: a "{" that starts the text opens the only call."""
    rules = parse_gbnf(grammar)
    out, pos, n = [], 0, 0
    while True:
        if opener:
            at = text.find(opener, pos)
            if at < 0:
                break
            start = at + len(opener)
        else:
            start = len(text) - len(text.lstrip())
            if pos or not text[start:].startswith("{"):
                break
        end = _call_end(text, start, closer)
        call = text[start:end]
        if not matches(rules, call):
            call = sample_grammar(grammar, seed=seed + n)
        out.append(text[pos:start] + call)
        pos, n = end, n + 1
        if not opener:
            break
    return "".join(out) + text[pos:]


def _call_end(text: str, start: int, closer: str) -> int:
    """Where a call that starts at ``start`` ends: after its closer, else after its JSON value (the
    text's end where neither is found)."""
    if closer:
        at = text.find(closer, start)
        return len(text) if at < 0 else at + len(closer)
    body = text[start:].lstrip()
    try:
        _, used = json.JSONDecoder().raw_decode(body)
    except ValueError:
        return len(text)
    return len(text) - len(body) + used
