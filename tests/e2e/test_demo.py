"""The README's first command: the demo shows scheduled runs arriving in a conversation."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import psycopg
import pytest

from worker import stack

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]


ASKING_TASK = "Weather note (asks first)"


def _asking_task_status() -> str | None:
    """The demo's third task's status on this stack (an earlier demo may have left its question open)."""
    try:
        state = stack.require_running()
    except stack.StackError:
        return None
    with psycopg.connect(stack.database_url(state)) as conn:
        row = conn.execute(
            """select t.status from public.agent_tasks t join auth.users u on u.id = t.user_id
               where u.email = 'demo@agent-tasks.local' and t.name = %s""", (ASKING_TASK,)).fetchone()
    return None if row is None else str(row[0])


def test_demo__scheduled_runs_arrive_in_the_conversation() -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "OPENAI_BASE_URL")}
    # an unanswered question from an earlier demo stands: the demo asks it again only once it is answered
    asked_before = _asking_task_status() == "waiting_input"
    proc = subprocess.run([sys.executable, "-m", "worker", "demo", "--duration", "25"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=240)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "FAKE model" in out
    # piped: plain lines, nothing cropped at 80 columns
    assert "Set OPENAI_API_KEY (and OPENAI_BASE_URL for Ollama/vLLM) to use a real model." in out
    assert "╭" not in out
    assert "scheduled prompt" in out      # the scheduler's user message, printed as it lands
    assert "Demo assistant" in out        # the agent's reply
    assert "succeeded" in out             # an execution status change
    # the ticket summary called the tickets MCP server and its reply quotes what the server returned
    assert "🔧 tickets__list_tickets" in out and "→ ok" in out
    assert "TCK-101" in out and "Checkout page times out for EU customers" in out
    # the web console's URL is printed; the demo stops its console when it ends
    web = re.search(r"web console: (http://127\.0\.0\.1:\d+/)", out)
    assert web is not None, out[-3000:]
    with pytest.raises(httpx.ConnectError):
        httpx.get(web.group(1), timeout=2)

    state = stack.require_running()
    with psycopg.connect(stack.database_url(state)) as conn:
        rows = conn.execute(
            """select m.role, m.metadata ->> 'source', e.status
               from public.chat_messages_v2 m
               join public.conversation_sessions c on c.id = m.conversation_id
               join auth.users u on u.id = c.user_id
               left join public.agent_task_executions e on e.id = m.execution_id
               where u.email = 'demo@agent-tasks.local' and m.created_at > now() - interval '2 minutes'""").fetchall()
    roles = [r[0] for r in rows]
    assert "user" in roles and "assistant" in roles
    # the scheduler's messages (a user's answer from an earlier run of this test has no execution)
    scheduled = [r for r in rows if r[2] is not None]
    assert all(r[1] == "scheduler" for r in scheduled if r[0] == "user")
    # the third task asked its question; every other run succeeded (occurrences missed while no demo
    # ran, on a stack reused from an earlier run, are told as the scheduler's system messages)
    statuses = {r[2] for r in scheduled if r[0] != "system"}
    if asked_before:  # the question stands (its run may fall inside the window, or not)
        assert statuses - {"needs_input"} == {"succeeded"}, rows
    else:
        assert statuses == {"needs_input", "succeeded"}, rows
    assert all(r[1] == "scheduler" and r[2] == "skipped" for r in scheduled if r[0] == "system"), rows
    assert "Which city should the weather note cover?" in out
    assert "answer it: agent-tasks conversations reply" in out

    # answering (as the README says) resumes the task: its run is queued at once
    with psycopg.connect(stack.database_url(state)) as conn:
        waiting = conn.execute(
            """select t.id, t.state ->> 'waiting_conversation_id' from public.agent_tasks t
               join auth.users u on u.id = t.user_id
               where u.email = 'demo@agent-tasks.local' and t.name = 'Weather note (asks first)'""").fetchone()
    assert waiting is not None and waiting[1] is not None
    reply = subprocess.run([sys.executable, "-m", "worker", "conversations", "reply", waiting[1], "Berlin"],
                           cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert reply.returncode == 0, reply.stdout + reply.stderr
    assert 'task "Weather note (asks first)" resumed' in reply.stdout
    with psycopg.connect(stack.database_url(state)) as conn:
        task = conn.execute("select status from public.agent_tasks where id = %s", (waiting[0],)).fetchone()
        queued = conn.execute("select count(*) from public.agent_task_executions where task_id = %s"
                              " and trigger_type = 'user_reply' and status = 'queued'", (waiting[0],)).fetchone()
    assert task is not None and task[0] == "active"
    assert queued is not None and queued[0] == 1
