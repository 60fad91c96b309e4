"""No tenant can hurt another or run up the bill, through the real chat function under Deno.

Each test is one finding of the tenant attack run (docs/security.md): a
chunked body read to its end, a 500 for a user who does not exist, the
provider's error body handed to the user, a loopback-only stack, and the
operator's budgets met by the agent's own tools and by the chat turn itself.
The database side of every limit is pgTAP (supabase/tests/database/12_limits.test.sql).
"""

from __future__ import annotations

import json
import select
import socket
import uuid
from typing import Any
from urllib.parse import urlsplit

import psycopg

from tests.conftest import create_agent, create_task, create_user
from tests.e2e.conftest import ChatFunction, FakeLLM, scheduled_turn

MIB = 1024 * 1024


def _limit(db: psycopg.Connection[Any], name: str, value: Any) -> None:
    """The operator's one UPDATE (this module's database only)."""
    db.execute("update scheduler.limits set value = %s::jsonb where name = %s", (json.dumps(value), name))


def _rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))


def _turn(chat_function: ChatFunction, user: uuid.UUID, agent: uuid.UUID, message: str,
          conversation: str | None = None) -> Any:
    body: dict[str, Any] = {"agent_id": str(agent), "message": message}
    if conversation is not None:
        body["conversation_id"] = conversation
    return chat_function.post(body, chat_function.user_headers(user))


def test_body__a_chunked_body_is_refused_at_the_byte_limit_without_reading_it_all(
        chat_function: ChatFunction, alice: uuid.UUID) -> None:
    """Finding 2: a chunked 300 MiB body was read to its end before the 413 (93 -> 709 MB)."""
    url = urlsplit(chat_function.url)
    chunk = b"a" * (64 * 1024)
    sent = 0
    rss_before = _rss_bytes(chat_function.proc.pid)
    with socket.create_connection((url.hostname, url.port), timeout=30) as sock:
        sock.sendall((f"POST {url.path} HTTP/1.1\r\nHost: {url.hostname}:{url.port}\r\n"
                      f"Authorization: Bearer {chat_function.user_token(alice)}\r\n"
                      "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n").encode())
        try:
            while sent < 300 * MIB:
                if select.select([sock], [], [], 0)[0]:
                    break  # the function answered
                sock.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass  # it stopped reading and closed
        answer = b""
        while b"\r\n\r\n" not in answer:
            part = sock.recv(65536)
            if not part:
                break
            answer += part
            if b"\r\n\r\n" in answer:
                head, _, rest = answer.partition(b"\r\n\r\n")
                length = int(next((line.split(b":")[1] for line in head.split(b"\r\n")
                                   if line.lower().startswith(b"content-length:")), b"0"))
                while len(rest) < length:
                    more = sock.recv(65536)
                    if not more:
                        break
                    rest += more
                answer = head + b"\r\n\r\n" + rest
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413"), head[:200]
    assert json.loads(body)["error"]["code"] == "body_too_large"
    # 256 KB is the limit; what the kernel's socket buffers took besides is a few MiB at most
    assert sent < 32 * MIB, f"the function read {sent / MIB:.0f} MiB of a body it refuses at 256 KB"
    grown = _rss_bytes(chat_function.proc.pid) - rss_before
    assert grown < 48 * MIB, f"the function grew by {grown / MIB:.0f} MiB"


def test_auth__a_valid_token_of_a_user_who_does_not_exist_is_401(chat_function: ChatFunction,
                                                                  agent: uuid.UUID) -> None:
    """Finding 4: the rate limiter's foreign key made this a 500 internal_error, retryable."""
    response = _turn(chat_function, uuid.uuid4(), agent, "hello")
    assert response.status_code == 401, response.text
    assert response.json()["error"]["code"] == "invalid_token"
    assert response.json()["error"]["retryable"] is False


def test_provider__its_error_body_goes_to_the_log_never_to_the_user(chat_function: ChatFunction, llm: FakeLLM,
                                                                    alice: uuid.UUID, agent: uuid.UUID) -> None:
    """Finding 7: the provider's body (with OpenAI, possibly the masked tail of the key) reached the user."""
    for status, code in [(401, "model_request_rejected"), (500, "model_unavailable")]:
        response = _turn(chat_function, alice, agent, f"[[fail:{status}]] hi")
        assert response.json()["error"]["code"] == code
        assert "fake failure" not in response.text, response.text
    assert "fake failure (HTTP 401)" in chat_function.log.read_text(), "the provider's words are logged"


def test_stack__the_chat_function_listens_on_loopback_only(chat_function: ChatFunction) -> None:
    """Finding 7: the local chat function listened on 0.0.0.0."""
    port = urlsplit(chat_function.url).port
    assert port is not None
    listening = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                local, state = line.split()[1], line.split()[3]
                address, hex_port = local.rsplit(":", 1)
                if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                    listening.append(address)
    assert listening == ["0100007F"], f"listening on {listening} (want 127.0.0.1 only)"


def test_budget__a_chat_turn_past_the_daily_token_budget_is_refused(
        chat_function: ChatFunction, db: psycopg.Connection[Any]) -> None:
    """Finding 3: no budget held a user's model spending; the budget counts the usage the model reports."""
    user = create_user(db)
    agent = create_agent(db, user)
    context = scheduled_turn(db, user, agent, "scheduled hello")  # queued and started while under budget
    try:
        _limit(db, "max_tokens_per_user_per_day", 1)
        first = _turn(chat_function, user, agent, "hello")
        assert first.status_code == 200, first.text
        reported = first.json()["usage"]["total_tokens"]
        used = db.execute("select scheduler.tokens_used(%s, null) as n", (user,)).fetchone()
        assert used is not None and used["n"] == reported > 0
        second = _turn(chat_function, user, agent, "hello again", first.json()["conversation_id"])
        assert second.status_code == 429, second.text
        error = second.json()["error"]
        assert error["code"] == "budget_exhausted" and error["retryable"] is False
        assert "max_tokens_per_user_per_day" in error["message"]
        # and an act-as turn for that user is refused the same way (its run fails, its task pauses)
        act_as = chat_function.post({"context": context}, chat_function.service_headers())
        assert act_as.status_code == 429 and act_as.json()["error"]["code"] == "budget_exhausted"
    finally:
        _limit(db, "max_tokens_per_user_per_day", 1_000_000)


def test_budget__an_agent_whose_model_left_the_allow_list_is_refused(
        chat_function: ChatFunction, db: psycopg.Connection[Any], alice: uuid.UUID) -> None:
    """Finding 3: `agents.model = 'o1-pro'` went to the provider."""
    agent = create_agent(db, alice, model="o1-pro")  # the operator's own write
    response = _turn(chat_function, alice, agent, "hello")
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "model_not_allowed"


def _tool_result(chat_function: ChatFunction, user: uuid.UUID, agent: uuid.UUID, name: str,
                 args: dict[str, Any], conversation: str | None = None) -> tuple[dict[str, Any], str]:
    response = _turn(chat_function, user, agent, f"[[tool:{name}:{json.dumps(args)}]]", conversation)
    assert response.status_code == 200, response.text
    calls = response.json()["message"]["tool_calls"]
    assert calls and calls[0]["name"] == name
    return calls[0], response.json()["conversation_id"]


def test_budget__the_agents_tools_meet_the_same_limits(chat_function: ChatFunction, llm: FakeLLM,
                                                        db: psycopg.Connection[Any]) -> None:
    """Finding 3, through the chat tools: an interval of 1 s, a burst of run-now calls, the active-task cap
    and a task's max_runs_per_day."""
    user = create_user(db)
    agent = create_agent(db, user)
    call, conversation = _tool_result(chat_function, user, agent, "create_schedule",
                                      {"name": "spin", "prompt": "p", "interval_seconds": 1})
    assert call["status"] == "error"
    assert "min_interval_seconds" in json.dumps(call["result"])
    call, _ = _tool_result(chat_function, user, agent, "create_schedule",
                           {"name": "hourly", "prompt": "p", "interval_seconds": 3600}, conversation)
    assert call["status"] == "ok", call
    task = create_task(db, user, agent)
    try:
        _limit(db, "run_now_per_minute", 2)
        results = [_tool_result(chat_function, user, agent, "run_schedule_now", {"schedule_id": str(task)},
                                conversation)[0] for _ in range(3)]
        assert [r["status"] for r in results] == ["ok", "ok", "error"]
        assert "run_now_per_minute" in json.dumps(results[2]["result"])
        queued = db.execute("select count(*) as n from public.agent_task_executions where task_id = %s",
                            (task,)).fetchone()
        assert queued == {"n": 2}
        _limit(db, "max_active_tasks_per_user", 2)  # the hourly task and `task` are active
        call, _ = _tool_result(chat_function, user, agent, "create_schedule",
                               {"name": "third", "prompt": "p", "interval_seconds": 3600}, conversation)
        assert call["status"] == "error" and "max_active_tasks_per_user" in json.dumps(call["result"])
        db.execute("update public.agent_tasks set max_runs_per_day = 2 where id = %s", (task,))
        _limit(db, "run_now_per_minute", 10)
        call, _ = _tool_result(chat_function, user, agent, "run_schedule_now", {"schedule_id": str(task)},
                               conversation)
        assert call["status"] == "error" and "max_runs_per_day is 2" in json.dumps(call["result"])
    finally:
        _limit(db, "run_now_per_minute", 10)
        _limit(db, "max_active_tasks_per_user", 100)


def test_backlog__the_agents_run_now_meets_the_bound(chat_function: ChatFunction, llm: FakeLLM,
                                                      db: psycopg.Connection[Any]) -> None:
    """An exclusive task's backlog through the chat tools: run_schedule_now is refused once
    max_queued_runs_per_task runs wait, with the limit named, and nothing more is queued."""
    user = create_user(db)
    agent = create_agent(db, user)
    task = create_task(db, user, agent)  # overlap_policy skip: its runs wait one behind the other
    try:
        _limit(db, "max_queued_runs_per_task", 1)
        first, conversation = _tool_result(chat_function, user, agent, "run_schedule_now",
                                           {"schedule_id": str(task)})
        assert first["status"] == "ok", first
        second, _ = _tool_result(chat_function, user, agent, "run_schedule_now", {"schedule_id": str(task)},
                                 conversation)
        assert second["status"] == "error", second
        assert "already has 1 waiting to run" in json.dumps(second["result"])
        assert "max_queued_runs_per_task" in json.dumps(second["result"])
        queued = db.execute("select count(*) as n from public.agent_task_executions where task_id = %s",
                            (task,)).fetchone()
        assert queued == {"n": 1}
    finally:
        _limit(db, "max_queued_runs_per_task", 10)
