"""The cpu/cuda/metal plugins through pluggy: probe rows, selection, the contract suite, quantize."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from corral.config import Config
from corral.errors import BackendError, BackendUnavailableError, InsufficientMemoryError, InvalidRequestError
from corral.plugins import load_plugins
from corral.selection import BackendHooks, probe_backends, select_backend
from corral.testing.contract import BackendContract
from corral.testing.tinymodel import write_tiny_gguf
from corral.types import LoadOptions

IN_TREE = ("cpu", "cuda", "metal")


@pytest.fixture(scope="module")
def host():
    return load_plugins(Config(load_plugins=IN_TREE))


@pytest.fixture(scope="module")
def hooks(host, native):  # `native` first: the session's binding is the one the plugin reuses
    return BackendHooks(host, "cpu")


def test_every_in_tree_plugin_registers(host):
    assert {name for name, _ in host.pm.list_name_plugin()} >= set(IN_TREE)
    assert not host.failures


def test_probe_rows(host, cpu_lib):
    rows = {r.name: r for r in probe_backends(host, Config(load_plugins=IN_TREE))}
    cpu, cuda, metal = rows["cpu"], rows["cuda"], rows["metal"]
    assert cpu.usable and cpu.priority == 100 and "CPU variant" in cpu.reason
    assert cpu.devices and cpu.devices[0].type == "cpu" and cpu.devices[0].memory_total > 0
    assert (cuda.priority, metal.priority) == (200, 300)
    if not Path("/proc/driver/nvidia").exists():
        assert not cuda.usable
        assert "not built" in cuda.reason or "no NVIDIA driver found" in cuda.reason
    if sys.platform != "darwin":
        assert not metal.usable and "macOS" in metal.reason


def test_selection_picks_cpu_and_refuses_unusable_cuda(host, cpu_lib):
    config = Config(load_plugins=IN_TREE)
    if Path("/proc/driver/nvidia").exists():
        pytest.skip("this machine has an NVIDIA driver")
    name, _ = select_backend(host, config)
    assert name == "cpu"
    with pytest.raises(BackendUnavailableError) as err:
        select_backend(host, config, "cuda")
    msg = str(err.value)
    assert "cuda" in msg and "cpu" in msg and "metal" in msg  # every candidate, with its reason


def test_probe_reasons_without_builds(tmp_path):
    from corral_plugins.cpu.probe import probe_cpu
    from corral_plugins.cuda.probe import probe_cuda
    from corral_plugins.metal.probe import probe_metal

    empty = tmp_path / "_lib"
    assert probe_cpu(empty, Config()).reason == "not built: run build_backends.py --backend cpu"
    cuda = probe_cuda(empty, Config())
    assert not cuda.usable and "build_backends.py --backend cuda" in cuda.reason
    if sys.platform != "darwin":
        assert "Apple Silicon" in probe_metal(empty, Config()).reason


def test_unusable_backend_never_loads_natives(tmp_path, native):
    from corral_plugins._llama.backend import LlamaBackend
    from corral_plugins.cuda.probe import probe_cuda

    b = LlamaBackend("cuda", tmp_path / "_lib", 200, probe_cuda)
    with pytest.raises(BackendUnavailableError, match="cannot run here"):
        b.corral_load_model(str(tmp_path / "x.gguf"), LoadOptions(), None, None)
    with pytest.raises(BackendUnavailableError, match="cannot run here"):  # only ever asked when selected
        b.corral_quantize("a", "b", "q8_0", None)


def test_hooks_on_tiny_model(hooks, tiny_gguf):
    handle = hooks.load_model(str(tiny_gguf), LoadOptions(num_ctx=256, num_parallel=2))
    assert handle.backend == "cpu" and handle.devices == ("CPU",)
    assert handle.info.n_ctx == 256 and handle.memory.total > 0
    toks = hooks.tokenize(handle, "hello world", add_special=False, parse_special=False)
    assert hooks.detokenize(handle, toks) == "hello world"
    hooks.unload(handle)
    hooks.unload(handle)
    with pytest.raises(BackendError, match="not loaded"):
        hooks.tokenize(handle, "hello")


def test_an_embedding_context_that_cannot_be_made_is_refused_once_and_remembered(hooks, tiny_gguf,
                                                                                  monkeypatch):
    """Out of memory is a 507 (not "this model cannot embed"), and the next calls are answered at once
    instead of allocating again beside the model's running decodes."""
    from corral_plugins._llama.backend import LlamaBackend

    tries: list[int] = []

    def cannot(*args, **kwargs):  # type: ignore[no-untyped-def]
        tries.append(1)
        raise InsufficientMemoryError("llama.cpp could not allocate an embedding context")

    monkeypatch.setattr(LlamaBackend, "_embedder", staticmethod(cannot))
    handle = hooks.load_model(str(tiny_gguf), LoadOptions(num_ctx=256, num_parallel=1))
    try:
        toks = hooks.tokenize(handle, "hello world")
        for _ in range(3):
            with pytest.raises(InsufficientMemoryError, match="embedding context"):
                hooks.embed(handle, [toks])
        assert tries == [1]
    finally:
        hooks.unload(handle)


def test_tensor_split_needs_devices_to_split_over(hooks, tiny_gguf):
    with pytest.raises(InvalidRequestError, match="only the CPU"):
        hooks.load_model(str(tiny_gguf), LoadOptions(num_ctx=256, tensor_split=(1.0, 1.0)))


def test_worker_runs_on_the_best_local_backend(host, cpu_lib):
    from corral.selection import select_worker_backend

    if Path("/proc/driver/nvidia").exists():
        pytest.skip("this machine has an NVIDIA driver")
    config = Config(load_plugins=IN_TREE)
    assert select_worker_backend(host, config) == "cpu"
    with pytest.raises(BackendUnavailableError, match="cannot run here"):
        select_worker_backend(host, config, "cuda")


def test_quantize_hook(hooks, tmp_path):
    # routed like every per-model call: to the selected backend only (the cuda plugin is not asked)
    src = write_tiny_gguf(tmp_path / "f16.gguf", quant="f16")
    dst = tmp_path / "q8.gguf"
    hooks.quantize(src.path, str(dst), "Q8_0")
    assert dst.stat().st_size > 0
    with pytest.raises(InvalidRequestError):
        hooks.quantize(str(dst), str(tmp_path / "again.gguf"), "q4_K_M")


class TestCpuContractTiny(BackendContract):
    """The shared backend contract on the tiny random-weight llama."""

    @pytest.fixture(scope="class")
    @classmethod
    def backend_hooks(cls, native):
        return BackendHooks(load_plugins(Config(load_plugins=IN_TREE)), "cpu")

    @pytest.fixture(scope="class")
    @classmethod
    def model_path(cls, tiny_gguf):
        return str(tiny_gguf)

    @pytest.fixture(scope="class")
    @classmethod
    def projector_path(cls, tiny_projector) -> str:
        return tiny_projector.path


@pytest.mark.gemma
class TestCpuContractGemma(BackendContract):
    """The contract on the real Gemma 3 270M, which knows where Paris is."""

    expect_capital_paris = True  # greedily, with the contract's one-shot paris_prompt

    @pytest.fixture(scope="class")
    @classmethod
    def backend_hooks(cls, native):
        return BackendHooks(load_plugins(Config(load_plugins=IN_TREE)), "cpu")

    @pytest.fixture(scope="class")
    @classmethod
    def model_path(cls, gemma_path):
        return str(gemma_path)
