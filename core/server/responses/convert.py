"""Responses API requests to core chat jobs (input items, tools, formats, reasoning) and usage."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from corral.conversation import Message, Tool, ToolCall
from corral.errors import GrammarError, InvalidRequestError
from corral.jobs import ChatJob, Metrics
from corral.prompts.grammar import schema_to_gbnf
from corral.server import common
from corral.server.responses import schemas as S

# compat(ollama): the effort levels openai/openai.go maps; at most "high" reaches the template.
_EFFORT: dict[str, bool | str] = {"none": False, "minimal": "low", "low": "low", "medium": "medium",
                                  "high": "high", "xhigh": "high"}
# Hosted tools Codex sends besides its functions. corral cannot run them, so they are left out of the
# prompt (the model is never offered them) rather than failing every Codex turn; any other hosted tool
# type is refused.
SKIPPED_TOOL_TYPES = ("namespace", "web_search", "web_search_preview")
_FUNCTION_KEYS = {"type", "name", "description", "parameters", "strict"}
# include values: encrypted reasoning is for stateless replay (store false). compat(ollama): the reasoning
# item's encrypted_content carries the reasoning's plain text, and a reasoning item sent back with only
# encrypted_content replays it.
_INCLUDES = {"reasoning.encrypted_content"}
_TIERS = (None, "auto", "default")  # corral has one service tier
MAX_USER_CHARS = 256


@dataclass
class Plan:
    """A request as the core runs it, plus what the answer needs to echo."""

    job: ChatJob
    conversation: list[Message]  # the messages sent, for the store
    tools: list[dict[str, Any]] = field(default_factory=list)  # the function tools, as given
    single_call: bool = False
    max_calls: int | None = None  # max_tool_calls: calls past this many are left out of the answer
    summary: bool = False  # reasoning goes out as summary_text (the client asked for a summary)
    encrypted: bool = False  # reasoning items carry encrypted_content (include asked for it)
    obfuscate: bool = False  # delta events carry random padding (stream_options.include_obfuscation)


def _text_of(parts: str | list[S.ContentPart] | None, where: str) -> tuple[str, list[bytes]]:
    if parts is None:
        return "", []
    if isinstance(parts, str):
        return parts, []
    texts, images = [], []
    for p in parts:
        if p.type in ("input_text", "output_text", "text", "summary_text", "reasoning_text"):
            texts.append(p.text or "")
        elif p.type == "refusal":
            texts.append(p.refusal or p.text or "")
        elif p.type == "input_image":
            if p.detail not in (None, "auto", "high"):
                # mtmd feeds the projector the image at the resolution it was trained on: there is no "low"
                raise InvalidRequestError(f"{where}: input_image detail {p.detail!r} is not supported: the "
                                          "model's projector sets the resolution (use auto or high)")
            if p.file_id or not p.image_url or not p.image_url.startswith("data:"):
                raise InvalidRequestError(
                    f"{where}: input_image needs image_url as a base64 data URI "
                    "(file ids and remote URLs are not supported)"
                )
            images.append(common.decode_image(p.image_url, "image_url"))
        else:
            raise InvalidRequestError(f"{where}: content part type {p.type!r} is not supported")
    return "\n\n".join(t for t in texts if t), images


def _arguments(text: str | None) -> dict[str, Any]:
    if not text or not text.strip():
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        raise InvalidRequestError("function_call arguments are not valid JSON") from None
    if not isinstance(value, dict):
        raise InvalidRequestError("function_call arguments must be a JSON object")
    return value


def input_messages(items: str | list[S.InputItem] | None) -> list[Message]:
    """Core messages from ``input``: developer turns are system turns, calls join the assistant turn."""
    if items is None:
        raise InvalidRequestError("input is required")
    if isinstance(items, str):
        return [Message(role="user", content=items)]
    out: list[Message] = []
    names: dict[str, str] = {}
    thinking = ""
    for n, it in enumerate(items):
        where = f"input[{n}]"
        if it.type == "message":
            role = (it.role or "").lower()
            if role not in ("user", "assistant", "system", "developer"):
                raise InvalidRequestError(f"{where}: role must be user, assistant, system or developer")
            text, images = _text_of(it.content, where)
            role = "system" if role == "developer" else role
            out.append(
                Message(
                    role=role, content=text, images=images, thinking=thinking if role == "assistant" else ""
                )
            )
            thinking = "" if role == "assistant" else thinking
        elif it.type == "function_call":
            if not it.call_id or not it.name:
                raise InvalidRequestError(f"{where}: function_call needs call_id and name")
            names[it.call_id] = it.name
            if not out or out[-1].role != "assistant":
                out.append(Message(role="assistant", thinking=thinking))
                thinking = ""
            last = out[-1]
            last.tool_calls.append(
                ToolCall(
                    name=it.name,
                    arguments=_arguments(it.arguments),
                    id=it.call_id,
                    index=len(last.tool_calls),
                )
            )
        elif it.type == "function_call_output":
            if not it.call_id:
                raise InvalidRequestError(f"{where}: function_call_output needs call_id")
            text, images = _text_of(it.output, where)
            out.append(
                Message(
                    role="tool",
                    content=text,
                    images=images,
                    tool_call_id=it.call_id,
                    tool_name=names.get(it.call_id, ""),
                )
            )
        elif it.type == "reasoning":  # the model's earlier reasoning, for the assistant turn that follows
            content = [] if isinstance(it.content, str) else it.content or []
            parts = [p.text for p in it.summary or []] + [p.text or "" for p in content]
            if not any(parts) and it.encrypted_content:
                parts = [it.encrypted_content]  # corral's own encrypted_content is the plain text
            thinking += "\n".join(p for p in parts if p)
        else:
            raise InvalidRequestError(f"{where}: input item type {it.type!r} is not supported")
    return out


def _tools(wire: list[dict[str, Any]] | None) -> tuple[list[Tool], list[dict[str, Any]]]:
    tools, kept = [], []
    for n, t in enumerate(wire or []):
        kind = t.get("type")
        if kind in SKIPPED_TOOL_TYPES:
            continue
        if kind != "function":
            raise InvalidRequestError(f"tools[{n}]: tool type {kind!r} is not supported: only function tools")
        extra = set(t) - _FUNCTION_KEYS
        if extra:
            raise InvalidRequestError(f"tools[{n}]: unknown field(s) {', '.join(sorted(extra))}")
        name = t.get("name")
        if not isinstance(name, str) or not name:
            raise InvalidRequestError(f"tools[{n}]: a function tool needs a name")
        params = t.get("parameters") or {}
        if not isinstance(params, dict):
            raise InvalidRequestError(f"tools[{n}]: parameters must be a JSON schema object")
        tools.append(Tool(name=name, description=str(t.get("description") or ""), parameters=params))
        kept.append(t)
    return tools, kept


def _strict(tools: list[Tool], kept: list[dict[str, Any]]) -> bool:
    """Whether a tool the model may call is ``strict`` (its calls then follow the tools' schemas: forced
    for tool_choice required, from the call's opener for auto); one whose schema cannot be enforced
    is refused."""
    strict = False
    for t, wire in zip(tools, kept, strict=True):
        if wire.get("strict") is not True:
            continue
        try:
            schema_to_gbnf(t.parameters or {"type": "object"})
        except GrammarError as exc:
            raise InvalidRequestError(f"tool {t.name!r} is strict but its parameters cannot be enforced: "
                                      f"{exc.message}") from None
        strict = True
    return strict


def _tool_choice(choice: str | S.NamedToolChoice | None) -> tuple[str, str]:
    if choice is None or choice == "auto":
        return "auto", ""
    if choice in ("none", "required"):
        return str(choice), ""
    if isinstance(choice, S.NamedToolChoice) and choice.type == "function" and choice.name:
        return "required", choice.name
    if isinstance(choice, S.NamedToolChoice) and choice.type == "allowed_tools":
        if choice.mode not in ("auto", "required"):
            raise InvalidRequestError("tool_choice.mode must be auto or required")
        return choice.mode, ""
    raise InvalidRequestError(
        f'unsupported tool_choice {choice!r}: use auto, none, required, {{"type": "function", "name": ...}} '
        'or {"type": "allowed_tools", "mode": ..., "tools": [...]}'
    )


def _allowed(choice: str | S.NamedToolChoice | None, tools: list[Tool],
             kept: list[dict[str, Any]]) -> tuple[list[Tool], list[dict[str, Any]]]:
    """The tools an ``allowed_tools`` choice leaves the model (all of them otherwise)."""
    if not (isinstance(choice, S.NamedToolChoice) and choice.type == "allowed_tools"):
        return tools, kept
    names = set()
    for n, t in enumerate(choice.tools or []):
        if t.get("type") != "function" or not isinstance(t.get("name"), str):
            raise InvalidRequestError(f'tool_choice.tools[{n}] must be {{"type": "function", "name": ...}}')
        names.add(t["name"])
    unknown = names - {t.name for t in tools}
    if unknown or not names:
        raise InvalidRequestError(
            f"tool_choice.tools must name tools of the request: {sorted(unknown) or 'none named'}")
    return [t for t in tools if t.name in names], [t for t in kept if t.get("name") in names]


def end_user(req: S.ResponsesRequest) -> str:
    """``safety_identifier`` (or the older ``user``): the end user, for the access log."""
    for name in ("safety_identifier", "user"):
        value = getattr(req, name)
        if value is not None and (len(value) > MAX_USER_CHARS or not value.isprintable()):
            raise InvalidRequestError(f"{name} must be printable text of at most {MAX_USER_CHARS} characters")
    return req.safety_identifier or req.user or ""


def _format(text: S.TextConfig | None) -> str | dict[str, Any] | None:
    fmt = text.format if text else None
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return "json"
    if fmt.type == "json_schema":
        if fmt.schema is None:
            raise InvalidRequestError("text.format.schema is required for type json_schema")
        return fmt.schema
    raise InvalidRequestError(f"unsupported text.format type {fmt.type!r}")


def plan(req: S.ResponsesRequest, history: list[Message]) -> Plan:
    """The chat job for a request; ``history`` is the stored conversation of ``previous_response_id``."""
    model = common.require_model(req.model)
    if req.background:
        raise InvalidRequestError("background responses are not supported")
    for inc in req.include or []:
        if inc not in _INCLUDES:
            raise InvalidRequestError(f"include value {inc!r} is not supported")
    if req.max_tool_calls is not None and req.max_tool_calls < 1:
        raise InvalidRequestError("max_tool_calls must be a positive integer")
    if req.service_tier not in _TIERS:
        raise InvalidRequestError(f"service_tier {req.service_tier!r} is not available: corral has one tier "
                                  "(auto or default)")
    if req.text and req.text.verbosity not in (None, "medium"):
        raise InvalidRequestError(f"text.verbosity {req.text.verbosity!r} is not supported: corral cannot "
                                  "steer answer length by it (use max_output_tokens)")
    options: dict[str, Any] = {}
    if req.max_output_tokens is not None:
        if req.max_output_tokens < 1:
            raise InvalidRequestError("max_output_tokens must be a positive integer")
        options["num_predict"] = req.max_output_tokens
    if req.temperature is not None:
        options["temperature"] = req.temperature
    if req.top_p is not None:
        options["top_p"] = req.top_p
    think: bool | str | None = None
    if req.reasoning and req.reasoning.effort:
        key = req.reasoning.effort.lower()
        if key not in _EFFORT:
            raise InvalidRequestError(f"invalid reasoning.effort {req.reasoning.effort!r}")
        think = _EFFORT[key]
    if req.truncation not in (None, "auto", "disabled"):
        raise InvalidRequestError("truncation must be auto or disabled")
    tools, kept = _tools(req.tools)
    choice, forced = _tool_choice(req.tool_choice)
    tools, kept = _allowed(req.tool_choice, tools, kept)
    strict = _strict(tools, kept)
    msgs = list(history)
    if req.instructions:  # instructions apply to this request only, ahead of everything else
        msgs = [Message(role="system", content=req.instructions)] + [m for m in msgs if m.role != "system"]
    msgs += input_messages(req.input)
    if not msgs:
        raise InvalidRequestError("input must hold at least one item")
    single = req.parallel_tool_calls is False or req.max_tool_calls == 1
    summary = bool(req.reasoning and (req.reasoning.summary or req.reasoning.generate_summary))
    # truncation "auto" lets the oldest turns go (system kept) to fit num_ctx; otherwise a prompt that
    # does not fit is an error naming num_ctx, never a silently shortened instruction prompt.
    job = ChatJob(
        model=model,
        messages=msgs,
        tools=tools,
        format=_format(req.text),
        options=options,
        think=think,
        think_if_supported=True,
        truncate=req.truncation == "auto",
        shift=False,
        tool_choice=choice,
        forced_tool=forced,
        strict_tools=strict,
    )
    conversation = [
        m for m in msgs if not (req.instructions and m.role == "system" and m.content == req.instructions)
    ]
    return Plan(job=job, conversation=conversation, tools=kept, single_call=single,
                max_calls=req.max_tool_calls, summary=summary,
                encrypted="reasoning.encrypted_content" in (req.include or []),
                obfuscate=bool(req.stream_options and req.stream_options.include_obfuscation))


def usage(m: Metrics | None, reasoning_tokens: int) -> S.Usage:
    """Usage with the cached and reasoning token details."""
    p, c = (m.prompt_eval_count, m.eval_count) if m else (0, 0)
    cached = min(m.prompt_cached_count, p) if m else 0
    return S.Usage(
        input_tokens=p,
        input_tokens_details=S.InputTokensDetails(cached_tokens=cached),
        output_tokens=c,
        output_tokens_details=S.OutputTokensDetails(reasoning_tokens=min(reasoning_tokens, c)),
        total_tokens=p + c,
    )
