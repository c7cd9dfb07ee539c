"""Ollama `options`: the option table, merge order, type checks, and the split into load/generation."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import msgspec

from corral.errors import InvalidRequestError
from corral.types import GenerationRequest, JsonConstraint, LoadOptions, SamplingParams

if TYPE_CHECKING:
    from corral.config import Config

__all__ = [
    "LOAD_KEYS", "MIN_NUM_CTX", "OPTIONS", "REMOVED_NEUTRAL", "REMOVED_OPTIONS", "Option", "check_option",
    "default_options", "for_prompt", "merge_options", "parse_parameter", "parse_tensor_split",
    "request_options", "to_generation",
    "to_load_options",
]

log = logging.getLogger("corral.options")


class Option(msgspec.Struct, frozen=True):
    """One key of Ollama's ``options`` (and Modelfile ``PARAMETER``)."""

    name: str
    type: str  # int | float | bool | list[str] | list[float]
    default: Any  # None = decided elsewhere (config, backend)
    load: bool  # a change means reloading the model
    help: str


OPTIONS: dict[str, Option] = {o.name: o for o in (
    Option("num_ctx", "int", None, True, "context length per sequence (default CORRAL_CONTEXT_LENGTH)"),
    Option("num_batch", "int", 512, True, "prompt tokens evaluated per batch"),
    Option("num_gpu", "int", -1, True, "layers offloaded to the GPU; -1 = as many as fit, 0 = CPU only"),
    Option("main_gpu", "int", 0, True, "GPU used when the model sits on a single one"),
    Option("use_mmap", "bool", None, True, "memory-map the model file (default: backend decides)"),
    Option("num_thread", "int", 0, True, "CPU threads; 0 = backend decides"),
    Option("tensor_split", "list[float]", None, True,
           "share of the layers per GPU or RPC worker, in llama.cpp's device order; unset = by free memory"),
    Option("draft_num_predict", "int", None, True,
           "tokens drafted per step for speculative decoding (0 turns it off): with a DRAFT model the "
           "draft model's tokens, 4 by default; without one the most that prompt lookup (n-gram) "
           "drafting guesses, adaptive up to 16 by default"),
    Option("num_keep", "int", 4, False, "prompt tokens kept on a context shift; -1 = whole prompt"),
    Option("seed", "int", -1, False, "sampling seed; -1 = random"),
    Option("num_predict", "int", -1, False, "tokens to generate; -1 = until a stop"),
    Option("top_k", "int", 40, False, "keep the k most likely tokens; 0 disables"),
    Option("top_p", "float", 0.9, False, "nucleus sampling threshold, 0..1"),
    Option("min_p", "float", 0.0, False, "drop tokens below min_p x the best one's probability"),
    Option("typical_p", "float", 1.0, False, "locally typical sampling, 0..1; 1 disables"),
    Option("repeat_last_n", "int", 64, False, "tokens the penalties look back at; 0 off, -1 = num_ctx"),
    Option("temperature", "float", 0.8, False, "sampling temperature; 0 = greedy"),
    Option("repeat_penalty", "float", 1.0, False, "penalty for repeated tokens; 1 disables"),
    Option("presence_penalty", "float", 0.0, False, "penalty for tokens already present"),
    Option("frequency_penalty", "float", 0.0, False, "penalty growing with a token's count"),
    Option("stop", "list[str]", None, False, "stop strings (never part of the output)"),
)}

LOAD_KEYS = frozenset(k for k, o in OPTIONS.items() if o.load)

# compat(ollama): options Ollama removed, which clients (ollama-python's Options) can still send, each with
# the value that asks for what corral does anyway (None: any value, the option only tunes one that is off).
# A request that sends one with another value asks for something corral does not do: a 400, not a shrug.
REMOVED_NEUTRAL: dict[str, Any] = {
    "mirostat": 0, "mirostat_tau": None, "mirostat_eta": None, "tfs_z": 1.0, "low_vram": False,
    "f16_kv": True, "logits_all": False, "vocab_only": False, "use_mlock": False, "numa": False,
    # llama.cpp dropped penalize_nl: its penalties count newlines like any token, which is "true"
    "penalize_newline": True,
}
REMOVED_OPTIONS = frozenset(REMOVED_NEUTRAL)

_TYPE_WORDS = {"int": "integer", "float": "float", "bool": "boolean", "list[str]": "array of strings",
               "list[float]": "array of numbers"}
_MAX_CTX = 1 << 20  # no model is trained on more; a bigger request is a typo or an attack
_MAX_STOPS, _MAX_STOP_LEN = 64, 1024
_MAX_THREADS, _MAX_GPUS, _MAX_LAYERS = 1024, 64, 100_000
MAX_DRAFT_TOKENS = 64  # draft_num_predict at most (each drafted token costs a row of logits)
MIN_NUM_CTX = 4  # compat(ollama): a smaller context (from a request, a Modelfile or the config) becomes 4
MAX_SPLIT = 16  # llama.cpp's split devices at most (llama_max_devices)


def parse_tensor_split(value: Any, *, partial: bool = False) -> list[float]:
    """A ``tensor_split``: numbers, or text such as ``"3,1"`` (a Modelfile line), or a list of either.

    The one check of the option: 1 to 16 finite, non-negative shares, not all zero (``partial``: one
    Modelfile line of several, which may be all zero).

    Raises:
        ValueError: anything else; the message ("must be ...") follows the option's name.
    """
    items = value if isinstance(value, list | tuple) else [value]
    out: list[float] = []
    for item in items:
        if isinstance(item, bool):
            raise ValueError("must be numbers, not booleans")
        if isinstance(item, str):
            parts = [p for p in item.replace(",", " ").split() if p]
            try:
                out += [float(p) for p in parts]
            except ValueError:
                raise ValueError(f'must be numbers such as "3,1", not "{item[:40]}"') from None
        elif isinstance(item, int | float):
            out.append(float(item))
        else:
            raise ValueError("must be an array of numbers")
    if not 1 <= len(out) <= MAX_SPLIT or not all(math.isfinite(x) and x >= 0 for x in out) \
            or (not partial and sum(out) == 0):
        raise ValueError(f"must be 1 to {MAX_SPLIT} non-negative numbers, not all zero")
    return out


def default_options() -> dict[str, Any]:
    """The defaults of every option that has one (``num_ctx``, ``use_mmap``, ``stop`` have none)."""
    return {k: o.default for k, o in OPTIONS.items() if o.default is not None}


def check_option(name: str, value: Any, *, what: str = "option") -> Any:
    """``value`` converted to the option's type, or InvalidRequestError naming the option."""
    opt = OPTIONS[name]

    def bad() -> InvalidRequestError:
        return InvalidRequestError(f'{what} "{name}" must be of type {_TYPE_WORDS[opt.type]}')

    if opt.type == "int":
        # compat(ollama): JSON numbers are float64 in Go; a fraction is truncated, not rejected.
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise bad()
        if isinstance(value, float):
            if not math.isfinite(value):
                raise bad()
            value = math.trunc(value)
        if not -(1 << 63) <= value < (1 << 63):  # compat(ollama): Go ints are 64-bit; json refuses more
            raise InvalidRequestError(f'{what} "{name}" is out of range for a 64-bit integer')
        return int(value)
    if opt.type == "float":
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise bad()
        return float(value)
    if opt.type == "bool":
        if not isinstance(value, bool):
            raise bad()
        return value
    if opt.type == "list[float]":
        if not isinstance(value, list | tuple):
            raise bad()
        try:
            return parse_tensor_split(list(value))
        except ValueError as exc:
            raise InvalidRequestError(f'{what} "{name}" {exc}') from None
    if not isinstance(value, list | tuple) or not all(isinstance(s, str) for s in value):
        raise bad()
    return list(value)


def _layer(values: Mapping[str, Any] | None, what: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if values is None:
        return out
    if not isinstance(values, Mapping):
        raise InvalidRequestError(f"{what}s must be a JSON object")
    for key, value in values.items():
        if key in REMOVED_OPTIONS:
            continue
        if key not in OPTIONS:
            log.warning("invalid option provided: %s", key)
            continue
        if value is None:  # compat(ollama): a null value means "not given"
            continue
        out[key] = check_option(key, value, what=what)
    return out


def request_options(values: Mapping[str, Any] | None) -> dict[str, Any]:
    """A request's ``options``, checked: every key has its effect or is a 400 naming it.

    An unknown key is refused (a typo would otherwise change nothing, silently); a removed one is
    accepted only with the value that asks for what corral does anyway (``REMOVED_NEUTRAL``); null
    means "not given" (compat(ollama)); a known key of the wrong type is refused.
    """
    out: dict[str, Any] = {}
    if values is None:
        return out
    if not isinstance(values, Mapping):
        raise InvalidRequestError("options must be a JSON object")
    for key, value in values.items():
        if value is None:
            continue
        if key in REMOVED_NEUTRAL:
            neutral = REMOVED_NEUTRAL[key]
            if not _asks_nothing(value, neutral):
                wanted = "a number" if neutral is None else json_text(neutral)
                raise InvalidRequestError(
                    f'option "{key}" was removed from Ollama and corral does not implement it: leave it '
                    f"out (it is accepted only as {wanted}, which asks for nothing)")
            continue
        if key not in OPTIONS:
            raise InvalidRequestError(f'unknown option "{key}" (the options are: {", ".join(OPTIONS)})')
        out[key] = check_option(key, value)
    return out


def _asks_nothing(value: Any, neutral: Any) -> bool:
    """Whether a removed option's ``value`` asks for what corral does anyway (see REMOVED_NEUTRAL)."""
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if neutral is None:
        return number
    if isinstance(neutral, bool):
        return value is neutral
    return number and value == neutral


def json_text(value: Any) -> str:
    """``value`` as JSON writes it (true, 1.0), for messages."""
    return "true" if value is True else "false" if value is False else repr(value)


def merge_options(model_params: Mapping[str, Any] | None,
                  request_options_: Mapping[str, Any] | None) -> dict[str, Any]:
    """defaults < the model's Modelfile parameters < the request's ``options``.

    The model's parameters came from its Modelfile (or a pulled params layer): unknown keys there are
    ignored with a logged warning, removed ones silently, as Ollama does. The request's options are
    checked by ``request_options``. A known key with the wrong type raises
    ``InvalidRequestError('option "x" must be of type ...')``.
    """
    merged = default_options()
    merged.update(_layer(model_params, "parameter"))
    merged.update(request_options(request_options_))
    return merged


def parse_parameter(name: str, values: Sequence[str]) -> Any:
    """A Modelfile ``PARAMETER`` from its text (``stop`` may repeat, so values is a list).

    Unknown names raise InvalidRequestError; removed ones return None (the caller drops them).
    """
    if name in REMOVED_OPTIONS:
        return None
    opt = OPTIONS.get(name)
    if opt is None:
        raise InvalidRequestError(f"unknown parameter {name!r}")
    if opt.type == "list[str]":
        return list(values)
    if opt.type == "list[float]":
        try:
            return parse_tensor_split(list(values))
        except ValueError as exc:
            raise InvalidRequestError(f"parameter {name!r} {exc}") from None
    if not values:
        raise InvalidRequestError(f"parameter {name!r} needs a value")
    text = values[-1].strip()
    try:
        if opt.type == "int":
            return int(text)
        if opt.type == "float":
            v = float(text)
            if not math.isfinite(v):
                raise ValueError(text)
            return v
    except ValueError:
        raise InvalidRequestError(f"invalid {_TYPE_WORDS[opt.type]} value {text!r} for {name}") from None
    low = text.lower()
    if low in ("true", "1", "t"):
        return True
    if low in ("false", "0", "f"):
        return False
    raise InvalidRequestError(f"invalid boolean value {text!r} for {name}")


def _bounded(opts: Mapping[str, Any], name: str, lo: float, hi: float) -> Any:
    value = opts.get(name, OPTIONS[name].default)
    if value is not None and not lo <= value <= hi:
        raise InvalidRequestError(f'option "{name}" must be between {lo:g} and {hi:g}, not {value}')
    return value


def cap_context(num_ctx: int, n_ctx_train: int | None) -> int:
    """``num_ctx`` capped at the model's trained context when known, and at least ``MIN_NUM_CTX``."""
    if n_ctx_train and n_ctx_train > 0:
        num_ctx = min(num_ctx, n_ctx_train)
    return max(MIN_NUM_CTX, num_ctx)


def to_load_options(opts: Mapping[str, Any], config: Config, *, n_ctx_train: int | None = None,
                    embedding: bool = False, adapters: Sequence[str] = ()) -> LoadOptions:
    """The options that decide how a model is loaded; anything out of range is a 400.

    ``num_ctx`` defaults to ``config.context_length`` and is capped at the model's trained context
    when ``n_ctx_train`` is known (compat(ollama)); values below ``MIN_NUM_CTX`` become it. With
    neither set it stays 0: the scheduler picks it from the memory the model can have
    (``corral.memory.default_context``). The config's own values (KV cache type, parallel sequences)
    were checked when it was built.
    """
    num_ctx = _bounded(opts, "num_ctx", 0, _MAX_CTX)
    if num_ctx is None or num_ctx == 0:
        num_ctx = config.context_length or 0
    if num_ctx:
        num_ctx = cap_context(num_ctx, n_ctx_train)
    num_batch = _bounded(opts, "num_batch", 1, _MAX_CTX)
    return LoadOptions(
        num_ctx=num_ctx,
        num_parallel=config.num_parallel,
        num_batch=num_batch,
        num_gpu=_bounded(opts, "num_gpu", -1, _MAX_LAYERS),
        main_gpu=_bounded(opts, "main_gpu", 0, _MAX_GPUS - 1),
        num_thread=_bounded(opts, "num_thread", 0, _MAX_THREADS),
        use_mmap=opts.get("use_mmap"),
        flash_attention=config.flash_attention,
        kv_cache_type=config.kv_cache_type,
        speculative=config.speculative,
        embedding=embedding,
        adapters=tuple(adapters),
        tensor_split=tuple(opts.get("tensor_split") or ()),
        draft_num_predict=_draft_tokens(opts),
        repack=not config.norepack,
    )


def _draft_tokens(opts: Mapping[str, Any]) -> int:
    value = _bounded(opts, "draft_num_predict", 0, MAX_DRAFT_TOKENS)
    return -1 if value is None else int(value)  # -1: the backend's default


def to_generation(opts: Mapping[str, Any], *, shift: bool = True, logprobs: bool = False,
                  top_logprobs: int = 0, logit_bias: Mapping[int, float] | None = None) -> GenerationRequest:
    """The sampling and stopping rules of one request, checked; anything out of range is a 400.

    Runs once per request, before anything is loaded. The result has no prompt yet and keeps the
    values that depend on the loaded context as asked (``repeat_last_n`` and ``num_keep`` -1);
    ``for_prompt`` settles them once the prompt is tokenized.
    """
    big = float(_MAX_CTX) * 16
    temperature = _bounded(opts, "temperature", 0.0, 1e6)
    top_k = _bounded(opts, "top_k", 0, big)
    top_p = _bounded(opts, "top_p", 0.0, 1.0)
    min_p = _bounded(opts, "min_p", 0.0, 1.0)
    typical_p = _bounded(opts, "typical_p", 0.0, 1.0)
    repeat_penalty = _bounded(opts, "repeat_penalty", 0.0, 1e6)
    if repeat_penalty == 0:  # llama.cpp divides by it; 0 has always meant "off" in practice
        repeat_penalty = 1.0
    repeat_last_n = _bounded(opts, "repeat_last_n", -1, _MAX_CTX)
    presence = _bounded(opts, "presence_penalty", -1e6, 1e6)
    frequency = _bounded(opts, "frequency_penalty", -1e6, 1e6)
    seed = opts.get("seed", -1)
    # llama.cpp seeds are 32-bit; any negative seed asks for a random one, as -1 does.
    seed = -1 if seed < 0 else seed % (1 << 32)
    num_predict = opts.get("num_predict", -1)
    if num_predict < 0:  # compat(ollama): -1 until a stop, -2 until the context is full
        num_predict = -1
    num_keep = max(-1, opts.get("num_keep", 4))  # -1 keeps the whole prompt
    stop = [s for s in opts.get("stop") or () if s]
    if len(stop) > _MAX_STOPS or any(len(s) > _MAX_STOP_LEN for s in stop):
        raise InvalidRequestError(
            f'option "stop" allows at most {_MAX_STOPS} strings of at most {_MAX_STOP_LEN} characters')
    sampling = SamplingParams(
        temperature=temperature, top_k=int(top_k), top_p=top_p, min_p=min_p, typical_p=typical_p,
        repeat_penalty=repeat_penalty, repeat_last_n=repeat_last_n, presence_penalty=presence,
        frequency_penalty=frequency, seed=seed, logit_bias=dict(logit_bias or {}),
    )
    return GenerationRequest(prompt=[], sampling=sampling, num_predict=num_predict, stop=stop,
                             num_keep=num_keep, shift=shift, logprobs=logprobs or top_logprobs > 0,
                             top_logprobs=top_logprobs)


def for_prompt(request: GenerationRequest, prompt: Sequence[int], *, n_ctx: int, grammar: str | None = None,
               json_schema: JsonConstraint | None = None, stop: Sequence[str] = ()) -> GenerationRequest:
    """``request`` (from ``to_generation``) for ``prompt`` on a model loaded with ``n_ctx``: no new checks.

    ``repeat_last_n`` -1 becomes the whole context, ``num_keep`` -1 the whole prompt (and it stays
    below ``n_ctx``); ``grammar`` constrains the output (``json_schema``: the same constraint as a
    schema, when it is one); ``stop`` (the template's end-of-turn
    strings) comes after the request's own.
    """
    sampling = request.sampling
    repeat_last_n = n_ctx if sampling.repeat_last_n == -1 else sampling.repeat_last_n
    sampling = msgspec.structs.replace(sampling, repeat_last_n=repeat_last_n, grammar=grammar,
                                       json_schema=json_schema if grammar else None)
    num_keep = len(prompt) if request.num_keep < 0 else request.num_keep
    return msgspec.structs.replace(
        request, prompt=list(prompt), sampling=sampling, num_keep=min(num_keep, max(0, n_ctx - 1)),
        stop=list(dict.fromkeys([*request.stop, *stop])))
