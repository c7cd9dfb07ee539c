"""OpenAI wire requests to core jobs, every field checked here (answers go back in ``answers``)."""

from __future__ import annotations

import json
import re
from typing import Any

import msgspec

from corral.conversation import Message, Tool, ToolCall
from corral.errors import GrammarError, InvalidRequestError
from corral.jobs import ChatJob, EmbedJob, GenerateJob
from corral.media import AUDIO_FORMATS, inspect_media
from corral.prompts.grammar import schema_to_gbnf
from corral.server import common
from corral.server.fetch import is_remote
from corral.server.openai import schemas as S

# compat(ollama): openai/openai.go maps reasoning_effort; we pass at most "high" to the prompt layer.
_EFFORT: dict[str, bool | str] = {"none": False, "minimal": "low", "low": "low", "medium": "medium",
                                  "high": "high", "max": "high", "xhigh": "high", "ultra": "high"}


# ---- requests ------------------------------------------------------------------------------------
MAX_CHOICES = 16  # ``n``: choices one request may ask for (each is a sequence in its own slot)
MAX_USER_CHARS = 256


def choices(n: int | None) -> int:
    """``n``: how many choices to sample (1..MAX_CHOICES)."""
    if n is None:
        return 1
    if not 1 <= n <= MAX_CHOICES:
        raise InvalidRequestError(f"n must be between 1 and {MAX_CHOICES}, not {n}")
    return n


def end_user(user: str | None) -> str:
    """``user``: the end user a request is made for (kept in corral's access log, as OpenAI keeps it for
    abuse monitoring); "" when not given."""
    if user is None:
        return ""
    if len(user) > MAX_USER_CHARS or not user.isprintable():
        raise InvalidRequestError(f"user must be printable text of at most {MAX_USER_CHARS} characters")
    return user


def logit_bias(value: dict[str, Any] | None) -> dict[int, float]:
    """OpenAI's ``logit_bias``: token ids as decimal strings, each mapped to a bias from -100 to 100."""
    out: dict[int, float] = {}
    for key, bias in (value or {}).items():
        if not key.strip().isdigit():
            raise InvalidRequestError(
                f"logit_bias: {key[:40]!r} is not a token id (use the token's number as a string: \"1234\")")
        if isinstance(bias, bool) or not isinstance(bias, int | float):
            raise InvalidRequestError(
                f"logit_bias: the bias of token {key} must be a number from -100 to 100")
        out[int(key)] = float(bias)
    return out


def _sampling(req: S.ChatCompletionRequest | S.CompletionRequest, max_tokens: int | None) -> dict[str, Any]:
    opts: dict[str, Any] = {}
    if max_tokens is not None:
        if max_tokens < 0:
            raise InvalidRequestError("max_tokens must be a non-negative integer")
        opts["num_predict"] = max_tokens
    for key in ("seed", "frequency_penalty", "presence_penalty", "top_k", "min_p"):
        value = getattr(req, key)
        if value is not None:
            opts[key] = value
    if req.stop is not None:
        opts["stop"] = [req.stop] if isinstance(req.stop, str) else list(req.stop)
    # compat(ollama): temperature and top_p default to 1.0 on /v1 when the request leaves them out.
    opts["temperature"] = 1.0 if req.temperature is None else req.temperature
    opts["top_p"] = 1.0 if not req.top_p else req.top_p
    return opts


def with_seed_offset(options: dict[str, Any], i: int) -> dict[str, Any]:
    """The options of choice ``i`` of ``n``: with a seed, choice i samples with seed + i, so the choices
    differ and each one still reproduces."""
    seed = options.get("seed")
    if i == 0 or not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        return options
    return {**options, "seed": (seed + i) % (1 << 32)}


def _think(req: S.ChatCompletionRequest) -> bool | str | None:
    effort = req.reasoning_effort or (req.reasoning.effort if req.reasoning else None)
    if effort is None:
        return None
    key = effort.strip().lower()
    if key not in _EFFORT:
        raise InvalidRequestError(
            f"invalid reasoning_effort: {effort!r} (use none, minimal, low, medium or high)")
    return _EFFORT[key]


_SCHEMA_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


def _format(rf: S.ResponseFormat | None) -> str | dict[str, Any] | None:
    if rf is None or rf.type == "text":
        return None
    if rf.type == "json_object":
        return "json"
    if rf.type == "json_schema":
        js = rf.json_schema
        if js is None or js.schema is None:
            raise InvalidRequestError("response_format.json_schema.schema is required for type json_schema")
        # compat(openai): the name labels the schema: letters, digits, '_' and '-', at most 64
        if js.name and not _SCHEMA_NAME.fullmatch(js.name):
            raise InvalidRequestError("response_format.json_schema.name must be 1 to 64 letters, digits, '_' "
                                      "or '-'")
        return js.schema
    raise InvalidRequestError(f"invalid response_format type: {rf.type!r}")


def _arguments(text: str) -> dict[str, Any]:
    if not text.strip():
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        raise InvalidRequestError("invalid tool call arguments: not valid JSON") from None
    if not isinstance(value, dict):
        raise InvalidRequestError("invalid tool call arguments: must be a JSON object")
    return value


def _image_url(part: S.ContentPart) -> str:
    img = part.image_url
    if isinstance(img, S.ImageURL) and img.detail not in (None, "auto", "high"):
        # mtmd feeds the projector the image at the resolution it was trained on: there is no "low"
        raise InvalidRequestError(f"image_url.detail {img.detail!r} is not supported: the model's projector "
                                  "sets the resolution (use auto or high)")
    return img if isinstance(img, str) else (img.url if img else "")


def remote_image_urls(req: S.ChatCompletionRequest) -> list[str]:
    """The http(s) ``image_url``s of a request: the route fetches them (if allowed) before converting."""
    return [_image_url(p) for m in req.messages or [] if isinstance(m.content, list) for p in m.content
            if p.type == "image_url" and is_remote(_image_url(p))]


def _audio(part: S.ContentPart) -> bytes:
    clip = part.input_audio
    if clip is None or not clip.data:
        raise InvalidRequestError("input_audio needs data (base64 audio)")
    data = common.decode_image(clip.data, "input_audio")
    if clip.format:
        said = clip.format.strip().lower()
        if said not in AUDIO_FORMATS:
            raise InvalidRequestError(f"input_audio.format {clip.format!r} is not supported (use "
                                      f"{', '.join(AUDIO_FORMATS)})")
        found = inspect_media(data, what="input_audio").format
        if found != said:
            raise InvalidRequestError(f"input_audio.format says {said} but the data is {found}")
    return data


def _calls(m: S.RequestMessage, names_by_id: dict[str, str]) -> list[ToolCall]:
    calls = []
    for i, c in enumerate(m.tool_calls or []):
        if c.type not in (None, "function"):
            raise InvalidRequestError(f"tool call type {c.type!r} is not supported: only function")
        calls.append(ToolCall(name=c.function.name, arguments=_arguments(c.function.arguments),
                              id=c.id or "", index=c.index if c.index is not None else i))
        if c.id:
            names_by_id[c.id] = c.function.name
    return calls


def _messages(wire: list[S.RequestMessage], fetched: dict[str, bytes]) -> list[Message]:
    out: list[Message] = []
    names_by_id: dict[str, str] = {}
    for m in wire:
        role = m.role.strip().lower()
        role = "system" if role == "developer" else role
        if m.name is not None and role != "tool":
            # chat templates have no place for a participant's name: it would never reach the model
            raise InvalidRequestError(f"name is supported on tool messages only, not on a {role} message")
        calls = _calls(m, names_by_id)
        thinking = m.reasoning_content or m.reasoning or ""
        tool_name = (m.name or names_by_id.get(m.tool_call_id or "", "")) if role == "tool" else ""
        base = Message(role=role, thinking=thinking, tool_calls=calls, tool_name=tool_name,
                       tool_call_id=m.tool_call_id or "")
        content = m.content
        if m.refusal is not None:
            if role != "assistant" or content:
                raise InvalidRequestError("refusal belongs to an assistant message without content")
            content = m.refusal  # what the assistant said, as the model should see it next turn
        if content is None or isinstance(content, str):
            out.append(msgspec.structs.replace(base, content=content or ""))
            continue
        # compat(ollama): each part of an array content becomes its own message with the same role.
        for part in content:
            if part.type == "text":
                out.append(msgspec.structs.replace(base, content=part.text or ""))
            elif part.type == "image_url":
                url = _image_url(part)
                if url in fetched:
                    out.append(msgspec.structs.replace(base, images=[fetched[url]]))
                elif url.startswith("data:"):
                    out.append(msgspec.structs.replace(base, images=[common.decode_image(url, "image_url")]))
                else:
                    raise InvalidRequestError("invalid image_url: use a base64 data URI or an http(s) URL")
            elif part.type == "input_audio":
                # compat(ollama): audio travels with the images; its bytes tell which it is
                out.append(msgspec.structs.replace(base, images=[_audio(part)]))
            else:
                raise InvalidRequestError(f"invalid content part type: {part.type!r}")
            base = msgspec.structs.replace(base, tool_calls=[], continues=True)  # attach calls once
    return out


def _tools(req: S.ChatCompletionRequest) -> list[Tool]:
    tools = []
    for t in req.tools or []:
        if t.type != "function":
            raise InvalidRequestError(f"tool type {t.type!r} is not supported: only function")
        tools.append(Tool(name=t.function.name, description=t.function.description,
                          parameters=dict(t.function.parameters), type=t.type))
    return tools


def _tool_choice(req: S.ChatCompletionRequest, tools: list[Tool]) -> tuple[str, str, list[Tool]]:
    """(auto | none | required, the forced tool's name, the tools the model may call)."""
    choice = req.tool_choice
    if choice is None:
        return "auto", "", tools
    if isinstance(choice, str):
        if choice not in ("auto", "none", "required"):
            raise InvalidRequestError(f"invalid tool_choice {choice!r}: use auto, none, required or "
                                      '{"type": "function", "function": {"name": ...}}')
        return choice, "", tools
    if choice.type == "function":
        if choice.function is None or not choice.function.name:
            raise InvalidRequestError("tool_choice of type function needs function.name")
        return "required", choice.function.name, tools
    if choice.type == "allowed_tools" and choice.allowed_tools is not None:
        allowed = choice.allowed_tools
        if allowed.mode not in ("auto", "required"):
            raise InvalidRequestError("tool_choice.allowed_tools.mode must be auto or required")
        names = set()
        for entry in allowed.tools:
            fn = entry.get("function")
            name = fn.get("name") if isinstance(fn, dict) else None
            if entry.get("type") != "function" or not isinstance(name, str):
                raise InvalidRequestError('tool_choice.allowed_tools.tools holds {"type": "function", '
                                          '"function": {"name": ...}} entries')
            if name not in {t.name for t in tools}:
                raise InvalidRequestError(f"tool_choice.allowed_tools names {name!r}, which is not among the "
                                          "request's tools")
            names.add(name)
        return allowed.mode, "", [t for t in tools if t.name in names]
    raise InvalidRequestError(f"invalid tool_choice type {choice.type!r}: use function or allowed_tools")


def _check_strict(req: S.ChatCompletionRequest, tools: list[Tool]) -> bool:
    """Whether a tool the model may call is ``strict`` (its calls then follow the tools' schemas: a
    grammar forces the call for tool_choice required, a lazy one holds from the call's opener for
    auto); a strict tool whose schema cannot be enforced is refused."""
    names = {t.name for t in tools}
    strict = False
    for t in req.tools or []:
        if not t.function.strict or t.function.name not in names:
            continue
        try:
            schema_to_gbnf(t.function.parameters or {"type": "object"})
        except GrammarError as exc:
            raise InvalidRequestError(f"tool {t.function.name!r} is strict but its parameters cannot be "
                                      f"enforced: {exc.message}") from None
        strict = True
    return strict


def chat_job(req: S.ChatCompletionRequest, fetched: dict[str, bytes] | None = None) -> ChatJob:
    """A ChatJob from /v1/chat/completions; ``fetched`` holds the bytes of its http(s) image URLs."""
    model = common.require_model(req.model)
    if not req.messages:
        raise InvalidRequestError("[] is too short - 'messages'")
    top = req.top_logprobs or 0
    choice, forced, tools = _tool_choice(req, _tools(req))
    strict = _check_strict(req, tools)
    max_tokens = req.max_tokens if req.max_tokens is not None else req.max_completion_tokens
    return ChatJob(model=model, messages=_messages(req.messages, fetched or {}), tools=tools,
                   format=_format(req.response_format), options=_sampling(req, max_tokens),
                   think=_think(req), logprobs=bool(req.logprobs) or top > 0, top_logprobs=top,
                   tool_choice=choice, forced_tool=forced, grammar=req.grammar, strict_tools=strict,
                   logit_bias=logit_bias(req.logit_bias))


def completion_job(req: S.CompletionRequest) -> GenerateJob:
    """A raw-free GenerateJob from /v1/completions (the template applies, as in Ollama)."""
    model = common.require_model(req.model)
    prompt = req.prompt
    if isinstance(prompt, list):
        if len(prompt) != 1:
            raise InvalidRequestError("prompt must be a string or a list with exactly one string")
        prompt = prompt[0]
    if prompt is None:
        raise InvalidRequestError("prompt is required")
    if req.echo and req.logprobs is not None:
        raise InvalidRequestError("echo with logprobs is not supported: corral does not score the prompt's "
                                  "own tokens")
    top = req.logprobs or 0
    return GenerateJob(model=model, prompt=prompt, suffix=req.suffix or "",
                       options=_sampling(req, req.max_tokens), logprobs=req.logprobs is not None,
                       top_logprobs=top, grammar=req.grammar, logit_bias=logit_bias(req.logit_bias))


def embed_job(req: S.EmbeddingRequest) -> tuple[EmbedJob, bool]:
    """An EmbedJob from /v1/embeddings and whether the answer is base64."""
    model = common.require_model(req.model)
    enc = (req.encoding_format or "float").lower()
    if enc not in ("float", "base64"):
        raise InvalidRequestError(f"invalid encoding_format: {req.encoding_format!r} (use float or base64)")
    if req.input is None:
        raise InvalidRequestError("input is required")
    inputs = [req.input] if isinstance(req.input, str) else list(req.input)
    if not inputs or any(not i for i in inputs):
        raise InvalidRequestError("invalid input: must be a non-empty string or a list of non-empty strings")
    return EmbedJob(model=model, inputs=inputs, dimensions=req.dimensions), enc == "base64"
