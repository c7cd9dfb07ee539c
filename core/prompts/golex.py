"""Lexer for the Go text/template subset that Ollama's Modelfile TEMPLATEs use: text and `{{ }}`
actions (trim markers applied, comments dropped), each action split into tokens."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from corral.errors import TemplateError

__all__ = ["Item", "Token", "find_close", "lex_action", "parse_number", "split_actions", "unquote"]

Token = tuple[str, Any, int]  # (kind, value, line) from the action lexer


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


def unquote(s: str, line: int) -> str:
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


def lex_action(src: str, line: int) -> list[Token]:
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
            toks.append(("lit", unquote(text, line), line))
        elif kind == "raw":
            toks.append(("lit", text[1:-1], line))
            line += text.count("\n")
        elif kind == "char":
            toks.append(("lit", ord(unquote('"' + text[1:-1] + '"', line)), line))
        elif kind == "num":
            toks.append(("lit", parse_number(text, line), line))
        elif kind == "ident" and text in ("true", "false"):
            toks.append(("lit", text == "true", line))
        elif kind == "ident" and text == "nil":
            toks.append(("nil", None, line))
        else:
            toks.append((kind, text, line))
        pos = m.end()
    return toks


def parse_number(text: str, line: int) -> int | float:
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
class Item:
    kind: str  # text | action
    value: Any  # str for text, token list for action
    line: int
    raw: str = ""


def split_actions(src: str) -> list[Item]:
    """Text and `{{ }}` actions, with trim markers applied and comments dropped."""
    items: list[Item] = []
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
            items.append(Item("text", text, line))
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
        end = find_close(src, body_start, line)
        inner = src[body_start:end]
        trim_next = inner.endswith((" -", "\t-", "\n-", "\r-"))
        if trim_next:
            inner = inner[:-1]
        items.append(Item("action", lex_action(inner, line), line, inner.strip()))
        close_len = 2
        line += src.count("\n", start, end + close_len)
        pos = end + close_len
    return items


def find_close(src: str, pos: int, line: int) -> int:
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
