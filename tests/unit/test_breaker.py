"""worker.breaker.CircuitBreaker with a test clock: when the worker stops and resumes claiming."""

from __future__ import annotations

from worker.breaker import CircuitBreaker, CircuitState


def full() -> float:
    """The jitter's top: each pause lasts the whole cooldown."""
    return 1.0


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_breaker__opens_after_threshold_unreachable_in_a_row() -> None:
    clock = Clock()
    b = CircuitBreaker(threshold=3, cooldown_min_s=1.0, cooldown_max_s=8.0, clock=clock, rand=full)
    assert not b.record_unreachable("refused") and not b.record_unreachable("refused")
    assert b.state is CircuitState.CLOSED and b.claim_limit(5) == 5
    assert b.record_unreachable("refused")
    assert b.state is CircuitState.OPEN and b.claim_limit(5) == 0 and b.reopen_in_s() == 1.0
    # the other runs in flight when it opened come back too: no new opening, same cooldown
    assert not b.record_unreachable("refused") and b.reopen_in_s() == 1.0


def test_breaker__an_answer_between_failures_resets_the_count() -> None:
    b = CircuitBreaker(threshold=2, clock=Clock())
    b.record_unreachable("x")
    assert not b.record_answer()
    assert not b.record_unreachable("x") and b.state is CircuitState.CLOSED


def test_breaker__half_open_lets_one_probe_through_then_closes_on_an_answer() -> None:
    clock = Clock()
    b = CircuitBreaker(threshold=1, cooldown_min_s=1.0, clock=clock, rand=full)
    b.record_unreachable("503 from the gateway")
    clock.now += 1.0
    assert b.state is CircuitState.HALF_OPEN and b.claim_limit(8) == 1
    b.probe_claimed(1)
    assert b.claim_limit(8) == 0, "one probe at a time"
    assert b.record_answer() and b.state is CircuitState.CLOSED and b.claim_limit(8) == 8


def test_breaker__a_failed_probe_doubles_the_cooldown_up_to_the_cap() -> None:
    clock = Clock()
    b = CircuitBreaker(threshold=1, cooldown_min_s=1.0, cooldown_max_s=3.0, clock=clock, rand=full)
    b.record_unreachable("x")
    waits = []
    for _ in range(3):
        clock.now += b.reopen_in_s()
        assert b.claim_limit(4) == 1
        b.probe_claimed(1)
        assert b.record_unreachable("x")
        waits.append(b.reopen_in_s())
    assert waits == [2.0, 3.0, 3.0]
    clock.now += 3.0
    b.probe_claimed(1)
    assert b.record_answer()
    b.record_unreachable("x")
    assert b.reopen_in_s() == 1.0, "a new outage starts from the shortest cooldown"


def test_breaker__pauses_below_the_cap_are_exact_and_at_the_cap_jittered() -> None:
    # doubling pauses cannot lock onto a flapping upstream's period; a constant one (the cap) can
    clock = Clock()
    draws = iter([0.0, 0.5, 1.0])
    b = CircuitBreaker(threshold=1, cooldown_min_s=2.0, cooldown_max_s=8.0, clock=clock, rand=lambda: next(draws))
    waits = []
    b.record_unreachable("x")
    for _ in range(4):
        waits.append(b.reopen_in_s())
        clock.now += b.reopen_in_s()
        assert b.claim_limit(4) == 1, "half-open once the pause is over"
        b.probe_claimed(1)
        b.record_unreachable("x")
    assert waits == [2.0, 4.0, 4.0, 6.0], "2 and 4 exact; at the 8 s cap half (draw 0) and three quarters (0.5)"
    assert b.reopen_in_s() == 8.0, "and all of it (draw 1)"


def test_breaker__pauses_of_many_workers_spread_over_the_window() -> None:
    pauses = set()
    for _ in range(200):
        b = CircuitBreaker(threshold=1, cooldown_min_s=30.0, cooldown_max_s=30.0, clock=Clock())
        b.record_unreachable("x")
        pauses.add(round(b.reopen_in_s(), 3))
    assert min(pauses) >= 15.0 and max(pauses) <= 30.0
    assert len(pauses) > 100, "200 workers opened by one outage probe at different instants"
