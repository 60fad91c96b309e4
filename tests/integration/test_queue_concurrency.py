"""The queue under real concurrency: many claimers on separate connections.

`scheduler.claim_executions` takes rows with FOR UPDATE SKIP LOCKED, so any
number of workers may claim at once and each execution runs exactly once;
priority comes first, then the occurrence; the per-user cap holds within the
approximation documented on the function (caps are checked against committed
rows, so claims running in the same instant can each pass it once).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from tests.conftest import create_agent, create_task, create_user

pytestmark = pytest.mark.integration

CLAIMERS = 50
TASKS = 500
PER_TASK = 20  # 10,000 executions
BATCH = 20
LEASE_S = 30


def _seed_queue(conn: psycopg.Connection[Any], users: int, tasks: int, per_task: int) -> list[uuid.UUID]:
    """`tasks` tasks (overlap allowed, so executions are not exclusive) dealt
    round-robin to `users` users, each task with `per_task` queued executions.
    In claim order (scheduled_for) the users alternate. Returns the user ids."""
    user_ids = [create_user(conn) for _ in range(users)]
    agents = [create_agent(conn, uid) for uid in user_ids]
    conn.execute(
        """
        insert into public.agent_tasks (user_id, agent_id, name, prompt_template, schedule_type, overlap_policy)
        select u.user_id, u.agent_id, format('bulk %%s', lpad(g::text, 6, '0')), 'Say hello', 'manual', 'allow'
        from unnest(%s::uuid[], %s::uuid[]) with ordinality as u (user_id, agent_id, n)
        cross join generate_series(1, %s) g
        where g %% %s = u.n - 1
        """, (user_ids, agents, tasks, users))
    conn.execute(
        """
        insert into public.agent_task_executions
          (task_id, user_id, agent_id, trigger_type, status, scheduled_for, run_after, exclusive)
        select t.id, t.user_id, t.agent_id, 'manual', 'queued',
               now() - interval '1 hour' + g * interval '1 second' + t.rank * interval '1 millisecond',
               now() - interval '1 hour', false
        from (select *, row_number() over (order by name) as rank from public.agent_tasks) t
        cross join generate_series(1, %s) g
        """, (per_task,))
    return user_ids


def _claim_all(url: str, worker_id: str, barrier: threading.Barrier, claimed: list[tuple[uuid.UUID, int]],
               errors: list[BaseException]) -> None:
    """One worker: claim a batch, finish each execution, until the queue stays empty."""
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            barrier.wait(timeout=60)
            empty = 0
            while empty < 3:
                rows = conn.execute("select id, attempt from scheduler.claim_executions(%s, %s, %s)",
                                    (worker_id, BATCH, LEASE_S)).fetchall()
                if not rows:
                    empty += 1
                    time.sleep(0.02)
                    continue
                empty = 0
                claimed.extend(rows)
                # one round trip for the batch's finishes (each still its own statement)
                with conn.pipeline():
                    cursors = [conn.execute("select scheduler.finish_execution(%s, %s, %s, 'succeeded', 'ok')",
                                            (exec_id, worker_id, attempt)) for exec_id, attempt in rows]
                for cur, (exec_id, _) in zip(cursors, rows, strict=True):
                    done = cur.fetchone()
                    assert done is not None and done[0] is True, f"finish of {exec_id} was fenced out"
    except BaseException as exc:  # reported by the main thread
        errors.append(exc)


def test_claim__50_workers_claim_10000_executions_exactly_once(
        db_url: str, conn: psycopg.Connection[dict[str, Any]]) -> None:
    _seed_queue(conn, users=10, tasks=TASKS, per_task=PER_TASK)
    all_ids = {r["id"] for r in conn.execute("select id from public.agent_task_executions")}
    assert len(all_ids) == TASKS * PER_TASK

    barrier = threading.Barrier(CLAIMERS)
    per_worker: list[list[tuple[uuid.UUID, int]]] = [[] for _ in range(CLAIMERS)]
    errors: list[BaseException] = []
    threads = [threading.Thread(target=_claim_all, args=(db_url, f"w{i}", barrier, per_worker[i], errors))
               for i in range(CLAIMERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert not any(t.is_alive() for t in threads), "a claimer hung"
    assert not errors, errors[:3]

    claimed = [exec_id for rows in per_worker for exec_id, _ in rows]
    duplicates = [i for i, n in Counter(claimed).items() if n > 1]
    assert duplicates == [], f"{len(duplicates)} executions were claimed more than once"
    assert set(claimed) == all_ids
    assert all(attempt == 1 for rows in per_worker for _, attempt in rows)
    # the work really was shared
    assert sum(1 for rows in per_worker if rows) >= CLAIMERS // 2

    stats = conn.execute(
        "select status, attempt, count(*) as n, count(distinct worker_id) as workers"
        " from public.agent_task_executions group by status, attempt").fetchall()
    assert [(s["status"], s["attempt"], s["n"]) for s in stats] == [("succeeded", 1, TASKS * PER_TASK)]
    counters = conn.execute(
        "select sum(success_count) as ok, sum(failure_count) as bad from public.agent_tasks").fetchone()
    assert counters is not None and (counters["ok"], counters["bad"]) == (TASKS * PER_TASK, 0)


def test_claim__priority_first_then_scheduled_for(conn: psycopg.Connection[dict[str, Any]]) -> None:
    uid = create_user(conn)
    agent = create_agent(conn, uid)
    task = create_task(conn, uid, agent, overlap_policy="allow")
    # (priority, minutes ago) in a shuffled order
    spec = [(0, 5), (10, 1), (0, 50), (-5, 60), (10, 30), (5, 2), (0, 20), (10, 10), (-5, 1), (5, 40)]
    for priority, ago in spec:
        conn.execute(
            "insert into public.agent_task_executions (task_id, user_id, agent_id, trigger_type,"
            " scheduled_for, run_after, priority, exclusive)"
            " values (%s, %s, %s, 'manual', now() - make_interval(mins => %s), now() - interval '2 hours', %s, false)",
            (task, uid, agent, ago, priority))
    expected = [(p, ago) for p, ago in sorted(spec, key=lambda s: (-s[0], -s[1]))]

    first = conn.execute(
        "select c.id, e.priority, round(extract(epoch from now() - e.scheduled_for) / 60)::int as ago"
        " from scheduler.claim_executions('w1', 4, 30) c join public.agent_task_executions e using (id)"
    ).fetchall()
    assert [(r["priority"], r["ago"]) for r in first] == expected[:4]

    rest: list[tuple[int, int]] = []
    while True:
        row = conn.execute(
            "select e.priority, round(extract(epoch from now() - e.scheduled_for) / 60)::int as ago"
            " from scheduler.claim_executions('w2', 1, 30) c join public.agent_task_executions e using (id)"
        ).fetchone()
        if row is None:
            break
        rest.append((row["priority"], row["ago"]))
    assert rest == expected[4:]


def test_claim__waits_for_run_after(conn: psycopg.Connection[dict[str, Any]]) -> None:
    uid = create_user(conn)
    task = create_task(conn, uid, create_agent(conn, uid), overlap_policy="allow")
    conn.execute(
        "insert into public.agent_task_executions (task_id, user_id, agent_id, trigger_type,"
        " scheduled_for, run_after, priority, exclusive)"
        " select id, user_id, agent_id, 'retry', now() - interval '1 hour', now() + interval '1 minute', 100, false"
        " from public.agent_tasks where id = %s", (task,))
    assert conn.execute("select * from scheduler.claim_executions('w', 10, 30)").fetchall() == []
    later = conn.execute(
        "select count(*) as n from scheduler.claim_executions('w', 10, 30, null, now() + interval '2 minutes')"
    ).fetchone()
    assert later is not None and later["n"] == 1


def _claim_held(url: str, worker_id: str, limit: int, per_user: int, barrier: threading.Barrier,
                results: dict[str, list[uuid.UUID]], errors: list[BaseException]) -> None:
    """Claim once, at the same instant as the others, and keep the executions running."""
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            barrier.wait(timeout=60)
            rows = conn.execute("select user_id from scheduler.claim_executions(%s, %s, 30, %s)",
                                (worker_id, limit, per_user)).fetchall()
            results[worker_id] = [r[0] for r in rows]
    except BaseException as exc:
        errors.append(exc)


def test_claim__per_user_cap_holds_under_concurrency(
        db_url: str, conn: psycopg.Connection[dict[str, Any]]) -> None:
    cap, workers, rounds = 2, 10, 3
    users = _seed_queue(conn, users=4, tasks=40, per_task=10)
    running_per_user: Counter[uuid.UUID] = Counter()
    first_round: dict[uuid.UUID, int] = {}
    for round_no in range(rounds):
        barrier = threading.Barrier(workers)
        results: dict[str, list[uuid.UUID]] = {}
        errors: list[BaseException] = []
        threads = [threading.Thread(target=_claim_held,
                                    args=(db_url, f"r{round_no}w{i}", 5, cap, barrier, results, errors))
                   for i in range(workers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert not errors, errors[:3]
        # one claim never exceeds the cap for a user, whatever runs elsewhere
        for worker, claimed in results.items():
            assert max(Counter(claimed).values(), default=0) <= cap, worker
        for claimed in results.values():
            running_per_user.update(claimed)

        db_running = {r["user_id"]: r["n"] for r in conn.execute(
            "select user_id, count(*) as n from public.agent_task_executions"
            " where status = 'running' group by user_id")}
        assert db_running == dict(running_per_user)
        # documented approximation: only claims racing in the same instant can
        # each pass the cap once; claims after a committed state add nothing
        for uid in users:
            assert db_running.get(uid, 0) <= cap * workers
            if round_no > 0:
                # every user was at or above the cap after round 0, so later
                # rounds must not have added anything
                assert db_running.get(uid, 0) == first_round[uid]
        if round_no == 0:
            first_round = dict(db_running)
            assert set(first_round) == set(users)
            assert all(n >= cap for n in first_round.values())

    # a claim after everything committed respects the cap exactly
    sequential = conn.execute("select count(*) as n from scheduler.claim_executions('late', 50, 30, %s)",
                              (cap,)).fetchone()
    assert sequential is not None and sequential["n"] == 0
    # once a user's executions finish, that user gets exactly `cap` again
    target = users[0]
    for row in conn.execute("select id, worker_id, attempt from public.agent_task_executions"
                            " where status = 'running' and user_id = %s", (target,)).fetchall():
        conn.execute("select scheduler.finish_execution(%s, %s, %s, 'succeeded')",
                     (row["id"], row["worker_id"], row["attempt"]))
    again = conn.execute("select user_id from scheduler.claim_executions('after', 50, 30, %s)",
                         (cap,)).fetchall()
    assert [r["user_id"] for r in again] == [target] * cap


def test_claim__skips_locked_rows(db_url: str, conn: psycopg.Connection[dict[str, Any]]) -> None:
    _seed_queue(conn, users=1, tasks=3, per_task=2)  # 6 queued executions
    with psycopg.connect(db_url, row_factory=dict_row) as holder, \
            psycopg.connect(db_url, autocommit=True, row_factory=dict_row) as other:
        other.execute("set statement_timeout = '5s'")  # blocking instead of skipping fails fast
        # the holder claims two in a transaction it keeps open
        held = {r["id"] for r in holder.execute("select id from scheduler.claim_executions('holder', 2, 30)")}
        assert len(held) == 2
        # another worker is not blocked and gets other rows only
        got = {r["id"] for r in other.execute("select id from scheduler.claim_executions('other', 10, 30)")}
        assert len(got) == 4 and got.isdisjoint(held)
        # a row locked by any transaction (not only a claim) is skipped too
        holder.rollback()
        queued = [r["id"] for r in other.execute(
            "select id from public.agent_task_executions where status = 'queued' order by id")]
        assert set(queued) == held
        holder.execute("select 1 from public.agent_task_executions where id = %s for update", (queued[0],))
        got2 = [r["id"] for r in other.execute("select id from scheduler.claim_executions('other', 10, 30)")]
        assert got2 == [queued[1]]
        holder.rollback()
        got3 = [r["id"] for r in other.execute("select id from scheduler.claim_executions('other', 10, 30)")]
        assert got3 == [queued[0]]
