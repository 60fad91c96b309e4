"""ChatClient over a real local HTTP server (aiohttp.web, in process): what it sends and how
transport failures, statuses and Retry-After become ChatResults."""

from __future__ import annotations

import asyncio
import json
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web

from worker.chat_client import ActAs, ChatClient, ChatOk, ChatPermanent, ChatTransient
from worker.retry import ErrorKind

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

ACT_AS = ActAs(user_id=uuid.uuid4(), agent_id=uuid.uuid4(), conversation_id=uuid.uuid4(),
               execution_id=uuid.uuid4(), user_message_id=uuid.uuid4())
HEADERS = {"X-Service": "task-executor", "Content-Type": "application/json", "apikey": "sb_secret_test"}


class Server:
    def __init__(self) -> None:
        self.handler: Handler | None = None
        self.requests: list[tuple[dict[str, str], Any]] = []
        self.url = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append((dict(request.headers), json.loads(await request.read())))
        assert self.handler is not None
        return await self.handler(request)


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    srv = Server()
    app = web.Application()
    app.router.add_post("/chat", srv.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    srv.url = f"http://127.0.0.1:{port}/chat"
    yield srv
    await runner.cleanup()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_reply__ok_sends_the_act_as_body_and_service_headers(server: Server) -> None:
    mid = uuid.uuid4()

    async def ok(_r: web.Request) -> web.Response:
        return web.json_response({"message": {"id": str(mid), "content": "hi"}, "usage": {"total_tokens": 3}})

    server.handler = ok
    client = ChatClient(server.url, HEADERS, max_connections=4)
    try:
        r1 = await client.reply(ACT_AS, 5.0)
        r2 = await client.reply(ACT_AS, 5.0)
    finally:
        await client.aclose()
    assert r1 == r2 == ChatOk(message_id=mid, content="hi", usage={"total_tokens": 3})
    headers, body = server.requests[0]
    assert headers["X-Service"] == "task-executor" and headers["apikey"] == "sb_secret_test"
    assert headers["Content-Type"] == "application/json"
    assert body == {"context": {"user_id": str(ACT_AS.user_id), "agent_id": str(ACT_AS.agent_id),
                                "conversation_id": str(ACT_AS.conversation_id),
                                "execution_id": str(ACT_AS.execution_id),
                                "user_message_id": str(ACT_AS.user_message_id)}}


async def test_reply__429_with_retry_after_is_transient_with_the_delay(server: Server) -> None:
    async def limited(_r: web.Request) -> web.Response:
        return web.json_response({"error": {"code": "rate_limited", "message": "slow down"}}, status=429,
                                 headers={"Retry-After": "7"})

    server.handler = limited
    client = ChatClient(server.url, HEADERS, max_connections=1)
    try:
        r = await client.reply(ACT_AS, 5.0)
    finally:
        await client.aclose()
    assert isinstance(r, ChatTransient) and r.status == 429 and r.retry_after_s == 7
    assert r.kind is ErrorKind.TRANSIENT and not r.timed_out


async def test_reply__403_is_permanent(server: Server) -> None:
    async def refused(_r: web.Request) -> web.Response:
        return web.json_response({"error": {"code": "forbidden", "message": "no"}}, status=403)

    server.handler = refused
    client = ChatClient(server.url, HEADERS, max_connections=1)
    try:
        r = await client.reply(ACT_AS, 5.0)
    finally:
        await client.aclose()
    assert isinstance(r, ChatPermanent) and r.status == 403 and r.code == "forbidden"


async def test_reply__redirect_is_not_followed(server: Server) -> None:
    async def moved(_r: web.Request) -> web.Response:
        return web.Response(status=307, headers={"Location": "http://example.invalid/steal"})

    server.handler = moved
    client = ChatClient(server.url, HEADERS, max_connections=1)
    try:
        r = await client.reply(ACT_AS, 5.0)
    finally:
        await client.aclose()
    assert isinstance(r, ChatPermanent) and r.status == 307
    assert len(server.requests) == 1


async def test_reply__slow_server_is_a_transient_timeout(server: Server) -> None:
    async def slow(_r: web.Request) -> web.Response:
        await asyncio.sleep(2.0)
        return web.json_response({})

    server.handler = slow
    client = ChatClient(server.url, HEADERS, max_connections=1)
    try:
        r = await client.reply(ACT_AS, 0.2)
    finally:
        await client.aclose()
    assert isinstance(r, ChatTransient) and r.timed_out and "timed out" in r.error


async def test_reply__connection_refused_is_transient() -> None:
    client = ChatClient(f"http://127.0.0.1:{free_port()}/chat", HEADERS, max_connections=1)
    try:
        r = await client.reply(ACT_AS, 2.0)
    finally:
        await client.aclose()
    assert isinstance(r, ChatTransient) and not r.timed_out and "unreachable" in r.error
    assert r.unreachable and r.kind is ErrorKind.UNREACHABLE


async def test_reply__server_closing_the_connection_is_transient(server: Server) -> None:
    async def hang_up(request: web.Request) -> web.StreamResponse:
        assert request.transport is not None
        request.transport.close()
        return web.Response()

    server.handler = hang_up
    client = ChatClient(server.url, HEADERS, max_connections=1)
    try:
        r = await client.reply(ACT_AS, 2.0)
    finally:
        await client.aclose()
    assert isinstance(r, ChatTransient) and not r.timed_out and "unreachable" in r.error
    assert r.unreachable
