"""The console's live channel (migration 20261121001500_console_live.sql): one NOTIFY per statement
and watched owner, naming the table, owner, conversation and ids, never the content."""

from __future__ import annotations

import json
import uuid
from typing import Any

import psycopg
import pytest

from tests.conftest import as_user, create_agent, create_task, create_user

pytestmark = pytest.mark.integration


def _drain(listener: psycopg.Connection[Any]) -> list[dict[str, Any]]:
    return [json.loads(n.payload) for n in listener.notifies(timeout=0.5, stop_after=None)
            if n.channel == "console_live"]


def _watch(conn: psycopg.Connection[Any], *users: uuid.UUID, console: uuid.UUID | None = None,
           ttl: int = 60) -> int:
    return int(conn.execute("select scheduler.console_watch(%s, %s::uuid[], %s) as n",
                            (console or uuid.uuid4(), list(users), ttl)).fetchone()["n"])


def test_console_live__one_notify_per_statement_and_owner(db_url: str, conn: psycopg.Connection[Any]) -> None:
    alice, bob = create_user(conn), create_user(conn)
    agent_a, agent_b = create_agent(conn, alice), create_agent(conn, bob)
    _watch(conn, alice, bob)
    conv = conn.execute("insert into public.conversation_sessions (user_id, agent_id) values (%s, %s)"
                        " returning id", (alice, agent_a)).fetchone()["id"]
    with psycopg.connect(db_url, autocommit=True) as listener:
        listener.execute("listen console_live")
        with as_user(conn, alice):
            conn.execute("insert into public.chat_messages_v2 (conversation_id, role, content)"
                         " select %s, 'user', 'secret ' || i from generate_series(1, 3) i", (conv,))
        events = _drain(listener)
        messages = [e for e in events if e["t"] == "chat_messages_v2"]
        assert len(messages) == 1
        assert messages[0]["u"] == str(alice) and messages[0]["c"] == str(conv) and messages[0]["n"] == 3
        assert len(messages[0]["ids"]) == 3
        # the conversation's counters changed too: its own event, for the same owner
        assert {e["t"] for e in events} == {"chat_messages_v2", "conversation_sessions"}
        assert all(e["u"] == str(alice) for e in events)
        assert "secret" not in json.dumps(events)

        # one statement touching two owners' rows: one event each
        conn.execute("insert into public.notifications (user_id, kind, title) values (%s, 'info', 'a'),"
                     " (%s, 'info', 'b'), (%s, 'info', 'c')", (alice, bob, bob))
        notes = sorted((e["u"], e["n"]) for e in _drain(listener))
        assert notes == sorted([(str(alice), 1), (str(bob), 2)])

        # an update of many executions (a batch) is one event per owner, ids capped at 20
        task = create_task(conn, bob, agent_b, overlap_policy="allow")
        for _ in range(25):
            conn.execute("select scheduler.enqueue_now(%s)", (task,))
        _drain(listener)
        conn.execute("update public.agent_task_executions set priority = 1 where task_id = %s", (task,))
        events = [e for e in _drain(listener) if e["t"] == "agent_task_executions"]
        assert len(events) == 1 and events[0]["u"] == str(bob) and events[0]["n"] == 25
        assert len(events[0]["ids"]) == 20 and all(uuid.UUID(i) for i in events[0]["ids"])


def test_console_live__only_watched_owners_are_announced(db_url: str, conn: psycopg.Connection[Any]) -> None:
    alice, bob = create_user(conn), create_user(conn)
    agent_a, agent_b = create_agent(conn, alice), create_agent(conn, bob)
    task_a = create_task(conn, alice, agent_a, overlap_policy="allow")
    task_b = create_task(conn, bob, agent_b, overlap_policy="allow")
    console = uuid.uuid4()
    with psycopg.connect(db_url, autocommit=True) as listener:
        listener.execute("listen console_live")
        # nobody watching: the queue's writes send nothing
        conn.execute("delete from scheduler.console_watchers")
        conn.execute("select scheduler.enqueue_now(%s), scheduler.enqueue_now(%s)", (task_a, task_b))
        conn.execute("update public.agent_task_executions set priority = 2 where task_id in (%s, %s)",
                     (task_a, task_b))
        assert _drain(listener) == []

        # alice watched: her rows only, in a statement that touches both
        assert _watch(conn, alice, console=console) == 1
        conn.execute("update public.agent_task_executions set priority = 3 where task_id in (%s, %s)",
                     (task_a, task_b))
        events = _drain(listener)
        assert [(e["t"], e["u"]) for e in events] == [("agent_task_executions", str(alice))]

        # the console's list is replaced: bob instead of alice
        assert _watch(conn, bob, console=console) == 1
        conn.execute("update public.agent_tasks set priority = 1 where id in (%s, %s)", (task_a, task_b))
        assert [(e["t"], e["u"]) for e in _drain(listener)] == [("agent_tasks", str(bob))]

        # an expired watch announces nothing (the console stopped renewing it)
        conn.execute("update scheduler.console_watchers set expires_at = now() - interval '1 second'")
        conn.execute("update public.agent_tasks set priority = 2 where id in (%s, %s)", (task_a, task_b))
        assert _drain(listener) == []
        # and the next call of any console clears expired rows
        _watch(conn, console=uuid.uuid4())
        assert conn.execute("select count(*) as n from scheduler.console_watchers").fetchone() == {"n": 0}


def test_console_live__watch_refuses_bad_input(conn: psycopg.Connection[Any]) -> None:
    for args in ((None, [], 60), (uuid.uuid4(), [], 0), (uuid.uuid4(), [], 3601)):
        with pytest.raises(psycopg.errors.InvalidParameterValue, match="console_watch"):
            conn.execute("select scheduler.console_watch(%s, %s::uuid[], %s)", args)


def test_console_live__the_functions_are_not_callable_by_clients(conn: psycopg.Connection[Any]) -> None:
    for role in ("anon", "authenticated"):
        for fn in ("scheduler.console_live_notify()", "scheduler.console_watch(uuid, uuid[], integer)"):
            row = conn.execute("select has_function_privilege(%s, %s, 'execute') as ok", (role, fn)).fetchone()
            assert row == {"ok": False}, (role, fn)
        row = conn.execute("select has_table_privilege(%s, 'scheduler.console_watchers', 'select') as ok",
                           (role,)).fetchone()
        assert row == {"ok": False}
