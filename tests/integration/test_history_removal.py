"""A task that has run can be deleted, and history purged, though its scheduled prompts stay.

The messages' execution_id is set null by the foreign key when the run goes;
the prompt keeps metadata.source = 'scheduler' and the run's id in metadata.
"""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from tests.conftest import as_user, create_agent, create_task, create_user

pytestmark = pytest.mark.integration


def _ran(conn: psycopg.Connection[Any], task: Any, worker: str) -> Any:
    execution = conn.execute("select scheduler.enqueue_now(%s) as id", (task,)).fetchone()["id"]
    claimed = conn.execute("select id, attempt from scheduler.claim_executions(%s, 10)", (worker,)).fetchall()
    attempt = next(r["attempt"] for r in claimed if r["id"] == execution)
    conn.execute("select * from scheduler.start_execution(%s, %s, %s, 'Scheduled hello')",
                 (execution, worker, attempt))
    conn.execute("select scheduler.finish_execution(%s, %s, %s, 'succeeded')", (execution, worker, attempt))
    return execution


def test_delete_task__that_ran_keeps_its_prompts_as_history(conn: psycopg.Connection[Any]) -> None:
    uid = create_user(conn)
    task = create_task(conn, uid, create_agent(conn, uid))
    execution = _ran(conn, task, "w-delete")
    with as_user(conn, uid):
        deleted = conn.execute("delete from public.agent_tasks where id = %s returning id", (task,)).fetchall()
    assert len(deleted) == 1
    prompt = conn.execute("select execution_id, metadata from public.chat_messages_v2 where user_id = %s",
                          (uid,)).fetchone()
    assert prompt["execution_id"] is None
    assert prompt["metadata"]["source"] == "scheduler" and prompt["metadata"]["execution_id"] == str(execution)


def test_purge_history__with_scheduled_prompts(conn: psycopg.Connection[Any]) -> None:
    uid = create_user(conn)
    task = create_task(conn, uid, create_agent(conn, uid), overlap_policy="allow")
    _ran(conn, task, "w-purge")
    assert conn.execute("select scheduler.purge_history('0 seconds', now() + interval '1 minute') as n"
                        ).fetchone()["n"] == 1
    assert conn.execute("select count(*) as n from public.chat_messages_v2 where user_id = %s and execution_id"
                        " is null and metadata ->> 'source' = 'scheduler'", (uid,)).fetchone()["n"] == 1


def test_scheduler_metadata__still_needs_the_runs_id(conn: psycopg.Connection[Any]) -> None:
    uid = create_user(conn)
    conv = conn.execute("insert into public.conversation_sessions (user_id, agent_id) values (%s, %s) returning id",
                        (uid, create_agent(conn, uid))).fetchone()["id"]
    with pytest.raises(psycopg.errors.CheckViolation):
        conn.execute("insert into public.chat_messages_v2 (conversation_id, role, content, metadata)"
                      " values (%s, 'user', 'x', %s)", (conv, '{"source": "scheduler"}'))
