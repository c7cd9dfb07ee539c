"""Capabilities from template, metadata and projector, and Ollama's wording for missing ones."""

from __future__ import annotations

from pathlib import Path

import pytest

from corral.errors import CapabilityError
from corral.prompts import GEMMA3_TEMPLATE, capabilities, check_capabilities
from corral.spec import GGUFFacts

from .conftest import go_template, jinja_template, make_spec

LLAMA_KV = {"general.architecture": "llama"}


@pytest.mark.parametrize(("template", "kv", "expected"), [
    (GEMMA3_TEMPLATE, {"general.architecture": "gemma3"}, ["completion"]),
    (go_template("qwen2.5"), LLAMA_KV, ["completion", "tools"]),
    (go_template("llama3"), LLAMA_KV, ["completion", "tools"]),
    (go_template("mistral"), LLAMA_KV, ["completion", "tools"]),
    (go_template("deepseek-r1"), LLAMA_KV, ["completion", "thinking"]),
    (go_template("codellama-fim"), LLAMA_KV, ["completion", "insert"]),
    (go_template("phi3"), LLAMA_KV, ["completion"]),
    (None, {**LLAMA_KV, "tokenizer.chat_template": jinja_template("Qwen-Qwen3-0.6B")},
     ["completion", "tools", "thinking"]),
    (None, {**LLAMA_KV, "tokenizer.chat_template": jinja_template("google-gemma-2-2b-it")}, ["completion"]),
    (None, {"general.architecture": "bert", "bert.pooling_type": 1}, ["embedding"]),
    (None, {"general.architecture": "qwen3", "qwen3.pooling_type": 3}, ["embedding"]),
    (None, None, ["completion"]),
])
def test_capabilities(template: str | None, kv: dict | None, expected: list[str]) -> None:
    assert capabilities(template, GGUFFacts.from_kv(kv)) == expected
    assert make_spec(template=template, kv=kv).capabilities == tuple(expected)


def test_vision_only_from_a_projector_that_is_one(tmp_path: Path) -> None:
    from corral.testing.tinymodel import write_tiny_gguf
    from corral.testing.tinyvision import write_tiny_projector

    proj = write_tiny_projector(tmp_path / "mmproj.gguf").path
    assert capabilities(GEMMA3_TEMPLATE, GGUFFacts(), projector=proj) == ["completion", "vision"]
    assert make_spec(template=GEMMA3_TEMPLATE, projector=proj).has("vision")
    not_one = write_tiny_gguf(tmp_path / "model.gguf").path
    assert capabilities(GEMMA3_TEMPLATE, GGUFFacts(), projector=not_one) == ["completion"]
    assert not make_spec(template=GEMMA3_TEMPLATE, projector=str(tmp_path / "missing.gguf")).has("vision")
    # Vision tensors inside the model's own GGUF are not something llama.cpp can use.
    kv = {"general.architecture": "gemma3", "gemma3.vision.block_count": 27}
    assert capabilities(GEMMA3_TEMPLATE, GGUFFacts.from_kv(kv)) == ["completion"]


def test_check_capabilities_wording() -> None:
    spec = make_spec("gemma3:270m", template=GEMMA3_TEMPLATE)
    check_capabilities(spec, ["completion"])
    with pytest.raises(CapabilityError) as e:
        check_capabilities(spec, ["completion", "tools"])
    assert str(e.value) == "registry.ollama.ai/library/gemma3:270m does not support tools"
    with pytest.raises(CapabilityError) as e:
        check_capabilities(spec, ["thinking"])
    assert str(e.value) == '"gemma3:270m" does not support thinking'
    emb = make_spec("me/embedder", template=None, kv={"general.architecture": "bert", "bert.pooling_type": 1})
    assert emb.embedding_only
    wording = "^registry.ollama.ai/me/embedder:latest does not support completion$"
    with pytest.raises(CapabilityError, match=wording):
        check_capabilities(emb, ["completion"])
