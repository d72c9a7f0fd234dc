"""CerBudget against a synthetic model whose latency is a + b * K milliseconds."""

import random

import pytest

from ovseg_ros.engine.cer_budget import CerBudget, cer_ladder


def linear_latency(k: int, a: float = 10.0, b: float = 10.0) -> float:
    """Model ms at top-K k: 8 -> 90, 4 -> 50, 2 -> 30, 1 -> 20 (0 = CER off -> 170)."""
    return a + b * (k or 16)


def stream(budget: CerBudget, frames: int, latency=linear_latency, noise=None) -> list[int]:
    """Run ``frames`` frames, each at the K the budget chose; returns the K of every frame."""
    ks = []
    for _ in range(frames):
        k = budget.topk
        ms = latency(k) + (noise() if noise else 0.0)
        budget.observe(ms, topk=k)
        ks.append(k)
    return ks


def largest_fitting(ladder, budget_ms, latency=linear_latency):
    return next(k for k in ladder if latency(k) <= budget_ms)


def test_ladder_starts_at_max_topk_then_halves():
    assert cer_ladder(8) == (8, 4, 2, 1)
    assert cer_ladder(24) == (24, 8, 4, 2, 1)
    assert cer_ladder(3) == (3, 2, 1)
    assert cer_ladder(1) == (1,)
    assert cer_ladder(0) == (0, 8, 4, 2, 1)
    with pytest.raises(ValueError):
        cer_ladder(-1)


@pytest.mark.parametrize("budget_ms", [95.0, 75.0, 55.0, 35.0, 25.0])
def test_budget_settles_on_largest_k_that_fits(budget_ms):
    budget = CerBudget(max_topk=8, budget_ms=budget_ms, window=30)
    ks = stream(budget, 400)
    expected = largest_fitting(budget.ladder, budget_ms)
    assert budget.topk == expected
    # Straight down the ladder, one change per rung, then no more.
    assert budget.changes == budget.ladder.index(expected)
    assert ks[-300:] == [expected] * 300


def test_step_down_does_not_wait_for_a_full_window():
    budget = CerBudget(max_topk=8, budget_ms=25.0, window=30)
    ks = stream(budget, 30)
    # p95 of a 30-frame window is its 2nd largest sample: 2 frames over budget decide it.
    assert ks[:6] == [8, 8, 4, 4, 2, 2]
    assert budget.topk == 1


def test_generous_budget_goes_back_up_to_max():
    budget = CerBudget(max_topk=8, budget_ms=25.0, window=30)
    stream(budget, 100)
    assert budget.topk == 1
    budget.budget_ms = 200.0
    ks = stream(budget, 3 * 30 + 10)
    # The full window at K=1 already says there is room; then one fresh window per rung.
    assert ks[0] == 1 and ks[1] == 2 and ks[30] == 2 and ks[31] == 4 and ks[61] == 8
    assert budget.topk == 8


def test_no_step_up_into_a_k_known_not_to_fit():
    # 50 ms at K=4 is below 0.7 * 75; 90 ms at K=8, just measured, is not within 75.
    budget = CerBudget(max_topk=8, budget_ms=75.0, window=30, forget_after=10_000)
    stream(budget, 1000)
    assert budget.topk == 4
    assert budget.changes == 1
    assert budget.last_p95(8) == 90.0 and budget.last_p95(4) == 50.0


def test_noise_near_the_budget_does_not_oscillate():
    rng = random.Random(0)
    # K=4 runs at 50 +- 2 ms against a 52 ms budget: its p95 is sometimes over, sometimes
    # under. A controller without hysteresis would flip 4 <-> 2 every few frames.
    budget = CerBudget(max_topk=8, budget_ms=52.0, window=30, forget_after=600)
    ks = stream(budget, 1000, noise=lambda: rng.gauss(0.0, 2.0))
    flips = sum(1 for before, after in zip(ks, ks[1:]) if before != after)
    assert flips == budget.changes
    # 8 -> 4, at most 4 -> 2, and one failed probe of 4 after forget_after (up and down).
    assert budget.changes <= 4, ks
    assert set(ks[100:]) <= {2, 4}


def test_single_spikes_are_below_the_p95():
    budget = CerBudget(max_topk=8, budget_ms=100.0, window=30)
    frame = iter(range(10_000))
    # One frame in 30 takes 10x as long (a GC pause, another process): not a p95 breach.
    stream(budget, 1000, latency=lambda k: 900.0 if next(frame) % 30 == 0 else linear_latency(k))
    assert budget.topk == 8 and budget.changes == 0


def test_budget_zero_is_off():
    budget = CerBudget(max_topk=8, budget_ms=0.0, window=10)
    ks = stream(budget, 200, latency=lambda k: 1e6)
    assert ks == [8] * 200 and budget.changes == 0
    budget.budget_ms = 25.0
    stream(budget, 50)
    assert budget.topk == 1
    budget.budget_ms = 0.0  # off again: back to the configured K at once
    assert budget.topk == 8
    assert stream(budget, 100, latency=lambda k: 1e6) == [8] * 100


def test_budget_changed_mid_stream():
    budget = CerBudget(max_topk=8, budget_ms=200.0, window=30)
    assert stream(budget, 100) == [8] * 100
    budget.budget_ms = 35.0
    ks = stream(budget, 200)
    over_budget = sum(1 for k in ks if linear_latency(k) > 35.0)
    # The full window at 8 is still valid: one frame at 8, then two at 4 decide it.
    assert over_budget == 3
    assert budget.topk == 2
    budget.budget_ms = 60.0
    stream(budget, 200)
    assert budget.topk == 4  # 90 ms at 8 is still remembered as too slow for 60


def test_max_topk_off_the_ladder():
    budget = CerBudget(max_topk=24, budget_ms=100.0, window=20)
    assert budget.topk == 24
    stream(budget, 200)
    assert budget.topk == 8  # 250 ms at 24 -> 90 ms at 8
    budget.budget_ms = 1000.0
    stream(budget, 200)
    assert budget.topk == 24


def test_cer_off_as_top_rung():
    budget = CerBudget(max_topk=0, budget_ms=100.0, window=20)
    assert budget.topk == 0
    stream(budget, 200)
    assert budget.topk == 8  # every class (170 ms) -> top 8 (90 ms)


def test_larger_k_is_probed_again_after_load_drops():
    load = {"extra": 40.0}
    budget = CerBudget(max_topk=8, budget_ms=100.0, window=30, forget_after=300)
    latency = lambda k: linear_latency(k) + load["extra"]  # noqa: E731
    stream(budget, 200, latency)
    assert budget.topk == 4  # 130 ms at 8 does not fit, 90 at 4 does
    load["extra"] = 0.0  # e.g. a smaller vocabulary: 8 would fit now (90 ms)
    stream(budget, 100, latency)
    assert budget.topk == 4  # 8 is remembered as 130 ms
    stream(budget, 300, latency)
    assert budget.topk == 8  # forgotten, probed, fits


def test_forget_after_a_vocabulary_change():
    classes = {"count": 847}
    latency = lambda k: 10.0 + 0.1 * classes["count"] * k  # noqa: E731 -- decoder cost ~ classes x K
    budget = CerBudget(max_topk=8, budget_ms=100.0, window=30, forget_after=10_000)
    stream(budget, 100, latency)
    assert budget.topk == 1  # 94.7 ms at 1, 179 at 2
    classes["count"] = 100  # a smaller vocabulary: 8 fits now (90 ms)
    budget.forget()
    stream(budget, 3 * 30 + 5, latency)
    assert budget.topk == 8 and budget.last_p95(8) == 90.0
    classes["count"] = 847  # and back: down again in two frames per rung
    budget.forget()
    ks = stream(budget, 10, latency)
    assert ks == [8, 8, 4, 4, 2, 2, 1, 1, 1, 1]


def test_frames_in_flight_at_the_old_k_are_ignored():
    budget = CerBudget(max_topk=8, budget_ms=60.0, window=10)
    assert budget.observe(90.0, topk=8) == 4  # window 10: its p95 is its max
    # Pipelined frames that started at K=8 finish after the change: not K=4 samples.
    for _ in range(20):
        assert budget.observe(90.0, topk=8) == 4
    assert budget.last_p95(4) is None
    for _ in range(10):
        assert budget.observe(50.0, topk=4) == 4
    assert budget.last_p95(4) == 50.0


def test_reset_forgets_everything():
    budget = CerBudget(max_topk=8, budget_ms=25.0, window=10)
    stream(budget, 50)
    budget.reset()
    assert budget.topk == 8 and budget.changes == 0 and budget.last_p95(8) is None
    assert budget.budget_ms == 25.0


@pytest.mark.parametrize("kwargs", [dict(window=0), dict(headroom=1.0), dict(headroom=0.0), dict(budget_ms=-1.0)])
def test_invalid_settings_are_refused(kwargs):
    with pytest.raises(ValueError):
        CerBudget(**kwargs)
