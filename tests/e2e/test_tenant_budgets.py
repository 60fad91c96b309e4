"""A task that uses up a daily budget pauses itself, through a real worker, the chat function and the fake model.

The budgets count the usage the model reports with each stored reply
(scheduler.token_usage); scheduled (act-as) turns count like the user's own.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from tests.conftest import create_agent, create_task, create_user
from tests.e2e.workers import (
    ChatEndpoint,
    WorkerProcess,
    chat_endpoint,
    connect,
    run_now,
    spawn_worker,
    wait_for,
    wait_status,
)

pytestmark = pytest.mark.e2e
__all__ = ["chat_endpoint"]


@pytest.fixture(scope="module")
def worker(chat_endpoint: ChatEndpoint, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    wp = spawn_worker(chat_endpoint, tmp_path_factory.mktemp("workers"), name="budget-worker",
                      retry_base_s=0.2, retry_cap_s=0.5, poll_interval_s=0.5)
    yield wp
    wp.stop()


@pytest.fixture
def db(chat_endpoint: ChatEndpoint, worker: WorkerProcess) -> Iterator[psycopg.Connection[dict[str, Any]]]:
    with connect(chat_endpoint.db_url) as conn:
        yield conn


def _task(db: psycopg.Connection[Any], task_id: uuid.UUID) -> dict[str, Any]:
    row = db.execute("select status, last_error, state from public.agent_tasks where id = %s", (task_id,)).fetchone()
    assert row is not None
    return dict(row)


def test_task_budget__the_run_that_uses_up_max_tokens_per_day_pauses_its_task(db: psycopg.Connection[Any]) -> None:
    uid = create_user(db)
    agent = create_agent(db, uid)
    task = create_task(db, uid, agent, max_tokens_per_day=1)
    first = run_now(db, task)
    done = wait_status(db, first, ("succeeded", "failed"), timeout_s=20)
    assert done["status"] == "succeeded"
    paused = wait_for(lambda: (t := _task(db, task))["status"] == "paused" and t, 10, what="the task to pause")
    assert "(max_tokens_per_day)" in paused["last_error"]
    assert "budget_paused_until" in paused["state"]
    note = db.execute("select title, body from public.notifications where user_id = %s and kind = 'task_paused'",
                      (uid,)).fetchone()
    assert note is not None and "max_tokens_per_day" in note["body"]
    with pytest.raises(psycopg.Error, match="max_tokens_per_day"):
        run_now(db, task)  # no run nobody scheduled while the budget is used up


def test_user_budget__a_scheduled_turn_past_it_is_refused_and_its_task_pauses(db: psycopg.Connection[Any]) -> None:
    """Act-as turns count toward the user's daily tokens, and are refused once they are used up."""
    uid = create_user(db)
    agent = create_agent(db, uid)
    task = create_task(db, uid, agent, overlap_policy="queue")
    db.execute("update scheduler.limits set value = '1' where name = 'max_tokens_per_user_per_day'")
    try:
        # both queued while under budget; the second waits for the first (overlap_policy = queue)
        first, second = run_now(db, task), run_now(db, task)
        assert wait_status(db, first, ("succeeded", "failed"), timeout_s=20)["status"] == "succeeded"
        refused = wait_status(db, second, ("succeeded", "failed"), timeout_s=20)
        assert refused["status"] == "failed"
        assert refused["error"].startswith("chat function 429 budget_exhausted: daily token budget used up")
        assert "(max_tokens_per_user_per_day)" in refused["error"]
        paused = _task(db, task)
        assert paused["status"] == "paused" and "(max_tokens_per_user_per_day)" in paused["last_error"]
        used = db.execute("select scheduler.tokens_used(%s, %s) as n", (uid, task)).fetchone()
        assert used is not None and used["n"] > 0, "the scheduled turn's usage counts toward the task"
    finally:
        db.execute("update scheduler.limits set value = '1000000' where name = 'max_tokens_per_user_per_day'")


def test_budget__resume_task_resumes_a_paused_task_at_once(db: psycopg.Connection[Any]) -> None:
    uid = create_user(db)
    agent = create_agent(db, uid)
    task = create_task(db, uid, agent, max_runs_per_day=1)
    first = run_now(db, task)
    assert wait_status(db, first, ("succeeded", "failed"), timeout_s=20)["status"] == "succeeded"
    paused = wait_for(lambda: (t := _task(db, task))["status"] == "paused" and t, 10, what="the task to pause")
    assert "max_runs_per_day is 1" in paused["last_error"]
    db.execute("select scheduler.resume_task(%s)", (task,))
    resumed = _task(db, task)
    assert resumed["status"] == "active" and "budget_paused_until" not in resumed["state"]
