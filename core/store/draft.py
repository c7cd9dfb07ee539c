"""A draft model's fitness for its target: the vocabulary rule of llama.cpp's speculative decoding.

A draft guesses token ids that the target verifies, so both must mean the same text by the same id.
This is the rule ``common_speculative_are_compatible`` applies at the pin (common/speculative.cpp), read
from the two GGUF headers: same tokenizer type, same BOS/EOS handling, vocabularies at most 128 tokens
apart in size, and the same text for every token from id 5 on. It is checked when a model is created
with a DRAFT and again when a model with a draft is resolved (a pulled model never went through create).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from corral import gguf

__all__ = ["vocab_problem"]

MAX_VOCAB_DIFFERENCE = 128  # llama.cpp SPEC_VOCAB_MAX_SIZE_DIFFERENCE
FIRST_CHECKED_TOKEN = 5  # llama.cpp SPEC_VOCAB_CHECK_START_TOKEN_ID
_TOKENS = "tokenizer.ggml.tokens"
# llama.cpp's defaults when a file leaves add_bos/add_eos out, by tokenizer type (llama-vocab.cpp)
_ADD_DEFAULTS = {"llama": (True, False), "gpt2": (False, False), "bert": (True, True), "t5": (False, True)}


def vocab_problem(target: Path, draft: Path) -> str | None:
    """Why ``draft`` cannot draft for ``target`` (a sentence), or None when it can.

    Cached per pair of file versions: reading a 262k-token vocabulary takes about a second.

    Raises:
        InvalidModelFileError: either file is not a valid GGUF.
        OSError: either file cannot be read.
    """
    a, b = target.stat(), draft.stat()
    return _problem(str(target), a.st_ino, a.st_size, a.st_mtime_ns,
                    str(draft), b.st_ino, b.st_size, b.st_mtime_ns)


@functools.lru_cache(maxsize=16)
def _problem(target: str, _ti: int, _ts: int, _tm: int,
             draft: str, _di: int, _ds: int, _dm: int) -> str | None:
    t = gguf.read_gguf_info(target, keep_arrays=False, keep=frozenset({_TOKENS})).kv
    d = gguf.read_gguf_info(draft, keep_arrays=False, keep=frozenset({_TOKENS})).kv
    kind_t, kind_d = t.get("tokenizer.ggml.model"), d.get("tokenizer.ggml.model")
    if kind_t != kind_d:
        return f"its tokenizer is {kind_d!r}, the model's is {kind_t!r}"
    for what in ("bos", "eos"):
        add_t, add_d = _adds(t, what), _adds(d, what)
        if add_t is not None and add_d is not None and add_t != add_d:
            return f"it {'adds' if add_d else 'does not add'} a {what.upper()} token and the model " \
                   f"{'does' if add_t else 'does not'}"
        id_t, id_d = t.get(f"tokenizer.ggml.{what}_token_id"), d.get(f"tokenizer.ggml.{what}_token_id")
        if (add_t or add_d) and id_t is not None and id_d is not None and id_t != id_d:
            return f"its {what.upper()} token is {id_d}, the model's is {id_t}"
    tokens_t, tokens_d = t.get(_TOKENS), d.get(_TOKENS)
    if not isinstance(tokens_t, list) or not isinstance(tokens_d, list):
        return "a vocabulary is missing (no tokenizer.ggml.tokens)"
    if abs(len(tokens_t) - len(tokens_d)) > MAX_VOCAB_DIFFERENCE:
        return (f"its vocabulary has {len(tokens_d)} tokens, the model's {len(tokens_t)} (at most "
                f"{MAX_VOCAB_DIFFERENCE} apart)")
    for i in range(FIRST_CHECKED_TOKEN, min(len(tokens_t), len(tokens_d))):
        if tokens_t[i] != tokens_d[i]:
            return f"token {i} is {_shown(tokens_d[i])} in it and {_shown(tokens_t[i])} in the model"
    return None


def _adds(kv: dict[str, Any], what: str) -> bool | None:
    value = kv.get(f"tokenizer.ggml.add_{what}_token")
    if isinstance(value, bool):
        return value
    defaults = _ADD_DEFAULTS.get(str(kv.get("tokenizer.ggml.model")))
    return None if defaults is None else defaults[0 if what == "bos" else 1]


def _shown(token: Any) -> str:
    text = str(token)
    return repr(text[:40])
