"""The web console's page times with a deep history: 10,000 messages in one conversation, 1,000 tasks.

One user owns an agent, a conversation of --messages messages (a tenth of
them scheduled prompts with the task's badge, a twentieth of the replies with a
tool call, Markdown in every reply) and --tasks tasks, one of which has
--runs executions; ten other users own as much again, so RLS has rows to hide.
`agent-tasks console` runs as its own process (uvicorn) against that database
with CONSOLE_PAGE_SIZE=--page-size (seed 004 SC-003: 100 messages in under
2 s). Each page is fetched over HTTP with the user's session cookie, --calls
times after warm-up, one client, keep-alive: client wall time of the whole
answer (the user's RLS transaction, the rendering, the transfer).

Prints one JSON object. Not a test: figures are noisy on a shared machine.

    python bench/bench_console.py [--messages 10000] [--tasks 1000] [--runs 1000] [--calls 30]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import psycopg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from worker import stack  # noqa: E402
from worker.console.auth import USER_COOKIE  # noqa: E402

GOAL_MS = 2000.0  # seed 004 SC-003: a page of 100 messages in under 2 s
WARMUP = 5


def seed(conn: psycopg.Connection[Any], messages: int, tasks: int, runs: int) -> dict[str, Any]:
    users = [uuid.uuid4() for _ in range(11)]
    out: dict[str, Any] = {}
    for i, u in enumerate(users):
        conn.execute("insert into auth.users (id, email) values (%s, %s)", (u, f"console-{u.hex[:8]}@example.test"))
        agent = conn.execute("insert into public.agents (user_id, name) values (%s, 'Bench') returning id",
                             (u,)).fetchone()[0]
        conv = conn.execute("insert into public.conversation_sessions (user_id, agent_id, title)"
                            " values (%s, %s, 'Deep history') returning id", (u, agent)).fetchone()[0]
        conn.execute(
            "insert into public.agent_tasks (user_id, agent_id, name, prompt_template, schedule_type,"
            " cron_expression, timezone, conversation_id, created_at)"
            " select %s, %s, 'Task ' || g, 'Summarise {{TODAY}}', 'cron', '0 9 * * 1-5', 'Europe/Berlin', %s,"
            "        now() - make_interval(secs => g)"
            " from generate_series(1, %s) g", (u, agent, conv, tasks))
        task = conn.execute("select id from public.agent_tasks where user_id = %s order by created_at desc limit 1",
                            (u,)).fetchone()[0]
        # a task's history: finished runs, inserted as the history they would be
        conn.execute(
            "insert into public.agent_task_executions (task_id, user_id, agent_id, trigger_type, status, scheduled_for,"
            " run_after, attempt, started_at, finished_at, duration_ms, conversation_id, usage, created_at)"
            " select %s, %s, %s, 'schedule', 'succeeded', now() - make_interval(mins => g),"
            "        now() - make_interval(mins => g), 1, now() - make_interval(mins => g),"
            "        now() - make_interval(mins => g) + interval '2 s', 2000, %s,"
            "        '{\"total_tokens\": 120}'::jsonb, now() - make_interval(mins => g)"
            " from generate_series(1, %s) g", (task, u, agent, conv, runs))
        # the scheduler's messages can only be written through its functions; the bench writes the
        # same rows as the superuser with the trigger's check off for this session
        conn.execute("set session_replication_role = replica")
        conn.execute(
            """with ex as (select id, row_number() over (order by created_at) as n
                           from public.agent_task_executions where task_id = %(task)s)
               insert into public.chat_messages_v2 (conversation_id, user_id, role, content, metadata, tool_calls,
                                                    execution_id, created_at)
               select %(conv)s, %(u)s,
                      case when g %% 2 = 0 then 'assistant' else 'user' end,
                      case when g %% 2 = 0 then E'**Reply** ' || g || E'\n\n- one\n- two\n\n`code`'
                           else 'Message ' || g || ' <b>not bold</b>' end,
                      case when ex.id is not null then jsonb_build_object(
                           'source', 'scheduler', 'task_id', %(task)s::text, 'execution_id', ex.id::text,
                           'trigger_type', 'schedule')
                           else '{}'::jsonb end,
                      case when g %% 20 = 0 then jsonb_build_array(jsonb_build_object(
                           'id', 'call_' || g, 'name', 'list_schedules', 'arguments', '{}'::jsonb,
                           'result', jsonb_build_object('schedules', jsonb_build_array()), 'status', 'ok',
                           'duration_ms', 4)) end,
                      ex.id,
                      now() - make_interval(secs => %(n)s - g)
               from generate_series(1, %(n)s) g
               -- every tenth message is a scheduled prompt of its own run
               left join ex on g %% 10 = 1 and ex.n = g / 10 + 1""",
            {"conv": conv, "u": u, "task": task, "n": messages})
        conn.execute("set session_replication_role = origin")
        conn.execute("update public.conversation_sessions set message_count = %s, last_message_at = now()"
                     " where id = %s", (messages, conv))
        if i == 0:
            out = {"user": u, "conversation": conv, "task": task}
    conn.execute("analyze")
    return out


def timed(client: httpx.Client, path: str, calls: int) -> dict[str, Any]:
    for _ in range(WARMUP):
        client.get(path).raise_for_status()
    samples = []
    size = 0
    for _ in range(calls):
        started = time.perf_counter()
        r = client.get(path)
        samples.append((time.perf_counter() - started) * 1000)
        r.raise_for_status()
        size = len(r.content)
    samples.sort()
    return {"p50_ms": round(statistics.median(samples), 1),
            "p95_ms": round(samples[max(0, int(len(samples) * 0.95) - 1)], 1),
            "max_ms": round(samples[-1], 1), "bytes": size}


def cursor_at(conn: psycopg.Connection[Any], conv: Any, depth: int) -> str:
    row = conn.execute("select created_at, id from public.chat_messages_v2 where conversation_id = %s"
                       " order by created_at desc, id desc offset %s limit 1", (conv, depth)).fetchone()
    return f"{row[0].isoformat()}|{row[1]}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--messages", type=int, default=10_000)
    ap.add_argument("--tasks", type=int, default=1_000)
    ap.add_argument("--runs", type=int, default=1_000)
    ap.add_argument("--page-size", type=int, default=100)
    ap.add_argument("--calls", type=int, default=30)
    args = ap.parse_args()
    state = stack.up(with_services=False)
    name = f"bench_console_{uuid.uuid4().hex[:8]}"
    url = stack.create_database(state, name)
    proc = None
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            seeded = seed(conn, args.messages, args.tasks, args.runs)
            depths = {"history_page_at_100": 100, "history_page_middle": args.messages // 2,
                      "history_page_last": max(0, args.messages - args.page_size)}
            cursors = {k: cursor_at(conn, seeded["conversation"], d) for k, d in depths.items()}
        port = stack.free_port(0)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SUPABASE_", "CHAT_", "CONSOLE_"))}
        env.update({"SUPABASE_JWKS": json.dumps(stack.jwks(state)), "CONSOLE_PAGE_SIZE": str(args.page_size)})
        proc = subprocess.Popen([sys.executable, "-m", "worker", "console", "--port", str(port), "--database-url",
                                 url, "--chat-url", "http://127.0.0.1:9/unused"], env=env, cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        base = f"http://127.0.0.1:{port}"
        token = stack.user_token(state, str(seeded["user"]), ttl_s=3600)
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"{base}/login", timeout=1)
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        conv, task = seeded["conversation"], seeded["task"]
        pages = {"conversation_page": f"/c/{conv}",
                 **{k: f"/c/{conv}/messages?before={httpx.URL('', params={'c': c}).query.decode()[2:]}"
                    for k, c in cursors.items()},
                 "conversation_list": "/conversations",
                 "schedules_first_page": "/tasks",
                 "run_history_first_page": f"/tasks/{task}/runs"}
        results = {}
        with httpx.Client(base_url=base, cookies={USER_COOKIE: token}, timeout=30) as client:
            for key, path in pages.items():
                results[key] = timed(client, path, args.calls)
            count = client.get(f"/c/{conv}").text.count('<article class="msg')
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=10)
        stack.drop_database(state, name)
    worst = max(r["p95_ms"] for r in results.values())
    print(json.dumps({
        "conditions": {"messages_in_conversation": args.messages, "tasks": args.tasks, "runs_of_one_task":
                       args.runs, "other_users": 10, "page_size": args.page_size, "messages_on_page": count,
                       "calls": args.calls, "warmup": WARMUP, "client": "httpx, one keep-alive connection",
                       "server": "agent-tasks console (uvicorn, one process)", "cpus": os.cpu_count()},
        "pages": results,
        "goal": {"sc_003_ms": GOAL_MS, "worst_p95_ms": worst, "met": worst < GOAL_MS},
    }, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
