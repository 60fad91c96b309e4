"""The claim walking past exclusive tasks' backlogs (max_queued_runs_per_task).

An exclusive task (overlap_policy skip or queue) runs one run at a time; the
runs queued behind a running one cannot be claimed, so every claim walks past
them. The planner bounds that backlog (scheduler.backlog_room, default 10 a
task); before, a schedule faster than its runs piled them up without end.

One fresh database per backlog size: 200 users with one exclusive task
('queue') and one 'allow' task each; --exclusive of the exclusive tasks get
one run claimed (running, 1 h lease) and then --backlog queued runs behind it
each (written by the operator's enqueue_now, which the bound does not hold,
so the unbounded case can be built); --claimable runs of 'allow' tasks are
queued after them (0: a worker's idle poll, where the walk finds nothing).
Then vacuum analyze, and --calls claims of 10 with the per-user cap 8, each
rolled back so the queue stays put: client wall time p50 / p90, and the
shared pages one claim touches (EXPLAIN ANALYZE, BUFFERS).

Prints one JSON object. Not a test: figures are noisy on a shared machine.

    python bench/bench_backlog.py [--exclusive 100] [--backlogs 10,200] [--claimable 0] [--calls 50]
"""

from __future__ import annotations

import argparse
import json
import os
import re
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

USERS = 200
CLAIM = "select count(*) from scheduler.claim_executions('bench', 10, 30, 8)"


def seed(conn: psycopg.Connection[Any], exclusive: int, backlog: int, claimable: int) -> None:
    conn.execute("insert into auth.users (id, email) select gen_random_uuid(), 'backlog-' || g || '@example.test'"
                 " from generate_series(1, %s) g", (USERS,))
    conn.execute("insert into public.agents (user_id, name) select id, 'Bench' from auth.users")
    conn.execute("insert into public.agent_tasks (user_id, agent_id, name, prompt_template, schedule_type,"
                 " overlap_policy)"
                 " select a.user_id, a.id, 'bench ' || k, 'Say hello', 'manual',"
                 "        case when k = 0 then 'queue' else 'allow' end"
                 " from public.agents a, generate_series(0, 1) k")
    held = [r[0] for r in conn.execute(
        "select id from public.agent_tasks where overlap_policy = 'queue' order by id limit %s", (exclusive,))]
    conn.execute("select scheduler.enqueue_now(t) from unnest(%s::uuid[]) t", (held,))
    running = conn.execute("select count(*) from scheduler.claim_executions('holder', %s, 3600)",
                           (exclusive,)).fetchone()
    assert running is not None and running[0] == exclusive, running
    conn.execute("select scheduler.enqueue_now(t) from unnest(%s::uuid[]) t, generate_series(1, %s)",
                 (held, backlog))
    if claimable:
        # one run of each allow task at a time, round the users: no user's cap is reached first
        allow = [r[0] for r in conn.execute("select id from public.agent_tasks where overlap_policy = 'allow'")]
        for i in range(claimable):
            conn.execute("select scheduler.enqueue_now(%s)", (allow[i % len(allow)],))
    conn.execute("vacuum analyze public.agent_task_executions")


def measure(url: str, calls: int, expect: int) -> dict[str, Any]:
    times: list[float] = []
    with psycopg.connect(url, autocommit=True) as conn:
        for _ in range(calls):
            with conn.transaction():
                t0 = time.perf_counter()
                row = conn.execute(CLAIM).fetchone()
                times.append((time.perf_counter() - t0) * 1000)
                assert row is not None and row[0] == expect, (row, expect)
                raise psycopg.Rollback
        with conn.transaction():
            plan = "\n".join(r[0] for r in conn.execute("explain (analyze, buffers) " + CLAIM))
            raise psycopg.Rollback
    top = re.search(r"Buffers: shared hit=(\d+)(?: read=(\d+))?", plan)
    pages = int(top.group(1)) + int(top.group(2) or 0) if top else None
    times.sort()
    return {"claim_p50_ms": round(statistics.median(times), 2),
            "claim_p90_ms": round(times[int(0.9 * (len(times) - 1))], 2),
            "pages_per_claim": pages}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--exclusive", type=int, default=100, help="exclusive tasks running (at most 200)")
    parser.add_argument("--backlogs", default="10,200", help="queued runs behind each, one database each")
    parser.add_argument("--claimable", type=int, default=0, help="claimable runs of allow tasks")
    parser.add_argument("--calls", type=int, default=50)
    args = parser.parse_args()
    state = stack.up(with_services=False)
    results = []
    for backlog in (int(b) for b in args.backlogs.split(",")):
        name = "bench_backlog_" + uuid.uuid4().hex[:8]
        url = stack.create_database(state, name)
        try:
            with psycopg.connect(url, autocommit=True) as conn:
                seed(conn, args.exclusive, backlog, args.claimable)
                queued = conn.execute("select count(*) from public.agent_task_executions"
                                      " where status = 'queued'").fetchone()
            results.append({"backlog_per_task": backlog, "queued": queued[0] if queued else None,
                            **measure(url, args.calls, min(10, args.claimable))})
        finally:
            stack.drop_database(state, name)
    print(json.dumps({
        "bench": "backlog",
        "conditions": {"users": USERS, "exclusive_tasks_running": args.exclusive,
                       "claimable_runs": args.claimable, "claim_batch": 10, "per_user_limit": 8,
                       "calls": args.calls, "bound_default": 10, "load_average_at_end": os.getloadavg()[0]},
        "results": results,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
