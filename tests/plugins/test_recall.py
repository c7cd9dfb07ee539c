"""The memory of recent answers that prompt lookup consults across requests, and how a drafter chooses
between a recalled guess and one from its own sequence."""

from __future__ import annotations

from corral_plugins._llama.ngram import NgramDrafter
from corral_plugins._llama.recall import MIN_CONTEXT, AnswerMemory

PROMPT = list(range(100, 140))
ANSWER = list(range(500, 560))


def test_an_answer_is_recalled_after_a_long_enough_match() -> None:
    m = AnswerMemory()
    m.remember(PROMPT + ANSWER, len(PROMPT))
    guess, matched = m.recall([7] + ANSWER[:20], 5)
    assert guess == ANSWER[20:25] and matched == 20
    assert m.recall(PROMPT, 4) == (ANSWER[:4], 32)  # the prompt's tail is kept to match the answer's start
    assert m.recall([1, 2] + ANSWER[:MIN_CONTEXT - 1], 4) == ([], 0)  # too short a match


def test_a_guess_ends_with_its_answer() -> None:
    m = AnswerMemory()
    m.remember(PROMPT + ANSWER, len(PROMPT))
    m.remember([9] * 10 + [900, 901], 10)
    assert m.recall(ANSWER[-10:], 8) == ([], 0)  # nothing followed the first answer but the next one
    assert m.recall(ANSWER[-11:-1], 8) == ([ANSWER[-1]], 10)


def test_no_answer_no_memory() -> None:
    m = AnswerMemory()
    m.remember(PROMPT, len(PROMPT))  # cancelled before its first token
    assert len(m) == 0


def test_the_older_half_is_forgotten_past_capacity() -> None:
    m = AnswerMemory(capacity=200)
    m.remember(PROMPT + ANSWER, len(PROMPT))  # 32 + 60 + 1 tokens
    assert m.recall(ANSWER[:10], 3)[0] == ANSWER[10:13]
    later = [list(range(1000 * i, 1000 * i + 60)) for i in (1, 2)]
    for answer in later:
        m.remember(PROMPT + answer, len(PROMPT))
    assert len(m) <= 100
    assert m.recall(ANSWER[:10], 3) == ([], 0)
    assert m.recall(later[1][:10], 3)[0] == later[1][10:13]


def test_a_repeated_request_follows_the_remembered_answer_where_its_own_lookup_goes_wrong() -> None:
    memory = AnswerMemory()
    prompt = list(range(40))
    answer = list(range(10)) + [77, 78] + list(range(12, 30))  # copies the prompt, with one change
    first = NgramDrafter(prompt, 8, memory)
    first.extend(answer)
    first.finish()
    again = NgramDrafter(prompt, 8, memory)
    again.extend(answer[:10])
    # its own lookup continues the prompt (10, 11, ...); the memory matches longer and knows 77, 78
    seen: list[list[float]] = []
    assert again.propose(4, lambda gains: seen.append(list(gains)) or 4) == [77, 78, 12, 13]
    assert seen == [[0.0] * 5]  # recalled guesses keep a record of their own, from the same prior
    again.extend([77, 78, 12, 13])
    assert again.propose(4, lambda gains: 4) == [14, 15, 16, 17]
    own_only = NgramDrafter(prompt, 8)
    own_only.extend(answer[:10])
    assert own_only.propose(4) == [10, 11, 12, 13]
