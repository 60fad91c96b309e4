"""The database side of the console: a pool, and the user's transaction as PostgREST runs it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from worker.console.auth import User, claims_json

Conn = psycopg.AsyncConnection[dict[str, Any]]


def make_pool(url: str, max_size: int = 8) -> AsyncConnectionPool[Conn]:
    """A small pool; opened by the app's lifespan."""
    return AsyncConnectionPool(url, min_size=1, max_size=max_size, open=False,
                               kwargs={"row_factory": dict_row, "autocommit": True})


@asynccontextmanager
async def as_user(pool: AsyncConnectionPool[Conn], user: User) -> AsyncIterator[Conn]:
    """One transaction under the user's RLS: `role authenticated` and the token's claims in
    `request.jwt.claims`, both transaction-local, as PostgREST runs a request. Everything
    the console shows or changes for a user runs inside this."""
    async with pool.connection() as conn, conn.transaction():
        # one round trip: both statements in one simple query, the claims as a quoted literal
        await conn.execute(sql.SQL("set local role authenticated;"
                                   " select set_config('request.jwt.claims', {}, true)").format(
                                       sql.Literal(claims_json(user))))
        yield conn


@asynccontextmanager
async def as_operator(pool: AsyncConnectionPool[Conn]) -> AsyncIterator[Conn]:
    """One transaction as the console's own database role (operator pages only)."""
    async with pool.connection() as conn, conn.transaction():
        yield conn
