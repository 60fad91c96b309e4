"""The real pg_cron job moves the queue: its stored command enqueues due work.

Instead of waiting for the next minute, the test runs the job's own command
(read from cron.job) as the job's user, the way pg_cron's worker runs it, in a
test database with a due task; and checks that pg_cron has been running it in
the main database.
"""

from __future__ import annotations

import time
from typing import Any

import psycopg
import pytest
from psycopg import sql

from tests.conftest import create_agent, create_task, create_user
from worker import stack

pytestmark = pytest.mark.integration

JOB = "agent-tasks-enqueue-due"


def _job(state: stack.State) -> dict[str, Any]:
    with psycopg.connect(stack.database_url(state)) as c:
        row = c.execute("select jobid, schedule, command, database, username, active from cron.job"
                        " where jobname = %s", (JOB,)).fetchone()
    assert row is not None, f"pg_cron job {JOB} is missing"
    return dict(zip(["jobid", "schedule", "command", "database", "username", "active"], row, strict=True))


def test_enqueue_job__is_scheduled_every_minute(stack_state: stack.State) -> None:
    job = _job(stack_state)
    assert job["schedule"] == "* * * * *"
    assert job["command"].strip() == "select scheduler.enqueue_due()"
    assert job["database"] == stack.MAIN_DB and job["active"] is True


def test_enqueue_job__its_command_enqueues_due_tasks(stack_state: stack.State,
                                                     conn: psycopg.Connection[dict[str, Any]]) -> None:
    job = _job(stack_state)
    uid = create_user(conn)
    agent = create_agent(conn, uid)
    due = create_task(conn, uid, agent, schedule_type="interval", interval_seconds=3600)
    later = create_task(conn, uid, agent, schedule_type="interval", interval_seconds=3600)
    conn.execute("update public.agent_tasks set next_run_at = now() - interval '10 seconds' where id = %s", (due,))

    def run_job() -> None:
        with conn.transaction():
            conn.execute(sql.SQL("set local role {}").format(sql.Identifier(job["username"])))
            conn.execute(job["command"])

    run_job()
    rows = conn.execute("select task_id, status, trigger_type from public.agent_task_executions").fetchall()
    assert [(r["task_id"], r["status"], r["trigger_type"]) for r in rows] == [(due, "queued", "schedule")]
    nxt = conn.execute("select next_run_at > now() + interval '59 minutes' as advanced, run_count"
                       " from public.agent_tasks where id = %s", (due,)).fetchone()
    assert nxt is not None and nxt["advanced"] and nxt["run_count"] == 1
    # idempotent: running the job again (cron and workers overlap) adds nothing
    run_job()
    count = conn.execute("select count(*) as n from public.agent_task_executions").fetchone()
    assert count is not None and count["n"] == 1
    untouched = conn.execute("select run_count from public.agent_tasks where id = %s", (later,)).fetchone()
    assert untouched is not None and untouched["run_count"] == 0


def test_enqueue_job__runs_in_the_main_database(stack_state: stack.State) -> None:
    """pg_cron has run the job successfully (waits for the first run on a fresh stack only)."""
    job = _job(stack_state)
    deadline = time.monotonic() + 65
    with psycopg.connect(stack.database_url(stack_state), autocommit=True) as c:
        while True:
            row = c.execute("select status, return_message from cron.job_run_details"
                            " where jobid = %s and status in ('succeeded', 'failed')"
                            " order by start_time desc limit 1", (job["jobid"],)).fetchone()
            if row is not None or time.monotonic() > deadline:
                break
            time.sleep(2)
        assert row is not None, "pg_cron did not run the job within 65 s"
        assert row == ("succeeded", "SELECT 1")
        # the function it calls exists there and runs (rolled back: no side effects)
        with c.transaction(force_rollback=True):
            n = c.execute("select scheduler.enqueue_due(now() - interval '100 years')").fetchone()
            assert n == (0,)
