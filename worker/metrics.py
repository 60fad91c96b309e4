"""The worker's Prometheus metrics (`WORKER_METRICS_PORT`; off by default).

`GET /metrics` on the worker's own small HTTP server (aiohttp, in the
worker's event loop) answers in Prometheus' text format:

* what this worker did: runs by outcome (counters read from the worker's
  own tallies, `Worker.stats`, so the log's "stopped" line and the metrics
  cannot disagree), how long runs took from claim to outcome (a histogram),
  runs in flight against its slots, and its chat circuit breaker;
* the queue as a whole (the same on every worker: aggregate with `max`),
  from `scheduler.queue_stats()` at most every QUEUE_REFRESH_S, on the
  worker's tick: queued and running runs, the oldest queued run's age, what
  finished in the last 24 hours by status.

`GET /healthz` answers 200 while the worker runs and 503 once it is
stopping, for a supervisor's liveness or readiness probe.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

# the queue's figures cost a query (about 1 ms at 1,000,000 history rows,
# bench_operator.py); every worker's tick would be 1 per second per worker
QUEUE_REFRESH_S = 15.0
# claim to outcome: a no-op run takes milliseconds, a model run with tools minutes
RUN_SECONDS_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
# Worker.stats keys that count runs by outcome; "claimed" is its own counter
OUTCOMES = ("succeeded", "failed", "timed_out", "needs_input", "retried", "abandoned", "released")


@dataclass
class QueueFigures:
    """One reading of scheduler.queue_stats()."""

    read_at: float  # time.monotonic()
    active: dict[str, int] = field(default_factory=dict)  # queued, running
    finished: dict[str, int] = field(default_factory=dict)  # by terminal status, last 24 h
    oldest_queued_age_s: float | None = None

    @classmethod
    def from_rows(cls, rows: Iterable[Mapping[str, Any]], now: datetime | None = None) -> QueueFigures:
        now = now or datetime.now(UTC)
        figures = cls(read_at=time.monotonic())
        for row in rows:
            status, count = str(row["status"]), int(row["count"])
            if status in ("queued", "running"):
                figures.active[status] = count
                if status == "queued" and row.get("oldest") is not None:
                    figures.oldest_queued_age_s = max(0.0, (now - row["oldest"]).total_seconds())
            else:
                figures.finished[status] = count
        return figures


class _WorkerCollector(Collector):
    """Reads the worker's state at scrape time: nothing to keep in step."""

    def __init__(self, worker_id: str, stats: Callable[[], Mapping[str, int]], in_flight: Callable[[], int],
                 slots: int, circuit_open: Callable[[], bool], queue: Callable[[], QueueFigures | None]) -> None:
        self._worker_id = worker_id
        self._stats = stats
        self._in_flight = in_flight
        self._slots = slots
        self._circuit_open = circuit_open
        self._queue = queue

    def collect(self) -> Iterable[Metric]:
        stats = self._stats()
        runs = CounterMetricFamily("agent_tasks_worker_runs", "Runs this worker brought to an outcome "
                                   "(retried: back in the queue for another attempt).", labels=["outcome"])
        for outcome in OUTCOMES:
            runs.add_metric([outcome], stats.get(outcome, 0))
        yield runs
        yield CounterMetricFamily("agent_tasks_worker_claimed", "Executions this worker claimed.",
                                  value=stats.get("claimed", 0))
        webhooks = CounterMetricFamily("agent_tasks_worker_webhook_deliveries", "Webhook POSTs this worker "
                                       "made, by what came of them (retried: to be tried again).", labels=["outcome"])
        for outcome in ("delivered", "retried", "failed"):
            webhooks.add_metric([outcome], stats.get(f"webhook_{outcome}", 0))
        yield webhooks
        yield GaugeMetricFamily("agent_tasks_worker_in_flight", "Executions this worker runs now.",
                                value=self._in_flight())
        yield GaugeMetricFamily("agent_tasks_worker_slots", "WORKER_CONCURRENCY.", value=self._slots)
        yield GaugeMetricFamily("agent_tasks_worker_chat_circuit_open",
                                "1 while the chat function is unreachable and the worker stops claiming.",
                                value=1 if self._circuit_open() else 0)
        info = GaugeMetricFamily("agent_tasks_worker_info", "The worker's id.", labels=["worker_id"])
        info.add_metric([self._worker_id], 1)
        yield info
        queue = self._queue()
        if queue is None:
            return
        active = GaugeMetricFamily("agent_tasks_queue_executions", "Queued and running executions of the "
                                   "whole queue (the same on every worker).", labels=["status"])
        for status in ("queued", "running"):
            active.add_metric([status], queue.active.get(status, 0))
        yield active
        finished = GaugeMetricFamily("agent_tasks_queue_finished_24h", "Executions of the whole queue that "
                                     "finished in the last 24 hours, by status.", labels=["status"])
        for status, count in sorted(queue.finished.items()):
            finished.add_metric([status], count)
        yield finished
        yield GaugeMetricFamily("agent_tasks_queue_oldest_queued_age_seconds",
                                "Age of the oldest queued execution (its scheduled time; 0 when none).",
                                value=queue.oldest_queued_age_s or 0.0)
        yield GaugeMetricFamily("agent_tasks_queue_figures_age_seconds",
                                "How old the queue figures above are.", value=time.monotonic() - queue.read_at)


class WorkerMetrics:
    """A worker's registry (one per Worker, never the process-global one) and its HTTP server."""

    def __init__(self, worker_id: str, stats: Callable[[], Mapping[str, int]], in_flight: Callable[[], int],
                 slots: int, circuit_open: Callable[[], bool]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.queue: QueueFigures | None = None
        self.registry.register(_WorkerCollector(worker_id, stats, in_flight, slots, circuit_open,
                                                lambda: self.queue))
        self.run_seconds = Histogram("agent_tasks_worker_run_duration_seconds",
                                     "From claim to outcome, by outcome.", ["outcome"],
                                     buckets=RUN_SECONDS_BUCKETS, registry=self.registry)
        self.stopping = False
        # the port it listens on once serve() returned (the actual one when 0 was asked for)
        self.port: int | None = None
        self._runner: web.AppRunner | None = None

    def observe_run(self, outcome: str, seconds: float) -> None:
        self.run_seconds.labels(outcome).observe(seconds)

    def queue_due(self) -> bool:
        return self.queue is None or time.monotonic() - self.queue.read_at >= QUEUE_REFRESH_S

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    async def _metrics(self, _request: web.Request) -> web.Response:
        return web.Response(body=self.exposition(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, _request: web.Request) -> web.Response:
        if self.stopping:
            return web.json_response({"status": "stopping"}, status=503)
        return web.json_response({"status": "ok"})

    async def serve(self, host: str, port: int) -> int:
        """Listen on host:port (port 0: any free port); returns the port. Raises OSError when it is taken."""
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        try:
            await site.start()
        except OSError:
            await self._runner.cleanup()
            self._runner = None
            raise
        server = site._server  # the bound socket: the actual port when 0 was asked for
        sockets = getattr(server, "sockets", None) or []
        self.port = int(sockets[0].getsockname()[1]) if sockets else port
        return self.port

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
            self.port = None
