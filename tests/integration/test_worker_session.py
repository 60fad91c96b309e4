"""The worker's connections through faults, against real Postgres: the pool never
hands out a connection that died while idle, and the listener's session is the
worker's liveness (scheduler.attach_worker_session)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import psycopg
import pytest

from worker.db import PostgresQueue

pytestmark = pytest.mark.integration


async def test_pool__a_connection_killed_while_idle_is_replaced_before_use(
        db_url: str, conn: psycopg.Connection[dict[str, Any]]) -> None:
    queue = PostgresQueue(db_url, 2, "w-pool")
    await queue.open()
    try:
        assert await queue.rescue_expired() == 0
        killed = conn.execute(
            "select count(*) filter (where pg_terminate_backend(pid)) as n from pg_stat_activity"
            " where application_name = 'agent-tasks worker w-pool'").fetchone()
        assert killed is not None and killed["n"] == 2
        # every pooled connection is dead now: each call still succeeds the first time
        for _ in range(3):
            assert await queue.rescue_expired() == 0
    finally:
        await queue.close()


async def test_listener__attaches_its_session_as_the_worker_liveness(
        db_url: str, conn: psycopg.Connection[dict[str, Any]]) -> None:
    queue = PostgresQueue(db_url, 1, "w-live")
    await queue.open()
    try:
        await queue.register_worker("w-live", "host", 1, 4)
        listener = await queue.connect_listener()
        try:
            assert await listener.attach("w-live") is True
            assert await listener.attach("w-unknown") is False
            row = conn.execute(
                "select w.backend_pid, a.application_name from scheduler.workers w"
                " join pg_stat_activity a on a.pid = w.backend_pid and a.backend_start = w.backend_start"
                " where w.id = 'w-live'").fetchone()
            assert row is not None and row["application_name"] == "agent-tasks listener w-live"
            assert await queue.rescue_dead_workers(0.0) == (0, 0)
        finally:
            await listener.close()
        # the session ended (its backend exits a moment after the close): a look marks it lost
        deadline = time.monotonic() + 5
        while True:
            assert await queue.rescue_dead_workers(0.0) == (0, 0)  # nothing was running
            lost = conn.execute("select session_lost_at from scheduler.workers where id = 'w-live'").fetchone()
            assert lost is not None
            if lost["session_lost_at"] is not None:
                break
            assert time.monotonic() < deadline, "the closed session was never seen gone"
            await asyncio.sleep(0.02)
    finally:
        await queue.close()
