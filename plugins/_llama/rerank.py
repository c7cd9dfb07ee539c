"""Reranking: each query/document pair built as llama-server builds it, scored by the rank head."""

from __future__ import annotations

from typing import Any

from corral.errors import CapabilityError
from corral.types import RerankResult
from corral_plugins._llama.model import LlamaModel

__all__ = ["rerank_inputs", "rerank"]

NULL_TOKEN = -1  # LLAMA_TOKEN_NULL


def rerank_inputs(model: LlamaModel, query: str, document: str) -> list[int]:
    """The tokens of one pair, as llama-server's ``format_prompt_rerank`` at the pin makes them.

    With a ``rerank`` chat template in the GGUF: ``{query}`` and ``{document}`` replaced, special
    tokens parsed, nothing added. Without one: BOS, query, EOS, SEP, document, EOS, each special
    token only where the vocabulary says it is added (EOS falls back to SEP when the model has none).
    """
    ffi, lib = model.ffi, model.lib
    tmpl = lib.llama_model_chat_template(model.ptr, b"rerank")
    if tmpl != ffi.NULL:
        prompt = ffi.string(tmpl).decode("utf-8", "replace")
        prompt = prompt.replace("{query}", query).replace("{document}", document)
        return model.tokenize(prompt, add_special=False, parse_special=True)
    vocab = model.vocab
    eos = int(lib.llama_vocab_eos(vocab))
    if eos == NULL_TOKEN:
        eos = int(lib.llama_vocab_sep(vocab))
    add_eos = bool(lib.llama_vocab_get_add_eos(vocab))
    out: list[int] = []
    if lib.llama_vocab_get_add_bos(vocab):
        out.append(int(lib.llama_vocab_bos(vocab)))
    out += model.tokenize(query, add_special=False, parse_special=False)
    if add_eos:
        out.append(eos)
    if lib.llama_vocab_get_add_sep(vocab):
        out.append(int(lib.llama_vocab_sep(vocab)))
    out += model.tokenize(document, add_special=False, parse_special=False)
    if add_eos:
        out.append(eos)
    return out


def rerank(embedder: Any, query: str, documents: list[str]) -> RerankResult:
    """One raw score per document: the first output of the rank head for its pair."""
    if embedder.pooling != embedder.lib.LLAMA_POOLING_TYPE_RANK:
        raise CapabilityError("this model is not a reranker (its pooling type is not rank)")
    inputs = [rerank_inputs(embedder.model, query, doc) for doc in documents]
    # Each pair in a decode of its own, as llama-server's slot evaluates it: the same scores, not
    # scores within a packed batch's rounding of them (close documents could change places).
    result = embedder.embed(inputs, normalize=False, alone=True)
    return RerankResult(scores=[v[0] for v in result.embeddings], prompt_tokens=result.prompt_tokens)
