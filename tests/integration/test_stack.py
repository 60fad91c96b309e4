"""The local stack: what `status` tells, idempotent `up`, migrations recorded once, pg_cron placement."""

from __future__ import annotations

import json
import os
import stat
import time
from typing import Any

import jwt
import psycopg
import pytest

from worker import stack

pytestmark = pytest.mark.integration


def _migration_rows(url: str) -> list[tuple[str, str]]:
    with psycopg.connect(url) as c:
        return [(r[0], r[1]) for r in c.execute(
            "select version, name from supabase_migrations.schema_migrations order by version")]


def _expected_migrations() -> list[tuple[str, str]]:
    return [(p.stem.partition("_")[0], p.stem.partition("_")[2]) for p in stack.migration_files()]


def test_status__tells_where_everything_is(stack_state: stack.State) -> None:
    info = stack.status()
    json.dumps(info)  # `status --json` prints it as is
    assert info["running"] is True
    with psycopg.connect(info["database_url"]) as c:
        assert c.execute("select current_database()").fetchone() == (stack.MAIN_DB,)
    secret = info["jwt_secret"]
    assert isinstance(secret, str) and len(secret) >= 32
    for key, role in (("anon_key", "anon"), ("service_role_key", "service_role")):
        claims = jwt.decode(info[key], secret, algorithms=["HS256"])
        assert claims["role"] == role
        assert claims["exp"] > time.time()
        with pytest.raises(jwt.InvalidSignatureError):
            jwt.decode(info[key], secret + "x", algorithms=["HS256"])
    assert info["secret_key"].startswith("sb_secret_") and len(info["secret_key"]) > len("sb_secret_") + 16


def test_up__a_second_call_is_a_no_op(stack_state: stack.State) -> None:
    started = time.monotonic()
    again = stack.up(with_services=False)
    elapsed = time.monotonic() - started
    assert (again.port, again.password, again.jwt_secret) == (
        stack_state.port, stack_state.password, stack_state.jwt_secret)
    assert elapsed < 30, f"a second `up` took {elapsed:.1f}s"
    assert stack.apply_migrations(again, stack.MAIN_DB) == []
    assert stack.pg_running()


def test_migrations__recorded_once_per_file(stack_state: stack.State, db_url: str) -> None:
    expected = _expected_migrations()
    assert len(expected) == len({v for v, _ in expected}), "two migration files share a version"
    assert _migration_rows(db_url) == expected
    assert _migration_rows(stack.database_url(stack_state)) == expected


def test_pg_cron__jobs_live_in_the_main_database(stack_state: stack.State) -> None:
    with psycopg.connect(stack.database_url(stack_state)) as c:
        jobs = {r[0]: r[1:] for r in c.execute(
            "select jobname, schedule, database, active from cron.job where jobname like 'agent-tasks-%'")}
    assert jobs == {
        "agent-tasks-enqueue-due": ("* * * * *", stack.MAIN_DB, True),
        "agent-tasks-rescue-expired": ("* * * * *", stack.MAIN_DB, True),
        "agent-tasks-resume-after-budget": ("* * * * *", stack.MAIN_DB, True),
        "agent-tasks-purge": ("*/5 * * * *", stack.MAIN_DB, True),
    }


def test_pg_cron__the_purge_jobs_command_runs(stack_state: stack.State) -> None:
    """The purge job's own text, as pg_cron sends it (one simple query, two statements)."""
    with psycopg.connect(stack.database_url(stack_state), autocommit=True) as c:
        row = c.execute("select command from cron.job where jobname = 'agent-tasks-purge'").fetchone()
        assert row is not None and "scheduler.purge_expired()" in row[0]
        c.execute(row[0])  # raises if either statement fails


def test_pg_cron__migrations_apply_cleanly_without_it(conn: psycopg.Connection[dict[str, Any]]) -> None:
    """A test copy (or a branch) is not pg_cron's database: no cron schema, yet fully migrated."""
    cron = conn.execute("select count(*) as n from pg_namespace where nspname = 'cron'").fetchone()
    assert cron is not None and cron["n"] == 0
    ext = conn.execute("select count(*) as n from pg_extension where extname = 'pg_cron'").fetchone()
    assert ext is not None and ext["n"] == 0
    last = conn.execute("select max(version) as v from supabase_migrations.schema_migrations").fetchone()
    assert last is not None and last["v"] == _expected_migrations()[-1][0]
    said = conn.execute("select scheduler.schedule_cron_jobs() as msg").fetchone()
    assert said is not None and "not scheduled" in said["msg"]


def test_cluster__lives_where_the_postgres_user_can_reach_it(stack_state: stack.State) -> None:
    """As root the cluster runs as the postgres OS user: its folder must not depend on the checkout's
    permissions (a clone under root's 0700 home)."""
    cluster = stack.status()["cluster"]
    assert cluster == str(stack.PG_DIR)
    data = stack.PG_DIR / "data"
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    if os.geteuid() == 0 and not (stack.STACK_DIR / "pg" / "data").exists():
        assert stack.PG_DIR.parent == stack.SYSTEM_STATE_DIR
        assert not stack.PG_DIR.is_relative_to(stack.ROOT)
        assert (stack.STACK_DIR / "cluster").read_text().strip() == cluster
        assert data.owner() == "postgres"
