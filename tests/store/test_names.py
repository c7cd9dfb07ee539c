"""Model names: parsing, defaults, display form, and every kind of invalid name."""

from __future__ import annotations

import pytest

from corral.errors import InvalidModelNameError
from corral.names import ModelName, is_valid_name, parse_name


@pytest.mark.parametrize(("raw", "parts", "display"), [
    ("gemma3", ("registry.ollama.ai", "library", "gemma3", "latest"), "gemma3:latest"),
    ("gemma3:270m", ("registry.ollama.ai", "library", "gemma3", "270m"), "gemma3:270m"),
    ("user/model:tag", ("registry.ollama.ai", "user", "model", "tag"), "user/model:tag"),
    ("hf.co/bartowski/Llama-3.2-1B-GGUF:Q4_K_M",
     ("hf.co", "bartowski", "Llama-3.2-1B-GGUF", "Q4_K_M"), "hf.co/bartowski/Llama-3.2-1B-GGUF:Q4_K_M"),
    ("localhost:5000/ns/m", ("localhost:5000", "ns", "m", "latest"), "localhost:5000/ns/m:latest"),
    ("https://registry.ollama.ai/library/qwen2.5:0.5b",
     ("registry.ollama.ai", "library", "qwen2.5", "0.5b"), "qwen2.5:0.5b"),
    ("REGISTRY.ollama.ai/Library/X:Y", ("REGISTRY.ollama.ai", "Library", "X", "Y"), "X:Y"),
    ("_x/_y:_z", ("registry.ollama.ai", "_x", "_y", "_z"), "_x/_y:_z"),
    ("a" * 80 + ":" + "t" * 80, ("registry.ollama.ai", "library", "a" * 80, "t" * 80),
     "a" * 80 + ":" + "t" * 80),
])
def test_valid(raw: str, parts: tuple[str, str, str, str], display: str) -> None:
    name = parse_name(raw)
    assert name.parts == parts
    assert name.display == display
    assert parse_name(name.full).matches(name)


@pytest.mark.parametrize("raw", [
    "", " ", ":", "../x", "a/../../b", "%2e%2e/x", "/etc/passwd", "C:\\x", "a\\b", "x\x00y", "m:" + "t" * 81,
    "h" * 351 + "/ns/m", "@sha256:zz", "m@sha256:" + "a" * 64, "a/b/c/d", ".hidden", "m:.t", "ns.dot/m",
    "ftp://host/ns/m", "m:", "/m", "m/", "-m", "m:-t", "a b", "ünï", "a" * 81, "h:1:2/ns/m", "x//y",
])
def test_invalid(raw: str) -> None:
    with pytest.raises(InvalidModelNameError, match="invalid model name"):
        parse_name(raw)
    assert not is_valid_name(raw)


def test_case_insensitive_match_and_scheme() -> None:
    assert parse_name("Gemma3:270M").matches(parse_name("gemma3:270m"))
    assert not parse_name("gemma3:270m").matches(parse_name("gemma3:1b"))
    assert parse_name("http://localhost:5000/a/b").scheme == "http"
    assert parse_name("a/b").scheme == "https"
    assert ModelName(model="x").display == "x:latest"
    assert parse_name("hf.co/u/r").repository == "u/r"
