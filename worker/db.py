"""The worker's only door to Postgres: the `scheduler.*` functions, called by name.

Every queue transition is a guarded SQL function in supabase/migrations/
(queue transitions in 20261121000500_queue_transitions.sql, scheduling in
20261121000600_scheduling.sql); `PostgresQueue` implements
`worker.queue.WorkerQueue` with one typed async wrapper per function and
nothing else (no SQL is assembled here). Calls run in autocommit on a shared
pool, one round trip each; psycopg prepares them after a few uses.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any, Final

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from worker.queue import (
    CHANNEL_CANCEL,
    CHANNEL_EXECUTIONS,
    CHANNEL_PLAN,
    CHANNEL_WEBHOOKS,
    CHANNELS,
    SQLSTATE_FENCED,
    SQLSTATE_NO_DATA_FOUND,
    ClaimedExecution,
    ConversationGone,
    Fenced,
    FinishBatcher,
    Notification,
    StartBatcher,
    Started,
    StartRow,
    WorkerQueue,
    finish_item,
)
from worker.status import ExecutionStatus
from worker.webhooks import Delivery

_LISTEN: Final = {
    CHANNEL_EXECUTIONS: "listen agent_task_executions",
    CHANNEL_PLAN: "listen agent_tasks_plan",
    CHANNEL_CANCEL: "listen agent_task_cancel",
    CHANNEL_WEBHOOKS: "listen webhook_deliveries",
}

_ENQUEUE_DUE: Final = "select scheduler.enqueue_due(null, %s)"
_RESCUE_EXPIRED: Final = "select scheduler.rescue_expired()"
_QUEUE_STATS: Final = "select status, count, oldest, next_run_after from scheduler.queue_stats()"
_CLAIM_WEBHOOKS: Final = "select * from scheduler.claim_webhook_deliveries(%s, %s, %s)"
_FINISH_WEBHOOK: Final = "select scheduler.finish_webhook_delivery(%s, %s, %s, %s, %s, %s)"
_WEBHOOK_ADDRESS_PROBLEM: Final = "select scheduler.webhook_address_problem(%s::inet[])"
_RESCUE_DEAD_WORKERS: Final = "select rescued, pending_workers from scheduler.rescue_dead_workers(%s)"
_ATTACH_SESSION: Final = "select scheduler.attach_worker_session(%s)"
_TASKS_TO_PLAN: Final = "select * from scheduler.tasks_to_plan(%s)"
_APPLY_PLAN: Final = "select scheduler.apply_plan(%s, %s, %s, %s, %s::timestamptz[], %s)"
_FAIL_PLAN: Final = "select scheduler.fail_plan(%s, %s, %s)"
_CLAIM: Final = "select * from scheduler.claim_executions(%s, %s, %s, %s)"
_HEARTBEAT: Final = "select id, status from scheduler.heartbeat(%s, %s::uuid[], %s, %s)"
_START: Final = "select * from scheduler.start_execution(%s, %s, %s, %s, %s)"
_START_MANY: Final = (
    "select id, conversation_id, user_message_id, created_conversation, error_code, error_message"
    " from scheduler.start_executions(%s, %s)")
_FINISH_MANY: Final = "select id from scheduler.finish_executions(%s, %s)"
DEADLOCK_RETRIES: Final = 3
_REQUEUE_LATER: Final = "select scheduler.requeue_later(%s, %s, %s, %s, %s, %s, p_spend_attempt => %s)"
_REPORT_CIRCUIT: Final = "select scheduler.report_chat_circuit(%s, %s, %s)"
_RELEASE: Final = "select scheduler.release_executions(%s, %s::uuid[])"
_REGISTER: Final = "select scheduler.register_worker(%s, %s, %s, %s)"
_UNREGISTER: Final = "select scheduler.unregister_worker(%s)"


def make_pool(database_url: str, size: int, worker_id: str,
              check: Callable[[psycopg.AsyncConnection[Any]], Awaitable[None]] | None = None) -> AsyncConnectionPool:
    """A fixed-size pool of autocommit connections (opened by the caller with `await pool.open()`)."""
    return AsyncConnectionPool(
        database_url,
        min_size=size,
        max_size=size,
        open=False,
        name="agent-tasks-worker",
        kwargs={"autocommit": True, "application_name": f"agent-tasks worker {worker_id}"[:63]},
        timeout=30.0,
        # a connection killed while idle in the pool (Postgres restarted, backend
        # terminated) is found and replaced before a caller gets it
        check=check or AsyncConnectionPool.check_connection,
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


class PostgresListener:
    """worker.queue.Listener over one LISTEN connection."""

    def __init__(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self._conn = conn

    async def notifies(self, idle_s: float) -> AsyncIterator[Notification]:
        async for notify in self._conn.notifies(timeout=idle_s):
            yield notify

    async def check(self) -> None:
        await self._conn.execute("select 1")

    async def attach(self, worker_id: str) -> bool:
        cur = await self._conn.execute(_ATTACH_SESSION, (worker_id,))
        row = await cur.fetchone()
        return bool(row and row[0])

    async def close(self) -> None:
        await self._conn.close()


class PostgresQueue:
    """worker.queue.WorkerQueue: typed calls of the scheduler functions over a pool."""

    def __init__(self, database_url: str, pool_size: int, worker_id: str) -> None:
        self._database_url = database_url
        self._worker_id = worker_id
        self.pool = make_pool(database_url, pool_size, worker_id, check=self._check_connection)
        self._listener_connects = 0
        self._draining: set[asyncio.Task[None]] = set()
        self._finishes = FinishBatcher(self._finish_many)
        self._starts = StartBatcher(self._start_many, self.start_execution)

    async def open(self) -> None:
        await self.pool.open(wait=True, timeout=30.0)

    async def close(self) -> None:
        await self.pool.close()

    async def _check_connection(self, conn: psycopg.AsyncConnection[Any]) -> None:
        try:
            await AsyncConnectionPool.check_connection(conn)
        except Exception:
            # the connections idle beside a dead one most likely died with it (Postgres
            # restarted, backends terminated). psycopg_pool would find them one per check,
            # sleeping 1 s, 2 s, 4 s... in between (a run stranded 3-7 s, measured in
            # tests/chaos): replace them all at once
            self._drain_soon()
            raise

    def _drain_soon(self) -> None:
        task = asyncio.get_running_loop().create_task(self.pool.drain(), name="pool-drain")
        self._draining.add(task)
        task.add_done_callback(self._draining.discard)

    async def connect_listener(self) -> PostgresListener:
        """The LISTEN connection; a reconnect (the previous one died) also replaces the pool's
        idle connections, which died with it in a restart or a mass termination."""
        self._listener_connects += 1
        if self._listener_connects > 1:
            self._drain_soon()
        return PostgresListener(await connect_listener(self._database_url, self._worker_id))

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

    async def queue_stats(self) -> list[dict[str, Any]]:
        return await self._rows(_QUEUE_STATS, ())

    async def claim_webhook_deliveries(self, worker_id: str, limit: int, lease_seconds: int) -> list[Delivery]:
        return [Delivery(**row) for row in await self._rows(_CLAIM_WEBHOOKS, (worker_id, limit, lease_seconds))]

    async def finish_webhook_delivery(self, delivery_id: uuid.UUID, worker_id: str, http_status: int | None,
                                      error: str | None, retry_in_s: float | None, disable: bool) -> str | None:
        result = await self._scalar(_FINISH_WEBHOOK, (delivery_id, worker_id, http_status, error, retry_in_s,
                                                      disable))
        return None if result is None else str(result)

    async def webhook_address_problem(self, addresses: list[str]) -> str | None:
        result = await self._scalar(_WEBHOOK_ADDRESS_PROBLEM, (addresses,))
        return None if result is None else str(result)

    async def rescue_dead_workers(self, grace_s: float) -> tuple[int, int]:
        async with self.pool.connection() as conn:
            cur = await conn.execute(_RESCUE_DEAD_WORKERS, (grace_s,))
            row = await cur.fetchone()
        return (0, 0) if row is None else (int(row[0]), int(row[1]))

    async def tasks_to_plan(self, limit: int) -> list[dict[str, Any]]:
        return await self._rows(_TASKS_TO_PLAN, (limit,))

    async def apply_plan(self, task_id: uuid.UUID, schedule_version: int, next_run_at: datetime | None,
                         complete: bool, due: Sequence[datetime], more: bool) -> bool:
        return bool(await self._scalar(
            _APPLY_PLAN, (task_id, schedule_version, next_run_at, complete, list(due), more)))

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

    async def _start_many(self, worker_id: str, items: list[dict[str, Any]]) -> dict[str, StartRow]:
        async with self.pool.connection() as conn:
            cur = await conn.execute(_START_MANY, (worker_id, Jsonb(items)))
            return {str(r[0]): StartRow(str(r[0]), *r[1:]) for r in await cur.fetchall()}

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

    async def finish(self, execution_id: uuid.UUID, worker_id: str, attempt: int, status: ExecutionStatus, *,
                     output: str | None = None, error: str | None = None, error_kind: str | None = None,
                     assistant_message_id: uuid.UUID | None = None,
                     usage: dict[str, Any] | None = None) -> bool:
        """running -> status; False when the fence dropped the write. Batched with
        concurrent finishes (FinishBatcher)."""
        return await self._finishes.submit(worker_id, finish_item(
            execution_id, attempt, status, output=output, error=error, error_kind=error_kind,
            assistant_message_id=assistant_message_id, usage=usage))

    async def _finish_many(self, worker_id: str, items: list[dict[str, Any]]) -> set[str]:
        for attempt in range(DEADLOCK_RETRIES):
            try:
                rows = await self._rows(_FINISH_MANY, (worker_id, Jsonb(items)))
                return {str(r["id"]) for r in rows}
            except psycopg.errors.DeadlockDetected:
                # a heartbeat touching the same rows in another order: the
                # statement rolled back whole, so simply run it again
                if attempt == DEADLOCK_RETRIES - 1:
                    raise
        raise AssertionError("unreachable")

    async def requeue_later(self, execution_id: uuid.UUID, worker_id: str, attempt: int, error: str,
                            error_kind: str, delay_seconds: float, spend_attempt: bool = True) -> str | None:
        """'queued' (attempts left, or the attempt given back), 'failed' (none left) or None (fenced)."""
        result = await self._scalar(
            _REQUEUE_LATER, (execution_id, worker_id, attempt, error, error_kind, delay_seconds, spend_attempt))
        return None if result is None else str(result)

    async def report_chat_circuit(self, worker_id: str, is_open: bool, reason: str | None) -> None:
        await self._scalar(_REPORT_CIRCUIT, (worker_id, is_open, reason))

    async def release(self, worker_id: str, ids: Sequence[uuid.UUID]) -> int:
        if not ids:
            return 0
        return int(await self._scalar(_RELEASE, (worker_id, list(ids))) or 0)


def _conforms(queue: PostgresQueue) -> WorkerQueue:
    """mypy checks here that PostgresQueue is a WorkerQueue."""
    return queue
