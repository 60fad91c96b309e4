"""The worker's own logic against the in-memory queue (worker.testing.InMemoryQueue):
shutdown, abandon, claim coalescing and the finish batcher, in milliseconds.

The same behaviour against real Postgres, Deno and worker processes is in
tests/e2e/test_worker_runs.py and tests/e2e/test_worker_resilience.py.
"""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest

from worker.chat_client import ActAs, ChatOk, ChatResult, ChatTransient
from worker.config import Settings
from worker.queue import FinishBatcher
from worker.retry import ErrorKind
from worker.runner import Worker
from worker.status import ExecutionStatus
from worker.testing import InMemoryQueue

WAIT_S = 10.0  # the bound on every wait below; each normally takes milliseconds


class GatedChat:
    """A chat client whose reply for an execution comes when the test opens its gate."""

    def __init__(self, *, open_all: bool = False) -> None:
        self.open_all = open_all
        self.gates: defaultdict[uuid.UUID, asyncio.Event] = defaultdict(asyncio.Event)
        self.calls: list[uuid.UUID] = []
        self.cancelled: list[uuid.UUID] = []
        self.closed = False

    async def reply(self, act_as: ActAs, timeout_s: float) -> ChatResult:
        self.calls.append(act_as.execution_id)
        if not self.open_all:
            try:
                await self.gates[act_as.execution_id].wait()
            except asyncio.CancelledError:
                self.cancelled.append(act_as.execution_id)
                raise
        return ChatOk(message_id=uuid.uuid4(), content=f"reply to {act_as.execution_id}")

    def open(self, *execution_ids: uuid.UUID) -> None:
        for execution_id in execution_ids:
            self.gates[execution_id].set()

    async def aclose(self) -> None:
        self.closed = True


def settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": "postgresql://unused@127.0.0.1:1/unused", "worker_id": "w-test",
        "worker_concurrency": 4, "worker_per_user_limit": 0, "lease_seconds": 2,
        "heartbeat_interval_s": 0.05, "poll_interval_s": 0.05, "shutdown_grace_s": 5.0,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


async def until(predicate: Callable[[], bool], what: str) -> None:
    """Let the event loop run until predicate() holds (at most WAIT_S)."""
    deadline = asyncio.get_running_loop().time() + WAIT_S
    for _ in itertools.count():
        if predicate():
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.001)


@asynccontextmanager
async def running(worker: Worker) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(worker.run())
    try:
        yield task
    finally:
        if not task.done():
            worker.request_stop()
            worker.request_stop()
        await asyncio.wait_for(task, WAIT_S)


def statuses(queue: InMemoryQueue, ids: list[uuid.UUID]) -> list[str]:
    return [queue.executions[i].status for i in ids]


# --- running -------------------------------------------------------------------------------


async def test_worker__runs_claimed_executions_and_closes_cleanly() -> None:
    queue, chat = InMemoryQueue(), GatedChat(open_all=True)
    ids = queue.add(6)
    worker = Worker(settings(), chat=chat, queue=queue)
    async with running(worker):
        await until(lambda: all(s == "succeeded" for s in statuses(queue, ids)), "all six succeeded")
        assert queue.workers == {"w-test"} and queue.opened
    assert queue.closed and chat.closed and queue.workers == set()
    assert worker.stats["succeeded"] == 6 and worker.stats["claimed"] == 6
    assert sorted(chat.calls) == sorted(ids)


# --- database blips ------------------------------------------------------------------------


async def test_blip__start_and_finish_are_retried_not_left_to_the_lease() -> None:
    queue, chat = InMemoryQueue(), GatedChat(open_all=True)
    queue.fail_writes = {"start": 2, "finish": 2}
    ids = queue.add(1)
    worker = Worker(settings(), chat=chat, queue=queue)
    async with running(worker):
        await until(lambda: statuses(queue, ids) == ["succeeded"], "the run to succeed")
    assert queue.failed_writes == ["start", "start", "finish", "finish"]
    assert queue.executions[ids[0]].attempt == 1 and queue.requeues == []
    assert chat.calls == ids  # one model call


async def test_blip__a_failed_requeue_is_retried_and_waits_at_least_the_minimum_backoff() -> None:
    queue = InMemoryQueue()
    queue.fail_writes = {"requeue_later": 1}
    ids = queue.add(1, max_attempts=3)

    class Down(GatedChat):
        async def reply(self, act_as: ActAs, timeout_s: float) -> ChatResult:
            self.calls.append(act_as.execution_id)
            return ChatTransient(error="HTTP 503", kind=ErrorKind.TRANSIENT)

    worker = Worker(settings(retry_min_s=2.0), chat=Down(), queue=queue)
    async with running(worker):
        await until(lambda: bool(queue.requeues), "the run to be requeued")
    assert statuses(queue, ids) == ["queued"]
    assert queue.failed_writes == ["requeue_later"]
    [(execution_id, kind, delay_s)] = queue.requeues
    assert execution_id == ids[0] and kind == "transient" and delay_s >= 2.0


async def test_blip__writes_are_retried_only_for_db_write_retry_s() -> None:
    queue, chat = InMemoryQueue(), GatedChat(open_all=True)
    queue.fail_writes = {"finish": 1}
    ids = queue.add(1, max_attempts=3)
    worker = Worker(settings(db_write_retry_s=0), chat=chat, queue=queue)
    async with running(worker):
        # no retry: the finish error reaches the run, which is requeued as a worker error
        await until(lambda: bool(queue.requeues), "the run to be requeued")
    assert statuses(queue, ids) == ["queued"]
    assert queue.failed_writes == ["finish"]
    assert "worker error" in (queue.executions[ids[0]].error or "")


# --- shutdown ------------------------------------------------------------------------------


async def test_shutdown__in_flight_runs_finish_within_the_grace_period() -> None:
    queue, chat = InMemoryQueue(), GatedChat()
    ids = queue.add(3)
    worker = Worker(settings(shutdown_grace_s=WAIT_S), chat=chat, queue=queue)
    async with running(worker) as run:
        await until(lambda: len(chat.calls) == 3, "three chat calls")
        claims_before = len(queue.claims)
        worker.request_stop()
        await asyncio.sleep(0.01)
        assert not run.done(), "the worker waits for its in-flight runs"
        chat.open(*ids)
        await asyncio.wait_for(run, WAIT_S)
    assert statuses(queue, ids) == ["succeeded"] * 3
    assert queue.releases == [] and worker.stats["released"] == 0
    assert len(queue.claims) == claims_before, "no claim after the stop"
    assert queue.workers == set()


async def test_shutdown__runs_left_after_the_grace_period_are_released() -> None:
    queue, chat = InMemoryQueue(), GatedChat()
    ids = queue.add(3)
    worker = Worker(settings(shutdown_grace_s=0.05), chat=chat, queue=queue)
    async with running(worker) as run:
        await until(lambda: len(chat.calls) == 3, "three chat calls")
        worker.request_stop()
        await asyncio.wait_for(run, WAIT_S)
    assert [sorted(r) for r in queue.releases] == [sorted(ids)]
    assert statuses(queue, ids) == ["queued"] * 3
    assert [queue.executions[i].attempt for i in ids] == [0, 0, 0], "the attempt is given back"
    assert worker.stats["released"] == 3 and worker.stats["abandoned"] == 0
    assert sorted(chat.cancelled) == sorted(ids), "the chat calls were abandoned"
    assert queue.finish_batches == []


async def test_shutdown__a_second_stop_skips_the_grace_period() -> None:
    queue, chat = InMemoryQueue(), GatedChat()
    ids = queue.add(2)
    worker = Worker(settings(shutdown_grace_s=3600), chat=chat, queue=queue)
    async with running(worker) as run:
        await until(lambda: len(chat.calls) == 2, "two chat calls")
        worker.request_stop()
        await asyncio.sleep(0.01)
        assert not run.done()
        worker.request_stop()
        await asyncio.wait_for(run, WAIT_S)  # not the hour of grace
    assert statuses(queue, ids) == ["queued"] * 2 and worker.stats["released"] == 2


# --- abandon -------------------------------------------------------------------------------


async def test_abandon__a_cancel_notification_stops_the_run_at_once() -> None:
    queue, chat = InMemoryQueue(), GatedChat()
    cancelled, other = queue.add(2)
    worker = Worker(settings(), chat=chat, queue=queue)
    async with running(worker):
        await until(lambda: len(chat.calls) == 2, "two chat calls")
        queue.cancel(cancelled)
        await until(lambda: cancelled not in worker.inflight, "the cancelled run to be dropped")
        assert chat.cancelled == [cancelled] and worker.stats["abandoned"] == 1
        chat.open(other)
        await until(lambda: queue.executions[other].status == "succeeded", "the other run to finish")
    assert queue.executions[cancelled].status == "cancelled", "nothing overwrote the cancel"
    finished_ids = {item["id"] for batch in queue.finish_batches for item in batch}
    assert finished_ids == {str(other)}


async def test_abandon__a_run_the_heartbeat_says_is_no_longer_ours() -> None:
    queue, chat = InMemoryQueue(), GatedChat()
    (lost,) = queue.add(1)
    worker = Worker(settings(), chat=chat, queue=queue)
    async with running(worker):
        await until(lambda: len(chat.calls) == 1, "the chat call")
        # cancelled while the NOTIFY was lost (the listener was reconnecting): only the heartbeat tells
        queue.executions[lost].status = ExecutionStatus.CANCELLED
        await until(lambda: lost not in worker.inflight, "the heartbeat to abandon the run")
        assert chat.cancelled == [lost] and worker.stats["abandoned"] == 1
    assert queue.finish_batches == [] and queue.releases == []


async def test_abandon__a_new_attempt_of_a_run_still_in_flight_supersedes_it() -> None:
    queue, chat = InMemoryQueue(), GatedChat()
    (execution_id,) = queue.add(1)
    worker = Worker(settings(), chat=chat, queue=queue)
    async with running(worker):
        await until(lambda: len(chat.calls) == 1, "the first attempt's chat call")
        # the lease ran out while the worker was stalled; the rescuer requeued the
        # execution and this same worker claims it again as attempt 2
        execution = queue.executions[execution_id]
        execution.status, execution.worker_id = ExecutionStatus.QUEUED, None
        queue.notify("agent_task_executions", "")
        await until(lambda: len(chat.calls) == 2, "the second attempt's chat call")
        await until(lambda: chat.cancelled == [execution_id], "the first attempt to be abandoned")
        assert worker.inflight[execution_id].execution.attempt == 2, "the new attempt is the one tracked"
        chat.open(execution_id)
        await until(lambda: execution.status == "succeeded", "the second attempt to finish")
        await until(lambda: not worker.inflight, "nothing left in flight")
    assert execution.attempt == 2 and worker.stats["succeeded"] == 1 and worker.stats["abandoned"] == 1


# --- claim coalescing ----------------------------------------------------------------------


async def test_claim__a_single_free_slot_under_backlog_waits_to_claim_several() -> None:
    queue, chat = InMemoryQueue(), GatedChat()
    ids = queue.add(10, priority=0)
    worker = Worker(settings(worker_concurrency=4), chat=chat, queue=queue)
    worker.claim_coalesce_s = 0.5  # the second release (microseconds away) surely lands inside it
    async with running(worker):
        await until(lambda: len(chat.calls) == 4, "the first claim's four runs")
        assert queue.claims == [4]
        first, second = chat.calls[0], chat.calls[1]
        chat.open(first)
        await until(lambda: queue.executions[first].status == "succeeded" and first not in worker.inflight,
                    "the first run to finish")
        for _ in range(20):  # let the claim loop react to the free slot
            await asyncio.sleep(0)
        assert queue.claims == [4], "one free slot under backlog is not claimed alone at once"
        chat.open(second)
        await until(lambda: len(queue.claims) > 1, "the coalesced claim")
        assert queue.claims[1] == 2, "the claim waited and took both free slots in one call"
        chat.open(*ids)
        await until(lambda: all(s == "succeeded" for s in statuses(queue, ids)), "all runs")


async def test_claim__without_backlog_a_free_slot_is_claimed_at_once() -> None:
    queue, chat = InMemoryQueue(), GatedChat()
    queue.add(2)
    worker = Worker(settings(worker_concurrency=4), chat=chat, queue=queue)
    worker.claim_coalesce_s = 3600.0  # would hang the test if it were applied
    async with running(worker):
        await until(lambda: len(chat.calls) == 2, "both runs")
        late = queue.add(1)
        await until(lambda: len(chat.calls) == 3, "the late run claimed on its NOTIFY")
        chat.open(*chat.calls)
        await until(lambda: queue.executions[late[0]].status == "succeeded", "the late run")


# --- finish batcher ------------------------------------------------------------------------


async def test_finish__concurrent_finishes_go_out_in_few_batches() -> None:
    queue, chat = InMemoryQueue(), GatedChat()
    ids = queue.add(8)
    worker = Worker(settings(worker_concurrency=8), chat=chat, queue=queue)
    async with running(worker):
        await until(lambda: len(chat.calls) == 8, "eight chat calls")
        chat.open(*ids)
        await until(lambda: all(s == "succeeded" for s in statuses(queue, ids)), "all eight")
    sizes = [len(b) for b in queue.finish_batches]
    assert sum(sizes) == 8 and len(sizes) < 8, sizes


class _Flush:
    """finish_many for FinishBatcher: records batches and holds each until released."""

    def __init__(self, fenced: frozenset[str] = frozenset(), fail: Exception | None = None) -> None:
        self.batches: list[tuple[str, list[str]]] = []
        self.gate = asyncio.Event()
        self.fenced = fenced
        self.fail = fail

    async def __call__(self, worker_id: str, items: list[dict[str, Any]]) -> set[str]:
        self.batches.append((worker_id, [item["id"] for item in items]))
        await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        return {item["id"] for item in items} - self.fenced


def _item(n: int) -> dict[str, Any]:
    return {"id": f"id-{n}", "attempt": 1, "status": "succeeded"}


async def test_finish_batcher__first_goes_alone_the_rest_wait_and_go_together() -> None:
    flush = _Flush(fenced=frozenset({"id-3"}))
    batcher = FinishBatcher(flush, max_batch=2)
    first = asyncio.create_task(batcher.submit("w", _item(0)))
    await until(lambda: len(flush.batches) == 1, "the first batch")
    rest = [asyncio.create_task(batcher.submit("w", _item(n))) for n in range(1, 6)]
    await asyncio.sleep(0.01)
    assert flush.batches == [("w", ["id-0"])], "nothing else goes out while a batch is in flight"
    flush.gate.set()
    results = await asyncio.gather(first, *rest)
    assert flush.batches[1:] == [("w", ["id-1", "id-2"]), ("w", ["id-3", "id-4"]), ("w", ["id-5"])]
    assert results == [True, True, True, False, True, True], "a fenced id comes back False"


async def test_finish_batcher__batches_are_per_worker() -> None:
    flush = _Flush()
    flush.gate.set()
    batcher = FinishBatcher(flush)
    await asyncio.gather(batcher.submit("a", _item(0)), batcher.submit("b", _item(1)), batcher.submit("a", _item(2)))
    # submitted in one loop step: one drain, one batch per worker id
    assert sorted(flush.batches) == [("a", ["id-0", "id-2"]), ("b", ["id-1"])]


async def test_finish_batcher__an_error_reaches_every_caller_of_the_batch() -> None:
    flush = _Flush(fail=ConnectionError("database gone"))
    batcher = FinishBatcher(flush)
    first = asyncio.create_task(batcher.submit("w", _item(0)))
    await until(lambda: len(flush.batches) == 1, "the first batch")
    second = asyncio.create_task(batcher.submit("w", _item(1)))
    flush.gate.set()
    for task in (first, second):
        with pytest.raises(ConnectionError, match="database gone"):
            await task


# --- the chat function unreachable ----------------------------------------------------------


async def test_outage__unreachable_function_spends_no_attempt_and_opens_the_breaker() -> None:
    queue = InMemoryQueue()
    ids = queue.add(4, max_attempts=1)  # one attempt each: any attempt spent would fail them

    class Outage(GatedChat):
        def __init__(self) -> None:
            super().__init__(open_all=True)
            self.down = True

        async def reply(self, act_as: ActAs, timeout_s: float) -> ChatResult:
            if self.down:
                self.calls.append(act_as.execution_id)
                return ChatTransient(error="chat function unreachable: refused", kind=ErrorKind.UNREACHABLE,
                                     unreachable=True)
            return await super().reply(act_as, timeout_s)

    chat = Outage()
    worker = Worker(settings(retry_min_s=0.0, retry_base_s=0.0), chat=chat, queue=queue)
    worker.breaker.cooldown_min_s = worker.breaker._cooldown_s = 0.2
    async with running(worker):
        await until(lambda: queue.circuit_reports[:1] == [(True, "chat function unreachable: refused")],
                    "the breaker to open and be reported")
        calls_when_open = len(chat.calls)
        await asyncio.sleep(0.1)
        assert len(chat.calls) == calls_when_open, "no claim while the breaker is open"
        assert all(s == "queued" for s in statuses(queue, ids)), statuses(queue, ids)
        assert all(queue.executions[i].attempt == 0 for i in ids), "no attempt spent"
        assert {kind for _, kind, _ in queue.requeues} == {"unreachable"}
        chat.down = False
        await until(lambda: all(s == "succeeded" for s in statuses(queue, ids)), "all four to succeed")
    assert queue.circuit_reports[-1] == (False, None)
    assert worker.stats["failed"] == 0
