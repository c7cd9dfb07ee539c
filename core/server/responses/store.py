"""A bounded in-memory store of responses, for ``previous_response_id`` (when the client sends store)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import msgspec

from corral.conversation import Message

# Bounded by count and by the size of what is kept, so a stream of stored responses cannot grow memory
# without limit; the oldest go first.
MAX_RESPONSES = 512
MAX_BYTES = 64 << 20


@dataclass(frozen=True)
class Stored:
    """A finished response: its wire form and the conversation up to and including its output."""

    model: str
    body: Any  # the response object, as GET /v1/responses/{id} returns it
    conversation: tuple[Message, ...]
    size: int


def _size(conversation: tuple[Message, ...], body: Any) -> int:
    return len(msgspec.json.encode(body)) + sum(
        len(m.content) + len(m.thinking) + sum(len(i) for i in m.images) + 64 for m in conversation
    )


class ResponseStore:
    """Thread-safe LRU of ``Stored`` by response id."""

    def __init__(self, max_items: int = MAX_RESPONSES, max_bytes: int = MAX_BYTES) -> None:
        self.max_items, self.max_bytes = max_items, max_bytes
        self._items: OrderedDict[str, Stored] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def put(self, response_id: str, model: str, body: Any, conversation: list[Message]) -> None:
        conv = tuple(conversation)
        item = Stored(model=model, body=body, conversation=conv, size=_size(conv, body))
        if item.size > self.max_bytes:
            return  # larger than the whole store: not kept (a later lookup says it was not found)
        with self._lock:
            old = self._items.pop(response_id, None)
            self._bytes -= old.size if old else 0
            self._items[response_id] = item
            self._bytes += item.size
            while len(self._items) > self.max_items or self._bytes > self.max_bytes:
                _, gone = self._items.popitem(last=False)
                self._bytes -= gone.size

    def get(self, response_id: str) -> Stored | None:
        with self._lock:
            item = self._items.get(response_id)
            if item is not None:
                self._items.move_to_end(response_id)
            return item

    def delete(self, response_id: str) -> bool:
        with self._lock:
            item = self._items.pop(response_id, None)
            if item is not None:
                self._bytes -= item.size
            return item is not None
