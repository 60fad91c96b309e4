"""The one-command demo: scheduled runs arriving in a conversation, live.

Starts the local stack (Postgres with pg_cron, the chat function under Deno,
the fake model unless OPENAI_API_KEY is set) and one worker, creates a demo
user with an agent and two tasks (every 10 seconds, and cron every minute)
that both post into one conversation, and a third task, run once at start in
a conversation of its own, whose first run asks the user a question
(`agent-tasks conversations reply CONVERSATION "..."` answers it and resumes
the task). The minute task summarises the tickets updated since yesterday
through the stack's tickets MCP server (worker/mcp_tickets.py), connected as
the demo user's integration; it also runs once at start. It serves the web
console (`agent-tasks console`) and prints its URL. Then it prints the demo user's messages and the executions'
status changes as they happen, until Ctrl-C.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row
from rich.console import Console
from rich.panel import Panel

from worker import integrations, stack
from worker.console.serve import spawn_local as spawn_local_console
from worker.errors import CliError

DEMO_EMAIL = "demo@agent-tasks.local"
AGENT_NAME = "Demo assistant"
CONVERSATION_TITLE = "Demo: scheduled check-ins"
ASKING_TASK = "Weather note (asks first)"
ASKING_QUESTION = "Which city should the weather note cover?"
TICKETS_TASK = "Ticket summary (cron * * * * *)"
TICKETS_PROMPT = "Summarise the tickets updated since {{YESTERDAY}}."


def tickets_prompt(fake_model: bool) -> str:
    """The ticket summary's prompt; the fake model is told which tool to call (tests/fakes/README.md)."""
    if fake_model:
        return '[[tool:tickets__list_tickets:{"updated_since":"{{YESTERDAY}}"}]] ' + TICKETS_PROMPT
    return TICKETS_PROMPT


def asking_prompt(fake_model: bool) -> str:
    """The third task's prompt: the fake model is scripted (tests/fakes/README.md), a real one is asked."""
    if fake_model:
        steps = [{"status": "needs_input", "question": ASKING_QUESTION},
                 {"status": "complete", "summary": "Weather note posted for the city you chose; task complete."}]
        return f"[[status:{json.dumps(steps)}]] Post a one-line weather note."
    return (f"Before writing anything, ask me: \"{ASKING_QUESTION}\" (report_task_status, status needs_input). "
            "Once I have answered, post a one-line weather note for that city and report status complete.")
POLL_S = 0.3

console = Console(soft_wrap=True, highlight=False)


def _ensure_demo_rows(conn: psycopg.Connection[dict[str, Any]], fake_model: bool) -> dict[str, Any]:
    """Create (or find again) the demo user, agent, conversation and tasks; queue the asking task's run."""
    user = conn.execute("select id from auth.users where email = %s", (DEMO_EMAIL,)).fetchone()
    if user is None:
        user = conn.execute("insert into auth.users (id, email) values (gen_random_uuid(), %s) returning id",
                            (DEMO_EMAIL,)).fetchone()
    assert user is not None
    uid = user["id"]
    agent = conn.execute("select id from public.agents where user_id = %s and name = %s",
                         (uid, AGENT_NAME)).fetchone()
    if agent is None:
        agent = conn.execute(
            "insert into public.agents (user_id, name, system_prompt) values (%s, %s, %s) returning id",
            (uid, AGENT_NAME, "You are a concise assistant that posts short scheduled check-ins.")).fetchone()
    assert agent is not None
    conv = conn.execute(
        "select id from public.conversation_sessions where user_id = %s and title = %s and deleted_at is null",
        (uid, CONVERSATION_TITLE)).fetchone()
    if conv is None:
        conv = conn.execute(
            "insert into public.conversation_sessions (user_id, agent_id, title) values (%s, %s, %s) returning id",
            (uid, agent["id"], CONVERSATION_TITLE)).fetchone()
    assert conv is not None
    tasks: list[tuple[str, dict[str, Any], str]] = [
        ("Pulse check (every 10 s)", {"schedule_type": "interval", "interval_seconds": 10},
         "It is {{NOW}}. Post a one-line pulse check for {{WEEKDAY}}."),
        (TICKETS_TASK, {"schedule_type": "cron", "cron_expression": "* * * * *"}, tickets_prompt(fake_model)),
    ]
    for name, schedule, prompt in tasks:
        existing = conn.execute("select id from public.agent_tasks where user_id = %s and name = %s",
                                (uid, name)).fetchone()
        if existing is None:
            fields = {"user_id": uid, "agent_id": agent["id"], "name": name, "prompt_template": prompt,
                      "conversation_mode": "reuse", "conversation_id": conv["id"], **schedule}
            conn.execute(
                f"insert into public.agent_tasks ({', '.join(fields)}) values ({', '.join(['%s'] * len(fields))})",
                list(fields.values()))
        else:
            conn.execute("update public.agent_tasks set prompt_template = %s where id = %s", (prompt, existing["id"]))
            conn.execute("select scheduler.resume_task(%s)", (existing["id"],))
    tickets_task = conn.execute("select id from public.agent_tasks where user_id = %s and name = %s",
                                (uid, TICKETS_TASK)).fetchone()
    assert tickets_task is not None
    conn.execute("select scheduler.enqueue_now(%s)", (tickets_task["id"],))
    _queue_asking_task(conn, uid, agent["id"], fake_model)
    return {"user_id": uid, "agent_id": agent["id"], "conversation_id": conv["id"]}


def _queue_asking_task(conn: psycopg.Connection[dict[str, Any]], uid: Any, agent_id: Any, fake_model: bool) -> None:
    """The third task runs once per demo start, each time in a new conversation, unless it still waits for
    an answer from an earlier start (then the question stands)."""
    task = conn.execute("select id, status from public.agent_tasks where user_id = %s and name = %s",
                        (uid, ASKING_TASK)).fetchone()
    if task is None:
        task = conn.execute(
            """insert into public.agent_tasks (user_id, agent_id, name, prompt_template, schedule_type,
                                                conversation_mode)
               values (%s, %s, %s, %s, 'manual', 'new_per_run') returning id, status""",
            (uid, agent_id, ASKING_TASK, asking_prompt(fake_model))).fetchone()
        assert task is not None
    if task["status"] == "waiting_input":
        return
    conn.execute("update public.agent_tasks set prompt_template = %s where id = %s",
                 (asking_prompt(fake_model), task["id"]))
    conn.execute("select scheduler.resume_task(%s)", (task["id"],))
    conn.execute("select scheduler.enqueue_now(%s)", (task["id"],))


def _connect_tickets(conn: psycopg.Connection[dict[str, Any]], state: stack.State, demo: dict[str, Any],
                     chat_url: str) -> None:
    """The demo user's "tickets" integration: the row under the user's RLS, the bearer token sealed by the
    chat function (only it holds the key), enabled for the demo agent."""
    user_id = demo["user_id"]
    integration_id = integrations.upsert_integration(conn, user_id, "tickets", stack.tickets_url(state), "bearer",
                                                     None, [str(demo["agent_id"])])
    integrations.call_function(chat_url, stack.user_token(state, str(user_id)),
                               {"action": "set_credential", "integration_id": str(integration_id),
                                "credential": state.tickets_token})


def _start_worker(state: stack.State, info: dict[str, Any]) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    env.update({
        # the least-privileged login role: it can only call the queue's functions
        "DATABASE_URL": stack.database_url(state, user=stack.WORKER_ROLE),
        "CHAT_URL": info["chat_url"],
        "SUPABASE_SECRET_KEY": state.secret_key,
        "WORKER_ID": f"demo-{os.getpid()}",
    })
    stack.LOG_DIR.mkdir(parents=True, exist_ok=True)
    log = (stack.LOG_DIR / "demo-worker.log").open("ab")
    return subprocess.Popen([sys.executable, "-m", "worker", "worker"], env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)


def _box(body: str, title: str) -> None:
    """A framed panel on a terminal; piped, the title and the lines as they are (no cropping at 80 columns)."""
    if console.is_terminal:
        console.print(Panel(body, title=title))
    else:
        console.print(f"== {title} ==\n{body}")


def _print_message(m: dict[str, Any]) -> None:
    meta = m["metadata"] or {}
    when = f"[dim]{m['created_at']:%H:%M:%S}[/dim]"
    if m["role"] == "user" and meta.get("source") == "scheduler":
        console.print(f"{when} [yellow]⏰ scheduled prompt[/yellow] ({meta.get('trigger_type')}): {m['content']}")
    elif m["role"] == "assistant":
        for call in m["tool_calls"] or []:
            console.print(f"{when} [magenta]🔧 {call.get('name')}[/magenta] {json.dumps(call.get('arguments'))}"
                          f" → {call.get('status')} in {call.get('duration_ms')} ms", markup=True)
        console.print(f"{when} [green]🤖 {AGENT_NAME}[/green]: {m['content']}")
    else:
        console.print(f"{when} [blue]{m['role']}[/blue]: {m['content']}")


def _print_execution(e: dict[str, Any]) -> None:
    colour = {"queued": "yellow", "running": "cyan", "succeeded": "green", "failed": "red",
              "skipped": "dim", "timed_out": "red", "cancelled": "magenta",
              "needs_input": "bold yellow"}.get(e["status"], "white")
    detail = f" in {e['duration_ms']} ms" if e["duration_ms"] is not None else ""
    if e["error"]:
        detail += f" — {e['error']}"
    console.print(f"[dim]{e['updated_at']:%H:%M:%S}   execution {str(e['id'])[:8]} of "
                  f"{e['task']}: [/dim][{colour}]{e['status']}[/{colour}][dim] (attempt {e['attempt']})"
                  f"{detail}[/dim]")


def _stop_child(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        os.killpg(proc.pid, signal.SIGKILL)


def run_demo(duration_s: float | None = None) -> int:
    """Run the demo until Ctrl-C (or for duration_s seconds). Returns an exit code."""
    console.print("[bold]Starting the local stack[/bold] (Postgres + pg_cron, chat function under Deno)...")
    state = stack.up()
    info = stack.status()
    if not info.get("chat_url"):
        raise CliError(f"the chat function did not start; see {stack.LOG_DIR / 'chat.log'}")
    if info["llm"]["fake"]:
        _box("[bold yellow]No OPENAI_API_KEY set: replies come from the local FAKE model "
             f"({info['llm']['base_url']}).[/bold yellow]\nSet OPENAI_API_KEY (and OPENAI_BASE_URL "
             "for Ollama/vLLM) to use a real model.", "fake model")
    else:
        console.print(f"Using the model endpoint {info['llm']['base_url']}")

    with psycopg.connect(stack.database_url(state), autocommit=True, row_factory=dict_row) as conn:
        demo = _ensure_demo_rows(conn, bool(info["llm"]["fake"]))
        _connect_tickets(conn, state, demo, info["chat_url"])
        worker = _start_worker(state, {**demo, "chat_url": info["chat_url"]})
        web, web_url = spawn_local_console(stack.LOG_DIR / "demo-console.log")
        _box(f"web console: [bold]{web_url}[/bold] (\"Sign in as the demo user\")\n"
             f"conversation [bold]{CONVERSATION_TITLE}[/bold] ({demo['conversation_id']})\n"
             "tasks: every 10 s (interval) and every minute (cron: the tickets updated since yesterday,\n"
             f"from the tickets MCP server at {stack.tickets_url(state)}), both posting here;\n"
             f"\"{ASKING_TASK}\" runs once in a conversation of its own and asks you a question\n"
             f"worker log: {stack.LOG_DIR / 'demo-worker.log'}   ·   Ctrl-C to stop", "agent-tasks demo")
        standing = conn.execute(
            """select state ->> 'pending_question' as question, state ->> 'waiting_conversation_id' as conversation
               from public.agent_tasks where user_id = %s and name = %s and status = 'waiting_input'""",
            (demo["user_id"], ASKING_TASK)).fetchone()
        if standing is not None:  # an earlier demo's question is still open: say so, it is not asked again
            console.print(f"\"{ASKING_TASK}\" still waits for your answer: {standing['question']}")
            console.print(f"[bold]answer it:[/bold] agent-tasks conversations reply "
                          f"{standing['conversation']} \"Berlin\"", markup=True)
        started = time.monotonic()
        seen_messages: datetime | None = None
        seen_exec = conn.execute("select now() as t").fetchone()
        assert seen_exec is not None
        last_exec: datetime = seen_exec["t"]
        stop = False

        def _stop(*_: Any) -> None:
            nonlocal stop
            stop = True

        signal.signal(signal.SIGINT, _stop)
        signal.signal(signal.SIGTERM, _stop)
        try:
            while not stop and (duration_s is None or time.monotonic() - started < duration_s):
                if worker.poll() is not None:
                    raise CliError(f"the worker exited ({worker.returncode}); see "
                                   f"{stack.LOG_DIR / 'demo-worker.log'}")
                execs = conn.execute(
                    """select e.id, t.name as task, e.status, e.attempt, e.duration_ms, e.error, e.updated_at,
                              e.conversation_id
                       from public.agent_task_executions e join public.agent_tasks t on t.id = e.task_id
                       where t.user_id = %s and e.updated_at > %s order by e.updated_at""",
                    (demo["user_id"], last_exec)).fetchall()
                for e in execs:
                    last_exec = e["updated_at"]
                    _print_execution(e)
                    if e["status"] == "needs_input":
                        console.print(f"[bold]answer it:[/bold] agent-tasks conversations reply "
                                      f"{e['conversation_id']} \"Berlin\"", markup=True)
                msgs = conn.execute(
                    """select role, content, metadata, tool_calls, created_at from public.chat_messages_v2
                       where user_id = %s and (%s::timestamptz is null or created_at > %s)
                       order by created_at, id""",
                    (demo["user_id"], seen_messages, seen_messages)).fetchall()
                if seen_messages is None:
                    msgs = msgs[-6:]  # on start, show the last few messages only
                for m in msgs:
                    seen_messages = m["created_at"]
                    _print_message(m)
                time.sleep(POLL_S)
        finally:
            console.print("[dim]stopping the worker and the console (the stack keeps running: `make down`"
                          " stops it)[/dim]")
            _stop_child(web)
            try:
                os.killpg(worker.pid, signal.SIGTERM)
                worker.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                os.killpg(worker.pid, signal.SIGKILL)
    return 0
