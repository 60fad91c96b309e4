"""Scheduled runs: the worker's act-as call, idempotency and questions to the user.

The scheduled user message is written exactly as the worker writes it
(scheduler.enqueue_now -> claim_executions -> start_execution, as the
superuser); the function is then called with the service credential,
X-Service and the context.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg
import pytest

from tests.conftest import create_agent, create_user
from tests.e2e.conftest import ChatFunction, FakeLLM, scheduled_turn, sse_events

pytestmark = pytest.mark.e2e


@pytest.fixture
def agent(db: psycopg.Connection[Any], alice: uuid.UUID) -> uuid.UUID:
    return create_agent(db, alice, system_prompt="You check in on the user's goals.")


def assistant_replies(db: psycopg.Connection[Any], execution_id: str) -> list[dict[str, Any]]:
    return db.execute("select * from public.chat_messages_v2 where execution_id = %s and role = 'assistant'",
                      (execution_id,)).fetchall()


def test_act_as__persists_the_reply_with_the_execution_id(chat_function: ChatFunction, llm: FakeLLM,
                                                          db: psycopg.Connection[Any], alice: uuid.UUID,
                                                          agent: uuid.UUID) -> None:
    # the user chatted before; the scheduled message is the newest one the model sees
    earlier = chat_function.post({"agent_id": str(agent), "message": "I want to run a marathon"},
                                 chat_function.user_headers(alice)).json()
    context = scheduled_turn(db, alice, agent, "How is the training going?",
                             conversation_id=earlier["conversation_id"])
    llm.reset()
    r = chat_function.post({"context": context}, chat_function.service_headers())
    assert r.status_code == 200, r.text
    data = r.json()
    assert data["conversation_id"] == context["conversation_id"]
    assert data["user_message_id"] == context["user_message_id"]
    assert data["replayed"] is False and data["needs_input"] is None
    assert data["message"]["content"] == "Echo: How is the training going?"
    [reply] = assistant_replies(db, context["execution_id"])
    assert str(reply["id"]) == data["message"]["id"]
    assert reply["user_id"] == alice and str(reply["conversation_id"]) == context["conversation_id"]
    assert reply["metadata"]["usage"]["total_tokens"] > 0 and reply["metadata"]["finish_reason"] == "stop"
    [request] = llm.requests()
    assert [(m["role"], m["content"]) for m in request["messages"][1:]] == [
        ("user", "I want to run a marathon"), ("assistant", "Echo: I want to run a marathon"),
        ("user", "How is the training going?"),
    ]
    # the agent's system prompt, then what the run is: the task's name, run number, schedule and state
    system = request["messages"][0]
    assert system["role"] == "system"
    agent_prompt, task_section = system["content"].split("\n\n", 1)
    assert agent_prompt == "You check in on the user's goals."
    assert task_section.startswith('You are running the scheduled task "Scheduled check-in", '
                                   "which runs only when started by hand.\nThis is run 1 of the task.")
    assert "The task's state (kept from run to run): {}" in task_section
    # and last, the time in the task's zone (a manual task's default, UTC)
    assert task_section.split("\n\n")[-1].startswith("Current date and time: ")
    assert task_section.endswith("The task's time zone is UTC.")
    # scheduled runs may ask the user a question and report on the task
    assert {"request_user_input", "report_task_status"} <= {t["function"]["name"] for t in request["tools"]}


def test_act_as__history_stops_at_the_scheduled_message(chat_function: ChatFunction, llm: FakeLLM,
                                                        db: psycopg.Connection[Any], alice: uuid.UUID,
                                                        agent: uuid.UUID) -> None:
    context = scheduled_turn(db, alice, agent, "Scheduled question")
    # the user typed something after the scheduled message was written (a retry comes later)
    chat_function.post({"agent_id": str(agent), "conversation_id": context["conversation_id"],
                        "message": "typed later"}, chat_function.user_headers(alice))
    llm.reset()
    r = chat_function.post({"context": context}, chat_function.service_headers())
    assert r.status_code == 200, r.text
    assert llm.requests()[0]["messages"][-1] == {"role": "user", "content": "Scheduled question"}
    assert "typed later" not in str(llm.requests()[0]["messages"])


def test_act_as__replay_returns_the_stored_reply_without_calling_the_model(
        chat_function: ChatFunction, llm: FakeLLM, db: psycopg.Connection[Any], alice: uuid.UUID,
        agent: uuid.UUID) -> None:
    context = scheduled_turn(db, alice, agent, "Once only " + uuid.uuid4().hex)
    first = chat_function.post({"context": context}, chat_function.service_headers())
    assert first.status_code == 200, first.text
    calls = len(llm.requests())
    assert calls == 1
    for _ in range(2):
        again = chat_function.post({"context": context}, chat_function.service_headers())
        assert again.status_code == 200, again.text
        assert again.json()["replayed"] is True
        assert again.json()["message"] == first.json()["message"]
        assert again.json()["usage"] == first.json()["usage"]
    assert len(llm.requests()) == calls, "a replay must call the model zero times"
    assert len(assistant_replies(db, context["execution_id"])) == 1
    users = db.execute("select count(*) as n from public.chat_messages_v2 where execution_id = %s and role = 'user'",
                       (context["execution_id"],)).fetchone()
    assert users == {"n": 1}


def test_act_as__caller_gone__the_reply_is_still_stored_and_the_retry_does_not_call_the_model(
        chat_function: ChatFunction, llm: FakeLLM, db: psycopg.Connection[Any], alice: uuid.UUID,
        agent: uuid.UUID) -> None:
    context = scheduled_turn(db, alice, agent, "worker dies mid-call [[sleep:1000]]")
    llm.reset()
    # the caller, a worker process, is killed (SIGKILL) while the model answers
    caller = subprocess.Popen([sys.executable, "-c", (
        "import httpx, json, sys; "
        "httpx.post(sys.argv[1], json=json.loads(sys.argv[2]), headers=json.loads(sys.argv[3]), timeout=30)"),
        chat_function.url, json.dumps({"context": context}), json.dumps(chat_function.service_headers())])
    deadline = time.monotonic() + 10
    while not llm.requests():
        assert time.monotonic() < deadline, "the model was never called"
        time.sleep(0.02)
    caller.kill()
    caller.wait(timeout=5)
    deadline = time.monotonic() + 10
    while not assistant_replies(db, context["execution_id"]):
        assert time.monotonic() < deadline, "the reply of the abandoned call was never stored"
        time.sleep(0.05)
    # the rescued attempt asks again: the stored reply, no second model call
    r = chat_function.post({"context": context}, chat_function.service_headers())
    assert r.status_code == 200, r.text
    assert r.json()["replayed"] is True
    assert r.json()["message"]["content"] == "Echo: worker dies mid-call [[sleep:1000]]"
    assert len(llm.requests()) == 1
    assert len(assistant_replies(db, context["execution_id"])) == 1


def test_act_as__run_requeued_while_the_model_answers__the_reply_is_stored_and_the_next_attempt_replays_it(
        chat_function: ChatFunction, llm: FakeLLM, db: psycopg.Connection[Any], alice: uuid.UUID,
        agent: uuid.UUID) -> None:
    # The worker's connections are terminated mid-call: a rescue (rescue_dead_workers, the
    # lease) puts the run back in the queue while its turn still waits for the model, and the
    # turn ends before the next attempt claims it. Its reply must be kept for that attempt.
    worker_id = f"e2e-requeued-{uuid.uuid4().hex[:8]}"
    context = scheduled_turn(db, alice, agent, "requeued mid-call [[sleep:1500]]", worker_id=worker_id)
    llm.reset()
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(chat_function.post, {"context": context}, chat_function.service_headers())
        deadline = time.monotonic() + 10
        while not llm.requests():
            assert time.monotonic() < deadline, "the model was never called"
            time.sleep(0.02)
        # what both rescues do to a running execution whose worker is gone
        moved = db.execute(
            "select scheduler.put_back_running(array[%s]::uuid[], 'worker_lost', now()) as n",
            (context["execution_id"],)).fetchone()
        assert moved == {"n": 1}
        status = db.execute("select status from public.agent_task_executions where id = %s",
                            (context["execution_id"],)).fetchone()
        assert status == {"status": "queued"}
        pending.result(timeout=15)
    assert len(assistant_replies(db, context["execution_id"])) == 1, "the turn's reply was thrown away"
    # the next attempt claims and starts the run again, and gets the stored reply
    claimed = db.execute("select id, attempt from scheduler.claim_executions(%s, 100)", (worker_id,)).fetchall()
    attempt = next(r["attempt"] for r in claimed if str(r["id"]) == context["execution_id"])
    assert attempt == 2
    db.execute("select scheduler.start_execution(%s, %s, %s, %s)",
               (context["execution_id"], worker_id, attempt, "requeued mid-call [[sleep:1500]]"))
    r = chat_function.post({"context": context}, chat_function.service_headers())
    assert r.status_code == 200, r.text
    assert r.json()["replayed"] is True
    assert r.json()["message"]["content"] == "Echo: requeued mid-call [[sleep:1500]]"
    assert len(llm.requests()) == 1, "the model was paid twice"
    assert len(assistant_replies(db, context["execution_id"])) == 1


def test_act_as__request_user_input_returns_needs_input(chat_function: ChatFunction, llm: FakeLLM,
                                                        db: psycopg.Connection[Any], alice: uuid.UUID,
                                                        agent: uuid.UUID) -> None:
    context = scheduled_turn(db, alice, agent, "Weekly review [[ask:Which goal should we focus on?]]")
    r = chat_function.post({"context": context}, chat_function.service_headers())
    assert r.status_code == 200, r.text
    data = r.json()
    assert data["needs_input"] == {"question": "Which goal should we focus on?"}
    assert data["message"]["content"] == "Which goal should we focus on?"
    assert data["message"]["tool_calls"][0]["name"] == "request_user_input"
    assert len(llm.requests()) == 1, "the turn ends at the question"
    [reply] = assistant_replies(db, context["execution_id"])
    assert reply["content"] == "Which goal should we focus on?"
    assert reply["metadata"]["needs_input"] == {"question": "Which goal should we focus on?"}
    replay = chat_function.post({"context": context}, chat_function.service_headers()).json()
    assert replay["replayed"] is True and replay["needs_input"] == data["needs_input"]


def test_act_as__tools_run_as_the_user(chat_function: ChatFunction, llm: FakeLLM, db: psycopg.Connection[Any],
                                       alice: uuid.UUID, agent: uuid.UUID) -> None:
    context = scheduled_turn(
        db, alice, agent,
        '[[tool:create_schedule:{"name": "Follow-up", "prompt": "Check again", "interval_seconds": 86400}]]')
    r = chat_function.post({"context": context}, chat_function.service_headers())
    assert r.status_code == 200, r.text
    created = r.json()["message"]["tool_calls"][0]["result"]["created"]
    task = db.execute("select user_id, agent_id, conversation_id from public.agent_tasks where id = %s",
                      (created["id"],)).fetchone()
    assert task == {"user_id": alice, "agent_id": agent, "conversation_id": uuid.UUID(context["conversation_id"])}


def test_act_as__streams_too(chat_function: ChatFunction, llm: FakeLLM, db: psycopg.Connection[Any],
                             alice: uuid.UUID, agent: uuid.UUID) -> None:
    context = scheduled_turn(db, alice, agent, "Streamed scheduled run")
    r = chat_function.post({"context": context, "stream": True}, chat_function.service_headers())
    assert r.status_code == 200, r.text
    events = sse_events(r.text)
    assert events[-1][0] == "done"
    assert events[-1][1]["message"]["content"] == "Echo: Streamed scheduled run"
    assert len(assistant_replies(db, context["execution_id"])) == 1


def test_act_as__not_rate_limited_like_users(chat_function: ChatFunction, llm: FakeLLM,
                                             db: psycopg.Connection[Any]) -> None:
    busy = create_user(db)
    busy_agent = create_agent(db, busy)
    # the limit is per user and counts user calls only (CHAT_RATE_LIMIT defaults to 60 a minute)
    contexts = [scheduled_turn(db, busy, busy_agent, f"run {i}") for i in range(3)]
    db.execute("insert into chat_private.rate_limits (user_id, window_started_at, hits) values (%s, now(), 1000)",
               (busy,))
    for context in contexts:
        r = chat_function.post({"context": context}, chat_function.service_headers())
        assert r.status_code == 200, r.text
    r = chat_function.post({"agent_id": str(busy_agent), "message": "me too"}, chat_function.user_headers(busy))
    assert r.status_code == 429


def test_act_as__finished_execution_is_refused_without_calling_the_model(
        chat_function: ChatFunction, llm: FakeLLM, db: psycopg.Connection[Any], alice: uuid.UUID,
        agent: uuid.UUID) -> None:
    context = scheduled_turn(db, alice, agent, "cancelled before the call")
    db.execute("select scheduler.cancel_execution(%s, 'test')", (context["execution_id"],))
    r = chat_function.post({"context": context}, chat_function.service_headers())
    assert r.status_code == 409, r.text
    assert r.json()["error"]["code"] == "execution_not_running" and r.json()["error"]["retryable"] is False
    assert llm.requests() == [] and assistant_replies(db, context["execution_id"]) == []


def test_act_as__cancelled_while_the_model_answers_stores_nothing(
        chat_function: ChatFunction, llm: FakeLLM, db: psycopg.Connection[Any], alice: uuid.UUID,
        agent: uuid.UUID) -> None:
    context = scheduled_turn(db, alice, agent, "slow one [[sleep:1500]]")
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(chat_function.post, {"context": context}, chat_function.service_headers())
        time.sleep(0.5)
        db.execute("select scheduler.cancel_execution(%s, 'cancelled by the user')", (context["execution_id"],))
        r = pending.result(timeout=10)
    assert r.status_code == 409 and r.json()["error"]["code"] == "execution_not_running"
    assert len(llm.requests()) == 1
    assert assistant_replies(db, context["execution_id"]) == []
