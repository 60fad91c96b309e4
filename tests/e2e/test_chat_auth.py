"""Who may call the chat function, and as whom: every refusal by its code.

Each test sends a request that only its guard stops; without that guard the
request would get a different status or code (or succeed), so the test
fails when the guard is removed.
"""

from __future__ import annotations

import re
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import jwt
import psycopg
import pytest

from tests.conftest import create_agent, create_user
from tests.e2e.conftest import ChatFunction, FakeLLM, scheduled_turn, start_chat_function
from worker import stack

pytestmark = pytest.mark.e2e


def error_of(r: httpx.Response) -> tuple[int, str]:
    body = r.json()
    assert set(body["error"]) >= {"code", "message", "retryable"}, body
    # never a stack trace: no frames, no source paths
    assert not re.search(r"\n\s*at |file://|\.ts:\d+", body["error"]["message"]), body
    return r.status_code, body["error"]["code"]


def body_for(agent: uuid.UUID) -> dict[str, Any]:
    return {"agent_id": str(agent), "message": "hello"}


def count_messages(db: psycopg.Connection[Any]) -> int:
    row = db.execute("select count(*) as n from public.chat_messages_v2").fetchone()
    assert row is not None
    return int(row["n"])


# --- user tokens -----------------------------------------------------------------------------


def test_refuses__missing_token(chat_function: ChatFunction, agent: uuid.UUID) -> None:
    r = chat_function.post(body_for(agent), {"apikey": stack.api_keys(chat_function.state)["anon_key"]})
    assert error_of(r) == (401, "missing_token")
    assert r.json()["error"]["retryable"] is False


def test_refuses__invalid_tokens(chat_function: ChatFunction, alice: uuid.UUID, agent: uuid.UUID) -> None:
    now = int(time.time())
    claims = {"sub": str(alice), "role": "authenticated", "aud": "authenticated", "exp": now + 600}
    forged = jwt.encode(claims, "not-the-project-secret-but-long-enough-1234", algorithm="HS256")
    anon = stack.api_keys(chat_function.state)["anon_key"]
    wrong_aud = stack.sign_token(chat_function.state, {**claims, "aud": "somebody-else"})
    for token in ("garbage", "a.b.c", forged, anon, wrong_aud):
        r = chat_function.post(body_for(agent), {"authorization": f"Bearer {token}"})
        assert error_of(r) == (401, "invalid_token"), token


def test_refuses__expired_token(chat_function: ChatFunction, alice: uuid.UUID, agent: uuid.UUID) -> None:
    token = chat_function.user_token(alice, ttl_s=-30)
    r = chat_function.post(body_for(agent), {"authorization": f"Bearer {token}"})
    assert error_of(r) == (401, "token_expired")


# --- service credentials ---------------------------------------------------------------------


def test_refuses__x_service_without_a_valid_service_credential(chat_function: ChatFunction,
                                                              agent: uuid.UUID) -> None:
    for headers in ({"x-service": "task-executor"},
                    {"x-service": "task-executor", "apikey": "sb_secret_wrong"},
                    {"x-service": "task-executor", "apikey": chat_function.secret_key + "x"},
                    {"x-service": "task-executor",
                     "authorization": f"Bearer {stack.api_keys(chat_function.state)['anon_key']}"}):
        r = chat_function.post({"context": {}}, headers)
        assert error_of(r) == (401, "invalid_service_credential"), headers


def test_refuses__user_token_with_x_service(chat_function: ChatFunction, alice: uuid.UUID,
                                            agent: uuid.UUID) -> None:
    headers = {**chat_function.user_headers(alice), "x-service": "task-executor"}
    assert error_of(chat_function.post(body_for(agent), headers)) == (403, "service_header_with_user_token")
    # not even next to the real secret key: the request must not be ambiguous
    headers["apikey"] = chat_function.secret_key
    assert error_of(chat_function.post(body_for(agent), headers)) == (403, "service_header_with_user_token")


def test_refuses__service_not_on_the_allow_list(chat_function: ChatFunction, alice: uuid.UUID,
                                                agent: uuid.UUID, db: psycopg.Connection[Any]) -> None:
    context = scheduled_turn(db, alice, agent, "allow-list check")
    headers = {"apikey": chat_function.secret_key, "x-service": "billing-export"}
    assert error_of(chat_function.post({"context": context}, headers)) == (403, "service_not_allowed")


def test_refuses__service_credential_without_x_service(chat_function: ChatFunction, alice: uuid.UUID,
                                                       agent: uuid.UUID, db: psycopg.Connection[Any]) -> None:
    context = scheduled_turn(db, alice, agent, "no service header")
    r = chat_function.post({"context": context}, {"apikey": chat_function.secret_key})
    assert error_of(r) == (403, "service_header_required")
    legacy = {"authorization": f"Bearer {chat_function.service_role_key}"}
    assert error_of(chat_function.post({"context": context}, legacy)) == (403, "service_header_required")


def test_act_as__legacy_service_role_key_is_a_service_credential(chat_function: ChatFunction, llm: FakeLLM,
                                                                 alice: uuid.UUID, agent: uuid.UUID,
                                                                 db: psycopg.Connection[Any]) -> None:
    context = scheduled_turn(db, alice, agent, "legacy key run")
    headers = {"authorization": f"Bearer {chat_function.service_role_key}", "x-service": "task-executor"}
    r = chat_function.post({"context": context}, headers)
    assert r.status_code == 200, r.text
    assert r.json()["message"]["content"] == "Echo: legacy key run"


# --- act-as context --------------------------------------------------------------------------


def test_act_as__refuses_a_user_who_does_not_own_the_agent(chat_function: ChatFunction, llm: FakeLLM,
                                                           alice: uuid.UUID, agent: uuid.UUID,
                                                           db: psycopg.Connection[Any]) -> None:
    mallory = create_user(db)
    context = scheduled_turn(db, alice, agent, "alice's scheduled prompt")
    before = count_messages(db)
    r = chat_function.post({"context": {**context, "user_id": str(mallory)}}, chat_function.service_headers())
    assert error_of(r) == (403, "context_mismatch")
    assert count_messages(db) == before and llm.requests() == []


def test_act_as__refuses_a_conversation_of_another_agent(chat_function: ChatFunction, llm: FakeLLM,
                                                         alice: uuid.UUID, agent: uuid.UUID,
                                                         db: psycopg.Connection[Any]) -> None:
    other = create_agent(db, alice, name="Other")
    context = scheduled_turn(db, alice, agent, "wrong agent")
    r = chat_function.post({"context": {**context, "agent_id": str(other)}}, chat_function.service_headers())
    assert error_of(r) == (403, "context_mismatch")
    assert llm.requests() == []


def test_act_as__unknown_agent_and_conversation_are_404(chat_function: ChatFunction, alice: uuid.UUID,
                                                        agent: uuid.UUID, db: psycopg.Connection[Any]) -> None:
    context = scheduled_turn(db, alice, agent, "not found checks")
    r = chat_function.post({"context": {**context, "agent_id": str(uuid.uuid4())}}, chat_function.service_headers())
    assert error_of(r) == (404, "agent_not_found")
    r = chat_function.post({"context": {**context, "conversation_id": str(uuid.uuid4())}},
                           chat_function.service_headers())
    assert error_of(r) == (404, "conversation_not_found")


def test_act_as__user_message_must_be_the_executions(chat_function: ChatFunction, llm: FakeLLM,
                                                     alice: uuid.UUID, agent: uuid.UUID,
                                                     db: psycopg.Connection[Any]) -> None:
    context = scheduled_turn(db, alice, agent, "the scheduled one")
    r = chat_function.post({"context": {**context, "user_message_id": str(uuid.uuid4())}},
                           chat_function.service_headers())
    assert error_of(r) == (404, "message_not_found")
    # a message the user typed in the same conversation is not this execution's message
    typed = db.execute(
        "insert into public.chat_messages_v2 (conversation_id, user_id, role, content)"
        " values (%s, %s, 'user', 'typed by hand') returning id", (context["conversation_id"], alice)).fetchone()
    assert typed is not None
    r = chat_function.post({"context": {**context, "user_message_id": str(typed["id"])}},
                           chat_function.service_headers())
    assert error_of(r) == (403, "context_mismatch")
    # another execution's message
    other = scheduled_turn(db, alice, agent, "another run", conversation_id=context["conversation_id"])
    r = chat_function.post({"context": {**context, "user_message_id": other["user_message_id"]}},
                           chat_function.service_headers())
    assert error_of(r) == (403, "context_mismatch")
    assert llm.requests() == []


def test_act_as__body_needs_a_context(chat_function: ChatFunction, agent: uuid.UUID) -> None:
    r = chat_function.post(body_for(agent), chat_function.service_headers())
    assert error_of(r) == (400, "invalid_body") and r.json()["error"]["field"] == "context"


# --- isolation between users ---------------------------------------------------------------


def test_isolation__user_b_cannot_post_into_or_read_user_a(chat_function: ChatFunction, llm: FakeLLM,
                                                           alice: uuid.UUID, agent: uuid.UUID,
                                                           db: psycopg.Connection[Any]) -> None:
    secret = "my secret plan " + uuid.uuid4().hex
    first = chat_function.post({"agent_id": str(agent), "message": secret}, chat_function.user_headers(alice))
    cid = first.json()["conversation_id"]
    bob = create_user(db)
    bobs_agent = create_agent(db, bob)
    llm.reset()
    before = count_messages(db)
    # Bob names Alice's conversation (with his own agent or with hers)
    r = chat_function.post({"agent_id": str(bobs_agent), "conversation_id": cid, "message": "let me in"},
                           chat_function.user_headers(bob))
    assert error_of(r) == (404, "conversation_not_found")
    r = chat_function.post({"agent_id": str(agent), "conversation_id": cid, "message": "let me in"},
                           chat_function.user_headers(bob))
    assert error_of(r) == (404, "agent_not_found")
    # ... or starts a conversation with Alice's agent
    r = chat_function.post({"agent_id": str(agent), "message": "hi"}, chat_function.user_headers(bob))
    assert error_of(r) == (404, "agent_not_found")
    assert count_messages(db) == before
    assert llm.requests() == [], "nothing of Alice's reached the model on Bob's behalf"
    assert secret not in r.text


# --- request shape -------------------------------------------------------------------------


def test_refuses__invalid_json(chat_function: ChatFunction, alice: uuid.UUID) -> None:
    r = httpx.post(chat_function.url, content=b'{"agent_id": ', headers=chat_function.user_headers(alice))
    assert error_of(r) == (400, "invalid_json")


def test_refuses__invalid_body_naming_the_field(chat_function: ChatFunction, alice: uuid.UUID,
                                                agent: uuid.UUID) -> None:
    cases = [({"message": "hi"}, "agent_id"), ({"agent_id": "nope", "message": "hi"}, "agent_id"),
             ({"agent_id": str(agent)}, "message"), ({"agent_id": str(agent), "message": 42}, "message"),
             ({"agent_id": str(agent), "message": "hi", "conversation_id": "x"}, "conversation_id")]
    for body, field in cases:
        r = chat_function.post(body, chat_function.user_headers(alice))
        assert error_of(r) == (400, "invalid_body"), body
        assert r.json()["error"]["field"] == field


def test_refuses__message_too_long(chat_function: ChatFunction, llm: FakeLLM, alice: uuid.UUID,
                                   agent: uuid.UUID, db: psycopg.Connection[Any]) -> None:
    before = count_messages(db)
    r = chat_function.post({"agent_id": str(agent), "message": "a" * 10_001}, chat_function.user_headers(alice))
    assert error_of(r) == (413, "message_too_long")
    ok = chat_function.post({"agent_id": str(agent), "message": "a" * 10_000}, chat_function.user_headers(alice))
    assert ok.status_code == 200
    assert count_messages(db) == before + 2


def test_refuses__wrong_method(chat_function: ChatFunction) -> None:
    r = httpx.get(chat_function.url)
    assert error_of(r) == (405, "method_not_allowed")
    assert "POST" in r.headers["allow"]


def test_health(chat_function: ChatFunction) -> None:
    r = httpx.get(chat_function.url.replace("/functions/v1/chat", "/health"))
    assert r.status_code == 200 and r.json() == {"ok": True}


def test_internal_error__is_opaque(stack_state: stack.State, fake_llm: FakeLLM, tmp_path: Path,
                                   alice: uuid.UUID, agent: uuid.UUID) -> None:
    # a database that cannot be reached: every turn fails inside the function
    dead_db = f"postgresql://postgres:x@127.0.0.1:{stack.free_port(0)}/nowhere"
    fn = start_chat_function(stack_state, dead_db, fake_llm, tmp_path / "chat-dead-db.log")
    try:
        r = fn.post(body_for(agent), fn.user_headers(alice))
        assert error_of(r) == (500, "internal_error")
        assert "ECONNREFUSED" not in r.text and "postgres" not in r.text.lower()
    finally:
        fn.stop()
