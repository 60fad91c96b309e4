"""The demo's tickets MCP server refuses DNS rebinding with the SDK's own check.

The server runs as its own process on a free port (real HTTP, uvicorn). A
request naming a foreign Host is refused with the SDK's 421, a foreign
Origin with its 403, on /mcp and on /calls alike and before the bearer token
is looked at; the official MCP client (Python SDK) still lists and calls its
tools. The chat function's TypeScript client is covered end to end by
tests/e2e/test_integrations.py.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import httpx2
import pytest
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client

from worker import stack
from worker.mcp_tickets import served_hosts

ROOT = Path(__file__).resolve().parents[2]
INITIALIZE = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
              "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                         "clientInfo": {"name": "test", "version": "1"}}}
MCP_HEADERS = {"content-type": "application/json", "accept": "application/json, text/event-stream"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, str]]:
    port, token = stack.free_port(0), secrets.token_urlsafe(16)
    log = tmp_path_factory.mktemp("tickets") / "tickets.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "worker.mcp_tickets", "--port", str(port),
                                 # one argument, so a token that starts with "-" is not read as an option
                                 f"--token={token}",
                                 "--allow-host", "tickets.internal:8443"],
                                cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while not stack.port_open(port):
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        yield port, token
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def post_initialize(port: int, token: str, **headers: str) -> httpx.Response:
    return httpx.post(f"http://127.0.0.1:{port}/mcp", content=json.dumps(INITIALIZE),
                      headers={**MCP_HEADERS, "authorization": f"Bearer {token}", **headers}, timeout=10)


def test_served_hosts__exactly_the_names_it_is_reached_by() -> None:
    assert served_hosts("127.0.0.1", 5433) == ["127.0.0.1:5433", "localhost:5433"]
    assert served_hosts("10.0.0.7", 80, ["tickets.internal:8443"]) == ["10.0.0.7:80", "tickets.internal:8443"]
    assert served_hosts("fd00::7", 80) == ["[fd00::7]:80"]


@pytest.mark.parametrize("host", ["attacker.example:{port}", "127.0.0.1:1", "127.0.0.1.nip.io:{port}",
                                  "localhost", "[::1]:{port}"])
def test_foreign_host__is_refused_with_421(server: tuple[int, str], host: str) -> None:
    port, token = server
    r = post_initialize(port, token, host=host.format(port=port))
    assert r.status_code == 421 and "Host" in r.text
    calls = httpx.get(f"http://127.0.0.1:{port}/calls", timeout=10,
                      headers={"authorization": f"Bearer {token}", "host": host.format(port=port)})
    assert calls.status_code == 421, "the calls log is behind the same check"


def test_foreign_host__is_refused_before_the_token_is_looked_at(server: tuple[int, str]) -> None:
    port, _ = server
    r = httpx.get(f"http://127.0.0.1:{port}/calls", headers={"host": f"attacker.example:{port}"}, timeout=10)
    assert r.status_code == 421


@pytest.mark.parametrize("origin", ["http://attacker.example", "http://127.0.0.1:1", "null",
                                    "https://127.0.0.1:{port}"])
def test_foreign_origin__is_refused_with_403(server: tuple[int, str], origin: str) -> None:
    port, token = server
    r = post_initialize(port, token, origin=origin.format(port=port))
    assert r.status_code == 403 and "Origin" in r.text


@pytest.mark.parametrize("host", ["127.0.0.1:{port}", "localhost:{port}", "tickets.internal:8443"])
def test_served_host_and_origin__are_answered(server: tuple[int, str], host: str) -> None:
    port, token = server
    named = host.format(port=port)
    r = post_initialize(port, token, host=named, origin=f"http://{named}")
    assert r.status_code == 200, r.text
    assert r.json()["result"]["serverInfo"]["name"] == "tickets"


def test_wrong_token_on_a_served_host__is_still_401(server: tuple[int, str]) -> None:
    port, _ = server
    assert post_initialize(port, "not-the-token").status_code == 401


async def test_official_client__lists_and_calls_the_tools(server: tuple[int, str]) -> None:
    port, token = server
    async with (httpx2.AsyncClient(headers={"authorization": f"Bearer {token}"}, timeout=10) as http,
                streamable_http_client(f"http://127.0.0.1:{port}/mcp", http_client=http) as (read, write),
                ClientSession(read, write) as session):
        await session.initialize()
        tools = await session.list_tools()
        assert {t.name for t in tools.tools} == {"list_tickets", "get_ticket", "add_comment"}
        result = await session.call_tool("get_ticket", {"ticket_id": "TCK-101"})
        assert not result.is_error and "TCK-101" in result.content[0].text  # type: ignore[union-attr]
