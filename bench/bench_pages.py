"""Keyset pages at depth 0 / 1k / 10k / 100k: conversations, messages, runs, tasks.

One user owns N conversations, one conversation with N messages, one task
with N finished runs and N tasks (plus 10 other users with 1,000 of each, so
RLS has rows to hide), inserted in bulk. Each depth's cursor is the next_cursor of the row
at that depth; the pages are `public.list_conversations(null, 20, cursor)`,
`public.list_messages(conversation, 20, cursor)`,
`public.list_executions(task, 20, cursor)`, `public.list_executions(null,
20, cursor)` (all the user's runs), `public.list_tasks(20, cursor)` and
`public.list_tasks(20, cursor, agent)` (one agent's), called the way PostgREST calls them (one
transaction, `set local role authenticated`, the JWT claims in
request.jwt.claims), in one session, after warm-up calls. Client wall time
of the call only, p50 / p99 over --calls.

Prints one JSON object. Not a test: figures are noisy on a shared machine.

    python bench/bench_pages.py [--rows 100100] [--calls 200]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from worker import stack  # noqa: E402

GOAL_P50_MS = 2.0
PAGE = 20
WARMUP = 10


def seed(conn: psycopg.Connection[Any], n: int) -> dict[str, Any]:
    """The owner's N conversations, N messages in one conversation and N runs
    of one task; 1,000 of each for ten other users. Returns the owner's ids."""
    owner = uuid.uuid4()
    others = [uuid.uuid4() for _ in range(10)]
    for u in [owner, *others]:
        conn.execute("insert into auth.users (id, email) values (%s, %s)",
                     (u, f"pages-{u.hex[:8]}@example.test"))
        conn.execute("insert into public.agents (user_id, name) values (%s, 'Pages')", (u,))
        # triggers off for the task row only: its write-time validation is not
        # what this bench measures (bench_queue.py does the same)
        conn.execute("set session_replication_role = replica")
        conn.execute("insert into public.agent_tasks (user_id, agent_id, name, prompt_template, schedule_type)"
                     " select user_id, id, 'Pages', 'Say hello', 'manual' from public.agents"
                     " where user_id = %s", (u,))
        conn.execute("set session_replication_role = origin")
    for u, count in [(owner, n), *((o, 1000) for o in others)]:
        args = {"u": u, "n": count}
        conn.execute(
            "insert into public.conversation_sessions (user_id, agent_id, title, last_message_at,"
            " message_count, created_at)"
            " select %(u)s, a.id, 'c ' || g, now() - make_interval(secs => g), 1,"
            "        now() - make_interval(secs => g + 1)"
            " from public.agents a cross join generate_series(1, %(n)s) g where a.user_id = %(u)s", args)
        # triggers off for the messages: each would update its conversation's
        # counters (one row, N times), which is not what this bench measures
        conn.execute("set session_replication_role = replica")
        conn.execute(
            "insert into public.chat_messages_v2 (conversation_id, user_id, role, content, created_at)"
            " select c.id, %(u)s, case when g %% 2 = 0 then 'user' else 'assistant' end, 'message ' || g,"
            "        now() - interval '1 day' + make_interval(secs => g)"
            " from (select id from public.conversation_sessions where user_id = %(u)s"
            "       order by activity_at desc, id desc limit 1) c cross join generate_series(1, %(n)s) g", args)
        conn.execute("set session_replication_role = origin")
        conn.execute(
            "insert into public.agent_task_executions (task_id, user_id, agent_id, trigger_type, status,"
            " scheduled_for, run_after, attempt, worker_id, started_at, finished_at, duration_ms, created_at)"
            " select t.id, t.user_id, t.agent_id, 'manual', 'succeeded',"
            "        now() - interval '60 days' + make_interval(secs => g), now() - interval '60 days', 1,"
            "        'pages', now() - interval '30 days', now() - interval '30 days', 1,"
            "        now() - interval '60 days' + make_interval(secs => g)"
            " from public.agent_tasks t cross join generate_series(1, %(n)s) g where t.user_id = %(u)s", args)
        # N tasks in all, the others without runs (triggers off, as above)
        conn.execute("set session_replication_role = replica")
        conn.execute(
            "insert into public.agent_tasks (user_id, agent_id, name, prompt_template, schedule_type, created_at)"
            " select %(u)s, a.id, 'task ' || g, 'Say hello', 'manual', now() - make_interval(secs => g)"
            " from public.agents a cross join generate_series(2, %(n)s) g where a.user_id = %(u)s", args)
        conn.execute("set session_replication_role = origin")
    for table in ("conversation_sessions", "chat_messages_v2", "agent_task_executions", "agent_tasks"):
        conn.execute(f"vacuum analyze public.{table}")
    conversation = conn.execute(
        "select conversation_id from public.chat_messages_v2 where user_id = %s limit 1", (owner,)).fetchone()
    task = conn.execute("select id, agent_id from public.agent_tasks where user_id = %s and name = 'Pages'",
                        (owner,)).fetchone()
    assert conversation is not None and task is not None
    return {"user": owner, "conversation": conversation[0], "task": task[0], "agent": task[1]}


# each list: its page call, and the owner's rows in page order as (timestamp, id)
LISTS: dict[str, tuple[str, str]] = {
    "conversations": (
        "select id from public.list_conversations(null, %(page)s, %(cursor)s)",
        "select activity_at, id from public.conversation_sessions where user_id = %(user)s"
        " and deleted_at is null order by activity_at desc, id desc"),
    "messages": (
        "select id from public.list_messages(%(conversation)s, %(page)s, %(cursor)s)",
        "select created_at, id from public.chat_messages_v2 where conversation_id = %(conversation)s"
        " order by created_at desc, id desc"),
    "task_runs": (
        "select id from public.list_executions(%(task)s, %(page)s, %(cursor)s)",
        "select created_at, id from public.agent_task_executions where task_id = %(task)s"
        " order by created_at desc, id desc"),
    "all_runs": (
        "select id from public.list_executions(null, %(page)s, %(cursor)s)",
        "select created_at, id from public.agent_task_executions where user_id = %(user)s"
        " order by created_at desc, id desc"),
    "tasks": (
        "select id from public.list_tasks(%(page)s, %(cursor)s)",
        "select created_at, id from public.agent_tasks where user_id = %(user)s"
        " order by created_at desc, id desc"),
    "agent_tasks": (
        "select id from public.list_tasks(%(page)s, %(cursor)s, %(agent)s)",
        "select created_at, id from public.agent_tasks where agent_id = %(agent)s"
        " order by created_at desc, id desc"),
}


def page(conn: psycopg.Connection[Any], claims: str, call: str, params: dict[str, Any]) -> tuple[float, int]:
    with conn.transaction():
        conn.execute("set local role authenticated")
        conn.execute("select set_config('request.jwt.claims', %s, true)", (claims,))
        started = time.perf_counter()
        rows = conn.execute(call, params).fetchall()
        return (time.perf_counter() - started) * 1000, len(rows)


def cursor_at(conn: psycopg.Connection[Any], order: str, params: dict[str, Any], depth: int) -> str | None:
    if depth == 0:
        return None
    row = conn.execute(f"select public.page_cursor(r.at, r.id) from ({order} offset %(skip)s limit 1)"
                       " as r(at, id)", {**params, "skip": depth - 1}).fetchone()
    assert row is not None
    return str(row[0])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_100, help="rows of each list the user owns")
    parser.add_argument("--calls", type=int, default=200)
    args = parser.parse_args()
    depths = [d for d in (0, 1_000, 10_000, 100_000) if d <= args.rows - PAGE]

    state = stack.up(with_services=False)
    name = f"bench_pages_{uuid.uuid4().hex[:8]}"
    url = stack.create_database(state, name)
    results: dict[str, dict[str, Any]] = {}
    ok = True
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            owner = seed(conn, args.rows)
            claims = json.dumps({"role": "authenticated", "sub": str(owner["user"])})
            for list_name, (call, order) in LISTS.items():
                results[list_name] = {}
                for depth in depths:
                    params = {**owner, "page": PAGE, "cursor": cursor_at(conn, order, owner, depth)}
                    for _ in range(WARMUP):
                        page(conn, claims, call, params)
                    times = []
                    for _ in range(args.calls):
                        ms, n = page(conn, claims, call, params)
                        ok = ok and n == PAGE
                        times.append(ms)
                    times.sort()
                    results[list_name][str(depth)] = {
                        "p50_ms": round(statistics.median(times), 3),
                        "p99_ms": round(times[int(len(times) * 0.99) - 1], 3),
                        "max_ms": round(times[-1], 3)}
    finally:
        stack.drop_database(state, name)

    deepest = {list_name: by_depth[str(depths[-1])]["p50_ms"] for list_name, by_depth in results.items()}
    print(json.dumps({
        "rows_per_list": args.rows,
        "by_list": results,
        "goal_p50_ms_at_100k": GOAL_P50_MS,
        "goal_met": all(ms < GOAL_P50_MS for ms in deepest.values()) if depths[-1] == 100_000 else None,
        "conditions": {
            "load_average": os.getloadavg(), "cpus": os.cpu_count(), "calls": args.calls,
            "page_size": PAGE,
            "notes": ("one user with N conversations, N messages in one conversation, N runs of one"
                      " task and N tasks, plus 10 users with 1,000 of each; each list as that user under RLS (set"
                      " local role authenticated + JWT claims), one session, after warm-up; client"
                      " wall time of the call, not the transaction or the role switch; no"
                      " PostgREST/HTTP. The goal (< 2 ms p50 at 100k deep) is the issue's for the"
                      " conversation list, applied here to every list. The local cluster runs with"
                      " fsync off; the machine is shared with other work, so figures are noisy."),
        },
    }, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
