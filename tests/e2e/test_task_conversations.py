"""Tasks that converse, end to end: a real worker, the real chat function under
Deno and the fake model scripted to call report_task_status.

needs_input -> notification -> the user's reply -> a user_reply run that sees
the answer -> complete, for each schedule type; continue carrying state over
runs; the next_run_at override; what another user cannot do.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import psycopg
import pytest

from tests.conftest import as_user, create_agent, create_task, create_user
from tests.e2e.conftest import ChatFunction, FakeLLM
from tests.e2e.workers import WorkerProcess, connect, executions, run_now, spawn_worker, wait_for, wait_status

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def worker(chat_function: ChatFunction, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    wp = spawn_worker(chat_function, tmp_path_factory.mktemp("workers"), name="conversing-worker",
                      poll_interval_s=0.5, lease_seconds=10)
    yield wp
    wp.stop()
    out = wp.output()
    assert "Traceback" not in out, out[-4000:]


@pytest.fixture
def db(chat_function: ChatFunction, worker: WorkerProcess) -> Iterator[psycopg.Connection[dict[str, Any]]]:
    with connect(chat_function.db_url) as conn:
        yield conn


def status_prompt(*steps: dict[str, Any] | None) -> str:
    """A prompt that makes the fake model report steps[N-1] on the N-th run."""
    return f"[[status:{json.dumps(list(steps))}]] task {uuid.uuid4().hex[:8]}"


def task_row(db: psycopg.Connection[Any], task: uuid.UUID) -> dict[str, Any]:
    row = db.execute("select * from public.agent_tasks where id = %s", (task,)).fetchone()
    assert row is not None
    return dict(row)


def notifications(db: psycopg.Connection[Any], task: uuid.UUID) -> list[dict[str, Any]]:
    return [dict(r) for r in db.execute(
        "select * from public.notifications where data ->> 'task_id' = %s order by created_at", (str(task),))]


def due_now(db: psycopg.Connection[Any], task: uuid.UUID) -> None:
    """Make the task's next occurrence due now (the worker's 1 s tick enqueues it)."""
    db.execute("update public.agent_tasks set next_run_at = now() where id = %s", (task,))


def reply_through_chat(chat: ChatFunction, user: uuid.UUID, agent: uuid.UUID, conversation: Any, text: str) -> None:
    response = httpx.post(chat.url, json={"agent_id": str(agent), "conversation_id": str(conversation),
                                          "message": text}, headers=chat.user_headers(user), timeout=30)
    assert response.status_code == 200, response.text


def reply_by_insert(db: psycopg.Connection[Any], user: uuid.UUID, conversation: Any, text: str) -> None:
    with as_user(db, user):
        db.execute("insert into public.chat_messages_v2 (conversation_id, role, content) values (%s, 'user', %s)",
                   (conversation, text))


@pytest.mark.parametrize(("schedule", "reply_via", "second_step"), [
    ("cron", "chat", {"status": "complete", "final": True, "summary": "Repository chosen"}),
    ("interval", "insert", {"status": "complete", "final": True, "summary": "Repository chosen"}),
    ("once", "chat", None),  # a one-off that was waiting completes after that run, report or not
    ("manual", "insert", {"status": "complete", "summary": "Repository chosen"}),
])
def test_needs_input__reply_resumes_the_task_which_sees_the_answer_and_completes(
        db: psycopg.Connection[Any], chat_function: ChatFunction, llm: FakeLLM,
        schedule: str, reply_via: str, second_step: dict[str, Any] | None) -> None:
    uid = create_user(db)
    agent = create_agent(db, uid, name="Triage")
    fields: dict[str, Any] = {
        "cron": {"cron_expression": "0 9 * * 1"},
        "interval": {"interval_seconds": 3600},
        "once": {"run_at": datetime.now(UTC) + timedelta(days=1)},
        "manual": {},
    }[schedule]
    prompt = status_prompt({"status": "needs_input", "question": "Which repository?"}, second_step)
    task = create_task(db, uid, agent, name=f"Triage {schedule}", schedule_type=schedule,
                       prompt_template=prompt, **fields)
    if schedule == "manual":
        first = run_now(db, task)
    else:
        due_now(db, task)
        first = wait_for(lambda: next((e["id"] for e in executions(db, task)), None), timeout_s=10,
                         what="the due occurrence to be enqueued")
    row = wait_status(db, first, ("needs_input", "succeeded", "failed"), timeout_s=15)
    assert row["status"] == "needs_input" and row["output"] == "Which repository?"

    waiting = task_row(db, task)
    assert waiting["status"] == "waiting_input" and waiting["next_run_at"] is None
    assert waiting["state"]["pending_question"] == "Which repository?"
    [asked] = notifications(db, task)
    assert asked["kind"] == "task_needs_input" and asked["data"] == {
        "task_id": str(task), "execution_id": str(first), "conversation_id": str(row["conversation_id"])}
    assert db.execute("select scheduler.enqueue_due()").fetchone() is not None
    assert [e["id"] for e in executions(db, task)] == [first], "no scheduled run while waiting"

    answer = f"Use the repository atlas-{uuid.uuid4().hex[:6]}"
    if reply_via == "chat":
        reply_through_chat(chat_function, uid, agent, row["conversation_id"], answer)
    else:
        reply_by_insert(db, uid, row["conversation_id"], answer)
    resumed = wait_for(lambda: next((e for e in executions(db, task) if e["trigger_type"] == "user_reply"), None),
                       timeout_s=5, what="the user_reply run")
    assert resumed["conversation_id"] == row["conversation_id"]
    done = wait_status(db, resumed["id"], ("succeeded", "failed", "needs_input"), timeout_s=15)
    assert done["status"] == "succeeded", done

    # the resumed run's model call had the answer in its history and was told it was answering
    calls = [r for r in llm.requests()
             if any(m.get("role") == "system" and "started by the user's answer" in str(m.get("content"))
                    for m in r["messages"])]
    assert len(calls) == 1, calls
    assert any(m.get("role") == "user" and m.get("content") == answer for m in calls[0]["messages"])

    final = task_row(db, task)
    assert final["status"] == "completed" and final["next_run_at"] is None
    assert final["state"]["last_answer"] == answer
    assert [n["kind"] for n in notifications(db, task)] == ["task_needs_input", "task_completed"]


def test_continue__state_is_merged_over_three_runs_and_shown_to_the_next(
        db: psycopg.Connection[Any], llm: FakeLLM) -> None:
    uid = create_user(db)
    agent = create_agent(db, uid, name="Coach")
    prompt = status_prompt({"status": "continue", "state_update": {"step": 1, "goal": "run 5k"}},
                           {"status": "continue", "state_update": {"step": 2, "notes": ["knee ok"]}},
                           {"status": "continue", "state_update": {"step": 3}, "summary": "Third check-in"})
    task = create_task(db, uid, agent, name="Coaching", prompt_template=prompt)
    for _ in range(3):
        ex = run_now(db, task)
        assert wait_status(db, ex, ("succeeded", "failed", "needs_input"), timeout_s=15)["status"] == "succeeded"
    state = task_row(db, task)["state"]
    assert state == {"step": 3, "goal": "run 5k", "notes": ["knee ok"]}
    systems = [next(m["content"] for m in r["messages"] if m["role"] == "system") for r in llm.requests()]
    assert len(systems) == 3
    shown = [line.removeprefix("The task's state (kept from run to run): ") for line in systems[2].splitlines()
             if line.startswith("The task's state")]
    assert [json.loads(s) for s in shown] == [{"step": 2, "goal": "run 5k", "notes": ["knee ok"]}]
    assert 'scheduled task "Coaching"' in systems[2] and "only when started by hand" in systems[2]
    last = db.execute("select content, tool_calls from public.chat_messages_v2 where execution_id = %s"
                      " and role = 'assistant'", (ex,)).fetchone()
    assert last is not None and last["content"] == "Third check-in"
    [call] = last["tool_calls"]
    assert call["name"] == "report_task_status" and call["result"] == {"reported": "continue"}
    started, finished = datetime.fromisoformat(call["started_at"]), datetime.fromisoformat(call["finished_at"])
    assert started <= finished
    assert task_row(db, task)["status"] == "active"
    assert notifications(db, task) == []


def test_continue__next_run_at_is_honoured_and_capped_at_the_task_end(db: psycopg.Connection[Any]) -> None:
    uid = create_user(db)
    agent = create_agent(db, uid, name="Planner")
    now = datetime.now(UTC)
    soon = (now + timedelta(minutes=30)).replace(microsecond=0)
    ends = now + timedelta(hours=2)
    honoured = create_task(db, uid, agent, schedule_type="interval", interval_seconds=3600, ends_at=ends,
                           prompt_template=status_prompt({"status": "continue", "next_run_at": soon.isoformat()}))
    capped = create_task(db, uid, agent, schedule_type="interval", interval_seconds=3600, ends_at=ends,
                         prompt_template=status_prompt(
                             {"status": "continue", "next_run_at": (now + timedelta(days=3)).isoformat()}))
    for task in (honoured, capped):
        ex = run_now(db, task)
        assert wait_status(db, ex, ("succeeded", "failed"), timeout_s=15)["status"] == "succeeded"
    assert task_row(db, honoured)["next_run_at"] == soon
    assert task_row(db, capped)["next_run_at"] == task_row(db, capped)["ends_at"]


def test_report__a_bad_report_is_refused_to_the_model_and_the_run_is_ordinary(
        db: psycopg.Connection[Any]) -> None:
    uid = create_user(db)
    agent = create_agent(db, uid, name="Sloppy")
    task = create_task(db, uid, agent, prompt_template=status_prompt({"status": "needs_input"}))
    ex = run_now(db, task)
    assert wait_status(db, ex, ("succeeded", "failed", "needs_input"), timeout_s=15)["status"] == "succeeded"
    reply = db.execute("select tool_calls from public.chat_messages_v2 where execution_id = %s and role = 'assistant'",
                       (ex,)).fetchone()
    assert reply is not None
    assert reply["tool_calls"][0]["result"] == {
        "error": "invalid arguments for report_task_status: needs_input needs a question"}
    assert task_row(db, task)["status"] == "active"


def test_rls__another_user_cannot_answer_resume_or_read_the_task_or_its_notifications(
        db: psycopg.Connection[Any], chat_function: ChatFunction) -> None:
    alice, bob = create_user(db), create_user(db)
    agent = create_agent(db, alice, name="Private")
    bob_agent = create_agent(db, bob, name="Bob's")
    task = create_task(db, alice, agent, prompt_template=status_prompt(
        {"status": "needs_input", "question": "Secret?"}))
    ex = run_now(db, task)
    row = wait_status(db, ex, ("needs_input", "succeeded", "failed"), timeout_s=15)
    assert row["status"] == "needs_input"
    conversation = row["conversation_id"]

    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        reply_by_insert(db, bob, conversation, "I answer for alice")
    response = httpx.post(chat_function.url, json={"agent_id": str(bob_agent), "conversation_id": str(conversation),
                                                   "message": "me too"},
                          headers=chat_function.user_headers(bob), timeout=30)
    assert response.status_code == 404 and response.json()["error"]["code"] == "conversation_not_found"
    with pytest.raises(psycopg.errors.NoDataFound), as_user(db, bob):
        db.execute("select public.resume_task(%s)", (task,))
    with as_user(db, bob):
        seen = db.execute("select count(*) as n from public.notifications").fetchone()
        marked = db.execute("select public.mark_all_notifications_read() as n").fetchone()
        unread = db.execute("select public.unread_notification_count() as n").fetchone()
    assert seen is not None and seen["n"] == 0
    assert marked is not None and marked["n"] == 0
    assert unread is not None and unread["n"] == 0
    assert task_row(db, task)["status"] == "waiting_input"
    assert [e["trigger_type"] for e in executions(db, task)] == ["manual"]
    with as_user(db, alice):
        mine = db.execute("select public.unread_notification_count() as n").fetchone()
    assert mine is not None and mine["n"] == 1


def test_skipped_occurrence__is_told_in_the_task_conversation(db: psycopg.Connection[Any]) -> None:
    uid = create_user(db)
    agent = create_agent(db, uid, name="Ticker")
    task = create_task(db, uid, agent, name="Slow pulse", schedule_type="interval", interval_seconds=1,
                       overlap_policy="skip", prompt_template="[[sleep:2500]] tick")

    def told() -> dict[str, Any] | None:
        conversation = task_row(db, task)["conversation_id"]
        row = db.execute("select * from public.chat_messages_v2 where conversation_id = %s"
                         " and metadata ->> 'kind' = 'skipped' order by created_at limit 1",
                         (conversation,)).fetchone() if conversation else None
        return dict(row) if row else None

    message = wait_for(told, timeout_s=10, what="a skipped occurrence in the conversation")
    db.execute("update public.agent_tasks set status = 'paused' where id = %s", (task,))
    skipped = next(e for e in executions(db, task) if e["id"] == message["execution_id"])
    assert skipped["status"] == "skipped" and message["role"] == "system"
    meta = message["metadata"]
    assert meta["source"] == "scheduler" and meta["reason"] == "overlap" and meta["task_name"] == "Slow pulse"
    assert datetime.fromisoformat(meta["scheduled_for"]) == skipped["scheduled_for"]
    assert "previous run was still active" in message["content"]


def test_notify_on_change__fires_only_when_the_reply_changes(db: psycopg.Connection[Any]) -> None:
    uid = create_user(db)
    agent = create_agent(db, uid, name="Watcher")
    task = create_task(db, uid, agent, name="Build watch", prompt_template="Status of the build",
                       notify_on=["change"])

    def run_once() -> None:
        ex = run_now(db, task)
        assert wait_status(db, ex, ("succeeded", "failed"), timeout_s=15)["status"] == "succeeded"

    run_once()
    run_once()
    assert notifications(db, task) == [], "the same reply twice is no change"
    db.execute("update public.agent_tasks set prompt_template = 'Status of the deploy' where id = %s", (task,))
    run_once()
    [changed] = notifications(db, task)
    assert changed["kind"] == "task_changed" and changed["body"] == "Echo: Status of the deploy"
    assert changed["data"]["changed"] is True


def test_cli_reply__answers_as_the_owner_through_the_chat_function_and_resumes_the_task(
        db: psycopg.Connection[Any], chat_function: ChatFunction, capsys: pytest.CaptureFixture[str]) -> None:
    from worker.cli import main

    uid = create_user(db)
    agent = create_agent(db, uid, name="Asker")
    task = create_task(db, uid, agent, name="Asks first", prompt_template=status_prompt(
        {"status": "needs_input", "question": "Which team?"}, {"status": "complete", "summary": "Team noted"}))
    ex = run_now(db, task)
    conversation = wait_status(db, ex, ("needs_input", "succeeded", "failed"), timeout_s=15)["conversation_id"]
    capsys.readouterr()

    code = main(["conversations", "reply", str(conversation), "The platform team",
                 "--database-url", chat_function.db_url, "--chat-url", chat_function.url, "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["message"]["content"] == "Echo: The platform team"
    resumed = out["resumed_execution_id"]
    assert resumed is not None
    assert wait_status(db, resumed, ("succeeded", "failed"), timeout_s=15)["status"] == "succeeded"
    assert task_row(db, task)["status"] == "completed"
    answer = db.execute("select user_id, metadata from public.chat_messages_v2 where conversation_id = %s"
                        " and content = 'The platform team'", (conversation,)).fetchone()
    assert answer is not None and answer["user_id"] == uid and answer["metadata"] == {}

    missing = main(["conversations", "reply", str(uuid.uuid4()), "hello",
                    "--database-url", chat_function.db_url, "--chat-url", chat_function.url])
    assert missing == 1 and "not found" in capsys.readouterr().err
