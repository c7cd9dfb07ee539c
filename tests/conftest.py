"""Suite-wide test rules: a test that runs the real Gemma 3 270M model carries the ``gemma`` marker;
the CLI processes the tests start answer Ctrl-C however the suite itself was started."""

from __future__ import annotations

import signal

import pytest


def pytest_configure(config: pytest.Config) -> None:
    # A background job of a non-interactive shell (`bash .ci/run &`, nohup, some CI runners) starts
    # with SIGINT ignored, and an ignored signal stays ignored in every child: the CLIs the tests
    # interrupt with Ctrl-C would never see it (Python installs KeyboardInterrupt only over the
    # default action). Python's own handler here gives every child the default action again.
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)

# Fixtures that load or read the Gemma 3 270M model itself (tests/plugins/conftest.py); a test using
# one is a Gemma test wherever it lives, so ``-m "not gemma"`` deselects it without a marker to forget.
GEMMA_FIXTURES = frozenset({"gemma", "gemma_path"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if GEMMA_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.gemma)
