"""Fixtures for engine/scheduler/runner tests: a real store with tiny models and fake-backend configs."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from corral.config import Config
from corral.engine import Engine
from corral.runner import Runner
from corral.store.records import CreateSpec
from corral.store.store import Store
from corral.testing.fixtures import tiny_gguf, tiny_gguf_spec  # noqa: F401  (session fixtures)

MODELS = ("alpha", "beta", "gamma")
# Small Go templates in Ollama's style: one that offers tools, one whose model thinks.
TOOLS_TEMPLATE = """{{- if .Tools }}<|im_start|>system
Tools:{{ range .Tools }} {{ .Function.Name }}{{ end }}<|im_end|>
{{ end }}{{- range .Messages }}<|im_start|>{{ .Role }}
{{ if .ToolCalls }}<tool_call>
{{ range .ToolCalls }}{"name": "{{ .Function.Name }}", "arguments": {{ .Function.Arguments }}}
{{ end }}</tool_call>{{ else }}{{ .Content }}{{ end }}<|im_end|>
{{ end }}<|im_start|>assistant
"""
THINK_TEMPLATE = """{{- range .Messages }}<|im_start|>{{ .Role }}
{{ if .Thinking }}<think>{{ .Thinking }}</think>{{ end }}{{ .Content }}<|im_end|>
{{ end }}<|im_start|>assistant
"""


@pytest.fixture(scope="session")
def engine_store(tmp_path_factory: pytest.TempPathFactory, tiny_gguf: Path) -> Store:  # noqa: F811
    """One store for the whole engine suite: three names over the tiny GGUF blob."""
    store = Store(tmp_path_factory.mktemp("engine-models"))
    data = tiny_gguf.read_bytes()
    digest = "sha256:" + hashlib.sha256(data).hexdigest()

    async def chunks() -> Any:
        yield data

    asyncio.run(store.put_blob(digest, chunks()))
    for seed, name in enumerate(MODELS):
        # A distinct parameter makes each a model of its own: identical manifests would be one model
        # under three names, sharing one loaded copy.
        params = {"temperature": 0, "seed": seed}
        for _ in store.create(name, CreateSpec(files={"tiny.gguf": digest}, parameters=params)):
            pass
    for name, template in (("tooly", TOOLS_TEMPLATE), ("thinker", THINK_TEMPLATE)):
        spec = CreateSpec(files={"tiny.gguf": digest}, template=template, parameters={"temperature": 0})
        for _ in store.create(name, spec):
            pass
    return store


def runner_of(engine: Engine, name: str) -> Runner:
    """The runner holding the loaded model that ``name`` (its display name) loaded."""
    return next(m.runner for m in engine.scheduler._models.values() if m.name == name)


@pytest.fixture
def make_config(tmp_path: Path, engine_store: Store,
                monkeypatch: pytest.MonkeyPatch) -> Callable[..., Config]:
    """Config for the fake backend only, plus overrides; ``rules`` script the fake (through its own
    variable, CORRAL_FAKE_SCRIPT, which runner subprocesses inherit)."""

    def make(rules: list[dict[str, Any]] | None = None, **overrides: Any) -> Config:
        script = tmp_path / f"fake-script-{len(list(tmp_path.iterdir()))}.json"
        script.write_text(json.dumps(rules or []))
        monkeypatch.setenv("CORRAL_FAKE_SCRIPT", str(script))
        values: dict[str, Any] = dict(models=engine_store.root, home=tmp_path, load_plugins=(),
                                      extra_plugins=("corral.testing.fake",), keep_alive=300.0)
        values.update(overrides)
        return Config(**values)

    return make
