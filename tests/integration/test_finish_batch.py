"""scheduler.finish_executions: the fenced batch finish the worker uses."""

from __future__ import annotations

import json
from typing import Any

import psycopg
import pytest

from tests.conftest import create_agent, create_task, create_user

pytestmark = pytest.mark.integration


def _claim(conn: psycopg.Connection[Any], n: int, worker: str = "w1") -> list[dict[str, Any]]:
    return conn.execute("select id, attempt, task_id from scheduler.claim_executions(%s, %s, 30)",
                        (worker, n)).fetchall()


def _finish(conn: psycopg.Connection[Any], worker: str, results: list[dict[str, Any]]) -> list[str]:
    rows = conn.execute("select id from scheduler.finish_executions(%s, %s::jsonb)",
                        (worker, json.dumps(results, default=str))).fetchall()
    return [str(r["id"]) for r in rows]


def test_finish_executions__applies_mixed_outcomes_like_single_finishes(conn: psycopg.Connection[Any]) -> None:
    uid = create_user(conn)
    agent = create_agent(conn, uid)
    task = create_task(conn, uid, agent, overlap_policy="allow", name="Digest")
    for _ in range(3):
        conn.execute("select scheduler.enqueue_now(%s)", (task,))
    a, b, c = _claim(conn, 3)
    # a failure as the worker reports the chat function's answer: users may read it as it is
    rejected = "chat function 422 model_request_rejected: the model provider rejected the request (HTTP 401)"
    applied = _finish(conn, "w1", [
        {"id": a["id"], "attempt": a["attempt"], "status": "succeeded", "output": "ok"},
        {"id": b["id"], "attempt": b["attempt"], "status": "failed", "error": rejected, "error_kind": "permanent"},
        {"id": c["id"], "attempt": c["attempt"], "status": "needs_input", "output": "Which team?"},
    ])
    assert applied == [str(a["id"]), str(b["id"]), str(c["id"])]
    statuses = {str(r["id"]): r["status"] for r in conn.execute(
        "select id, status from agent_task_executions").fetchall()}
    assert statuses == {str(a["id"]): "succeeded", str(b["id"]): "failed", str(c["id"]): "needs_input"}
    t = conn.execute("select success_count, failure_count, status, last_error from agent_tasks where id = %s",
                     (task,)).fetchone()
    assert t == {"success_count": 1, "failure_count": 1, "status": "waiting_input", "last_error": rejected}
    kinds = sorted(r["kind"] for r in conn.execute("select kind from notifications").fetchall())
    assert kinds == ["task_failed", "task_needs_input"]


def test_finish_executions__is_fenced_on_worker_and_attempt(conn: psycopg.Connection[Any]) -> None:
    uid = create_user(conn)
    agent = create_agent(conn, uid)
    task = create_task(conn, uid, agent, overlap_policy="allow")
    for _ in range(2):
        conn.execute("select scheduler.enqueue_now(%s)", (task,))
    a, b = _claim(conn, 2)
    assert _finish(conn, "intruder", [{"id": a["id"], "attempt": a["attempt"], "status": "succeeded"}]) == []
    assert _finish(conn, "w1", [{"id": a["id"], "attempt": a["attempt"] + 1, "status": "succeeded"}]) == []
    assert _finish(conn, "w1", [{"id": a["id"], "attempt": a["attempt"], "status": "succeeded"},
                                {"id": b["id"], "attempt": b["attempt"], "status": "succeeded"}]) \
        == [str(a["id"]), str(b["id"])]
    # a second finish of the same executions changes nothing
    assert _finish(conn, "w1", [{"id": a["id"], "attempt": a["attempt"], "status": "failed"}]) == []
    row = conn.execute("select success_count, failure_count from agent_tasks where id = %s", (task,)).fetchone()
    assert row == {"success_count": 2, "failure_count": 0}


def test_finish_executions__refuses_a_bad_status_and_changes_nothing(conn: psycopg.Connection[Any]) -> None:
    uid = create_user(conn)
    agent = create_agent(conn, uid)
    task = create_task(conn, uid, agent)
    conn.execute("select scheduler.enqueue_now(%s)", (task,))
    (a,) = _claim(conn, 1)
    with pytest.raises(psycopg.errors.InvalidParameterValue):
        _finish(conn, "w1", [{"id": a["id"], "attempt": a["attempt"], "status": "queued"}])
    assert conn.execute("select status from agent_task_executions").fetchone() == {"status": "running"}
