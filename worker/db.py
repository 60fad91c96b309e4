"""The worker's only door to Postgres: the `scheduler.*` functions, called by name.

Every queue transition is a guarded SQL function in
supabase/migrations/20261121000500_queue_transitions.sql (and scheduling in
20261121000600_scheduling.sql); this module gives each one a
typed async wrapper and nothing else (no SQL is assembled here). Calls run in
autocommit on a shared pool, one round trip each; psycopg prepares them after
a few uses.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Generic, TypeVar

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

# LISTEN channels (see the queue migration).
CHANNEL_EXECUTIONS: Final = "agent_task_executions"
CHANNEL_PLAN: Final = "agent_tasks_plan"
CHANNEL_CANCEL: Final = "agent_task_cancel"
CHANNELS: Final = (CHANNEL_EXECUTIONS, CHANNEL_PLAN, CHANNEL_CANCEL)

_LISTEN: Final = {
    CHANNEL_EXECUTIONS: "listen agent_task_executions",
    CHANNEL_PLAN: "listen agent_tasks_plan",
    CHANNEL_CANCEL: "listen agent_task_cancel",
}

_ENQUEUE_DUE: Final = "select scheduler.enqueue_due(null, %s)"
_RESCUE_EXPIRED: Final = "select scheduler.rescue_expired()"
_TASKS_TO_PLAN: Final = "select * from scheduler.tasks_to_plan(%s)"
_APPLY_PLAN: Final = "select scheduler.apply_plan(%s, %s, %s, %s, %s::timestamptz[], %s::timestamptz[])"
_FAIL_PLAN: Final = "select scheduler.fail_plan(%s, %s, %s)"
_CLAIM: Final = "select * from scheduler.claim_executions(%s, %s, %s, %s)"
_HEARTBEAT: Final = "select id, status from scheduler.heartbeat(%s, %s::uuid[], %s, %s)"
_START: Final = "select * from scheduler.start_execution(%s, %s, %s, %s, %s)"
_START_MANY: Final = (
    "select id, conversation_id, user_message_id, created_conversation, error_code, error_message"
    " from scheduler.start_executions(%s, %s)")
# Each item of start_executions is a subtransaction with its own XID; more
# than 64 in one transaction overflow Postgres' per-backend subxid cache and
# slow every snapshot in the cluster, so batches stay well below that.
START_BATCH_MAX: Final = 48
_FINISH_MANY: Final = "select id from scheduler.finish_executions(%s, %s)"
FINISH_BATCH_MAX: Final = 200
DEADLOCK_RETRIES: Final = 3
_REQUEUE_LATER: Final = "select scheduler.requeue_later(%s, %s, %s, %s, %s, %s)"
_RELEASE: Final = "select scheduler.release_executions(%s, %s::uuid[])"
_REGISTER: Final = "select scheduler.register_worker(%s, %s, %s, %s)"
_UNREGISTER: Final = "select scheduler.unregister_worker(%s)"

R = TypeVar("R")

SQLSTATE_NO_DATA_FOUND: Final = "P0002"
SQLSTATE_FENCED: Final = "55000"


class ConversationGone(Exception):
    """start_execution: the task's conversation was deleted (a permanent error for the run)."""


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


def make_pool(database_url: str, size: int, worker_id: str) -> AsyncConnectionPool:
    """A fixed-size pool of autocommit connections (opened by the caller with `await pool.open()`)."""
    return AsyncConnectionPool(
        database_url,
        min_size=size,
        max_size=size,
        open=False,
        name="agent-tasks-worker",
        kwargs={"autocommit": True, "application_name": f"agent-tasks worker {worker_id}"[:63]},
        timeout=30.0,
    )


async def connect_listener(database_url: str, worker_id: str) -> psycopg.AsyncConnection[Any]:
    """A dedicated autocommit connection LISTENing on every channel, with TCP keepalives
    so a silently dead peer is noticed."""
    conn = await psycopg.AsyncConnection.connect(
        database_url, autocommit=True,
        application_name=f"agent-tasks listener {worker_id}"[:63],
        keepalives=1, keepalives_idle=10, keepalives_interval=5, keepalives_count=3,
    )
    for channel in CHANNELS:
        await conn.execute(_LISTEN[channel])
    return conn


class _Coalescer(Generic[R]):
    """Coalesces concurrent calls of one scheduler function into batch calls.

    A call goes out at once when no batch is in flight; calls that arrive
    meanwhile wait for it and then go together (in chunks of max_batch, run
    concurrently). At low load this adds no latency; at high load it turns N
    round trips into a few.
    """

    name = "batcher"

    def __init__(self, queue: Queue, max_batch: int) -> None:
        self._queue = queue
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


class FinishBatcher(_Coalescer[bool]):
    """Finishes go out as scheduler.finish_executions calls (one task-counter
    update per task and batch instead of one per execution)."""

    name = "finish-batcher"

    def __init__(self, queue: Queue, max_batch: int = FINISH_BATCH_MAX) -> None:
        super().__init__(queue, max_batch)

    async def submit(self, worker_id: str, item: dict[str, Any]) -> bool:
        """Finish one execution; True when applied, False when the fence dropped it."""
        return await self._submit(worker_id, item)

    async def _flush(self, worker_id: str, entries: list[tuple[dict[str, Any], asyncio.Future[bool]]]) -> None:
        items = [item for item, _ in entries]
        for attempt in range(DEADLOCK_RETRIES):
            try:
                rows = await self._queue._rows(_FINISH_MANY, (worker_id, Jsonb(items)))
                break
            except psycopg.errors.DeadlockDetected:
                # a heartbeat touching the same rows in another order: the
                # statement rolled back whole, so simply run it again
                if attempt == DEADLOCK_RETRIES - 1:
                    raise
            except Exception as exc:
                for _, future in entries:
                    if not future.done():
                        future.set_exception(exc)
                return
        applied = {str(r["id"]) for r in rows}
        for item, future in entries:
            if not future.done():
                future.set_result(str(item["id"]) in applied)


class StartBatcher(_Coalescer[Started]):
    """start_execution calls go out as scheduler.start_executions.

    The executions of one claim batch are spawned together and each asks to
    start in its first step, before the drain task runs: they go out as one
    call (chunks of START_BATCH_MAX). An item that fails with an unexpected
    error (not fenced, not conversation-gone) is retried alone with
    start_execution, whose exception then reaches the caller as before.
    """

    name = "start-batcher"

    def __init__(self, queue: Queue, max_batch: int = START_BATCH_MAX) -> None:
        super().__init__(queue, max_batch)

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
            async with self._queue.pool.connection() as conn:
                cur = await conn.execute(_START_MANY, (worker_id, Jsonb([item for item, _ in entries])))
                rows = {str(r[0]): r for r in await cur.fetchall()}
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
            elif row[4] is None:
                future.set_result(Started(conversation_id=row[1], user_message_id=row[2],
                                          created_conversation=bool(row[3])))
            elif row[4] == SQLSTATE_NO_DATA_FOUND:
                future.set_exception(ConversationGone(row[5] or "conversation gone"))
            elif row[4] == SQLSTATE_FENCED:
                future.set_exception(Fenced(row[5] or "fenced"))
            else:  # e.g. a deadlock victim inside the batch: try it alone
                retry.append((item, future))
        for item, future in retry:
            await self._single(worker_id, item, future)

    async def _single(self, worker_id: str, item: dict[str, Any], future: asyncio.Future[Started]) -> None:
        try:
            started = await self._queue.start_execution(
                uuid.UUID(item["id"]), worker_id, item["attempt"], item["resolved_prompt"],
                item.get("conversation_title"))
        except Exception as exc:
            if not future.done():
                future.set_exception(exc)
            return
        if not future.done():
            future.set_result(started)


class Queue:
    """Typed calls of the scheduler functions over a pool."""

    def __init__(self, pool: AsyncConnectionPool) -> None:
        self.pool = pool
        self._finishes = FinishBatcher(self)
        self._starts = StartBatcher(self)

    async def _scalar(self, sql: str, params: Sequence[Any]) -> Any:
        async with self.pool.connection() as conn:
            cur = await conn.execute(sql, params)
            row = await cur.fetchone()
        return None if row is None else row[0]

    async def _rows(self, sql: str, params: Sequence[Any]) -> list[dict[str, Any]]:
        async with self.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(sql, params)
            return await cur.fetchall()

    # --- registry ---------------------------------------------------------

    async def register_worker(self, worker_id: str, hostname: str, pid: int, concurrency: int) -> None:
        await self._scalar(_REGISTER, (worker_id, hostname, pid, concurrency))

    async def unregister_worker(self, worker_id: str) -> None:
        await self._scalar(_UNREGISTER, (worker_id,))

    # --- scheduling -------------------------------------------------------

    async def enqueue_due(self, limit: int) -> int:
        return int(await self._scalar(_ENQUEUE_DUE, (limit,)) or 0)

    async def rescue_expired(self) -> int:
        return int(await self._scalar(_RESCUE_EXPIRED, ()) or 0)

    async def tasks_to_plan(self, limit: int) -> list[dict[str, Any]]:
        return await self._rows(_TASKS_TO_PLAN, (limit,))

    async def apply_plan(self, task_id: uuid.UUID, schedule_version: int, next_run_at: datetime | None,
                         complete: bool, skipped: Sequence[datetime], run: Sequence[datetime]) -> bool:
        return bool(await self._scalar(
            _APPLY_PLAN, (task_id, schedule_version, next_run_at, complete, list(skipped), list(run))))

    async def fail_plan(self, task_id: uuid.UUID, schedule_version: int, error: str) -> bool:
        """Mark a cron task the planner cannot compute as `error` (guarded on schedule_version)."""
        return bool(await self._scalar(_FAIL_PLAN, (task_id, schedule_version, error)))

    # --- executions -------------------------------------------------------

    async def claim(self, worker_id: str, limit: int, lease_seconds: int,
                    per_user_limit: int | None) -> list[ClaimedExecution]:
        rows = await self._rows(_CLAIM, (worker_id, limit, lease_seconds, per_user_limit))
        return [ClaimedExecution(**row) for row in rows]

    async def heartbeat(self, worker_id: str, ids: Sequence[uuid.UUID], lease_seconds: int,
                        in_flight: int) -> list[tuple[uuid.UUID, str]]:
        """Extend leases; returns the ids (and their status) this worker no longer owns."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(_HEARTBEAT, (worker_id, list(ids), lease_seconds, in_flight))
            return [(r[0], r[1]) for r in await cur.fetchall()]

    async def start(self, execution_id: uuid.UUID, worker_id: str, attempt: int,
                    resolved_prompt: str, conversation_title: str | None) -> Started:
        """start_execution, batched with the concurrent starts (StartBatcher): the executions of
        one claim batch start in one call. Raises ConversationGone or Fenced like start_execution."""
        return await self._starts.submit(worker_id, execution_id, attempt, resolved_prompt, conversation_title)

    async def start_execution(self, execution_id: uuid.UUID, worker_id: str, attempt: int,
                              resolved_prompt: str, conversation_title: str | None) -> Started:
        """One scheduler.start_execution call (conversation + the scheduled user message)."""
        try:
            async with self.pool.connection() as conn:
                cur = await conn.execute(
                    _START, (execution_id, worker_id, attempt, resolved_prompt, conversation_title))
                row = await cur.fetchone()
        except psycopg.Error as exc:
            if exc.sqlstate == SQLSTATE_NO_DATA_FOUND:
                raise ConversationGone(exc.diag.message_primary or str(exc)) from exc
            if exc.sqlstate == SQLSTATE_FENCED:
                raise Fenced(exc.diag.message_primary or str(exc)) from exc
            raise
        assert row is not None
        return Started(conversation_id=row[0], user_message_id=row[1], created_conversation=row[2])

    async def finish(self, execution_id: uuid.UUID, worker_id: str, attempt: int, status: str, *,
                     output: str | None = None, error: str | None = None, error_kind: str | None = None,
                     assistant_message_id: uuid.UUID | None = None,
                     usage: dict[str, Any] | None = None) -> bool:
        """running -> status; False when the fence dropped the write. Batched with
        concurrent finishes (FinishBatcher)."""
        item: dict[str, Any] = {"id": str(execution_id), "attempt": attempt, "status": status}
        if output is not None:
            item["output"] = output
        if error is not None:
            item["error"] = error
        if error_kind is not None:
            item["error_kind"] = error_kind
        if assistant_message_id is not None:
            item["assistant_message_id"] = str(assistant_message_id)
        if usage is not None:
            item["usage"] = usage
        return await self._finishes.submit(worker_id, item)

    async def requeue_later(self, execution_id: uuid.UUID, worker_id: str, attempt: int, error: str,
                            error_kind: str, delay_seconds: float) -> str | None:
        """'queued' (attempts left), 'failed' (none left) or None (fenced)."""
        result = await self._scalar(
            _REQUEUE_LATER, (execution_id, worker_id, attempt, error, error_kind, delay_seconds))
        return None if result is None else str(result)

    async def release(self, worker_id: str, ids: Sequence[uuid.UUID]) -> int:
        if not ids:
            return 0
        return int(await self._scalar(_RELEASE, (worker_id, list(ids))) or 0)
