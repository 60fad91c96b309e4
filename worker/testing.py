"""An in-memory worker.queue.WorkerQueue for fast tests of the worker's own logic.

Like Procrastinate's InMemoryConnector: the queue transitions the worker
relies on, with the same fences (status running, this worker, this attempt),
in a dict instead of Postgres, so shutdown, abandon, claim coalescing and
the finish batcher can be tested in milliseconds and deterministically. It
uses the production batchers (worker.queue.FinishBatcher, StartBatcher) and
records every call. The claim follows `scheduler.claim_executions`: every
queued run gets a turn when it is added (`scheduler.assign_turn`), slots go
round-robin by turn within the operator's `priority_class`, each user's slots
to that user's own runs by priority, with the per-user cap and exclusive
tasks (tests/integration/test_queue_contract.py compares the claim order with
Postgres). It is not the database's semantics in full: the scheduling side
(enqueue_due, the planner's calls) does nothing here, and the end-to-end tests
run the real Postgres.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from worker.queue import (
    CHANNEL_CANCEL,
    CHANNEL_EXECUTIONS,
    ClaimedExecution,
    Fenced,
    FinishBatcher,
    StartBatcher,
    Started,
    StartRow,
    WorkerQueue,
    finish_item,
)
from worker.status import ExecutionStatus
from worker.webhooks import Delivery


@dataclass(frozen=True, slots=True)
class MemoryNotification:
    channel: str
    payload: str


@dataclass(slots=True)
class MemoryExecution:
    """One row of the in-memory queue."""

    id: uuid.UUID
    status: ExecutionStatus = ExecutionStatus.QUEUED
    attempt: int = 0
    max_attempts: int = 4
    priority: int = 0
    # the operator's class: served before any lower one (agent_tasks.priority_class)
    priority_class: int = 0
    # overlap_policy skip or queue: never two runs of the task at once
    exclusive: bool = False
    # the fair-order position, given by InMemoryQueue.add as scheduler.assign_turn does
    turn: int = 0
    timeout_seconds: int = 300
    scheduled_for: datetime = field(default_factory=lambda: datetime.now(UTC))
    run_after: datetime = field(default_factory=lambda: datetime.now(UTC))
    worker_id: str | None = None
    task_id: uuid.UUID = field(default_factory=uuid.uuid4)
    user_id: uuid.UUID = field(default_factory=uuid.uuid4)
    agent_id: uuid.UUID = field(default_factory=uuid.uuid4)
    conversation_id: uuid.UUID | None = None
    user_message_id: uuid.UUID | None = None
    resolved_prompt: str | None = None
    output: str | None = None
    error: str | None = None
    error_kind: str | None = None


class MemoryListener:
    """worker.queue.Listener fed by InMemoryQueue.notify()."""

    def __init__(self) -> None:
        self.inbox: asyncio.Queue[MemoryNotification] = asyncio.Queue()
        self.closed = False
        self.attached: str | None = None

    async def notifies(self, idle_s: float) -> AsyncIterator[MemoryNotification]:
        while True:
            try:
                async with asyncio.timeout(idle_s):
                    notification = await self.inbox.get()
            except TimeoutError:
                return
            yield notification

    async def check(self) -> None:
        return None

    async def attach(self, worker_id: str) -> bool:
        self.attached = worker_id
        return True

    async def close(self) -> None:
        self.closed = True


class InMemoryQueue:
    """worker.queue.WorkerQueue in memory. `add()` queues executions; the lists
    `claims`, `finish_batches`, `start_batches`, `releases` and `requeues` record
    what the worker asked for. `finish_gate`, when set to an unset Event, holds
    every finish batch until the test sets it."""

    def __init__(self) -> None:
        self.executions: dict[uuid.UUID, MemoryExecution] = {}
        self.workers: set[str] = set()
        self.opened = False
        self.closed = False
        self.claims: list[int] = []
        self.finish_batches: list[list[dict[str, Any]]] = []
        self.start_batches: list[int] = []
        self.releases: list[list[uuid.UUID]] = []
        self.requeues: list[tuple[uuid.UUID, str, float]] = []
        self.circuit_reports: list[tuple[bool, str | None]] = []
        self.heartbeats = 0
        self.queue_stats_calls = 0
        self.finish_gate: asyncio.Event | None = None
        # fail_writes["finish"] = n: the next n finish calls (likewise start, requeue_later,
        # release) raise psycopg.OperationalError before touching anything: a database blip
        self.fail_writes: dict[str, int] = {}
        self.failed_writes: list[str] = []
        self.claimed_event = asyncio.Event()  # set on every claim that returned rows
        self._listeners: list[MemoryListener] = []
        self._finishes = FinishBatcher(self._finish_many)
        self._starts = StartBatcher(self._start_many, self._start_one)

    # --- test helpers ---------------------------------------------------------

    def _blip(self, write: str) -> None:
        if self.fail_writes.get(write, 0) > 0:
            self.fail_writes[write] -= 1
            self.failed_writes.append(write)
            raise psycopg.OperationalError(f"{write}: the connection was closed (simulated blip)")

    def add(self, n: int = 1, **fields: Any) -> list[uuid.UUID]:
        """Queue n executions (MemoryExecution fields as keywords) and NOTIFY."""
        ids = []
        for _ in range(n):
            execution = MemoryExecution(id=uuid.uuid4(), **fields)
            execution.turn = self._next_turn(execution)
            self.executions[execution.id] = execution
            ids.append(execution.id)
        self.notify(CHANNEL_EXECUTIONS, "")
        return ids

    def _queued(self) -> list[MemoryExecution]:
        return [e for e in self.executions.values() if e.status is ExecutionStatus.QUEUED]

    def _next_turn(self, new: MemoryExecution) -> int:
        """scheduler.assign_turn: one past the user's last queued turn, never
        behind the head (the lowest queued turn) of its class."""
        queued = self._queued()
        own = [e.turn + 1 for e in queued if e.user_id == new.user_id]
        head = [e.turn for e in queued if e.priority_class == new.priority_class]
        return max(max(own, default=0), min(head, default=0), 0)

    def notify(self, channel: str, payload: str) -> None:
        for listener in self._listeners:
            listener.inbox.put_nowait(MemoryNotification(channel, payload))

    def cancel(self, execution_id: uuid.UUID) -> None:
        """scheduler.cancel_execution: cancelled, and a running one's worker is told."""
        execution = self.executions[execution_id]
        was = execution.status
        execution.status = ExecutionStatus.CANCELLED
        if was is ExecutionStatus.RUNNING:
            self.notify(CHANNEL_CANCEL, str(execution_id))

    def by_status(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for execution in self.executions.values():
            counts[execution.status] = counts.get(execution.status, 0) + 1
        return counts

    # --- WorkerQueue ------------------------------------------------------------

    async def open(self) -> None:
        self.opened = True

    async def close(self) -> None:
        self.closed = True

    async def connect_listener(self) -> MemoryListener:
        listener = MemoryListener()
        self._listeners.append(listener)
        return listener

    async def register_worker(self, worker_id: str, hostname: str, pid: int, concurrency: int) -> None:
        self.workers.add(worker_id)

    async def unregister_worker(self, worker_id: str) -> None:
        self.workers.discard(worker_id)

    async def enqueue_due(self, limit: int) -> int:
        return 0

    async def rescue_expired(self) -> int:
        return 0

    async def claim_webhook_deliveries(self, worker_id: str, limit: int, lease_seconds: int) -> list[Delivery]:
        return []

    async def finish_webhook_delivery(self, delivery_id: uuid.UUID, worker_id: str, http_status: int | None,
                                      error: str | None, retry_in_s: float | None, disable: bool) -> str | None:
        return None

    async def webhook_address_problem(self, addresses: list[str]) -> str | None:
        return None

    async def queue_stats(self) -> list[dict[str, Any]]:
        self.queue_stats_calls += 1
        counts = Counter(str(e.status) for e in self.executions.values())
        return [{"status": status, "count": n, "oldest": None, "next_run_after": None}
                for status, n in sorted(counts.items())]

    async def rescue_dead_workers(self, grace_s: float) -> tuple[int, int]:
        return (0, 0)

    async def tasks_to_plan(self, limit: int) -> list[dict[str, Any]]:
        return []

    async def apply_plan(self, task_id: uuid.UUID, schedule_version: int, next_run_at: datetime | None,
                         complete: bool, due: Sequence[datetime], more: bool) -> bool:
        return False

    async def fail_plan(self, task_id: uuid.UUID, schedule_version: int, error: str) -> bool:
        return False

    async def claim(self, worker_id: str, limit: int, lease_seconds: int,
                    per_user_limit: int | None) -> list[ClaimedExecution]:
        self.claims.append(limit)
        claimed = []
        for e in self._claimable(limit, per_user_limit, datetime.now(UTC)):
            e.status = ExecutionStatus.RUNNING
            e.worker_id = worker_id
            e.attempt += 1
            claimed.append(ClaimedExecution(
                id=e.id, task_id=e.task_id, user_id=e.user_id, agent_id=e.agent_id, trigger_type="manual",
                attempt=e.attempt, max_attempts=e.max_attempts, scheduled_for=e.scheduled_for,
                timeout_seconds=e.timeout_seconds, conversation_id=e.conversation_id,
                user_message_id=e.user_message_id, resolved_prompt=e.resolved_prompt, task_name="task",
                prompt_template="Hello", prompt_variables={}, timezone="UTC", conversation_mode="reuse",
                task_conversation_id=None, task_state={}))
        if claimed:
            self.claimed_event.set()
        return claimed

    def _claimable(self, limit: int, per_user_limit: int | None, now: datetime) -> list[MemoryExecution]:
        """The rows scheduler.claim_executions picks, in the order it returns them."""
        running = Counter(e.user_id for e in self.executions.values() if e.status is ExecutionStatus.RUNNING)
        busy_tasks = {e.task_id for e in self.executions.values() if e.status is ExecutionStatus.RUNNING}

        def ready(e: MemoryExecution) -> bool:
            return e.run_after <= now and not (e.exclusive and e.task_id in busy_tasks)

        queued = [e for e in self._queued() if ready(e)]
        # the next `limit` turns (the claim index's order: class, turn, run_after), each a
        # slot for its user; users at the cap take none
        turns = sorted((e for e in queued if per_user_limit is None or running[e.user_id] < per_user_limit),
                       key=lambda e: (-e.priority_class, e.turn, e.run_after))[:limit]
        slots = Counter(e.user_id for e in turns)

        def urgency(e: MemoryExecution) -> tuple[int, int, datetime]:
            return (-e.priority_class, -e.priority, e.scheduled_for)

        picked: list[MemoryExecution] = []
        for user_id, n in slots.items():
            # the user's slots go to its most urgent runs (ranked as user_rank); of an
            # exclusive task only the earliest, and none past the per-user cap
            mine = sorted((e for e in queued if e.user_id == user_id), key=urgency)[:n]
            earliest: dict[uuid.UUID, MemoryExecution] = {}
            for e in sorted(mine, key=lambda e: e.scheduled_for):
                earliest.setdefault(e.task_id, e)
            picked.extend(e for rank, e in enumerate(mine, start=1)
                          if (not e.exclusive or earliest[e.task_id] is e)
                          and (per_user_limit is None or rank + running[user_id] <= per_user_limit))
        return sorted(picked, key=urgency)

    async def heartbeat(self, worker_id: str, ids: Sequence[uuid.UUID], lease_seconds: int,
                        in_flight: int) -> list[tuple[uuid.UUID, str]]:
        self.heartbeats += 1
        lost = []
        for execution_id in ids:
            e = self.executions.get(execution_id)
            if e is None or e.status is not ExecutionStatus.RUNNING or e.worker_id != worker_id:
                lost.append((execution_id, "missing" if e is None else str(e.status)))
        return lost

    def _fenced(self, execution_id: uuid.UUID, worker_id: str, attempt: int) -> MemoryExecution | None:
        e = self.executions.get(execution_id)
        if e is None or e.status is not ExecutionStatus.RUNNING or e.worker_id != worker_id or e.attempt != attempt:
            return None
        return e

    async def start(self, execution_id: uuid.UUID, worker_id: str, attempt: int,
                    resolved_prompt: str, conversation_title: str | None) -> Started:
        self._blip("start")
        return await self._starts.submit(worker_id, execution_id, attempt, resolved_prompt, conversation_title)

    async def _start_one(self, execution_id: uuid.UUID, worker_id: str, attempt: int,
                         resolved_prompt: str, conversation_title: str | None) -> Started:
        e = self._fenced(execution_id, worker_id, attempt)
        if e is None:
            raise Fenced(f"execution {execution_id} is not running for worker {worker_id} attempt {attempt}")
        created = e.conversation_id is None
        if e.conversation_id is None:
            e.conversation_id = uuid.uuid4()
        if e.user_message_id is None:
            e.user_message_id = uuid.uuid4()
            e.resolved_prompt = resolved_prompt
        return Started(conversation_id=e.conversation_id, user_message_id=e.user_message_id,
                       created_conversation=created)

    async def _start_many(self, worker_id: str, items: list[dict[str, Any]]) -> dict[str, StartRow]:
        self.start_batches.append(len(items))
        rows = {}
        for item in items:
            try:
                started = await self._start_one(uuid.UUID(item["id"]), worker_id, item["attempt"],
                                                item["resolved_prompt"], item.get("conversation_title"))
            except Fenced as exc:
                rows[item["id"]] = StartRow(item["id"], None, None, None, "55000", str(exc))
                continue
            rows[item["id"]] = StartRow(item["id"], started.conversation_id, started.user_message_id,
                                        started.created_conversation, None, None)
        return rows

    async def finish(self, execution_id: uuid.UUID, worker_id: str, attempt: int, status: ExecutionStatus, *,
                     output: str | None = None, error: str | None = None, error_kind: str | None = None,
                     assistant_message_id: uuid.UUID | None = None,
                     usage: dict[str, Any] | None = None) -> bool:
        self._blip("finish")
        return await self._finishes.submit(worker_id, finish_item(
            execution_id, attempt, status, output=output, error=error, error_kind=error_kind,
            assistant_message_id=assistant_message_id, usage=usage))

    async def _finish_many(self, worker_id: str, items: list[dict[str, Any]]) -> set[str]:
        self.finish_batches.append(items)
        if self.finish_gate is not None:
            await self.finish_gate.wait()
        applied = set()
        for item in items:
            status = ExecutionStatus(item["status"])
            if not status.is_finishing:
                raise ValueError(f"finish_executions: {status} is not a finishing status")
            e = self._fenced(uuid.UUID(item["id"]), worker_id, item["attempt"])
            if e is None or item["id"] in applied:
                continue
            e.status = status
            e.output = item.get("output")
            e.error = item.get("error")
            e.error_kind = item.get("error_kind")
            applied.add(item["id"])
        return applied

    async def requeue_later(self, execution_id: uuid.UUID, worker_id: str, attempt: int, error: str,
                            error_kind: str, delay_seconds: float, spend_attempt: bool = True) -> str | None:
        self._blip("requeue_later")
        e = self._fenced(execution_id, worker_id, attempt)
        if e is None:
            return None
        self.requeues.append((execution_id, error_kind, delay_seconds))
        e.error, e.error_kind, e.worker_id = error, error_kind, None
        if not spend_attempt:
            e.attempt -= 1
        if e.attempt < e.max_attempts or not spend_attempt:
            e.status = ExecutionStatus.QUEUED
            e.run_after = datetime.now(UTC) + timedelta(seconds=delay_seconds)
        else:
            e.status = ExecutionStatus.FAILED
        return str(e.status)

    async def report_chat_circuit(self, worker_id: str, is_open: bool, reason: str | None) -> None:
        self.circuit_reports.append((is_open, reason))

    async def release(self, worker_id: str, ids: Sequence[uuid.UUID]) -> int:
        self._blip("release")
        self.releases.append(list(ids))
        released = 0
        for execution_id in ids:
            e = self.executions.get(execution_id)
            if e is not None and e.status is ExecutionStatus.RUNNING and e.worker_id == worker_id:
                e.status, e.worker_id, e.attempt = ExecutionStatus.QUEUED, None, e.attempt - 1
                e.error, e.error_kind = "released by a worker shutting down", "shutdown"
                released += 1
        if released:
            self.notify(CHANNEL_EXECUTIONS, "")
        return released


def _conforms(queue: InMemoryQueue) -> WorkerQueue:
    """mypy checks here that InMemoryQueue is a WorkerQueue."""
    return queue
