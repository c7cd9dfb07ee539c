"""Each model family's format through the real ``ollama`` and ``openai`` clients, streaming and not.

The fake backend plays the model: it writes, token by token, the answer that the family's own
template writes for that assistant turn (the golden cases of tests/prompts/test_format_goldens.py),
under a model made as a user makes it (the Go TEMPLATE, or a GGUF carrying the Jinja template). The
clients must get back the reasoning, the content and the tool calls with their arguments.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ollama
import openai
import pytest
from client_support import Served
from prompts.test_format_goldens import CASES, WEATHER, Golden, written_answer

from corral.config import Config
from corral.engine import Engine
from corral.plugins import load_plugins
from corral.runner import local_runners
from corral.store.records import CreateSpec
from corral.store.store import Store
from corral.testing.fake import FakeBackend
from corral.testing.live import add_tiny_models
from corral.testing.tinymodel import write_tiny_gguf

# one tool-call answer per family (and a plain answer for harmony): what the clients must read
PICKED = ["gpt-oss-tools-think=high", "openai-gpt-oss-120b-text-think=None", "Qwen3-Coder-tools-think=None",
          "deepseek-ai-DeepSeek-V3.1-tools-think=True",
          "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B-tools-think=None", "GLM-4.6-tools-think=True",
          "Kimi-K2-Thinking-tools-think=True", "command-r-tools-think=None",
          "CohereForAI-c4ai-command-r7b-12-2024-tool_use-tools-think=True"]
BY_ID = {c.id: c for c in CASES}
CHOSEN = [BY_ID[i] for i in PICKED]
TOOL = {"type": "function", "function": {"name": WEATHER.name, "description": WEATHER.description,
                                         "parameters": WEATHER.parameters}}
QUESTION = [{"role": "user", "content": "Weather in Oslo?"}]
DATA = Path(__file__).resolve().parents[1] / "prompts" / "data"


def model_name(case: Golden) -> str:
    return "fmt-" + str(PICKED.index(case.id))


@pytest.fixture(scope="module")
def served_formats(tmp_path_factory: pytest.TempPathFactory, tiny_gguf: Path) -> Iterator[Served]:
    """A fake-backend server with one model per picked case, made as a user makes it."""
    root = tmp_path_factory.mktemp("formats")
    config = Config(models=root / "models", home=root)
    store = Store(config.models)
    add_tiny_models(store, tiny_gguf, {})
    for case in CHOSEN:
        kind, name = case.source
        if kind == "go":
            spec = CreateSpec(from_="tiny", template=(DATA / "ollama" / f"{name}.gotmpl").read_text()[:-1])
        else:  # the model file carries the family's Jinja template, as its GGUF does
            path = root / f"{name}.gguf"
            write_tiny_gguf(path, chat_template=(DATA / "jinja" / f"{name}.jinja").read_text(), n_layer=1)
            spec = CreateSpec(files={path.name: _upload(store, path)})
        for _ in store.create(model_name(case), spec):
            pass
    fake = FakeBackend()
    host = load_plugins(config, load_entrypoints=False)
    host.register(fake, "fake")
    engine = Engine(config, store, runner_factory=local_runners(config, host=host, backend="fake"))
    srv = Served(config, store, engine, fake)
    srv.start()
    yield srv
    srv.stop()



def _upload(store: Store, path: Path) -> str:
    import asyncio
    import hashlib

    data = path.read_bytes()
    digest = "sha256:" + hashlib.sha256(data).hexdigest()

    async def chunks() -> Any:
        yield data

    asyncio.run(store.put_blob(digest, chunks()))
    return digest


def expected(case: Golden) -> tuple[str, str, list[tuple[str, dict[str, Any]]]]:
    content, thinking, calls = case.expected
    return content.strip(), thinking, calls


@pytest.mark.parametrize("case", CHOSEN, ids=lambda c: c.id)
def test_ollama_client(served_formats: Served, case: Golden) -> None:
    _, answer = written_answer(case)
    c = ollama.Client(host=served_formats.url)
    kw: dict[str, Any] = {"model": model_name(case), "messages": QUESTION, "tools": [TOOL]}
    if case.think is not None:
        kw["think"] = case.think
    served_formats.fake.enqueue(answer)
    r = c.chat(**kw)
    calls = [(t.function.name, dict(t.function.arguments)) for t in r.message.tool_calls or []]
    assert ((r.message.content or "").strip(), r.message.thinking or "", calls) == expected(case)
    served_formats.fake.enqueue(answer)
    content, thinking, calls = "", "", []
    for chunk in c.chat(**kw, stream=True):
        content += chunk.message.content or ""
        thinking += chunk.message.thinking or ""
        calls += [(t.function.name, dict(t.function.arguments)) for t in chunk.message.tool_calls or []]
    assert (content.strip(), thinking, calls) == expected(case)


@pytest.mark.parametrize("case", CHOSEN, ids=lambda c: c.id)
def test_openai_client(served_formats: Served, case: Golden) -> None:
    _, answer = written_answer(case)
    c = openai.OpenAI(base_url=served_formats.url + "/v1/", api_key="corral", max_retries=0)
    kw: dict[str, Any] = {"model": model_name(case), "messages": QUESTION, "tools": [TOOL]}
    if isinstance(case.think, str):
        kw["reasoning_effort"] = case.think
    served_formats.fake.enqueue(answer)
    msg = c.chat.completions.create(**kw).choices[0].message
    calls = [(t.function.name, json.loads(t.function.arguments)) for t in msg.tool_calls or []]
    reasoning = (msg.model_extra or {}).get("reasoning") or ""
    assert ((msg.content or "").strip(), reasoning, calls) == expected(case)
    served_formats.fake.enqueue(answer)
    content, reasoning, parts = "", "", {}
    for chunk in c.chat.completions.create(**kw, stream=True):
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        content += delta.content or ""
        reasoning += (delta.model_extra or {}).get("reasoning") or ""
        for t in delta.tool_calls or []:
            name, args = parts.get(t.index, ("", ""))
            parts[t.index] = (name + (t.function.name or ""), args + (t.function.arguments or ""))
    calls = [(name, json.loads(args)) for name, args in (parts[i] for i in sorted(parts))]
    assert (content.strip(), reasoning, calls) == expected(case)
