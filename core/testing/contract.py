"""The backend contract suite: a pytest mixin every backend plugin's tests subclass.

Usage, in a plugin's test module::

    from corral.testing.contract import BackendContract

    class TestMyBackend(BackendContract):
        expect_capital_paris = False

        @pytest.fixture(scope="class")
        @classmethod
        def backend_hooks(cls):
            host = load_plugins(Config(load_plugins=("mine",)))
            return BackendHooks(host, "mine")

        @pytest.fixture(scope="class")
        @classmethod
        def model_path(cls, tiny_gguf):
            return str(tiny_gguf)

        @pytest.fixture(scope="class")            # optional: the vision cases
        @classmethod
        def projector_path(cls, tiny_projector):
            return tiny_projector.path
"""

from __future__ import annotations

import json
import math
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from corral.errors import CapabilityError, CorralError, InvalidModelFileError, InvalidRequestError
from corral.selection import BackendHooks
from corral.testing.tinyvision import png_bytes
from corral.types import (
    HOST,
    CancelToken,
    GenerationRequest,
    LoadOptions,
    MediaInput,
    ModelHandle,
    SamplingParams,
    TokenEvent,
)

__all__ = ["BackendContract", "JSON_GRAMMAR", "collect"]

# A small JSON object grammar; bounded string lengths so even a random-weight model finishes.
JSON_GRAMMAR = r"""
root   ::= "{" ws "\"name\"" ws ":" ws string ws "," ws "\"n\"" ws ":" ws number ws "}"
string ::= "\"" [a-zA-Z ]{1,12} "\""
number ::= "-"? [0-9]{1,4}
ws     ::= " "?
"""
GREEDY = SamplingParams(temperature=0.0, seed=0)
# Two images any projector tells apart: a flat red square and a colour gradient.
_IMAGES = (png_bytes(32, 32, lambda x, y: (220, 20, 30)),
           png_bytes(32, 32, lambda x, y: (x * 8, y * 8, (x * y) % 256)))


def collect(events: Iterator[TokenEvent]) -> tuple[str, list[int], TokenEvent]:
    """(visible text, generated token ids, final event) of one generation stream."""
    text, tokens, last = [], [], None
    for ev in events:
        text.append(ev.text)
        if ev.token >= 0:
            tokens.append(ev.token)
        last = ev
    assert last is not None, "the stream produced no events"
    assert last.finish_reason in ("stop", "length"), f"last event has finish_reason {last.finish_reason!r}"
    assert last.stats is not None, "the last event carries no stats"
    return "".join(text), tokens, last



# A batch of another size runs other kernels, so two candidates whose log-probabilities are this close
# may swap between a sequence decoded alone and the same sequence batched with others.
FLOAT_NOISE_LOGPROB = 0.3


def same_up_to_float_noise(ref: list[TokenEvent], got: list[TokenEvent]) -> bool:
    """Greedy tokens that match until, at most, a near-tie in ``ref`` where they may part."""
    for x, y in zip(ref, got, strict=False):
        if x.token != y.token:
            top = x.top_logprobs
            return top is not None and len(top) > 1 and top[0].logprob - top[1].logprob < FLOAT_NOISE_LOGPROB
    return len(ref) == len(got)

class BackendContract:
    """Tests every backend must pass. Subclasses provide ``backend_hooks`` and ``model_path``."""

    expect_capital_paris: bool = False  # True for a real model that knows its geography
    prompt_text: str = "The capital of France is"
    # One example first: small base models (Gemma 3 270M) continue the bare sentence greedily with
    # " the capital of the country of France", but with the pattern shown they answer " Paris".
    paris_prompt: str = "The capital of Germany is Berlin. The capital of France is"
    max_cancel_seconds: float = 5.0

    # ---- fixtures a subclass overrides ---------------------------------------------------------
    @pytest.fixture(scope="class")
    @classmethod
    def backend_hooks(cls) -> BackendHooks:
        raise NotImplementedError("override the backend_hooks fixture in your BackendContract subclass")

    @pytest.fixture(scope="class")
    @classmethod
    def model_path(cls) -> str:
        raise NotImplementedError("override the model_path fixture in your BackendContract subclass")

    @pytest.fixture(scope="class")
    @classmethod
    def reranker_path(cls, tmp_path_factory: pytest.TempPathFactory) -> str:
        """A reranker GGUF (pooling ``rank``); by default the tiny generated one."""
        from corral.testing.tinyreranker import write_tiny_reranker

        return str(write_tiny_reranker(tmp_path_factory.mktemp("reranker") / "reranker.gguf"))

    @pytest.fixture(scope="class")
    @classmethod
    def load_options(cls) -> LoadOptions:
        return LoadOptions(num_ctx=512, num_parallel=2, num_batch=256)

    @pytest.fixture(scope="class")
    @classmethod
    def projector_path(cls) -> str | None:
        """A projector GGUF (mmproj) for ``model_path``; None skips the cases that need images read."""
        return None

    # ---- fixtures the suite builds from them ---------------------------------------------------
    @pytest.fixture(scope="class")
    @classmethod
    def model(cls, backend_hooks: BackendHooks, model_path: str,
              load_options: LoadOptions) -> Iterator[ModelHandle]:
        handle = backend_hooks.load_model(str(model_path), load_options)
        yield handle
        backend_hooks.unload(handle)

    @pytest.fixture(scope="class")
    @classmethod
    def prompt(cls, backend_hooks: BackendHooks, model: ModelHandle) -> list[int]:
        return backend_hooks.tokenize(model, cls.prompt_text, add_special=True, parse_special=False)

    def generate(self, hooks: BackendHooks, model: ModelHandle, prompt: list[int],
                 **kw: object) -> tuple[str, list[int], TokenEvent]:
        request = GenerationRequest(prompt=prompt, **kw)  # type: ignore[arg-type]
        return collect(hooks.generate(model, request, CancelToken()))

    # ---- the contract --------------------------------------------------------------------------
    def test_model_info_is_plausible(self, model: ModelHandle, load_options: LoadOptions) -> None:
        info = model.info
        assert info.architecture and info.n_vocab > 0 and info.n_embd > 0 and info.n_ctx_train > 0
        assert 0 < info.n_ctx <= max(load_options.num_ctx, info.n_ctx_train) * 2
        assert model.backend and model.id

    def test_memory_is_reported_per_device(self, model: ModelHandle) -> None:
        """The handle says what the model holds on each device, and the totals agree with the split."""
        memory = model.memory
        if not memory.devices:
            pytest.skip("this backend reports no per-device memory (the scheduler then counts models only)")
        assert memory.total == sum(d.used for d in memory.devices) > 0
        assert memory.vram == sum(d.used for d in memory.devices if d.device != HOST)
        assert len({d.device for d in memory.devices}) == len(memory.devices)

    def test_memory_estimate_matches_what_the_load_took(self, backend_hooks: BackendHooks, model_path: str,
                                                        model: ModelHandle,
                                                        load_options: LoadOptions) -> None:
        """corral_estimate_memory, made before loading, is within 15 % of what the load then held on
        each device, and grows with the context (the KV cache is num_ctx x num_parallel cells)."""
        estimate = backend_hooks.estimate_memory(str(model_path), load_options)
        if estimate is None:
            pytest.skip("this backend gives no memory estimate")
        real = {d.device: d.used for d in model.memory.devices}
        for d in estimate.devices:
            assert d.used >= 0 and d.total >= 0
            if d.device in real and real[d.device] > 0:
                assert abs(d.used - real[d.device]) <= 0.15 * real[d.device], (d, real[d.device])
        bigger = msgspec.structs.replace(load_options, num_ctx=load_options.num_ctx * 4)
        more = backend_hooks.estimate_memory(str(model_path), bigger)
        assert more is not None
        assert sum(d.kv_cache for d in more.devices) > sum(d.kv_cache for d in estimate.devices)

    @pytest.mark.parametrize("text", ["hello world", "héllo 世界 🙂", "a\nb\tc  d"])
    def test_tokenize_round_trip(self, backend_hooks: BackendHooks, model: ModelHandle, text: str) -> None:
        tokens = backend_hooks.tokenize(model, text, add_special=False, parse_special=False)
        assert tokens and all(isinstance(t, int) and 0 <= t < model.info.n_vocab for t in tokens)
        assert backend_hooks.detokenize(model, tokens) == text
        with_bos = backend_hooks.tokenize(model, text, add_special=True, parse_special=False)
        assert len(with_bos) >= len(tokens)

    @pytest.mark.parametrize("text", ["hello world", "héllo 世界 🙂"])
    def test_token_pieces_are_the_tokens_bytes(self, backend_hooks: BackendHooks, model: ModelHandle,
                                               text: str) -> None:
        tokens = backend_hooks.tokenize(model, text, add_special=False, parse_special=False)
        pieces = backend_hooks.token_pieces(model, tokens)
        assert len(pieces) == len(tokens) and all(isinstance(p, bytes) for p in pieces)
        # whole pieces, so a SentencePiece model's first one keeps the space that detokenize drops
        assert b"".join(pieces).decode("utf-8").removeprefix(" ") == text

    def test_greedy_is_deterministic(self, backend_hooks: BackendHooks, model: ModelHandle,
                                     prompt: list[int]) -> None:
        a = self.generate(backend_hooks, model, prompt, sampling=GREEDY, num_predict=16)
        b = self.generate(backend_hooks, model, prompt, sampling=GREEDY, num_predict=16)
        assert a[:2] == b[:2]
        assert a[2].stats is not None and a[2].stats.prompt_tokens == len(prompt)
        assert a[2].stats.eval_count == len(a[1])

    def test_seeded_sampling_is_reproducible(self, backend_hooks: BackendHooks, model: ModelHandle,
                                             prompt: list[int]) -> None:
        def run(seed: int) -> list[int]:
            s = SamplingParams(temperature=1.5, top_k=0, top_p=1.0, seed=seed)
            return self.generate(backend_hooks, model, prompt, sampling=s, num_predict=12)[1]

        assert run(42) == run(42)
        assert len({tuple(run(seed)) for seed in (1, 2, 3, 4)}) >= 2, "different seeds gave one output"

    def test_stop_strings_are_never_emitted(self, backend_hooks: BackendHooks, model: ModelHandle,
                                            prompt: list[int]) -> None:
        free, _, _ = self.generate(backend_hooks, model, prompt, sampling=GREEDY, num_predict=24)
        if len(free) < 6:
            pytest.skip(f"the model's greedy output is too short to pick a stop string from: {free!r}")
        stop = free[len(free) // 2 : len(free) // 2 + 3]
        expect = free[: free.find(stop)]
        text, _, last = self.generate(backend_hooks, model, prompt, sampling=GREEDY, num_predict=24,
                                      stop=[stop])
        assert stop not in text
        assert text == expect
        assert last.finish_reason == "stop"

    def test_num_predict_ends_with_length(self, backend_hooks: BackendHooks, model: ModelHandle,
                                          prompt: list[int]) -> None:
        _, tokens, last = self.generate(backend_hooks, model, prompt, sampling=GREEDY, num_predict=3)
        assert last.finish_reason == "length"
        assert len(tokens) == 3 and last.stats is not None and last.stats.eval_count == 3

    def test_cancel_ends_the_stream_promptly(self, backend_hooks: BackendHooks, model: ModelHandle,
                                             prompt: list[int]) -> None:
        cancel = CancelToken()
        request = GenerationRequest(prompt=prompt, sampling=GREEDY, num_predict=100_000)
        events = backend_hooks.generate(model, request, cancel)
        seen = 0
        t0 = 0.0
        last: TokenEvent | None = None
        for ev in events:
            seen += 1
            last = ev
            if seen == 2:
                cancel.cancel()
                t0 = time.monotonic()
        assert t0, "the stream ended before it could be cancelled"
        assert time.monotonic() - t0 < self.max_cancel_seconds
        assert last is not None and last.finish_reason == "stop"
        assert seen < 40, f"{seen} events arrived after cancel"

    def test_logprobs_are_well_formed(self, backend_hooks: BackendHooks, model: ModelHandle,
                                      prompt: list[int]) -> None:
        request = GenerationRequest(prompt=prompt, sampling=GREEDY, num_predict=4, logprobs=True,
                                    top_logprobs=3)
        events = [ev for ev in backend_hooks.generate(model, request, CancelToken()) if ev.token >= 0]
        assert events
        for ev in events:
            assert ev.logprob is not None and ev.logprob.logprob <= 0 and ev.logprob.token == ev.token
            assert ev.top_logprobs is not None and len(ev.top_logprobs) == 3
            lps = [t.logprob for t in ev.top_logprobs]
            assert lps == sorted(lps, reverse=True) and all(lp <= 0 for lp in lps)
            assert ev.top_logprobs[0].token == ev.token  # greedy picks the most likely

    def test_grammar_constrains_output(self, backend_hooks: BackendHooks, model: ModelHandle,
                                       prompt: list[int]) -> None:
        s = SamplingParams(temperature=0.0, grammar=JSON_GRAMMAR)
        text, _, last = self.generate(backend_hooks, model, prompt, sampling=s, num_predict=64)
        value = json.loads(text)
        assert set(value) == {"name", "n"} and isinstance(value["n"], int)
        assert last.finish_reason == "stop"

    def test_lazy_tool_call_constraint(self, backend_hooks: BackendHooks, model: ModelHandle,
                                       prompt: list[int]) -> None:
        """A lazy constraint (strict tools, tool_choice auto) leaves free text alone and makes what
        follows the call's opener a call that fits the tools' schemas (here the opener is a word the
        model writes anyway, so that a random-weight model opens a call too)."""
        from corral.conversation import Tool
        from corral.prompts.toolgrammar import tool_call_constraint, tool_call_grammar

        free, tokens, _ = self.generate(backend_hooks, model, prompt, sampling=GREEDY, num_predict=48)
        # the opener: three letters the model writes, ending where one of its tokens ends
        heads = (backend_hooks.detokenize(model, tokens[:i]) for i in range(2, len(tokens) + 1))
        opener = next((m.group(0) for h in heads if (m := re.search(r"[A-Za-z]{3}$", h))), "")
        if not opener:
            pytest.skip(f"the model's free text has no word to use as an opener: {free!r}")
        params = {"type": "object", "required": ["n"], "additionalProperties": False,
                  "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 99}}}
        tools = [Tool(name="set", parameters=params)]
        s = SamplingParams(temperature=0.0, seed=0, grammar=tool_call_grammar(tools, opener, lazy=True),
                           json_schema=tool_call_constraint(tools, opener, lazy=True))
        text, _, _ = self.generate(backend_hooks, model, prompt, sampling=s, num_predict=96)
        head = free[: free.index(opener) + len(opener)]
        assert text.startswith(head), (free, text)  # free text is untouched up to the opener
        body = text[len(head):].lstrip()
        try:
            call, _ = json.JSONDecoder().raw_decode(body)
        except ValueError:
            pytest.fail(f"no call after the opener {opener!r}: {text!r} (free: {free!r})")
        assert call["name"] == "set" and set(call) == {"name", "arguments"}, call
        assert set(call["arguments"]) == {"n"} and type(call["arguments"]["n"]) is int, call
        assert 0 <= call["arguments"]["n"] <= 99, call

    def test_logit_bias_bans_and_forces_tokens(self, backend_hooks: BackendHooks, model: ModelHandle,
                                               prompt: list[int]) -> None:
        _, free, _ = self.generate(backend_hooks, model, prompt, sampling=GREEDY, num_predict=6)
        assert free, "the model generated nothing"
        banned = SamplingParams(temperature=0.0, logit_bias={free[0]: -100.0})
        _, tokens, _ = self.generate(backend_hooks, model, prompt, sampling=banned, num_predict=6)
        assert free[0] not in tokens
        forced_token = next((t for t in free if t != free[0]), free[0] + 1)
        forced = SamplingParams(temperature=0.0, logit_bias={forced_token: 100.0})
        _, tokens, _ = self.generate(backend_hooks, model, prompt, sampling=forced, num_predict=4)
        assert tokens == [forced_token] * 4
        outside = SamplingParams(temperature=0.0, logit_bias={model.info.n_vocab + 5: 1.0})
        with pytest.raises(InvalidRequestError, match="logit_bias"):
            self.generate(backend_hooks, model, prompt, sampling=outside, num_predict=2)

    def test_parallel_greedy_matches_sequential(self, backend_hooks: BackendHooks, model: ModelHandle,
                                                prompt: list[int]) -> None:
        other = backend_hooks.tokenize(model, "Once upon a time", add_special=True, parse_special=False)

        def greedy(p: list[int]) -> list[TokenEvent]:
            req = GenerationRequest(prompt=p, sampling=GREEDY, num_predict=8, top_logprobs=2)
            return [e for e in backend_hooks.generate(model, req, CancelToken()) if e.token >= 0]

        want = [greedy(p) for p in (prompt, other)]
        got: dict[int, list[TokenEvent]] = {}

        def worker(i: int, p: list[int]) -> None:
            got[i] = greedy(p)

        threads = [threading.Thread(target=worker, args=(i, p)) for i, p in enumerate((prompt, other))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        for i in (0, 1):
            assert i in got and same_up_to_float_noise(want[i], got[i]), (want[i], got.get(i))

    def test_embeddings_have_shape_and_unit_norm(self, backend_hooks: BackendHooks, model_path: str,
                                                 load_options: LoadOptions) -> None:
        opts = LoadOptions(num_ctx=load_options.num_ctx, num_parallel=1, num_batch=load_options.num_batch,
                           embedding=True)
        handle = backend_hooks.load_model(str(model_path), opts)
        try:
            inputs = [backend_hooks.tokenize(handle, t, add_special=True, parse_special=False)
                      for t in ("the sky is blue", "hello world")]
            result = backend_hooks.embed(handle, inputs, normalize=True)
            assert len(result.embeddings) == 2
            assert result.prompt_tokens == sum(len(i) for i in inputs)
            for vec in result.embeddings:
                assert len(vec) == handle.info.n_embd
                assert math.isclose(math.sqrt(sum(v * v for v in vec)), 1.0, rel_tol=1e-3)
            # Alone, an input gets its own vector again: up to the rounding of kernels that a packed
            # batch may choose (llama.cpp's Q4_K on Gemma: cosine 0.9998), never a different one.
            again = backend_hooks.embed(handle, inputs[:1], normalize=True).embeddings[0]
            assert sum(a * b for a, b in zip(again, result.embeddings[0], strict=True)) > 0.999
        finally:
            backend_hooks.unload(handle)

    def test_rerank_scores_each_document(self, backend_hooks: BackendHooks, reranker_path: str,
                                         model: ModelHandle) -> None:
        handle = backend_hooks.load_model(str(reranker_path), LoadOptions(num_ctx=512, num_parallel=1,
                                                                          embedding=True))
        try:
            assert handle.info.pooling == "rank"
            docs = ["the sky is blue", "Paris is the capital of France", "hello world"]
            result = backend_hooks.rerank(handle, "what is the capital of France", docs)
            assert len(result.scores) == 3 and all(math.isfinite(x) for x in result.scores)
            assert len(set(result.scores)) > 1, "every document got the same score"
            assert result.prompt_tokens > 0
            again = backend_hooks.rerank(handle, "what is the capital of France", docs[1:2])
            assert math.isclose(again.scores[0], result.scores[1], abs_tol=1e-5)  # a pair scores alone
        finally:
            backend_hooks.unload(handle)
        with pytest.raises(CapabilityError):
            backend_hooks.rerank(model, "query", ["a document"])  # not a reranker

    def test_unload_is_idempotent(self, backend_hooks: BackendHooks, model_path: str) -> None:
        handle = backend_hooks.load_model(str(model_path), LoadOptions(num_ctx=256, num_parallel=1))
        backend_hooks.unload(handle)
        backend_hooks.unload(handle)

    def test_non_gguf_file_is_rejected(self, backend_hooks: BackendHooks, tmp_path: Path) -> None:
        bad = tmp_path / "not-a-model.gguf"
        bad.write_text("this is not a model\n" * 100)
        with pytest.raises(InvalidModelFileError):
            backend_hooks.load_model(str(bad), LoadOptions(num_ctx=256, num_parallel=1))

    def test_truncated_file_is_rejected(self, backend_hooks: BackendHooks, model_path: str,
                                        tmp_path: Path) -> None:
        size = Path(model_path).stat().st_size
        cut = tmp_path / "truncated.gguf"
        with open(model_path, "rb") as src, open(cut, "wb") as dst:
            dst.write(src.read(min(size // 2, 8 << 20)))
        with pytest.raises(InvalidModelFileError):
            backend_hooks.load_model(str(cut), LoadOptions(num_ctx=256, num_parallel=1))

    def test_missing_file_is_a_clear_error(self, backend_hooks: BackendHooks, tmp_path: Path) -> None:
        with pytest.raises(CorralError):
            backend_hooks.load_model(str(tmp_path / "nope.gguf"), LoadOptions(num_ctx=256, num_parallel=1))

    # ---- media ---------------------------------------------------------------------------------
    def test_media_without_a_projector_are_refused(self, backend_hooks: BackendHooks, model: ModelHandle,
                                                   prompt: list[int]) -> None:
        """An image the model cannot see is an error, never silently dropped from the prompt."""
        request = GenerationRequest(prompt=prompt, media=[MediaInput(data=_IMAGES[0], position=1)],
                                    sampling=GREEDY, num_predict=2)
        assert not model.info.vision
        with pytest.raises(CapabilityError):
            collect(backend_hooks.generate(model, request, CancelToken()))

    def test_answers_depend_on_the_image(self, backend_hooks: BackendHooks, model_path: str,
                                         projector_path: str | None, load_options: LoadOptions) -> None:
        if projector_path is None:
            pytest.skip("no projector for this backend's test model (override projector_path)")
        opts = LoadOptions(num_ctx=load_options.num_ctx, num_parallel=1, num_batch=load_options.num_batch,
                           projector=str(projector_path))
        handle = backend_hooks.load_model(str(model_path), opts)
        try:
            assert handle.info.vision
            head = backend_hooks.tokenize(handle, "Look:", add_special=True, parse_special=False)
            tail = backend_hooks.tokenize(handle, " what is it?", add_special=False, parse_special=False)
            runs = []
            for image in (*_IMAGES, _IMAGES[0]):
                media = [MediaInput(data=image, position=len(head))]
                request = GenerationRequest(prompt=head + tail, media=media, sampling=GREEDY, num_predict=12)
                runs.append(collect(backend_hooks.generate(handle, request, CancelToken())))
            (_, a, last_a), (_, b, last_b), (_, again, _) = runs
            assert a != b, "two different images gave the same answer"
            assert a == again, "the same image gave two answers"
            assert last_a.stats is not None and last_b.stats is not None
            n_image = last_a.stats.prompt_tokens - len(head + tail)
            assert n_image > 0, "prompt_tokens does not count the image"
            assert last_b.stats.prompt_tokens == len(head + tail) + n_image
        finally:
            backend_hooks.unload(handle)

    def test_capital_of_france(self, backend_hooks: BackendHooks, model: ModelHandle) -> None:
        if not self.expect_capital_paris:
            pytest.skip("this model is not expected to know (expect_capital_paris = False)")
        prompt = backend_hooks.tokenize(model, self.paris_prompt, add_special=True, parse_special=False)
        text, _, _ = self.generate(backend_hooks, model, prompt, sampling=GREEDY, num_predict=8)
        assert "Paris" in text, f"{self.paris_prompt!r} continued greedily as {text!r}"

