"""The chat function end to end: user turns, history, tools and streaming.

Deno serves supabase/functions/chat against this module's database; the
model is the fake OpenAI-compatible server (tests/fakes), whose recorded
requests show exactly what the function sent.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import psycopg
import pytest

from tests.conftest import create_agent, create_user
from tests.e2e.conftest import ChatFunction, FakeLLM, sse_events

pytestmark = pytest.mark.e2e


@pytest.fixture
def agent(db: psycopg.Connection[Any], alice: uuid.UUID) -> uuid.UUID:
    return create_agent(db, alice, system_prompt="You are a concise planning assistant.")


def turn(fn: ChatFunction, user: uuid.UUID, agent: uuid.UUID, message: str,
         conversation_id: str | None = None, **extra: Any) -> httpx.Response:
    body: dict[str, Any] = {"agent_id": str(agent), "message": message, **extra}
    if conversation_id:
        body["conversation_id"] = conversation_id
    return fn.post(body, fn.user_headers(user))


def messages(db: psycopg.Connection[Any], conversation_id: str) -> list[dict[str, Any]]:
    return db.execute("select * from public.chat_messages_v2 where conversation_id = %s"
                      " order by created_at, id", (conversation_id,)).fetchall()


def test_user_turn__persists_both_messages_and_answers(chat_function: ChatFunction, llm: FakeLLM,
                                                        db: psycopg.Connection[Any], alice: uuid.UUID,
                                                        agent: uuid.UUID) -> None:
    r = turn(chat_function, alice, agent, "Hello there")
    assert r.status_code == 200, r.text
    data = r.json()
    assert data["replayed"] is False and data["needs_input"] is None
    assert data["message"]["role"] == "assistant"
    assert data["message"]["content"] == "Echo: Hello there"
    assert data["message"]["metadata"]["finish_reason"] == "stop"
    assert data["usage"]["total_tokens"] > 0
    rows = messages(db, data["conversation_id"])
    assert [(m["role"], m["content"]) for m in rows] == [("user", "Hello there"),
                                                         ("assistant", "Echo: Hello there")]
    assert str(rows[0]["id"]) == data["user_message_id"]
    assert str(rows[1]["id"]) == data["message"]["id"]
    assert all(m["user_id"] == alice and m["execution_id"] is None for m in rows)
    conv = db.execute("select * from public.conversation_sessions where id = %s",
                      (data["conversation_id"],)).fetchone()
    assert conv is not None
    assert conv["user_id"] == alice and conv["agent_id"] == agent
    assert conv["title"] == "Hello there"  # set by the trigger from the first user message
    assert conv["message_count"] == 2


def test_user_turn__sends_system_prompt_and_history_oldest_first(
        chat_function: ChatFunction, llm: FakeLLM, alice: uuid.UUID, agent: uuid.UUID) -> None:
    first = turn(chat_function, alice, agent, "My name is Ada.").json()
    cid = first["conversation_id"]
    assert turn(chat_function, alice, agent, "I like tea.", cid).status_code == 200
    assert turn(chat_function, alice, agent, "What do I like?", cid).status_code == 200
    sent = llm.requests()[-1]["messages"]
    # the agent's prompt, then the time (no time zone sent: UTC, and the model is told so)
    agent_prompt, now = sent[0]["content"].split("\n\n")
    assert (sent[0]["role"], agent_prompt) == ("system", "You are a concise planning assistant.")
    assert now.startswith("Current date and time: ") and "The user's time zone is not known" in now
    assert [(m["role"], m["content"]) for m in sent[1:]] == [
        ("user", "My name is Ada."), ("assistant", "Echo: My name is Ada."),
        ("user", "I like tea."), ("assistant", "Echo: I like tea."),
        ("user", "What do I like?"),
    ]
    assert {t["function"]["name"] for t in llm.requests()[-1]["tools"]} == {
        "create_schedule", "list_schedules", "update_schedule", "pause_schedule", "resume_schedule",
        "delete_schedule", "run_schedule_now"}  # request_user_input is for scheduled runs only


def test_user_turn__history_window_follows_agent_settings(chat_function: ChatFunction, llm: FakeLLM,
                                                          db: psycopg.Connection[Any],
                                                          alice: uuid.UUID) -> None:
    short = create_agent(db, alice, name="Short memory", system_prompt="",
                         settings={"history_messages": 3, "temperature": 0.3, "max_tokens": 77})
    cid = turn(chat_function, alice, short, "one").json()["conversation_id"]
    turn(chat_function, alice, short, "two", cid)
    turn(chat_function, alice, short, "three", cid)
    request = llm.requests()[-1]
    # an agent without a prompt of its own still gets the time
    assert request["messages"][0]["role"] == "system"
    assert request["messages"][0]["content"].startswith("Current date and time: ")
    assert [m["content"] for m in request["messages"][1:]] == ["two", "Echo: two", "three"]
    assert request["temperature"] == 0.3 and request["max_tokens"] == 77


def test_user_turn__the_prompt_tells_the_time_in_the_users_zone(chat_function: ChatFunction, llm: FakeLLM,
                                                                alice: uuid.UUID, agent: uuid.UUID) -> None:
    before = datetime.now(UTC)
    r = turn(chat_function, alice, agent, "Remind me tomorrow at 9", timezone="Asia/Tokyo")
    after = datetime.now(UTC)
    assert r.status_code == 200, r.text
    now = llm.requests()[-1]["messages"][0]["content"].split("\n\n")[-1]
    # the wall clock in Tokyo (UTC+09:00, no daylight saving) and in UTC, to the minute
    tokyo = ZoneInfo("Asia/Tokyo")
    shown = {f"{t.astimezone(tokyo):%A}, {t.astimezone(tokyo).day} {t.astimezone(tokyo):%B %Y, %H:%M}"
             for t in (before, after)}
    assert any(f"Current date and time: {s} in the user's time zone, Asia/Tokyo (UTC+09:00); " in now
               for s in shown), now
    assert any(f"{t:%Y-%m-%dT%H:%M}Z in UTC" in now for t in (before, after)), now
    assert 'timezone "Asia/Tokyo"' in now


def test_user_turn__a_bad_time_zone_is_refused_and_nothing_is_stored(chat_function: ChatFunction, llm: FakeLLM,
                                                                     db: psycopg.Connection[Any], alice: uuid.UUID,
                                                                     agent: uuid.UUID) -> None:
    for bad in ("Mars/Olympus_Mons", 9, "Europe/Berlin'; select 1"):
        r = turn(chat_function, alice, agent, "Remind me at 9", timezone=bad)
        assert r.status_code == 400, r.text
        assert r.json()["error"]["code"] == "invalid_body" and r.json()["error"]["field"] == "timezone"
    assert llm.requests() == []
    stored = db.execute("select count(*) as n from public.chat_messages_v2 where user_id = %s", (alice,)).fetchone()
    assert stored is not None and stored["n"] == 0


def test_user_turn__history_token_budget_drops_the_oldest(chat_function: ChatFunction, llm: FakeLLM,
                                                          db: psycopg.Connection[Any],
                                                          alice: uuid.UUID) -> None:
    frugal = create_agent(db, alice, name="Frugal", settings={"history_token_budget": 60})
    cid = turn(chat_function, alice, frugal, "x" * 400).json()["conversation_id"]
    turn(chat_function, alice, frugal, "short question", cid)
    sent = [m["content"] for m in llm.requests()[-1]["messages"] if m["role"] != "system"]
    assert sent == ["short question"]


def test_tool_call__creates_a_real_schedule(chat_function: ChatFunction, llm: FakeLLM,
                                            db: psycopg.Connection[Any], alice: uuid.UUID,
                                            agent: uuid.UUID) -> None:
    args = {"name": "Weekly goals", "prompt": "Review my goals", "cron_expression": "0 9 * * 1",
            "timezone": "Europe/Berlin"}
    message = f"Remind me every Monday at 9 to review my goals [[tool:create_schedule:{json.dumps(args)}]]"
    r = turn(chat_function, alice, agent, message)
    assert r.status_code == 200, r.text
    data = r.json()
    [call] = data["message"]["tool_calls"]
    assert call["name"] == "create_schedule" and call["status"] == "ok", call
    assert call["arguments"] == args and call["duration_ms"] >= 0
    task = db.execute("select * from public.agent_tasks where id = %s",
                      (call["result"]["created"]["id"],)).fetchone()
    assert task is not None
    assert (task["user_id"], task["agent_id"], str(task["conversation_id"])) == (
        alice, agent, data["conversation_id"])
    assert (task["schedule_type"], task["cron_expression"], task["timezone"], task["prompt_template"]) == (
        "cron", "0 9 * * 1", "Europe/Berlin", "Review my goals")
    assert task["conversation_mode"] == "reuse" and task["status"] == "active"
    # the model saw the tool result and answered after it
    second = llm.requests()[-1]["messages"]
    assert second[-1]["role"] == "tool" and second[-2]["tool_calls"][0]["function"]["name"] == "create_schedule"
    assert data["message"]["content"].startswith("Done: ")
    stored = messages(db, data["conversation_id"])
    assert len(stored) == 2 and stored[1]["tool_calls"][0]["status"] == "ok"


def test_tool_call__invalid_arguments_come_back_as_a_tool_error(chat_function: ChatFunction, llm: FakeLLM,
                                                               db: psycopg.Connection[Any],
                                                               alice: uuid.UUID, agent: uuid.UUID) -> None:
    before = db.execute("select count(*) as n from public.agent_tasks").fetchone()
    missing_prompt = '[[tool:create_schedule:{"name": "No prompt", "cron_expression": "0 9 * * 1"}]]'
    r = turn(chat_function, alice, agent, missing_prompt)
    assert r.status_code == 200, r.text
    [call] = r.json()["message"]["tool_calls"]
    assert call["status"] == "error" and "arguments.prompt is required" in call["result"]["error"]
    assert r.json()["message"]["content"].startswith('Done: {"error"')
    after = db.execute("select count(*) as n from public.agent_tasks").fetchone()
    assert before == after


def test_tool_call__database_validation_errors_reach_the_model(chat_function: ChatFunction, llm: FakeLLM,
                                                              db: psycopg.Connection[Any],
                                                              alice: uuid.UUID, agent: uuid.UUID) -> None:
    bad_cron = '[[tool:create_schedule:{"name": "Bad", "prompt": "p", "cron_expression": "61 9 * * 1"}]]'
    r = turn(chat_function, alice, agent, bad_cron)
    assert r.status_code == 200, r.text
    [call] = r.json()["message"]["tool_calls"]
    assert call["status"] == "error" and "invalid cron expression" in call["result"]["error"]
    bad_zone = ('[[tool:create_schedule:{"name": "Bad", "prompt": "p", "cron_expression": "0 9 * * *",'
                ' "timezone": "Mars/Olympus"}]]')
    [call] = turn(chat_function, alice, agent, bad_zone).json()["message"]["tool_calls"]
    assert call["status"] == "error" and "unknown time zone" in call["result"]["error"]
    bad_var = ('[[tool:create_schedule:{"name": "Bad", "prompt": "Hi {{NICKNAME}}",'
               ' "interval_seconds": 3600}]]')
    [call] = turn(chat_function, alice, agent, bad_var).json()["message"]["tool_calls"]
    assert call["status"] == "error" and "unknown template variable" in call["result"]["error"]
    # the model read the error: it is in the tool message of its second round
    assert "unknown template variable" in llm.requests()[-1]["messages"][-1]["content"]
    assert db.execute("select count(*) as n from public.agent_tasks where name = 'Bad'").fetchone() == {"n": 0}


def test_tools__list_pause_resume_run_update_delete_as_the_user(chat_function: ChatFunction, llm: FakeLLM,
                                                                db: psycopg.Connection[Any],
                                                                alice: uuid.UUID, agent: uuid.UUID) -> None:
    created = turn(chat_function, alice, agent,
                   '[[tool:create_schedule:{"name": "Hourly", "prompt": "ping", "interval_seconds": 3600}]]')
    cid = created.json()["conversation_id"]
    task_id = created.json()["message"]["tool_calls"][0]["result"]["created"]["id"]

    def tool(name: str, args: dict[str, Any]) -> dict[str, Any]:
        r = turn(chat_function, alice, agent, f"[[tool:{name}:{json.dumps(args)}]]", cid)
        assert r.status_code == 200, r.text
        result: dict[str, Any] = r.json()["message"]["tool_calls"][0]
        return result

    listed = tool("list_schedules", {})
    assert [t["id"] for t in listed["result"]["schedules"]] == [task_id]
    assert tool("pause_schedule", {"schedule_id": task_id})["result"]["paused"]["status"] == "paused"
    assert tool("resume_schedule", {"schedule_id": task_id})["result"]["resumed"]["status"] == "active"
    updated = tool("update_schedule", {"schedule_id": task_id, "cron_expression": "30 8 * * 1-5",
                                       "timezone": "America/New_York"})["result"]["updated"]
    assert (updated["schedule_type"], updated["cron_expression"], updated["interval_seconds"]) == (
        "cron", "30 8 * * 1-5", None)
    queued = tool("run_schedule_now", {"schedule_id": task_id})["result"]["queued"]
    execution = db.execute("select * from public.agent_task_executions where id = %s",
                           (queued["execution_id"],)).fetchone()
    assert execution is not None and execution["trigger_type"] == "manual" and execution["user_id"] == alice
    assert tool("delete_schedule", {"schedule_id": task_id})["result"]["deleted"]["id"] == task_id
    assert db.execute("select count(*) as n from public.agent_tasks where id = %s", (task_id,)).fetchone() == {"n": 0}


def test_tools__cannot_touch_another_users_schedule(chat_function: ChatFunction, llm: FakeLLM,
                                                    db: psycopg.Connection[Any], alice: uuid.UUID,
                                                    agent: uuid.UUID) -> None:
    bob = create_user(db)
    bobs_agent = create_agent(db, bob)
    created = turn(chat_function, bob, bobs_agent,
                   '[[tool:create_schedule:{"name": "Bob task", "prompt": "p", "interval_seconds": 60}]]')
    bobs_task = created.json()["message"]["tool_calls"][0]["result"]["created"]["id"]
    for name in ("pause_schedule", "delete_schedule", "run_schedule_now"):
        r = turn(chat_function, alice, agent, f'[[tool:{name}:{{"schedule_id": "{bobs_task}"}}]]')
        [call] = r.json()["message"]["tool_calls"]
        assert call["status"] == "error" and "not found" in call["result"]["error"], call
    listed = turn(chat_function, alice, agent, '[[tool:list_schedules:{"all_agents": true}]]')
    assert bobs_task not in json.dumps(listed.json()["message"]["tool_calls"])
    task = db.execute("select status from public.agent_tasks where id = %s", (bobs_task,)).fetchone()
    assert task == {"status": "active"}


def test_user_turn__request_user_input_is_not_offered(chat_function: ChatFunction, llm: FakeLLM,
                                                     alice: uuid.UUID, agent: uuid.UUID) -> None:
    r = turn(chat_function, alice, agent, "[[ask:What should I do?]]")
    assert r.status_code == 200, r.text
    data = r.json()
    assert data["needs_input"] is None
    assert data["message"]["tool_calls"][0]["result"] == {"error": "unknown tool request_user_input"}


def test_stream__deltas_then_done_and_one_persisted_reply(chat_function: ChatFunction, llm: FakeLLM,
                                                          db: psycopg.Connection[Any], alice: uuid.UUID,
                                                          agent: uuid.UUID) -> None:
    r = turn(chat_function, alice, agent, "Stream this answer to me please", stream=True)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/event-stream")
    events = sse_events(r.text)
    names = [name for name, _ in events]
    assert names[-1] == "done" and names.count("done") == 1 and names.count("delta") >= 2
    streamed = "".join(data["content"] for name, data in events if name == "delta")
    done = events[-1][1]
    assert streamed == done["message"]["content"] == "Echo: Stream this answer to me please"
    assert llm.requests()[-1]["stream"] is True
    rows = messages(db, done["conversation_id"])
    assert [m["role"] for m in rows] == ["user", "assistant"]
    assert rows[1]["content"] == streamed and str(rows[1]["id"]) == done["message"]["id"]


def test_stream__accept_header_selects_sse_and_tool_rounds_stream(chat_function: ChatFunction, llm: FakeLLM,
                                                                  db: psycopg.Connection[Any],
                                                                  alice: uuid.UUID, agent: uuid.UUID) -> None:
    headers = {**chat_function.user_headers(alice), "accept": "text/event-stream"}
    body = {"agent_id": str(agent),
            "message": '[[tool:create_schedule:{"name": "Daily", "prompt": "p", "cron_expression": "0 7 * * *"}]]'}
    r = chat_function.post(body, headers)
    assert r.status_code == 200, r.text
    events = sse_events(r.text)
    tool_events = [data for name, data in events if name == "tool"]
    assert [t["name"] for t in tool_events] == ["create_schedule"] and tool_events[0]["status"] == "ok"
    done = events[-1][1]
    assert "".join(d["content"] for n, d in events if n == "delta") == done["message"]["content"]
    assert len(messages(db, done["conversation_id"])) == 2


def test_stream__failure_before_the_first_event_keeps_its_status(chat_function: ChatFunction, llm: FakeLLM,
                                                                 alice: uuid.UUID, agent: uuid.UUID) -> None:
    r = turn(chat_function, alice, agent, "[[fail:503]]", stream=True)
    assert r.status_code == 502
    assert r.json()["error"]["code"] == "model_unavailable"


def test_conversation__continues_in_the_given_conversation(chat_function: ChatFunction, llm: FakeLLM,
                                                           db: psycopg.Connection[Any], alice: uuid.UUID,
                                                           agent: uuid.UUID) -> None:
    cid = turn(chat_function, alice, agent, "first").json()["conversation_id"]
    again = turn(chat_function, alice, agent, "second", cid).json()
    assert again["conversation_id"] == cid
    assert [m["content"] for m in messages(db, cid)] == ["first", "Echo: first", "second", "Echo: second"]
    other_agent = create_agent(db, alice, name="Other")
    r = turn(chat_function, alice, other_agent, "wrong agent", cid)
    assert r.status_code == 400 and r.json()["error"]["field"] == "conversation_id"
    assert len(messages(db, cid)) == 4


@pytest.mark.parametrize("hostile", [
    "'; drop table public.agents; --",
    "$$ dollar $$ $q0a1b2c3d4e5f$ ); delete from public.chat_messages_v2; --",
    "\\'; select pg_sleep(5); --",
    "multi\nline; commit; drop schema public cascade;",
])
def test_user_turn__hostile_text_is_stored_verbatim_and_runs_nothing(chat_function: ChatFunction, llm: FakeLLM,
                                                                       db: psycopg.Connection[Any],
                                                                       alice: uuid.UUID, agent: uuid.UUID,
                                                                       hostile: str) -> None:
    before = db.execute("select count(*) as n from public.chat_messages_v2").fetchone()
    r = turn(chat_function, alice, agent, hostile)
    assert r.status_code == 200, r.text
    conversation_id = r.json()["conversation_id"]
    stored = messages(db, conversation_id)
    assert [m["content"] for m in stored if m["role"] == "user"] == [hostile]
    assert stored[0]["content"] == hostile
    after = db.execute("select count(*) as n from public.chat_messages_v2").fetchone()
    assert before is not None and after is not None and after["n"] == before["n"] + 2
    assert db.execute("select count(*) as n from public.agents where id = %s", (agent,)).fetchone() == {"n": 1}
