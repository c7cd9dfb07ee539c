"""Wire structs of Anthropic's Messages API. Unknown fields are refused (400) unless listed as hints."""

from __future__ import annotations

from typing import Any, Literal

import msgspec
from msgspec import Struct

# Fields Anthropic documents as hints or metadata that do not change the answer: accepted, no effect.
# cache_control marks a prompt-cache breakpoint (corral reuses every common prefix anyway); citations
# come back from Anthropic's own document blocks.
Hint = Any


# ---- requests ------------------------------------------------------------------------------------
class ImageSource(Struct, kw_only=True, forbid_unknown_fields=True):
    """``{"type": "base64", "media_type", "data"}`` (``url`` sources are refused: nothing is fetched)."""

    type: str
    media_type: str = ""
    data: str = ""
    url: str = ""


class TextBlock(Struct, tag="text", tag_field="type", kw_only=True, forbid_unknown_fields=True):
    text: str
    cache_control: Hint = None
    citations: list[Any] | None = None  # only empty: citations point into document blocks, refused here


class ImageBlock(Struct, tag="image", tag_field="type", kw_only=True, forbid_unknown_fields=True):
    source: ImageSource
    cache_control: Hint = None


class ToolUseBlock(Struct, tag="tool_use", tag_field="type", kw_only=True, forbid_unknown_fields=True):
    id: str
    name: str
    input: dict[str, Any] = msgspec.field(default_factory=dict)
    cache_control: Hint = None
    caller: Hint = None  # who called the tool (Anthropic's programmatic tool calling); informational
    toolset_name: Hint = None  # the MCP toolset the tool came from; the tool's name decides


class ToolResultBlock(Struct, tag="tool_result", tag_field="type", kw_only=True, forbid_unknown_fields=True):
    tool_use_id: str
    content: str | list[TextBlock | ImageBlock] = ""
    is_error: bool = False
    cache_control: Hint = None


class ThinkingBlock(Struct, tag="thinking", tag_field="type", kw_only=True, forbid_unknown_fields=True):
    thinking: str
    signature: str = ""  # echoed back by clients; corral's are empty and nothing is verified
    cache_control: Hint = None


Block = TextBlock | ImageBlock | ToolUseBlock | ToolResultBlock | ThinkingBlock


class InputMessage(Struct, kw_only=True, forbid_unknown_fields=True):
    """A turn: user or assistant; ``system`` too (Claude Code's mid-conversation system messages)."""

    role: str
    content: str | list[Block]


class ToolDef(Struct, kw_only=True, forbid_unknown_fields=True):
    """A client tool: ``name``, ``description``, ``input_schema`` (``type`` absent or ``custom``)."""

    name: str
    input_schema: dict[str, Any] = msgspec.field(default_factory=dict)
    description: str = ""
    type: str | None = None
    cache_control: Hint = None
    strict: bool | None = None  # schema conformance; corral's parser only returns calls that parse


class ToolChoice(Struct, kw_only=True, forbid_unknown_fields=True):
    """``auto`` | ``any`` | ``tool`` (with ``name``) | ``none``."""

    type: Literal["auto", "any", "tool", "none"]
    name: str = ""
    disable_parallel_tool_use: bool = False


class ThinkingConfig(Struct, kw_only=True, forbid_unknown_fields=True):
    """``enabled`` (with ``budget_tokens``), ``disabled`` or ``adaptive`` (the model decides)."""

    type: Literal["enabled", "disabled", "adaptive"]
    budget_tokens: int | None = None
    # omitted: thinking blocks come back empty (the model still thinks); summarized: corral returns the
    # whole thinking, which no summary can leave out anything of
    display: Literal["summarized", "omitted"] | None = None


class OutputFormat(Struct, kw_only=True, forbid_unknown_fields=True):
    """Structured output: ``{"type": "json_schema", "schema": {...}}``."""

    type: Literal["json_schema"]
    schema: dict[str, Any]


class OutputConfig(Struct, kw_only=True, forbid_unknown_fields=True):
    """``effort`` (how much to reason) and ``format`` (structured output)."""

    effort: Literal["low", "medium", "high", "max"] | None = None
    format: OutputFormat | None = None


class Metadata(Struct, kw_only=True, forbid_unknown_fields=True):
    """``metadata``: ``user_id``, the end user (the access log shows it)."""

    user_id: str | None = None


class ContextEdit(Struct, kw_only=True, forbid_unknown_fields=True):
    """One ``context_management`` edit (only clear_thinking_*: see MessagesRequest)."""

    type: str
    keep: Any = None


class ContextManagement(Struct, kw_only=True, forbid_unknown_fields=True):
    """``context_management``: edits Anthropic applies to its stored context."""

    edits: list[ContextEdit] = msgspec.field(default_factory=list)


class MessagesRequest(Struct, kw_only=True, forbid_unknown_fields=True):
    """POST /v1/messages."""

    model: str
    max_tokens: int
    messages: list[InputMessage]
    system: str | list[TextBlock] | None = None
    stop_sequences: list[str] | None = None
    stream: bool = False
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    tools: list[ToolDef] | None = None
    tool_choice: ToolChoice | None = None
    thinking: ThinkingConfig | None = None
    output_config: OutputConfig | None = None
    metadata: Metadata | None = None
    service_tier: Literal["auto", "standard_only"] | None = None  # corral has the standard tier only
    # Context editing (clearing old thinking and tool results) is done by Anthropic on its stored
    # context; corral renders exactly the conversation the client sends, and whether earlier turns'
    # thinking reaches the prompt is the model's template's choice, so the clear_thinking edit Claude
    # Code sends is accepted; edits corral does not make (clearing tool results) are refused.
    context_management: ContextManagement | None = None


class CountTokensRequest(Struct, kw_only=True, forbid_unknown_fields=True):
    """POST /v1/messages/count_tokens: a request without ``max_tokens``."""

    model: str
    messages: list[InputMessage]
    system: str | list[TextBlock] | None = None
    tools: list[ToolDef] | None = None
    tool_choice: ToolChoice | None = None
    thinking: ThinkingConfig | None = None
    output_config: OutputConfig | None = None
    context_management: ContextManagement | None = None


# ---- responses -----------------------------------------------------------------------------------
class OutText(Struct, tag="text", tag_field="type", kw_only=True):
    text: str


class OutThinking(Struct, tag="thinking", tag_field="type", kw_only=True):
    thinking: str
    signature: str = ""


class OutToolUse(Struct, tag="tool_use", tag_field="type", kw_only=True):
    id: str
    name: str
    input: dict[str, Any]


OutBlock = OutText | OutThinking | OutToolUse


class Usage(Struct, kw_only=True):
    """``input_tokens`` excludes the tokens read from the prompt cache (as Anthropic counts)."""

    input_tokens: int
    output_tokens: int
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0


class Message(Struct, kw_only=True):
    """The response message (also the ``message`` of ``message_start``, with empty content)."""

    id: str
    type: str
    role: str
    model: str
    content: list[OutBlock]
    stop_reason: str | None
    stop_sequence: str | None
    usage: Usage


class CountTokensResponse(Struct, kw_only=True):
    """``{"input_tokens": N}``."""

    input_tokens: int


# ---- stream events (each one SSE event: ``event: <type>`` then ``data: {...}``) -----------------------
class MessageStart(Struct, tag="message_start", tag_field="type", kw_only=True):
    message: Message


class ContentBlockStart(Struct, tag="content_block_start", tag_field="type", kw_only=True):
    index: int
    content_block: OutBlock


class TextDelta(Struct, tag="text_delta", tag_field="type", kw_only=True):
    text: str


class ThinkingDelta(Struct, tag="thinking_delta", tag_field="type", kw_only=True):
    thinking: str


class SignatureDelta(Struct, tag="signature_delta", tag_field="type", kw_only=True):
    signature: str


class InputJsonDelta(Struct, tag="input_json_delta", tag_field="type", kw_only=True):
    partial_json: str


class ContentBlockDelta(Struct, tag="content_block_delta", tag_field="type", kw_only=True):
    index: int
    delta: TextDelta | ThinkingDelta | SignatureDelta | InputJsonDelta


class ContentBlockStop(Struct, tag="content_block_stop", tag_field="type", kw_only=True):
    index: int


class StopDelta(Struct, kw_only=True):
    stop_reason: str | None
    stop_sequence: str | None


class DeltaUsage(Struct, kw_only=True):
    input_tokens: int
    output_tokens: int
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0


class MessageDelta(Struct, tag="message_delta", tag_field="type", kw_only=True):
    delta: StopDelta
    usage: DeltaUsage


class MessageStop(Struct, tag="message_stop", tag_field="type", kw_only=True):
    pass


class Ping(Struct, tag="ping", tag_field="type", kw_only=True):
    pass


StreamEvent = (
    MessageStart
    | ContentBlockStart
    | ContentBlockDelta
    | ContentBlockStop
    | MessageDelta
    | MessageStop
    | Ping
)
