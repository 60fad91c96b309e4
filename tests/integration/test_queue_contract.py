"""One contract, two queues: the in-memory fake the unit tests use
(worker.testing.InMemoryQueue) must answer the worker's calls as the Postgres
queue (worker.db.PostgresQueue) does, or the fast tests test a fiction.

Each scenario runs against both, through the WorkerQueue protocol only.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

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
