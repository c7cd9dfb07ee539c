"""The contract suite fails for backends that break the contract (so its tests can fail)."""

from __future__ import annotations

import msgspec
import pytest

from corral.config import Config
from corral.hookspecs import hookimpl
from corral.plugins import load_plugins
from corral.selection import BackendHooks
from corral.testing.contract import BackendContract
from corral.testing.fake import FakeBackend
from corral.types import CancelToken, LoadOptions, SamplingParams


class LeaksStops(FakeBackend):
    @hookimpl
    def corral_generate(self, handle, request, cancel):
        return super().corral_generate(handle, msgspec.structs.replace(request, stop=[]), cancel)


class IgnoresNumPredict(FakeBackend):
    @hookimpl
    def corral_generate(self, handle, request, cancel):
        return super().corral_generate(handle, msgspec.structs.replace(request, num_predict=-1), cancel)


class IgnoresCancel(FakeBackend):
    @hookimpl
    def corral_generate(self, handle, request, cancel):
        return super().corral_generate(handle, request, CancelToken())


class RandomGreedy(FakeBackend):
    @hookimpl
    def corral_generate(self, handle, request, cancel):
        sampling = SamplingParams(temperature=1.0, seed=-1)
        return super().corral_generate(handle, msgspec.structs.replace(request, sampling=sampling), cancel)


class IgnoresGrammar(FakeBackend):
    @hookimpl
    def corral_generate(self, handle, request, cancel):
        sampling = msgspec.structs.replace(request.sampling, grammar=None)
        return super().corral_generate(handle, msgspec.structs.replace(request, sampling=sampling), cancel)


def _setup(backend: FakeBackend, tiny_gguf):
    host = load_plugins(Config(), load_entrypoints=False)
    host.register(backend, "fake")
    hooks = BackendHooks(host, "fake")
    model = hooks.load_model(str(tiny_gguf), LoadOptions(num_ctx=512, num_parallel=2))
    prompt = hooks.tokenize(model, "The capital of France is", add_special=True, parse_special=False)
    return hooks, model, prompt


@pytest.mark.parametrize(("backend", "test"), [
    (LeaksStops(), "test_stop_strings_are_never_emitted"),
    (IgnoresNumPredict(), "test_num_predict_ends_with_length"),
    (IgnoresCancel(), "test_cancel_ends_the_stream_promptly"),
    (RandomGreedy(), "test_greedy_is_deterministic"),
    (IgnoresGrammar(), "test_grammar_constrains_output"),
])
def test_broken_backend_fails_the_contract(backend, test, tiny_gguf) -> None:
    hooks, model, prompt = _setup(backend, tiny_gguf)
    suite = BackendContract()
    with pytest.raises((AssertionError, ValueError)):
        getattr(suite, test)(hooks, model, prompt)
    # the honest fake passes the very same check
    getattr(suite, test)(*_setup(FakeBackend(), tiny_gguf))
