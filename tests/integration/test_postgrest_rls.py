"""Row Level Security and privileges, exercised the way PostgREST runs requests.

Each request is one transaction with `set local role authenticated` (or anon)
and the JWT claims in `request.jwt.claims` (`as_user`). User A owns one row in
every table; user B and anon try to read, change, delete and forge them.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from psycopg import errors
from psycopg.rows import dict_row

from tests.conftest import as_user, create_agent, create_task, create_user

pytestmark = pytest.mark.integration

TABLES = ["agents", "conversation_sessions", "chat_messages_v2", "agent_tasks",
          "agent_task_executions", "notifications"]
CLIENT_RPC = ["run_task_now", "pause_task", "resume_task", "cancel_execution", "retry_execution",
              "list_conversations", "list_messages", "list_executions", "list_tasks"]


@dataclass
class Owner:
    user_id: uuid.UUID
    rows: dict[str, uuid.UUID]  # table -> id of a row this user owns
    failed_execution: uuid.UUID


def _one(conn: psycopg.Connection[Any], query: str, params: tuple[Any, ...]) -> Any:
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return row[0]


def _seed_owner(conn: psycopg.Connection[Any]) -> Owner:
    uid = create_user(conn)
    agent = create_agent(conn, uid, system_prompt="secret prompt")
    conv = _one(conn, "insert into public.conversation_sessions (user_id, agent_id, title)"
                " values (%s, %s, 'private') returning id", (uid, agent))
    msg = _one(conn, "insert into public.chat_messages_v2 (conversation_id, user_id, role, content)"
               " values (%s, %s, 'user', 'hello') returning id", (conv, uid))
    task = create_task(conn, uid, agent, overlap_policy="allow")
    queued = _one(conn, "select scheduler.enqueue_now(%s)", (task,))
    failed = _one(conn, "select scheduler.enqueue_now(%s)", (task,))
    _one(conn, "select scheduler.cancel_execution(%s, 'for the test')", (failed,))
    note = _one(conn, "insert into public.notifications (user_id, kind, title)"
                " values (%s, 'info', 'hi') returning id", (uid,))
    return Owner(uid, {"agents": agent, "conversation_sessions": conv, "chat_messages_v2": msg,
                       "agent_tasks": task, "agent_task_executions": queued, "notifications": note},
                 failed)


@pytest.fixture(scope="module")
def mconn(module_db_url: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(module_db_url, autocommit=True) as c:
        yield c


@pytest.fixture(scope="module")
def users(mconn: psycopg.Connection[Any]) -> tuple[Owner, Owner]:
    return _seed_owner(mconn), _seed_owner(mconn)


def _snapshot(conn: psycopg.Connection[Any]) -> dict[str, Any]:
    """Every row of every table, to prove a refused request changed nothing."""
    out: dict[str, Any] = {}
    with conn.cursor(row_factory=dict_row) as cur:
        for table in TABLES:
            out[table] = cur.execute(f"select * from public.{table} order by id").fetchall()
    return out


def _sqlstate(conn: psycopg.Connection[Any], user: uuid.UUID | None, sql: str, params: Any = None,
              role: str = "authenticated") -> str | None:
    """Run one statement as a PostgREST request; the SQLSTATE it failed with, or None."""
    try:
        with as_user(conn, user, role) as c:
            c.execute(sql, params)
    except psycopg.Error as exc:
        return exc.sqlstate
    return None


def _rowcount(conn: psycopg.Connection[Any], user: uuid.UUID | None, sql: str, params: Any = None) -> int:
    with as_user(conn, user) as c:
        return c.execute(sql, params).rowcount


# --- reading -------------------------------------------------------------------------


@pytest.mark.parametrize("table", TABLES)
def test_select__users_see_only_their_own_rows(mconn: psycopg.Connection[Any], users: tuple[Owner, Owner],
                                               table: str) -> None:
    a, b = users
    with as_user(mconn, a.user_id) as c:
        own = c.execute(f"select count(*) from public.{table} where id = %s", (a.rows[table],)).fetchone()
        assert own is not None and own[0] == 1  # control: the owner sees it
    with as_user(mconn, b.user_id) as c:
        other = c.execute(f"select count(*) from public.{table} where id = %s", (a.rows[table],)).fetchone()
        assert other is not None and other[0] == 0
        owners = {r[0] for r in c.execute(f"select user_id from public.{table}")}
        assert owners == {b.user_id}


@pytest.mark.parametrize("table", TABLES)
def test_select__anon_sees_nothing(mconn: psycopg.Connection[Any], users: tuple[Owner, Owner], table: str) -> None:
    try:
        with as_user(mconn, None, role="anon") as c:
            rows = c.execute(f"select * from public.{table}").fetchall()
    except errors.InsufficientPrivilege:
        return
    assert rows == []


def test_list_conversations__lists_only_the_callers(mconn: psycopg.Connection[Any],
                                                    users: tuple[Owner, Owner]) -> None:
    a, b = users
    with as_user(mconn, b.user_id) as c:
        ids = [r[0] for r in c.execute("select id from public.list_conversations()")]
        by_agent = c.execute("select id from public.list_conversations(%s)", (a.rows["agents"],)).fetchall()
    assert ids == [b.rows["conversation_sessions"]]
    assert by_agent == []


# --- changing other users' rows ---------------------------------------------------------

# a harmless write per table: (update set clause, whether authenticated may update it at all)
UPDATES = {
    "agents": ("name = 'stolen'", True),
    "conversation_sessions": ("title = 'stolen'", True),
    "chat_messages_v2": ("content = 'stolen'", False),
    "agent_tasks": ("name = 'stolen'", True),
    "agent_task_executions": ("status = 'cancelled'", False),
    "notifications": ("read_at = now()", True),
}
DELETABLE = {"agents", "conversation_sessions", "agent_tasks", "notifications"}


@pytest.mark.parametrize("table", TABLES)
def test_update__other_users_rows_are_untouched(mconn: psycopg.Connection[Any], users: tuple[Owner, Owner],
                                                table: str) -> None:
    a, b = users
    clause, granted = UPDATES[table]
    before = _snapshot(mconn)
    sql = f"update public.{table} set {clause} where id = %s"
    if granted:
        assert _rowcount(mconn, b.user_id, sql, (a.rows[table],)) == 0
    else:
        assert _sqlstate(mconn, b.user_id, sql, (a.rows[table],)) == "42501"
    assert _sqlstate(mconn, None, sql, (a.rows[table],), role="anon") == "42501"
    assert _snapshot(mconn) == before


@pytest.mark.parametrize("table", TABLES)
def test_delete__other_users_rows_are_untouched(mconn: psycopg.Connection[Any], users: tuple[Owner, Owner],
                                                table: str) -> None:
    a, b = users
    before = _snapshot(mconn)
    sql = f"delete from public.{table} where id = %s"
    if table in DELETABLE:
        assert _rowcount(mconn, b.user_id, sql, (a.rows[table],)) == 0
    else:
        assert _sqlstate(mconn, b.user_id, sql, (a.rows[table],)) == "42501"
    assert _sqlstate(mconn, None, sql, (a.rows[table],), role="anon") == "42501"
    assert _snapshot(mconn) == before


def _inserts_into_as(a: Owner, b: Owner) -> dict[str, tuple[str, tuple[Any, ...]]]:
    """For each table, B's attempt to create a row in A's space."""
    return {
        "agents": ("insert into public.agents (user_id, name) values (%s, 'mine now')", (a.user_id,)),
        "conversation_sessions": ("insert into public.conversation_sessions (agent_id, title) values (%s, 'x')",
                                  (a.rows["agents"],)),
        "chat_messages_v2": ("insert into public.chat_messages_v2 (conversation_id, role, content)"
                             " values (%s, 'user', 'injected')", (a.rows["conversation_sessions"],)),
        "agent_tasks": ("insert into public.agent_tasks (agent_id, name, prompt_template, schedule_type)"
                        " values (%s, 'x', 'y', 'manual')", (a.rows["agents"],)),
        "agent_task_executions": ("insert into public.agent_task_executions (task_id, user_id, agent_id,"
                                  " trigger_type, scheduled_for) values (%s, %s, %s, 'manual', now())",
                                  (a.rows["agent_tasks"], a.user_id, a.rows["agents"])),
        "notifications": ("insert into public.notifications (user_id, kind, title) values (%s, 'info', 'x')",
                          (a.user_id,)),
    }


@pytest.mark.parametrize("table", TABLES)
def test_insert__into_another_users_space_raises(mconn: psycopg.Connection[Any], users: tuple[Owner, Owner],
                                                 table: str) -> None:
    a, b = users
    sql, params = _inserts_into_as(a, b)[table]
    before = _snapshot(mconn)
    # 42501: privilege or policy; 23503: the composite foreign key to A's agent
    assert _sqlstate(mconn, b.user_id, sql, params) in {"42501", "23503"}
    assert _sqlstate(mconn, None, sql, params, role="anon") == "42501"
    assert _snapshot(mconn) == before


def test_insert__a_user_creates_rows_for_themselves(mconn: psycopg.Connection[Any],
                                                    users: tuple[Owner, Owner]) -> None:
    """Control for the refusals above: the same kind of insert works in one's own space."""
    _, b = users
    with as_user(mconn, b.user_id) as c:
        row = c.execute("insert into public.chat_messages_v2 (conversation_id, role, content)"
                        " values (%s, 'user', 'mine') returning user_id",
                        (b.rows["conversation_sessions"],)).fetchone()
        assert row is not None and row[0] == b.user_id


# --- functions --------------------------------------------------------------------------


def test_private_functions__not_executable_by_api_roles(mconn: psycopg.Connection[Any]) -> None:
    rows = mconn.execute(
        """
        select p.oid::regprocedure::text as fn, r.rolname
        from pg_proc p join pg_namespace n on n.oid = p.pronamespace
        cross join (values ('anon'), ('authenticated')) r (rolname)
        where n.nspname in ('scheduler', 'chat_private')
          and has_function_privilege(r.rolname, p.oid, 'execute')
        """).fetchall()
    assert rows == []
    count = mconn.execute("select count(*) from pg_proc p join pg_namespace n on n.oid = p.pronamespace"
                          " where n.nspname in ('scheduler', 'chat_private')").fetchone()
    assert count is not None and count[0] > 20  # the check above did look at them


@pytest.mark.parametrize("call", [
    "select * from scheduler.claim_executions('evil', 10, 30)",
    "select scheduler.enqueue_due()",
    "select scheduler.enqueue_now(%(task)s)",
    "select scheduler.cancel_execution(%(execution)s)",
    "select scheduler.finish_execution(%(execution)s, 'evil', 1, 'succeeded')",
    "select scheduler.purge_history('0 seconds')",
    "select scheduler.cron_error('* * * * *')",
    "select chat_private.record_assistant_reply(%(user)s, %(conversation)s, 'forged')",
    "select chat_private.check_act_as(%(user)s, %(agent)s, null)",
    "select chat_private.rate_limit_hit(%(user)s, 1, 60)",
])
def test_private_functions__calls_are_refused(mconn: psycopg.Connection[Any], users: tuple[Owner, Owner],
                                              call: str) -> None:
    a, b = users
    params = {"task": a.rows["agent_tasks"], "execution": a.rows["agent_task_executions"], "user": a.user_id,
              "conversation": a.rows["conversation_sessions"], "agent": a.rows["agents"]}
    before = _snapshot(mconn)
    assert _sqlstate(mconn, b.user_id, call, params) == "42501"
    assert _sqlstate(mconn, None, call, params, role="anon") == "42501"
    assert _snapshot(mconn) == before


def test_public_functions__only_the_client_api_is_exposed(mconn: psycopg.Connection[Any]) -> None:
    rows = mconn.execute(
        """
        select p.proname, has_function_privilege('anon', p.oid, 'execute') as anon,
               has_function_privilege('authenticated', p.oid, 'execute') as authenticated
        from pg_proc p join pg_namespace n on n.oid = p.pronamespace
        where n.nspname = 'public'
          and not exists (select 1 from pg_depend d where d.objid = p.oid and d.deptype = 'e')
        """).fetchall()
    assert not [r for r in rows if r[1]], "anon can execute a public function"
    assert {r[0] for r in rows if r[2]} >= set(CLIENT_RPC)


@pytest.mark.parametrize(("call", "key"), [
    ("select public.run_task_now(%s)", "agent_tasks"),
    ("select public.pause_task(%s)", "agent_tasks"),
    ("select public.resume_task(%s)", "agent_tasks"),
    ("select public.cancel_execution(%s)", "agent_task_executions"),
    ("select public.retry_execution(%s)", "failed"),
])
def test_client_rpc__refuses_other_users_rows(mconn: psycopg.Connection[Any], users: tuple[Owner, Owner],
                                              call: str, key: str) -> None:
    a, b = users
    target = a.failed_execution if key == "failed" else a.rows[key]
    before = _snapshot(mconn)
    # "not found", so ids cannot be probed
    assert _sqlstate(mconn, b.user_id, call, (target,)) == "P0002"
    assert _sqlstate(mconn, None, call, (target,), role="anon") == "42501"
    assert _snapshot(mconn) == before


def test_client_rpc__works_for_the_owner(mconn: psycopg.Connection[Any], users: tuple[Owner, Owner]) -> None:
    """Control: the same calls succeed on one's own rows (in a request that is rolled back)."""
    _, b = users
    with pytest.raises(_Rollback), as_user(mconn, b.user_id) as c:
        new_id = c.execute("select public.run_task_now(%s)", (b.rows["agent_tasks"],)).fetchone()
        assert new_id is not None and new_id[0] is not None
        paused = c.execute("select status from public.pause_task(%s)", (b.rows["agent_tasks"],)).fetchone()
        assert paused is not None and paused[0] == "paused"
        cancelled = c.execute("select public.cancel_execution(%s)", (b.rows["agent_task_executions"],)).fetchone()
        assert cancelled is not None and cancelled[0] is True
        retried = c.execute("select public.retry_execution(%s)", (b.failed_execution,)).fetchone()
        assert retried is not None and retried[0] is not None
        raise _Rollback


class _Rollback(Exception):
    pass


# --- forging scheduler data and column privileges ---------------------------------------


@pytest.mark.parametrize(("sql", "expected"), [
    ("insert into public.chat_messages_v2 (conversation_id, role, content, metadata)"
     " values (%(conv)s, 'user', 'x', '{\"source\": \"scheduler\"}')", "42501"),
    ("insert into public.chat_messages_v2 (conversation_id, role, content, metadata)"
     " values (%(conv)s, 'user', 'x', %(meta)s)", "42501"),
    ("insert into public.chat_messages_v2 (conversation_id, role, content, execution_id)"
     " values (%(conv)s, 'user', 'x', %(exec)s)", "42501"),
    ("insert into public.chat_messages_v2 (conversation_id, role, content)"
     " values (%(conv)s, 'assistant', 'I am the agent')", "42501"),
    ("update public.chat_messages_v2 set metadata = '{\"source\": \"scheduler\"}' where id = %(msg)s", "42501"),
    ("update public.agent_tasks set next_run_at = now() where id = %(task)s", "42501"),
    ("update public.agent_tasks set run_count = 99 where id = %(task)s", "42501"),
    ("update public.agent_tasks set last_run_at = now() where id = %(task)s", "42501"),
    ("update public.agent_tasks set user_id = gen_random_uuid() where id = %(task)s", "42501"),
    ("update public.agent_tasks set status = 'completed' where id = %(task)s", "22023"),
    ("update public.agent_tasks set status = 'error' where id = %(task)s", "22023"),
    ("update public.conversation_sessions set message_count = 0 where id = %(conv)s", "42501"),
    ("insert into public.agent_tasks (agent_id, name, prompt_template, schedule_type, status)"
     " values (%(agent)s, 'x', 'y', 'manual', 'completed')", "22023"),
    ("insert into public.agent_tasks (agent_id, name, prompt_template, schedule_type, next_run_at)"
     " values (%(agent)s, 'x', 'y', 'manual', now())", "42501"),
])
def test_forgery__scheduler_fields_are_not_writable(mconn: psycopg.Connection[Any], users: tuple[Owner, Owner],
                                                    sql: str, expected: str) -> None:
    a, _ = users
    params = {"conv": a.rows["conversation_sessions"], "msg": a.rows["chat_messages_v2"],
              "task": a.rows["agent_tasks"], "agent": a.rows["agents"],
              "exec": a.rows["agent_task_executions"],
              "meta": json.dumps({"source": "scheduler", "task_id": str(a.rows["agent_tasks"]),
                                  "execution_id": str(a.rows["agent_task_executions"])})}
    before = _snapshot(mconn)
    assert _sqlstate(mconn, a.user_id, sql, params) == expected
    assert _snapshot(mconn) == before


def test_owner__may_write_the_granted_columns(mconn: psycopg.Connection[Any], users: tuple[Owner, Owner]) -> None:
    """Control for the refusals above: the owner's allowed writes do touch their row."""
    a, _ = users
    with pytest.raises(_Rollback), as_user(mconn, a.user_id) as c:
        assert c.execute("update public.agent_tasks set name = 'renamed', status = 'paused' where id = %s",
                         (a.rows["agent_tasks"],)).rowcount == 1
        assert c.execute("update public.notifications set read_at = now() where id = %s",
                         (a.rows["notifications"],)).rowcount == 1
        raise _Rollback
