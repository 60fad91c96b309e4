"""Backoff schedule, retryability of statuses, and the chat function's answers classified."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from multidict import CIMultiDict, CIMultiDictProxy

from worker.chat_client import (
    ChatNeedsInput,
    ChatOk,
    ChatPermanent,
    ChatTransient,
    classify_response,
)
from worker.retry import ErrorKind, backoff_ceiling_s, backoff_delay_s, is_retryable_status, parse_retry_after


def test_backoff_ceiling__doubles_then_caps() -> None:
    assert [backoff_ceiling_s(a, 5, 600) for a in range(1, 10)] == [5, 10, 20, 40, 80, 160, 320, 600, 600]
    assert backoff_ceiling_s(0, 5, 600) == 5
    assert backoff_ceiling_s(10_000, 5, 600) == 600


def test_backoff_delay__full_jitter_bounds() -> None:
    assert backoff_delay_s(3, 5, 600, rand=lambda: 0.0) == 0.0
    assert backoff_delay_s(3, 5, 600, rand=lambda: 0.999999) == pytest.approx(20, rel=1e-5)
    assert backoff_delay_s(3, 5, 600, rand=lambda: 0.5) == 10


@given(attempt=st.integers(1, 200), base=st.floats(0.01, 60), cap=st.floats(60, 3600))
def test_backoff_delay__always_within_zero_and_ceiling(attempt: int, base: float, cap: float) -> None:
    d = backoff_delay_s(attempt, base, cap)
    assert 0 <= d <= min(cap, base * 2 ** min(attempt - 1, 60)) <= cap


def test_backoff_delay__never_below_the_minimum() -> None:
    # full jitter alone may draw ~0 s: three attempts would fit inside a 3 s outage
    assert backoff_delay_s(1, 5, 600, rand=lambda: 0.0, min_s=2) == 2
    assert backoff_delay_s(1, 5, 600, rand=lambda: 0.9, min_s=2) == 4.5
    assert backoff_delay_s(1, 5, 1, rand=lambda: 0.0, min_s=2) == 1  # the cap still wins


def test_backoff_delay__jitter_spreads_over_the_window() -> None:
    delays = [backoff_delay_s(4, 5, 600) for _ in range(2000)]
    assert min(delays) < 4 and max(delays) > 36  # window is [0, 40]
    assert 15 < sum(delays) / len(delays) < 25


def test_backoff_delay__honours_retry_after_but_caps_it() -> None:
    assert backoff_delay_s(1, 5, 600, retry_after_s=30, rand=lambda: 0.5) == 30
    assert backoff_delay_s(1, 5, 600, retry_after_s=86_400, rand=lambda: 0.5) == 600
    assert backoff_delay_s(5, 5, 600, retry_after_s=1, rand=lambda: 1.0) == 80


@pytest.mark.parametrize(("status", "body_flag", "expected"), [
    (429, None, True), (500, None, True), (502, None, True), (503, None, True), (504, None, True),
    (400, None, False), (401, None, False), (403, None, False), (404, None, False),
    (413, None, False), (422, None, False),
    (502, False, False), (400, True, True), (599, None, True), (418, None, False),
])
def test_is_retryable_status(status: int, body_flag: bool | None, expected: bool) -> None:
    assert is_retryable_status(status, body_flag) is expected


def test_parse_retry_after() -> None:
    assert parse_retry_after("12") == 12
    assert parse_retry_after(" 1.5 ") == 1.5
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") is None
    assert parse_retry_after(None) is None
    assert parse_retry_after("-3") is None


# --- the chat function's answers ------------------------------------------------------------

MID = uuid.uuid4()


def ok_body(**over: Any) -> bytes:
    body: dict[str, Any] = {
        "conversation_id": str(uuid.uuid4()), "user_message_id": str(uuid.uuid4()),
        "message": {"id": str(MID), "role": "assistant", "content": "Hello!", "tool_calls": None,
                    "metadata": {}},
        "usage": {"total_tokens": 12}, "replayed": False, "needs_input": None,
    }
    body.update(over)
    return json.dumps(body).encode()


def err_body(code: str, retryable: bool | None = None) -> bytes:
    err: dict[str, Any] = {"code": code, "message": f"{code} happened"}
    if retryable is not None:
        err["retryable"] = retryable
    return json.dumps({"error": err}).encode()


def test_classify__ok() -> None:
    r = classify_response(200, ok_body(replayed=True))
    assert r == ChatOk(message_id=MID, content="Hello!", usage={"total_tokens": 12}, replayed=True)


def test_classify__needs_input() -> None:
    r = classify_response(200, ok_body(needs_input={"question": "Which repo?"}))
    assert isinstance(r, ChatNeedsInput) and r.question == "Which repo?" and r.message_id == MID


def test_classify__empty_reply_is_retryable() -> None:
    body = json.loads(ok_body())
    body["message"]["content"] = "  "
    r = classify_response(200, json.dumps(body).encode())
    assert isinstance(r, ChatTransient) and r.kind is ErrorKind.EMPTY_REPLY


def test_classify__502_empty_reply_code() -> None:
    r = classify_response(502, err_body("empty_reply", True))
    assert isinstance(r, ChatTransient) and r.kind is ErrorKind.EMPTY_REPLY


def test_classify__malformed_success_is_transient() -> None:
    assert isinstance(classify_response(200, b"<html>"), ChatTransient)


@pytest.mark.parametrize("status", [400, 401, 403, 404, 413, 422])
def test_classify__permanent_statuses(status: int) -> None:
    r = classify_response(status, err_body("nope"))
    assert isinstance(r, ChatPermanent) and r.status == status and r.code == "nope"
    assert f"{status} nope" in r.error


@pytest.mark.parametrize("status", [429, 500, 502, 503, 504])
def test_classify__transient_statuses(status: int) -> None:
    r = classify_response(status, err_body("busy"))
    assert isinstance(r, ChatTransient) and r.kind is ErrorKind.TRANSIENT and r.status == status


def test_classify__body_retryable_flag_wins() -> None:
    assert isinstance(classify_response(503, err_body("x", retryable=False)), ChatPermanent)
    assert isinstance(classify_response(409, err_body("x", retryable=True)), ChatTransient)


def test_classify__retry_after_header() -> None:
    r = classify_response(429, err_body("rate_limited"), CIMultiDictProxy(CIMultiDict({"Retry-After": "7"})))
    assert isinstance(r, ChatTransient) and r.retry_after_s == 7


def test_classify__non_json_error_body() -> None:
    r = classify_response(502, b"Bad Gateway")
    assert isinstance(r, ChatTransient) and "Bad Gateway" in r.error


@pytest.mark.parametrize("status", [502, 503, 504])
def test_classify__gateway_status_without_the_functions_body_is_unreachable(status: int) -> None:
    r = classify_response(status, b"<html>upstream connect error</html>")
    assert isinstance(r, ChatTransient) and r.unreachable and r.kind is ErrorKind.UNREACHABLE


@pytest.mark.parametrize("status", [500, 502, 503])
def test_classify__the_functions_own_5xx_is_a_failure_of_the_run_not_an_outage(status: int) -> None:
    r = classify_response(status, err_body("model_unavailable", True))
    assert isinstance(r, ChatTransient) and not r.unreachable and r.kind is ErrorKind.TRANSIENT
    r = classify_response(500, b"Internal Server Error")
    assert isinstance(r, ChatTransient) and not r.unreachable
