"""Families whose tool calls name each argument in XML-like tags: Qwen3-Coder and GLM-4.5/4.6/4.7."""

from __future__ import annotations

import json
import re
from typing import Any

from corral.conversation import Tool, ToolCall
from corral.prompts.formats.base import CallMaker, typed_value
from corral.prompts.formats.sections import Layout, closed_by

THINK = ("<think>", "</think>")

# ---- Qwen3-Coder (also Qwen3.5 and Nemotron 3 Nano):
#   <tool_call>\n<function=NAME>\n<parameter=ARG>\nVALUE\n</parameter>\n...</function>\n</tool_call>
_FUNCTION = re.compile(r"<function=([^>\n]+)>")
_PARAMETER = re.compile(r"<parameter=([^>\n]+)>(.*?)</parameter>", re.S)


def _qwen_openers(tools: list[Tool]) -> tuple[str, ...]:
    # the model sometimes leaves out <tool_call> and starts at <function=NAME>: only a tool's full
    # name counts then, so that `#include <functional>` stays text
    return ("<tool_call>", *(f"<function={t.name}>" for t in tools))


def _qwen_decode(opener: str, block: str, calls: CallMaker) -> list[ToolCall] | None:
    if opener.startswith("<function="):
        block = opener + block
    found: list[ToolCall] = []
    heads = list(_FUNCTION.finditer(block))
    for n, head in enumerate(heads):
        name = head.group(1).strip()
        if not calls.known(name):
            return None
        body = block[head.end(): heads[n + 1].start() if n + 1 < len(heads) else len(block)]
        body = body.split("</function>", 1)[0]
        args: dict[str, Any] = {}
        for p in _PARAMETER.finditer(body):
            param = p.group(1).strip()
            raw = p.group(2)
            # compat(ollama): one newline after the opening tag and one before the closing tag are framing
            raw = raw[1:] if raw.startswith("\n") else raw
            raw = raw[:-1] if raw.endswith("\n") else raw
            args[param] = typed_value(raw, calls.param_types(name, param))
        found.append(calls.make(name, args))
    return found or None


QWEN3_CODER = Layout("qwen3-coder", think=THINK, think_ends=("<tool_call>",), openers=_qwen_openers,
                     scan=closed_by("</tool_call>", _qwen_decode))

# ---- GLM-4.5 / 4.6 / 4.7:
#   <tool_call>NAME\n<arg_key>ARG</arg_key>\n<arg_value>VALUE</arg_value>\n</tool_call>
_ARG = re.compile(r"<arg_key>(.*?)</arg_key>\s*<arg_value>(.*?)</arg_value>", re.S)


def _glm_value(raw: str, types: list[str]) -> Any:
    # the template writes strings as they are and every other value as JSON
    if types and all(t == "string" for t in types):
        return raw
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def _glm_decode(opener: str, block: str, calls: CallMaker) -> list[ToolCall] | None:
    cut = block.find("<arg_key>")
    name = (block if cut < 0 else block[:cut]).strip()
    if not calls.known(name):
        return None
    args = {m.group(1).strip(): _glm_value(m.group(2), calls.param_types(name, m.group(1).strip()))
            for m in _ARG.finditer(block, max(cut, 0))}
    return [calls.make(name, args)]


GLM = Layout("glm", think=THINK, think_ends=("<tool_call>",), openers=lambda tools: ("<tool_call>",),
             scan=closed_by("</tool_call>", _glm_decode))
