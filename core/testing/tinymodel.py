"""Write a real, tiny, loadable llama-architecture GGUF (random weights, own vocab) for tests."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from gguf import GGMLQuantizationType

__all__ = ["CHATML_TEMPLATE", "DEFAULT_WORDS", "TinyModelSpec", "write_tiny_gguf"]

# A ChatML template (Jinja, as HF ships it) so that prompt code has something real to render.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Whole-word tokens (with the SentencePiece space marker) so ordinary English tokenizes compactly;
# everything else falls back to single characters or raw bytes.
DEFAULT_WORDS: tuple[str, ...] = (
    "the", "of", "and", "to", "a", "in", "is", "it", "you", "that", "he", "was", "for", "on", "are",
    "with", "as", "I", "his", "they", "be", "at", "one", "have", "this", "from", "or", "had", "by",
    "hello", "world", "capital", "France", "Paris", "The", "what", "why", "sky", "blue", "yes", "no",
    "cat", "dog", "tell", "me", "about", "story", "once", "upon", "time", "there", "day", "sun",
    "user", "assistant", "system", "json", "true", "false", "null", "name", "age", "answer",
)

SPACE = "\u2581"  # SentencePiece's visible space
# llama.cpp token types (gguf.TokenType): normal, unknown, control, user-defined, unused, byte.
NORMAL, UNKNOWN, CONTROL, BYTE = 1, 2, 3, 6
_QUANTS = {"f32": 0, "f16": 1, "q8_0": 7, "q4_0": 2}  # name -> general.file_type (LlamaFileType)


@dataclass(frozen=True, repr=False)
class TinyModelSpec:
    """What ``write_tiny_gguf`` wrote: the numbers a test may assert on."""

    path: str
    n_vocab: int
    n_embd: int
    n_layer: int
    n_ctx_train: int
    bos: int
    eos: int
    quant: str
    tokens: list[str]

    def __repr__(self) -> str:
        return f"TinyModelSpec(path={self.path!r}, n_vocab={self.n_vocab}, n_embd={self.n_embd})"


def _vocab(words: Sequence[str]) -> tuple[list[str], list[float], list[int]]:
    tokens: list[str] = ["<unk>", "<s>", "</s>"]
    types = [UNKNOWN, CONTROL, CONTROL]
    # Byte tokens sit at id = byte + 3, like the fake backend's byte ids: every byte sequence has a
    # spelling, so any text round-trips (byte fallback).
    tokens += [f"<0x{b:02X}>" for b in range(256)]
    types += [BYTE] * 256
    pieces: list[str] = [SPACE] + [chr(c) for c in range(33, 127)] + ["\n", "\t"]
    for w in words:
        w = w.replace(" ", SPACE)
        full = SPACE + w
        # SPM merges pairwise, so a word is only reachable through its prefixes.
        pieces += [full[:n] for n in range(2, len(full) + 1)] + [w[:n] for n in range(2, len(w) + 1)]
    seen = set(tokens)
    for p in pieces:
        if p not in seen:
            seen.add(p)
            tokens.append(p)
            types.append(NORMAL)
    for special in ("<|im_start|>", "<|im_end|>"):
        tokens.append(special)
        types.append(CONTROL)
    # Longer pieces score higher so merges prefer whole words.
    scores = [0.0 if t != NORMAL else float(len(tok)) - 100.0 for tok, t in zip(tokens, types, strict=True)]
    return tokens, scores, types


def _quantize(a: np.ndarray, quant: str) -> tuple[np.ndarray, GGMLQuantizationType | None]:
    import gguf

    if quant == "f32":
        return a.astype(np.float32), None
    if quant == "f16":
        return a.astype(np.float16), None
    qtype = {"q8_0": gguf.GGMLQuantizationType.Q8_0, "q4_0": gguf.GGMLQuantizationType.Q4_0}[quant]
    return gguf.quants.quantize(a.astype(np.float32), qtype), qtype


def write_tiny_gguf(
    path: str | os.PathLike[str],
    *,
    arch: str = "llama",
    vocab: Sequence[str] | None = None,
    n_embd: int = 64,
    n_layer: int = 2,
    n_head: int = 4,
    n_head_kv: int = 2,
    n_ff: int = 128,
    n_ctx_train: int = 2048,
    quant: str = "f32",
    chat_template: str | None = CHATML_TEMPLATE,
    seed: int = 0,
    name: str = "corral-tiny",
) -> TinyModelSpec:
    """Write a tiny llama model to ``path`` and describe it.

    ``vocab`` lists extra whole-word tokens (default ``DEFAULT_WORDS``); the vocabulary always has
    <unk>/<s>/</s> at 0/1/2, the 256 byte tokens at 3..258, printable ASCII, and the ChatML control
    tokens. ``quant`` is f32, f16, q8_0 or q4_0 (norms stay F32, as llama.cpp's converters do).
    Weights are random with a fixed ``seed``, so the same arguments give the same bytes.
    """
    import gguf

    if arch != "llama":
        raise ValueError(f"only arch='llama' is supported, not {arch!r}")
    if quant not in _QUANTS:
        raise ValueError(f"quant must be one of {sorted(_QUANTS)}, not {quant!r}")
    block = 32  # Q8_0/Q4_0 rows are made of 32-value blocks
    if n_embd % n_head or (quant in ("q8_0", "q4_0") and (n_embd % block or n_ff % block)):
        raise ValueError("n_embd must divide by n_head (and n_embd, n_ff by 32 for q8_0/q4_0)")
    tokens, scores, types = _vocab(DEFAULT_WORDS if vocab is None else vocab)
    n_vocab = len(tokens)
    head_dim = n_embd // n_head
    rng = np.random.default_rng(seed)

    path = Path(path)
    tmp = path.with_name(path.name + ".part")
    w = gguf.GGUFWriter(str(tmp), arch)
    w.add_name(name)
    w.add_file_type(_QUANTS[quant])
    w.add_context_length(n_ctx_train)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_rope_dimension_count(head_dim)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(n_vocab)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    w.add_add_space_prefix(True)
    if chat_template is not None:
        w.add_chat_template(chat_template)

    def matrix(rows: int, cols: int, scale: float) -> np.ndarray:
        # numpy shape (rows, cols) is ggml ne = [cols, rows]: cols is the input dimension.
        return (rng.standard_normal((rows, cols), dtype=np.float32) * scale).astype(np.float32)

    def put(tname: str, data: np.ndarray, quantize: bool = True) -> None:
        if quantize and data.ndim == 2:
            out, qtype = _quantize(data, quant)
        else:
            out, qtype = data.astype(np.float32), None
        if qtype is None:
            w.add_tensor(tname, out)
        else:
            w.add_tensor(tname, out, raw_shape=out.shape, raw_dtype=qtype)

    # Scales large enough that logits are not flat, so greedy decoding has clear winners.
    put("token_embd.weight", matrix(n_vocab, n_embd, 1.0))
    for i in range(n_layer):
        put(f"blk.{i}.attn_norm.weight", np.ones(n_embd, np.float32))
        put(f"blk.{i}.attn_q.weight", matrix(n_embd, n_embd, n_embd**-0.5))
        put(f"blk.{i}.attn_k.weight", matrix(n_head_kv * head_dim, n_embd, n_embd**-0.5))
        put(f"blk.{i}.attn_v.weight", matrix(n_head_kv * head_dim, n_embd, n_embd**-0.5))
        put(f"blk.{i}.attn_output.weight", matrix(n_embd, n_embd, n_embd**-0.5))
        put(f"blk.{i}.ffn_norm.weight", np.ones(n_embd, np.float32))
        put(f"blk.{i}.ffn_gate.weight", matrix(n_ff, n_embd, n_embd**-0.5))
        put(f"blk.{i}.ffn_up.weight", matrix(n_ff, n_embd, n_embd**-0.5))
        put(f"blk.{i}.ffn_down.weight", matrix(n_embd, n_ff, n_ff**-0.5))
    put("output_norm.weight", np.ones(n_embd, np.float32))
    put("output.weight", matrix(n_vocab, n_embd, 0.5))

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    os.replace(tmp, path)  # readers never see a half-written model
    return TinyModelSpec(path=str(path), n_vocab=n_vocab, n_embd=n_embd, n_layer=n_layer,
                         n_ctx_train=n_ctx_train, bos=1, eos=2, quant=quant, tokens=tokens)
