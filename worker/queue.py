"""What the worker needs of its queue: a small Protocol, the rows it trades, and
the batchers that coalesce concurrent starts and finishes.

`worker.runner.Worker` takes any `WorkerQueue`. Production uses
`worker.db.PostgresQueue` (the `scheduler.*` functions over a pool, and a
LISTEN connection); fast unit tests use `worker.testing.InMemoryQueue`, as
Procrastinate's in-memory connector does. Nothing here does I/O.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Generic, Protocol, TypeVar

from worker.status import ExecutionStatus
from worker.webhooks import Delivery

# LISTEN channels (see the queue transitions and scheduling migrations).
CHANNEL_EXECUTIONS: Final = "agent_task_executions"
CHANNEL_PLAN: Final = "agent_tasks_plan"
CHANNEL_CANCEL: Final = "agent_task_cancel"
CHANNEL_WEBHOOKS: Final = "webhook_deliveries"
CHANNELS: Final = (CHANNEL_EXECUTIONS, CHANNEL_PLAN, CHANNEL_CANCEL, CHANNEL_WEBHOOKS)

# Each item of start_executions is a subtransaction with its own XID; more
# than 64 in one transaction overflow Postgres' per-backend subxid cache and
# slow every snapshot in the cluster, so batches stay well below that.
START_BATCH_MAX: Final = 48
FINISH_BATCH_MAX: Final = 200

SQLSTATE_NO_DATA_FOUND: Final = "P0002"
SQLSTATE_FENCED: Final = "55000"


class ConversationGone(Exception):
    """start: the task's conversation was deleted (a permanent error for the run)."""


class Fenced(Exception):
    """The execution is no longer running for this worker and attempt (cancelled, rescued)."""


@dataclass(slots=True)
class ClaimedExecution:
    """A row of scheduler.claim_executions(): the execution plus the task fields it needs."""

    id: uuid.UUID
    task_id: uuid.UUID
    user_id: uuid.UUID
    agent_id: uuid.UUID
    trigger_type: str
    attempt: int
    max_attempts: int
    scheduled_for: datetime
    timeout_seconds: int
    conversation_id: uuid.UUID | None
    user_message_id: uuid.UUID | None
    resolved_prompt: str | None
    task_name: str
    prompt_template: str
    prompt_variables: dict[str, Any]
    timezone: str
    conversation_mode: str
    task_conversation_id: uuid.UUID | None
    task_state: dict[str, Any]


@dataclass(slots=True, frozen=True)
class Started:
    """Result of scheduler.start_execution()."""

    conversation_id: uuid.UUID
    user_message_id: uuid.UUID
    created_conversation: bool


@dataclass(slots=True, frozen=True)
class StartRow:
    """One item's result of scheduler.start_executions(): started, or its error's SQLSTATE and message."""

    id: str
    conversation_id: uuid.UUID | None
    user_message_id: uuid.UUID | None
    created_conversation: bool | None
    error_code: str | None
    error_message: str | None


class Notification(Protocol):
    """A NOTIFY as the listener hands it over (psycopg's Notify has these attributes)."""

    @property
    def channel(self) -> str: ...

    @property
    def payload(self) -> str: ...


class Listener(Protocol):
    """A live LISTEN on every channel of CHANNELS."""

    def notifies(self, idle_s: float) -> AsyncIterator[Notification]:
        """The notifications as they arrive; ends after `idle_s` seconds without one."""
        ...

    async def check(self) -> None:
        """Prove the connection is alive (raises a connection error when it is not)."""

    async def attach(self, worker_id: str) -> bool:
        """Make this connection's session the worker's liveness (scheduler.attach_worker_session);
        False when the worker is not registered."""
        ...

    async def close(self) -> None: ...


class WorkerQueue(Protocol):
    """Everything the worker asks of the queue. Each call is one guarded transition
    (docs/state-machine.md); connection errors surface as the exceptions in
    worker.runner.DB_TRANSIENT_ERRORS."""

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def connect_listener(self) -> Listener: ...

    async def register_worker(self, worker_id: str, hostname: str, pid: int, concurrency: int) -> None: ...

    async def unregister_worker(self, worker_id: str) -> None: ...

    async def enqueue_due(self, limit: int) -> int: ...

    async def rescue_expired(self) -> int: ...

    async def queue_stats(self) -> list[dict[str, Any]]:
        """scheduler.queue_stats(): (status, count, oldest, next_run_after) rows (the metrics)."""
        ...

    async def claim_webhook_deliveries(self, worker_id: str, limit: int, lease_seconds: int) -> list[Delivery]:
        """Due webhook deliveries, leased to this worker (worker.webhooks)."""
        ...

    async def finish_webhook_delivery(self, delivery_id: uuid.UUID, worker_id: str, http_status: int | None,
                                      error: str | None, retry_in_s: float | None, disable: bool) -> str | None:
        """The outcome of one POST: the delivery's new status, or None when the fence dropped it."""
        ...

    async def webhook_address_problem(self, addresses: list[str]) -> str | None:
        """Why the outbound policy refuses connecting to one of these addresses, or None."""
        ...

    async def rescue_dead_workers(self, grace_s: float) -> tuple[int, int]:
        """Requeue the runs of workers whose session ended `grace_s` ago or more:
        (executions moved, workers lost but still within the grace)."""
        ...

    async def tasks_to_plan(self, limit: int) -> list[dict[str, Any]]: ...

    async def apply_plan(self, task_id: uuid.UUID, schedule_version: int, next_run_at: datetime | None,
                         complete: bool, due: Sequence[datetime], more: bool) -> bool: ...

    async def fail_plan(self, task_id: uuid.UUID, schedule_version: int, error: str) -> bool: ...

    async def claim(self, worker_id: str, limit: int, lease_seconds: int,
                    per_user_limit: int | None) -> list[ClaimedExecution]: ...

    async def heartbeat(self, worker_id: str, ids: Sequence[uuid.UUID], lease_seconds: int,
                        in_flight: int) -> list[tuple[uuid.UUID, str]]:
        """Extend leases; returns the ids (and their status) this worker no longer owns."""
        ...

    async def start(self, execution_id: uuid.UUID, worker_id: str, attempt: int,
                    resolved_prompt: str, conversation_title: str | None) -> Started:
        """Conversation + the scheduled user message, exactly once; raises ConversationGone or Fenced."""
        ...

    async def finish(self, execution_id: uuid.UUID, worker_id: str, attempt: int, status: ExecutionStatus, *,
                     output: str | None = None, error: str | None = None, error_kind: str | None = None,
                     assistant_message_id: uuid.UUID | None = None,
                     usage: dict[str, Any] | None = None) -> bool:
        """running -> status; False when the fence dropped the write."""
        ...

    async def requeue_later(self, execution_id: uuid.UUID, worker_id: str, attempt: int, error: str,
                            error_kind: str, delay_seconds: float, spend_attempt: bool = True) -> str | None:
        """'queued' (attempts left, or `spend_attempt` False: the attempt is given back),
        'failed' (none left) or None (fenced)."""
        ...

    async def report_chat_circuit(self, worker_id: str, is_open: bool, reason: str | None) -> None:
        """The worker's circuit breaker on the chat function opened or closed (queue stats)."""
        ...

    async def release(self, worker_id: str, ids: Sequence[uuid.UUID]) -> int: ...


def finish_item(execution_id: uuid.UUID, attempt: int, status: ExecutionStatus, *, output: str | None,
                error: str | None, error_kind: str | None, assistant_message_id: uuid.UUID | None,
                usage: dict[str, Any] | None) -> dict[str, Any]:
    """One element of scheduler.finish_executions' p_results (absent keys stay NULL)."""
    item: dict[str, Any] = {"id": str(execution_id), "attempt": attempt, "status": str(status)}
    optional = {"output": output, "error": error, "error_kind": error_kind,
                "assistant_message_id": None if assistant_message_id is None else str(assistant_message_id),
                "usage": usage}
    item.update({k: v for k, v in optional.items() if v is not None})
    return item


R = TypeVar("R")


class _Coalescer(Generic[R]):
    """Coalesces concurrent calls of one scheduler function into batch calls.

    A call goes out at once when no batch is in flight; calls that arrive
    meanwhile wait for it and then go together (in chunks of max_batch, run
    concurrently). At low load this adds no latency; at high load it turns N
    round trips into a few.
    """

    name = "batcher"

    def __init__(self, max_batch: int) -> None:
        self._max_batch = max_batch
        self._pending: list[tuple[str, dict[str, Any], asyncio.Future[R]]] = []
        self._draining = False

    async def _submit(self, worker_id: str, item: dict[str, Any]) -> R:
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._pending.append((worker_id, item, future))
        if not self._draining:
            self._draining = True
            asyncio.get_running_loop().create_task(self._drain(), name=self.name)
        return await future

    async def _drain(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                by_worker: dict[str, list[tuple[dict[str, Any], asyncio.Future[R]]]] = {}
                for worker_id, item, future in batch:
                    by_worker.setdefault(worker_id, []).append((item, future))
                await asyncio.gather(*(
                    self._flush(worker_id, entries[i:i + self._max_batch])
                    for worker_id, entries in by_worker.items()
                    for i in range(0, len(entries), self._max_batch)))
        finally:
            self._draining = False

    async def _flush(self, worker_id: str, entries: list[tuple[dict[str, Any], asyncio.Future[R]]]) -> None:
        raise NotImplementedError


# finish_many(worker_id, items) -> the ids applied (the fence dropped the others)
FinishMany = Callable[[str, list[dict[str, Any]]], Awaitable[set[str]]]


class FinishBatcher(_Coalescer[bool]):
    """Finishes go out as scheduler.finish_executions calls (one task-counter
    update per task and batch instead of one per execution)."""

    name = "finish-batcher"

    def __init__(self, finish_many: FinishMany, max_batch: int = FINISH_BATCH_MAX) -> None:
        super().__init__(max_batch)
        self._finish_many = finish_many

    async def submit(self, worker_id: str, item: dict[str, Any]) -> bool:
        """Finish one execution (a finish_item); True when applied, False when the fence dropped it."""
        return await self._submit(worker_id, item)

    async def _flush(self, worker_id: str, entries: list[tuple[dict[str, Any], asyncio.Future[bool]]]) -> None:
        try:
            applied = await self._finish_many(worker_id, [item for item, _ in entries])
        except Exception as exc:
            for _, future in entries:
                if not future.done():
                    future.set_exception(exc)
            return
        for item, future in entries:
            if not future.done():
                future.set_result(str(item["id"]) in applied)


# start_many(worker_id, items) -> one StartRow per item it processed, by id
StartMany = Callable[[str, list[dict[str, Any]]], Awaitable[dict[str, StartRow]]]
StartOne = Callable[[uuid.UUID, str, int, str, str | None], Awaitable[Started]]


class StartBatcher(_Coalescer[Started]):
    """start_execution calls go out as scheduler.start_executions.

    The executions of one claim batch are spawned together and each asks to
    start in its first step, before the drain task runs: they go out as one
    call (chunks of START_BATCH_MAX). An item that fails with an unexpected
    error (not fenced, not conversation-gone) is retried alone with
    start_one, whose exception then reaches the caller as before.
    """

    name = "start-batcher"

    def __init__(self, start_many: StartMany, start_one: StartOne, max_batch: int = START_BATCH_MAX) -> None:
        super().__init__(max_batch)
        self._start_many = start_many
        self._start_one = start_one

    async def submit(self, worker_id: str, execution_id: uuid.UUID, attempt: int, resolved_prompt: str,
                     conversation_title: str | None) -> Started:
        item: dict[str, Any] = {"id": str(execution_id), "attempt": attempt, "resolved_prompt": resolved_prompt}
        if conversation_title is not None:
            item["conversation_title"] = conversation_title
        return await self._submit(worker_id, item)

    async def _flush(self, worker_id: str, entries: list[tuple[dict[str, Any], asyncio.Future[Started]]]) -> None:
        if len(entries) == 1:  # nothing to batch: the plain call raises the same exceptions
            item, future = entries[0]
            await self._single(worker_id, item, future)
            return
        try:
            rows = await self._start_many(worker_id, [item for item, _ in entries])
        except Exception as exc:
            for _, future in entries:
                if not future.done():
                    future.set_exception(exc)
            return
        retry: list[tuple[dict[str, Any], asyncio.Future[Started]]] = []
        for item, future in entries:
            if future.done():
                continue
            row = rows.get(item["id"])
            if row is None:
                retry.append((item, future))
            elif row.error_code is None and row.conversation_id is not None and row.user_message_id is not None:
                future.set_result(Started(conversation_id=row.conversation_id, user_message_id=row.user_message_id,
                                          created_conversation=bool(row.created_conversation)))
            elif row.error_code == SQLSTATE_NO_DATA_FOUND:
                future.set_exception(ConversationGone(row.error_message or "conversation gone"))
            elif row.error_code == SQLSTATE_FENCED:
                future.set_exception(Fenced(row.error_message or "fenced"))
            else:  # e.g. a deadlock victim inside the batch: try it alone
                retry.append((item, future))
        for item, future in retry:
            await self._single(worker_id, item, future)

    async def _single(self, worker_id: str, item: dict[str, Any], future: asyncio.Future[Started]) -> None:
        try:
            started = await self._start_one(uuid.UUID(item["id"]), worker_id, item["attempt"],
                                            item["resolved_prompt"], item.get("conversation_title"))
        except Exception as exc:
            if not future.done():
                future.set_exception(exc)
            return
        if not future.done():
            future.set_result(started)
