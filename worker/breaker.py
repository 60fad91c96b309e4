"""The worker's circuit breaker on the chat function.

An infrastructure outage (the chat function or the network to it does not
answer: connection refused or reset, a gateway's 502/503/504, a connect
timeout) is not the run's fault, so it must not spend the user's attempts,
and a worker that keeps claiming during it only burns runs. After
`threshold` unreachable answers in a row the breaker opens: the worker stops
claiming and gives each run that met the outage back to the queue without
spending its attempt (scheduler.requeue_later with p_spend_attempt = false),
runnable again only after the breaker's cooldown. When the cooldown has passed
the breaker is half-open: the worker claims one run as a probe; its answer
closes the breaker (the function answered, whatever the model said) or opens
it again for twice as long (up to `cooldown_max_s`).

A pause at the cap is jittered: it lasts between half and all of
`cooldown_max_s`. A constant pause can lock onto a flapping upstream's period
and probe into its outage every time (measured: a gateway down 3 s of every
5 s met the same run's 30 s probes in its down window six times in a row);
doubling pauses cannot. Below the cap the pauses stay exact: jittering them
too ("equal jitter" on every pause) made probes come earlier in an outage,
fail, and double more often, and a 1,000-run drain through 3 s outages every
3 s took 140 and 213 s against 52 s (bench/bench_chaos.py chat_outage).

Pure logic with an injectable clock, unit-tested in tests/unit/test_breaker.py;
the runner logs each change and reports it to scheduler.workers
(scheduler.report_chat_circuit), which `agent-tasks queue stats` shows.
"""

from __future__ import annotations

import enum
import random
import time
from collections.abc import Callable

# Unreachable answers in a row that open the breaker (a lone reset connection does not).
BREAKER_THRESHOLD = 3
# First cooldown of an open breaker, doubled each time a probe fails.
BREAKER_COOLDOWN_MIN_S = 1.0
BREAKER_COOLDOWN_MAX_S = 30.0


class CircuitState(enum.StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    """closed -> open after `threshold` unreachable answers in a row; open -> half_open when the
    cooldown has passed (one probe may be claimed); half_open -> closed on any answer of the
    function, -> open (cooldown doubled) on another unreachable one."""

    def __init__(self, threshold: int = BREAKER_THRESHOLD, cooldown_min_s: float = BREAKER_COOLDOWN_MIN_S,
                 cooldown_max_s: float = BREAKER_COOLDOWN_MAX_S,
                 clock: Callable[[], float] = time.monotonic,
                 rand: Callable[[], float] = random.random) -> None:
        self.threshold = max(1, threshold)
        self.cooldown_min_s = cooldown_min_s
        self.cooldown_max_s = max(cooldown_min_s, cooldown_max_s)
        self._clock = clock
        self._rand = rand
        self._failures = 0
        self._cooldown_s = cooldown_min_s
        self._open_until: float | None = None
        self._probing = False
        self.last_error: str | None = None

    @property
    def state(self) -> CircuitState:
        if self._open_until is None:
            return CircuitState.CLOSED
        if self._clock() < self._open_until:
            return CircuitState.OPEN
        return CircuitState.HALF_OPEN

    def claim_limit(self, free: int) -> int:
        """How many runs the worker may claim now, of `free` slots: all when closed, none when
        open, one probe at a time when half-open."""
        state = self.state
        if state is CircuitState.CLOSED:
            return free
        if state is CircuitState.OPEN or self._probing:
            return 0
        return min(1, free)

    def probe_claimed(self, count: int) -> None:
        """The worker claimed `count` runs while half-open: one of them is the probe."""
        if count and self.state is CircuitState.HALF_OPEN:
            self._probing = True

    def reopen_in_s(self) -> float:
        """Seconds until the breaker lets a probe through (0 when closed)."""
        if self._open_until is None:
            return 0.0
        return max(0.0, self._open_until - self._clock())

    def record_unreachable(self, error: str) -> bool:
        """The function did not answer. Returns True when this opened (or reopened) the breaker."""
        self.last_error = error
        self._failures += 1
        if self._open_until is not None:
            if self._clock() < self._open_until and not self._probing:
                return False  # already open: the runs in flight when it opened come back one by one
            # the probe (or a run claimed before the breaker opened) failed: twice as long
            self._cooldown_s = min(self.cooldown_max_s, self._cooldown_s * 2)
            self._open()
            self._probing = False
            return True
        if self._failures >= self.threshold:
            self._cooldown_s = self.cooldown_min_s
            self._open()
            return True
        return False

    def _open(self) -> None:
        """Pause the claims for the current cooldown; at the cap, for half to all of it."""
        pause = self._cooldown_s
        if pause >= self.cooldown_max_s:
            pause *= 0.5 + 0.5 * self._rand()
        self._open_until = self._clock() + pause

    def record_answer(self) -> bool:
        """The function answered (success or a failure of the model or the run). Returns True
        when this closed an open breaker."""
        self._failures = 0
        self._probing = False
        if self._open_until is None:
            return False
        self._open_until = None
        self._cooldown_s = self.cooldown_min_s
        self.last_error = None
        return True
