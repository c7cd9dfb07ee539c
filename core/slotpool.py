"""A loaded model's parallel sequences as leases hand them out: ``num_parallel`` for any request and one
spare that only a short request takes, so a one-line answer never queues behind long generations."""

from __future__ import annotations

import asyncio
from collections import deque

__all__ = ["SlotPool"]


class SlotPool:
    """``n`` slots for any request plus one spare for short ones (``GenerationRequest.short``: the
    backend keeps a sequence for it beyond ``num_parallel``). A short request takes the spare first, so
    long ones never wait behind it. Waiters are served in arrival order; a short waiter may pass a longer
    one only to take the spare, which the longer one could not use."""

    def __init__(self, n: int) -> None:
        self.free = max(1, n)
        self.spare = 1
        self._waiters: deque[tuple[bool, asyncio.Future[bool]]] = deque()

    async def acquire(self, short: bool = False) -> bool:
        """Wait for a slot; True when the spare was taken (give it back with ``release(True)``)."""
        # nobody waits, or only for slots this request does not take from them (a short one takes the spare)
        if not self._waiters or (short and self.spare):
            got = self._take(short)
            if got is not None:
                return got
        fut: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        entry = (short, fut)
        self._waiters.append(entry)
        try:
            return await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():  # handed to us just as the wait was cancelled
                self.release(fut.result())
            else:
                self._waiters.remove(entry)
            raise

    def release(self, spare: bool) -> None:
        if spare:
            self.spare += 1
        else:
            self.free += 1
        for entry in list(self._waiters):
            if not (self.free or self.spare):
                break
            short, fut = entry
            if fut.done():  # cancelled: its waiter removes it
                continue
            got = self._take(short)
            if got is not None:
                self._waiters.remove(entry)
                fut.set_result(got)

    def _take(self, short: bool) -> bool | None:
        """The spare for a short request while it is free (so long ones keep the others), else a slot."""
        if short and self.spare:
            self.spare -= 1
            return True
        if self.free:
            self.free -= 1
            return False
        return None
