"""`agent-tasks integrations list|add|test|remove`: a user's MCP integrations.

Every action acts as the user: rows are read and written under the user's
RLS (`set local role authenticated` with the user's claims, as PostgREST
does), and the credential goes through the chat function's
``POST /integrations`` with the user's access token, because only the
function holds the key that encrypts it (docs/integrations.md). On the local
stack the user's token is signed with the stack's key; elsewhere pass
``--user-token`` (the user's own access token).
"""

from __future__ import annotations

import argparse
import json
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg

from worker.errors import EXIT_OK, EXIT_USAGE, CliError

LIST_COLUMNS = ["name", "server_url", "auth_kind", "has_credential", "status", "last_error", "agents", "id"]


@contextmanager
def as_user(conn: psycopg.Connection[dict[str, Any]], user_id: uuid.UUID) -> Iterator[None]:
    """One transaction as the user, exactly as PostgREST runs a request."""
    with conn.transaction():
        conn.execute("select set_config('role', 'authenticated', true),"
                     " set_config('request.jwt.claims', %s, true)",
                     (json.dumps({"sub": str(user_id), "role": "authenticated"}),))
        yield


def list_integrations(conn: psycopg.Connection[dict[str, Any]], user_id: uuid.UUID) -> list[dict[str, Any]]:
    """The user's integrations with the agents that may use them (never a credential: none is readable)."""
    with as_user(conn, user_id):
        return conn.execute(
            """select i.id, i.name, i.server_url, i.auth_kind, i.header_name, i.has_credential, i.status,
                      i.last_error, i.last_checked_at,
                      coalesce((select array_agg(a.agent_id::text order by a.agent_id) from public.agent_integrations a
                                where a.integration_id = i.id), '{}') as agents
               from public.user_integrations i order by i.name""").fetchall()


def find_integration(conn: psycopg.Connection[dict[str, Any]], user_id: uuid.UUID, name: str) -> uuid.UUID:
    with as_user(conn, user_id):
        row = conn.execute("select id from public.user_integrations where name = %s or id::text = %s",
                           (name, name)).fetchone()
    if row is None:
        raise CliError(f"integration {name} not found")
    return uuid.UUID(str(row["id"]))


def upsert_integration(conn: psycopg.Connection[dict[str, Any]], user_id: uuid.UUID, name: str, url: str,
                       auth_kind: str, header_name: str | None, agent_ids: list[str]) -> uuid.UUID:
    """Create the integration (or change its URL and auth) and enable it for the given agents."""
    with as_user(conn, user_id):
        row = conn.execute(
            """insert into public.user_integrations (name, server_url, auth_kind, header_name)
               values (%s, %s, %s, %s)
               on conflict (user_id, name) do update
                 set server_url = excluded.server_url, auth_kind = excluded.auth_kind,
                     header_name = excluded.header_name
               returning id""", (name, url, auth_kind, header_name)).fetchone()
        assert row is not None
        for agent in agent_ids:
            conn.execute("""insert into public.agent_integrations (agent_id, integration_id) values (%s, %s)
                            on conflict do nothing""", (agent, row["id"]))
    return uuid.UUID(str(row["id"]))


def remove_integration(conn: psycopg.Connection[dict[str, Any]], user_id: uuid.UUID, name: str) -> bool:
    """Delete it (its credential and allow-lists go with it)."""
    with as_user(conn, user_id):
        return conn.execute("delete from public.user_integrations where name = %s or id::text = %s",
                            (name, name)).rowcount > 0


def call_function(chat_url: str, token: str, body: dict[str, Any], timeout_s: float = 60.0) -> dict[str, Any]:
    """POST to the chat function's /integrations as the user; the parsed reply or a CliError."""
    from worker.cli import _post_json

    url = chat_url.rstrip("/") + "/integrations"
    status, reply = _post_json(url, body, {"authorization": f"Bearer {token}"}, timeout_s)
    if status != 200 or not isinstance(reply, dict):
        error = reply.get("error", {}) if isinstance(reply, dict) else {}
        code = f", {error.get('code')}" if error.get("code") else ""
        raise CliError(f"the chat function refused ({status}{code}): {error.get('message') or 'no details'}")
    return reply


def _function_access(args: argparse.Namespace, user_id: uuid.UUID) -> tuple[str, str]:
    """The chat function's URL and the user's access token (signed by the local stack unless given)."""
    from worker import stack

    state = stack.State.load()
    url = args.chat_url or os.environ.get("CHAT_URL") or (
        f"http://127.0.0.1:{state.chat_port}/functions/v1/chat" if state and state.chat_port else None)
    token = args.user_token or os.environ.get("AGENT_TASKS_USER_TOKEN")
    if token is None and state is not None:
        token = stack.user_token(state, str(user_id))
    if not url or not token:
        raise CliError("give --chat-url and --user-token (or start the local stack)", EXIT_USAGE)
    return url, token


def cmd_list(args: argparse.Namespace) -> int:
    from worker.cli import _user_id, connect, emit

    with connect(args) as conn:
        rows = list_integrations(conn, _user_id(conn, args.user))
    emit(rows, LIST_COLUMNS, args.json, "integrations")
    return EXIT_OK


def cmd_add(args: argparse.Namespace) -> int:
    from worker.cli import _user_id, connect

    credential = os.environ.get(args.credential_env) if args.credential_env else None
    if args.credential_env and not credential:
        raise CliError(f"{args.credential_env} is empty or unset", EXIT_USAGE)
    if args.auth != "none" and credential is None:
        raise CliError(f"--auth {args.auth} needs --credential-env VAR (the credential is read from"
                       " the environment, never from the command line)", EXIT_USAGE)
    with connect(args) as conn:
        user_id = _user_id(conn, args.user)
        integration_id = upsert_integration(conn, user_id, args.name, args.url, args.auth, args.header_name,
                                            args.agent)
    if credential is not None:
        url, token = _function_access(args, user_id)
        call_function(url, token, {"action": "set_credential", "integration_id": str(integration_id),
                                   "credential": credential})
    out = {"id": str(integration_id), "name": args.name, "has_credential": credential is not None}
    print(json.dumps(out) if args.json else f"integration {args.name} saved ({integration_id})")
    return EXIT_OK


def cmd_test(args: argparse.Namespace) -> int:
    from worker.cli import _user_id, connect

    with connect(args) as conn:
        user_id = _user_id(conn, args.user)
        integration_id = find_integration(conn, user_id, args.name)
    url, token = _function_access(args, user_id)
    reply = call_function(url, token, {"action": "test", "integration_id": str(integration_id)})
    if args.json:
        print(json.dumps(reply))
    elif reply.get("ok"):
        print(f"{args.name}: connected, {len(reply['tools'])} tools")
        for tool in reply["tools"]:
            print(f"  {tool['name']}: {tool.get('description') or ''}")
    if not reply.get("ok"):
        raise CliError(f"{args.name}: {reply.get('error')}")
    return EXIT_OK


def cmd_remove(args: argparse.Namespace) -> int:
    from worker.cli import _user_id, connect

    with connect(args) as conn:
        if not remove_integration(conn, _user_id(conn, args.user), args.name):
            raise CliError(f"integration {args.name} not found")
    print(json.dumps({"removed": args.name}) if args.json else f"integration {args.name} removed")
    return EXIT_OK


def add_commands(sub: Any, command: Any, common: Any) -> None:
    """The `integrations` command group of the CLI."""
    group = command(sub, "integrations", "a user's MCP integrations (acting as the user)").add_subparsers(
        dest="integrations_command", required=True, metavar="ACTION")

    def user_args(p: argparse.ArgumentParser, function: bool = False) -> None:
        common(p)
        p.add_argument("--user", required=True, help="the user: id or email")
        if function:
            p.add_argument("--chat-url", help="the chat function; defaults to CHAT_URL, then the local stack's")
            p.add_argument("--user-token", help="the user's access token (default: AGENT_TASKS_USER_TOKEN,"
                           " else signed by the local stack)")

    p = command(group, "list", "the user's integrations (the credential is never shown)")
    user_args(p)
    p.set_defaults(func=cmd_list)
    p = command(group, "add", "connect an MCP server (Streamable HTTP) or change one, and enable it for agents")
    user_args(p, function=True)
    p.add_argument("name", help="lower-case name, the prefix of its tools (e.g. tickets)")
    p.add_argument("url", help="the server's URL (https; checked by the database)")
    p.add_argument("--auth", choices=["none", "bearer", "header"], default="none",
                   help="how the server authenticates: none, bearer (Authorization: Bearer), header (--header-name)")
    p.add_argument("--header-name", help="the header that carries the credential (--auth header)")
    p.add_argument("--credential-env", metavar="VAR", help="read the credential from this environment variable")
    p.add_argument("--agent", action="append", default=[], help="enable it for this agent (repeatable)")
    p.set_defaults(func=cmd_add)
    p = command(group, "test", "connect and list the server's tools (records status and last_error)")
    user_args(p, function=True)
    p.add_argument("name", help="the integration's name or id")
    p.set_defaults(func=cmd_test)
    p = command(group, "remove", "delete an integration and its credential")
    user_args(p)
    p.add_argument("name", help="the integration's name or id")
    p.set_defaults(func=cmd_remove)
