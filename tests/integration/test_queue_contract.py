"""One contract, two queues: the in-memory fake the unit tests use
(worker.testing.InMemoryQueue) must answer the worker's calls as the Postgres
queue (worker.db.PostgresQueue) does, or the fast tests test a fiction.

Each scenario runs against both, through the WorkerQueue protocol only.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from tests.conftest import create_agent, create_task, create_user
from worker.db import PostgresQueue
from worker.queue import Fenced, WorkerQueue
from worker.status import ExecutionStatus
from worker.testing import InMemoryQueue

pytestmark = pytest.mark.integration

# add(n) queues n executions, at most one try each (max_retries 0) when last_try
Add = Callable[[int, bool], Awaitable[list[uuid.UUID]]]


@asynccontextmanager
async def postgres(db_url: str) -> AsyncIterator[tuple[WorkerQueue, Add]]:
    with psycopg.connect(db_url, autocommit=True) as conn:
        uid = create_user(conn)
        agent = create_agent(conn, uid)
        tasks = {last_try: create_task(conn, uid, agent, overlap_policy="allow",
                                       max_retries=0 if last_try else 3)
                 for last_try in (False, True)}

        async def add(n: int, last_try: bool) -> list[uuid.UUID]:
            return [conn.execute("select scheduler.enqueue_now(%s)", (tasks[last_try],)).fetchone()[0]
                    for _ in range(n)]

        queue = PostgresQueue(db_url, 2, "w1")
        await queue.open()
        try:
            yield queue, add
        finally:
            await queue.close()


@asynccontextmanager
async def memory(db_url: str) -> AsyncIterator[tuple[WorkerQueue, Add]]:
    queue = InMemoryQueue()

    async def add(n: int, last_try: bool) -> list[uuid.UUID]:
        return queue.add(n, max_attempts=1 if last_try else 4)

    yield queue, add


Make = Callable[[str], AbstractAsyncContextManager[tuple[WorkerQueue, Add]]]
QUEUES = pytest.mark.parametrize("make", [postgres, memory], ids=["postgres", "memory"])


@QUEUES
async def test_contract__claim_start_finish(make: Make, db_url: str) -> None:
    async with make(db_url) as (queue, add):
        ids = await add(3, False)
        claimed = await queue.claim("w1", 2, 30, None)
        assert len(claimed) == 2 and {c.id for c in claimed} <= set(ids)
        assert all(c.attempt == 1 for c in claimed)
        first, second = claimed
        started = await queue.start(first.id, "w1", 1, "Hello", None)
        again = await queue.start(first.id, "w1", 1, "Hello", None)
        assert again.user_message_id == started.user_message_id, "the scheduled message is written once"
        with pytest.raises(Fenced):
            await queue.start(second.id, "w2", 1, "Hello", None)
        assert await queue.finish(first.id, "w1", 1, ExecutionStatus.SUCCEEDED, output="ok") is True
        assert await queue.finish(first.id, "w1", 1, ExecutionStatus.SUCCEEDED) is False, "finished once"
        assert await queue.finish(second.id, "w2", 1, ExecutionStatus.SUCCEEDED) is False, "not w2's"
        assert await queue.finish(second.id, "w1", 2, ExecutionStatus.SUCCEEDED) is False, "not that attempt"
        assert [c.id for c in await queue.claim("w1", 5, 30, None)] == [i for i in ids if i not in
                                                                        {first.id, second.id}]


@QUEUES
async def test_contract__heartbeat_reports_what_is_no_longer_ours(make: Make, db_url: str) -> None:
    async with make(db_url) as (queue, add):
        await add(2, False)
        mine, finished = await queue.claim("w1", 2, 30, None)
        assert await queue.finish(finished.id, "w1", 1, ExecutionStatus.FAILED, error="boom") is True
        stranger = uuid.uuid4()
        lost = dict(await queue.heartbeat("w1", [mine.id, finished.id, stranger], 30, 3))
        assert lost == {finished.id: "failed", stranger: "missing"}


@QUEUES
async def test_contract__requeue_later_until_no_attempt_is_left(make: Make, db_url: str) -> None:
    async with make(db_url) as (queue, add):
        (retried,) = await add(1, False)
        (last,) = await add(1, True)
        claimed = {c.id: c for c in await queue.claim("w1", 2, 30, None)}
        assert set(claimed) == {retried, last}
        assert await queue.requeue_later(retried, "w2", 1, "HTTP 503", "transient", 0) is None, "fenced"
        assert await queue.requeue_later(retried, "w1", 1, "HTTP 503", "transient", 0) == "queued"
        assert await queue.requeue_later(last, "w1", 1, "HTTP 503", "transient", 0) == "failed"
        (again,) = await queue.claim("w1", 2, 30, None)
        assert again.id == retried and again.attempt == 2


@QUEUES
async def test_contract__release_gives_the_attempt_back(make: Make, db_url: str) -> None:
    async with make(db_url) as (queue, add):
        await add(2, False)
        a, b = await queue.claim("w1", 2, 30, None)
        assert await queue.release("w2", [a.id]) == 0, "only the holder releases"
        assert await queue.release("w1", [a.id, b.id]) == 2
        reclaimed = await queue.claim("w1", 2, 30, None)
        assert sorted(c.attempt for c in reclaimed) == [1, 1]


@QUEUES
async def test_contract__requeue_without_spending_gives_the_last_attempt_back(make: Make, db_url: str) -> None:
    # the chat function was unreachable: not the run's fault, even on its last attempt
    async with make(db_url) as (queue, add):
        (last,) = await add(1, True)
        (claimed,) = await queue.claim("w1", 1, 30, None)
        assert claimed.id == last and claimed.attempt == 1
        assert await queue.requeue_later(last, "w1", 1, "unreachable", "unreachable", 0,
                                         spend_attempt=False) == "queued"
        (again,) = await queue.claim("w1", 1, 30, None)
        assert again.id == last and again.attempt == 1, "the same attempt number again"
        assert await queue.requeue_later(last, "w1", 1, "HTTP 503", "transient", 0) == "failed"


# --- the claim order: fair turns, a user's priority, the class, the cap, exclusive tasks ---

# label: (user, priority, priority_class, exclusive)
TASKS = {
    "a_lo": ("A", 0, 0, False), "a_hi": ("A", 10, 0, False), "a_ex": ("A", 5, 0, True),
    "b": ("B", 0, 0, False), "c_ex": ("C", 0, 0, True), "d": ("D", 0, 1, False),
}
# ("add", task, n): queue n runs; ("claim", limit, per_user_limit); ("finish" | "release", labels)
SCENARIO: list[tuple[Any, ...]] = [
    ("add", "a_lo", 3), ("add", "a_hi", 2), ("add", "a_ex", 2), ("add", "b", 3), ("add", "c_ex", 3),
    ("claim", 4, 3),     # A's turns are slots for A's most urgent runs (a_hi), not for the runs holding them
    ("claim", 4, 3),     # a_ex only once at a time; A at the cap takes no more
    ("release", ["b1"]),  # back in the queue with its turn
    ("finish", ["a_hi0", "a_hi1", "c_ex0"]),
    ("add", "d", 2),     # the operator's class: before everyone
    ("add", "b", 1),
    ("claim", 3, 3),
    ("claim", 10, None),
    ("finish", ["a_ex0", "b0", "b1", "d0", "d1", "a_lo0"]),
    ("claim", 10, 2),    # A at the cap, c_ex running: nothing
    ("finish", ["a_lo1", "c_ex1"]),
    ("claim", 10, 2),
    ("claim", 10, None),
]


async def _claim_order_postgres(db_url: str) -> list[list[str]]:
    with psycopg.connect(db_url, autocommit=True) as conn:
        users = {u: create_user(conn) for u in {t[0] for t in TASKS.values()}}
        agents = {u: create_agent(conn, uid) for u, uid in users.items()}
        tasks = {label: create_task(conn, users[u], agents[u], priority=priority, priority_class=klass,
                                    overlap_policy="queue" if exclusive else "allow")
                 for label, (u, priority, klass, exclusive) in TASKS.items()}
        base = conn.execute("select now() - interval '1 hour'").fetchone()[0]

        def add(task: str, seq: int) -> uuid.UUID:
            at = base + timedelta(seconds=seq)  # scheduled_for and run_after, as in memory
            return conn.execute("select scheduler.enqueue_now(%s, 'manual', %s)", (tasks[task], at)).fetchone()[0]

        queue = PostgresQueue(db_url, 2, "w1")
        await queue.open()
        try:
            return await _run_scenario(queue, add)
        finally:
            await queue.close()


async def _claim_order_memory() -> list[list[str]]:
    queue = InMemoryQueue()
    users = {u: uuid.uuid4() for u in {t[0] for t in TASKS.values()}}
    tasks = {label: uuid.uuid4() for label in TASKS}
    base = datetime.now(UTC) - timedelta(hours=1)

    def add(task: str, seq: int) -> uuid.UUID:
        user, priority, klass, exclusive = TASKS[task]
        at = base + timedelta(seconds=seq)
        (execution_id,) = queue.add(1, user_id=users[user], task_id=tasks[task], priority=priority,
                                    priority_class=klass, exclusive=exclusive, scheduled_for=at, run_after=at)
        return execution_id

    return await _run_scenario(queue, add)


async def _run_scenario(queue: WorkerQueue, add: Callable[[str, int], uuid.UUID]) -> list[list[str]]:
    labels: dict[uuid.UUID, str] = {}
    ids: dict[str, uuid.UUID] = {}
    attempts: dict[str, int] = {}
    added = {task: 0 for task in TASKS}
    batches = []
    for step in SCENARIO:
        if step[0] == "add":
            _, task, n = step
            for _ in range(n):
                label = f"{task}{added[task]}"
                added[task] += 1
                ids[label] = add(task, len(ids))
                labels[ids[label]] = label
        elif step[0] == "claim":
            claimed = await queue.claim("w1", step[1], 30, step[2])
            attempts.update({labels[c.id]: c.attempt for c in claimed})
            batches.append([labels[c.id] for c in claimed])
        elif step[0] == "finish":
            for label in step[1]:
                assert await queue.finish(ids[label], "w1", attempts[label], ExecutionStatus.SUCCEEDED)
        else:
            assert await queue.release("w1", [ids[label] for label in step[1]]) == len(step[1])
    return batches


async def test_contract__claim_order_matches_the_sql_claim(db_url: str) -> None:
    sql, memory = await _claim_order_postgres(db_url), await _claim_order_memory()
    assert memory == sql, f"in memory {memory}\nPostgres  {sql}"
    # the scenario reaches what it is about: slots for a user's urgent runs, exclusive
    # tasks once at a time, the cap, the operator's class first, and everything claimed
    assert sql[0][:2] == ["a_hi0", "a_hi1"] and "a_lo0" not in sql[0]
    assert "a_ex0" in sql[1] and "a_ex1" not in sql[1] and not {"a_lo0", "a_lo1"} & set(sql[1])
    assert sql[2][:2] == ["d0", "d1"]
    assert sql[4] == [] and sorted(sql[5]) == ["a_ex1", "c_ex2"] and sql[6] == []
    runs = [f"{task}{k}" for task, n in (("a_lo", 3), ("a_hi", 2), ("a_ex", 2), ("b", 4), ("c_ex", 3), ("d", 2))
            for k in range(n)]
    assert sorted(label for batch in sql for label in batch) == sorted([*runs, "b1"]), "b1 twice: released"
