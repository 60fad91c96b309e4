"""The Realtime stream, read the way Supabase Realtime reads it: a logical
replication slot (wal2json) limited to the `supabase_realtime` publication.

A scheduled run (enqueue -> claim -> start) must put its user message on the
stream with metadata.source = 'scheduler', and the execution's status change
must be there too, so the frontend sees both live.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from tests.conftest import create_agent, create_task, create_user

pytestmark = pytest.mark.integration

REALTIME_TABLES = {"chat_messages_v2", "conversation_sessions", "agent_tasks", "agent_task_executions",
                   "notifications", "user_integrations"}


def test_publication__has_the_six_tables(conn: psycopg.Connection[dict[str, Any]]) -> None:
    rows = conn.execute("select schemaname, tablename from pg_publication_tables"
                        " where pubname = 'supabase_realtime'").fetchall()
    assert {(r["schemaname"], r["tablename"]) for r in rows} == {("public", t) for t in REALTIME_TABLES}
    # Realtime applies RLS per subscriber: every published table must have it on
    rls = conn.execute("select relname from pg_class where relnamespace = 'public'::regnamespace"
                       " and relname = any(%s) and relrowsecurity", (list(REALTIME_TABLES),)).fetchall()
    assert {r["relname"] for r in rls} == REALTIME_TABLES


@pytest.fixture
def slot(conn: psycopg.Connection[dict[str, Any]]) -> Iterator[str]:
    """A wal2json slot in the test database, dropped before the database is."""
    name = f"rt_{uuid.uuid4().hex[:12]}"
    # creating a logical slot waits for transactions running anywhere in the cluster
    conn.execute("set statement_timeout = '120s'")
    conn.execute("select pg_create_logical_replication_slot(%s, 'wal2json')", (name,))
    conn.execute("reset statement_timeout")
    # the local stack runs with synchronous_commit = off (speed); a slot only
    # decodes flushed WAL, so flush at commit as a Supabase project does
    conn.execute("set synchronous_commit = on")
    try:
        yield name
    finally:
        conn.execute("select pg_drop_replication_slot(%s)", (name,))


def _changes(conn: psycopg.Connection[dict[str, Any]], slot: str) -> list[dict[str, Any]]:
    tables = conn.execute("select string_agg(schemaname || '.' || tablename, ',') as t"
                          " from pg_publication_tables where pubname = 'supabase_realtime'").fetchone()
    assert tables is not None and tables["t"]
    rows = conn.execute(
        "select data from pg_logical_slot_get_changes(%s, null, null,"
        " 'format-version', '2', 'include-transaction', 'false', 'add-tables', %s)",
        (slot, tables["t"])).fetchall()
    return [json.loads(r["data"]) for r in rows]


def _columns(change: dict[str, Any]) -> dict[str, Any]:
    return {c["name"]: c["value"] for c in change.get("columns", [])}


def test_stream__carries_the_scheduled_message(conn: psycopg.Connection[dict[str, Any]], slot: str) -> None:
    uid = create_user(conn)
    agent = create_agent(conn, uid)
    task = create_task(conn, uid, agent, name="Morning brief")
    # noise outside the publication must not reach the stream
    conn.execute("insert into auth.users (id, email) values (gen_random_uuid(), 'noise@example.test')")

    exec_id = conn.execute("select scheduler.enqueue_now(%s) as id", (task,)).fetchone()["id"]  # type: ignore[index]
    claimed = conn.execute("select id, attempt from scheduler.claim_executions('rt-worker', 1, 30)").fetchall()
    assert [(r["id"], r["attempt"]) for r in claimed] == [(exec_id, 1)]
    started = conn.execute("select * from scheduler.start_execution(%s, 'rt-worker', 1, 'What is new today?')",
                           (exec_id,)).fetchone()
    assert started is not None

    changes = _changes(conn, slot)
    assert changes, "nothing was decoded from the slot"
    assert {(c["schema"], c["table"]) for c in changes} <= {("public", t) for t in REALTIME_TABLES}

    messages = [c for c in changes if c["table"] == "chat_messages_v2" and c["action"] == "I"]
    assert len(messages) == 1
    row = _columns(messages[0])
    assert row["id"] == str(started["user_message_id"])
    assert row["conversation_id"] == str(started["conversation_id"])
    assert row["user_id"] == str(uid)
    assert row["role"] == "user" and row["content"] == "What is new today?"
    assert row["execution_id"] == str(exec_id)
    metadata = json.loads(row["metadata"])
    assert metadata == {"source": "scheduler", "task_id": str(task), "task_name": "Morning brief",
                        "execution_id": str(exec_id), "trigger_type": "manual"}

    # the execution's life is on the stream too: inserted queued, then running
    execs = [c for c in changes if c["table"] == "agent_task_executions"]
    assert execs[0]["action"] == "I" and _columns(execs[0])["status"] == "queued"
    assert any(c["action"] == "U" and _columns(c)["status"] == "running" for c in execs)
    # and the conversation the run created for the task
    assert any(c["table"] == "conversation_sessions" and c["action"] == "I"
               and _columns(c)["id"] == str(started["conversation_id"]) for c in changes)

    # the slot was consumed: nothing is delivered twice
    assert _changes(conn, slot) == []


def test_stream__never_carries_an_integration_credential(conn: psycopg.Connection[dict[str, Any]],
                                                         slot: str) -> None:
    uid = create_user(conn)
    ciphertext = "C1PHERTEXT" + "A" * 40
    with conn.transaction():
        conn.execute("select set_config('role', 'authenticated', true), set_config('request.jwt.claims', %s, true)",
                     (json.dumps({"sub": str(uid), "role": "authenticated"}),))
        integ = conn.execute("insert into public.user_integrations (name, server_url, auth_kind)"
                             " values ('tickets', 'https://mcp.example.com/mcp', 'bearer') returning id").fetchone()
        assert integ is not None
        # what the chat function does after encrypting it
        conn.execute("select set_config('role', 'service_role', true)")
        conn.execute("select chat_private.set_integration_credential(%s, 'k1', %s)", (integ["id"], ciphertext))
    changes = _changes(conn, slot)
    assert {(c["schema"], c["table"]) for c in changes} == {("public", "user_integrations")}
    assert [c["action"] for c in changes] == ["I", "U"]
    assert _columns(changes[1])["has_credential"] is True, "the owner sees that a credential is set, live"
    assert ciphertext not in json.dumps(changes)
