"""One lock order for every function that locks execution rows (by id).

heartbeat, start_executions, finish_executions and the rescuers all lock the
execution rows they touch in id order, so the heartbeat of a worker running
concurrently with its own batched starts and finishes (and another worker's
rescue pass) cannot deadlock. The deadlock victim would get an error, so every
deadlock shows up as an exception in one of the threads below.
"""

from __future__ import annotations

import json
import random
import threading
import uuid
from typing import Any

import psycopg
import pytest

from tests.conftest import create_agent, create_user

pytestmark = pytest.mark.integration

WORKERS = 3
TASKS = 20
PER_TASK = 30  # 600 executions
BATCH = 40
LEASE_S = 30


def _seed(conn: psycopg.Connection[Any]) -> None:
    uid = create_user(conn)
    agent = create_agent(conn, uid)
    # reuse-conversation tasks: start_executions takes them in conversation order
    conn.execute(
        """
        insert into public.agent_tasks (user_id, agent_id, name, prompt_template, schedule_type, overlap_policy)
        select %s, %s, format('task %%s', g), 'Say hello', 'manual', 'allow' from generate_series(1, %s) g
        """, (uid, agent, TASKS))
    conn.execute(
        """
        insert into public.agent_task_executions
          (task_id, user_id, agent_id, trigger_type, status, scheduled_for, run_after, exclusive)
        select t.id, t.user_id, t.agent_id, 'manual', 'queued',
               now() - interval '1 hour' + g * interval '1 second' + random() * interval '1 second',
               now() - interval '1 hour', false
        from public.agent_tasks t cross join generate_series(1, %s) g
        """, (PER_TASK,))


class _Worker:
    def __init__(self, url: str, worker_id: str, errors: list[BaseException]) -> None:
        self.url = url
        self.worker_id = worker_id
        self.errors = errors
        self.held: list[uuid.UUID] = []
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.finished = 0

    def run(self) -> None:
        """Claim a batch, start it in one call, finish it in one call (shuffled), until empty."""
        try:
            with psycopg.connect(self.url, autocommit=True) as conn:
                while True:
                    rows = conn.execute("select id, attempt from scheduler.claim_executions(%s, %s, %s)",
                                        (self.worker_id, BATCH, LEASE_S)).fetchall()
                    if not rows:
                        return
                    with self.lock:
                        self.held = [r[0] for r in rows]
                    items = [{"id": str(i), "attempt": a, "resolved_prompt": "Say hello"} for i, a in rows]
                    random.shuffle(items)
                    started = conn.execute(
                        "select id, error_code, error_message from scheduler.start_executions(%s, %s::jsonb)",
                        (self.worker_id, json.dumps(items))).fetchall()
                    assert all(code is None for _, code, _ in started), [r for r in started if r[1]]
                    random.shuffle(items)
                    for item in items:
                        item["status"] = "succeeded"
                    applied = conn.execute("select id from scheduler.finish_executions(%s, %s::jsonb)",
                                           (self.worker_id, json.dumps(items))).fetchall()
                    assert len(applied) == len(items)
                    self.finished += len(applied)
        except BaseException as exc:  # reported by the main thread
            self.errors.append(exc)
        finally:
            self.done.set()

    def beat(self) -> None:
        """Heartbeat whatever this worker holds, back to back, in a shuffled order."""
        try:
            with psycopg.connect(self.url, autocommit=True) as conn:
                while not self.done.is_set():
                    with self.lock:
                        ids = list(self.held)
                    random.shuffle(ids)
                    conn.execute("select * from scheduler.heartbeat(%s, %s::uuid[], %s)",
                                 (self.worker_id, ids, LEASE_S)).fetchall()
        except BaseException as exc:
            self.errors.append(exc)


def _rescue_until(url: str, done: list[threading.Event], errors: list[BaseException]) -> None:
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            while not all(d.is_set() for d in done):
                conn.execute("select scheduler.rescue_expired()")
                conn.execute("select * from scheduler.rescue_dead_workers()")
    except BaseException as exc:
        errors.append(exc)


def test_heartbeat_start_finish_and_rescue__concurrently__never_deadlock(
        db_url: str, conn: psycopg.Connection[dict[str, Any]]) -> None:
    _seed(conn)
    errors: list[BaseException] = []
    workers = [_Worker(db_url, f"w{i}", errors) for i in range(WORKERS)]
    threads = [threading.Thread(target=w.run) for w in workers]
    threads += [threading.Thread(target=w.beat) for w in workers]
    threads.append(threading.Thread(target=_rescue_until, args=(db_url, [w.done for w in workers], errors)))
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not any(t.is_alive() for t in threads), "a thread hung"
    deadlocks = [e for e in errors if isinstance(e, psycopg.errors.DeadlockDetected)]
    assert deadlocks == [], deadlocks[:3]
    assert errors == [], errors[:3]
    assert sum(w.finished for w in workers) == TASKS * PER_TASK
    row = conn.execute("select count(*) filter (where status = 'succeeded') as ok, count(*) as n,"
                       " (select sum(success_count) from public.agent_tasks) as counted"
                       " from public.agent_task_executions").fetchone()
    assert row is not None and (row["ok"], row["n"], row["counted"]) == (TASKS * PER_TASK,) * 3
