"""Tests for the fake backend's own promises: scripting, history, specials, crash, quantize, plugin."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import gguf
import pytest

from corral.config import Config
from corral.errors import BackendError, ContextLengthError, InvalidModelFileError, InvalidRequestError
from corral.plugins import load_plugins
from corral.selection import BackendHooks, select_backend
from corral.testing.contract import collect
from corral.testing.fake import BOS, BYTE_OFFSET, FakeBackend, default_reply, load_rules
from corral.testing.tinymodel import write_tiny_gguf
from corral.types import CancelToken, GenerationRequest, LoadOptions, SamplingParams


@pytest.fixture
def fake() -> FakeBackend:
    return FakeBackend()


@pytest.fixture
def hooks(fake: FakeBackend) -> BackendHooks:
    host = load_plugins(Config(), load_entrypoints=False)
    host.register(fake, "fake")
    return BackendHooks(host, "fake")


@pytest.fixture
def handle(hooks: BackendHooks, tiny_gguf: Path):
    h = hooks.load_model(str(tiny_gguf), LoadOptions(num_ctx=256, num_parallel=2))
    yield h
    hooks.unload(h)


def gen(hooks, handle, text="hi", **kw):
    prompt = hooks.tokenize(handle, text, add_special=True, parse_special=True)
    return collect(hooks.generate(handle, GenerationRequest(prompt=prompt, **kw), CancelToken()))


def test_byte_token_ids_and_specials(hooks, handle) -> None:
    assert hooks.tokenize(handle, "A", add_special=False, parse_special=False) == [ord("A") + BYTE_OFFSET]
    toks = hooks.tokenize(handle, "<|im_start|>x<|im_end|>", add_special=True, parse_special=True)
    assert toks[0] == BOS and len(toks) == 4 and toks[1] >= 259 and toks[3] >= 259
    literal = hooks.tokenize(handle, "<|im_start|>", add_special=False, parse_special=False)
    assert len(literal) == len("<|im_start|>")
    assert hooks.detokenize(handle, toks, render_special=True) == "<s><|im_start|>x<|im_end|>"
    assert hooks.detokenize(handle, toks) == "x"
    assert handle.info.chat_template and "<|im_start|>" in handle.info.chat_template
    with pytest.raises(InvalidRequestError, match="out of range"):
        hooks.detokenize(handle, [10**6])


def test_default_reply_is_deterministic_and_distinct(hooks, handle) -> None:
    greedy = SamplingParams(temperature=0)
    a = gen(hooks, handle, "tell me about the sky", sampling=greedy)[0]
    assert a == gen(hooks, handle, "tell me about the sky", sampling=greedy)[0]
    assert a != gen(hooks, handle, "tell me about the sea", sampling=greedy)[0]
    assert a == default_reply("<s>tell me about the sky")
    assert "tell me about the sky" in a


def test_enqueue_and_history(fake, hooks, handle) -> None:
    fake.enqueue("Hello there")
    fake.enqueue("only for cats", match="cat")
    assert gen(hooks, handle, "dog")[0] == "Hello there"
    assert gen(hooks, handle, "a cat")[0] == "only for cats"
    assert gen(hooks, handle, "cat again")[0] != "only for cats"  # used once
    ops = [c.op for c in fake.history]
    assert ops[0] == "load" and ops.count("generate") == 3
    assert fake.history[1].text == "<s>dog"


def test_one_event_per_byte_with_utf8_held_back(fake, hooks, handle) -> None:
    fake.enqueue("é🙂")
    events = list(hooks.generate(handle, GenerationRequest(prompt=[BOS]), CancelToken()))
    assert [e.text for e in events] == ["", "é", "", "", "", "🙂", ""]
    assert events[-1].stats.eval_count == 6


def test_stop_and_num_predict(fake, hooks, handle) -> None:
    fake.enqueue("one two three")
    text, _, last = gen(hooks, handle, stop=["two"])
    assert (text, last.finish_reason) == ("one ", "stop")
    fake.enqueue("one two three")
    text, toks, last = gen(hooks, handle, num_predict=5)
    assert (text, len(toks), last.finish_reason) == ("one t", 5, "length")


def test_error_rule(fake, hooks, handle) -> None:
    fake.enqueue("abcdef", error="boom", error_after=3)
    seen = []
    with pytest.raises(BackendError, match="boom"):
        for ev in hooks.generate(handle, GenerationRequest(prompt=[BOS]), CancelToken()):
            seen.append(ev.text)
    assert "".join(seen) == "abc"


def test_delay_and_cancel(fake, hooks, handle) -> None:
    fake.enqueue("x" * 100, delay=0.05)
    cancel = CancelToken()
    t0 = time.monotonic()
    events = []
    for ev in hooks.generate(handle, GenerationRequest(prompt=[BOS]), cancel):
        events.append(ev)
        cancel.cancel()
    assert time.monotonic() - t0 < 1.0
    assert len(events) == 2 and events[-1].finish_reason == "stop"


def test_cached_tokens_follow_previous_sequence(hooks, handle) -> None:
    prompt = hooks.tokenize(handle, "a shared prefix then more", add_special=True, parse_special=False)
    first = collect(hooks.generate(handle, GenerationRequest(prompt=prompt), CancelToken()))[2]
    second = collect(hooks.generate(handle, GenerationRequest(prompt=prompt), CancelToken()))[2]
    assert first.stats.cached_tokens == 0
    assert second.stats.cached_tokens == len(prompt) - 1


def test_context_overflow_without_shift(hooks, handle) -> None:
    prompt = [BOS] + [BYTE_OFFSET + 97] * 300
    with pytest.raises(ContextLengthError):
        collect(hooks.generate(handle, GenerationRequest(prompt=prompt, shift=False), CancelToken()))
    last = collect(hooks.generate(handle, GenerationRequest(prompt=prompt), CancelToken()))[2]
    assert last.stats.truncated


def test_embeddings_similarity_and_errors(hooks, handle) -> None:
    t = [hooks.tokenize(handle, s, add_special=False, parse_special=False)
         for s in ("the cat sat", "the cat sat down", "zzzz qqqq")]
    e = hooks.embed(handle, t, normalize=True).embeddings
    dot = [sum(a * b for a, b in zip(e[0], v, strict=True)) for v in e[1:]]
    assert dot[0] > dot[1]
    with pytest.raises(InvalidRequestError):
        hooks.embed(handle, [[]])


def test_script_file_rules_and_bad_script(tmp_path, tiny_gguf, monkeypatch) -> None:
    script = tmp_path / "rules.json"
    script.write_text(json.dumps([{"match": "weather", "reply": "Sunny."},
                                  {"match": "fail", "error": "scripted failure"}]))
    monkeypatch.setenv("CORRAL_FAKE_SCRIPT", str(script))  # the fake's own variable, not a Config field
    fake = FakeBackend()
    host = load_plugins(Config(), load_entrypoints=False)
    host.register(fake, "fake")
    name, _ = select_backend(host, Config())
    hooks = BackendHooks(host, name)
    h = hooks.load_model(str(tiny_gguf), LoadOptions())
    assert gen(hooks, h, "what is the weather")[0] == "Sunny."
    with pytest.raises(BackendError, match="scripted failure"):
        gen(hooks, h, "please fail")
    script.write_text("[{\"match\": 1}]")
    with pytest.raises(BackendError, match="cannot read script"):
        load_rules(script)


def test_bad_files(hooks, tmp_path) -> None:
    (tmp_path / "x.gguf").write_bytes(b"NOPE" * 10)
    with pytest.raises(InvalidModelFileError):
        hooks.load_model(str(tmp_path / "x.gguf"), LoadOptions())
    with pytest.raises(InvalidModelFileError):
        hooks.load_model(str(tmp_path), LoadOptions())


def test_quantize_relabels_and_refuses(fake, tmp_path) -> None:
    src = write_tiny_gguf(tmp_path / "f16.gguf", quant="f16").path
    dst = str(tmp_path / "q.gguf")
    assert fake.corral_quantize(src, dst, "q4_K_M", None) is True
    assert gguf.GGUFReader(dst).fields["general.file_type"].contents() == 15
    with pytest.raises(InvalidRequestError, match="unsupported quantization"):
        fake.corral_quantize(src, dst, "q3_K_L", None)
    q8 = write_tiny_gguf(tmp_path / "q8.gguf", quant="q8_0").path
    with pytest.raises(InvalidRequestError, match="only F32, F16 and BF16"):
        fake.corral_quantize(q8, dst, "q4_K_M", None)


def test_registered_by_module_path_in_a_fresh_process(tmp_path, tiny_gguf) -> None:
    """CORRAL_EXTRA_PLUGINS=corral.testing.fake works anywhere; a crash rule kills the process."""
    script = tmp_path / "rules.json"
    script.write_text(json.dumps([{"match": "die", "crash": True}]))
    code = f"""
from corral.config import Config
from corral.plugins import load_plugins
from corral.selection import BackendHooks, select_backend
from corral.testing.contract import collect
from corral.types import CancelToken, GenerationRequest, LoadOptions
cfg = Config.from_env()
host = load_plugins(cfg)
name, _ = select_backend(host, cfg)
hooks = BackendHooks(host, name)
h = hooks.load_model({str(tiny_gguf)!r}, LoadOptions())
p = hooks.tokenize(h, "hello", add_special=True, parse_special=False)
last = collect(hooks.generate(h, GenerationRequest(prompt=p), CancelToken()))[2]
print(name, last.finish_reason, flush=True)
p = hooks.tokenize(h, "die now", add_special=True, parse_special=False)
collect(hooks.generate(h, GenerationRequest(prompt=p), CancelToken()))
print("survived")
"""
    env = {"CORRAL_EXTRA_PLUGINS": "corral.testing.fake", "CORRAL_LOAD_PLUGINS": "",
           "CORRAL_BACKEND": "fake", "CORRAL_FAKE_SCRIPT": str(script), "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert proc.stdout.split("\n")[0] == "fake stop", proc.stderr
    assert "survived" not in proc.stdout
    assert proc.returncode == 70
