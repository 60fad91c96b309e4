"""Live updates: one LISTEN connection on `console_live`, events handed to each user's browsers.

The database sends one NOTIFY per statement and watched owner (migration
20261121001500_console_live.sql) naming the table, the owner (`u`), the
conversation and the changed ids. The hub tells the database which owners it
has browsers for (`scheduler.console_watch`, renewed every WATCH_RENEW_S,
expiring WATCH_TTL_S after the last renewal), so the queue's hot path sends
nothing for users nobody is looking at. It delivers an event only to the
subscriptions of that owner, so a browser never hears of another user's
rows; the page then re-reads what changed through the console, under its
own RLS. The listener reconnects after losing its connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from typing import Any

import psycopg
from psycopg.rows import tuple_row
from psycopg_pool import AsyncConnectionPool

CHANNEL = "console_live"
RECONNECT_S = 1.0
QUEUE_MAX = 100  # a browser that stops reading loses events beyond this, never blocks the hub
WATCH_TTL_S = 60
WATCH_RENEW_S = 20

log = logging.getLogger("agent_tasks.console.live")


@contextlib.asynccontextmanager
async def _connect(url: str) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        yield conn


class LiveHub:
    """Fan-out of `console_live` notifications to per-user queues."""

    def __init__(self, database_url: str, pool: AsyncConnectionPool[Any] | None = None) -> None:
        self.database_url = database_url
        # the console's pool for the watch list (its own role, outside any user's
        # transaction); without one, a connection per call
        self.pool = pool
        self.console_id = uuid.uuid4()
        self._published: list[uuid.UUID] | None = None
        self.subscribers: dict[uuid.UUID, set[asyncio.Queue[dict[str, Any]]]] = defaultdict(set)
        self.task: asyncio.Task[None] | None = None
        self.renewer: asyncio.Task[None] | None = None
        self.listening = asyncio.Event()
        self._watch_lock = asyncio.Lock()

    def subscribe(self, user_id: uuid.UUID) -> asyncio.Queue[dict[str, Any]]:
        """A queue of this owner's events (once the database is told: see watch)."""
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(QUEUE_MAX)
        self.subscribers[user_id].add(queue)
        return queue

    async def watch(self, user_id: uuid.UUID) -> asyncio.Queue[dict[str, Any]]:
        """subscribe, returning once the database announces this owner's changes."""
        queue = self.subscribe(user_id)
        try:
            await self.publish_watch_list()
        except BaseException:
            self.unsubscribe(user_id, queue)
            raise
        return queue

    def unsubscribe(self, user_id: uuid.UUID, queue: asyncio.Queue[dict[str, Any]]) -> None:
        queues = self.subscribers.get(user_id)
        if queues is not None:
            queues.discard(queue)
            if not queues:
                del self.subscribers[user_id]

    async def publish_watch_list(self) -> int:
        """Replace this console's watch list in the database with the owners subscribed now."""
        async with self._watch_lock:
            users = list(self.subscribers)
            async with self._connection() as conn:
                cur = conn.cursor(row_factory=tuple_row)
                await cur.execute("select scheduler.console_watch(%s, %s::uuid[], %s)",
                                  (self.console_id, users, WATCH_TTL_S))
                row = await cur.fetchone()
            self._published = users
            return int(row[0]) if row else 0

    def _connection(self) -> AbstractAsyncContextManager[psycopg.AsyncConnection[Any]]:
        if self.pool is not None:
            return self.pool.connection()
        return _connect(self.database_url)

    async def renew(self) -> None:
        """Keep the watch list alive while browsers listen (and let it lapse when they leave)."""
        while True:
            await asyncio.sleep(WATCH_RENEW_S)
            if not self.subscribers and self._published == []:
                continue  # nobody watched since the last (empty) list: nothing to renew
            try:
                await self.publish_watch_list()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("console_live: watch list not renewed (%s)", type(exc).__name__)

    def dispatch(self, payload: str) -> int:
        """Deliver one notification to its owner's subscriptions; returns how many got it."""
        try:
            event = json.loads(payload)
            owner = uuid.UUID(str(event["u"]))
        except (ValueError, KeyError, TypeError):
            log.warning("console_live: unreadable payload dropped")
            return 0
        delivered = 0
        for queue in list(self.subscribers.get(owner, ())):
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait({k: event.get(k) for k in ("t", "c", "ids", "n")})
                delivered += 1
        return delivered

    async def run(self) -> None:
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(self.database_url, autocommit=True) as conn:
                    await conn.execute(f"listen {CHANNEL}")
                    self.listening.set()
                    async for note in conn.notifies():
                        self.dispatch(note.payload)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.listening.clear()
                log.warning("console_live: listener lost (%s); reconnecting", type(exc).__name__)
                await asyncio.sleep(RECONNECT_S)

    def start(self) -> None:
        self.task = asyncio.create_task(self.run(), name="console-live-listener")
        self.renewer = asyncio.create_task(self.renew(), name="console-live-watch")

    async def stop(self) -> None:
        for task in (self.task, self.renewer):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self.subscribers.clear()
        with contextlib.suppress(Exception):
            await self.publish_watch_list()  # an empty list: this console watches nobody now
