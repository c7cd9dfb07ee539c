"""Capabilities from template, metadata and projector, and Ollama's wording for missing ones."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from corral.errors import CapabilityError
from corral.prompts import GEMMA3_TEMPLATE, capabilities, check_capabilities

from .conftest import go_template, jinja_template, make_record

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
    assert capabilities(make_record(template=template), kv) == expected


def test_vision_from_a_projector() -> None:
    rec = msgspec.structs.replace(make_record(template=GEMMA3_TEMPLATE), projector=Path("/blobs/proj"))
    assert capabilities(rec, None) == ["completion", "vision"]


def test_check_capabilities_wording() -> None:
    rec = make_record("gemma3:270m", template=GEMMA3_TEMPLATE)
    check_capabilities(rec, None, ["completion"])
    with pytest.raises(CapabilityError) as e:
        check_capabilities(rec, None, ["completion", "tools"])
    assert str(e.value) == "registry.ollama.ai/library/gemma3:270m does not support tools"
    with pytest.raises(CapabilityError) as e:
        check_capabilities(rec, None, ["thinking"])
    assert str(e.value) == '"gemma3:270m" does not support thinking'
    emb = make_record("me/embedder", template=None)
    wording = "^registry.ollama.ai/me/embedder:latest does not support completion$"
    with pytest.raises(CapabilityError, match=wording):
        check_capabilities(emb, {"general.architecture": "bert", "bert.pooling_type": 1}, ["completion"])
