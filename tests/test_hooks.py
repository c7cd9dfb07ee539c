"""One test per hookspec, named ``test_hook_<hook>`` (tests/test_docs.py fails when one is missing):
what the core does around each hook, on the fake backend beside a bystander that must never be asked."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from corral.config import Config
from corral.errors import BackendError, BackendUnavailableError, CapabilityError, InvalidRequestError
from corral.hookspecs import hookimpl
from corral.plugins import PluginHost, load_plugins
from corral.selection import BackendHooks, probe_backends, select_backend
from corral.testing.fake import FakeBackend
from corral.testing.tinymodel import write_tiny_gguf
from corral.types import (
    HOST,
    BackendInfo,
    CancelToken,
    GenerationRequest,
    LoadOptions,
    ModelHandle,
    TokenEvent,
)


@pytest.fixture
def host() -> PluginHost:
    host = load_plugins(Config(), load_entrypoints=False)
    host.register(FakeBackend(name="fake"), "fake")
    host.register(FakeBackend(name="bystander", priority=50), "bystander")
    return host


def fake_of(host: PluginHost, name: str = "fake") -> FakeBackend:
    plugin = host.pm.get_plugin(name)
    assert isinstance(plugin, FakeBackend)
    return plugin


@pytest.fixture(scope="module")
def gguf(tmp_path_factory: pytest.TempPathFactory) -> str:
    return write_tiny_gguf(tmp_path_factory.mktemp("hooks") / "tiny.gguf").path


@pytest.fixture
def hooks(host: PluginHost) -> BackendHooks:
    return BackendHooks(host, "fake")


@pytest.fixture
def handle(hooks: BackendHooks, gguf: str) -> Iterator[ModelHandle]:
    h = hooks.load_model(gguf, LoadOptions(num_ctx=128, num_parallel=1))
    yield h
    hooks.unload(h)


def test_hook_corral_probe_backend(host: PluginHost) -> None:
    class Broken:
        @hookimpl
        def corral_probe_backend(self, config: Config) -> BackendInfo:
            raise RuntimeError("driver exploded")

    class NotABackend:
        @hookimpl
        def corral_probe_backend(self, config: Config) -> None:
            return None

    host.register(Broken(), "broken")
    host.register(NotABackend(), "helper")
    rows = {r.name: r for r in probe_backends(host, Config())}
    assert set(rows) == {"fake", "bystander", "broken"}  # a None probe is not a backend
    assert not rows["broken"].usable
    assert rows["broken"].reason == "probe failed: RuntimeError: driver exploded"


def test_hook_corral_select_backend(host: PluginHost) -> None:
    assert select_backend(host, Config())[0] == "bystander"  # the core default: highest priority
    with pytest.raises(BackendUnavailableError, match="backend 'nope' is not installed"):
        select_backend(host, Config(), "nope")

    class SitePolicy:
        @hookimpl
        def corral_select_backend(self, candidates: list[BackendInfo], requested: str | None) -> str:
            return "fake"

    host.register(SitePolicy(), "policy")  # answers before the core's trylast default
    assert select_backend(host, Config())[0] == "fake"


def test_hook_corral_estimate_memory(host: PluginHost, hooks: BackendHooks, gguf: str) -> None:
    estimate = hooks.estimate_memory(gguf, LoadOptions(num_ctx=64, num_parallel=2))
    assert estimate is not None and [d.device for d in estimate.devices] == [HOST]
    [host_share] = estimate.devices
    assert host_share.kv_cache == 64 * 2 * 1024 and host_share.weights > 0  # the fake's memory model
    assert fake_of(host, "bystander").history == []
    # what the load then reports per device is what the estimate said, and the limits reach the backend
    handle = hooks.load_model(gguf, LoadOptions(num_ctx=64, num_parallel=2), memory_limits={HOST: 1 << 40})
    [held] = handle.memory.devices
    assert held.used == host_share.used == handle.memory.total
    with pytest.raises(BackendError, match="it may take 10"):
        hooks.load_model(gguf, LoadOptions(num_ctx=64, num_parallel=2), memory_limits={HOST: 10})

    class Silent:  # a backend without the hook: the scheduler then counts models only
        @hookimpl
        def corral_probe_backend(self, config: Config) -> BackendInfo:
            return BackendInfo(name="silent", priority=1, usable=True)

    host.register(Silent(), "silent")
    assert BackendHooks(host, "silent").estimate_memory(gguf, LoadOptions()) is None


def test_hook_corral_load_model(host: PluginHost, hooks: BackendHooks, gguf: str) -> None:
    handle = hooks.load_model(gguf, LoadOptions(num_ctx=64))
    assert handle.backend == "fake" and handle.info.n_ctx == 64
    assert fake_of(host, "bystander").history == []  # never asked: per-model hooks go to one backend

    class Silent:
        @hookimpl
        def corral_probe_backend(self, config: Config) -> BackendInfo:
            return BackendInfo(name="silent", priority=1, usable=True)

        @hookimpl
        def corral_load_model(self, path: str) -> None:
            return None

    host.register(Silent(), "silent")
    with pytest.raises(BackendError, match="backend 'silent' does not implement corral_load_model"):
        BackendHooks(host, "silent").load_model(gguf, LoadOptions())


def test_hook_corral_tokenize(host: PluginHost, hooks: BackendHooks, handle: ModelHandle) -> None:
    assert hooks.tokenize(handle, "A", add_special=False, parse_special=False) == [ord("A") + 3]
    assert hooks.tokenize(handle, "A")[0] == 1  # BOS unless told otherwise

    class Buggy(FakeBackend):
        @hookimpl
        def corral_tokenize(self, handle: ModelHandle, text: str, add_special: bool,
                            parse_special: bool) -> list[int]:
            raise KeyError("bug")

    host.register(Buggy(name="buggy"), "buggy")
    buggy = BackendHooks(host, "buggy")
    h = buggy.load_model(handle.path, LoadOptions(num_ctx=64))
    # a plugin's bug is a BackendError naming the backend and the hook, never a crash
    with pytest.raises(BackendError, match="backend 'buggy' failed in corral_tokenize: KeyError"):
        buggy.tokenize(h, "x")


def test_hook_corral_detokenize(hooks: BackendHooks, handle: ModelHandle) -> None:
    tokens = hooks.tokenize(handle, "héllo 世界", add_special=True, parse_special=True)
    assert hooks.detokenize(handle, tokens) == "héllo 世界"
    assert hooks.detokenize(handle, tokens, render_special=True).startswith("<s>")


def test_hook_corral_token_pieces(host: PluginHost, hooks: BackendHooks, handle: ModelHandle) -> None:
    tokens = hooks.tokenize(handle, "hé", add_special=True, parse_special=True)
    pieces = hooks.token_pieces(handle, tokens)
    assert pieces[0] == b"<s>" and b"".join(pieces[1:]) == "hé".encode()  # é is two byte tokens
    assert len(pieces) == len(tokens) and all(isinstance(p, bytes) for p in pieces)
    with pytest.raises(InvalidRequestError, match="out of range"):
        hooks.token_pieces(handle, [10**9])

    class Textless(FakeBackend):  # a backend without the hook: a clear 400, never a crash
        corral_token_pieces = None  # type: ignore[assignment]

    host.register(Textless(name="textless"), "textless")
    textless = BackendHooks(host, "textless")
    h = textless.load_model(handle.path, LoadOptions(num_ctx=64))
    with pytest.raises(CapabilityError, match="cannot give token pieces"):
        textless.token_pieces(h, [5])


def test_hook_corral_generate(host: PluginHost, hooks: BackendHooks, handle: ModelHandle) -> None:
    fake_of(host).enqueue("four")
    prompt = hooks.tokenize(handle, "hi")
    events = list(hooks.generate(handle, GenerationRequest(prompt=prompt), CancelToken()))
    assert "".join(e.text for e in events) == "four"
    last: TokenEvent = events[-1]
    assert last.finish_reason == "stop" and last.stats is not None and last.stats.prompt_tokens == len(prompt)
    fake_of(host).enqueue("abcdef", error="scripted failure", error_after=2)
    with pytest.raises(BackendError, match="scripted failure"):
        list(hooks.generate(handle, GenerationRequest(prompt=prompt), CancelToken()))


def test_hook_corral_embed(hooks: BackendHooks, handle: ModelHandle) -> None:
    inputs = [hooks.tokenize(handle, t, add_special=False) for t in ("cat", "dog", "cat")]
    result = hooks.embed(handle, inputs, normalize=True)
    assert len(result.embeddings) == 3 and result.prompt_tokens == sum(map(len, inputs))
    assert result.embeddings[0] == result.embeddings[2] != result.embeddings[1]
    assert abs(sum(x * x for x in result.embeddings[1]) - 1.0) < 1e-6


def test_hook_corral_rerank(hooks: BackendHooks, host: PluginHost, handle: ModelHandle,
                            tmp_path: Path) -> None:
    from corral.errors import CapabilityError
    from corral.testing.tinyreranker import write_tiny_reranker

    ranker = hooks.load_model(str(write_tiny_reranker(tmp_path / "rr.gguf")),
                              LoadOptions(num_ctx=256, num_parallel=1, embedding=True))
    try:
        result = hooks.rerank(ranker, "capital of France", ["the sky", "Paris is the capital of France"])
        assert len(result.scores) == 2 and result.scores[1] > result.scores[0] and result.prompt_tokens > 0
    finally:
        hooks.unload(ranker)
    with pytest.raises(CapabilityError, match="not a reranker"):
        hooks.rerank(handle, "q", ["d"])
    # only the selected backend is asked
    assert not [c for c in fake_of(host, "bystander").history if c.op == "rerank"]


def test_hook_corral_unload(hooks: BackendHooks, gguf: str) -> None:
    handle = hooks.load_model(gguf, LoadOptions(num_ctx=64))
    hooks.unload(handle)
    hooks.unload(handle)  # idempotent
    with pytest.raises(InvalidRequestError, match="not loaded"):
        hooks.tokenize(handle, "x")


def test_hook_corral_quantize(host: PluginHost, hooks: BackendHooks, tmp_path: Path) -> None:
    src = write_tiny_gguf(tmp_path / "f16.gguf", quant="f16").path
    hooks.quantize(src, str(tmp_path / "q8.gguf"), "q8_0")
    assert [c.op for c in fake_of(host).history] == ["quantize"]
    assert fake_of(host, "bystander").history == []

    class CannotQuantize:
        @hookimpl
        def corral_probe_backend(self, config: Config) -> BackendInfo:
            return BackendInfo(name="plain", priority=1, usable=True)

        @hookimpl
        def corral_quantize(self, source: str) -> None:
            return None

    host.register(CannotQuantize(), "plain")
    with pytest.raises(InvalidRequestError, match="quantizing to q8_0 is not supported by the plain backend"):
        BackendHooks(host, "plain").quantize(src, str(tmp_path / "x.gguf"), "q8_0")


def test_hook_corral_explain_stop(host: PluginHost, hooks: BackendHooks, handle: ModelHandle) -> None:
    # Optional: a backend without it (the fake) leaves the generic message; never raises.
    assert hooks.explain_stop(handle) is None

    class Lossy:
        def __init__(self, answer: str | None = None, fail: bool = False) -> None:
            self.answer, self.fail, self.asked = answer, fail, 0

        @hookimpl
        def corral_probe_backend(self, config: Config) -> BackendInfo:
            return BackendInfo(name=f"lossy{int(self.fail)}", priority=1, usable=True)

        @hookimpl
        def corral_explain_stop(self, handle: ModelHandle) -> str | None:
            self.asked += 1
            if self.fail:
                raise RuntimeError("probe of the workers exploded")
            return self.answer

    lossy = Lossy("lost RPC worker 10.0.0.9:50052 (unreachable: connection refused)")
    broken = Lossy(fail=True)
    host.register(lossy, "lossy0")
    host.register(broken, "lossy1")
    assert BackendHooks(host, "lossy0").explain_stop(handle) == lossy.answer
    assert BackendHooks(host, "lossy1").explain_stop(handle) is None  # a failing explanation is no error
    assert BackendHooks(host, "fake").explain_stop(handle) is None
    assert (lossy.asked, broken.asked) == (1, 1)  # routed to one backend, never broadcast


def test_hook_corral_start_worker(host: PluginHost, tmp_path: Path) -> None:
    from corral.selection import select_worker_backend
    from corral.types import DeviceInfo, WorkerInfo

    class Offers:
        def __init__(self) -> None:
            self.calls: list[tuple] = []

        @hookimpl
        def corral_probe_backend(self, config: Config) -> BackendInfo:
            return BackendInfo(name="offers", priority=2, usable=True)

        @hookimpl
        def corral_start_worker(self, endpoint: str, cache_dir: str | None, threads: int,
                                memory_limit: int) -> WorkerInfo:
            self.calls.append((endpoint, cache_dir, threads, memory_limit))
            return WorkerInfo(endpoint=endpoint, devices=[DeviceInfo(name="CPU")], cache_dir=cache_dir)

    offers = Offers()
    host.register(offers, "offers")
    # Only a backend that implements the hook may run a worker: the fake (priority 1) and the bystander
    # (priority 50) do not, so the lower-priority "offers" is chosen, and asking for the fake is an error.
    assert select_worker_backend(host, Config()) == "offers"
    with pytest.raises(BackendUnavailableError, match="cannot run an RPC worker"):
        select_worker_backend(host, Config(), "fake")
    info = BackendHooks(host, "offers").start_worker("127.0.0.1:50052", cache_dir=str(tmp_path), threads=1,
                                                     memory_limit=1 << 30)
    assert info.endpoint == "127.0.0.1:50052" and info.devices[0].name == "CPU"
    assert offers.calls == [("127.0.0.1:50052", str(tmp_path), 1, 1 << 30)]
    assert fake_of(host).history == [] and fake_of(host, "bystander").history == []
