"""A template render worker (``python -m corral.prompts.renderworker``): renders what its parent sends,
one job at a time, at a lower CPU priority and with its address space capped (see renderpool)."""

from __future__ import annotations

import os
import sys

from corral.prompts import gotemplate, plan
from corral.prompts.renderpool import (
    _HEADER,
    MAX_FRAME,
    WORKER_MEMORY,
    RenderJob,
    _decode_job,
    frame,
    in_worker,
)


def _limit_memory() -> None:
    """Cap the address space at what the imports took plus WORKER_MEMORY (Linux; elsewhere the
    renderers' own size checks are the bound)."""
    try:
        import resource

        with open("/proc/self/statm", "rb") as f:
            vm = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
        limit = vm + WORKER_MEMORY
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    except (ImportError, OSError, ValueError):
        pass


def _render(job: RenderJob) -> str:
    if job.kind == "chat":
        renderer = plan.template_renderer(job.go, job.jinja, job.bos, job.eos, job.think, job.think_on,
                                          job.thinks)
        return renderer.render_here(job.messages, job.tools)
    if job.kind == "fim" and job.go is not None:
        think = plan.think_vars(job.think, job.think_on)
        return gotemplate.load(job.go).render_fim(job.prompt, job.suffix, think)
    if job.kind == "validate" and job.go is not None:
        gotemplate.validate(job.go)
        return ""
    raise ValueError(f"unknown render job {job.kind!r}")


def _read(n: int) -> bytes | None:
    buf = bytearray()
    while len(buf) < n:
        chunk = os.read(0, n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)


def main() -> int:
    try:
        os.nice(5)  # a hostile render competes with the server and the runners less
    except OSError:
        pass
    _limit_memory()
    out = sys.stdout.buffer
    while True:
        header = _read(_HEADER.size)
        if header is None:
            return 0
        (n,) = _HEADER.unpack(header)
        body = _read(n) if n <= MAX_FRAME else None
        if body is None:
            return 1
        out.write(frame(in_worker(_decode_job(body), _render)))
        out.flush()


if __name__ == "__main__":
    sys.exit(main())
