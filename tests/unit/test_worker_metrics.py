"""The worker's Prometheus metrics (worker.metrics) against the in-memory queue: what a scrape
of /metrics says after runs succeed, fail and are retried, the queue's figures from its tick,
/healthz through a shutdown, and a port that is taken."""

from __future__ import annotations

import asyncio
import socket
import uuid
from datetime import UTC, datetime, timedelta

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.unit.test_worker import WAIT_S, running, settings, statuses, until
from worker.chat_client import ActAs, ChatOk, ChatPermanent, ChatResult, ChatTransient
from worker.metrics import QUEUE_REFRESH_S, QueueFigures
from worker.retry import ErrorKind
from worker.runner import Worker, WorkerCrashed
from worker.testing import InMemoryQueue


class ScriptedChat:
    """Replies by the execution's position in `script` (ok, permanent, transient)."""

    def __init__(self, script: dict[uuid.UUID, str]) -> None:
        self.script = script

    async def reply(self, act_as: ActAs, timeout_s: float) -> ChatResult:
        kind = self.script.get(act_as.execution_id, "ok")
        if kind == "permanent":
            return ChatPermanent("the model refused")
        if kind == "transient":
            return ChatTransient("the model is overloaded", ErrorKind.TRANSIENT, retry_after_s=60.0)
        return ChatOk(message_id=uuid.uuid4(), content="done")

    async def aclose(self) -> None:
        pass


async def scrape(port: int, path: str = "/metrics") -> tuple[int, str]:
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}{path}") as r:
        return r.status, await r.text()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


async def metrics_port(worker: Worker) -> int:
    """The port the worker's metrics server took (asked for port 0), once it listens."""
    await until(lambda: worker.metrics is not None and worker.metrics.port is not None, "the metrics server")
    assert worker.metrics is not None and worker.metrics.port is not None
    return worker.metrics.port


async def test_metrics__runs_by_outcome_durations_in_flight_and_the_queue() -> None:
    queue = InMemoryQueue()
    ids = queue.add(5)
    chat = ScriptedChat({ids[3]: "permanent", ids[4]: "transient"})
    worker = Worker(settings(worker_metrics_port=0, tick_interval_s=0.05, retry_min_s=60.0, retry_base_s=60.0,
                             retry_cap_s=600.0), chat=chat, queue=queue)
    async with running(worker):
        port = await metrics_port(worker)
        await until(lambda: worker.stats["succeeded"] == 3 and worker.stats["failed"] == 1
                    and worker.stats["retried"] == 1, "three successes, a failure and a retry")
        # the figures the next tick reads (a tick before the runs ended read older ones)
        assert worker.metrics is not None
        worker.metrics.queue = None
        calls = queue.queue_stats_calls
        await until(lambda: queue.queue_stats_calls > calls and worker.metrics is not None
                    and worker.metrics.queue is not None, "the tick to read the queue's figures")
        status, text = await scrape(port)
        assert status == 200
        got = samples(text)
        assert got[("agent_tasks_worker_runs_total", (("outcome", "succeeded"),))] == 3
        assert got[("agent_tasks_worker_runs_total", (("outcome", "failed"),))] == 1
        assert got[("agent_tasks_worker_runs_total", (("outcome", "retried"),))] == 1
        assert got[("agent_tasks_worker_runs_total", (("outcome", "timed_out"),))] == 0
        assert got[("agent_tasks_worker_claimed_total", ())] == 5
        assert got[("agent_tasks_worker_webhook_deliveries_total", (("outcome", "delivered"),))] == 0
        assert got[("agent_tasks_worker_run_duration_seconds_count", (("outcome", "succeeded"),))] == 3
        assert got[("agent_tasks_worker_run_duration_seconds_bucket", (("le", "+Inf"), ("outcome", "failed")))] == 1
        assert got[("agent_tasks_worker_in_flight", ())] == 0
        assert got[("agent_tasks_worker_slots", ())] == 4
        assert got[("agent_tasks_worker_chat_circuit_open", ())] == 0
        assert got[("agent_tasks_worker_info", (("worker_id", "w-test"),))] == 1
        # the queue as the tick read it: the retried run is queued again, three succeeded, one failed
        assert got[("agent_tasks_queue_executions", (("status", "queued"),))] == 1
        assert got[("agent_tasks_queue_finished_24h", (("status", "succeeded"),))] == 3
        assert got[("agent_tasks_queue_finished_24h", (("status", "failed"),))] == 1
        assert statuses(queue, ids).count("succeeded") == 3
        # the figures are refreshed every QUEUE_REFRESH_S, not on every 50 ms tick
        calls = queue.queue_stats_calls
        await asyncio.sleep(0.3)
        assert queue.queue_stats_calls == calls
        assert QUEUE_REFRESH_S >= 5


async def test_healthz__ok_while_running_then_503_while_stopping() -> None:
    queue = InMemoryQueue()
    worker = Worker(settings(worker_metrics_port=0, shutdown_grace_s=2.0), chat=ScriptedChat({}), queue=queue)
    async with running(worker) as task:
        port = await metrics_port(worker)
        assert await scrape(port, "/healthz") == (200, '{"status": "ok"}')
        worker.request_stop()
        assert (await scrape(port, "/healthz"))[0] == 503
        await asyncio.wait_for(task, WAIT_S)
    with pytest.raises(aiohttp.ClientConnectionError):
        await scrape(port, "/healthz")  # closed with the worker


async def test_metrics__a_taken_port_stops_the_worker_at_start_with_its_reason() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        queue = InMemoryQueue()
        worker = Worker(settings(worker_metrics_port=port), chat=ScriptedChat({}), queue=queue)
        with pytest.raises(WorkerCrashed, match=f"the metrics port 127.0.0.1:{port} cannot be opened"):
            await asyncio.wait_for(worker.run(), WAIT_S)
    assert queue.closed and queue.claims == []


def test_metrics__off_unless_a_port_is_set() -> None:
    assert Worker(settings(), chat=ScriptedChat({}), queue=InMemoryQueue()).metrics is None


def test_queue_figures__counts_and_the_oldest_queued_age() -> None:
    now = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
    figures = QueueFigures.from_rows([
        {"status": "queued", "count": 7, "oldest": now - timedelta(seconds=90), "next_run_after": now},
        {"status": "running", "count": 2, "oldest": now, "next_run_after": None},
        {"status": "succeeded", "count": 40, "oldest": now, "next_run_after": None},
        {"status": "cancelled", "count": 1, "oldest": now, "next_run_after": None},
    ], now)
    assert figures.active == {"queued": 7, "running": 2}
    assert figures.finished == {"succeeded": 40, "cancelled": 1}
    assert figures.oldest_queued_age_s == 90
