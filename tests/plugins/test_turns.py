"""ComputeTurns: a model's embedding decodes and its batching loop's steps never run at once."""

from __future__ import annotations

import threading

from corral_plugins._llama import turns as turns_module
from corral_plugins._llama.turns import ComputeTurns


def test_a_ready_embedding_decode_goes_before_the_next_step_and_waits_for_short_work(monkeypatch):
    monkeypatch.setattr(turns_module, "EMBED_WAIT_S", 60.0)  # the order, not the deadline, is tested
    turns = ComputeTurns(lambda: 64)
    order: list[str] = []
    inside = threading.Event()
    release = threading.Event()

    def embedding() -> None:
        with turns.embedding():
            order.append("embed")

    def step(name: str) -> None:
        with turns.step():
            order.append(name)
            inside.set()
            release.wait(5)

    first = threading.Thread(target=step, args=("step 1",))
    first.start()
    inside.wait(5)
    emb = threading.Thread(target=embedding)
    emb.start()
    while not turns._ready:  # the embedding decode waits for step 1 only
        threading.Event().wait(0.001)
    second = threading.Thread(target=lambda: step("step 2"))
    second.start()
    release.set()
    for t in (first, emb, second):
        t.join(5)
    assert order == ["step 1", "embed", "step 2"]

    # while short requests are served, an embedding decode waits for them (the loop's steps go on)
    turns.serving_short(True)
    order.clear()
    emb = threading.Thread(target=embedding)
    emb.start()
    step("step 3")
    assert order == ["step 3"]
    turns.serving_short(False)
    emb.join(5)
    assert order == ["step 3", "embed"]


def test_a_waiting_embedding_decode_gives_way_to_a_short_request_admitted_meanwhile(monkeypatch):
    monkeypatch.setattr(turns_module, "EMBED_WAIT_S", 60.0)
    turns = ComputeTurns(lambda: 64)
    order: list[str] = []
    inside = threading.Event()
    release = threading.Event()

    def embedding() -> None:
        with turns.embedding():
            order.append("embed")

    def step(name: str) -> None:
        with turns.step():
            order.append(name)
            inside.set()
            release.wait(5)

    first = threading.Thread(target=step, args=("step 1",))
    first.start()
    inside.wait(5)
    emb = threading.Thread(target=embedding)
    emb.start()
    while not turns._ready:  # ready, waiting for step 1 only
        threading.Event().wait(0.001)
    turns.serving_short(True)  # a short request was admitted before the loop's next step
    release.set()
    first.join(5)
    step("short step")
    assert order == ["step 1", "short step"]
    turns.serving_short(False)
    emb.join(5)
    assert order == ["step 1", "short step", "embed"]
