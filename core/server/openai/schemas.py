"""Wire structs of the OpenAI-compatible API (/v1/*)."""

from __future__ import annotations

from typing import Any

import msgspec
from msgspec import Struct


# ---- requests ------------------------------------------------------------------------------------
class ImageURL(Struct, kw_only=True, forbid_unknown_fields=True):
    """``image_url`` as an object."""

    url: str
    detail: str | None = None


class InputAudio(Struct, kw_only=True, forbid_unknown_fields=True):
    """``input_audio``: base64 audio and its format (wav, mp3, flac; the bytes say which)."""

    data: str
    format: str = ""


class ContentPart(Struct, kw_only=True, forbid_unknown_fields=True):
    """One part of an array ``content``: text, an image (data URI or http(s) URL) or audio."""

    type: str
    text: str | None = None
    image_url: str | ImageURL | None = None
    input_audio: InputAudio | None = None


class FunctionCall(Struct, kw_only=True, omit_defaults=True):
    """A tool call's function; ``arguments`` is a JSON *string* on this API."""

    name: str = ""
    arguments: str = ""


class ToolCall(Struct, kw_only=True, omit_defaults=True):
    """``{id, type: "function", function: {name, arguments}}`` (``index`` in stream deltas)."""

    function: FunctionCall
    id: str | None = None
    type: str | None = None  # always "function" in responses
    index: int | None = None


class RequestFunctionCall(Struct, kw_only=True, forbid_unknown_fields=True):
    """A tool call's function in a request's history; ``arguments`` is a JSON *string*."""

    name: str = ""
    arguments: str = ""


class RequestToolCall(Struct, kw_only=True, forbid_unknown_fields=True):
    """An earlier assistant turn's tool call, as a client sends it back."""

    function: RequestFunctionCall
    id: str | None = None
    type: str | None = None  # "function" (the only kind)
    index: int | None = None


class RequestMessage(Struct, kw_only=True, forbid_unknown_fields=True):
    """A message as clients send it: ``content`` a string, an array of parts, or null."""

    role: str
    content: str | list[ContentPart] | None = None
    name: str | None = None  # tool messages: the tool's name
    tool_calls: list[RequestToolCall] | None = None
    tool_call_id: str | None = None
    reasoning: str | None = None
    reasoning_content: str | None = None
    refusal: str | None = None  # an assistant turn the model refused: its refusal text


class FunctionDef(Struct, kw_only=True, forbid_unknown_fields=True):
    """A tool definition's function."""

    name: str
    description: str = ""
    parameters: dict[str, Any] = msgspec.field(default_factory=dict)
    strict: bool | None = None  # the arguments must follow ``parameters`` exactly


class ToolDef(Struct, kw_only=True, forbid_unknown_fields=True):
    """``{type: "function", function: {...}}``."""

    function: FunctionDef
    type: str = "function"


class StreamOptions(Struct, kw_only=True, forbid_unknown_fields=True):
    """``stream_options``."""

    include_usage: bool = False


class JSONSchemaFormat(Struct, kw_only=True, forbid_unknown_fields=True):
    """``response_format.json_schema``."""

    name: str = ""
    description: str | None = None
    schema: dict[str, Any] | None = None
    strict: bool | None = None


class ResponseFormat(Struct, kw_only=True, forbid_unknown_fields=True):
    """``response_format``: text, json_object or json_schema."""

    type: str = "text"
    json_schema: JSONSchemaFormat | None = None


class Reasoning(Struct, kw_only=True, forbid_unknown_fields=True):
    """``reasoning: {effort}``."""

    effort: str | None = None


class NamedFunction(Struct, kw_only=True, forbid_unknown_fields=True):
    """``tool_choice.function``."""

    name: str


class AllowedTools(Struct, kw_only=True, forbid_unknown_fields=True):
    """``tool_choice.allowed_tools``: the tools the model may call (``mode`` auto or required)."""

    mode: str
    tools: list[dict[str, Any]]


class NamedToolChoice(Struct, kw_only=True, forbid_unknown_fields=True):
    """``tool_choice`` as an object: one named function, or a subset of the tools."""

    type: str
    function: NamedFunction | None = None
    allowed_tools: AllowedTools | None = None


class ChatCompletionRequest(Struct, kw_only=True, forbid_unknown_fields=True):
    """POST /v1/chat/completions."""

    model: str = ""
    messages: list[RequestMessage] | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    seed: int | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    stop: str | list[str] | None = None
    temperature: float | None = None
    top_p: float | None = None
    response_format: ResponseFormat | None = None
    reasoning_effort: str | None = None
    reasoning: Reasoning | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    tools: list[ToolDef] | None = None
    tool_choice: str | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    n: int | None = None
    logit_bias: dict[str, Any] | None = None
    user: str | None = None
    # llama-server's and Ollama's extensions
    top_k: int | None = None
    min_p: float | None = None
    grammar: str | None = None
    debug_render_only: bool = msgspec.field(default=False, name="_debug_render_only")


class CompletionRequest(Struct, kw_only=True, forbid_unknown_fields=True):
    """POST /v1/completions: ``prompt`` is text (token arrays are not supported)."""

    model: str = ""
    prompt: str | list[str] | None = None
    suffix: str | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    max_tokens: int | None = None
    seed: int | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    stop: str | list[str] | None = None
    temperature: float | None = None
    top_p: float | None = None
    logprobs: int | None = None
    echo: bool | None = None
    n: int | None = None
    logit_bias: dict[str, Any] | None = None
    user: str | None = None
    top_k: int | None = None
    min_p: float | None = None
    grammar: str | None = None
    debug_render_only: bool = msgspec.field(default=False, name="_debug_render_only")


class EmbeddingRequest(Struct, kw_only=True, forbid_unknown_fields=True):
    """POST /v1/embeddings."""

    model: str = ""
    input: str | list[str] | None = None
    dimensions: int | None = None
    encoding_format: str | None = None
    user: str | None = None


# ---- responses -----------------------------------------------------------------------------------
class Usage(Struct, kw_only=True):
    """Token counts."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class TopLogprob(Struct, kw_only=True):
    """An alternative token."""

    token: str
    logprob: float
    bytes: list[int] | None


class TokenLogprob(Struct, kw_only=True):
    """A chosen token with its alternatives."""

    token: str
    logprob: float
    bytes: list[int] | None
    top_logprobs: list[TopLogprob]


class ChoiceLogprobs(Struct, kw_only=True):
    """``choices[].logprobs`` on chat."""

    content: list[TokenLogprob]


class CompletionLogprobs(Struct, kw_only=True):
    """``choices[].logprobs`` on legacy completions."""

    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]]
    text_offset: list[int]


class ResponseMessage(Struct, kw_only=True, omit_defaults=True):
    """The assistant message of a non-streamed chat completion."""

    role: str
    content: str | None
    reasoning_content: str | None = None
    reasoning: str | None = None
    tool_calls: list[ToolCall] | None = None


class ChatChoice(Struct, kw_only=True):
    """One choice of a chat completion."""

    index: int
    message: ResponseMessage
    finish_reason: str | None
    logprobs: ChoiceLogprobs | None = None


class DebugInfo(Struct, kw_only=True, omit_defaults=True):
    """``_debug_info`` of a ``_debug_render_only`` answer: the prompt as rendered, and its size."""

    rendered_template: str
    image_count: int = 0
    token_count: int = 0


class ChatCompletion(Struct, kw_only=True, omit_defaults=True):
    """A non-streamed chat completion."""

    id: str
    object: str
    created: int
    model: str
    system_fingerprint: str
    choices: list[ChatChoice]
    usage: Usage
    debug_info: DebugInfo | None = msgspec.field(default=None, name="_debug_info")


class Delta(Struct, kw_only=True, omit_defaults=True):
    """A streamed change to the assistant message."""

    role: str | None = None
    content: str | None = None
    reasoning_content: str | None = None
    reasoning: str | None = None
    tool_calls: list[ToolCall] | None = None


class ChunkChoice(Struct, kw_only=True):
    """One choice of a streamed chunk; ``finish_reason`` is sent as null until the end."""

    index: int
    delta: Delta
    finish_reason: str | None
    logprobs: ChoiceLogprobs | None = None


class ChatCompletionChunk(Struct, kw_only=True, omit_defaults=True):
    """One SSE event of a streamed chat completion."""

    id: str
    object: str
    created: int
    model: str
    system_fingerprint: str
    choices: list[ChunkChoice]
    usage: Usage | None = None


class CompletionChoice(Struct, kw_only=True):
    """One choice of a legacy completion (streamed or not)."""

    text: str
    index: int
    finish_reason: str | None
    logprobs: CompletionLogprobs | None = None


class Completion(Struct, kw_only=True, omit_defaults=True):
    """A legacy completion or one streamed chunk of it."""

    id: str
    object: str
    created: int
    model: str
    system_fingerprint: str
    choices: list[CompletionChoice]
    usage: Usage | None = None
    debug_info: DebugInfo | None = msgspec.field(default=None, name="_debug_info")


class Embedding(Struct, kw_only=True):
    """One vector: floats, or base64 of little-endian float32."""

    object: str
    embedding: list[float] | str
    index: int


class EmbeddingUsage(Struct, kw_only=True):
    """Embedding token counts."""

    prompt_tokens: int
    total_tokens: int


class EmbeddingList(Struct, kw_only=True):
    """POST /v1/embeddings response."""

    object: str
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage


class Model(Struct, kw_only=True):
    """A model in /v1/models."""

    id: str
    object: str
    created: int
    owned_by: str


class ModelList(Struct, kw_only=True):
    """GET /v1/models."""

    object: str
    data: list[Model]
