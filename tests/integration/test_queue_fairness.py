"""Fair sharing across users in `scheduler.claim_executions`.

A task's priority orders only its owner's work; across users the claim hands
out turns round-robin (`scheduler.assign_turn` numbers each queued run), so a
backlog or a high priority of one user never delays another user's due run
beyond one claim batch. The operator's `priority_class` is served first.
The same scenario at full size, with timings: bench/bench_fairness.py.
"""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
import pytest

from tests.conftest import as_user, create_agent, create_task, create_user

pytestmark = pytest.mark.integration


def _queue(conn: psycopg.Connection[Any], task: uuid.UUID, n: int, minutes_ago: int = 60) -> None:
    """Queue n due manual runs of `task` through the one row builder."""
    conn.execute(
        "insert into public.agent_task_executions"
        " select x.* from public.agent_tasks t cross join generate_series(1, %s) g"
        " cross join lateral scheduler.new_execution(t, 'manual',"
        "   now() - make_interval(mins => %s) + g * interval '1 millisecond', now() - interval '2 hours',"
        "   now()) x"
        " where t.id = %s", (n, minutes_ago, task))


def _tenant(conn: psycopg.Connection[Any], **task_fields: Any) -> tuple[uuid.UUID, uuid.UUID]:
    uid = create_user(conn)
    return uid, create_task(conn, uid, create_agent(conn, uid), overlap_policy="allow", **task_fields)


def _claim(conn: psycopg.Connection[Any], limit: int, per_user: int | None = None) -> list[dict[str, Any]]:
    return conn.execute(
        "select c.user_id, c.task_id, e.priority from scheduler.claim_executions('w', %s, 30, %s) c"
        " join public.agent_task_executions e using (id)", (limit, per_user)).fetchall()


def test_claim__a_backlog_of_high_priority_runs_does_not_delay_other_users(
        conn: psycopg.Connection[dict[str, Any]]) -> None:
    big, big_task = _tenant(conn, priority=100)
    _queue(conn, big_task, 300)
    others = [_tenant(conn) for _ in range(10)]
    for _, task in others:
        _queue(conn, task, 1)

    first = _claim(conn, 11)
    # one batch of eleven serves every user once, whatever priority 100 says
    assert sorted(str(r["user_id"]) for r in first) == sorted(str(u) for u in [big, *(u for u, _ in others)])
    assert _claim(conn, 5) and {r["user_id"] for r in _claim(conn, 5)} == {big}


def test_claim__a_user_queueing_late_starts_at_the_head(conn: psycopg.Connection[dict[str, Any]]) -> None:
    big, big_task = _tenant(conn)
    _queue(conn, big_task, 200)
    assert {r["user_id"] for r in _claim(conn, 50)} == {big}
    late, late_task = _tenant(conn)
    _queue(conn, late_task, 1)
    # behind at most one turn of the backlog, not behind its 150 remaining runs
    assert late in {r["user_id"] for r in _claim(conn, 2)}


def test_claim__round_robin_between_two_backlogs(conn: psycopg.Connection[dict[str, Any]]) -> None:
    a, a_task = _tenant(conn)
    b, b_task = _tenant(conn)
    _queue(conn, a_task, 40, minutes_ago=60)
    _queue(conn, b_task, 40, minutes_ago=30)  # queued after, and due after, all of a's runs
    claimed = [r["user_id"] for _ in range(10) for r in _claim(conn, 2)]
    # every batch of two is one run of each
    assert [claimed.count(a), claimed.count(b)] == [10, 10]


def test_claim__priority_orders_a_users_own_runs(conn: psycopg.Connection[dict[str, Any]]) -> None:
    uid = create_user(conn)
    agent = create_agent(conn, uid)
    low = create_task(conn, uid, agent, overlap_policy="allow", priority=-5)
    high = create_task(conn, uid, agent, overlap_policy="allow", priority=50)
    other, other_task = _tenant(conn)
    _queue(conn, low, 5, minutes_ago=60)
    _queue(conn, other_task, 5, minutes_ago=60)
    _queue(conn, high, 5, minutes_ago=10)  # queued last and due last, so its turns come last
    first = _claim(conn, 4)
    mine = [r["task_id"] for r in first if r["user_id"] == uid]
    # this user's slots go to its priority-50 task first; the other user keeps its share
    assert mine == [high, high]
    assert sum(1 for r in first if r["user_id"] == other) == 2


def test_claim__the_operator_priority_class_comes_first(conn: psycopg.Connection[dict[str, Any]]) -> None:
    _, busy_task = _tenant(conn, priority=100)
    _queue(conn, busy_task, 50)
    vip, vip_task = _tenant(conn)
    conn.execute("update public.agent_tasks set priority_class = 1 where id = %s", (vip_task,))
    _queue(conn, vip_task, 3)
    assert [r["user_id"] for r in _claim(conn, 3)] == [vip, vip, vip]


def test_claim__users_cannot_write_the_priority_class(conn: psycopg.Connection[dict[str, Any]]) -> None:
    uid, task = _tenant(conn)
    with pytest.raises(psycopg.errors.InsufficientPrivilege), as_user(conn, uid):
        conn.execute("update public.agent_tasks set priority_class = 10 where id = %s", (task,))
    row = conn.execute("select priority_class from public.agent_tasks where id = %s", (task,)).fetchone()
    assert row is not None and row["priority_class"] == 0


def test_claim__per_user_cap_still_applies_to_fair_slots(conn: psycopg.Connection[dict[str, Any]]) -> None:
    big, big_task = _tenant(conn)
    _queue(conn, big_task, 30)
    assert [r["user_id"] for r in _claim(conn, 10, per_user=3)] == [big] * 3
    small, small_task = _tenant(conn)
    _queue(conn, small_task, 2)
    # the capped user takes no slot while at its cap; the other user's runs are claimed
    assert [r["user_id"] for r in _claim(conn, 10, per_user=3)] == [small, small]
