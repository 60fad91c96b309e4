"""Backoff and error classification for executions.

Exponential backoff with full jitter (AWS architecture blog, "Exponential
Backoff And Jitter"): the delay before retry n is uniform in
[0, min(cap, base * 2**(n-1))]. Full jitter spreads a burst of failures (one
provider outage hitting hundreds of executions) over the whole window instead
of retrying them in lockstep. The database decides when no attempt is left
(scheduler.requeue_later fails the execution and writes the notification).
"""

from __future__ import annotations

import enum
import random
from collections.abc import Callable

# HTTP statuses of the chat function that a retry may cure.
RETRYABLE_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
# Statuses a gateway in front of the chat function answers while the function
# is down; from the function itself they carry its JSON error body.
GATEWAY_STATUSES = frozenset({502, 503, 504})
# Statuses that will answer the same way however often we ask.
PERMANENT_STATUSES = frozenset({400, 401, 403, 404, 405, 409, 413, 422})


class ErrorKind(enum.StrEnum):
    """Values of agent_task_executions.error_kind the worker writes."""

    TRANSIENT = "transient"
    PERMANENT = "permanent"
    TIMEOUT = "timeout"
    EMPTY_REPLY = "empty_reply"
    # the chat function (or the network to it) did not answer: no attempt spent
    UNREACHABLE = "unreachable"


def backoff_ceiling_s(attempt: int, base_s: float, cap_s: float) -> float:
    """Upper bound of the delay after failed attempt `attempt` (1-based): min(cap, base * 2**(attempt-1))."""
    exponent = max(0, attempt - 1)
    if exponent > 60:  # 2**60 * base is far beyond any cap; avoid float overflow
        return cap_s
    return min(cap_s, base_s * (2.0**exponent))


def backoff_delay_s(
    attempt: int,
    base_s: float,
    cap_s: float,
    retry_after_s: float | None = None,
    rand: Callable[[], float] = random.random,
    min_s: float = 0.0,
) -> float:
    """Seconds to wait before the next attempt: full jitter in [0, ceiling], at least `min_s`
    (so the retries of one run cannot all fit inside a short outage) and at least the
    server's Retry-After (itself capped at cap_s so a silly header cannot park a run for a day)."""
    delay = max(min(min_s, cap_s), rand() * backoff_ceiling_s(attempt, base_s, cap_s))
    if retry_after_s is not None and retry_after_s > 0:
        delay = max(delay, min(retry_after_s, cap_s))
    return delay


def is_retryable_status(status: int, body_retryable: bool | None = None) -> bool:
    """Whether an HTTP error status from the chat function is worth retrying.

    The body's `retryable` flag wins when present: the function knows whether
    e.g. its 502 came from an empty model reply (retry) or a refusal (do not).
    Otherwise 408/425/429 and 5xx are retryable and everything else is not.
    """
    if body_retryable is not None:
        return body_retryable
    if status in RETRYABLE_STATUSES:
        return True
    if status in PERMANENT_STATUSES:
        return False
    return status >= 500


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header in its delta-seconds form (HTTP dates are ignored)."""
    if not value:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    return seconds if seconds >= 0 else None
