"""The plugin host: plugins are objects, probes go through the hook caller, a runner probes one backend,
quantization runs in a runner through the selected backend."""

from __future__ import annotations

import asyncio
import importlib.metadata
from pathlib import Path

import pytest

from corral.config import Config
from corral.hookspecs import hookimpl
from corral.plugins import load_plugins, resolve_reference
from corral.runner import ProcessRunner, local_runners, runner_quantizer
from corral.selection import BackendHooks, probe_backends, select_backend
from corral.testing import fake
from corral.testing.fake import FakeBackend
from corral.testing.tinymodel import write_tiny_gguf
from corral.types import BackendInfo


class Counting(FakeBackend):
    """A fake backend that counts its probes."""

    def __init__(self, name: str, priority: int = 1) -> None:
        super().__init__(name=name, priority=priority)
        self.probes = 0

    @hookimpl
    def corral_probe_backend(self, config: Config) -> BackendInfo:
        self.probes += 1
        return super().corral_probe_backend(config)


class ProbeWrapper:
    """Not a backend: it wraps every probe, as a tracing or policy plugin would."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    @hookimpl(wrapper=True)
    def corral_probe_backend(self, config: Config):  # type: ignore[no-untyped-def]
        info = yield
        self.seen.extend(i.name for i in info if i is not None)
        return info


def test_in_tree_entry_points_name_plugin_objects() -> None:
    from corral_plugins._llama.backend import LlamaBackend

    eps = {ep.name: ep for ep in importlib.metadata.entry_points(group="corral")}
    for name in ("cpu", "cuda", "metal"):
        assert eps[name].value == f"corral_plugins.{name}:plugin"  # as a third party's would
    host = load_plugins(Config(load_plugins=("cpu", "cuda", "metal")))
    assert all(isinstance(host.pm.get_plugin(n), LlamaBackend) for n in ("cpu", "cuda", "metal"))
    assert host.distribution("cpu")[0] == "corral" and not host.failures
    # and corral's own state lives on the host, not as attributes stashed on pluggy's manager
    assert not [a for a in vars(host.pm) if a.startswith("corral")]


def test_extra_plugins_name_objects_or_modules() -> None:
    assert resolve_reference("corral.testing.fake") is fake.plugin  # the module's `plugin` object
    assert resolve_reference("corral.testing.fake:FakeBackend") is FakeBackend
    assert resolve_reference("corral.defaults").__name__ == "corral.defaults"  # no `plugin`: the module
    host = load_plugins(Config(load_plugins=(), extra_plugins=("corral.testing.fake", "no.such.module")))
    assert host.pm.get_plugin("corral.testing.fake") is fake.plugin
    assert [f.name for f in host.failures] == ["no.such.module"]
    assert select_backend(host, Config(load_plugins=()))[0] == "fake"  # by the name its probe reports


def test_probes_go_through_the_hook_caller() -> None:
    host = load_plugins(Config(), load_entrypoints=False)
    wrapper, a, b = ProbeWrapper(), Counting("a", priority=2), Counting("b")
    host.register(wrapper, "wrapper")
    host.register(a, "a")
    host.register(b, "b")
    traced: list[str] = []
    host.pm.trace.root.setwriter(traced.append)
    host.pm.enable_tracing()
    infos = probe_backends(host, Config())
    assert [i.name for i in infos] == ["a", "b"]
    assert sorted(wrapper.seen) == ["a", "b"]  # a wrapper sees each probe
    assert sum("corral_probe_backend" in line for line in traced) >= 2  # and so does tracing
    assert BackendHooks(host, "a").backend == "a"


def test_a_runner_probes_only_its_backend() -> None:
    host = load_plugins(Config(), load_entrypoints=False)
    wanted, other = Counting("wanted"), Counting("other", priority=50)
    host.register(wanted, "wanted")
    host.register(other, "other")
    name, candidates = select_backend(host, Config(), "wanted", probe_all=False)
    assert name == "wanted" and [c.name for c in candidates] == ["wanted"]
    assert (wanted.probes, other.probes) == (1, 0)
    select_backend(host, Config(), "wanted")  # the server's choice probes every backend
    assert other.probes == 1


def test_quantization_runs_in_a_runner_of_the_selected_backend(tmp_path: Path) -> None:
    src = write_tiny_gguf(tmp_path / "f16.gguf", quant="f16").path
    host = load_plugins(Config(), load_entrypoints=False)
    chosen, bystander = FakeBackend(name="chosen"), FakeBackend(name="bystander", priority=9)
    host.register(chosen, "chosen")
    host.register(bystander, "bystander")
    quantize = runner_quantizer(local_runners(Config(), host=host, backend="chosen"))
    quantize(src, str(tmp_path / "q8.gguf"), "q8_0")
    assert [c.op for c in chosen.history] == ["quantize"] and bystander.history == []
    assert (tmp_path / "q8.gguf").stat().st_size > 0


def test_a_runner_process_quantizes(tmp_path: Path) -> None:
    src = write_tiny_gguf(tmp_path / "f16.gguf", quant="f16").path
    config = Config(load_plugins=(), extra_plugins=("corral.testing.fake",))

    async def main() -> None:
        runner = ProcessRunner(config, backend="fake")
        await runner.start()
        try:
            await runner.quantize(src, str(tmp_path / "q4.gguf"), "q4_K_M")
        finally:
            await runner.close()

    asyncio.run(main())
    assert (tmp_path / "q4.gguf").stat().st_size > 0
    with pytest.raises(Exception, match="unsupported quantization type"):
        runner_quantizer(lambda: ProcessRunner(config, backend="fake"))(src, str(tmp_path / "x"), "q2")
