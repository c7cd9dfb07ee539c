"""The prompt-lookup drafter: what it guesses, how its draft length adapts, when it stops trying."""

from __future__ import annotations

from corral_plugins._llama.ngram import COOLDOWN_START, FIRST_DRAFT, MAX_DRAFT, NgramDrafter


def test_guesses_what_followed_the_latest_occurrence_of_the_last_ngram() -> None:
    d = NgramDrafter([1, 2, 3, 4, 5, 6, 9, 9, 2, 3, 4, 7, 8, 2, 3, 4])
    assert d.propose(3) == [7, 8, 2]  # the latest earlier "2 3 4" was followed by 7 8 2
    assert d.propose(1) == [7]
    assert NgramDrafter([1, 2, 3, 4, 5]).propose(4) == []  # nothing repeats yet
    assert d.propose(0) == []


def test_history_grows_with_the_answer() -> None:
    d = NgramDrafter([10, 11, 12, 13, 14, 15])
    assert d.propose(4) == []
    d.extend([20, 11, 12, 13])
    assert d.propose(4) == [14, 15, 20, 11][:FIRST_DRAFT]


def test_draft_length_follows_acceptance() -> None:
    d = NgramDrafter(list(range(100)) * 2)
    assert d.k == FIRST_DRAFT
    d.verified(4, 4)
    assert d.k == 2 * FIRST_DRAFT
    for _ in range(10):
        d.verified(d.k, d.k)
    assert d.k == MAX_DRAFT
    d.verified(MAX_DRAFT, 5)
    assert d.k == 6  # what was accepted, plus one
    assert (d.drafted, d.accepted) > (0, 0)


def test_failing_drafts_stop_drafting_for_longer_each_time() -> None:
    d = NgramDrafter([1, 2, 3, 1, 2, 3, 1, 2, 3])
    assert d.propose(4)
    d.verified(4, 0)
    assert d.propose(4)  # one refusal is not yet a pattern
    d.verified(2, 0)
    assert d.propose(4) == []  # two in a row: cooling down
    d.extend([1, 2, 3] * (COOLDOWN_START // 3 + 1))
    assert d.propose(4)
    d.verified(4, 0)
    d.verified(2, 0)
    d.extend([1, 2, 3] * (COOLDOWN_START // 3 + 1))
    assert d.propose(4) == []  # the second pause is twice as long
    d.extend([1, 2, 3] * (COOLDOWN_START // 3 + 1))
    assert d.propose(4)


def test_media_rows_are_never_guessed() -> None:
    d = NgramDrafter([5, 6, 7, 8, -1, -2, 9, 5, 6, 7])
    assert d.propose(4) == [8]  # cut before the media keys
