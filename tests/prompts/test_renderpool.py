"""The template render pool: worker processes, all started at the first render."""

from __future__ import annotations

import threading
import time

import pytest

from corral.errors import TemplateError
from corral.prompts.renderpool import RenderJob, RenderPool

GO = "{{ .Prompt }}!"


def fim(prompt: str) -> RenderJob:
    return RenderJob(kind="fim", go=GO, prompt=prompt)


def test_the_first_render_starts_every_worker() -> None:
    pool = RenderPool(size=3)
    try:
        assert pool.idle() == 0  # nothing starts before a render is asked for
        assert pool.run(fim("hi")) == "hi!"
        deadline = time.monotonic() + 60
        while pool.idle() < 3 and time.monotonic() < deadline:
            time.sleep(0.05)  # the others start in the background
        assert pool.idle() == 3
        # three renders at once now find a started worker each (none is started on their behalf)
        out: list[str] = []
        threads = [threading.Thread(target=lambda i=i: out.append(pool.run(fim(str(i))))) for i in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert sorted(out) == ["0!", "1!", "2!"] and pool.idle() == 3
    finally:
        pool.close()
    assert pool.idle() == 0


def test_a_template_error_keeps_the_worker() -> None:
    pool = RenderPool(size=1)
    try:
        with pytest.raises(TemplateError):
            pool.run(RenderJob(kind="fim", go="{{ .Prompt ", prompt="x"))
        assert pool.run(fim("again")) == "again!"
    finally:
        pool.close()
