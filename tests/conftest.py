"""Suite-wide test rules: a test that runs the real Gemma 3 270M model carries the ``gemma`` marker."""

from __future__ import annotations

import pytest

# Fixtures that load or read the Gemma 3 270M model itself (tests/plugins/conftest.py); a test using
# one is a Gemma test wherever it lives, so ``-m "not gemma"`` deselects it without a marker to forget.
GEMMA_FIXTURES = frozenset({"gemma", "gemma_path"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if GEMMA_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.gemma)
