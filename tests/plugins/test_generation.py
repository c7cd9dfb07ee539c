"""The llama.cpp generation engine (sampler chains + continuous-batching loop) on the real Gemma 3 270M."""

from __future__ import annotations

import contextlib
import json
import threading
import time

import pytest

from corral.errors import ContextLengthError, GrammarError, InvalidRequestError
from corral.types import (
    SHORT_REPLY_TOKENS,
    CancelToken,
    GenerationRequest,
    LoadOptions,
    SamplingParams,
    TokenEvent,
)

GREEDY = SamplingParams(temperature=0.0)


@pytest.fixture(scope="module")
def parts(native, gemma):
    """(native, model): the session's binding and Gemma load from tests/plugins/conftest.py."""
    return native, gemma


@pytest.fixture(scope="module")
def engine(parts):
    from corral_plugins._llama.batcher import Batcher

    native, model = parts
    b = Batcher(native, model, LoadOptions(num_ctx=1024, num_parallel=4))
    yield b
    b.close()


@pytest.fixture(scope="module")
def small(parts):
    """A second context on the same model with a 64-token context, for shift and truncation."""
    from corral_plugins._llama.batcher import Batcher

    native, model = parts
    b = Batcher(native, model, LoadOptions(num_ctx=64, num_parallel=2))
    yield b
    b.close()


def tok(parts, text: str) -> list[int]:
    return parts[1].tokenize(text, True, False)


def run(engine, prompt: list[int], cancel: CancelToken | None = None, **kw) -> list[TokenEvent]:
    kw.setdefault("sampling", GREEDY)
    return list(engine.submit(GenerationRequest(prompt=prompt, **kw), cancel or CancelToken()))


def text_of(events: list[TokenEvent]) -> str:
    return "".join(e.text for e in events)


def tokens_of(events: list[TokenEvent]) -> list[int]:
    return [e.token for e in events if e.token >= 0]


def test_greedy_is_deterministic_and_ends_with_stats(parts, engine):
    p = tok(parts, "The three primary colours are")
    a = run(engine, p, num_predict=12)
    b = run(engine, p, num_predict=12)
    assert tokens_of(a) == tokens_of(b) and len(tokens_of(a)) == 12
    assert text_of(a) == text_of(b) and text_of(a).strip()
    last = a[-1]
    assert last.finish_reason == "length" and all(e.finish_reason is None for e in a[:-1])
    assert last.stats is not None and last.stats.prompt_tokens == len(p) and last.stats.eval_count == 12
    assert last.stats.prompt_eval_ns > 0 and last.stats.eval_ns > 0
    # The second run found the first one's KV: all but the last prompt token were reused.
    assert b[-1].stats.cached_tokens == len(p) - 1


def test_seeded_sampling_reproducible(parts, engine):
    p = tok(parts, "Once upon a time")
    s = SamplingParams(temperature=1.0, top_k=100, top_p=0.95, seed=1234)
    a = run(engine, p, sampling=s, num_predict=8)
    b = run(engine, p, sampling=s, num_predict=8)
    assert tokens_of(a) == tokens_of(b)
    others = {
        tuple(tokens_of(run(engine, p, sampling=SamplingParams(temperature=1.5, seed=k), num_predict=8)))
        for k in (1, 2)
    }
    assert len(others) > 1  # different seeds really sample differently


def test_top_k_preselection_samples_exactly_like_the_full_vocabulary(parts, engine, monkeypatch):
    from corral_plugins._llama import sampling

    p = tok(parts, "My favourite animal is the")
    s = SamplingParams(temperature=1.0, top_k=40, top_p=0.95, seed=99, logit_bias={236761: 2.0})
    fast = run(engine, p, sampling=s, num_predict=12)
    monkeypatch.setattr(sampling, "_CAND_MAX", 0)  # disables the numpy pre-selection
    full = run(engine, p, sampling=s, num_predict=12)
    assert tokens_of(fast) == tokens_of(full)


def test_concurrent_sequences_match_running_alone(parts, engine):
    """Batched sequences see only their own KV: same tokens as alone, up to float noise.

    Batch composition changes llama.cpp's matmul kernels (gemv vs repacked gemm), so logprobs move by a
    few hundredths; two candidates that close may swap. Anything else (cross-talk between sequences,
    wrong positions) shows up as a divergence where the alone run had a clear winner.
    """
    prompts = [tok(parts, t) for t in ("The sun is a", "Python is a programming", "My favourite food is",
                                       "In 1492, Columbus")]
    alone = [[e for e in run(engine, p, num_predict=8, top_logprobs=2) if e.token >= 0] for p in prompts]
    results: list[list[TokenEvent]] = [[] for _ in prompts]

    def worker(i: int) -> None:
        results[i] = [e for e in run(engine, prompts[i], num_predict=8, logprobs=True) if e.token >= 0]

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    for a, c in zip(alone, results, strict=True):
        assert len(c) == 8
        for x, y in zip(a, c, strict=True):
            if x.token != y.token:
                top = x.top_logprobs
                assert top[0].logprob - top[1].logprob < 0.3, "diverged where the choice was clear"
                break
            assert abs(x.top_logprobs[0].logprob - y.logprob.logprob) < 0.3


def test_more_requests_than_slots_all_finish(parts, engine):
    p = tok(parts, "Count: one, two,")
    out: list[list[TokenEvent]] = []
    lock = threading.Lock()

    def worker() -> None:
        ev = run(engine, p, num_predict=4)
        with lock:
            out.append(ev)

    threads = [threading.Thread(target=worker) for _ in range(6)]  # 4 slots
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert len(out) == 6 and all(ev[-1].finish_reason == "length" for ev in out)
    assert len({tuple(tokens_of(ev)) for ev in out}) == 1


def test_cancel_stops_within_a_token_and_frees_the_slot(parts, engine):
    cancel = CancelToken()
    it = engine.submit(GenerationRequest(prompt=tok(parts, "List of animals:"), sampling=GREEDY,
                                         num_predict=500), cancel)
    got = []
    for ev in it:
        got.append(ev)
        if len(got) == 3:
            cancel.cancel()
    assert got[-1].finish_reason == "stop"
    assert got[-1].stats.eval_count <= 5
    # All four slots are usable again: four concurrent requests finish.
    done = []
    threads = [threading.Thread(target=lambda: done.append(run(engine, tok(parts, "Hi"), num_predict=2)))
               for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(done) == 4


def test_abandoned_stream_frees_the_slot(parts, engine):
    it = engine.submit(GenerationRequest(prompt=tok(parts, "Tell me a story"), sampling=GREEDY,
                                         num_predict=500), CancelToken())
    next(it)
    it.close()  # the consumer went away without cancelling
    ev = run(engine, tok(parts, "Hello"), num_predict=2)
    assert ev[-1].finish_reason == "length"


def test_dropped_unread_streams_free_their_slots(parts, engine):
    import gc

    for _ in range(4):  # as many as there are slots, each asking for far more than a test could wait
        engine.submit(GenerationRequest(prompt=tok(parts, "Endless text:"), sampling=GREEDY,
                                        num_predict=100_000), CancelToken())
    gc.collect()
    done: list[list[TokenEvent]] = []
    t = threading.Thread(target=lambda: done.append(run(engine, tok(parts, "Hello"), num_predict=2)))
    t.start()
    t.join(120)  # a hang detector, not a speed bar: without the cancel this waits for 400k tokens
    assert done and done[0][-1].finish_reason == "length"


def test_stop_strings_including_one_spanning_tokens(parts, engine):
    p = tok(parts, "The capital of France is Paris. The capital of Germany is")
    full = run(engine, p, num_predict=24)
    pieces = [parts[1].token_bytes(t).decode("utf-8", "replace") for t in tokens_of(full)]
    text = "".join(pieces)
    # A stop string made of the end of one token and the start of the next.
    k = next(i for i in range(2, len(pieces) - 1) if len(pieces[i]) >= 2 and len(pieces[i + 1]) >= 2)
    stop = pieces[k][-2:] + pieces[k + 1][:2]
    cut = text.index(stop)
    ev = run(engine, p, num_predict=24, stop=[stop])
    assert text_of(ev) == text[:cut]
    assert ev[-1].finish_reason == "stop"
    assert stop not in text_of(ev)


def test_num_predict_limits_and_finishes_with_length(parts, engine):
    ev = run(engine, tok(parts, "Numbers:"), num_predict=5)
    assert len(tokens_of(ev)) == 5 and ev[-1].finish_reason == "length" and ev[-1].stats.eval_count == 5
    ev = run(engine, tok(parts, "Numbers:"), num_predict=0)
    assert tokens_of(ev) == [] and ev[-1].finish_reason == "length"


def test_grammar_constrains_output_to_json(parts, engine):
    grammar = r'''
root   ::= "{" ws "\"name\":" ws string "," ws "\"age\":" ws number ws "}"
string ::= "\"" [a-zA-Z ]{1,12} "\""
number ::= [1-9] [0-9]?
ws     ::= [ ]?
'''
    s = SamplingParams(temperature=0.7, seed=7, grammar=grammar)
    ev = run(engine, tok(parts, "A person as JSON:"), sampling=s, num_predict=60)
    obj = json.loads(text_of(ev))
    assert set(obj) == {"name", "age"} and isinstance(obj["age"], int)
    assert ev[-1].finish_reason == "stop"  # the grammar allows only end-of-generation once complete


def test_invalid_grammar_and_bad_input_raise_before_queueing(parts, engine):
    p = tok(parts, "x")
    with pytest.raises(GrammarError):
        engine.submit(GenerationRequest(prompt=p, sampling=SamplingParams(grammar='root ::= "unterminated')),
                      CancelToken())
    with pytest.raises(GrammarError):
        engine.submit(GenerationRequest(prompt=p, sampling=SamplingParams(grammar="root ::= missing")),
                      CancelToken())
    with pytest.raises(InvalidRequestError):
        engine.submit(GenerationRequest(prompt=[]), CancelToken())
    with pytest.raises(InvalidRequestError):
        engine.submit(GenerationRequest(prompt=[10**9]), CancelToken())
    with pytest.raises(InvalidRequestError):
        engine.submit(GenerationRequest(prompt=p, sampling=SamplingParams(logit_bias={10**9: 1.0})),
                      CancelToken())
    # Nothing was lost: the engine still serves.
    assert run(engine, p, num_predict=2)[-1].finish_reason == "length"


def test_logit_bias_bans_a_token(parts, engine):
    p = tok(parts, "The capital of France is")
    first = tokens_of(run(engine, p, num_predict=1))[0]
    banned = run(engine, p, num_predict=1, sampling=SamplingParams(temperature=0, logit_bias={first: -1e9}))
    assert tokens_of(banned)[0] != first


def test_logprobs_shapes(parts, engine):
    ev = run(engine, tok(parts, "The capital of France is"), num_predict=6, logprobs=True, top_logprobs=3)
    toks = [e for e in ev if e.token >= 0]
    assert len(toks) == 6
    for e in toks:
        assert e.logprob is not None and e.logprob.token == e.token and e.logprob.logprob <= 0
        assert e.top_logprobs is not None and len(e.top_logprobs) == 3
        lps = [t.logprob for t in e.top_logprobs]
        assert lps == sorted(lps, reverse=True)
        assert e.top_logprobs[0].token == e.token  # greedy picks the most likely token
        assert e.top_logprobs[0].bytes == list(parts[1].token_bytes(e.token))
    plain = run(engine, tok(parts, "The capital of France is"), num_predict=2)
    assert all(e.logprob is None and e.top_logprobs is None for e in plain)


def test_prefix_reuse_counts_cached_tokens(parts, engine):
    history = tok(parts, "User: What is the tallest mountain on Earth? Model:")
    first = run(engine, history, num_predict=8)
    follow = history + tokens_of(first) + parts[1].tokenize(" User: And the second tallest? Model:", False)
    second = run(engine, follow, num_predict=4)
    st = second[-1].stats
    assert st.prompt_tokens == len(follow)
    assert st.cached_tokens >= len(history) + len(tokens_of(first)) - 1


def test_turn_suffix_is_cached_for_the_next_turn(parts, engine):
    """After an answer, the template's turn suffix is evaluated while idle: the follow-up finds the
    answer AND the suffix cached, and evaluates only its own words."""
    history = tok(parts, "User: Name a large river in Europe. Model:")
    suffix = parts[1].tokenize(" User:", False)
    first = run(engine, history, num_predict=6, turn_suffix=suffix)  # ends by "length"
    assert first[-1].finish_reason == "length"
    follow = history + tokens_of(first) + suffix + parts[1].tokenize(" And in Asia? Model:", False)
    deadline = time.monotonic() + 10
    while engine._busy() and time.monotonic() < deadline:  # the warm-up runs on the loop thread
        time.sleep(0.01)
    second = run(engine, follow, num_predict=2)
    assert second[-1].stats.cached_tokens >= len(history) + len(tokens_of(first)) + len(suffix)
    # without a suffix, only the answer (less its last, unevaluated token) is cached
    other = tok(parts, "User: Name a large lake in Africa. Model:")
    plain = run(engine, other, num_predict=6)
    again = run(engine, other + tokens_of(plain) + suffix + parts[1].tokenize(" Why?", False), num_predict=2)
    assert again[-1].stats.cached_tokens == len(other) + len(tokens_of(plain)) - 1


def test_shared_prefix_is_evaluated_once(parts, engine):
    system = tok(parts, "You are a careful assistant. " * 25)
    prompts = [system + parts[1].tokenize(f" Question {i}: what is {i} plus {i}?", False) for i in range(3)]
    results: list[list[TokenEvent] | None] = [None] * 3

    def worker(i: int) -> None:
        results[i] = run(engine, prompts[i], num_predict=3)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    cached = sorted(r[-1].stats.cached_tokens for r in results)
    # Whoever evaluated the system prompt, the other two reused at least most of it.
    assert cached[1] >= len(system) - 16 and cached[2] >= len(system) - 16


def test_context_shift_and_its_absence(parts, small):
    p = tok(parts, "Write a very long list of fruits: apple, banana, cherry,")
    ev = run(small, p, num_predict=90)
    assert ev[-1].finish_reason == "length" and ev[-1].stats.eval_count == 90
    assert ev[-1].stats.truncated  # the context (64) was shifted to go on
    ev = run(small, p, num_predict=90, shift=False)
    # The last token needs no KV cell of its own, so one more than the free cells is generated.
    assert ev[-1].finish_reason == "length" and ev[-1].stats.eval_count == 64 - len(p) + 1


def test_long_prompt_truncated_or_refused(parts, small):
    p = tok(parts, "word " * 100)
    assert len(p) > 64
    with pytest.raises(ContextLengthError, match="the prompt is longer than the context length"):
        small.submit(GenerationRequest(prompt=p, shift=False), CancelToken())
    ev = run(small, p, num_predict=2, num_keep=4)
    st = ev[-1].stats
    assert st.truncated and st.prompt_tokens == 64 - (64 - 5) // 2  # keep 4 + BOS


def test_multibyte_text_is_never_split(parts, engine):
    p = tok(parts, "日本語の文章を書いてください。東京は")
    ev = run(engine, p, num_predict=30)
    raw = b"".join(parts[1].token_bytes(t) for t in tokens_of(ev))
    assert text_of(ev) == raw.decode("utf-8", "replace")
    assert any(ord(c) > 0x2FFF for c in text_of(ev))  # the model did write CJK
    assert all("\ufffd" not in e.text for e in ev)


def test_close_is_idempotent_and_refuses_new_work(parts):
    from corral_plugins._llama.batcher import Batcher

    native, model = parts
    b = Batcher(native, model, LoadOptions(num_ctx=256, num_parallel=1))
    t0 = time.monotonic()
    b.close()
    b.close()
    assert time.monotonic() - t0 < 5
    with pytest.raises(Exception, match="unload"):
        b.submit(GenerationRequest(prompt=tok(parts, "x")), CancelToken())


PERSON_SCHEMA = {"type": "object", "properties": {
    "name": {"type": "string", "maxLength": 20}, "age": {"type": "integer", "minimum": 0, "maximum": 120},
    "city": {"type": "string", "maxLength": 20},
    "tags": {"type": "array", "items": {"type": "string", "maxLength": 10}, "maxItems": 3}},
    "required": ["name", "age", "city", "tags"]}


def test_checking_the_sampled_token_equals_masking_the_whole_vocabulary(parts, plain, monkeypatch):
    """Greedy and seeded output with a GBNF grammar: sample-then-check (the fast path) gives the tokens
    that masking all 262k candidates before every draw (the old path) gives. (Without speculation:
    drafts change the batch's shapes, and a near-tie can turn on those.)"""
    from corral.prompts import schema_to_gbnf
    from corral_plugins._llama.sampling import SamplerChain

    p = tok(parts, "A person as JSON:")
    grammar = schema_to_gbnf(PERSON_SCHEMA)
    for s in (SamplingParams(temperature=0.0, grammar=grammar),
              SamplingParams(temperature=0.0, repeat_penalty=1.3, grammar=grammar)):
        fast = run(plain, p, sampling=s, num_predict=24)
        with monkeypatch.context() as m:
            m.setattr(SamplerChain, "_allows", lambda self, t: False)  # every draw takes the masked path
            full = run(plain, p, sampling=s, num_predict=24)
        assert tokens_of(fast) == tokens_of(full)


@pytest.mark.parametrize("temperature", [0.0, 0.9])
def test_schema_through_llguidance_yields_valid_documents(parts, engine, temperature):
    import jsonschema

    from corral.prompts import schema_to_gbnf
    from corral.prompts.schemanorm import json_constraint

    s = SamplingParams(temperature=temperature, seed=5, grammar=schema_to_gbnf(PERSON_SCHEMA),
                       json_schema=json_constraint(PERSON_SCHEMA))
    ev = run(engine, tok(parts, "A person as JSON:"), sampling=s, num_predict=200)
    assert ev[-1].finish_reason == "stop"
    jsonschema.validate(json.loads(text_of(ev)), PERSON_SCHEMA)


def test_the_llguidance_tokenizer_is_built_while_the_model_loads(parts, monkeypatch):
    """Its build holds the GIL for about a second on this vocabulary: done at load, before the loop
    runs, so the first schema request only compiles its grammar and stalls no other stream."""
    import jsonschema

    from corral.prompts import schema_to_gbnf
    from corral.prompts.schemanorm import json_constraint
    from corral_plugins._llama.batcher import Batcher
    from corral_plugins._llama.guidance import Guidance

    native, model = parts
    b = Batcher(native, model, LoadOptions(num_ctx=256, num_parallel=1))
    try:
        def built_on_a_request(self):  # type: ignore[no-untyped-def]
            raise AssertionError("the tokenizer was built on a request")

        monkeypatch.setattr(Guidance, "_tokenizer", built_on_a_request)
        c = json_constraint(PERSON_SCHEMA)
        assert b._guidance.guide(c) is not None
        s = SamplingParams(temperature=0.0, grammar=schema_to_gbnf(PERSON_SCHEMA), json_schema=c)
        ev = run(b, tok(parts, "A person as JSON:"), sampling=s, num_predict=200)
        jsonschema.validate(json.loads(text_of(ev)), PERSON_SCHEMA)
    finally:
        b.close()


EDIT_SOURCE = '''def fibonacci(n):
    """Return the first n Fibonacci numbers."""
    numbers = [0, 1]
    while len(numbers) < n:
        numbers.append(numbers[-1] + numbers[-2])
    return numbers[:n]


def factorial(n):
    """Return n factorial."""
    result = 1
    for i in range(2, n + 1):
        result *= i
    return result
'''


@pytest.fixture(scope="module")
def plain(parts):
    """The same model without speculative decoding, as the reference for it."""
    from corral_plugins._llama.batcher import Batcher

    native, model = parts
    b = Batcher(native, model, LoadOptions(num_ctx=1024, num_parallel=2, speculative=False))
    yield b
    b.close()


class _FixedRowCosts:
    """Rows priced as on a machine where they are cheap, and never re-learned: whether a sequence
    drafts then depends on its guesses alone, not on how busy the machine running the test is."""

    def learn(self, dt: float, rows: int) -> None:
        pass

    def step_time(self, rows: int) -> float:
        return 0.010 + 0.0005 * rows


@pytest.fixture
def drafting(engine, monkeypatch):
    monkeypatch.setattr(engine, "_row_costs", _FixedRowCosts())
    return engine


def edit_prompt(parts) -> list[int]:
    return parts[1].tokenize("<start_of_turn>user\nRepeat this code exactly, renaming fibonacci to fib:\n\n"
                             + EDIT_SOURCE + "<end_of_turn>\n<start_of_turn>model\n", True, True)


def assert_same_up_to_float_noise(plain_events: list[TokenEvent], spec_events: list[TokenEvent]) -> None:
    """Verifying drafts evaluates several tokens in one batch, which changes llama.cpp's matmul kernels
    as concurrent batching does: the tokens match until two candidates within float noise swap."""
    for x, y in zip(plain_events, spec_events, strict=False):
        if x.token != y.token:
            top = x.top_logprobs
            assert top is not None and top[0].logprob - top[1].logprob < 0.3, "diverged on a clear choice"
            return
    assert len(plain_events) == len(spec_events)


def test_speculation_keeps_greedy_output_and_accepts_drafts(parts, engine, drafting, plain):
    p = edit_prompt(parts)
    ref = [e for e in run(plain, p, num_predict=60, top_logprobs=2) if e.token >= 0]
    events = run(engine, p, num_predict=60, top_logprobs=2)
    stats = events[-1].stats
    assert stats is not None and stats.draft_accepted > 10 and stats.draft_tokens >= stats.draft_accepted
    assert_same_up_to_float_noise(ref, [e for e in events if e.token >= 0])
    assert stats.eval_count == 60 and events[-1].finish_reason == "length"  # num_predict exactly
    assert all(e.top_logprobs is not None and len(e.top_logprobs) == 2 for e in events if e.token >= 0)


def test_a_repeated_request_drafts_from_the_answer_it_got_before(parts, engine, drafting):
    """Prompt lookup across requests: asked again, the model's memory of its last answer drafts the
    new one, where the prompt's own text has nothing to guess from. (A grammar holds the answer fixed:
    a free greedy answer can turn on a near-tie that batch shapes decide.)"""
    answer = ("Quillhaven's lighthouse was built in 1871 by Agnes Marlowe, who kept its lamp burning "
              "through forty winters and logged every ship that passed the northern reef.")
    s = SamplingParams(temperature=0.0, grammar=f'root ::= "{answer}"')
    p = tok(parts, "Tell me about the harbour town of Quillhaven.")
    first = run(engine, p, sampling=s, num_predict=100)
    again = run(engine, p, sampling=s, num_predict=100)
    assert text_of(first) == text_of(again) == answer
    s1, s2 = first[-1].stats, again[-1].stats
    assert s1 is not None and s2 is not None
    assert s1.draft_accepted <= 5 and s2.draft_accepted >= 20, (s1, s2)


def test_speculation_stops_exactly_where_decoding_would(parts, engine, drafting):
    """A stop string or num_predict inside an accepted draft ends the answer right there."""
    p = edit_prompt(parts)
    full = text_of(run(engine, p, num_predict=120))
    assert "return result" in full
    stopped = run(engine, p, num_predict=120, stop=["return result"])
    assert stopped[-1].finish_reason == "stop"
    assert full.startswith(text_of(stopped) + "return result")
    short = run(engine, p, num_predict=23)
    assert short[-1].stats is not None and short[-1].stats.eval_count == 23
    assert full.startswith(text_of(short))


def test_speculation_with_a_grammar_and_sampling(parts, engine, drafting, monkeypatch):
    grammar = 'root ::= "def fib(n):" [^\\x00]{0,200}'
    s = SamplingParams(temperature=0.7, seed=11, grammar=grammar)
    ev = run(engine, edit_prompt(parts), sampling=s, num_predict=50)
    assert text_of(ev).startswith("def fib(n):")
    # The same drafts each time (no memory of the answer before): batch shapes change the logits'
    # last bits, which a sampled token can turn on.
    monkeypatch.setattr(engine, "_memory", None)
    a = run(engine, edit_prompt(parts), sampling=s, num_predict=30)
    b = run(engine, edit_prompt(parts), sampling=s, num_predict=30)
    assert text_of(a) == text_of(b)  # seeded sampling stays reproducible with drafts in the batch



def test_speculation_under_a_schema_keeps_greedy_output(parts, engine, drafting, plain):
    """Under an llguidance schema the grammar cuts drafts and guesses forced keys itself (drafted as
    far as the step's cost model finds them worth it); the answer is the one decoding without
    speculation gives."""
    from corral.prompts import schema_to_gbnf
    from corral.prompts.schemanorm import json_constraint

    s = SamplingParams(temperature=0.0, grammar=schema_to_gbnf(PERSON_SCHEMA),
                       json_schema=json_constraint(PERSON_SCHEMA))
    p = tok(parts, "A person as JSON:")
    ref = [e for e in run(plain, p, sampling=s, num_predict=80, top_logprobs=2) if e.token >= 0]
    events = run(engine, p, sampling=s, num_predict=80, top_logprobs=2)
    stats = events[-1].stats
    assert stats is not None and stats.draft_tokens >= stats.draft_accepted
    assert_same_up_to_float_noise(ref, [e for e in events if e.token >= 0])
    assert stats.eval_count == len(ref)


def test_a_costly_grammar_sits_out_steps_instead_of_slowing_its_neighbours(parts, engine):
    """A grammar whose every token costs about a second of masking over Gemma's 262k vocabulary (an
    enum of 1,024 near-identical strings) pays that back by sitting out steps: a plain request beside
    it gets its 40 tokens while the constrained one gets one or two (in lockstep it got one per step,
    and the plain request waited about a second for each)."""
    alts = " | ".join(f'"the value that is called number {i:04d}"' for i in range(1024))
    grammar = f'root ::= "[" item ("," item)*\nitem ::= "\\"" ({alts}) "\\""\n'
    heavy_cancel = CancelToken()
    heavy: list[float] = []

    def constrained() -> None:
        req = GenerationRequest(prompt=tok(parts, "List forty values as JSON:"), num_predict=400,
                                sampling=SamplingParams(temperature=0.0, grammar=grammar))
        for e in engine.submit(req, heavy_cancel):
            if e.token >= 0:
                heavy.append(time.perf_counter())

    thread = threading.Thread(target=constrained)
    thread.start()
    try:
        while not heavy:  # the constrained request is past its prompt and generating
            time.sleep(0.01)
        t0 = time.perf_counter()
        plain = run(engine, tok(parts, "Tell a long story about a river."), num_predict=40)
        t1 = time.perf_counter()
    finally:
        heavy_cancel.cancel()
        thread.join()
    assert len(tokens_of(plain)) == 40
    beside = sum(1 for t in heavy if t0 <= t <= t1)
    assert beside <= 3, (beside, t1 - t0)


def test_a_short_request_is_not_held_up_by_bulk_generations(parts):
    """Two long generations fill num_parallel=2: a third long request waits for a slot, but a short one
    (num_predict <= SHORT_REPLY_TOKENS) is admitted at once to the spare sequence and gets its answer
    while the long ones take turns at its steps (stepplan.BULK_EVERY); once a slot frees, the waiting
    long request runs."""
    from corral_plugins._llama.batcher import Batcher
    from corral_plugins._llama.stepplan import BULK_EVERY

    native, model = parts
    b = Batcher(native, model, LoadOptions(num_ctx=512, num_parallel=2, speculative=False))
    cancels = [CancelToken(), CancelToken()]
    got: list[list[int]] = [[], [], []]  # each long request's tokens, in order

    def long_one(i: int, cancel: CancelToken) -> None:
        req = GenerationRequest(prompt=tok(parts, f"Count from {i} to 5000, separated by commas."),
                                num_predict=400, sampling=GREEDY)
        for e in b.submit(req, cancel):
            if e.token >= 0:
                got[i].append(e.token)

    threads = [threading.Thread(target=long_one, args=(i, cancels[i])) for i in (0, 1)]
    third_cancel = CancelToken()
    try:
        for t in threads:
            t.start()
        while not (got[0] and got[1]):  # both generating: the two regular sequences are busy
            time.sleep(0.01)
        third = threading.Thread(target=long_one, args=(2, third_cancel))
        third.start()
        before = [len(got[0]), len(got[1])]
        short = run(b, tok(parts, "Say hello."), num_predict=8)
        during = [len(got[0]) - before[0], len(got[1]) - before[1]]
        assert short[-1].finish_reason in ("stop", "length") and tokens_of(short)
        assert not got[2]  # the third long request still waits for a regular sequence
        assert all(t.is_alive() for t in threads)  # the long ones are still generating
        # the short request's prompt step and its (at most 8) decode steps: each long one decoded in
        # at most about one of every two of them (one in BULK_EVERY, at least one long one a step; in
        # lockstep each would have decoded in every one)
        steps = 1 + len(tokens_of(short))
        assert BULK_EVERY >= 2 and max(during) <= steps // 2 + 2, (during, steps)
        cancels[0].cancel()  # a regular sequence frees: the waiting long request is admitted
        threads[0].join()
        while not got[2]:
            time.sleep(0.01)
    finally:
        for c in (*cancels, third_cancel):
            c.cancel()
        for t in threads:
            t.join()
        b.close()


def _record_plans(engine, monkeypatch) -> list[list[tuple[bool, int, int]]]:
    """Each step's plan from now on: (short request, first prompt index or -1 for a decode, count) per
    sequence."""
    plans: list[list[tuple[bool, int, int]]] = []
    decode = engine._decode

    def spy(plan):  # type: ignore[no-untyped-def]
        plans.append([(s.job.request.short, start, n) for s, start, n in plan if s.job is not None])
        return decode(plan)

    monkeypatch.setattr(engine, "_decode", spy)
    return plans


def test_bulk_sequences_do_not_draft_while_a_short_request_is_served(parts, engine, drafting, monkeypatch):
    """Their draft rows would lengthen every step the short answer waits for; they draft again after."""
    plans = _record_plans(engine, monkeypatch)
    cancel = CancelToken()
    got: list[int] = []

    def long_one() -> None:
        for e in engine.submit(GenerationRequest(prompt=edit_prompt(parts), num_predict=300, sampling=GREEDY),
                               cancel):
            if e.token >= 0:
                got.append(e.token)

    thread = threading.Thread(target=long_one)
    thread.start()
    try:
        while len(got) < 20:
            time.sleep(0.01)
        short = run(engine, tok(parts, "Say hello."), num_predict=8)
        assert tokens_of(short)
        while len(got) < 120:
            time.sleep(0.01)
    finally:
        cancel.cancel()
        thread.join()
    beside = [p for p in plans if any(short for short, _, _ in p)]
    assert beside and all(n == 1 for p in beside for short, start, n in p if not short and start == -1)
    assert any(n > 1 for p in plans for short, start, n in p if not short and start == -1)  # it drafts


def test_other_prompts_advance_once_in_bulk_every_steps_while_a_short_request_is_served(parts, engine,
                                                                                         monkeypatch):
    """A long prompt being evaluated when a short request arrives keeps advancing, in one step out of
    BULK_EVERY and by BULK_PROMPT tokens, so the short answer's other steps stay light."""
    from corral_plugins._llama.guesses import GuessStats
    from corral_plugins._llama.recall import AnswerMemory
    from corral_plugins._llama.stepplan import BULK_EVERY, BULK_PROMPT

    plans = _record_plans(engine, monkeypatch)
    # Guess stats nothing taught yet and no answers to recall (an earlier test answered "Say hello."):
    # the short answer drafts nothing, so it takes one step a token and lasts long enough for bulk turns.
    monkeypatch.setattr(engine, "_guess_stats", GuessStats(engine._lookup_max))
    monkeypatch.setattr(engine, "_memory", AnswerMemory())
    cancel = CancelToken()
    got: list[int] = []

    def generating() -> None:  # a decoding sequence keeps prompt chunks at the mixed step's size
        req = GenerationRequest(prompt=tok(parts, "Count from 1 to 5000."), num_predict=400, sampling=GREEDY)
        got.extend(e.token for e in engine.submit(req, cancel) if e.token >= 0)

    threads = [threading.Thread(target=generating),
               threading.Thread(target=lambda: run(engine, edit_prompt(parts) * 5, num_predict=40))]
    threads[0].start()
    deadline = time.monotonic() + 60
    try:
        while not got and time.monotonic() < deadline:
            time.sleep(0.001)
        # from here on the only prompt chunks are the long prompt's (the generating one's prompt may
        # have started past 0 too, from a prefix an earlier request left in the cache)
        seen = len(plans)
        threads[1].start()
        while time.monotonic() < deadline and not any(start > 0 and not short for p in plans[seen:]
                                                      for short, start, _ in p):
            time.sleep(0.001)
        short = run(engine, tok(parts, "Say hello."), num_predict=16)
        assert tokens_of(short)
    finally:
        threads[1].join(60)
        cancel.cancel()
        threads[0].join(60)
    beside = [p for p in plans if any(short for short, _, _ in p)]
    turns = [p for p in beside if any(not short and start >= 0 for short, start, _ in p)]
    assert len(beside) >= 4 and 1 <= len(turns) <= len(beside) // BULK_EVERY + 1, (len(turns), len(beside))
    assert all(n <= BULK_PROMPT for p in turns for short, start, n in p if not short and start >= 0)


def test_embedding_decodes_take_turns_with_steps_after_short_requests(parts, monkeypatch):
    """An embedding decode of the same model never runs during a step of the loop (two thread pools on
    the same cores), waits while a short request is served, and is not held back by bulk work: it runs
    between two steps of a long generation, which goes on after it."""
    from corral_plugins._llama import turns as turns_module
    from corral_plugins._llama.batcher import Batcher
    from corral_plugins._llama.embed import Embedder

    monkeypatch.setattr(turns_module, "EMBED_WAIT_S", 60.0)  # the order, not the deadline, is tested
    native, model = parts
    b = Batcher(native, model, LoadOptions(num_ctx=512, num_parallel=2, speculative=False))
    emb = Embedder(model, LoadOptions(num_ctx=256), turns=b.turns)
    granted: list[bool] = []  # per embedding decode: whether a short request was being served
    embedding = b.turns.embedding

    @contextlib.contextmanager
    def watched(may_stop: bool = False):  # type: ignore[no-untyped-def]
        with embedding(may_stop):
            granted.append(any(s.job is not None and s.job.request.short for s in b._slots))
            yield

    monkeypatch.setattr(b.turns, "embedding", watched)
    inputs = [tok(parts, t) for t in ("rivers", "bread", "the moon", "owls")]
    try:
        # beside a short request: the decode waits until the short request is served
        events = b.submit(GenerationRequest(prompt=tok(parts, "Name three rivers."), num_predict=16,
                                            sampling=GREEDY), CancelToken())
        first = next(events)
        assert first.token >= 0
        done: list[object] = []
        worker = threading.Thread(target=lambda: done.append(emb.embed(inputs, normalize=True)))
        worker.start()
        rest = list(events)
        worker.join()
        assert rest[-1].finish_reason is not None and len(done[0].embeddings) == 4  # type: ignore[attr-defined]
        assert granted == [False]
        # beside a long generation: the decode runs between its steps, the generation goes on
        cancel = CancelToken()
        got: list[int] = []

        def long_one() -> None:
            req = GenerationRequest(prompt=tok(parts, "Count from 1 to 5000, separated by commas."),
                                    num_predict=400, sampling=GREEDY)
            for e in b.submit(req, cancel):
                if e.token >= 0:
                    got.append(e.token)

        gen = threading.Thread(target=long_one)
        gen.start()
        while len(got) < 3:
            time.sleep(0.01)
        assert len(emb.embed(inputs, normalize=True).embeddings) == 4
        at = len(got)
        while len(got) < at + 3:  # still generating after the embedding
            time.sleep(0.01)
        # (beside a busy loop it may take several decodes: embed.BUSY_LOOP_HOLD_S)
        assert gen.is_alive() and len(granted) >= 2 and not any(granted)
        cancel.cancel()
        gen.join()
    finally:
        emb.close()
        b.close()


def _running_a_long_decode(b) -> None:  # type: ignore[no-untyped-def]
    """Wait until ``b``'s cores run a decode (a whole prompt chunk takes about a second here)."""
    deadline = time.monotonic() + 60
    while not b.turns._running and time.monotonic() < deadline:
        time.sleep(0.001)
    time.sleep(0.05)


def test_a_short_request_preempts_a_bulk_step_and_the_bulk_output_is_unchanged(parts):
    """A short request arriving while a long prompt's chunk is evaluated stops that decode at its next
    graph node instead of waiting for it; llama.cpp drops the chunk's cells and the loop evaluates it
    again later, so the long request's greedy answer is the one it gets alone."""
    from corral_plugins._llama.batcher import Batcher

    native, model = parts
    b = Batcher(native, model, LoadOptions(num_ctx=2048, num_parallel=2, num_batch=512, speculative=False))
    # two chunks of num_batch, whose greedy continuation no float noise can change
    long_prompt = tok(parts, "Counting: " + ", ".join(str(i) for i in range(1, 200)))
    try:
        alone = tokens_of(run(b, long_prompt, num_predict=40))
        b._truncate(b._slots[0], 0)  # no prefix to reuse: the prompt is evaluated again in chunks
        b._truncate(b._slots[1], 0)
        b._truncate(b._slots[2], 0)
        got: list[list[TokenEvent]] = []
        worker = threading.Thread(target=lambda: got.append(run(b, long_prompt, num_predict=40)))
        worker.start()
        _running_a_long_decode(b)
        short = run(b, tok(parts, "Say hello."), num_predict=8)
        worker.join(120)
        assert tokens_of(short) and b.preempted_steps >= 1
        assert tokens_of(got[0]) == alone
        assert got[0][-1].stats is not None and got[0][-1].stats.cached_tokens == 0
        # a short request with many new prompt tokens preempts nothing: its prompt takes steps anyway
        assert not b._served_at_once(tok(parts, "Name the colour of each of these things: " + "a leaf, " * 8))
        assert b._served_at_once(long_prompt + tok(parts, "Go on."))  # one slot holds all but a few tokens
    finally:
        b.close()


def test_a_short_request_preempts_an_embedding_decode_which_is_done_again(parts):
    """An embedding decode of the same model that a short request arrives during stops too, and is done
    again (after the short request: ComputeTurns), so the call still gets every vector."""
    from corral_plugins._llama.batcher import Batcher
    from corral_plugins._llama.embed import Embedder

    native, model = parts
    b = Batcher(native, model, LoadOptions(num_ctx=512, num_parallel=2, speculative=False))
    emb = Embedder(model, LoadOptions(num_ctx=512), turns=b.turns)
    inputs = [tok(parts, f"A sentence about the number {i}, neither large nor small.") for i in range(24)]
    try:
        ref = emb.embed(inputs, normalize=True).embeddings
        emb._per_token = 0.0  # unmeasured: the next decode packs a prompt chunk's worth, long enough to stop
        done: list[object] = []
        worker = threading.Thread(target=lambda: done.append(emb.embed(inputs, normalize=True)))
        worker.start()
        _running_a_long_decode(b)
        short = run(b, tok(parts, "Say hello."), num_predict=8)
        worker.join(120)
        assert tokens_of(short) and emb.preempted >= 1
        got = done[0].embeddings  # type: ignore[attr-defined]
        assert len(got) == len(inputs)
        # done again, possibly packed otherwise: equal up to the kernels' rounding (see Embedder)
        cosines = [sum(x * y for x, y in zip(u, v, strict=True)) for u, v in zip(got, ref, strict=True)]
        assert min(cosines) > 0.999
    finally:
        emb.close()
        b.close()


def test_a_request_that_finds_the_loop_idle_preempts_a_long_embedding_decode(parts):
    """An idle loop lets embedding decodes run long (embed.IDLE_LOOP_HOLD_S: fewer, larger decodes cost
    less a token); a request that arrives meanwhile, short or not, stops the decode instead of waiting
    for it, and the embedding call still gets every vector."""
    from corral_plugins._llama.batcher import Batcher
    from corral_plugins._llama.embed import Embedder

    native, model = parts
    b = Batcher(native, model, LoadOptions(num_ctx=512, num_parallel=2, speculative=False))
    emb = Embedder(model, LoadOptions(num_ctx=512), turns=b.turns)
    inputs = [tok(parts, f"A sentence about the number {i}, neither large nor small.") for i in range(48)]
    try:
        emb.embed(inputs[:2], normalize=True)  # its cost per token is measured
        assert emb._limit() > 8 * len(inputs[0])  # an idle loop's decode packs many inputs
        done: list[object] = []
        worker = threading.Thread(target=lambda: done.append(emb.embed(inputs, normalize=True)))
        worker.start()
        _running_a_long_decode(b)
        n = SHORT_REPLY_TOKENS + 8
        long = GenerationRequest(prompt=tok(parts, "Count from 1 to 100."), num_predict=n, sampling=GREEDY)
        assert not long.short
        ev = list(b.submit(long, CancelToken()))
        worker.join(120)
        assert len(tokens_of(ev)) == n and emb.preempted >= 1
        assert len(done[0].embeddings) == len(inputs)  # type: ignore[attr-defined]
    finally:
        emb.close()
        b.close()
