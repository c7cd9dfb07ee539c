"""A client's raw GBNF grammar, checked and bounded before llama.cpp's parser sees it.

llama.cpp's grammar parser is recursive (a grammar nested thousands of parentheses deep overflows the
runner's stack), expands every ``{m,n}`` into rules (a thousand of them in one grammar is gigabytes)
and quietly reads an upper bound over 2000 as "unbounded". So a request's ``grammar`` is scanned here
first, in linear time: its size, nesting, repetition counts and rules are bounded, the rules it
references must be defined and ``root`` must be one of them. The scan is lexical (strings, character
classes, token references and comments are skipped whole); llama.cpp's parser stays the judge of the
rest of the syntax, and its refusal is a 400 too (``corral_plugins._llama.sampling``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from corral.errors import GrammarError

__all__ = ["MAX_GRAMMAR_CHARS", "MAX_NESTING", "MAX_REPEAT", "MAX_REPEAT_TOTAL", "MAX_RULES", "GbnfInfo",
           "check_gbnf", "prefix_rules"]

MAX_GRAMMAR_CHARS = 256 << 10  # the same bound as a grammar made from a JSON schema
MAX_NESTING = 64  # parenthesised groups inside one another (each is a recursive call in llama.cpp)
MAX_RULES = 10_000
MAX_REPEAT = 2000  # llama.cpp's MAX_REPETITION_THRESHOLD: a larger count is refused or made unbounded
MAX_REPEAT_TOTAL = 1 << 16  # the sum of every {m,n} count: llama.cpp writes out that many rule copies


def _is_word(c: str) -> bool:
    # llama.cpp's is_word_char: ASCII letters, digits and '-' (no underscore)
    return c == "-" or ("a" <= c <= "z") or ("A" <= c <= "Z") or ("0" <= c <= "9")


@dataclass(frozen=True)
class GbnfInfo:
    """What the scan found: the rules a grammar defines and the ones it references."""

    defined: frozenset[str]
    referenced: frozenset[str]


class _Scanner:
    """One pass over the grammar; calls ``on_name(start, end, defines)`` for every rule name."""

    def __init__(self, text: str, on_name: Callable[[int, int, bool], None]) -> None:
        self.s, self.n, self.on_name = text, len(text), on_name

    def error(self, i: int, what: str) -> GrammarError:
        line = self.s.count("\n", 0, i) + 1
        return GrammarError(f"invalid grammar: {what} (line {line})")

    def skip_quoted(self, i: int, close: str, what: str) -> int:
        """The index after the ``close`` that ends a string or class opened just before ``i``."""
        s, n = self.s, self.n
        while i < n:
            c = s[i]
            if c == "\\":
                i += 2
                continue
            if c == close:
                return i + 1
            if close == '"' and c in "\r\n":
                break
            i += 1
        raise self.error(i, f"unterminated {what}")

    def repetition(self, i: int) -> tuple[int, int]:
        """``{m}``, ``{m,}`` or ``{m,n}`` starting at ``i`` (``{``): (index after it, its count)."""
        j = self.s.find("}", i)
        if j < 0 or j - i > 64:
            raise self.error(i, "unterminated repetition '{'")
        body = self.s[i + 1 : j].replace(" ", "").replace("\t", "")
        lo_text, comma, hi_text = body.partition(",")
        if not lo_text.isdigit() or (hi_text and not hi_text.isdigit()):
            raise self.error(i, f"bad repetition {{{body[:20]}}}")
        lo = int(lo_text)
        hi = int(hi_text) if hi_text else (lo if not comma else None)
        for value in (lo, hi):
            if value is not None and value > MAX_REPEAT:
                raise self.error(i, f"repetition count {value} exceeds {MAX_REPEAT}, llama.cpp's limit")
        if hi is not None and hi < lo:
            raise self.error(i, f"repetition {{{lo},{hi}}} has its maximum below its minimum")
        return j + 1, max(lo, hi or 0) + 1

    def run(self) -> int:
        s, n = self.s, self.n
        i, depth, total = 0, 0, 0
        while i < n:
            c = s[i]
            if c == "#":
                j = s.find("\n", i)
                i = n if j < 0 else j
            elif c == '"':
                i = self.skip_quoted(i + 1, '"', "string literal")
            elif c == "[":
                i = self.skip_quoted(i + 1, "]", "character class '['")
            elif c == "<":
                j = s.find(">", i)
                if j < 0 or j - i > 256:
                    raise self.error(i, "unterminated token reference '<'")
                i = j + 1
            elif c == "(":
                depth += 1
                if depth > MAX_NESTING:
                    raise self.error(i, f"groups nest deeper than {MAX_NESTING} levels")
                i += 1
            elif c == ")":
                depth -= 1
                if depth < 0:
                    raise self.error(i, "')' without a matching '('")
                i += 1
            elif c == "{":
                i, count = self.repetition(i)
                total += count
                if total > MAX_REPEAT_TOTAL:
                    raise self.error(i, f"its repetition counts add up to more than {MAX_REPEAT_TOTAL}")
            elif _is_word(c):
                j = i
                while j < n and _is_word(s[j]):
                    j += 1
                k = j
                while k < n and s[k] in " \t":
                    k += 1
                self.on_name(i, j, s.startswith("::=", k))
                i = j
            else:
                i += 1
        if depth:
            raise self.error(n, "'(' without a matching ')'")
        return total


def check_gbnf(text: str) -> GbnfInfo:
    """Check a client's grammar (see the module docstring); GrammarError (a 400) names what is wrong."""
    if not text.strip():
        raise GrammarError("invalid grammar: it is empty")
    if len(text) > MAX_GRAMMAR_CHARS:
        raise GrammarError(f"grammar is {len(text)} characters long; the limit is {MAX_GRAMMAR_CHARS}")
    if "\x00" in text:
        raise GrammarError("invalid grammar: it contains a NUL character")
    defined: set[str] = set()
    referenced: set[str] = set()

    def on_name(start: int, end: int, defines: bool) -> None:
        name = text[start:end]
        (defined if defines else referenced).add(name)
        if len(defined) > MAX_RULES:
            raise GrammarError(f"grammar defines more than {MAX_RULES} rules")

    _Scanner(text, on_name).run()
    if "root" not in defined:
        raise GrammarError("invalid grammar: it has no 'root' rule (generation starts from 'root ::= ...')")
    missing = sorted(referenced - defined)
    if missing:
        raise GrammarError(f"invalid grammar: rule {missing[0]!r} is used but never defined")
    return GbnfInfo(defined=frozenset(defined), referenced=frozenset(referenced))


def prefix_rules(text: str, prefix: str) -> str:
    """``text`` (already checked) with every rule name prefixed: it can then sit beside other rules, its
    start rule being ``prefix + "root"``."""
    out: list[str] = []
    last = 0

    def on_name(start: int, end: int, defines: bool) -> None:
        nonlocal last
        out.append(text[last:start])
        out.append(prefix)
        last = start

    _Scanner(text, on_name).run()
    out.append(text[last:])
    return "".join(out)
