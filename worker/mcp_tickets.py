"""A small "tickets" MCP server: the demo's and the tests' integration.

Built with the official MCP Python SDK (``mcp``), served over Streamable HTTP
at ``/mcp`` behind a bearer token. Its tickets live in memory, seeded
relative to today so that "the tickets updated since yesterday" always has
an answer. Tools: ``list_tickets``, ``get_ticket``, ``add_comment``.

Every tool call it served is kept (``GET /calls`` with the same bearer token)
so a test can compare what the server saw with what the chat function
stored.

DNS rebinding: a web page whose name is made to resolve to this machine
could otherwise reach the server from a browser. The SDK's transport security
refuses every request whose ``Host`` is not one the server serves (421) or
whose ``Origin`` is not such a host (403), before the bearer token is looked
at: the loopback names with ``--port`` when ``--host`` is a loopback address,
else ``--host:--port``, plus each ``--allow-host`` (a name it is reached by,
behind a proxy).

    python -m worker.mcp_tickets --port 54331 --token SECRET
"""

from __future__ import annotations

import argparse
import datetime as dt
import hmac
import json
import os
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from mcp.server.mcpserver import MCPServer
from mcp.server.transport_security import TransportSecurityMiddleware, TransportSecuritySettings
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

MAX_CALLS_KEPT = 1000
LOOPBACK_NAMES = ("127.0.0.1", "localhost")


@dataclass
class Ticket:
    id: str
    title: str
    status: str
    priority: str
    updated_at: str
    description: str
    comments: list[dict[str, str]] = field(default_factory=list)

    def summary(self) -> dict[str, str]:
        return {"id": self.id, "title": self.title, "status": self.status, "priority": self.priority,
                "updated_at": self.updated_at}


def seed_tickets(today: dt.date) -> dict[str, Ticket]:
    """Tickets updated today, yesterday, and a week ago (the last one is not 'since yesterday')."""

    def at(days_ago: int, hour: int) -> str:
        day = today - dt.timedelta(days=days_ago)
        return dt.datetime(day.year, day.month, day.day, hour, tzinfo=dt.UTC).isoformat()

    tickets = [
        Ticket("TCK-101", "Checkout page times out for EU customers", "open", "high", at(1, 9),
               "Since the CDN change, checkout requests from the EU take over 30 s."),
        Ticket("TCK-102", "Invoice PDF shows the wrong VAT rate", "in_progress", "medium", at(1, 15),
               "Invoices for Austria use 19% instead of 20%."),
        Ticket("TCK-103", "Password reset mail lands in spam", "resolved", "low", at(0, 8),
               "SPF record fixed; waiting for confirmation."),
        Ticket("TCK-090", "Dark mode contrast on the settings page", "open", "low", at(7, 11),
               "Grey on grey in the notification settings."),
    ]
    return {t.id: t for t in tickets}


def parse_since(value: str) -> dt.datetime:
    """A date (YYYY-MM-DD, midnight UTC) or an ISO 8601 instant."""
    try:
        if len(value) == 10:
            day = dt.date.fromisoformat(value)
            return dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC)
        parsed = dt.datetime.fromisoformat(value)
    except ValueError as exc:
        raise ValueError(f"updated_since must be a date (YYYY-MM-DD) or an ISO 8601 instant, got {value!r}") from exc
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def build_server(tickets: dict[str, Ticket], calls: list[dict[str, Any]]) -> MCPServer:
    """The MCP server with its three tools; every call is appended to `calls`."""
    server: MCPServer = MCPServer(name="tickets", instructions="A team's support tickets.")

    def seen(tool: str, arguments: dict[str, Any], result: Any) -> Any:
        calls.append({"tool": tool, "arguments": arguments, "result": result})
        del calls[:-MAX_CALLS_KEPT]
        return result

    @server.tool(structured_output=False,
                 description="List the tickets updated at or after a date (YYYY-MM-DD) or instant, newest first.")
    def list_tickets(updated_since: str, status: str | None = None) -> str:
        since = parse_since(updated_since)
        found = [t.summary() for t in sorted(tickets.values(), key=lambda t: t.updated_at, reverse=True)
                 if dt.datetime.fromisoformat(t.updated_at) >= since and (status is None or t.status == status)]
        text = json.dumps({"tickets": found, "count": len(found)})
        return str(seen("list_tickets", {"updated_since": updated_since, "status": status}, text))

    @server.tool(structured_output=False, description="One ticket with its description and comments.")
    def get_ticket(ticket_id: str) -> str:
        ticket = tickets.get(ticket_id)
        if ticket is None:
            seen("get_ticket", {"ticket_id": ticket_id}, {"error": "not found"})
            raise ValueError(f"no ticket {ticket_id}")
        text = json.dumps({**ticket.summary(), "description": ticket.description, "comments": ticket.comments})
        return str(seen("get_ticket", {"ticket_id": ticket_id}, text))

    @server.tool(structured_output=False, description="Add a comment to a ticket.")
    def add_comment(ticket_id: str, body: str) -> str:
        ticket = tickets.get(ticket_id)
        if ticket is None:
            seen("add_comment", {"ticket_id": ticket_id, "body": body}, {"error": "not found"})
            raise ValueError(f"no ticket {ticket_id}")
        if not body.strip() or len(body) > 4000:
            raise ValueError("body must be 1 to 4000 characters")
        now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        ticket.comments.append({"body": body, "created_at": now})
        ticket.updated_at = now
        text = json.dumps({"ticket_id": ticket_id, "comments": len(ticket.comments)})
        return str(seen("add_comment", {"ticket_id": ticket_id, "body": body}, text))

    return server


class BearerAuth:
    """Refuses every request without `Authorization: Bearer <token>` (compared in constant time)."""

    def __init__(self, app: ASGIApp, token: str, calls: list[dict[str, Any]]) -> None:
        self.app = app
        self.expected = f"Bearer {token}".encode()
        self.calls = calls

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = dict(scope["headers"]).get(b"authorization", b"")
        if not hmac.compare_digest(given, self.expected):
            await self._json(send, 401, {"error": "unauthorized"}, {b"www-authenticate": b"Bearer"})
            return
        if scope["path"] == "/calls":
            await self._json(send, 200, {"calls": self.calls})
            return
        await self.app(scope, receive, send)

    @staticmethod
    async def _json(send: Send, status: int, body: Any, extra: dict[bytes, bytes] | None = None) -> None:
        data = json.dumps(body).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
        headers += list((extra or {}).items())
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": data})


def served_hosts(host: str, port: int, extra: list[str] | None = None) -> list[str]:
    """The Host header values the server answers: host:port (the loopback names for a loopback
    address; an IPv6 address in brackets) and every extra one as given."""
    names = LOOPBACK_NAMES if host in (*LOOPBACK_NAMES, "::1") else (f"[{host}]" if ":" in host else host,)
    return [f"{name}:{port}" for name in names] + list(extra or [])


def transport_security(hosts: list[str]) -> TransportSecuritySettings:
    """The SDK's DNS rebinding protection, allowing exactly `hosts` (and their http origins)."""
    return TransportSecuritySettings(enable_dns_rebinding_protection=True, allowed_hosts=hosts,
                                     allowed_origins=[f"http://{h}" for h in hosts])


class HostCheck:
    """The SDK's Host/Origin check (its own TransportSecurityMiddleware and statuses) in front of
    every path, /calls and the bearer token included, so a rebound browser learns nothing."""

    def __init__(self, app: ASGIApp, settings: TransportSecuritySettings) -> None:
        self.app = app
        self.security = TransportSecurityMiddleware(settings)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            refused = await self.security.validate_request(Request(scope))
            if refused is not None:
                await refused(scope, receive, send)
                return
        await self.app(scope, receive, send)


def app(token: str, hosts: list[str], today: dt.date | None = None) -> ASGIApp:
    """The whole ASGI application: the Host/Origin check, then bearer auth in front of the MCP
    endpoint at /mcp. `hosts`: the Host header values it answers (served_hosts)."""
    calls: list[dict[str, Any]] = []
    server = build_server(seed_tickets(today or dt.datetime.now(dt.UTC).date()), calls)
    security = transport_security(hosts)
    inner = server.streamable_http_app(stateless_http=True, json_response=True, transport_security=security)
    return HostCheck(BearerAuth(inner, token, calls), security)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=54331)
    parser.add_argument("--token", default=os.environ.get("TICKETS_MCP_TOKEN", ""),
                        help="the bearer token clients must send (default: $TICKETS_MCP_TOKEN)")
    parser.add_argument("--allow-host", action="append", default=[], metavar="HOST:PORT",
                        help="another Host header value to answer (a name in front of it); repeatable")
    args = parser.parse_args(argv)
    if not args.token:
        parser.error("a bearer token is required (--token or TICKETS_MCP_TOKEN)")
    uvicorn.run(app(args.token, served_hosts(args.host, args.port, args.allow_host)), host=args.host,
                port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
