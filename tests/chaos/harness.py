"""Chaos scenarios against real parts: worker processes (python -m worker.runner),
the chat function under Deno, the fake model, the stack's Postgres.

`run_sigkill` drives one scenario and returns its report (a dict that
bench/bench_chaos.py prints as JSON and tests/chaos asserts on): every
execution terminal, none lost, model calls per run (the fake model logs each
request; a run's prompt is unique, `chaos <task> at {{NOW}}`), task counters
equal to the rows, Postgres deadlocks during the run, and how long each killed
worker's runs stayed `running` after the kill (stranded).
"""

from __future__ import annotations

import random
import statistics
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import psycopg

from tests.conftest import create_agent, create_user
from tests.e2e.conftest import ChatFunction, FakeLLM
from tests.e2e.workers import WorkerProcess, connect, spawn_worker


def _deadlocks(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("select deadlocks from pg_stat_database where datname = current_database()").fetchone()
    assert row is not None
    return int(row["deadlocks"])


def _last_user_text(request: dict[str, Any]) -> str:
    for message in reversed(request.get("messages", [])):
        if message.get("role") == "user":
            return str(message.get("content"))
    return ""


def _quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3)


def run_sigkill(chat: ChatFunction, llm: FakeLLM, log_dir: Path, *, tasks: int, per_task: int,
                workers: int = 3, kill_every_s: float = 3.0, lease_s: int = 30, concurrency: int = 8,
                model_latency_ms: int = 300, deadline_s: float = 240.0) -> dict[str, Any]:
    """SIGKILL a random worker every `kill_every_s` (and start a new one) until every one of
    tasks * per_task executions is terminal."""
    llm.reset()
    llm.configure(latency_ms=model_latency_ms)
    rng = random.Random(11)
    with connect(chat.db_url) as conn:
        uid = create_user(conn)
        agent = create_agent(conn, uid)
        task_ids = [conn.execute(
            "insert into public.agent_tasks (user_id, agent_id, name, prompt_template, schedule_type,"
            " overlap_policy, conversation_mode) values (%s, %s, %s, %s, 'manual', 'allow', 'new_per_run')"
            " returning id", (uid, agent, f"chaos {i:04d}", f"chaos {i:04d} at {{{{NOW}}}}")).fetchone()["id"]
            for i in range(tasks)]
        deadlocks_before = _deadlocks(conn)
        live: list[WorkerProcess] = []
        started: list[WorkerProcess] = []

        def spawn(wait_ready: bool = True) -> None:
            wp = spawn_worker(chat, log_dir, wait_ready=wait_ready, lease_seconds=lease_s,
                              worker_concurrency=concurrency, worker_per_user_limit=0)
            live.append(wp)
            started.append(wp)

        for _ in range(workers):
            spawn()
        t_start = time.monotonic()
        stranded: list[float] = []
        kills: list[int] = [0]
        stop = threading.Event()
        failures: list[BaseException] = []

        def killer() -> None:
            """Every kill_every_s: SIGKILL a random worker, start a new one, time the rescue."""
            try:
                with connect(chat.db_url) as kconn:
                    while not stop.wait(kill_every_s):
                        victim = live.pop(rng.randrange(len(live)))
                        victim.kill()
                        killed_at = time.monotonic()
                        kills[0] += 1
                        # the replacement starts (not waited for) while the victim's runs wait for rescue
                        spawn(wait_ready=False)
                        while kconn.execute("select count(*) as n from public.agent_task_executions"
                                            " where status = 'running' and worker_id = %s",
                                            (victim.worker_id,)).fetchone()["n"]:
                            assert time.monotonic() - killed_at < lease_s * 2, \
                                "a killed worker's runs never came back"
                            time.sleep(0.02)
                        stranded.append(time.monotonic() - killed_at)
            except BaseException as exc:
                failures.append(exc)

        chaos = threading.Thread(target=killer, name="chaos-killer")
        chaos.start()
        try:
            # one execution per task per second: {{NOW}} (seconds) makes every prompt unique.
            # Each enqueue commits on its own, as a user's or the scheduler's would.
            for _ in range(per_task):
                for task_id in task_ids:
                    conn.execute("select scheduler.enqueue_now(%s)", (task_id,))
                last_second = int(time.time())
                while int(time.time()) <= last_second:
                    time.sleep(0.01)
            total = tasks * per_task
            while True:
                left = conn.execute("select count(*) as n from public.agent_task_executions"
                                    " where status in ('queued', 'running')").fetchone()["n"]
                if left == 0 or failures:
                    break
                assert time.monotonic() - t_start < deadline_s, f"{left} executions not terminal in time"
                time.sleep(0.05)
        finally:
            stop.set()
            chaos.join(timeout=lease_s * 3)
            for wp in list(live):
                wp.stop()
        assert not failures, failures
        elapsed_s = time.monotonic() - t_start

        rows = conn.execute("select id, status, resolved_prompt, attempt from public.agent_task_executions"
                            " where task_id = any (%s)", (task_ids,)).fetchall()
        statuses = Counter(r["status"] for r in rows)
        calls = Counter(_last_user_text(r) for r in llm.requests())
        per_run = [calls.get(r["resolved_prompt"], 0) for r in rows]
        replies = conn.execute(
            "select count(*) filter (where n <> 1) as wrong from (select e.id, count(m.id) as n"
            " from public.agent_task_executions e left join public.chat_messages_v2 m"
            "   on m.execution_id = e.id and m.role = 'assistant'"
            " where e.task_id = any (%s) and e.status = 'succeeded' group by e.id) x", (task_ids,)).fetchone()
        counters = conn.execute(
            "select coalesce(sum(success_count), 0) as ok, coalesce(sum(failure_count), 0) as bad"
            " from public.agent_tasks where id = any (%s)", (task_ids,)).fetchone()
        deadlocks = _deadlocks(conn) - deadlocks_before
    return {
        "scenario": "sigkill", "tasks": tasks, "executions": total, "workers": workers,
        "worker_concurrency": concurrency, "kill_every_s": kill_every_s, "lease_s": lease_s,
        "model_latency_ms": model_latency_ms, "faults": kills[0], "elapsed_s": round(elapsed_s, 1),
        "rows": len(rows), "statuses": dict(statuses),
        "lost": total - sum(n for s, n in statuses.items() if s in ("succeeded", "failed", "timed_out")),
        "duplicated": sum(1 for n in per_run if n > 1),
        "model_calls_per_run": dict(Counter(per_run)),
        "runs_without_exactly_one_reply": replies["wrong"],
        "task_counters": {"success": counters["ok"], "failure": counters["bad"]},
        "deadlocks": deadlocks,
        "stranded_s": {"p50": _quantile(stranded, 0.5), "p99": _quantile(stranded, 0.99),
                       "max": round(max(stranded), 3) if stranded else None,
                       "mean": round(statistics.fmean(stranded), 3) if stranded else None},
    }
