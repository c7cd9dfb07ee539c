"""TEMPORARY stand-ins for corral.prompts / corral.options names the engine imports, until they land.

Only what the engine needs to run end to end; delete this module when both packages provide the
names (the engine imports theirs first and uses these only on ImportError).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import msgspec

from corral.conversation import ToolCall
from corral.errors import InvalidRequestError
from corral.types import GenerationRequest, LoadOptions, SamplingParams


class ParsedDelta(msgspec.Struct, kw_only=True):
    content: str = ""
    thinking: str = ""
    tool_calls: list[ToolCall] = msgspec.field(default_factory=list)


class OutputParser:
    """Passes text through as content (no thinking or tool-call parsing)."""

    def feed(self, text: str) -> ParsedDelta:
        return ParsedDelta(content=text)

    def finish(self) -> ParsedDelta:
        return ParsedDelta()


class PromptPlan(msgspec.Struct, kw_only=True):
    text: str
    add_special: bool = True
    grammar: str | None = None
    stop: list[str] = msgspec.field(default_factory=list)
    images: list[bytes] = msgspec.field(default_factory=list)
    think: bool = False

    def new_parser(self) -> OutputParser:
        return OutputParser()


def capabilities(record: Any, gguf_kv: dict[str, Any] | None) -> list[str]:
    return ["completion"]


def check_capabilities(record: Any, gguf_kv: dict[str, Any] | None, needed: list[str]) -> None:
    return None


def plan_generate(record: Any, job: Any, *, gguf_template: str | None, bos_token: str,
                  eos_token: str) -> PromptPlan:
    if job.raw and (job.template or job.system or job.context):
        raise InvalidRequestError("raw mode does not support template, system, or context")
    if job.raw:
        return PromptPlan(text=job.prompt)
    system = job.system if job.system is not None else (getattr(record, "system", None) or "")
    return PromptPlan(text=f"{system}\n\n{job.prompt}" if system else job.prompt)


def plan_chat(record: Any, job: Any, *, gguf_template: str | None, bos_token: str, eos_token: str,
              count_tokens: Callable[[str], int] | None = None, num_ctx: int | None = None) -> PromptPlan:
    return PromptPlan(text="".join(f"{m.role}: {m.content}\n" for m in job.messages) + "assistant: ")


def merge_options(model_params: dict[str, Any] | None,
                  request_options: dict[str, Any] | None) -> dict[str, Any]:
    return {**(model_params or {}), **(request_options or {})}


def to_load_options(opts: dict[str, Any], config: Any, *, n_ctx_train: int | None = None,
                    embedding: bool = False, adapters: Sequence[str] = ()) -> LoadOptions:
    num_ctx = int(opts.get("num_ctx") or config.context_length)
    return LoadOptions(num_ctx=min(num_ctx, n_ctx_train or num_ctx), num_parallel=config.num_parallel,
                       num_batch=int(opts.get("num_batch", 512)), num_gpu=int(opts.get("num_gpu", -1)),
                       num_thread=int(opts.get("num_thread", 0)), flash_attention=config.flash_attention,
                       kv_cache_type=config.kv_cache_type, embedding=embedding, adapters=tuple(adapters))


def to_generation(opts: dict[str, Any], prompt_tokens: Sequence[int] = (), *, n_ctx: int | None = None,
                  grammar: str | None = None, shift: bool = True, logprobs: bool = False,
                  top_logprobs: int = 0) -> GenerationRequest:
    if not 0 <= top_logprobs <= 20:
        raise InvalidRequestError("top_logprobs must be between 0 and 20")
    names = set(SamplingParams.__struct_fields__) - {"logit_bias", "grammar"}
    sampling = SamplingParams(**{k: v for k, v in opts.items() if k in names}, grammar=grammar)
    stop = opts.get("stop") or []
    return GenerationRequest(prompt=list(prompt_tokens), sampling=sampling,
                             num_predict=int(opts.get("num_predict", -1)),
                             stop=[stop] if isinstance(stop, str) else list(stop),
                             num_keep=int(opts.get("num_keep", 4)), shift=shift,
                             logprobs=logprobs or top_logprobs > 0, top_logprobs=top_logprobs)
