"""Families that frame JSON tool calls with special tokens: DeepSeek R1/V3.1 and Kimi K2."""

from __future__ import annotations

import re

from corral.conversation import ToolCall
from corral.prompts.formats.base import CallMaker, json_object
from corral.prompts.formats.sections import Layout, closed_by

# ---- DeepSeek: <｜tool▁calls▁begin｜>CALL...<｜tool▁calls▁end｜>, each CALL
#   V3.1: <｜tool▁call▁begin｜>NAME<｜tool▁sep｜>{JSON}<｜tool▁call▁end｜>
#   R1:   <｜tool▁call▁begin｜>function<｜tool▁sep｜>NAME\n```json\n{JSON}\n```<｜tool▁call▁end｜>
DS_CALLS_BEGIN, DS_CALLS_END = "<｜tool▁calls▁begin｜>", "<｜tool▁calls▁end｜>"
DS_CALL_BEGIN = "<｜tool▁call▁begin｜>"
_DS_CALL = re.compile(r"<｜tool▁call▁begin｜>(.*?)<｜tool▁sep｜>(.*?)(?:<｜tool▁call▁end｜>|\Z)", re.S)
_FENCE = re.compile(r"\A\s*```(?:json)?\s*(.*?)\s*(?:```\s*)?\Z", re.S)


def _deepseek_decode(opener: str, block: str, calls: CallMaker) -> list[ToolCall] | None:
    if opener == DS_CALL_BEGIN:
        block = opener + block
    found: list[ToolCall] = []
    for m in _DS_CALL.finditer(block):
        left, right = m.group(1).strip(), m.group(2)
        if "```" in right:  # R1: the call's type, then the name on its own line, then fenced JSON
            name, _, rest = right.partition("\n")
            fenced = _FENCE.match(rest)
            body = fenced.group(1) if fenced else rest
        else:
            name, body = left, right
        name = name.strip()
        args = json_object(body.strip())
        if args is None or not calls.known(name):
            return None
        found.append(calls.make(name, args))
    return found or None


DEEPSEEK = Layout("deepseek", think=("<think>", "</think>"), think_ends=(DS_CALLS_BEGIN,),
                  openers=lambda tools: (DS_CALLS_BEGIN, DS_CALL_BEGIN),
                  scan=closed_by(DS_CALLS_END, _deepseek_decode))

# ---- Kimi K2:
#   <|tool_calls_section_begin|><|tool_call_begin|>functions.NAME:IDX<|tool_call_argument_begin|>{JSON}
#   <|tool_call_end|>...<|tool_calls_section_end|>
KIMI_SECTION_BEGIN, KIMI_SECTION_END = "<|tool_calls_section_begin|>", "<|tool_calls_section_end|>"
KIMI_CALL_BEGIN = "<|tool_call_begin|>"
_KIMI_CALL = re.compile(
    r"<\|tool_call_begin\|>(.*?)<\|tool_call_argument_begin\|>(.*?)(?:<\|tool_call_end\|>|\Z)", re.S)
_KIMI_ID = re.compile(r"(?:functions\.)?(.+?)(?::\d+)?")


def _kimi_decode(opener: str, block: str, calls: CallMaker) -> list[ToolCall] | None:
    if opener == KIMI_CALL_BEGIN:
        block = opener + block
    found: list[ToolCall] = []
    for m in _KIMI_CALL.finditer(block):
        call_id = m.group(1).strip()
        ident = _KIMI_ID.fullmatch(call_id)
        name = ident.group(1) if ident else ""
        args = json_object(m.group(2).strip())
        if args is None or not calls.known(name):
            return None
        # the model's own id (functions.NAME:IDX) is what its template expects back in the history
        found.append(calls.make(name, args, call_id=call_id))
    return found or None


KIMI_K2 = Layout("kimi-k2", think=("<think>", "</think>"), think_ends=(KIMI_SECTION_BEGIN, KIMI_CALL_BEGIN),
                 openers=lambda tools: (KIMI_SECTION_BEGIN, KIMI_CALL_BEGIN),
                 scan=closed_by(KIMI_SECTION_END, _kimi_decode))
