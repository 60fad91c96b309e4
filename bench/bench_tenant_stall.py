"""One tenant's pathological cron tasks against another tenant's "run now" latency.

Finding 1 of the tenant attack run: six tasks with a 500 KB cron expression
(`repeat('0-59,', 100000) || '0 * * * *'`, ~3 s of croniter each) raised
another tenant's run-now latency from 0.05 s to about 3 s and stretched
in-flight runs from ~20 ms to ~2 s, because the worker's planner ran croniter
on its event loop. The database now refuses such an expression
(max_cron_expression_chars); to measure the worker's own guard, the operator
raises that limit, writes the six tasks (rows a lowered limit or an older
version let through) and starts one worker with the default
PLAN_TIME_BUDGET_S (2 s): croniter runs in a child process and each task is
set to `error` after its budget.

Real pieces: the local Postgres (a fresh database), the chat function under
Deno, the fake model (instant), one `python -m worker.runner`. Tenant B calls
`public.run_task_now` as PostgREST would, `--repeats` times while the planner
works through tenant A's tasks (`heavy`), and as many times with no such
tasks (`quiet`). Latency = client clock from the call to the poll (5 ms)
that sees the scheduled user message; run time = finished_at - started_at
of B's executions.

    python bench/bench_tenant_stall.py [--heavy 6] [--repeats 60]

Prints ONE JSON object. 2 shared cores: figures are noisy.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._worker_support import (
    create_run_now_task,
    create_users_and_agents,
    machine_load,
    run_now_as_user,
    start_env,
    summary_ms,
    wait_until,
)

HEAVY_CRON = "0-59," * 100_000 + "0 * * * *"
POLL_S = 0.005


def phase(n_heavy: int, repeats: int) -> dict[str, Any]:
    env = start_env("bench_tenant_stall")
    try:
        with env.connect() as conn:
            [(a_user, a_agent), (b_user, b_agent)] = create_users_and_agents(conn, 2)
            task_id = create_run_now_task(conn, b_user, b_agent)
        wp = env.spawn_worker("bench-stall", poll_interval_s=1.0)
        time.sleep(1.0)
        heavy_ids: list[Any] = []
        if n_heavy:
            with env.connect() as conn:
                conn.execute("update scheduler.limits set value = '1000000' where name = 'max_cron_expression_chars'")
                for i in range(n_heavy):
                    r = conn.execute("""insert into public.agent_tasks (user_id, agent_id, name, prompt_template,
                                                                       schedule_type, cron_expression)
                                        values (%s, %s, %s, 'p', 'cron', %s) returning id""",
                                     (a_user, a_agent, f"heavy {i}", HEAVY_CRON)).fetchone()
                    assert r is not None
                    heavy_ids.append(r[0])
        t_start = time.monotonic()
        claims = json.dumps({"sub": str(b_user), "role": "authenticated", "aud": "authenticated"})
        latency_ms: list[float] = []
        ids: list[Any] = []
        with psycopg.connect(env.db_url) as api, psycopg.connect(env.db_url, autocommit=True) as poller:
            for _ in range(repeats):
                time.sleep(random.uniform(0.05, 0.2))
                t0 = time.monotonic()
                execution_id = run_now_as_user(api, claims, task_id)
                while time.monotonic() - t0 < 20.0:
                    if poller.execute("select 1 from public.chat_messages_v2 where execution_id = %s "
                                      "and role = 'user'", (execution_id,)).fetchone() is not None:
                        latency_ms.append((time.monotonic() - t0) * 1000)
                        break
                    time.sleep(POLL_S)
                ids.append(execution_id)
            measured_s = time.monotonic() - t_start
            wait_until(lambda: poller.execute(
                "select count(*) from public.agent_task_executions where id = any(%s) "
                "and status not in ('queued', 'running')", (ids,)).fetchone() == (len(ids),), 30.0, 0.1)
            run_ms = [float(r[0]) for r in poller.execute(
                "select extract(epoch from finished_at - started_at) * 1000 from public.agent_task_executions "
                "where id = any(%s) and finished_at is not null", (ids,)).fetchall()]
            wait_until(lambda: poller.execute(
                "select count(*) from public.agent_tasks where id = any(%s) and status = 'error'",
                (heavy_ids,)).fetchone() == (len(heavy_ids),), 60.0, 0.2)
            heavy = poller.execute("select status, last_error from public.agent_tasks where id = any(%s)",
                                   (heavy_ids,)).fetchall()
        env.stop_worker(wp)
        return {
            "heavy_tasks": n_heavy,
            "heavy_cron_chars": len(HEAVY_CRON) if n_heavy else 0,
            "repeats": repeats,
            "seen": len(latency_ms),
            "measured_over_s": round(measured_s, 2),
            "run_now_to_message": summary_ms(latency_ms),
            "run_time_started_to_finished": summary_ms(run_ms),
            "heavy_task_statuses": sorted({r[0] for r in heavy}),
            "heavy_task_last_error": heavy[0][1] if heavy else None,
        }
    finally:
        env.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--heavy", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=60)
    args = parser.parse_args(argv)
    out: dict[str, Any] = {"machine": machine_load(), "plan_time_budget_s": 2.0}
    out["quiet"] = phase(0, args.repeats)
    out["heavy"] = phase(args.heavy, args.repeats)
    out["before_this_change"] = ("with croniter on the event loop, six such tasks raised run-now latency from "
                                 "0.05 s to about 3 s and in-flight runs from ~20 ms to ~2 s (the attack run)")
    out["machine"]["loadavg_end"] = machine_load()["loadavg"]
    print(json.dumps(out, default=str))
    ok = all(out[p]["seen"] == args.repeats for p in ("quiet", "heavy"))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
