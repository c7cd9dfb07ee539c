"""The real clients against a live server running Gemma 3 270M on the CPU backend (a few short requests)."""

from __future__ import annotations

import json
import time

import jsonschema
import ollama
import openai
import pytest
from client_support import Served

pytestmark = [pytest.mark.gemma, pytest.mark.slow]
MODEL = "gemma3:270m"


def test_ollama_json_schema_stream_and_logprobs(gemma_served: Served) -> None:
    c = ollama.Client(host=gemma_served.url)
    schema = {"type": "object", "required": ["name", "age"],
              "properties": {"name": {"type": "string", "maxLength": 8},
                             "age": {"type": "integer", "minimum": 0, "maximum": 120}}}
    r = c.generate(model=MODEL, prompt="Describe a person as JSON.", format=schema,
                   options={"temperature": 0, "num_predict": 48})
    jsonschema.validate(json.loads(r.response), schema)
    assert r.done_reason == "stop" and r.prompt_eval_count and r.eval_count

    parts = list(c.chat(model=MODEL, messages=[{"role": "user", "content": "Say hello."}], stream=True,
                        options={"num_predict": 4, "temperature": 0}, logprobs=True, top_logprobs=2))
    assert parts[-1].done and parts[-1].eval_count == 4 and parts[-1].done_reason == "length"
    lps = [lp for p in parts for lp in (p.logprobs or [])]
    assert len(lps) == 4 and all(len(lp.top_logprobs or []) == 2 and lp.logprob <= 0 for lp in lps)
    assert any(m.model == MODEL for m in c.ps().models)


def test_openai_chat_stream_usage(gemma_served: Served) -> None:
    c = openai.OpenAI(base_url=gemma_served.url + "/v1/", api_key="corral", max_retries=0)
    chunks = list(c.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Name a colour."}], max_tokens=5, temperature=0,
        stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens <= 5
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text.strip()


def test_tiny_generated_model_on_the_cpu_backend(gemma_served: Served) -> None:
    c = ollama.Client(host=gemma_served.url)
    r = c.generate(model="tiny", prompt="hello world", options={"num_predict": 6, "temperature": 0})
    assert r.done and r.eval_count is not None and 0 < r.eval_count <= 6 and r.prompt_eval_count
    e = c.embed(model="tiny", input=["hello", "world"])
    assert len(e.embeddings) == 2 and abs(sum(x * x for x in e.embeddings[0]) - 1) < 1e-3


# One client per suite run (the OpenAI route wraps the engine's embed in the same unless_disconnected):
# the test costs about half a minute on a busy 2-core machine.
@pytest.mark.parametrize("client", ["ollama"])
def test_an_embedding_whose_client_leaves_stops_between_batches(gemma_served: Served, client: str) -> None:
    """2,048 inputs (the cap) would hold Gemma's embedding context for 32 batches' time; the client gives
    up after 2 s, and a one-input request sent right after gets its answer in about one batch's time."""
    from corral.engine import EMBED_BATCH

    text = "The river runs under the old stone bridge and the morning light is quiet. " * 2
    inputs = [f"{i}. {text}" for i in range(2048)]
    if client == "ollama":
        patient = ollama.Client(host=gemma_served.url, timeout=600)
        hasty = ollama.Client(host=gemma_served.url, timeout=2.0)

        def embed(c: ollama.Client, batch: list[str]) -> int:
            return len(c.embed(model=MODEL, input=batch).embeddings)
    else:
        url = gemma_served.url + "/v1/"
        patient = openai.OpenAI(base_url=url, api_key="corral", max_retries=0, timeout=600)
        hasty = openai.OpenAI(base_url=url, api_key="corral", max_retries=0, timeout=2.0)

        def embed(c: openai.OpenAI, batch: list[str]) -> int:
            return len(c.embeddings.create(model=MODEL, input=batch).data)

    assert embed(patient, ["warm up"]) == 1  # the model and its embedding context are loaded
    t0 = time.monotonic()
    assert embed(patient, inputs[:EMBED_BATCH]) == EMBED_BATCH
    batch_s = time.monotonic() - t0
    whole_s = batch_s * len(inputs) / EMBED_BATCH
    with pytest.raises(Exception) as err:  # the client's read timeout: it closes the connection
        embed(hasty, inputs)
    assert "timed out" in str(err.value).lower() or "timeout" in type(err.value).__name__.lower()
    t0 = time.monotonic()
    assert embed(patient, ["one more"]) == 1
    waited = time.monotonic() - t0
    # without the cancel this request would queue behind the rest of the 2,048 (whole_s - 2 s)
    assert waited < max(3 * batch_s + 2.0, 0.25 * whole_s), (waited, batch_s, whole_s)
