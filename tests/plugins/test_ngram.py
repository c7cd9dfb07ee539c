"""The prompt-lookup drafter: what it guesses, the record it keeps of its guesses, and how the step
budget turns that record and the learned cost of a row into a draft length."""

from __future__ import annotations

import pytest

from corral_plugins._llama.draftcost import MIN_GAIN, DraftBudget, RowCosts
from corral_plugins._llama.guesses import OWN, GuessStats
from corral_plugins._llama.ngram import MAX_DRAFT, NgramDrafter


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
    assert d.propose(4) == [14, 15, 20, 11]


def test_media_rows_are_never_guessed() -> None:
    d = NgramDrafter([5, 6, 7, 8, -1, -2, 9, 5, 6, 7])
    assert d.propose(4) == [8]  # cut before the media keys


def copying(n: int) -> NgramDrafter:
    """A drafter whose sequence copies its prompt (0..n-1) after repeating its first four tokens."""
    return NgramDrafter(list(range(n)) + [0, 1, 2, 3], 16)


def test_nothing_is_drafted_before_a_guess_has_come_true() -> None:
    d = copying(100)
    seen: list[list[float]] = []
    assert d.propose(8, lambda gains: seen.append(list(gains)) or 8) == list(range(4, 12))
    assert seen == [[0.0] * 9]  # the record starts from one guess that failed at once
    assert d.expected(8) == 0.0


def test_guesses_are_checked_whether_or_not_they_were_drafted() -> None:
    stats = GuessStats(16)
    d = NgramDrafter(list(range(100)) + [0, 1, 2, 3], 16, stats=stats)
    assert d.propose(16, lambda gains: 0) == []  # not drafted: the guess is still followed
    d.extend(list(range(4, 20)))  # the model wrote exactly what the guess said
    after_a_miss = stats.key(OWN, 0)  # the guess was made before any streak
    e16 = stats.expect(after_a_miss, 16)
    assert 8 < e16 < 16  # one full success against the decayed prior failure
    assert stats.expect(after_a_miss, 1) == pytest.approx(e16 / 16)
    d.extend([500, 16, 17, 18])  # a miss (no guess was offered), then a context seen before
    assert d.propose(2, lambda gains: 0) == []
    d.extend([19, 20])  # its guess (19, 500) came true at its first token only
    assert stats.expect(after_a_miss, 16) < e16
    first = stats.expect(after_a_miss, 1)
    second = stats.expect(after_a_miss, 2) - first
    assert 0 < second < first  # the second token of a guess is now less likely than the first


def test_guesses_are_told_apart_by_the_streak_they_are_made_in() -> None:
    stats = GuessStats(16)
    d = NgramDrafter(list(range(400)) + [0, 1, 2, 3], 16, stats=stats)
    assert d.expected(8) == 0.0
    for start in range(4, 4 + 8 * 10, 8):  # a streak: every guess comes true
        d.propose(16, lambda gains: 0)
        d.extend(list(range(start, start + 8)))
    assert d.expected(8) > 7  # what guesses made 16 or more tokens into a streak have done
    assert stats.key(OWN, 0) != stats.key(OWN, 1) != stats.key(OWN, 16) == stats.key(OWN, 1000)
    d.propose(16, lambda gains: 0)
    d.extend([1000, 0, 1, 2, 3])  # the text stops copying: the streak ends
    deep = stats.expect(stats.key(OWN, 16), 8)
    assert d.expected(8) < 7  # after a miss: what guesses made after misses did
    for i in range(10):
        d.propose(16, lambda gains: 0)
        d.extend([1001 + i, 0, 1, 2, 3])  # each guess after a miss fails at its first token
    assert d.expected(8) < 1
    assert stats.expect(stats.key(OWN, 16), 8) == deep  # a streak's guesses are still expected to hold


def test_the_stats_follow_the_text() -> None:
    stats = GuessStats(16)
    source = list(range(6000))
    d = NgramDrafter(source + [0, 1, 2, 3], 16, stats=stats)
    for start in range(4, 4 + 16 * 30, 16):
        d.propose(16, lambda gains: 0)
        d.extend(source[start : start + 16])
    assert d.expected(16) > 15  # thirty perfect guesses in a row
    at = 4 + 16 * 30
    for i in range(200):  # from now on every guess made 16 tokens into a streak fails after four
        for n in (8, 8):  # guesses made after a miss and 8 tokens into a streak hold
            d.propose(16, lambda gains: 0)
            d.extend(source[at : at + n])
            at += n
        d.propose(16, lambda gains: 0)
        d.extend(source[at : at + 4] + [10000 + i])
        d.extend(source[at + 4 : at + 7])  # the copy goes on, one context later
        at += 7
    deep = stats.key(OWN, 16)
    assert stats.expect(deep, 4) > 3.5
    assert stats.expect(deep, 16) < 5


def test_the_sequences_of_a_model_share_what_they_learned() -> None:
    stats = GuessStats(16)
    first = NgramDrafter(list(range(100)) + [0, 1, 2, 3], 16, stats=stats)
    first.propose(16, lambda gains: 0)
    first.extend(list(range(4, 20)))  # its first guess came true, though nothing was drafted
    prompt = list(range(200, 300)) + [200, 201, 202, 203]
    # another sequence's first guess is expected to hold as the first one's did (against the prior)
    guess, gains = NgramDrafter(prompt, 16, stats=stats).offer(16)
    assert guess == list(range(204, 220)) and gains[16] > 7
    assert NgramDrafter(prompt, 16).offer(16)[1][16] == 0.0  # alone: nothing seen yet


def costs(*points: tuple[int, float], slope: float = 0.0) -> RowCosts:
    c = RowCosts(lambda: slope)
    for rows, t in points:
        c.learn(t, rows)
    return c


def test_row_costs_interpolate_and_extrapolate() -> None:
    c = costs((1, 0.010), (5, 0.050), slope=0.020)
    assert c.step_time(1) == 0.010
    assert c.step_time(3) == pytest.approx(0.030)  # between two measured sizes
    assert c.step_time(10) == pytest.approx(0.100)  # twice the largest: the measured cost per row...
    assert costs((1, 0.010), (5, 0.050), slope=0.002).step_time(10) == pytest.approx(0.060)  # or less
    assert c.step_time(7) is None and c.step_time(11) is None  # other sizes past it: not guessed
    assert c.step_time(0) is None
    one = costs((1, 0.010), slope=0.002)
    assert one.step_time(2) == pytest.approx(0.012)  # one size measured: the prior slope
    assert one.step_time(3) is None
    assert costs((1, 0.010)).step_time(2) == pytest.approx(0.015)  # no prior: half a step per row
    c.learn(0.020, 1)
    assert c.step_time(1) == pytest.approx(0.020)  # the first step of a size is not its cost
    c.learn(0.030, 1)
    assert c.step_time(1) == pytest.approx(0.025)  # the mean of the next ones
    for _ in range(20):
        c.learn(0.040, 1)
    assert c.step_time(1) == pytest.approx(0.040, rel=0.01)  # then a moving average


def test_a_draft_is_as_long_as_pays_for_the_step() -> None:
    cheap = costs((1, 0.010), (17, 0.012))  # a GPU: rows are almost free
    gains = [0.5 * k for k in range(17)]  # half of every guessed token comes true
    assert DraftBudget(cheap, 1).pick(gains) == 16
    dear = costs((1, 0.010), (17, 0.170))  # two CPU cores: a row costs as much as a step
    assert DraftBudget(dear, 1).pick(gains) == 0
    perfect = [float(k) for k in range(17)]
    assert DraftBudget(dear, 1).pick(perfect) == 0  # 17 tokens for 17 steps' time: no gain
    assert DraftBudget(costs((1, 0.010), (17, 0.100)), 1).pick(perfect) == 16


def test_a_draft_must_pay_for_everyone_in_the_step() -> None:
    c = costs((1, 0.010), (2, 0.0125), (4, 0.030), (5, 0.040))
    gains = [0.0, 0.9]
    alone = DraftBudget(c, 1)
    assert alone.pick(gains) == 1  # 1.9 tokens in 12.5 ms beat 1 token in 10 ms
    assert (alone.rows, alone.tokens) == (2, 1.9)
    busy = DraftBudget(c, 4)
    assert busy.pick(gains) == 0  # 4.9 tokens in 40 ms lose to 4 in 30: the others wait too
    assert (4 + 0.9) / 0.040 < MIN_GAIN * 4 / 0.030
    cheap = DraftBudget(costs((1, 0.010), (2, 0.0105), (3, 0.011)), 1)
    assert cheap.pick(gains) == 1
    assert cheap.pick([0.0, 0.1]) == 0  # the next sequence is weighed against the step as it now is


def test_unmeasured_step_sizes_are_tried_then_known() -> None:
    c = RowCosts(lambda: 0.001)  # a prompt token is cheap, so a row is guessed cheap
    assert DraftBudget(c, 1).pick([0.0, 1.0]) == 0  # nothing measured yet
    c.learn(0.010, 1)
    assert DraftBudget(c, 1).pick([0.0, 0.9, 1.8]) == 1  # tried on the prior's word, up to 2 rows
    c.learn(0.011, 2)
    assert DraftBudget(c, 1).pick([0.0, 0.9, 1.8, 2.7, 3.6, 4.5]) == 3  # then up to twice that
    c.learn(0.040, 4)  # and found dear
    assert DraftBudget(c, 1).pick([0.0, 0.9, 1.8, 2.7, 3.6, 4.5]) == 3  # once might be bad luck
    c.learn(0.040, 4)  # twice is not
    assert DraftBudget(c, 1).pick([0.0, 0.9, 1.8, 2.7, 3.6, 4.5]) == 1
    # the next doubling: priced by the prior's cheaper slope, so it is tried rather than never known
    assert c.step_time(8) == pytest.approx(0.040 + 4 * 0.001)


def test_drafts_grow_in_doublings_and_settle_on_the_cheapest_size() -> None:
    # Step times measured on two x86 cores (gemma3 270m, ms by rows): the kernels work in tiles of
    # four rows, so 16 rows cost less than 15 and 17 far more than 16.
    ms = {1: 24, 2: 24, 3: 28, 4: 32, 5: 47, 6: 52, 7: 57, 8: 52, 9: 66, 10: 70, 11: 82, 12: 70, 13: 83,
          14: 85, 15: 90, 16: 83, 17: 114}
    c = RowCosts(lambda: 0.0012)  # a prompt token's cost
    c.learn(0.024, 1)
    perfect = [float(k) for k in range(17)]  # a copy: every guessed token comes true
    tried = []
    for _ in range(12):
        k = DraftBudget(c, 1).pick(perfect)
        tried.append(k)
        c.learn(ms[1 + k] / 1000, 1 + k)
    assert list(dict.fromkeys(tried)) == [1, 3, 7, 15]  # 2, 4, 8, 16 rows, each measured first
    assert tried[-6:] == [15] * 6  # 16 tokens in 83 ms: the best size, kept
    assert 16 not in tried  # 17 rows are not a doubling of any measured size


def test_a_size_measured_dear_once_is_measured_again() -> None:
    c = costs((1, 0.024), (2, 0.024), (4, 0.032), (8, 0.052))
    perfect = [float(k) for k in range(17)]
    assert DraftBudget(c, 1).pick(perfect) == 15  # 16 rows: twice 8, priced at 8's cost per row
    c.learn(0.150, 16)  # a first step of a size: llama.cpp grew its output buffer
    assert DraftBudget(c, 1).pick(perfect) == 15  # priced as it was guessed until measured again
    c.learn(0.083, 16)
    assert c.step_time(16) == pytest.approx(0.083)  # the second step is its cost
    assert DraftBudget(c, 1).pick(perfect) == 15
    c.learn(0.150, 16)
    c.learn(0.150, 16)
    assert DraftBudget(c, 1).pick(perfect) < 15  # steps that are slow every time: known dear


def test_the_longest_matching_context_wins_over_the_latest_one() -> None:
    loop = [50, 1, 2, 3, 60, 61, 51, 1, 2, 3, 70, 71]  # "1 2 3" twice, after 50 and after 51
    d = NgramDrafter(loop + [99, 50, 1, 2, 3])
    assert d.guess()[:2] == [60, 61]  # "50 1 2 3" matches the first place: four tokens, not three
    d = NgramDrafter(loop + [99, 98, 1, 2, 3])
    assert d.guess()[:2] == [70, 71]  # three tokens match both: the latest place
    assert NgramDrafter(loop + [99, 2, 3]).guess() == []  # two tokens are too few


def test_max_draft_bounds_the_guess() -> None:
    d = NgramDrafter(list(range(50)) + [0, 1, 2, 3], max_draft=5)
    assert d.propose(100) == [4, 5, 6, 7, 8]
    assert NgramDrafter(list(range(100)) + [0, 1, 2, 3]).propose(100) == list(range(4, 4 + MAX_DRAFT))


def test_a_long_guess_teaches_as_it_comes_true() -> None:
    stats = GuessStats(64)
    d = NgramDrafter(list(range(200)) + [0, 1, 2, 3], 64, stats=stats)
    assert d.propose(64, lambda gains: 0) == []  # the first guess is followed, not drafted
    d.extend(list(range(4, 24)))  # twenty of its 64 tokens came true so far, one at a time or not
    key = stats.key(OWN, 0)
    assert stats.expect(key, 20) > 9  # against the prior failure: about half
    assert stats.expect(key, 21) == stats.expect(key, 20)  # no guess has reached the 21st token yet
    d.extend([24])
    assert stats.expect(key, 21) > stats.expect(key, 20)


def test_a_loop_is_guessed_past_the_end_of_the_history() -> None:
    loop = [7, 8, 9, 10, 11]
    d = NgramDrafter([1, 2, 3] + loop * 3, 12)
    assert d.propose(12) == (loop * 3)[:12]  # the loop goes on, not only the 5 tokens after its start


def test_a_dear_first_doubling_does_not_hide_cheaper_larger_steps() -> None:
    # zen4, two cores (gemma3 270m, ms by rows): two rows cost twice one, four little more than two
    ms = {1: 15, 2: 29, 4: 35, 8: 58, 16: 103, 32: 175, 64: 333}
    c = RowCosts(lambda: 0.0015)
    c.learn(0.015, 1)
    perfect = [float(k) for k in range(64)]
    tried = []
    for _ in range(20):
        k = DraftBudget(c, 1).pick(perfect)
        tried.append(k)
        c.learn(ms[1 + k] / 1000, 1 + k)
    assert list(dict.fromkeys(tried)) == [1, 3, 7, 15, 31, 63]
    assert tried[-6:] == [63] * 6  # 64 tokens in 333 ms: the best rate


def test_a_step_s_rows_go_to_the_likeliest_guessed_tokens_first() -> None:
    c = costs((2, 0.020), (4, 0.022), (8, 0.026))  # rows are cheap
    sure = [float(k) for k in range(5)]  # every token of this guess comes true
    doubtful = [0.0, 0.5, 0.75, 0.875, 0.9375]  # each token of this one half as likely as the last
    assert DraftBudget(c, 2).split([doubtful, sure], room=4) == [0, 4]  # first in the batch, not first served
    assert DraftBudget(c, 2).split([doubtful, sure], room=6) == [1, 4]  # then what still pays
