"""Webhook delivery: the workers' side of the outbox (migration 20261121001600_webhooks.sql).

A delivery is one POST of a notification to one of its owner's endpoints, in
the Standard Webhooks format (https://www.standardwebhooks.com): the JSON
payload as the body, and the headers

    webhook-id:        the delivery's id, the same on every attempt
    webhook-timestamp: seconds since the epoch, when this attempt was signed
    webhook-signature: v1,<base64 HMAC-SHA256 of "<id>.<timestamp>.<body>"
                       keyed with the base64 part of the endpoint's whsec_ secret>

The signature is six lines of the standard library (`sign`); the test suite
checks them against the reference implementation (the `standardwebhooks`
package), which is not a dependency of the worker.

Before it connects, the worker resolves the URL's host and asks the database
whether each address is allowed (scheduler.webhook_address_problem, the
integrations' outbound policy), then connects to exactly those addresses
(`PinnedResolver`), so a name that resolves elsewhere between the check and
the connection cannot reach a refused address. Redirects are not followed.

Outcome of a POST: 2xx delivered; 410 Gone fails the delivery and disables
the endpoint; anything else (another status, a timeout, a refused or reset
connection, a name that does not resolve) is tried again after BACKOFF_S,
until the operator's webhook_max_attempts; an address the policy refuses
fails at once.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

# seconds before the next attempt, after attempt 1, 2, ...; scaled by
# WEBHOOK_RETRY_BASE_S / 5 (the last one repeats)
BACKOFF_S = (5.0, 30.0, 120.0, 600.0, 1800.0, 3600.0, 10800.0)
USER_AGENT = "agent-tasks-webhooks/1"


@dataclass(frozen=True)
class Delivery:
    """One claimed delivery (scheduler.claim_webhook_deliveries)."""

    id: uuid.UUID
    webhook_id: uuid.UUID
    url: str
    secret: str
    event: str
    payload: dict[str, Any]
    attempt: int


@dataclass(frozen=True)
class Outcome:
    """What one POST came to: http_status None when nothing answered; error None when delivered."""

    http_status: int | None
    error: str | None
    retry: bool = False
    disable: bool = False


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The webhook-signature header value (Standard Webhooks, v1)."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    mac = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return f"v1,{base64.b64encode(mac).decode()}"


def retry_in_s(attempt: int, base_s: float) -> float:
    """Seconds to wait after the `attempt`-th POST failed."""
    return BACKOFF_S[min(max(attempt, 1), len(BACKOFF_S)) - 1] * base_s / BACKOFF_S[0]


def body_of(delivery: Delivery) -> bytes:
    return json.dumps(delivery.payload, separators=(",", ":"), ensure_ascii=False).encode()


class PinnedResolver(AbstractResolver):
    """Resolves only to the addresses that were checked: the connection goes where the check looked."""

    def __init__(self, addresses: list[str]) -> None:
        self._addresses = addresses

    async def resolve(self, host: str, port: int = 0, family: int = socket.AF_INET) -> list[ResolveResult]:
        return [ResolveResult(hostname=host, host=address, port=port,
                              family=socket.AF_INET6 if ":" in address else socket.AF_INET,
                              proto=0, flags=socket.AI_NUMERICHOST)
                for address in self._addresses]

    async def close(self) -> None:
        pass


async def post(delivery: Delivery, address_problem: Callable[[list[str]], Awaitable[str | None]],
               timeout_s: float) -> Outcome:
    """POST one delivery; never raises for what the endpoint or the network does."""
    parts = urlsplit(delivery.url)
    host = parts.hostname
    if not host or parts.scheme not in ("http", "https"):
        return Outcome(None, "url is not an http(s) URL")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        infos = await asyncio.wait_for(
            asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM), timeout_s)
    except (OSError, TimeoutError) as exc:
        return Outcome(None, f"{host} does not resolve: {exc}"[:500], retry=True)
    addresses = sorted({str(info[4][0]) for info in infos})
    problem = await address_problem(addresses)
    if problem is not None:
        return Outcome(None, f"{problem} ({host} resolves to {', '.join(addresses)})"[:500])
    body = body_of(delivery)
    timestamp = int(time.time())
    headers = {
        "content-type": "application/json",
        "user-agent": USER_AGENT,
        "webhook-id": str(delivery.id),
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(delivery.secret, str(delivery.id), timestamp, body),
    }
    connector = aiohttp.TCPConnector(resolver=PinnedResolver(addresses), force_close=True)
    try:
        async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=timeout_s)) as http, \
                http.post(delivery.url, data=body, headers=headers, allow_redirects=False) as response:
            status = response.status
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        return Outcome(None, f"POST failed: {exc!r}"[:500], retry=True)
    if 200 <= status < 300:
        return Outcome(status, None)
    if status == 410:
        return Outcome(status, "the endpoint answered 410 Gone: the webhook was disabled", disable=True)
    return Outcome(status, f"the endpoint answered {status}", retry=True)
