"""Worker processes that die, stop or compete: no execution is lost, none runs twice."""

from __future__ import annotations

import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.conftest import create_agent, create_task, create_user
from tests.e2e.workers import (
    ChatEndpoint,
    WorkerProcess,
    chat_endpoint,
    connect,
    execution,
    messages,
    run_now,
    spawn_worker,
    wait_for,
    wait_status,
    workers,
)

pytestmark = pytest.mark.e2e
__all__ = ["chat_endpoint", "workers"]


@pytest.fixture
def db(chat_endpoint: ChatEndpoint) -> Iterator[psycopg.Connection[dict[str, Any]]]:
    with connect(chat_endpoint.db_url) as conn:
        yield conn


@pytest.fixture
def task_factory(db: psycopg.Connection[Any]) -> Any:
    uid = create_user(db)
    agent = create_agent(db, uid)

    def make(prompt: str, **fields: Any) -> uuid.UUID:
        return create_task(db, uid, agent, prompt_template=f"{prompt} {uuid.uuid4().hex[:6]}", **fields)

    return make


def _start(chat: ChatEndpoint, tmp_path: Path, started: list[WorkerProcess], **settings: Any) -> WorkerProcess:
    wp = spawn_worker(chat, tmp_path, **settings)
    started.append(wp)
    return wp


def _exactly_one_exchange(db: psycopg.Connection[Any], ex: Any) -> None:
    assert [m["role"] for m in messages(db, execution_id=ex)] == ["user", "assistant"]


def test_sigkill__another_worker_completes_the_run_without_duplicates(
        chat_endpoint: ChatEndpoint, db: psycopg.Connection[Any], task_factory: Any, tmp_path: Path,
        workers: list[WorkerProcess]) -> None:
    a = _start(chat_endpoint, tmp_path, workers, lease_seconds=2, worker_concurrency=4)
    ex = run_now(db, task_factory("[[sleep:3000]] survive"))
    wait_for(lambda: execution(db, ex)["user_message_id"], timeout_s=5, what="worker A to start the run")
    assert execution(db, ex)["worker_id"] == a.worker_id
    a.kill()
    b = _start(chat_endpoint, tmp_path, workers, lease_seconds=2, tick_interval_s=0.5)
    row = wait_status(db, ex, "succeeded", timeout_s=15)
    assert row["worker_id"] == b.worker_id and row["attempt"] == 2
    _exactly_one_exchange(db, ex)


def test_sigkill__runs_are_rescued_on_session_death_not_on_lease(
        chat_endpoint: ChatEndpoint, db: psycopg.Connection[Any], task_factory: Any, tmp_path: Path,
        workers: list[WorkerProcess]) -> None:
    # a 60 s lease: only the death of A's session can bring the run back this soon
    a = _start(chat_endpoint, tmp_path, workers, lease_seconds=60, worker_concurrency=4)
    ex = run_now(db, task_factory("[[sleep:6000]] survive"))
    wait_for(lambda: execution(db, ex)["user_message_id"], timeout_s=5, what="worker A to start the run")
    assert execution(db, ex)["worker_id"] == a.worker_id
    wait_for(lambda: db.execute("select backend_pid from scheduler.workers where id = %s",
                                (a.worker_id,)).fetchone()["backend_pid"], timeout_s=5,
             what="worker A to attach its session")
    a.kill()  # while the model still answers (6 s): A cannot have finished the run
    killed_at = time.monotonic()
    b = _start(chat_endpoint, tmp_path, workers, lease_seconds=60)
    row = wait_status(db, ex, "succeeded", timeout_s=20)
    assert time.monotonic() - killed_at < 20  # the lease (60 s) did not bring it back
    assert row["worker_id"] == b.worker_id and row["attempt"] == 2
    assert "worker session ended" in b.output()
    _exactly_one_exchange(db, ex)


def test_listener_blip__runs_stay_with_their_live_worker(
        chat_endpoint: ChatEndpoint, db: psycopg.Connection[Any], task_factory: Any, tmp_path: Path,
        workers: list[WorkerProcess]) -> None:
    a = _start(chat_endpoint, tmp_path, workers, lease_seconds=60, worker_concurrency=4)
    b = _start(chat_endpoint, tmp_path, workers, lease_seconds=60, worker_concurrency=1)
    ex = run_now(db, task_factory("[[sleep:3000]] stay"))
    wait_for(lambda: execution(db, ex)["user_message_id"], timeout_s=5, what="a worker to start the run")
    owner = a if execution(db, ex)["worker_id"] == a.worker_id else b
    killed = db.execute(
        "select pg_terminate_backend(pid) as ok from pg_stat_activity where application_name = %s",
        (f"agent-tasks listener {owner.worker_id}",)).fetchall()
    assert killed and all(r["ok"] for r in killed)
    row = wait_status(db, ex, "succeeded", timeout_s=15)
    # the owner re-attached its session within the grace: nobody rescued the run
    assert row["worker_id"] == owner.worker_id and row["attempt"] == 1
    assert "worker session ended" not in a.output() + b.output()
    _exactly_one_exchange(db, ex)


def test_sigterm__in_flight_run_finishes_within_grace(
        chat_endpoint: ChatEndpoint, db: psycopg.Connection[Any], task_factory: Any, tmp_path: Path,
        workers: list[WorkerProcess]) -> None:
    a = _start(chat_endpoint, tmp_path, workers, shutdown_grace_s=10)
    ex = run_now(db, task_factory("[[sleep:1500]] finish me"))
    wait_for(lambda: execution(db, ex)["user_message_id"], timeout_s=5, what="the run to start")
    t0 = time.monotonic()
    a.terminate()
    assert a.wait(10) == 0
    assert time.monotonic() - t0 < 5
    row = execution(db, ex)
    assert row["status"] == "succeeded" and row["worker_id"] == a.worker_id
    _exactly_one_exchange(db, ex)
    gone = db.execute("select 1 from scheduler.workers where id = %s", (a.worker_id,)).fetchone()
    assert gone is None  # unregistered


def test_sigterm__short_grace_releases_the_run_to_another_worker(
        chat_endpoint: ChatEndpoint, db: psycopg.Connection[Any], task_factory: Any, tmp_path: Path,
        workers: list[WorkerProcess]) -> None:
    a = _start(chat_endpoint, tmp_path, workers, shutdown_grace_s=0.3)
    ex = run_now(db, task_factory("[[sleep:2000]] hand over"))
    wait_for(lambda: execution(db, ex)["user_message_id"], timeout_s=5, what="the run to start")
    a.terminate()
    assert a.wait(10) == 0
    row = execution(db, ex)
    assert row["status"] == "queued" and row["error_kind"] == "shutdown" and row["attempt"] == 0
    assert "released" in a.output()
    b = _start(chat_endpoint, tmp_path, workers)
    row = wait_status(db, ex, "succeeded", timeout_s=10)
    assert row["worker_id"] == b.worker_id and row["attempt"] == 1
    _exactly_one_exchange(db, ex)


def test_second_signal__exits_at_once(
        chat_endpoint: ChatEndpoint, db: psycopg.Connection[Any], task_factory: Any, tmp_path: Path,
        workers: list[WorkerProcess]) -> None:
    a = _start(chat_endpoint, tmp_path, workers, shutdown_grace_s=30)
    ex = run_now(db, task_factory("[[sleep:10000]] stuck"))
    wait_for(lambda: execution(db, ex)["user_message_id"], timeout_s=5, what="the run to start")
    a.terminate()
    time.sleep(0.3)
    t0 = time.monotonic()
    a.signal(signal.SIGINT)
    a.wait(5)
    assert time.monotonic() - t0 < 3
    assert execution(db, ex)["status"] == "queued"  # released on the way out


def test_two_workers__never_run_the_same_execution(
        chat_endpoint: ChatEndpoint, db: psycopg.Connection[Any], task_factory: Any, tmp_path: Path,
        workers: list[WorkerProcess]) -> None:
    a = _start(chat_endpoint, tmp_path, workers, worker_concurrency=8, worker_per_user_limit=0)
    b = _start(chat_endpoint, tmp_path, workers, worker_concurrency=8, worker_per_user_limit=0)
    task = task_factory("[[sleep:50]] many", overlap_policy="allow")
    ids = [run_now(db, task) for _ in range(60)]
    for ex in ids:
        wait_status(db, ex, "succeeded", timeout_s=20)
    rows = db.execute(
        "select execution_id, role, count(*) as n from public.chat_messages_v2 "
        "where execution_id = any(%s) group by 1, 2", (ids,)).fetchall()
    assert len(rows) == 2 * len(ids) and all(r["n"] == 1 for r in rows)
    by_worker = db.execute(
        "select worker_id, count(*) as n from public.agent_task_executions where id = any(%s) "
        "group by 1", (ids,)).fetchall()
    assert {r["worker_id"] for r in by_worker} == {a.worker_id, b.worker_id}
    assert all(execution(db, ex)["attempt"] == 1 for ex in ids)


def test_listener__reconnects_after_its_connection_is_killed(
        chat_endpoint: ChatEndpoint, db: psycopg.Connection[Any], task_factory: Any, tmp_path: Path,
        workers: list[WorkerProcess]) -> None:
    a = _start(chat_endpoint, tmp_path, workers, poll_interval_s=5)
    # the listener connects after the worker registers: wait for it rather than race it
    wait_for(lambda: db.execute("select 1 from pg_stat_activity where application_name = %s",
                                (f"agent-tasks listener {a.worker_id}",)).fetchone(),
             timeout_s=10, what="the listener connection")
    killed = db.execute(
        "select pg_terminate_backend(pid) as ok from pg_stat_activity where application_name = %s",
        (f"agent-tasks listener {a.worker_id}",)).fetchall()
    assert killed and all(r["ok"] for r in killed)
    wait_for(lambda: "listener lost" in a.output(), timeout_s=6, what="the worker to notice")
    time.sleep(0.5)
    ex = run_now(db, task_factory("after reconnect"))
    t0 = time.monotonic()
    wait_status(db, ex, "succeeded", timeout_s=5)
    # woken by NOTIFY again, not by the 5 s poll
    assert time.monotonic() - t0 < 2.5
