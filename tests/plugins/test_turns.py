"""ComputeTurns: a model's embedding decodes and its batching loop's steps never run at once."""

from __future__ import annotations

import threading

from corral_plugins._llama import turns as turns_module
from corral_plugins._llama.turns import ComputeTurns


class Recorder:
    """A ComputeTurns and the order in which embedding decodes and loop steps took their turns; a step
    started with ``hold=True`` keeps its turn until ``release`` is set."""

    def __init__(self) -> None:
        self.turns = ComputeTurns(lambda: 64)
        self.order: list[str] = []
        self.inside = threading.Event()
        self.release = threading.Event()

    def embedding(self) -> None:
        with self.turns.embedding():
            self.order.append("embed")

    def step(self, name: str, may_stop: bool = False) -> None:
        with self.turns.step(may_stop):
            self.order.append(name)
            self.inside.set()
            self.release.wait(5)

    def embedding_waiting_behind_a_step(self) -> tuple[threading.Thread, threading.Thread]:
        """Step 1 holds the turn and an embedding decode is ready behind it."""
        first = threading.Thread(target=self.step, args=("step 1",))
        first.start()
        self.inside.wait(5)
        emb = threading.Thread(target=self.embedding)
        emb.start()
        while not self.turns._ready:
            threading.Event().wait(0.001)
        return first, emb


def test_a_ready_embedding_decode_goes_before_the_next_step_and_waits_for_short_work(monkeypatch):
    monkeypatch.setattr(turns_module, "EMBED_WAIT_S", 60.0)  # the order, not the deadline, is tested
    r = Recorder()
    first, emb = r.embedding_waiting_behind_a_step()  # it waits for step 1 only
    second = threading.Thread(target=lambda: r.step("step 2"))
    second.start()
    r.release.set()
    for t in (first, emb, second):
        t.join(5)
    assert r.order == ["step 1", "embed", "step 2"]

    # while short requests are served, an embedding decode waits for them (the loop's steps go on)
    r.turns.serving_short(True)
    r.order.clear()
    emb = threading.Thread(target=r.embedding)
    emb.start()
    r.step("step 3")
    assert r.order == ["step 3"]
    r.turns.serving_short(False)
    emb.join(5)
    assert r.order == ["step 3", "embed"]


def test_a_waiting_embedding_decode_gives_way_to_a_short_request_admitted_meanwhile(monkeypatch):
    monkeypatch.setattr(turns_module, "EMBED_WAIT_S", 60.0)
    r = Recorder()
    first, emb = r.embedding_waiting_behind_a_step()
    r.turns.serving_short(True)  # a short request was admitted before the loop's next step
    r.release.set()
    first.join(5)
    r.step("short step")
    assert r.order == ["step 1", "short step"]
    r.turns.serving_short(False)
    emb.join(5)
    assert r.order == ["step 1", "short step", "embed"]


def test_preempt_stops_the_running_decode_only_when_it_may_be_stopped():
    r = Recorder()
    bulk = threading.Thread(target=r.step, args=("bulk", True))
    bulk.start()
    r.inside.wait(5)
    assert not r.turns.stopped
    r.turns.preempt()  # a short request was queued: llama.cpp's abort callback now reads 1
    assert r.turns.stopped and r.turns.stop[0] == 1
    r.release.set()
    bulk.join(5)
    # the next step's plan holds the short request: it may not be stopped, and starts clear
    r.step("short step")
    assert not r.turns.stopped

    r.release.clear()
    r.inside.clear()
    held = threading.Thread(target=r.step, args=("retry", False))  # a step stopped once is not again
    held.start()
    r.inside.wait(5)
    r.turns.preempt()
    assert not r.turns.stopped
    r.release.set()
    held.join(5)


def test_a_short_request_queued_before_a_step_starts_stops_it_at_once_and_goes_before_embeddings(monkeypatch):
    """Queued after the loop planned its step (so the plan lacks it): that step starts stopped; an
    embedding decode ready meanwhile waits for the loop's next step, the one that serves the request."""
    monkeypatch.setattr(turns_module, "EMBED_WAIT_S", 60.0)
    r = Recorder()
    first, emb = r.embedding_waiting_behind_a_step()
    r.turns.preempt()
    r.release.set()
    first.join(5)
    seen: list[bool] = []
    with r.turns.step(may_stop=True):  # planned before the request was queued
        seen.append(r.turns.stopped)
    assert seen == [True] and emb.is_alive()
    with r.turns.step():  # the step that serves it
        seen.append(r.turns.stopped)
    emb.join(5)
    assert seen == [True, False] and r.order == ["step 1", "embed"]


def test_an_embedding_decode_waits_for_a_queued_short_request_until_the_loop_settles_it(monkeypatch):
    """A short request that never reaches a step (cancelled while queued, say) holds embedding decodes
    back only until the loop finds no short request waiting."""
    monkeypatch.setattr(turns_module, "EMBED_WAIT_S", 60.0)
    r = Recorder()
    r.turns.preempt()
    emb = threading.Thread(target=r.embedding)
    emb.start()
    emb.join(0.2)
    assert emb.is_alive() and r.order == []
    r.turns.settled()
    emb.join(5)
    assert r.order == ["embed"]
