"""Grammars from `format` drive the real CPU backend (Gemma 3 270M): its output parses and validates."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from corral.config import Config
from corral.conversation import Message
from corral.jobs import ChatJob, GenerateJob
from corral.plugins import load_plugins
from corral.prompts import GEMMA3_TEMPLATE, plan_chat, plan_generate
from corral.selection import BackendHooks
from corral.types import CancelToken, GenerationRequest, LoadOptions, SamplingParams

from .conftest import make_spec

CPU_LIB = Path(__file__).resolve().parents[2] / "plugins" / "cpu" / "_lib"
pytestmark = [pytest.mark.gemma, pytest.mark.slow]
SPEC = make_spec("gemma3:270m", template=GEMMA3_TEMPLATE)

WEATHER_SCHEMA = {
    "type": "object",
    "properties": {"sky": {"enum": ["sunny", "cloudy", "rainy"]},
                   "celsius": {"type": "integer", "minimum": -40, "maximum": 50},
                   "windy": {"type": "boolean"}},
    "required": ["sky", "celsius"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def gemma_hooks():
    if not (any(CPU_LIB.glob("_llama_cpu*")) and any(CPU_LIB.glob("libllama*"))):
        pytest.skip("plugins/cpu/_lib is not built: run build_backends.py --backend cpu")
    from corral_plugins._llama.assets import gemma_gguf

    hooks = BackendHooks(load_plugins(Config(load_plugins=("cpu",))), "cpu")
    handle = hooks.load_model(str(gemma_gguf()), LoadOptions(num_ctx=512, num_parallel=1))
    yield hooks, handle
    hooks.unload(handle)


def _generate(gemma_hooks, plan) -> tuple[str, str]:
    hooks, handle = gemma_hooks
    tokens = hooks.tokenize(handle, plan.text, add_special=plan.add_special, parse_special=True)
    request = GenerationRequest(prompt=tokens, num_predict=48, stop=plan.stop,
                                sampling=SamplingParams(temperature=0.0, seed=1, grammar=plan.grammar))
    events = list(hooks.generate(handle, request, CancelToken()))
    return "".join(e.text for e in events), events[-1].finish_reason or ""


def test_schema_format_output_validates(gemma_hooks) -> None:
    question = Message(role="user", content="What is the weather in Paris? Answer in JSON.")
    plan = plan_chat(SPEC, ChatJob(model="gemma3:270m", messages=[question], format=WEATHER_SCHEMA),
                     gguf_template=None, bos_token="<bos>", eos_token="<eos>")
    text, reason = _generate(gemma_hooks, plan)
    assert reason == "stop", text  # the grammar ends generation once the object is complete
    jsonschema.validate(json.loads(text), WEATHER_SCHEMA)


def test_json_format_output_is_an_object(gemma_hooks) -> None:
    # a few-shot raw prompt: the base model continues the pattern, the grammar keeps it to one object
    prompt = ('Q: Is the sky blue?\nJSON: {"ok": true}\nQ: Is fire cold?\nJSON: {"ok": false}\n'
              "Q: Is snow white?\nJSON: ")
    plan = plan_generate(SPEC, GenerateJob(model="gemma3:270m", prompt=prompt, raw=True, format="json"),
                         gguf_template=None, bos_token="<bos>", eos_token="<eos>")
    text, reason = _generate(gemma_hooks, plan)
    assert reason == "stop", text
    assert isinstance(json.loads(text), dict)
