"""The step plan's turns while a short request is served, on stand-in slots (no model needed)."""

from __future__ import annotations

from types import SimpleNamespace

from corral_plugins._llama.stepplan import BULK_EVERY, StepPlanner


def _slot(short: bool, limit: int = 400, n_gen: int = 0) -> SimpleNamespace:
    request = SimpleNamespace(short=short)
    return SimpleNamespace(job=SimpleNamespace(request=request, limit=limit, n_gen=n_gen), rest=0)


def test_bulk_sequences_decode_once_in_bulk_every_steps_but_not_in_a_short_answers_last():
    planner = StepPlanner()
    bulk = [_slot(False), _slot(False)]
    short = _slot(True, limit=BULK_EVERY * 3)
    turns = []
    for _ in range(BULK_EVERY):
        turns.append(len(planner._bulk_turns([*bulk, short])) - 1)
        short.job.n_gen += 1
    assert turns == [0] * (BULK_EVERY - 1) + [2]  # every BULK_EVERY steps they all go

    # the step that ends every short answer runs alone; the bulk goes right after, one step late
    short = _slot(True, limit=BULK_EVERY, n_gen=0)
    for s in bulk:
        s.rest = 0
    turns = []
    for _ in range(BULK_EVERY):
        turns.append(len(planner._bulk_turns([*bulk, short])) - 1)
        short.job.n_gen += 1
    assert turns == [0] * BULK_EVERY
    assert all(s.rest == BULK_EVERY for s in bulk)
    assert len(planner._bulk_turns([*bulk, _slot(True, limit=1)])) == 3  # never later than that


def test_other_prompts_take_a_turn_once_in_bulk_every_steps():
    planner = StepPlanner()
    planner._prompt_rest = 0
    assert [planner._prompt_turn() for _ in range(2 * BULK_EVERY)] == \
        ([False] * (BULK_EVERY - 1) + [True]) * 2
