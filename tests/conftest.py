"""Shared fixtures: the local stack, a fresh database per test, PostgREST-style user sessions.

Unit tests need none of these. Integration and end-to-end tests get a fresh
database copied from the migrated template (`worker.stack.create_database`),
so tests never see each other's rows and can run in any order.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from worker import stack


@pytest.fixture(scope="session")
def stack_state() -> stack.State:
    """The running local stack (started if needed; Postgres only)."""
    return stack.up(with_services=False)


def _fresh_db(state: stack.State) -> Iterator[str]:
    name = f"t_{uuid.uuid4().hex[:12]}"
    url = stack.create_database(state, name)
    try:
        yield url
    finally:
        stack.drop_database(state, name)


@pytest.fixture
def db_url(stack_state: stack.State) -> Iterator[str]:
    """A fresh, fully migrated database for one test."""
    yield from _fresh_db(stack_state)


@pytest.fixture(scope="module")
def module_db_url(stack_state: stack.State) -> Iterator[str]:
    """A fresh, fully migrated database shared by one test module."""
    yield from _fresh_db(stack_state)


@pytest.fixture
def conn(db_url: str) -> Iterator[psycopg.Connection[dict[str, Any]]]:
    """A superuser connection (autocommit) to the test's database."""
    with psycopg.connect(db_url, autocommit=True, row_factory=dict_row) as c:
        yield c


def create_user(conn: psycopg.Connection[Any], email: str | None = None) -> uuid.UUID:
    """Insert an auth.users row (what GoTrue's sign-up does) and return its id."""
    uid = uuid.uuid4()
    conn.execute("insert into auth.users (id, email) values (%s, %s)",
                 (uid, email or f"{uid.hex[:8]}@example.test"))
    return uid


@contextmanager
def as_user(conn: psycopg.Connection[Any], user_id: uuid.UUID | None, role: str = "authenticated"
            ) -> Iterator[psycopg.Connection[Any]]:
    """Run statements the way PostgREST does for a request: one transaction,
    `set local role`, and the JWT claims in `request.jwt.claims`."""
    claims: dict[str, Any] = {"role": role}
    if user_id is not None:
        claims["sub"] = str(user_id)
    with conn.transaction():
        conn.execute(f"set local role {role}")
        conn.execute("select set_config('request.jwt.claims', %s, true)", (json.dumps(claims),))
        yield conn


def create_agent(conn: psycopg.Connection[Any], user_id: uuid.UUID, name: str = "Helper",
                 **fields: Any) -> uuid.UUID:
    """An agent owned by user_id (written as the superuser)."""
    cols = {"user_id": user_id, "name": name, **fields}
    row = conn.execute(
        f"insert into public.agents ({', '.join(cols)}) values ({', '.join(['%s'] * len(cols))}) returning id",
        [json.dumps(v) if isinstance(v, dict) else v for v in cols.values()]).fetchone()
    assert row is not None
    return uuid.UUID(str(row["id"] if isinstance(row, dict) else row[0]))


def create_task(conn: psycopg.Connection[Any], user_id: uuid.UUID, agent_id: uuid.UUID,
                **fields: Any) -> uuid.UUID:
    """A task (manual by default) owned by user_id, written as the superuser."""
    cols: dict[str, Any] = {
        "user_id": user_id, "agent_id": agent_id, "name": "Task", "prompt_template": "Say hello",
        "schedule_type": "manual", **fields,
    }
    row = conn.execute(
        f"insert into public.agent_tasks ({', '.join(cols)}) values ({', '.join(['%s'] * len(cols))}) returning id",
        [json.dumps(v) if isinstance(v, dict) else v for v in cols.values()]).fetchone()
    assert row is not None
    return uuid.UUID(str(row["id"] if isinstance(row, dict) else row[0]))
