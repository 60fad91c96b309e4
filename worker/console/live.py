"""Live updates: one LISTEN connection on `console_live`, events handed to each user's browsers.

The database sends one NOTIFY per statement and owner (migration
20261121001500_console_live.sql) naming the table, the owner (`u`), the
conversation and the changed ids. The hub delivers an event only to the
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
from typing import Any

import psycopg

CHANNEL = "console_live"
RECONNECT_S = 1.0
QUEUE_MAX = 100  # a browser that stops reading loses events beyond this, never blocks the hub

log = logging.getLogger("agent_tasks.console.live")


class LiveHub:
    """Fan-out of `console_live` notifications to per-user queues."""

    def __init__(self, database_url: str) -> None:
        self.database_url = database_url
        self.subscribers: dict[uuid.UUID, set[asyncio.Queue[dict[str, Any]]]] = defaultdict(set)
        self.task: asyncio.Task[None] | None = None
        self.listening = asyncio.Event()

    def subscribe(self, user_id: uuid.UUID) -> asyncio.Queue[dict[str, Any]]:
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(QUEUE_MAX)
        self.subscribers[user_id].add(queue)
        return queue

    def unsubscribe(self, user_id: uuid.UUID, queue: asyncio.Queue[dict[str, Any]]) -> None:
        queues = self.subscribers.get(user_id)
        if queues is not None:
            queues.discard(queue)
            if not queues:
                del self.subscribers[user_id]

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

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
