"""Anthropic Messages requests to core chat jobs, and core chunks to Anthropic messages and SSE events."""

from __future__ import annotations

import json
import re
import secrets
from typing import Any

from corral.conversation import Message, Tool, ToolCall
from corral.errors import GrammarError, InvalidRequestError
from corral.jobs import ChatJob, Chunk, Metrics
from corral.media import inspect_media
from corral.prompts.grammar import schema_to_gbnf
from corral.server import common
from corral.server.anthropic import schemas as S

# Claude Code's first system block is a billing stamp, "x-anthropic-billing-header: cc_version=...;
# cc_entrypoint=...; cch=...;", that changes per build and per request. It tells the model nothing and
# would break prompt-prefix reuse on every turn, so it is cut (the rest of the block is kept).
_BILLING = re.compile(r"^x-anthropic-billing-header:(?:\s*[\w.-]+=[^;\n]*;)*\s*")
_EFFORT = {"low": "low", "medium": "medium", "high": "high", "max": "high"}
MAX_USER_CHARS = 256  # Anthropic's limit on metadata.user_id
_MEDIA_TYPES = ("jpeg", "png", "gif", "webp")


def new_id(prefix: str) -> str:
    """``msg_`` / ``toolu_`` ids in Anthropic's form."""
    return f"{prefix}_{secrets.token_hex(12)}"


# ---- requests ------------------------------------------------------------------------------------
def system_text(system: str | list[S.TextBlock] | None) -> str:
    """The system prompt as one text, the billing stamp removed."""
    if system is None:
        return ""
    parts = [system] if isinstance(system, str) else [_text(b) for b in system]
    parts = [_BILLING.sub("", p, count=1) for p in parts]
    return "\n\n".join(p for p in parts if p)


def _text(block: S.TextBlock) -> str:
    if block.citations:
        raise InvalidRequestError("text block citations are not supported: they point into document "
                                  "blocks, which corral does not take")
    return block.text


def _image(block: S.ImageBlock) -> bytes:
    if block.source.type != "base64":
        raise InvalidRequestError(
            f"image source type {block.source.type!r} is not supported: send base64 data "
            "(corral fetches nothing from URLs)"
        )
    data = common.decode_image(block.source.data, "image.source.data")
    kind = block.source.media_type.removeprefix("image/")
    if not block.source.media_type.startswith("image/") or kind not in _MEDIA_TYPES:
        raise InvalidRequestError(f"image.source.media_type {block.source.media_type!r} is not one of "
                                  "image/jpeg, image/png, image/gif, image/webp")
    try:
        found = inspect_media(data).format
    except InvalidRequestError:
        return data  # the engine checks the bytes against the configured limits and names the fault
    if found != kind:
        # compat(anthropic): "Image does not match the provided media type"
        raise InvalidRequestError(f"image.source.media_type {block.source.media_type!r} does not match "
                                  f"the image data ({found})")
    return data


def _tool_result(block: S.ToolResultBlock, names: dict[str, str]) -> Message:
    content, images = block.content, []
    if not isinstance(content, str):
        images = [_image(b) for b in content if isinstance(b, S.ImageBlock)]
        content = "\n".join(_text(b) for b in content if isinstance(b, S.TextBlock))
    if block.is_error:  # the model should know the tool failed; the text alone may not say so
        content = f"Error: {content}" if content else "Error"
    return Message(
        role="tool",
        content=content,
        images=images,
        tool_call_id=block.tool_use_id,
        tool_name=names.get(block.tool_use_id, ""),
    )


def messages(system: str | list[S.TextBlock] | None, wire: list[S.InputMessage]) -> list[Message]:
    """Core messages: the system prompt, then each turn (tool results become tool messages)."""
    out: list[Message] = []
    text = system_text(system)
    if text:
        out.append(Message(role="system", content=text))
    names: dict[str, str] = {}
    for m in wire:
        if m.role not in ("user", "assistant", "system"):
            raise InvalidRequestError(f"messages: role must be user or assistant, not {m.role!r}")
        if isinstance(m.content, str):
            out.append(Message(role=m.role, content=m.content))
            continue
        texts: list[str] = []
        thinking: list[str] = []
        images: list[bytes] = []
        calls: list[ToolCall] = []
        for block in m.content:
            if isinstance(block, S.TextBlock):
                texts.append(_text(block))
            elif isinstance(block, S.ImageBlock):
                images.append(_image(block))
            elif isinstance(block, S.ThinkingBlock):
                thinking.append(block.thinking)
            elif isinstance(block, S.ToolUseBlock):
                if m.role != "assistant":
                    raise InvalidRequestError("tool_use blocks belong in assistant messages")
                names[block.id] = block.name
                calls.append(
                    ToolCall(name=block.name, arguments=dict(block.input), id=block.id, index=len(calls))
                )
            else:  # tool_result: its own tool message, in order, before any text of the same turn
                if m.role != "user":
                    raise InvalidRequestError("tool_result blocks belong in user messages")
                out.append(_tool_result(block, names))
        if texts or thinking or images or calls or not m.content:
            out.append(
                Message(
                    role=m.role,
                    content="\n\n".join(texts),
                    thinking="".join(thinking),
                    images=images,
                    tool_calls=calls,
                )
            )
    return out


def _tools(req: S.MessagesRequest | S.CountTokensRequest) -> list[Tool]:
    tools = []
    for t in req.tools or []:
        if t.type not in (None, "custom"):
            raise InvalidRequestError(
                f"tool type {t.type!r} is not supported: only client tools (name, description, input_schema)"
            )
        tools.append(Tool(name=t.name, description=t.description, parameters=dict(t.input_schema)))
    return tools


def _check_strict(tools: list[S.ToolDef] | None, choice: str) -> bool:
    """Whether a tool the model may call is ``strict`` (its input then follows the tools' schemas: a
    grammar forces the call for tool_choice any or a named tool, a lazy one holds from the call's
    opener for auto); a strict tool whose schema cannot be enforced is refused."""
    strict = False
    for t in tools or []:
        if not t.strict or choice == "none":
            continue
        try:
            schema_to_gbnf(dict(t.input_schema) or {"type": "object"})
        except GrammarError as exc:
            raise InvalidRequestError(
                f"tools: {t.name!r} is strict but its input_schema cannot be enforced: {exc.message}"
            ) from None
        strict = True
    return strict


def _context_edits(cm: S.ContextManagement | None) -> None:
    for n, edit in enumerate(cm.edits if cm else []):
        if not edit.type.startswith("clear_thinking_"):
            raise InvalidRequestError(
                f"context_management.edits[{n}]: edit type {edit.type!r} is not supported: corral renders "
                "the conversation as sent (clear tool results on the client)")


def end_user(req: S.MessagesRequest) -> str:
    """``metadata.user_id``: the end user, for the access log."""
    user = req.metadata.user_id if req.metadata else None
    if user is None:
        return ""
    if len(user) > MAX_USER_CHARS or not user.isprintable():
        raise InvalidRequestError(f"metadata.user_id must be printable text of at most {MAX_USER_CHARS} "
                                  "characters")
    return user


def _tool_choice(choice: S.ToolChoice | None) -> tuple[str, str]:
    if choice is None or choice.type == "auto":
        return "auto", ""
    if choice.type == "none":
        return "none", ""
    if choice.type == "tool":
        if not choice.name:
            raise InvalidRequestError("tool_choice of type tool needs the tool's name")
        return "required", choice.name
    return "required", ""  # any


def _think(
    thinking: S.ThinkingConfig | None, output: S.OutputConfig | None
) -> tuple[bool | str | None, bool]:
    """(think, only if the model can): enabled asks for reasoning, adaptive leaves it to the model."""
    effort = _EFFORT.get(output.effort or "") if output else None
    if thinking is None or thinking.type == "adaptive":
        return (effort, True) if effort else (None, False)
    if thinking.type == "disabled":
        return False, False
    budget = thinking.budget_tokens
    if budget is None or budget < 1024:
        raise InvalidRequestError("thinking.budget_tokens must be at least 1024")
    # The budget picks the reasoning level the model's template offers (corral cannot cut reasoning
    # at an exact token count without truncating it mid-thought).
    return ("low" if budget < 4096 else "medium" if budget < 16384 else "high"), False


def chat_job(req: S.MessagesRequest | S.CountTokensRequest) -> ChatJob:
    """A ChatJob from /v1/messages (or count_tokens): no history dropping, no context shift."""
    model = common.require_model(req.model)
    if not req.messages:
        raise InvalidRequestError("messages: at least one message is required")
    options: dict[str, Any] = {}
    if isinstance(req, S.MessagesRequest):
        if req.max_tokens < 1:
            raise InvalidRequestError("max_tokens: must be greater than or equal to 1")
        options["num_predict"] = req.max_tokens
        for key, opt in (("temperature", "temperature"), ("top_p", "top_p"), ("top_k", "top_k")):
            value = getattr(req, key)
            if value is not None:
                options[opt] = value
        if req.stop_sequences:
            options["stop"] = list(req.stop_sequences)
    choice, forced = _tool_choice(req.tool_choice)
    strict = _check_strict(req.tools, choice)
    _context_edits(req.context_management)
    think, relaxed = _think(req.thinking, req.output_config)
    fmt = req.output_config.format.schema if req.output_config and req.output_config.format else None
    # A prompt that does not fit is an error naming num_ctx, never a silently shortened system prompt.
    return ChatJob(
        model=model,
        messages=messages(req.system, req.messages),
        tools=_tools(req),
        format=fmt,
        options=options,
        think=think,
        think_if_supported=relaxed,
        truncate=False,
        shift=False,
        tool_choice=choice,
        forced_tool=forced,
        strict_tools=strict,
    )


# ---- responses -----------------------------------------------------------------------------------
def usage(m: Metrics | None) -> S.Usage:
    """Anthropic counts cached prompt tokens apart from ``input_tokens``."""
    if m is None:
        return S.Usage(input_tokens=0, output_tokens=0)
    cached = min(m.prompt_cached_count, m.prompt_eval_count)
    return S.Usage(
        input_tokens=m.prompt_eval_count - cached, output_tokens=m.eval_count, cache_read_input_tokens=cached
    )


def stop_reason(c: Chunk, had_calls: bool, stop_sequences: list[str]) -> tuple[str, str | None]:
    """(stop_reason, stop_sequence) for the final chunk."""
    if c.done_reason == "length":
        return "max_tokens", None
    if had_calls:
        return "tool_use", None
    if c.stop_string and c.stop_string in stop_sequences:
        return "stop_sequence", c.stop_string
    return "end_turn", None


def _tool_use(call: ToolCall) -> S.OutToolUse:
    return S.OutToolUse(id=new_id("toolu"), name=call.name, input=call.arguments)


def message(model: str, c: Chunk, stop_sequences: list[str], single_call: bool,
            omit_thinking: bool = False) -> S.Message:
    """A non-streamed answer: thinking, text and tool_use blocks."""
    blocks: list[S.OutBlock] = []
    if c.thinking:
        blocks.append(S.OutThinking(thinking="" if omit_thinking else c.thinking))
    if c.content:
        blocks.append(S.OutText(text=c.content))
    calls = c.tool_calls[:1] if single_call else c.tool_calls
    blocks += [_tool_use(call) for call in calls]
    reason, seq = stop_reason(c, bool(calls), stop_sequences)
    return S.Message(
        id=new_id("msg"),
        type="message",
        role="assistant",
        model=model,
        content=blocks,
        stop_reason=reason,
        stop_sequence=seq,
        usage=usage(c.metrics),
    )


class MessageStream:
    """Turns core chunks into Anthropic's event sequence: one content block per kind, each started,
    filled with deltas and stopped; tool calls are whole blocks; then message_delta and message_stop."""

    def __init__(self, model: str, stop_sequences: list[str], single_call: bool,
                 omit_thinking: bool = False) -> None:
        self.model, self.stop_sequences, self.single_call = model, stop_sequences, single_call
        self.omit_thinking = omit_thinking  # thinking.display omitted: the block opens and closes empty
        self.id = new_id("msg")
        self.index = -1
        self.open: str | None = None  # kind of the block being filled: "text" or "thinking"
        self.calls = 0
        self.started = False

    def start(self) -> list[S.StreamEvent]:
        """``message_start`` (sent once, before anything else)."""
        if self.started:
            return []
        self.started = True
        msg = S.Message(
            id=self.id,
            type="message",
            role="assistant",
            model=self.model,
            content=[],
            stop_reason=None,
            stop_sequence=None,
            usage=S.Usage(input_tokens=0, output_tokens=0),
        )
        return [S.MessageStart(message=msg)]

    def _close(self) -> list[S.StreamEvent]:
        if self.open is None:
            return []
        self.open = None
        return [S.ContentBlockStop(index=self.index)]

    def _text(self, kind: str, text: str) -> list[S.StreamEvent]:
        out: list[S.StreamEvent] = []
        if self.open != kind:
            out += self._close()
            self.index += 1
            self.open = kind
            block: S.OutBlock = S.OutText(text="") if kind == "text" else S.OutThinking(thinking="")
            out.append(S.ContentBlockStart(index=self.index, content_block=block))
        if kind == "thinking" and self.omit_thinking:
            return out
        delta = S.TextDelta(text=text) if kind == "text" else S.ThinkingDelta(thinking=text)
        out.append(S.ContentBlockDelta(index=self.index, delta=delta))
        return out

    def feed(self, c: Chunk) -> list[S.StreamEvent]:
        out = self.start()
        if c.thinking:
            out += self._text("thinking", c.thinking)
        if c.content:
            out += self._text("text", c.content)
        for call in c.tool_calls:
            if self.single_call and self.calls:
                break  # disable_parallel_tool_use: the first call only
            out += self._close()
            self.index += 1
            self.calls += 1
            block = _tool_use(call)
            out.append(
                S.ContentBlockStart(
                    index=self.index, content_block=S.OutToolUse(id=block.id, name=block.name, input={})
                )
            )
            out.append(
                S.ContentBlockDelta(
                    index=self.index, delta=S.InputJsonDelta(partial_json=json.dumps(call.arguments))
                )
            )
            out.append(S.ContentBlockStop(index=self.index))
        if c.done:
            out += self._close()
            reason, seq = stop_reason(c, self.calls > 0, self.stop_sequences)
            u = usage(c.metrics)
            out.append(
                S.MessageDelta(
                    delta=S.StopDelta(stop_reason=reason, stop_sequence=seq),
                    usage=S.DeltaUsage(
                        input_tokens=u.input_tokens,
                        output_tokens=u.output_tokens,
                        cache_read_input_tokens=u.cache_read_input_tokens,
                    ),
                )
            )
            out.append(S.MessageStop())
        return out
