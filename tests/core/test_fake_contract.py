"""The backend contract suite run against the fake backend (in-process) on the tiny GGUF."""

from __future__ import annotations

from pathlib import Path

import pytest

from corral.config import Config
from corral.plugins import load_plugins
from corral.selection import BackendHooks
from corral.testing.contract import BackendContract
from corral.testing.fake import FakeBackend


class TestFakeBackendContract(BackendContract):
    expect_capital_paris = False

    @pytest.fixture(scope="class")
    @classmethod
    def backend_hooks(cls) -> BackendHooks:
        host = load_plugins(Config(), load_entrypoints=False)
        host.register(FakeBackend(), "fake")
        return BackendHooks(host, "fake")

    @pytest.fixture(scope="class")
    @classmethod
    def model_path(cls, tiny_gguf: Path) -> str:
        return str(tiny_gguf)

    @pytest.fixture(scope="class")
    @classmethod
    def projector_path(cls, tiny_projector) -> str:
        return tiny_projector.path
