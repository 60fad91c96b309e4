"""Model failures map to the statuses and codes the worker classifies; the rate limit.

Instances with special settings (a short OPENAI_TIMEOUT_MS, an unreachable
provider, CHAT_RATE_LIMIT=3) are extra chat function processes on the same
database.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.conftest import create_agent, create_user
from tests.e2e.conftest import ChatFunction, FakeLLM, start_chat_function
from worker import stack

pytestmark = pytest.mark.e2e


def ask(fn: ChatFunction, user: uuid.UUID, agent: uuid.UUID, message: str) -> tuple[int, dict[str, Any]]:
    r = fn.post({"agent_id": str(agent), "message": message}, fn.user_headers(user))
    return r.status_code, r.json()


def assistant_count(db: psycopg.Connection[Any], user: uuid.UUID) -> int:
    row = db.execute("select count(*) as n from public.chat_messages_v2 where user_id = %s and role = 'assistant'",
                     (user,)).fetchone()
    assert row is not None
    return int(row["n"])


@pytest.mark.parametrize(("directive", "status", "code", "retryable"), [
    ("[[fail:429]]", 503, "model_rate_limited", True),
    ("[[fail:500]]", 502, "model_unavailable", True),
    ("[[fail:503]]", 502, "model_unavailable", True),
    ("[[malformed]]", 502, "model_bad_response", True),
    ("[[fail:401]]", 422, "model_request_rejected", False),
    ("[[fail:400]]", 422, "model_request_rejected", False),
    ("[[fail:404]]", 422, "model_request_rejected", False),
    ("[[empty]]", 502, "empty_reply", True),
])
def test_model_failure__maps_to_status_and_code(chat_function: ChatFunction, llm: FakeLLM,
                                                db: psycopg.Connection[Any], alice: uuid.UUID,
                                                agent: uuid.UUID, directive: str, status: int, code: str,
                                                retryable: bool) -> None:
    got_status, body = ask(chat_function, alice, agent, f"please {directive}")
    assert (got_status, body["error"]["code"], body["error"]["retryable"]) == (status, code, retryable)
    assert assistant_count(db, alice) == 0, "a failed turn persists no reply"


def test_model_failure__provider_retry_after_is_passed_on(chat_function: ChatFunction, llm: FakeLLM,
                                                          alice: uuid.UUID, agent: uuid.UUID) -> None:
    r = chat_function.post({"agent_id": str(agent), "message": "[[fail:429]]"}, chat_function.user_headers(alice))
    assert r.status_code == 503 and r.headers["retry-after"] == "1"


def test_model_failure__transient_then_success(chat_function: ChatFunction, llm: FakeLLM,
                                               db: psycopg.Connection[Any], alice: uuid.UUID,
                                               agent: uuid.UUID) -> None:
    message = f"flaky {uuid.uuid4().hex} [[fail_times:1:500]]"
    assert ask(chat_function, alice, agent, message)[0] == 502
    status, body = ask(chat_function, alice, agent, message)
    assert status == 200 and body["message"]["content"] == f"Echo: {message}"


def test_model_failure__global_fail_status(chat_function: ChatFunction, llm: FakeLLM, alice: uuid.UUID,
                                           agent: uuid.UUID) -> None:
    llm.configure(fail_status=403)
    status, body = ask(chat_function, alice, agent, "anything")
    assert (status, body["error"]["code"]) == (422, "model_request_rejected")


def test_model_timeout__504(stack_state: stack.State, chat_function: ChatFunction, llm: FakeLLM,
                            db: psycopg.Connection[Any], alice: uuid.UUID, agent: uuid.UUID,
                            tmp_path: Path) -> None:
    fn = start_chat_function(stack_state, chat_function.db_url, llm, tmp_path / "chat-timeout.log",
                             extra_env={"OPENAI_TIMEOUT_MS": "400"})
    try:
        started = time.monotonic()
        status, body = ask(fn, alice, agent, "[[timeout]]")
        assert (status, body["error"]["code"], body["error"]["retryable"]) == (504, "model_timeout", True)
        assert time.monotonic() - started < 5
        status, body = ask(fn, alice, agent, "[[sleep:100]] quick enough")
        assert status == 200, body
    finally:
        fn.stop()
    assert assistant_count(db, alice) == 1


def test_model_unreachable__502(stack_state: stack.State, chat_function: ChatFunction, llm: FakeLLM,
                                alice: uuid.UUID, agent: uuid.UUID, tmp_path: Path) -> None:
    nowhere = FakeLLM(base_url=f"http://127.0.0.1:{stack.free_port(0)}/v1", proc=llm.proc)
    fn = start_chat_function(stack_state, chat_function.db_url, nowhere, tmp_path / "chat-unreachable.log")
    try:
        status, body = ask(fn, alice, agent, "hello?")
        assert (status, body["error"]["code"], body["error"]["retryable"]) == (502, "model_unreachable", True)
    finally:
        fn.stop()


def test_rate_limit__429_with_retry_after(stack_state: stack.State, chat_function: ChatFunction, llm: FakeLLM,
                                          db: psycopg.Connection[Any], tmp_path: Path) -> None:
    fn = start_chat_function(stack_state, chat_function.db_url, llm, tmp_path / "chat-rate.log",
                             extra_env={"CHAT_RATE_LIMIT": "3", "CHAT_RATE_WINDOW_SECONDS": "60"})
    try:
        user = create_user(db)
        user_agent = create_agent(db, user)
        for i in range(3):
            assert ask(fn, user, user_agent, f"call {i}")[0] == 200
        r = fn.post({"agent_id": str(user_agent), "message": "one too many"}, fn.user_headers(user))
        assert r.status_code == 429
        assert r.json()["error"]["code"] == "rate_limited" and r.json()["error"]["retryable"] is True
        assert 1 <= int(r.headers["retry-after"]) <= 60
        refused = db.execute("select count(*) as n from public.chat_messages_v2 where content = 'one too many'")
        assert refused.fetchone() == {"n": 0}, "a refused call writes nothing"
        # the limit is per user
        other = create_user(db)
        assert ask(fn, other, create_agent(db, other), "my own budget")[0] == 200
    finally:
        fn.stop()
