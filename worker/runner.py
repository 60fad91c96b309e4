"""The worker: claims executions from Postgres and runs them through the chat function.

One asyncio process. Side loops run as named tasks and the worker stops when
any of them fails (Procrastinate's habit):

* ``listener``  one dedicated connection LISTENing on agent_task_executions,
  agent_tasks_plan and agent_task_cancel; re-established when it dies. The
  other loops also poll every POLL_INTERVAL_S, so a lost NOTIFY costs at most
  that much latency.
* ``tick``      enqueue_due + rescue_expired + rescue_dead_workers every
  TICK_INTERVAL_S, just after each whole multiple of it (schedules fall on
  whole seconds), then claims at once when it enqueued anything (pg_cron does
  the same once a minute; the worker's tick makes sub-minute schedules work).
  A worker whose session ended (its listener connection, attached as its
  liveness) has its runs rescued SESSION_GRACE_S after the tick that first saw
  it gone, by a follow-up pass: rescue on death, not on lease.
* ``planner``   next_run_at of cron tasks (croniter, worker/planner.py) via
  tasks_to_plan / apply_plan, woken by NOTIFY agent_tasks_plan; croniter runs
  in a child process with PLAN_TIME_BUDGET_S per task (worker/plan_pool.py).
* ``claim``     claim_executions in batches up to free capacity (WORKER_CONCURRENCY
  overall, WORKER_PER_USER_LIMIT per user across all workers).
* ``heartbeat`` one call for every in-flight execution each HEARTBEAT_INTERVAL_S;
  executions the database says are no longer ours are abandoned at once.
* ``webhooks``  the webhook outbox (worker.webhooks): due deliveries claimed
  WEBHOOK_BATCH at a time, woken by NOTIFY webhook_deliveries, POSTed signed.

Per execution: resolve the prompt, start (conversation + the scheduled user
message, exactly once), call the chat function acting as the user, then
finish or requeue_later. When the chat function is unreachable (not a failure
of the run) the run goes back without spending its attempt and the circuit
breaker (worker.breaker) stops the claims until a probe run gets an answer.
Starts and finishes of concurrent executions are batched (worker.queue.StartBatcher,
FinishBatcher), so under load an execution costs a share of three round trips to
Postgres (claim, start, finish).

With WORKER_METRICS_PORT set, the worker also serves Prometheus metrics and a
health check from its event loop (worker.metrics).

Shutdown (SIGTERM/SIGINT): stop claiming, let in-flight executions finish
within SHUTDOWN_GRACE_S, release the rest to the queue (another worker takes
them at once), unregister. A second signal skips the grace period.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar
from zoneinfo import ZoneInfo

import psycopg
import psycopg_pool

from worker import templates, webhooks
from worker.breaker import CircuitBreaker, CircuitState
from worker.chat_client import (
    ActAs,
    ChatClient,
    ChatNeedsInput,
    ChatOk,
    ChatPermanent,
    ChatResult,
    ChatTransient,
)
from worker.config import Settings
from worker.db import PostgresQueue
from worker.log import log_event, setup_logging
from worker.metrics import QueueFigures, WorkerMetrics
from worker.plan_pool import PlanPool
from worker.queue import (
    CHANNEL_CANCEL,
    CHANNEL_EXECUTIONS,
    CHANNEL_PLAN,
    CHANNEL_WEBHOOKS,
    ClaimedExecution,
    ConversationGone,
    Fenced,
    Listener,
    WorkerQueue,
)
from worker.retry import ErrorKind, backoff_delay_s
from worker.status import ExecutionStatus

logger = logging.getLogger("worker")

OUTPUT_MAX_CHARS = 500
# How often the listener proves its connection is alive when no NOTIFY arrives.
LISTENER_CHECK_INTERVAL_S = 5.0
LISTENER_CHECK_TIMEOUT_S = 5.0
# When capacity frees up one slot at a time under load, wait this long to
# claim a few at once instead of one per round trip.
CLAIM_COALESCE_S = 0.005
# The tick runs this long after each multiple of TICK_INTERVAL_S (wall clock):
# enough for the database's clock to be past the boundary too.
TICK_ALIGN_OFFSET_S = 0.01
# webhook deliveries claimed (and POSTed concurrently) at a time, their lease (longer than a POST's
# timeout: an expired lease is POSTed again), and how often due retries are looked for
WEBHOOK_BATCH = 8
WEBHOOK_LEASE_S = 180
WEBHOOK_POLL_S = 2.0
# Bound on DB calls made during shutdown.
SHUTDOWN_DB_TIMEOUT_S = 5.0
HARD_STOP_DB_TIMEOUT_S = 1.0
# Transient DB errors a loop survives (it logs and tries again next round).
DB_TRANSIENT_ERRORS = (psycopg.OperationalError, psycopg_pool.PoolTimeout, TimeoutError)
# Pauses between retries of one of the worker's own writes through a blip (doubling).
WRITE_RETRY_FIRST_S = 0.1
WRITE_RETRY_MAX_S = 1.0
T = TypeVar("T")


@dataclass(slots=True)
class InFlight:
    """One execution this worker runs."""

    execution: ClaimedExecution
    started_monotonic: float
    task: asyncio.Task[None] | None = None
    finishing: bool = False
    abandon_reason: str | None = None
    log_fields: dict[str, Any] = field(default_factory=dict)


def tick_delay_s(now_s: float, interval_s: float, offset_s: float = TICK_ALIGN_OFFSET_S) -> float:
    """Seconds from `now_s` (epoch) to the next tick: the next multiple of `interval_s`
    plus `offset_s`, never less than a millisecond away (a tick that just ran waits for the next)."""
    target = (now_s // interval_s) * interval_s + offset_s
    while target - now_s < 0.001:
        target += interval_s
    return target - now_s


class WorkerCrashed(RuntimeError):
    """A side loop of the worker failed; the worker stopped."""


class Chat(Protocol):
    """What the worker needs of the chat function's client (worker.chat_client.ChatClient)."""

    async def reply(self, act_as: ActAs, timeout_s: float) -> ChatResult: ...

    async def aclose(self) -> None: ...


class Worker:
    """Claims and runs executions until stopped. `await Worker(settings).run()`.

    `queue` is any worker.queue.WorkerQueue: Postgres by default,
    worker.testing.InMemoryQueue in the fast unit tests; `chat` any Chat."""

    def __init__(self, settings: Settings, *, chat: Chat | None = None, queue: WorkerQueue | None = None) -> None:
        self.settings = settings
        self.worker_id = settings.worker_id
        self.queue: WorkerQueue = queue or PostgresQueue(
            settings.database_url, settings.db_pool_size, settings.worker_id)
        # how long a claim for a few free slots waits for more to free up (under backlog)
        self.claim_coalesce_s = CLAIM_COALESCE_S
        self.chat: Chat = chat or ChatClient(
            settings.chat_url, settings.service_headers(),
            max_connections=settings.worker_concurrency,
            connect_timeout_s=settings.http_connect_timeout_s,
        )
        self.inflight: dict[uuid.UUID, InFlight] = {}
        # stops claiming while the chat function is unreachable (worker.breaker)
        self.breaker = CircuitBreaker()
        self._claim_wake = asyncio.Event()
        self._plan_wake = asyncio.Event()
        self._webhook_wake = asyncio.Event()
        self._idle = asyncio.Event()  # set when nothing is in flight
        self._idle.set()
        self._stopping = asyncio.Event()
        self._hard_stop = asyncio.Event()
        self._backlog = False
        self._listener_up = asyncio.Event()
        self._plan_failures: dict[uuid.UUID, int] = {}  # task id -> schedule_version that failed
        self._plan_pool = PlanPool(settings.plan_time_budget_s)
        self._dead_worker_followup: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()
        self._signals = 0
        self.stats = {"claimed": 0, "succeeded": 0, "failed": 0, "retried": 0, "timed_out": 0,
                      "needs_input": 0, "abandoned": 0, "released": 0,
                      "webhook_delivered": 0, "webhook_retried": 0, "webhook_failed": 0}
        # WORKER_METRICS_PORT: Prometheus metrics read from the tallies above (worker.metrics)
        self.metrics = WorkerMetrics(
            self.worker_id, lambda: self.stats, lambda: len(self.inflight), settings.worker_concurrency,
            lambda: self.breaker.state is not CircuitState.CLOSED) if settings.worker_metrics_port is not None else None

    # --- lifecycle ----------------------------------------------------------

    def request_stop(self) -> None:
        """Begin a graceful shutdown; a second call stops without waiting for in-flight runs."""
        self._signals += 1
        if self.metrics is not None:
            self.metrics.stopping = True
        if self._signals == 1:
            log_event(logger, "stopping", worker_id=self.worker_id, in_flight=len(self.inflight),
                      grace_s=self.settings.shutdown_grace_s)
            self._stopping.set()
        else:
            log_event(logger, "stopping now", level=logging.WARNING, worker_id=self.worker_id,
                      in_flight=len(self.inflight))
            self._stopping.set()
            self._hard_stop.set()

    def _install_signal_handlers(self) -> list[signal.Signals]:
        loop = asyncio.get_running_loop()
        installed: list[signal.Signals] = []
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(sig, self.request_stop)
                installed.append(sig)
            except (NotImplementedError, RuntimeError, ValueError):  # not the main thread
                pass
        return installed

    async def run(self) -> None:
        """Run until request_stop() (or a signal); raise WorkerCrashed if a side loop failed."""
        installed = self._install_signal_handlers()
        s = self.settings
        log_event(logger, "starting", worker_id=self.worker_id, concurrency=s.worker_concurrency,
                  per_user_limit=s.worker_per_user_limit, lease_s=s.lease_seconds,
                  chat_url=s.chat_url)
        await self.queue.open()
        self._plan_pool.start()
        crashed: BaseException | None = None
        loops: list[asyncio.Task[None]] = []
        try:
            if self.metrics is not None:
                host, port = s.worker_metrics_host, s.worker_metrics_port or 0
                try:
                    port = await self.metrics.serve(host, port)
                except OSError as bind_error:
                    raise WorkerCrashed(f"the metrics port {host}:{port} cannot be opened: {bind_error}") \
                        from bind_error
                log_event(logger, "metrics", url=f"http://{host}:{port}/metrics")
            await self.queue.register_worker(self.worker_id, socket.gethostname(), os.getpid(),
                                             s.worker_concurrency)
            loops = [
                asyncio.create_task(self._listen_loop(), name="listener"),
                asyncio.create_task(self._heartbeat_loop(), name="heartbeat"),
                asyncio.create_task(self._tick_loop(), name="tick"),
                asyncio.create_task(self._planner_loop(), name="planner"),
                asyncio.create_task(self._claim_loop(), name="claim"),
                asyncio.create_task(self._webhook_loop(), name="webhooks"),
            ]
            stop_wait = asyncio.create_task(self._stopping.wait(), name="stop-wait")
            done, _ = await asyncio.wait([*loops, stop_wait], return_when=asyncio.FIRST_COMPLETED)
            stop_wait.cancel()
            for task in done:
                if task is stop_wait:
                    continue
                exc = task.exception() if not task.cancelled() else None
                if exc is None and self._stopping.is_set():
                    continue  # a loop that noticed the shutdown first
                crashed = exc or RuntimeError(f"loop {task.get_name()} ended")
                logger.error("loop %s crashed; stopping the worker", task.get_name(),
                             exc_info=exc if exc else None)
                self._stopping.set()
            await self._shutdown(loops)
        finally:
            if self._dead_worker_followup is not None:
                loops.append(self._dead_worker_followup)
            for task in loops:
                task.cancel()
            await asyncio.gather(*loops, return_exceptions=True)
            await self.chat.aclose()
            if self.metrics is not None:
                await self.metrics.close()
            await self.queue.close()
            self._plan_pool.close()
            loop = asyncio.get_running_loop()
            for sig in installed:
                loop.remove_signal_handler(sig)
            log_event(logger, "stopped", worker_id=self.worker_id, **self.stats)
        if crashed is not None:
            raise WorkerCrashed(f"worker {self.worker_id} stopped: {crashed!r}") from crashed

    async def _shutdown(self, loops: list[asyncio.Task[None]]) -> None:
        keep = {"listener", "heartbeat"}  # cancels and leases still matter during the grace period
        for task in loops:
            if task.get_name() not in keep:
                task.cancel()
        if self.inflight and not self._hard_stop.is_set():
            idle = asyncio.create_task(self._idle.wait())
            hard = asyncio.create_task(self._hard_stop.wait())
            await asyncio.wait([idle, hard], timeout=self.settings.shutdown_grace_s,
                               return_when=asyncio.FIRST_COMPLETED)
            idle.cancel()
            hard.cancel()
        db_timeout = HARD_STOP_DB_TIMEOUT_S if self._hard_stop.is_set() else SHUTDOWN_DB_TIMEOUT_S
        leftover = [f for f in self.inflight.values() if not f.finishing]
        if leftover:
            ids = [f.execution.id for f in leftover]
            for f in leftover:
                f.abandon_reason = "shutdown"
                if f.task is not None:
                    f.task.cancel()
            await asyncio.gather(*(f.task for f in leftover if f.task is not None),
                                 return_exceptions=True)
            try:
                async with asyncio.timeout(db_timeout):
                    released = await self._persist("release", lambda: self.queue.release(self.worker_id, ids),
                                                   {"worker_id": self.worker_id})
                self.stats["released"] += released
                log_event(logger, "released", worker_id=self.worker_id, count=released,
                          execution_ids=",".join(str(i) for i in ids))
            except Exception as exc:  # the leases expire and the rescuer requeues them
                log_event(logger, "release failed", level=logging.WARNING, error=repr(exc))
        # executions mid-finish: give their last DB write a moment
        rest = [f.task for f in self.inflight.values() if f.task is not None]
        if rest:
            await asyncio.wait(rest, timeout=db_timeout)
        for task in loops:
            task.cancel()
        await asyncio.gather(*loops, return_exceptions=True)
        try:
            async with asyncio.timeout(db_timeout):
                await self.queue.unregister_worker(self.worker_id)
        except Exception as exc:
            log_event(logger, "unregister failed", level=logging.WARNING, error=repr(exc))

    # --- side loops ---------------------------------------------------------

    async def _wait(self, event: asyncio.Event, timeout_s: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await event.wait()
        event.clear()

    async def _survive(self, name: str, call: Callable[[], Awaitable[None]]) -> None:
        """Run one round of a loop; a connection problem is logged, not fatal."""
        try:
            await call()
        except DB_TRANSIENT_ERRORS as exc:
            log_event(logger, "database unavailable", level=logging.WARNING, loop=name, error=repr(exc))
            await asyncio.sleep(self.settings.poll_interval_s)

    async def _listen_loop(self) -> None:
        delay_s = 0.1
        while True:
            listener: Listener | None = None
            try:
                listener = await self.queue.connect_listener()
                # this session is the worker's liveness: when it ends, the others rescue our runs
                if not await listener.attach(self.worker_id):
                    # the row was removed (a long outage): register again, then attach
                    await self.queue.register_worker(self.worker_id, socket.gethostname(), os.getpid(),
                                                     self.settings.worker_concurrency)
                    await listener.attach(self.worker_id)
                self._listener_up.set()
                delay_s = 0.1
                # a NOTIFY may have been sent while we were not listening
                self._claim_wake.set()
                self._plan_wake.set()
                log_event(logger, "listening", level=logging.DEBUG, worker_id=self.worker_id)
                while True:
                    async for notify in listener.notifies(LISTENER_CHECK_INTERVAL_S):
                        self._on_notify(notify.channel, notify.payload)
                    async with asyncio.timeout(LISTENER_CHECK_TIMEOUT_S):
                        await listener.check()
            except DB_TRANSIENT_ERRORS as exc:
                self._listener_up.clear()
                log_event(logger, "listener lost; reconnecting", level=logging.WARNING,
                          error=repr(exc), retry_in_s=round(delay_s, 2))
                await asyncio.sleep(delay_s)
                # re-attach well within the session grace once the database is back,
                # or the other workers rescue (and run again) what we are running
                delay_s = min(delay_s * 2, self.settings.session_grace_s / 2)
            finally:
                if listener is not None:
                    with contextlib.suppress(Exception):
                        await listener.close()

    def _on_notify(self, channel: str, payload: str) -> None:
        if channel == CHANNEL_EXECUTIONS:
            self._claim_wake.set()
        elif channel == CHANNEL_PLAN:
            self._plan_wake.set()
        elif channel == CHANNEL_WEBHOOKS:
            self._webhook_wake.set()
        elif channel == CHANNEL_CANCEL:
            try:
                execution_id = uuid.UUID(payload)
            except ValueError:
                return
            self._abandon(execution_id, "cancelled")

    async def _heartbeat_loop(self) -> None:
        s = self.settings
        while True:
            await asyncio.sleep(s.heartbeat_s)

            async def beat() -> None:
                ids = list(self.inflight)
                lost = await self.queue.heartbeat(self.worker_id, ids, s.lease_seconds, len(ids))
                for execution_id, status in lost:
                    self._abandon(execution_id, f"no longer ours ({status})")

            await self._survive("heartbeat", beat)

    async def _tick_loop(self) -> None:
        s = self.settings
        while True:
            # Schedules are whole seconds: tick just after each boundary so a due
            # occurrence is enqueued within TICK_ALIGN_OFFSET_S, not up to a tick later.
            await asyncio.sleep(tick_delay_s(time.time(), s.tick_interval_s))

            async def tick() -> None:
                enqueued = await self.queue.enqueue_due(s.enqueue_batch_size)
                if enqueued:
                    self._claim_wake.set()  # claim now, not after the NOTIFY round trip
                rescued = await self.queue.rescue_expired()
                if rescued:
                    self._claim_wake.set()
                    log_event(logger, "rescued", count=rescued)
                await self._rescue_dead_workers()
                if self.metrics is not None and self.metrics.queue_due():
                    self.metrics.queue = QueueFigures.from_rows(await self.queue.queue_stats())

            await self._survive("tick", tick)

    async def _rescue_dead_workers(self) -> None:
        """rescue_dead_workers; when a worker's session was first seen gone, again after the grace."""
        grace_s = self.settings.session_grace_s
        rescued, pending = await self.queue.rescue_dead_workers(grace_s)
        if pending and self._dead_worker_followup is None:
            async def followup() -> None:
                try:
                    await asyncio.sleep(grace_s)
                    await self._survive("tick", self._rescue_dead_workers_once)
                finally:
                    self._dead_worker_followup = None

            self._dead_worker_followup = asyncio.create_task(followup(), name="rescue-followup")
        self._log_dead_worker_rescue(rescued)

    async def _rescue_dead_workers_once(self) -> None:
        rescued, _ = await self.queue.rescue_dead_workers(self.settings.session_grace_s)
        self._log_dead_worker_rescue(rescued)

    def _log_dead_worker_rescue(self, rescued: int) -> None:
        if rescued:
            self._claim_wake.set()
            log_event(logger, "rescued", count=rescued, reason="worker session ended")

    async def _planner_loop(self) -> None:
        s = self.settings
        while True:
            await self._wait(self._plan_wake, s.poll_interval_s)
            await self._survive("planner", self._plan_once)

    async def _plan_once(self) -> None:
        """One planner pass."""
        rows = await self.queue.tasks_to_plan(self.settings.planner_batch_size)
        now = datetime.now(UTC)
        applied = 0
        again = len(rows) >= self.settings.planner_batch_size
        todo = [row for row in rows if self._plan_failures.get(row["id"]) != row["schedule_version"]]
        # croniter runs in a child process with a time budget per task (worker/plan_pool.py)
        results = await self._plan_pool.plan(todo, now)
        for row, result in zip(todo, results, strict=True):
            task_id = row["id"]
            if isinstance(result, str):  # a bad row must not stop the planner for everyone
                self._plan_failures[task_id] = row["schedule_version"]
                log_event(logger, "plan failed", level=logging.ERROR, task_id=task_id,
                          cron=str(row.get("cron_expression"))[:200], timezone=row.get("timezone"), error=result)
                # visible to the user and operators: status 'error' with last_error
                await self.queue.fail_plan(task_id, row["schedule_version"], result)
                continue
            ok = await self.queue.apply_plan(task_id, row["schedule_version"], result.next_run_at,
                                             result.complete, result.due, result.more)
            if ok:
                applied += 1
                again = again or result.more
                if result.due:
                    self._claim_wake.set()
                log_event(logger, "planned", level=logging.DEBUG, task_id=task_id,
                          next_run_at=result.next_run_at, complete=result.complete,
                          due=len(result.due))
        if again:
            self._plan_wake.set()
        if applied:
            log_event(logger, "plans applied", level=logging.DEBUG, count=applied)

    async def _claim_loop(self) -> None:
        s = self.settings
        while True:
            await self._wait(self._claim_wake, s.poll_interval_s)
            if self._stopping.is_set():
                return
            free = s.worker_concurrency - len(self.inflight)
            if free <= 0:
                continue
            if self._backlog and free < max(2, s.worker_concurrency // 8):
                await asyncio.sleep(self.claim_coalesce_s)
                free = s.worker_concurrency - len(self.inflight)
            free = self.breaker.claim_limit(free)
            if free <= 0:
                continue  # the chat function is unreachable: claim again when the breaker lets a probe by

            async def claim(free: int = free) -> None:
                claimed = await self.queue.claim(self.worker_id, free, s.lease_seconds, s.per_user_limit)
                self.breaker.probe_claimed(len(claimed))
                self._backlog = len(claimed) >= free
                for execution in claimed:
                    self._spawn(execution)
                if self._backlog and len(self.inflight) < s.worker_concurrency:
                    self._claim_wake.set()

            await self._survive("claim", claim)

    # --- webhooks -----------------------------------------------------------

    async def _webhook_loop(self) -> None:
        """Deliveries of the webhook outbox (worker.webhooks): claimed WEBHOOK_BATCH at a time when
        NOTIFY webhook_deliveries says there are some (and every WEBHOOK_POLL_S for retries that
        came due), POSTed concurrently, each outcome written back."""
        s = self.settings
        while True:
            await self._wait(self._webhook_wake, WEBHOOK_POLL_S)
            if self._stopping.is_set():
                return

            async def deliver() -> None:
                claimed = await self.queue.claim_webhook_deliveries(self.worker_id, WEBHOOK_BATCH,
                                                                    WEBHOOK_LEASE_S)
                await asyncio.gather(*(self._deliver(d, s.webhook_timeout_s, s.webhook_retry_base_s)
                                       for d in claimed))
                if len(claimed) == WEBHOOK_BATCH:
                    self._webhook_wake.set()  # more may be due

            await self._survive("webhooks", deliver)

    async def _deliver(self, delivery: webhooks.Delivery, timeout_s: float, retry_base_s: float) -> None:
        fields = {"delivery_id": delivery.id, "webhook_id": delivery.webhook_id, "kind": delivery.event,
                  "attempt": delivery.attempt}
        try:
            outcome = await webhooks.post(delivery, self.queue.webhook_address_problem, timeout_s)
        except DB_TRANSIENT_ERRORS:
            raise
        except Exception as exc:
            # a bug, not the endpoint: tried again later like a failed POST, and the runs go on
            logger.exception("webhook delivery crashed", extra={"fields": fields})
            outcome = webhooks.Outcome(None, f"worker error: {exc!r}"[:500], retry=True)
        retry_in = webhooks.retry_in_s(delivery.attempt, retry_base_s) if outcome.retry else None
        status = await self._persist("webhook", lambda: self.queue.finish_webhook_delivery(
            delivery.id, self.worker_id, outcome.http_status, outcome.error, retry_in, outcome.disable), fields)
        key = {"delivered": "webhook_delivered", "pending": "webhook_retried", "failed": "webhook_failed"}
        if status in key:
            self.stats[key[status]] += 1
        log_event(logger, f"webhook {status or 'fenced'}", level=logging.INFO if outcome.error is None
                  else logging.WARNING, http_status=outcome.http_status, error=outcome.error,
                  retry_in_s=round(retry_in, 3) if status == "pending" and retry_in is not None else None, **fields)

    # --- executions ---------------------------------------------------------

    def _spawn(self, execution: ClaimedExecution) -> None:
        self.stats["claimed"] += 1
        fields: dict[str, Any] = {"execution_id": execution.id, "task_id": execution.task_id,
                  "attempt": execution.attempt, "trigger": execution.trigger_type}
        entry = InFlight(execution=execution, started_monotonic=time.monotonic(), log_fields=fields)
        previous = self.inflight.get(execution.id)
        if previous is not None and not previous.finishing and previous.task is not None:
            # the database gave this execution a new attempt while we still ran an
            # earlier one (its lease ran out): that attempt is over, its writes fenced
            previous.abandon_reason = "superseded by a new attempt"
            previous.task.cancel()
        self.inflight[execution.id] = entry
        self._idle.clear()
        # DEBUG: the "finished" line (INFO) already names the execution, task and
        # attempt; a second INFO line per execution is measurable CPU under load
        log_event(logger, "claimed", level=logging.DEBUG, status="running", **fields)
        task = asyncio.create_task(self._execute(entry), name=f"execution:{execution.id}")
        entry.task = task
        task.add_done_callback(lambda _t: self._done(entry))

    def _done(self, entry: InFlight) -> None:
        # only this attempt's entry: a later attempt of the same execution stays tracked
        if self.inflight.get(entry.execution.id) is entry:
            del self.inflight[entry.execution.id]
        if not self.inflight:
            self._idle.set()
        if self._backlog and not self._stopping.is_set():
            self._claim_wake.set()

    def _abandon(self, execution_id: uuid.UUID, reason: str) -> None:
        """Stop working on an execution the database no longer gives us (cancelled, rescued)."""
        entry = self.inflight.get(execution_id)
        if entry is None or entry.finishing or entry.task is None:
            return
        entry.abandon_reason = reason
        entry.task.cancel()

    async def _persist(self, what: str, call: Callable[[], Awaitable[T]], log_fields: dict[str, Any]) -> T:
        """One of the worker's own writes (start, finish, requeue, release), retried through a
        database blip for up to DB_WRITE_RETRY_S instead of leaving the run to its lease. Safe:
        every one is fenced on worker and attempt and idempotent (a write that committed
        before its answer was lost is fenced out, or returns the same row, the second time)."""
        deadline = time.monotonic() + self.settings.db_write_retry_s
        delay_s = WRITE_RETRY_FIRST_S
        while True:
            try:
                return await call()
            except DB_TRANSIENT_ERRORS as exc:
                if time.monotonic() + delay_s > deadline:
                    raise
                log_event(logger, "database write failed; retrying", level=logging.WARNING, write=what,
                          error=repr(exc), retry_in_s=delay_s, **log_fields)
                await asyncio.sleep(delay_s)
                delay_s = min(delay_s * 2, WRITE_RETRY_MAX_S)

    def _count(self, outcome: str, entry: InFlight) -> None:
        """A run's outcome: the worker's tally (its "stopped" log line, the metrics' counters) and,
        with metrics on, how long it took from claim to outcome."""
        self.stats[outcome] = self.stats.get(outcome, 0) + 1
        if self.metrics is not None:
            self.metrics.observe_run(outcome, time.monotonic() - entry.started_monotonic)

    def _duration_ms(self, entry: InFlight) -> int:
        return int((time.monotonic() - entry.started_monotonic) * 1000)

    async def _execute(self, entry: InFlight) -> None:
        try:
            await self._run_execution(entry)
        except asyncio.CancelledError:
            reason = entry.abandon_reason or "cancelled"
            if reason != "shutdown":
                self._count("abandoned", entry)
            log_event(logger, "abandoned", status=reason, duration_ms=self._duration_ms(entry),
                      **entry.log_fields)
        except Exception as exc:
            # A bug, or a database gone for longer than DB_WRITE_RETRY_S: the
            # lease runs out and the rescuer (any worker's tick) requeues the
            # execution, so nothing is lost.
            logger.exception("execution crashed", extra={"fields": entry.log_fields})
            with contextlib.suppress(Exception):
                await self._retry(entry, f"worker error: {exc!r}"[:500], ErrorKind.TRANSIENT, None)

    def _prompt(self, ex: ClaimedExecution) -> str:
        if ex.resolved_prompt is not None:  # an earlier attempt resolved it: say exactly the same
            return ex.resolved_prompt
        return templates.resolve(ex.prompt_template, ex.scheduled_for, ex.timezone, ex.prompt_variables)

    @staticmethod
    def _conversation_title(ex: ClaimedExecution) -> str | None:
        if ex.conversation_mode != "new_per_run":
            return None  # the SQL names a reuse conversation after the task
        local_day = ex.scheduled_for.astimezone(ZoneInfo(ex.timezone)).date().isoformat()
        return f"{ex.task_name} — {local_day}"[:200]

    async def _run_execution(self, entry: InFlight) -> None:
        ex = entry.execution
        deadline = entry.started_monotonic + ex.timeout_seconds
        try:
            prompt = self._prompt(ex)
        except (templates.UnknownVariableError, ValueError, KeyError) as exc:
            await self._finish(entry, ExecutionStatus.FAILED, error=f"prompt template: {exc}",
                               error_kind=ErrorKind.PERMANENT)
            return
        try:
            started = await self._persist("start", lambda: self.queue.start(
                ex.id, self.worker_id, ex.attempt, prompt, self._conversation_title(ex)), entry.log_fields)
        except ConversationGone as exc:
            await self._finish(entry, ExecutionStatus.FAILED, error=str(exc), error_kind=ErrorKind.PERMANENT)
            return
        except Fenced:
            log_event(logger, "abandoned", status="fenced", duration_ms=self._duration_ms(entry),
                      **entry.log_fields)
            return
        entry.log_fields["conversation_id"] = started.conversation_id
        act_as = ActAs(user_id=ex.user_id, agent_id=ex.agent_id, conversation_id=started.conversation_id,
                       execution_id=ex.id, user_message_id=started.user_message_id)

        remaining = deadline - time.monotonic()
        result: ChatResult | None = None
        if remaining > 0:
            try:
                async with asyncio.timeout(remaining):
                    result = await self.chat.reply(act_as, remaining + 1.0)
            except TimeoutError:
                result = None
        if result is None or (isinstance(result, ChatTransient) and result.timed_out
                              and time.monotonic() >= deadline - 0.05):
            await self._finish(entry, ExecutionStatus.TIMED_OUT, error=f"no reply within {ex.timeout_seconds}s",
                               error_kind=ErrorKind.TIMEOUT)
            return

        if isinstance(result, ChatTransient) and result.unreachable:
            self._chat_unreachable(result.error)
            # not the run's fault: the attempt is given back, the run waits out the breaker
            await self._retry(entry, result.error, result.kind, self.breaker.reopen_in_s(), spend_attempt=False)
            return
        self._chat_answered()
        if isinstance(result, ChatOk):
            await self._finish(entry, ExecutionStatus.SUCCEEDED, output=result.content[:OUTPUT_MAX_CHARS],
                               assistant_message_id=result.message_id, usage=result.usage)
        elif isinstance(result, ChatNeedsInput):
            await self._finish(entry, ExecutionStatus.NEEDS_INPUT, output=result.question,
                               assistant_message_id=result.message_id, usage=result.usage)
        elif isinstance(result, ChatPermanent):
            await self._finish(entry, ExecutionStatus.FAILED, error=result.error, error_kind=ErrorKind.PERMANENT)
        else:
            await self._retry(entry, result.error, result.kind, result.retry_after_s)

    async def _finish(self, entry: InFlight, status: ExecutionStatus, *, output: str | None = None,
                      error: str | None = None, error_kind: ErrorKind | None = None,
                      assistant_message_id: uuid.UUID | None = None,
                      usage: dict[str, Any] | None = None) -> None:
        ex = entry.execution
        entry.finishing = True
        ok = await self._persist("finish", lambda: self.queue.finish(
            ex.id, self.worker_id, ex.attempt, status, output=output, error=error,
            error_kind=error_kind.value if error_kind else None,
            assistant_message_id=assistant_message_id, usage=usage), entry.log_fields)
        if ok:
            self._count(status, entry)
        log_event(logger, "finished" if ok else "finish fenced", status=status,
                  level=logging.INFO if status is ExecutionStatus.SUCCEEDED or not ok else logging.WARNING,
                  duration_ms=self._duration_ms(entry), error_kind=error_kind.value if error_kind else None,
                  error=error, **entry.log_fields)

    def _chat_unreachable(self, error: str) -> None:
        if self.breaker.record_unreachable(error):
            log_event(logger, "chat circuit open", level=logging.WARNING, state=self.breaker.state,
                      claims_again_in_s=round(self.breaker.reopen_in_s(), 3), error=error)
            self._report_circuit(True, error)

    def _chat_answered(self) -> None:
        if self.breaker.record_answer():
            log_event(logger, "chat circuit closed", state=self.breaker.state)
            self._report_circuit(False, None)
            self._claim_wake.set()

    def _report_circuit(self, is_open: bool, reason: str | None) -> None:
        """Tell scheduler.workers (queue stats), in the background: the runs do not wait on it."""
        async def report() -> None:
            await self._survive("circuit", lambda: self.queue.report_chat_circuit(self.worker_id, is_open, reason))

        task = asyncio.create_task(report(), name="report-circuit")
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _retry(self, entry: InFlight, error: str, kind: ErrorKind, retry_after_s: float | None,
                     *, spend_attempt: bool = True) -> None:
        ex = entry.execution
        s = self.settings
        # spend_attempt=False (the function was unreachable): the attempt number is not raised, so
        # the backoff stays at the first step; never shorter than the breaker's cooldown
        delay = backoff_delay_s(ex.attempt if spend_attempt else 1, s.retry_base_s, s.retry_cap_s,
                                retry_after_s, min_s=s.retry_min_s)
        entry.finishing = True
        outcome = await self._persist("requeue_later", lambda: self.queue.requeue_later(
            ex.id, self.worker_id, ex.attempt, error, kind.value, delay, spend_attempt), entry.log_fields)
        if outcome == ExecutionStatus.QUEUED:
            self._count("retried", entry)
        elif outcome == ExecutionStatus.FAILED:
            self._count("failed", entry)
        log_event(logger, "retry" if outcome == ExecutionStatus.QUEUED else "finished" if outcome else "finish fenced",
                  level=logging.WARNING, status=outcome or "fenced", error_kind=kind.value, error=error,
                  retry_in_s=round(delay, 3) if outcome == ExecutionStatus.QUEUED else None,
                  duration_ms=self._duration_ms(entry), **entry.log_fields)


async def run_worker(settings: Settings) -> None:
    """Run one worker until SIGTERM/SIGINT (the CLI's `agent-tasks worker`)."""
    await Worker(settings).run()


def run(settings: Settings | None = None) -> int:
    """Blocking entry point: set up logging, run the worker, return a process exit code."""
    if settings is None:
        settings = Settings()  # DATABASE_URL and the rest come from the environment
    setup_logging(settings.log_level, settings.log_json)
    try:
        asyncio.run(run_worker(settings))
    except WorkerCrashed as exc:
        logger.error("%s", exc)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


def main() -> int:
    """`python -m worker.runner`: settings from the environment and `.env`."""
    from pydantic import ValidationError

    try:
        settings = Settings()
    except ValidationError as exc:
        setup_logging()
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"]) or "settings"
            logger.error("configuration error: %s: %s", where.upper(), err["msg"])
        return 2
    return run(settings)


if __name__ == "__main__":
    raise SystemExit(main())
