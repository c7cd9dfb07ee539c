"""Write a real, tiny, loadable reranker GGUF (qwen3 architecture, rank pooling, random weights)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from corral.testing.tinymodel import CONTROL, DEFAULT_WORDS, _vocab

__all__ = ["RERANK_TEMPLATE", "write_tiny_reranker"]

# The shape of a Qwen3-Reranker prompt, shortened: llama-server fills {query} and {document} and parses
# the special tokens in it.
RERANK_TEMPLATE = ("<|im_start|>system\nJudge whether the document answers the query.<|im_end|>\n"
                   "<|im_start|>user\n<Query>: {query}\n<Document>: {document}<|im_end|>\n"
                   "<|im_start|>assistant\n")
POOLING_RANK = 4  # llama.cpp's LLAMA_POOLING_TYPE_RANK


def write_tiny_reranker(path: str | os.PathLike[str], *, template: str | None = RERANK_TEMPLATE,
                        n_embd: int = 64, n_layer: int = 2, n_head: int = 4, n_head_kv: int = 2,
                        n_ff: int = 128, n_labels: int = 2, n_ctx_train: int = 2048, seed: int = 1) -> Path:
    """Write a tiny qwen3 reranker to ``path`` and return the path.

    With ``template`` the GGUF carries it as ``tokenizer.chat_template.rerank`` (as converted
    Qwen3-Reranker files do); without it the vocabulary adds BOS, EOS and a ``<sep>`` token, so a
    pair is built from those (BERT-style rerankers). The rank head (``cls.output``) has ``n_labels``
    outputs; llama.cpp soft-maxes a qwen3 head, so the score is the first label's probability.
    """
    import gguf

    tokens, scores, types = _vocab(DEFAULT_WORDS)
    tokens.append("<sep>")
    scores.append(0.0)
    types.append(CONTROL)
    sep = len(tokens) - 1
    n_vocab = len(tokens)
    head_dim = n_embd // n_head
    rng = np.random.default_rng(seed)
    path = Path(path)
    tmp = path.with_name(path.name + ".part")
    w = gguf.GGUFWriter(str(tmp), "qwen3")
    w.add_name("corral-tiny-reranker")
    w.add_file_type(0)
    w.add_context_length(n_ctx_train)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_rope_dimension_count(head_dim)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_pooling_type(gguf.PoolingType(POOLING_RANK))
    w.add_classifier_output_labels([f"label{i}" for i in range(n_labels)])
    w.add_vocab_size(n_vocab)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_add_bos_token(True)
    w.add_add_space_prefix(True)
    if template is not None:
        w.add_add_eos_token(False)
        w.add_string("tokenizer.chat_template.rerank", template)
    else:
        w.add_add_eos_token(True)
        w.add_sep_token_id(sep)
        w.add_bool("tokenizer.ggml.add_sep_token", True)

    def matrix(rows: int, cols: int, scale: float) -> np.ndarray:
        return (rng.standard_normal((rows, cols), dtype=np.float32) * scale).astype(np.float32)

    w.add_tensor("token_embd.weight", matrix(n_vocab, n_embd, 1.0))
    for i in range(n_layer):
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(n_embd, np.float32))
        w.add_tensor(f"blk.{i}.attn_q.weight", matrix(n_head * head_dim, n_embd, n_embd**-0.5))
        w.add_tensor(f"blk.{i}.attn_k.weight", matrix(n_head_kv * head_dim, n_embd, n_embd**-0.5))
        w.add_tensor(f"blk.{i}.attn_v.weight", matrix(n_head_kv * head_dim, n_embd, n_embd**-0.5))
        w.add_tensor(f"blk.{i}.attn_q_norm.weight", np.ones(head_dim, np.float32))
        w.add_tensor(f"blk.{i}.attn_k_norm.weight", np.ones(head_dim, np.float32))
        w.add_tensor(f"blk.{i}.attn_output.weight", matrix(n_embd, n_head * head_dim, n_embd**-0.5))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(n_embd, np.float32))
        w.add_tensor(f"blk.{i}.ffn_gate.weight", matrix(n_ff, n_embd, n_embd**-0.5))
        w.add_tensor(f"blk.{i}.ffn_up.weight", matrix(n_ff, n_embd, n_embd**-0.5))
        w.add_tensor(f"blk.{i}.ffn_down.weight", matrix(n_embd, n_ff, n_ff**-0.5))
    w.add_tensor("output_norm.weight", np.ones(n_embd, np.float32))
    w.add_tensor("cls.output.weight", matrix(n_labels, n_embd, 0.1))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    os.replace(tmp, path)
    return path
