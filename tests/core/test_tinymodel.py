"""Tests for corral.testing.tinymodel: the tiny GGUF is well-formed, small and reproducible."""

from __future__ import annotations

import gguf
import pytest

from corral.testing.tinymodel import CHATML_TEMPLATE, write_tiny_gguf


def _kv(reader: gguf.GGUFReader, key: str) -> object:
    return reader.fields[key].contents()


@pytest.mark.parametrize("quant", ["f32", "f16", "q8_0", "q4_0"])
def test_written_file_reads_back(tmp_path, quant: str) -> None:
    spec = write_tiny_gguf(tmp_path / "m.gguf", quant=quant)
    reader = gguf.GGUFReader(spec.path)
    assert _kv(reader, "general.architecture") == "llama"
    assert _kv(reader, "tokenizer.chat_template") == CHATML_TEMPLATE
    assert _kv(reader, "llama.embedding_length") == spec.n_embd
    assert len(_kv(reader, "tokenizer.ggml.tokens")) == spec.n_vocab
    names = {t.name: t for t in reader.tensors}
    assert "token_embd.weight" in names and f"blk.{spec.n_layer - 1}.ffn_down.weight" in names
    expect = {"f32": "F32", "f16": "F16", "q8_0": "Q8_0", "q4_0": "Q4_0"}[quant]
    assert names["blk.0.attn_q.weight"].tensor_type.name == expect
    assert names["output_norm.weight"].tensor_type.name == "F32"
    assert (tmp_path / "m.gguf").stat().st_size < 4 * 1024 * 1024


def test_vocab_layout_matches_fake_byte_ids(tiny_gguf_spec) -> None:
    toks = tiny_gguf_spec.tokens
    assert toks[:3] == ["<unk>", "<s>", "</s>"]
    assert toks[3 + ord("A")] == "<0x41>"
    assert "<|im_end|>" in toks and "\u2581capital" in toks


def test_same_seed_same_bytes_other_seed_differs(tmp_path) -> None:
    a = write_tiny_gguf(tmp_path / "a.gguf", seed=1)
    b = write_tiny_gguf(tmp_path / "b.gguf", seed=1)
    c = write_tiny_gguf(tmp_path / "c.gguf", seed=2)
    data = [open(s.path, "rb").read() for s in (a, b, c)]
    assert data[0] == data[1]
    assert data[0] != data[2]


def test_no_template_and_custom_words(tmp_path) -> None:
    spec = write_tiny_gguf(tmp_path / "m.gguf", chat_template=None, vocab=["zebra"])
    reader = gguf.GGUFReader(spec.path)
    assert "tokenizer.chat_template" not in reader.fields
    assert "\u2581zebra" in spec.tokens and "\u2581capital" not in spec.tokens


@pytest.mark.parametrize("kwargs", [{"arch": "gemma3"}, {"quant": "q2_k"}, {"n_embd": 62},
                                    {"quant": "q8_0", "n_ff": 100}])
def test_bad_arguments_raise(tmp_path, kwargs) -> None:
    with pytest.raises(ValueError):
        write_tiny_gguf(tmp_path / "m.gguf", **kwargs)
    assert not (tmp_path / "m.gguf").exists()
