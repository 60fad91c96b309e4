"""A real worker process runs executions end to end: conversations, retries, failures, cancel.

One worker process and one chat endpoint serve the whole module (each test uses
its own user, agent and task, so they never see each other's rows).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import psycopg
import pytest

from tests.conftest import create_agent, create_task, create_user
from tests.e2e.workers import (
    ChatEndpoint,
    WorkerProcess,
    chat_endpoint,
    connect,
    execution,
    executions,
    messages,
    run_now,
    spawn_worker,
    wait_for,
    wait_status,
)
from tests.unit.test_worker_metrics import samples
from worker.stack import free_port

pytestmark = pytest.mark.e2e
__all__ = ["chat_endpoint"]


METRICS_PORT = free_port(0)


@pytest.fixture(scope="module")
def worker(chat_endpoint: ChatEndpoint, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    wp = spawn_worker(chat_endpoint, tmp_path_factory.mktemp("workers"), name="runs-worker",
                      retry_base_s=0.2, retry_cap_s=0.5, poll_interval_s=0.5, lease_seconds=10,
                      worker_metrics_port=METRICS_PORT)
    yield wp
    wp.stop()
    out = wp.output()
    assert "Traceback" not in out, out[-4000:]


@pytest.fixture
def db(chat_endpoint: ChatEndpoint, worker: WorkerProcess) -> Iterator[psycopg.Connection[dict[str, Any]]]:
    with connect(chat_endpoint.db_url) as conn:
        yield conn


@pytest.fixture
def owner(db: psycopg.Connection[Any]) -> tuple[uuid.UUID, uuid.UUID]:
    uid = create_user(db)
    return uid, create_agent(db, uid, name="Reporter")


def _one_user_one_assistant(db: psycopg.Connection[Any], execution_id: Any) -> list[dict[str, Any]]:
    msgs = messages(db, execution_id=execution_id)
    assert [m["role"] for m in msgs] == ["user", "assistant"], msgs
    return msgs


def test_interval_task__runs_in_the_conversation_created_on_first_run(
        db: psycopg.Connection[Any], owner: tuple[uuid.UUID, uuid.UUID]) -> None:
    uid, agent = owner
    token = uuid.uuid4().hex[:8]
    task = create_task(db, uid, agent, name="Pulse", schedule_type="interval", interval_seconds=1,
                       prompt_template=f"Pulse {token} on {{{{TODAY}}}} for {{{{team}}}}",
                       prompt_variables={"team": "core"})
    def two_succeeded() -> list[dict[str, Any]] | None:
        ok = [e for e in executions(db, task) if e["status"] == "succeeded"]
        return ok[:2] if len(ok) >= 2 else None

    done = wait_for(two_succeeded, timeout_s=10, what="two succeeded runs")
    db.execute("update public.agent_tasks set status = 'paused' where id = %s", (task,))
    conv = db.execute("select conversation_id from public.agent_tasks where id = %s", (task,)).fetchone()
    assert conv is not None and conv["conversation_id"] is not None  # stored on the task
    assert {e["conversation_id"] for e in done} == {conv["conversation_id"]}  # reused
    first = done[0]
    user_msg, reply = _one_user_one_assistant(db, first["id"])
    today = first["scheduled_for"].astimezone(ZoneInfo("UTC")).date().isoformat()
    assert user_msg["content"] == f"Pulse {token} on {today} for core"
    assert user_msg["metadata"] == {"source": "scheduler", "task_id": str(task), "task_name": "Pulse",
                                    "execution_id": str(first["id"]), "trigger_type": "schedule"}
    assert reply["content"].startswith("Echo:") and token in reply["content"]
    assert first["assistant_message_id"] == reply["id"] and first["user_message_id"] == user_msg["id"]
    assert first["output"] == reply["content"][:500] and first["error"] is None
    assert first["attempt"] == 1 and first["duration_ms"] is not None
    t = db.execute("select success_count, last_run_at from public.agent_tasks where id = %s", (task,)).fetchone()
    assert t is not None and t["success_count"] >= 2 and t["last_run_at"] is not None


def test_reuse__runs_in_the_target_conversation(db: psycopg.Connection[Any],
                                                owner: tuple[uuid.UUID, uuid.UUID]) -> None:
    uid, agent = owner
    conv = db.execute("insert into public.conversation_sessions (user_id, agent_id, title) "
                      "values (%s, %s, 'Mine') returning id", (uid, agent)).fetchone()
    assert conv is not None
    task = create_task(db, uid, agent, conversation_id=conv["id"], prompt_template="Status please")
    ex = run_now(db, task)
    row = wait_status(db, ex, "succeeded")
    assert row["conversation_id"] == conv["id"]
    msgs = messages(db, conversation_id=conv["id"])
    assert [(m["role"], m["metadata"].get("trigger_type")) for m in msgs] == [("user", "manual"),
                                                                             ("assistant", None)]
    title = db.execute("select title from public.conversation_sessions where id = %s", (conv["id"],)).fetchone()
    assert title is not None and title["title"] == "Mine"


def test_new_per_run__each_run_gets_a_conversation_named_after_the_task(
        db: psycopg.Connection[Any], owner: tuple[uuid.UUID, uuid.UUID]) -> None:
    uid, agent = owner
    task = create_task(db, uid, agent, name="Digest", conversation_mode="new_per_run",
                       timezone="Pacific/Kiritimati", overlap_policy="allow")
    ids = [run_now(db, task), run_now(db, task)]
    rows = [wait_status(db, i, "succeeded") for i in ids]
    convs = {r["conversation_id"] for r in rows}
    assert len(convs) == 2
    for r in rows:
        day = r["scheduled_for"].astimezone(ZoneInfo("Pacific/Kiritimati")).date().isoformat()
        c = db.execute("select title from public.conversation_sessions where id = %s",
                       (r["conversation_id"],)).fetchone()
        assert c is not None and c["title"] == f"Digest — {day}"
        _one_user_one_assistant(db, r["id"])
    t = db.execute("select conversation_id from public.agent_tasks where id = %s", (task,)).fetchone()
    assert t is not None and t["conversation_id"] is None


def test_cron_task__planner_sets_next_run_at_within_a_second(
        db: psycopg.Connection[Any], owner: tuple[uuid.UUID, uuid.UUID]) -> None:
    uid, agent = owner
    created = datetime.now(UTC)
    task = create_task(db, uid, agent, schedule_type="cron", cron_expression="*/5 * * * *",
                       timezone="Asia/Kolkata")  # +05:30: minutes still align to */5
    row = wait_for(lambda: db.execute("select next_run_at from public.agent_tasks where id = %s and "
                                      "next_run_at is not null", (task,)).fetchone(),
                   timeout_s=1.0, what="the planner to set next_run_at")
    assert row is not None
    nxt = row["next_run_at"]
    assert nxt > created - timedelta(seconds=1) and nxt <= created + timedelta(minutes=5)
    assert nxt.minute % 5 == 0 and nxt.second == 0


def test_cron_task__due_occurrence_runs_and_the_planner_moves_to_the_next(
        db: psycopg.Connection[Any], owner: tuple[uuid.UUID, uuid.UUID]) -> None:
    """A real cron occurrence end to end, without waiting for the wall clock to reach it:
    once the planner has set next_run_at, the clock is "advanced" by moving that
    occurrence into the past (what a minute of waiting would do)."""
    uid, agent = owner
    # The planner also follows the wall clock: if a minute boundary passed between planning and
    # the update below, the real next minute would fire too. Start well inside a minute.
    second = db.execute("select extract(second from now()) as s").fetchone()["s"]
    if second > 35:
        time.sleep(61 - float(second))
    task = create_task(db, uid, agent, name="Minutely", schedule_type="cron", cron_expression="* * * * *",
                       timezone="Europe/Berlin", prompt_template="Minute report for {{TODAY}}")
    planned = wait_for(lambda: db.execute("select next_run_at from public.agent_tasks where id = %s and "
                                          "next_run_at is not null", (task,)).fetchone(),
                       timeout_s=2.0, what="the planner to set next_run_at")
    occurrence = planned["next_run_at"] - timedelta(minutes=1)  # a minute boundary, just past
    db.execute("update public.agent_tasks set next_run_at = %s, last_scheduled_for = %s - interval '1 minute'"
               " where id = %s", (occurrence, occurrence, task))
    ran = wait_for(lambda: [e for e in executions(db, task)
                            if e["status"] == "succeeded" and e["scheduled_for"] == occurrence] or None,
                   timeout_s=10, what="the cron occurrence to run")
    assert len(ran) == 1 and ran[0]["trigger_type"] == "schedule"
    msgs = _one_user_one_assistant(db, ran[0]["id"])
    assert msgs[0]["metadata"] == {"source": "scheduler", "task_id": str(task), "task_name": "Minutely",
                                   "execution_id": str(ran[0]["id"]), "trigger_type": "schedule"}
    today = occurrence.astimezone(ZoneInfo("Europe/Berlin")).date().isoformat()
    assert msgs[0]["content"] == f"Minute report for {today}"
    # the planner computed the next occurrence from the one that ran: the next minute
    nxt = wait_for(lambda: db.execute("select next_run_at from public.agent_tasks where id = %s and "
                                      "next_run_at > %s", (task, occurrence)).fetchone(),
                   timeout_s=2.0, what="the next occurrence")
    assert nxt["next_run_at"] == occurrence + timedelta(minutes=1)


def _metrics() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return samples(httpx.get(f"http://127.0.0.1:{METRICS_PORT}/metrics", timeout=5).text)


def test_metrics__a_scrape_counts_the_workers_runs_and_sees_the_queue(
        db: psycopg.Connection[Any], owner: tuple[uuid.UUID, uuid.UUID]) -> None:
    uid, agent = owner
    succeeded = ("agent_tasks_worker_runs_total", (("outcome", "succeeded"),))
    failed = ("agent_tasks_worker_runs_total", (("outcome", "failed"),))
    before = _metrics()
    ok = run_now(db, create_task(db, uid, agent, name="Counted", prompt_template="count me"))
    doomed = run_now(db, create_task(db, uid, agent, name="Counted failure", prompt_template="[[fail:401]] no"))
    wait_status(db, ok, "succeeded")
    wait_status(db, doomed, ("failed",))
    after = _metrics()
    assert after[succeeded] - before[succeeded] >= 1 and after[failed] - before[failed] >= 1
    assert after[("agent_tasks_worker_info", (("worker_id", "runs-worker"),))] == 1
    assert after[("agent_tasks_worker_slots", ())] == 32
    assert after[("agent_tasks_worker_run_duration_seconds_count", (("outcome", "succeeded"),))] >= 1
    # the queue's figures, read on the worker's tick from scheduler.queue_stats()
    assert ("agent_tasks_queue_executions", (("status", "queued"),)) in after
    assert after[("agent_tasks_queue_figures_age_seconds", ())] < 30
    health = httpx.get(f"http://127.0.0.1:{METRICS_PORT}/healthz", timeout=5)
    assert health.status_code == 200 and health.json() == {"status": "ok"}


def test_retry__transient_errors_then_success_with_one_message_each(
        db: psycopg.Connection[Any], owner: tuple[uuid.UUID, uuid.UUID]) -> None:
    uid, agent = owner
    task = create_task(db, uid, agent, max_retries=3,
                       prompt_template=f"[[fail_times:2:500]] flaky {uuid.uuid4().hex[:8]}")
    ex = run_now(db, task)
    row = wait_status(db, ex, "succeeded", timeout_s=15)
    assert row["attempt"] == 3
    _one_user_one_assistant(db, ex)


def test_permanent_failure__fails_at_once_and_notifies(db: psycopg.Connection[Any],
                                                       owner: tuple[uuid.UUID, uuid.UUID]) -> None:
    uid, agent = owner
    task = create_task(db, uid, agent, name="Doomed", max_retries=5, prompt_template="[[fail:401]] nope")
    ex = run_now(db, task)
    row = wait_status(db, ex, ("failed",))
    assert row["attempt"] == 1 and row["error_kind"] == "permanent" and row["error"]
    note = db.execute("select * from public.notifications where user_id = %s", (uid,)).fetchone()
    assert note is not None and note["kind"] == "task_failed"
    assert note["data"]["execution_id"] == str(ex) and "Doomed" in note["title"]
    assert [m["role"] for m in messages(db, execution_id=ex)] == ["user"]


def test_timeout__times_out_after_timeout_seconds(db: psycopg.Connection[Any],
                                                  owner: tuple[uuid.UUID, uuid.UUID]) -> None:
    uid, agent = owner
    task = create_task(db, uid, agent, timeout_seconds=1, prompt_template="[[sleep:5000]] slow")
    ex = run_now(db, task)
    row = wait_status(db, ex, ("timed_out", "failed", "succeeded"), timeout_s=6)
    assert row["status"] == "timed_out" and row["error_kind"] == "timeout"
    assert 900 <= row["duration_ms"] < 3000


def _cancel_during_sleep(db: psycopg.Connection[Any], owner: tuple[uuid.UUID, uuid.UUID]) -> uuid.UUID:
    uid, agent = owner
    task = create_task(db, uid, agent, prompt_template=f"[[sleep:3000]] long {uuid.uuid4().hex[:6]}")
    ex = run_now(db, task)
    wait_for(lambda: execution(db, ex)["user_message_id"], timeout_s=5, what="the run to start")
    db.execute("select scheduler.cancel_execution(%s, 'test cancel')", (ex,))
    assert execution(db, ex)["status"] == "cancelled"
    return ex


def test_cancel__running_execution_is_abandoned_within_a_second(
        db: psycopg.Connection[Any], owner: tuple[uuid.UUID, uuid.UUID]) -> None:
    ex = _cancel_during_sleep(db, owner)
    wait_for(lambda: f"execution_id={ex}" in _abandoned_lines(), timeout_s=1.0,
             what="the worker to abandon it")
    row = execution(db, ex)
    assert row["status"] == "cancelled" and row["error_kind"] == "cancelled"
    assert row["assistant_message_id"] is None and row["output"] is None


def test_cancel__no_assistant_message_after_cancel(db: psycopg.Connection[Any],
                                                   owner: tuple[uuid.UUID, uuid.UUID]) -> None:
    ex = _cancel_during_sleep(db, owner)
    time.sleep(3.5)  # past the model's sleep
    assert [m["role"] for m in messages(db, execution_id=ex)] == ["user"]
    assert execution(db, ex)["status"] == "cancelled"


_WORKER_LOG: list[Path] = []


@pytest.fixture(autouse=True)
def _remember_log(worker: WorkerProcess) -> None:
    _WORKER_LOG[:] = [worker.log]


def _abandoned_lines() -> str:
    text = _WORKER_LOG[0].read_text(errors="replace") if _WORKER_LOG else ""
    return "\n".join(line for line in text.splitlines() if " abandoned " in line)


def test_overlap_skip__records_skipped_occurrences(db: psycopg.Connection[Any],
                                                   owner: tuple[uuid.UUID, uuid.UUID]) -> None:
    uid, agent = owner
    task = create_task(db, uid, agent, schedule_type="interval", interval_seconds=1,
                       overlap_policy="skip", prompt_template="[[sleep:2500]] tick")
    skipped = wait_for(lambda: [e for e in executions(db, task) if e["status"] == "skipped"],
                       timeout_s=8, what="a skipped occurrence")
    db.execute("update public.agent_tasks set status = 'paused' where id = %s", (task,))
    assert skipped[0]["error_kind"] == "overlap" and skipped[0]["finished_at"] is not None
    running = [e for e in executions(db, task) if e["status"] in ("running", "succeeded")]
    assert running, "the first occurrence ran"


def test_needs_input__question_pauses_the_task(db: psycopg.Connection[Any],
                                               owner: tuple[uuid.UUID, uuid.UUID]) -> None:
    uid, agent = owner
    task = create_task(db, uid, agent, prompt_template="[[ask:Which repository?]] triage")
    ex = run_now(db, task)
    row = wait_status(db, ex, ("needs_input", "succeeded", "failed"))
    assert row["status"] == "needs_input" and row["output"] == "Which repository?"
    t = db.execute("select status, state from public.agent_tasks where id = %s", (task,)).fetchone()
    assert t is not None and t["status"] == "waiting_input"
    assert t["state"]["pending_question"] == "Which repository?"


def test_empty_reply__retried_then_failed_as_empty_reply(db: psycopg.Connection[Any],
                                                         owner: tuple[uuid.UUID, uuid.UUID]) -> None:
    uid, agent = owner
    task = create_task(db, uid, agent, max_retries=1, prompt_template="[[empty]] say nothing")
    ex = run_now(db, task)
    row = wait_status(db, ex, ("failed", "succeeded"), timeout_s=10)
    assert row["status"] == "failed" and row["error_kind"] == "empty_reply" and row["attempt"] == 2
