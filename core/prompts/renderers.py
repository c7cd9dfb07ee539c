"""Built-in prompt renderers (a Modelfile's RENDERER): a family's chat format written as code, like Ollama's.

Each renders exactly what the family's published Jinja chat template renders for the same
conversation (the golden tests compare the two), without running a template: Ollama ships such
models with a renderer name instead of a TEMPLATE. Names are Ollama's (model/renderers).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from corral.conversation import Message, Tool

Render = Callable[[list[Message], list[Tool], bool, str], str]


def _py_str(v: Any) -> str:
    """Jinja's `| string` of a JSON value, as the templates print it (Python's str: True, None)."""
    return str(v)


def _tojson(v: Any) -> str:
    """The templates' `tojson` (transformers' filter: Python's json.dumps defaults, no escaping)."""
    return json.dumps(v, ensure_ascii=False)


# ---- Qwen3-Coder (Qwen/Qwen3-Coder-*: chat_template.jinja) ----------------------------------------
_QWEN_DEFAULT_SYSTEM = ("You are Qwen, a helpful AI assistant that can interact with a computer to solve "
                        "tasks.")
_QWEN_TOOL_RULES = (
    "\n\nIf you choose to call a tool ONLY reply in the following format with NO suffix:\n\n<tool_call>\n"
    "<function=example_function_name>\n<parameter=example_parameter_1>\nvalue_1\n</parameter>\n"
    "<parameter=example_parameter_2>\nvalue_2\n</parameter>\n</function>\n</tool_call>\n\n<IMPORTANT>\n"
    "Reminder:\n- Function calls MUST follow the specified format: the tool calling block MUST begin with an "
    "opening <tool_call> tag and end with a closing </tool_call> tag.\n- Required parameters MUST be "
    "specified\n- You may provide optional reasoning for your function call in natural language BEFORE the "
    "function call, but NOT after\n- If there is no function call available, answer the question like normal "
    "with your current knowledge and do not tell the user about function calls\n</IMPORTANT>"
)


def _extra_keys(d: Any, handled: tuple[str, ...]) -> str:
    if not isinstance(d, dict):
        return ""
    out = []
    for key, value in d.items():
        if key in handled:
            continue
        text = _tojson(value) if isinstance(value, (dict, list)) else _py_str(value)
        out.append(f"\n<{key}>{text}</{key}>")
    return "".join(out)


def _qwen_tool(t: Tool) -> str:
    params = t.parameters or {"type": "object", "properties": {}}
    out = [f"\n<function>\n<name>{t.name}</name>", f"\n<description>{t.description.strip()}</description>",
           "\n<parameters>"]
    props = params.get("properties")
    if isinstance(props, dict):
        for name, fields in props.items():
            fields = fields if isinstance(fields, dict) else {}
            out.append(f"\n<parameter>\n<name>{name}</name>")
            if "type" in fields:
                out.append(f"\n<type>{_py_str(fields['type'])}</type>")
            if "description" in fields:
                out.append(f"\n<description>{str(fields['description']).strip()}</description>")
            out.append(_extra_keys(fields, ("name", "type", "description")) + "\n</parameter>")
    out.append(_extra_keys(params, ("type", "properties")) + "\n</parameters>\n</function>")
    return "".join(out)


def _qwen3_coder(messages: list[Message], tools: list[Tool], think: bool, bos: str) -> str:
    out: list[str] = []
    system = messages[0].content if messages and messages[0].role == "system" else None
    loop = messages[1:] if system is not None else messages
    if system is not None:
        out.append("<|im_start|>system\n" + system)
    elif tools:
        out.append("<|im_start|>system\n" + _QWEN_DEFAULT_SYSTEM)
    if tools:
        out.append("\n\n# Tools\n\nYou have access to the following tools:\n\n<tools>")
        out.extend(_qwen_tool(t) for t in tools)
        out.append("\n</tools>" + _QWEN_TOOL_RULES)
    if system is not None or tools:
        out.append("<|im_end|>\n")
    for i, m in enumerate(loop):
        prev = loop[i - 1] if i > 0 else None
        nxt = loop[i + 1] if i + 1 < len(loop) else None
        if m.role == "assistant" and m.tool_calls:
            out.append("<|im_start|>assistant")
            if m.content.strip():
                out.append("\n" + m.content.strip() + "\n")
            for call in m.tool_calls:
                out.append(f"\n<tool_call>\n<function={call.name}>\n")
                for name, value in call.arguments.items():
                    text = _tojson(value) if isinstance(value, (dict, list)) else _py_str(value)
                    out.append(f"<parameter={name}>\n{text}\n</parameter>\n")
                out.append("</function>\n</tool_call>")
            out.append("<|im_end|>\n")
        elif m.role == "tool":
            if prev is not None and prev.role != "tool":  # (the template's loop.previtem test)
                out.append("<|im_start|>user\n")
            out.append("<tool_response>\n" + m.content + "\n</tool_response>\n")
            if nxt is None or nxt.role != "tool":
                out.append("<|im_end|>\n")
        else:
            out.append(f"<|im_start|>{m.role}\n{m.content}<|im_end|>\n")
    out.append("<|im_start|>assistant\n")
    return "".join(out)


# ---- DeepSeek V3.1 (deepseek-ai/DeepSeek-V3.1: tokenizer_config.json chat_template) ---------------
def _deepseek31(messages: list[Message], tools: list[Tool], think: bool, bos: str) -> str:
    out = [bos, "\n\n".join(m.content for m in messages if m.role == "system")]
    last_user = is_tool = False
    for m in messages:
        if m.role == "user":
            is_tool, last_user = False, True
            out.append("<｜User｜>" + m.content)
        elif m.role == "assistant" and m.tool_calls:
            if last_user:
                out.append("<｜Assistant｜><think></think>")
            last_user = is_tool = False
            for n, call in enumerate(m.tool_calls):
                head = "<｜tool▁call▁begin｜>"
                if n == 0:
                    head = m.content + "<｜tool▁calls▁begin｜>" + head
                out.append(f"{head}{call.name}<｜tool▁sep｜>{_tojson(call.arguments)}<｜tool▁call▁end｜>")
            out.append("<｜tool▁calls▁end｜><｜end▁of▁sentence｜>")
        elif m.role == "assistant":
            if last_user:
                out.append("<｜Assistant｜><think></think>")
            last_user = False
            content = m.content
            if not is_tool and "</think>" in content:  # an answer echoed with its reasoning loses it
                content = content.split("</think>", 1)[1]
            is_tool = False
            out.append(content + "<｜end▁of▁sentence｜>")
        elif m.role == "tool":
            last_user, is_tool = False, True
            out.append("<｜tool▁output▁begin｜>" + m.content + "<｜tool▁output▁end｜>")
    if last_user and not is_tool:
        out.append("<｜Assistant｜>" + ("<think>" if think else "<think></think>"))
    return "".join(out)


# ---- GLM-4.7 (zai-org/GLM-4.7-Flash: chat_template.jinja) ----------------------------------------
_GLM_TOOLS_HEAD = (
    "<|system|>\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n")
_GLM_TOOLS_TAIL = (
    "</tools>\n\nFor each function call, output the function name and arguments within the following XML "
    "format:\n<tool_call>{function-name}<arg_key>{arg-key-1}</arg_key><arg_value>{arg-value-1}</arg_value>"
    "<arg_key>{arg-key-2}</arg_key><arg_value>{arg-value-2}</arg_value>...</tool_call>")


def _glm_tool_json(t: Tool) -> str:
    fn = {"name": t.name, "description": t.description,
          "parameters": t.parameters or {"type": "object", "properties": {}}}
    return _tojson({"type": t.type or "function", "function": fn})


def _glm47(messages: list[Message], tools: list[Tool], think: bool, bos: str) -> str:
    out = ["[gMASK]<sop>"]
    if tools:
        out.append(_GLM_TOOLS_HEAD + "".join(_glm_tool_json(t) + "\n" for t in tools) + _GLM_TOOLS_TAIL)
    last_user = max((i for i, m in enumerate(messages) if m.role == "user"), default=-1)
    for i, m in enumerate(messages):
        if m.role == "user":
            out.append("<|user|>" + m.content)
        elif m.role == "assistant":
            reasoning, content = m.thinking, m.content
            if not reasoning and "</think>" in content:  # reasoning a client left in the content
                reasoning = content.split("</think>")[0].rstrip("\n").split("<think>")[-1].lstrip("\n")
                content = content.split("</think>")[-1].lstrip("\n")
            # reasoning is kept only for the turns after the last user message
            out.append("<|assistant|>" + (f"<think>{reasoning.strip()}</think>" if i > last_user and reasoning
                                          else "</think>") + content.strip())
            for call in m.tool_calls:
                args = "".join(f"<arg_key>{k}</arg_key><arg_value>{v if isinstance(v, str) else _tojson(v)}"
                               "</arg_value>" for k, v in call.arguments.items())
                out.append(f"<tool_call>{call.name}{args}</tool_call>")
        elif m.role == "tool":
            if i == 0 or messages[i - 1].role != "tool":
                out.append("<|observation|>")
            out.append("<tool_response>" + m.content + "</tool_response>")
        elif m.role == "system":
            out.append("<|system|>" + m.content)
    out.append("<|assistant|>" + ("<think>" if think else "</think>"))
    return "".join(out)


RENDERERS: dict[str, Render] = {
    "qwen3-coder": _qwen3_coder,
    "deepseek3.1": _deepseek31,
    "glm-4.7": _glm47,
}


def render(name: str, messages: list[Message], tools: list[Tool], *, think: bool, bos: str = "") -> str:
    """The prompt the built-in renderer `name` writes (KeyError for a name corral does not have)."""
    return RENDERERS[name](messages, tools, think, bos)
