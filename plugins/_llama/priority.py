"""Background priority for media work: image decoding and projector encoding run only on CPU time that
token generation leaves over, so an image never slows the streams already answering."""

from __future__ import annotations

import logging
import os

log = logging.getLogger("corral.llama")

__all__ = ["lower_this_thread"]


def lower_this_thread() -> bool:
    """Put the calling thread (and the threads it starts later, such as ggml's OpenMP workers) in
    Linux's SCHED_IDLE class: it runs when no normal thread wants the CPU. False where unsupported."""
    if not hasattr(os, "SCHED_IDLE"):
        return False
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))  # pid 0: this thread
    except OSError as exc:
        log.debug("cannot lower the media thread's priority: %s", exc)
        return False
    return True
