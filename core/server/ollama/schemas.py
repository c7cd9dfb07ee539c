"""Wire structs of the Ollama native API (/api/*): requests as clients send them, responses as they expect."""

from __future__ import annotations

from typing import Any

import msgspec
from msgspec import Struct

# `format`: "" | "json" | a JSON-schema object; `keep_alive`: seconds or a Go duration string.
WireFormat = str | dict[str, Any] | None
WireKeepAlive = float | str | None
WireThink = bool | str | None


# ---- shared pieces -------------------------------------------------------------------------------
class ToolCallFunction(Struct, kw_only=True, omit_defaults=True, forbid_unknown_fields=True):
    """A tool call's function; ``arguments`` is a JSON object on this API."""

    name: str
    arguments: dict[str, Any] = msgspec.field(default_factory=dict)
    index: int | None = None


class ToolCallWire(Struct, kw_only=True, omit_defaults=True, forbid_unknown_fields=True):
    """``{id?, function: {index, name, arguments}}``."""

    function: ToolCallFunction
    id: str | None = None
    type: str | None = None


class ChatMessage(Struct, kw_only=True, omit_defaults=True, forbid_unknown_fields=True):
    """A message in a chat request or response. ``role`` is required by ollama-python."""

    role: str
    content: str = ""
    thinking: str | None = None
    images: list[str] | None = None
    tool_calls: list[ToolCallWire] | None = None
    tool_name: str | None = None
    tool_call_id: str | None = None


class ResponseMessage(Struct, kw_only=True, omit_defaults=True):
    """The assistant message of a chat chunk; ``role`` and ``content`` are always sent."""

    role: str
    content: str
    thinking: str | None = None
    tool_calls: list[ToolCallWire] | None = None


class ToolFunction(Struct, kw_only=True, omit_defaults=True, forbid_unknown_fields=True):
    """A tool's function: name, description, JSON-schema parameters."""

    name: str
    description: str = ""
    parameters: dict[str, Any] = msgspec.field(default_factory=dict)


class ToolWire(Struct, kw_only=True, omit_defaults=True, forbid_unknown_fields=True):
    """``{type: "function", function: {...}}``."""

    function: ToolFunction
    type: str = "function"


class TopLogprob(Struct, kw_only=True):
    """An alternative token and its log-probability."""

    token: str
    logprob: float
    bytes: list[int] | None = None


class Logprob(Struct, kw_only=True):
    """A generated token's log-probability with its alternatives."""

    token: str
    logprob: float
    bytes: list[int] | None = None
    top_logprobs: list[TopLogprob] | None = None


# ---- requests ------------------------------------------------------------------------------------
class GenerateRequest(Struct, kw_only=True, forbid_unknown_fields=True):
    """POST /api/generate."""

    model: str = ""
    prompt: str = ""
    suffix: str = ""
    system: str | None = None
    template: str | None = None
    context: list[int] | None = None
    stream: bool | None = None
    raw: bool = False
    format: WireFormat = None
    keep_alive: WireKeepAlive = None
    images: list[str] | None = None
    options: dict[str, Any] | None = None
    think: WireThink = None
    truncate: bool | None = None
    shift: bool | None = None
    logprobs: bool = False
    top_logprobs: int = 0
    grammar: str | None = None  # raw GBNF, as llama-server takes it (corral's extension)
    debug_render_only: bool = msgspec.field(default=False, name="_debug_render_only")


class ChatRequest(Struct, kw_only=True, forbid_unknown_fields=True):
    """POST /api/chat."""

    model: str = ""
    messages: list[ChatMessage] | None = None
    tools: list[ToolWire] | None = None
    stream: bool | None = None
    format: WireFormat = None
    keep_alive: WireKeepAlive = None
    options: dict[str, Any] | None = None
    think: WireThink = None
    truncate: bool | None = None
    shift: bool | None = None
    logprobs: bool = False
    top_logprobs: int = 0
    grammar: str | None = None  # raw GBNF, as llama-server takes it (corral's extension)
    debug_render_only: bool = msgspec.field(default=False, name="_debug_render_only")


class EmbedRequest(Struct, kw_only=True, forbid_unknown_fields=True):
    """POST /api/embed: ``input`` is a string or a list of strings."""

    model: str = ""
    input: str | list[str] | None = None
    truncate: bool | None = None
    dimensions: int | None = None
    keep_alive: WireKeepAlive = None
    options: dict[str, Any] | None = None


class EmbeddingsRequest(Struct, kw_only=True, forbid_unknown_fields=True):
    """POST /api/embeddings (legacy, one prompt)."""

    model: str = ""
    prompt: str = ""
    keep_alive: WireKeepAlive = None
    options: dict[str, Any] | None = None


class ShowRequest(Struct, kw_only=True, forbid_unknown_fields=True):
    """POST /api/show (``name`` is the deprecated alias of ``model``); ``system``, ``template`` and
    ``options`` override what the model has, in what is reported."""

    model: str = ""
    name: str = ""
    verbose: bool = False
    system: str = ""
    template: str = ""
    options: dict[str, Any] | None = None


class DeleteRequest(Struct, kw_only=True, forbid_unknown_fields=True):
    """DELETE /api/delete."""

    model: str = ""
    name: str = ""


class TransferRequest(Struct, kw_only=True, forbid_unknown_fields=True):
    """POST /api/pull and /api/push. The Go client always sends ``username`` and ``password`` (empty)."""

    model: str = ""
    name: str = ""
    insecure: bool = False
    stream: bool | None = None
    username: str = ""
    password: str = ""


class CopyRequest(Struct, kw_only=True, forbid_unknown_fields=True):
    """POST /api/copy."""

    source: str
    destination: str


class CreateRequest(Struct, kw_only=True, forbid_unknown_fields=True):
    """POST /api/create (ollama-python sends ``from``, ``files``, ``parameters``, ...)."""

    model: str = ""
    name: str = ""
    from_: str | None = msgspec.field(default=None, name="from")
    files: dict[str, str] | None = None
    adapters: dict[str, str] | None = None
    template: str | None = None
    system: str | None = None
    license: str | list[str] | None = None
    parameters: dict[str, Any] | None = None
    messages: list[ChatMessage] | None = None
    quantize: str | None = None
    quantization: str | None = None
    draft_files: dict[str, str] | None = None  # Modelfile DRAFT: the draft model's GGUF, uploaded as a blob
    draft_quantize: str | None = None
    renderer: str | None = None
    parser: str | None = None
    requires: str | None = None
    modelfile: str | None = None
    stream: bool | None = None


# ---- responses -----------------------------------------------------------------------------------
class DebugInfo(Struct, kw_only=True, omit_defaults=True):
    """``_debug_info`` of a ``_debug_render_only`` answer: the prompt as rendered, and its size."""

    rendered_template: str
    image_count: int = 0
    token_count: int = 0


class GenerateResponse(Struct, kw_only=True, omit_defaults=True):
    """One /api/generate chunk. ``model``, ``created_at``, ``response`` and ``done`` are always sent."""

    model: str
    created_at: str
    response: str
    done: bool
    thinking: str | None = None
    done_reason: str | None = None
    context: list[int] | None = None
    tool_calls: list[ToolCallWire] | None = None
    total_duration: int = 0
    load_duration: int = 0
    prompt_eval_count: int = 0
    prompt_eval_duration: int = 0
    eval_count: int = 0
    eval_duration: int = 0
    logprobs: list[Logprob] | None = None
    debug_info: DebugInfo | None = msgspec.field(default=None, name="_debug_info")
    # A streamed load-only request's progress lines, shaped as /api/pull's (corral's addition: Ollama
    # sends only the final line; its clients ignore these fields).
    status: str | None = None
    completed: int = 0
    total: int = 0


class ChatResponse(Struct, kw_only=True, omit_defaults=True):
    """One /api/chat chunk."""

    model: str
    created_at: str
    message: ResponseMessage
    done: bool
    done_reason: str | None = None
    total_duration: int = 0
    load_duration: int = 0
    prompt_eval_count: int = 0
    prompt_eval_duration: int = 0
    eval_count: int = 0
    eval_duration: int = 0
    logprobs: list[Logprob] | None = None
    debug_info: DebugInfo | None = msgspec.field(default=None, name="_debug_info")
    status: str | None = None  # load progress, as in GenerateResponse
    completed: int = 0
    total: int = 0


class EmbedResponse(Struct, kw_only=True, omit_defaults=True):
    """POST /api/embed."""

    model: str
    embeddings: list[list[float]]
    total_duration: int = 0
    load_duration: int = 0
    prompt_eval_count: int = 0


class EmbeddingsResponse(Struct, kw_only=True):
    """POST /api/embeddings (legacy)."""

    embedding: list[float]


class Details(Struct, kw_only=True, omit_defaults=True):
    """``details`` in tags, ps and show."""

    parent_model: str = ""
    format: str = "gguf"
    family: str = ""
    families: list[str] | None = None
    parameter_size: str = ""
    quantization_level: str = ""
    context_length: int = 0  # the model's trained context (GGUF <arch>.context_length)
    embedding_length: int = 0  # its hidden size (GGUF <arch>.embedding_length)


class ListedModel(Struct, kw_only=True, omit_defaults=True):
    """One /api/tags entry."""

    name: str
    model: str
    modified_at: str
    size: int
    digest: str
    details: Details
    capabilities: list[str] | None = None


class TagsResponse(Struct, kw_only=True):
    """GET /api/tags: ``models`` is never null."""

    models: list[ListedModel]


class PsModel(Struct, kw_only=True, omit_defaults=True):
    """One /api/ps entry."""

    name: str
    model: str
    size: int
    digest: str
    details: Details
    expires_at: str
    size_vram: int  # 0 on CPU; always sent so clients can compute the GPU share
    context_length: int


class PsResponse(Struct, kw_only=True):
    """GET /api/ps."""

    models: list[PsModel]


class ShowResponse(Struct, kw_only=True, omit_defaults=True):
    """POST /api/show. ``model_info`` is required by ollama-python, so it is always sent."""

    model_info: dict[str, Any]
    modelfile: str = ""
    parameters: str = ""
    template: str = ""
    system: str = ""
    license: str = ""
    details: Details | None = None
    messages: list[ChatMessage] | None = None
    capabilities: list[str] | None = None
    projector_info: dict[str, Any] | None = None  # the projector GGUF's metadata, as model_info
    draft_info: dict[str, Any] | None = None  # the draft model GGUF's metadata (Modelfile DRAFT)
    tensors: list[dict[str, Any]] | None = None
    modified_at: str = ""
    renderer: str = ""
    parser: str = ""
    requires: str = ""


class ProgressResponse(Struct, kw_only=True, omit_defaults=True):
    """A pull/push/create progress line."""

    status: str
    digest: str = ""
    total: int = 0
    completed: int = 0


class VersionResponse(Struct, kw_only=True):
    """GET /api/version: the Ollama API version corral implements, and corral's own."""

    version: str
    corral_version: str


class TokenizeRequest(Struct, kw_only=True, forbid_unknown_fields=True):
    """POST /api/tokenize."""

    model: str = ""
    content: str | None = None
    add_special: bool = True
    parse_special: bool = True
    keep_alive: WireKeepAlive = None
    options: dict[str, Any] | None = None


class TokenizeResponse(Struct, kw_only=True):
    """Token ids of the content in the model's vocabulary."""

    model: str
    tokens: list[int]


class DetokenizeRequest(Struct, kw_only=True, forbid_unknown_fields=True):
    """POST /api/detokenize."""

    model: str = ""
    tokens: list[int] | None = None
    render_special: bool = True
    keep_alive: WireKeepAlive = None
    options: dict[str, Any] | None = None


class DetokenizeResponse(Struct, kw_only=True):
    """The text of the tokens."""

    model: str
    content: str
