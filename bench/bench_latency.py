"""Scheduling latency end to end: due -> claimed, and "run now" -> the user message is visible.

Real pieces only: the local Postgres (a fresh database per phase), the chat
function under Deno, the fake OpenAI-compatible model (instant) and one
`python -m worker.runner` process with default settings except
WORKER_CONCURRENCY.

* due_to_claimed: 1,000 `once` tasks (250 users, 4 each, so the default
  WORKER_PER_USER_LIMIT of 8 never binds) whose run_at is the same whole
  second a few seconds ahead; nothing but the worker's own tick (every
  TICK_INTERVAL_S = 1 s, the default) enqueues them. Per execution, from the
  database: lag = started_at - scheduled_for (p50/p99/max), split into
  enqueue lag (created_at - scheduled_for) and queue wait (started_at -
  created_at). Run at WORKER_CONCURRENCY 200 (the brief's setting: 1,000 runs
  cannot all start at once, so the tail measures throughput too) and at 1000
  (capacity for all of them: the scheduler's own lag). Goal p99 < 1 s.
* run_now_to_message: a worker idles; `select public.run_task_now(task)` is
  called exactly as PostgREST calls it (one transaction, `set local role
  authenticated`, request.jwt.claims of the owner); another connection polls
  chat_messages_v2 every 5 ms for the execution's scheduler user message.
  50 times, each after the previous run finished. Latency = client clock from
  before the call to the poll that sees the row (p50/p99), and the database's
  own view (message created_at - execution created_at). Goal p50 < 100 ms.

The machine has 2 cores shared with whatever else runs: figures are noisy.
Prints ONE JSON object.

    python bench/bench_latency.py [--tasks 1000] [--concurrency 200,1000] [--repeats 50]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._worker_support import (
    CpuMeter,
    create_run_now_task,
    create_users_and_agents,
    function_stats,
    machine_load,
    run_now_as_user,
    start_env,
    summary_ms,
    wait_until,
)

GOAL_DUE_P99_MS = 1000.0
GOAL_RUN_NOW_P50_MS = 100.0
POLL_S = 0.005
FINISHED_SQL = ("select 1 from public.agent_task_executions "
                "where id = %s and status not in ('queued', 'running')")
LEAD_S = 4  # run_at is this many whole seconds after the tasks are written


def due_to_claimed(n_tasks: int, concurrency: int) -> dict[str, Any]:
    env = start_env("bench_latency_due")
    try:
        assert env.chat is not None
        n_users = max(1, n_tasks // 4)
        with env.connect() as conn:
            owners = create_users_and_agents(conn, n_users)
        wp = env.spawn_worker(f"bench-due-{concurrency}", worker_concurrency=concurrency,
                              poll_interval_s=1.0)  # the default (the e2e helper lowers it)
        time.sleep(0.5)
        groups = {"worker": [wp.proc.pid], "chat_function": [env.chat.proc.pid],
                  "fake_llm": [env.llm.proc.pid]}
        with env.connect() as conn:
            t0 = time.monotonic()
            cur = conn.execute(
                """
                with o as (select u, a, row_number() over () - 1 as i
                           from unnest(%s::uuid[], %s::uuid[]) as x(u, a)),
                     due as (select date_trunc('second', clock_timestamp()) + make_interval(secs => %s) as at)
                insert into public.agent_tasks (user_id, agent_id, name, prompt_template, schedule_type,
                                                run_at, overlap_policy, max_retries)
                select o.u, o.a, 'Due task ' || (o.i * %s + k), 'Status for {{TODAY}}, please.', 'once',
                       due.at, 'allow', 0
                from o cross join due cross join generate_series(0, %s - 1) as k
                returning run_at
                """,
                ([u for u, _ in owners], [a for _, a in owners], LEAD_S, -(-n_tasks // n_users),
                 -(-n_tasks // n_users)))
            run_ats = {r[0] for r in cur.fetchall()}
            created = len(run_ats) and cur.rowcount
            insert_s = time.monotonic() - t0
            due_at = min(run_ats)
            row = conn.execute("select extract(epoch from %s - clock_timestamp())", (due_at,)).fetchone()
            assert row is not None
            seconds_before_due = float(row[0])
        groups.update(env.backend_pids())
        cpu = CpuMeter(groups, refresh=env.backend_pids)
        cpu.start()

        def drained() -> bool:
            with env.connect() as c:
                r = c.execute("""select count(*) filter (where status not in ('queued', 'running')),
                                        count(*) from public.agent_task_executions""").fetchone()
            return r is not None and r[0] >= created and r[1] >= created

        done = wait_until(drained, LEAD_S + 90.0, 0.2)
        cpu.stop()
        env.stop_worker(wp)
        with env.connect() as conn:
            rows = conn.execute("""
                select extract(epoch from started_at - scheduled_for) * 1000,
                       extract(epoch from created_at - scheduled_for) * 1000,
                       extract(epoch from started_at - created_at) * 1000,
                       status
                from public.agent_task_executions where trigger_type = 'schedule'""").fetchall()
            functions = function_stats(conn, 6)
            ticks = conn.execute("""select count(distinct created_at) from public.agent_task_executions
                                    where trigger_type = 'schedule'""").fetchone()
        started = [r for r in rows if r[0] is not None]
        lag = [float(r[0]) for r in started]
        first_wave = sorted(lag)[:concurrency]
        result: dict[str, Any] = {
            "tasks": created,
            "worker_concurrency": concurrency,
            "insert_s": round(insert_s, 3),
            "seconds_before_due_when_written": round(seconds_before_due, 3),
            "completed_in_time": done,
            "statuses": {s: sum(1 for r in rows if r[3] == s) for s in {r[3] for r in rows}},
            "enqueue_statements": int(ticks[0]) if ticks else None,
            "lag_due_to_claimed": summary_ms(lag),
            "lag_due_to_enqueued": summary_ms([float(r[1]) for r in rows]),
            "wait_enqueued_to_claimed": summary_ms([float(r[2]) for r in started]),
            "lag_first_wave_p99_ms": round(first_wave[min(len(first_wave) - 1,
                                                          round(0.99 * (len(first_wave) - 1)))], 1)
            if first_wave else None,
            "cpu": cpu.report(len(started)),
            "sql_functions": functions,
        }
        result["pass"] = bool(lag) and done and (result["lag_due_to_claimed"]["p99_ms"] or 1e9) < GOAL_DUE_P99_MS
        return result
    finally:
        env.close()


def run_now_to_message(repeats: int) -> dict[str, Any]:
    env = start_env("bench_latency_run_now")
    try:
        with env.connect() as conn:
            [(user_id, agent_id)] = create_users_and_agents(conn, 1)
            task_id = create_run_now_task(conn, user_id, agent_id)
        wp = env.spawn_worker("bench-run-now", poll_interval_s=1.0)
        time.sleep(1.0)
        claims = json.dumps({"sub": str(user_id), "role": "authenticated", "aud": "authenticated"})
        client_ms: list[float] = []
        db_ms: list[float] = []
        ids: list[uuid.UUID] = []
        misses = 0
        with psycopg.connect(env.db_url, application_name="bench-postgrest") as api, \
                psycopg.connect(env.db_url, autocommit=True, application_name="bench-poller") as poller:
            poll = "select 1 from public.chat_messages_v2 where execution_id = %s and role = 'user'"
            for _ in range(repeats):
                time.sleep(random.uniform(0.05, 0.2))  # the worker is idle, waiting on LISTEN
                t0 = time.monotonic()
                execution_id = run_now_as_user(api, claims, task_id)
                seen = False
                while time.monotonic() - t0 < 10.0:
                    if poller.execute(poll, (execution_id,)).fetchone() is not None:
                        seen = True
                        break
                    time.sleep(POLL_S)
                if not seen:
                    misses += 1
                    continue
                client_ms.append((time.monotonic() - t0) * 1000)
                ids.append(execution_id)
                wait_until(lambda eid=execution_id: poller.execute(FINISHED_SQL, (eid,)).fetchone() is not None,
                           10.0, 0.01)
            rows = poller.execute("""
                select extract(epoch from m.created_at - e.created_at) * 1000
                from public.agent_task_executions e
                join public.chat_messages_v2 m on m.id = e.user_message_id
                where e.id = any(%s)""", (ids,)).fetchall()
            db_ms = [float(r[0]) for r in rows]
        env.stop_worker(wp)
        client = summary_ms(client_ms)
        return {
            "repeats": repeats,
            "not_seen_within_10s": misses,
            "client_ms": client,
            "db_ms_execution_created_to_message_created": summary_ms(db_ms),
            "poll_interval_ms": POLL_S * 1000,
            "pass": misses == 0 and (client["p50_ms"] or 1e9) < GOAL_RUN_NOW_P50_MS,
        }
    finally:
        env.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--concurrency", default="200,1000", help="WORKER_CONCURRENCY values for due_to_claimed")
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--only", choices=["due", "run_now"], default=None)
    args = parser.parse_args(argv)

    out: dict[str, Any] = {"machine": machine_load()}
    if args.only in (None, "due"):
        runs = [due_to_claimed(args.tasks, int(c)) for c in args.concurrency.split(",") if c.strip()]
        out["due_to_claimed"] = {
            "runs": runs,
            "goal_p99_ms": GOAL_DUE_P99_MS,
            # the goal is judged on the first configuration (the brief's WORKER_CONCURRENCY 200)
            "pass": runs[0]["pass"],
        }
    if args.only in (None, "run_now"):
        out["run_now_to_message"] = {**run_now_to_message(args.repeats), "goal_p50_ms": GOAL_RUN_NOW_P50_MS}
    out["machine"]["loadavg_end"] = machine_load()["loadavg"]
    out["note"] = ("2 shared cores: worker, Deno, the fake model, Postgres and anything else running "
                   "compete for CPU; figures are noisy")
    print(json.dumps(out, default=str))
    # slow is never a failure; runs that never started or a message never seen are
    ok = all(r["completed_in_time"] and r["statuses"].get("succeeded") == r["tasks"]
             for r in out.get("due_to_claimed", {}).get("runs", []))
    ok = ok and out.get("run_now_to_message", {}).get("not_seen_within_10s", 0) == 0
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
