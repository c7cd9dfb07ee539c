"""Wire structs of OpenAI's Responses API. Unknown fields are refused (400) unless listed as hints."""

from __future__ import annotations

from typing import Any

import msgspec
from msgspec import Struct

# Fields OpenAI documents as hints or bookkeeping that do not change the answer: accepted, no effect.
Hint = Any


# ---- requests ------------------------------------------------------------------------------------
class ContentPart(Struct, kw_only=True, forbid_unknown_fields=True):
    """A part of a message's content: input_text, input_image, output_text, refusal, ..."""

    type: str
    text: str | None = None
    image_url: str | None = None
    detail: Hint = None  # image detail level: a hint about resolution
    file_id: str | None = None
    annotations: Hint = None  # echoed back from earlier output
    logprobs: Hint = None  # echoed back from earlier output
    refusal: str | None = None


class SummaryPart(Struct, kw_only=True, forbid_unknown_fields=True):
    """``{"type": "summary_text" | "reasoning_text", "text"}``."""

    type: str
    text: str = ""


class InputItem(Struct, kw_only=True, forbid_unknown_fields=True):
    """One input item. ``type`` defaults to ``message`` (the Agents SDK leaves it out)."""

    type: str = "message"
    id: Hint = None  # item ids are the client's bookkeeping
    status: Hint = None
    role: str | None = None
    content: str | list[ContentPart] | None = None  # reasoning items: reasoning_text parts
    call_id: str | None = None
    name: str | None = None
    arguments: str | None = None
    output: str | list[ContentPart] | None = None
    summary: list[SummaryPart] | None = None
    encrypted_content: str | None = None
    namespace: Hint = None  # the tool namespace a call belongs to (Codex); the call's name decides


class FunctionTool(Struct, kw_only=True):
    """A tool definition: ``function`` tools run on the client; others are hosted tools."""

    type: str
    name: str | None = None
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class NamedToolChoice(Struct, kw_only=True, forbid_unknown_fields=True):
    """``{"type": "function", "name": ...}``."""

    type: str
    name: str | None = None
    mode: str | None = None
    tools: list[dict[str, Any]] | None = None


class Reasoning(Struct, kw_only=True, forbid_unknown_fields=True):
    """``effort`` (minimal..high) and whether a ``summary`` is wanted."""

    effort: str | None = None
    summary: str | None = None
    generate_summary: str | None = None  # the older name of summary


class TextFormat(Struct, kw_only=True, forbid_unknown_fields=True):
    """``text.format``: text, json_object or json_schema."""

    type: str = "text"
    name: str | None = None
    schema: dict[str, Any] | None = None
    strict: bool | None = None
    description: str | None = None


class TextConfig(Struct, kw_only=True, forbid_unknown_fields=True):
    """``text``: the output format; ``verbosity`` (only ``medium``: corral cannot steer length by it)."""

    format: TextFormat | None = None
    verbosity: str | None = None


class StreamOptions(Struct, kw_only=True, forbid_unknown_fields=True):
    """``stream_options``: ``include_obfuscation`` pads delta events with random characters."""

    include_obfuscation: bool | None = None


class ResponsesRequest(Struct, kw_only=True, forbid_unknown_fields=True):
    """POST /v1/responses."""

    model: str = ""
    input: str | list[InputItem] | None = None
    instructions: str | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    max_output_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    reasoning: Reasoning | None = None
    text: TextConfig | None = None
    stream: bool = False
    store: bool | None = None
    previous_response_id: str | None = None
    include: list[str] | None = None
    truncation: str | None = None
    metadata: dict[str, str] | None = None  # kept and returned on the response
    prompt_cache_key: str | None = None  # echoed; corral reuses every common prompt prefix without a key
    client_metadata: Hint = None  # Codex's client bookkeeping, never part of the prompt
    user: str | None = None  # the end user: the access log shows it
    safety_identifier: str | None = None  # user's newer name
    service_tier: str | None = None  # auto or default: corral has one tier
    stream_options: StreamOptions | None = None
    background: bool | None = None
    max_tool_calls: int | None = None


# ---- responses -----------------------------------------------------------------------------------
class OutputText(Struct, kw_only=True):
    type: str
    text: str
    annotations: list[Any] = msgspec.field(default_factory=list)
    logprobs: list[Any] = msgspec.field(default_factory=list)


class MessageItem(Struct, tag="message", tag_field="type", kw_only=True):
    id: str
    status: str
    role: str
    content: list[OutputText]


class FunctionCallItem(Struct, tag="function_call", tag_field="type", kw_only=True):
    id: str
    call_id: str
    name: str
    arguments: str
    status: str


class ReasoningText(Struct, kw_only=True):
    type: str
    text: str


class ReasoningItem(Struct, tag="reasoning", tag_field="type", kw_only=True):
    id: str
    summary: list[ReasoningText]
    content: list[ReasoningText] = msgspec.field(default_factory=list)
    encrypted_content: str | None = None
    status: str | None = None


OutputItem = MessageItem | FunctionCallItem | ReasoningItem


class InputTokensDetails(Struct, kw_only=True):
    cached_tokens: int


class OutputTokensDetails(Struct, kw_only=True):
    reasoning_tokens: int


class Usage(Struct, kw_only=True):
    """``input_tokens`` includes the cached ones (OpenAI's convention)."""

    input_tokens: int
    input_tokens_details: InputTokensDetails
    output_tokens: int
    output_tokens_details: OutputTokensDetails
    total_tokens: int


class IncompleteDetails(Struct, kw_only=True):
    reason: str


class ResponseError(Struct, kw_only=True):
    code: str
    message: str


class Response(Struct, kw_only=True):
    """The response object (also inside the lifecycle events)."""

    id: str
    object: str
    created_at: int
    status: str
    model: str
    output: list[OutputItem]
    output_text: str
    error: ResponseError | None
    incomplete_details: IncompleteDetails | None
    instructions: str | None
    max_output_tokens: int | None
    parallel_tool_calls: bool
    previous_response_id: str | None
    reasoning: Reasoning | None
    store: bool
    temperature: float | None
    top_p: float | None
    text: dict[str, Any]
    tool_choice: Any
    tools: list[dict[str, Any]]
    truncation: str
    metadata: dict[str, str]
    usage: Usage | None
    service_tier: str = "default"
    prompt_cache_key: str | None = None
    safety_identifier: str | None = None
    user: str | None = None


class DeletedResponse(Struct, kw_only=True):
    """DELETE /v1/responses/{id}."""

    id: str
    object: str
    deleted: bool
