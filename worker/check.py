"""`agent-tasks worker --check`: can a worker run here, with this configuration?

Checks, each reported on one line:

* the database answers (else exit 3, and the database checks stop there);
* the migrations the worker needs are applied: every `scheduler.*` function
  the worker calls (the SQL of `worker.db`) exists and this role may execute it;
* the connection is a session (direct, or the session-mode pooler), not the
  transaction pooler: a LISTEN on it receives its own NOTIFY, from one backend;
* the chat function accepts the service credential: a service call with an
  all-zero context must be refused for the context (no such agent, a context
  that does not belong together), never for the credential.

Exit 0 when everything passes; 3 when the database cannot be reached; 2 for
any other problem (configuration or deployment). Used by the container's
health check and the systemd unit's ExecStartPre (deploy/).
"""

from __future__ import annotations

import json
import os
import re
import sys
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from typing import Any

import psycopg

from worker import db
from worker.config import Settings
from worker.errors import ERROR_CODES, EXIT_OK, EXIT_UNREACHABLE, EXIT_USAGE, CliError, one_line

CONNECT_TIMEOUT_S = 5
NOTIFY_TIMEOUT_S = 3.0
CHAT_TIMEOUT_S = 10.0
# the chat function refuses an all-zero act-as context with one of these once the
# credential passed (docs/chat/api.md, error codes); any other answer is a problem
CONTEXT_REFUSALS = frozenset({"invalid_body", "context_mismatch", "agent_not_found", "conversation_not_found",
                              "message_not_found", "execution_not_running"})


@dataclass(frozen=True, slots=True)
class Check:
    """One verified property: what it is, whether it holds, and the line that says so."""

    name: str
    ok: bool
    message: str
    code: int = EXIT_OK  # the exit code it calls for when it fails


def require_database(url: str) -> None:
    """Connect once; a database that does not answer is a CliError with exit code 3."""
    try:
        psycopg.connect(url, connect_timeout=CONNECT_TIMEOUT_S).close()
    except psycopg.OperationalError as exc:
        raise CliError(f"cannot reach the database: {one_line(exc)}", EXIT_UNREACHABLE) from exc
    except psycopg.ProgrammingError as exc:
        raise CliError(f"bad DATABASE_URL: {one_line(exc)}", EXIT_USAGE) from exc


def worker_functions() -> list[str]:
    """The scheduler functions the worker calls, read from its SQL (worker.db)."""
    names: set[str] = set()
    for value in vars(db).values():
        if isinstance(value, str):
            names.update(re.findall(r"\bscheduler\.([a-z_][a-z0-9_]*)\s*\(", value))
    return sorted(names)


def _database_checks(conn: psycopg.Connection[Any]) -> list[Check]:
    row = conn.execute("select current_user, current_setting('server_version')").fetchone()
    assert row is not None
    checks = [Check("database", True, f"database reachable (Postgres {row[1]}, role {row[0]})")]

    needed = worker_functions()
    found = {name: executable for name, executable in conn.execute(
        """select p.proname, bool_or(has_function_privilege(p.oid, 'execute'))
           from pg_catalog.pg_proc p join pg_catalog.pg_namespace n on n.oid = p.pronamespace
           where n.nspname = 'scheduler' and p.proname = any(%s) group by p.proname""", (needed,))}
    missing = ", ".join(f"scheduler.{n}" for n in needed if n not in found)
    denied = ", ".join(f"scheduler.{n}" for n in needed if n in found and not found[n])
    if missing:
        checks.append(Check("migrations", False, f"migrations not applied: missing {missing}"
                            " (apply supabase/migrations: `supabase db push`)", EXIT_USAGE))
    elif denied:
        checks.append(Check("migrations", False, f"role {row[0]} may not execute {denied}"
                            " (grant it task_worker)", EXIT_USAGE))
    else:
        checks.append(Check("migrations", True, f"migrations applied: the {len(needed)} scheduler functions"
                            " the worker calls exist and this role may execute them"))

    channel = f"agent_tasks_check_{os.getpid()}"
    pids = set()
    conn.execute(f"listen {channel}")
    pids.add(conn.execute("select pg_backend_pid()").fetchone())
    conn.execute("select pg_notify(%s, 'ping')", (channel,))
    got = any(n.channel == channel for n in conn.notifies(timeout=NOTIFY_TIMEOUT_S, stop_after=1))
    pids.add(conn.execute("select pg_backend_pid()").fetchone())
    conn.execute(f"unlisten {channel}")
    if got and len(pids) == 1:
        checks.append(Check("session", True, "session connection: LISTEN receives NOTIFY on one backend"))
    else:
        checks.append(Check("session", False, "not a session connection (LISTEN/NOTIFY did not round-trip on one"
                            " backend): use the direct connection (db.<ref>.supabase.co:5432) or the"
                            " session-mode pooler, not the transaction pooler", EXIT_USAGE))
    return checks


def _chat_check(settings: Settings) -> Check:
    try:
        headers = settings.service_headers()
    except ValueError as exc:
        return Check("chat", False, str(exc), EXIT_USAGE)
    zero = str(uuid.UUID(int=0))
    body = json.dumps({"context": {k: zero for k in (
        "user_id", "agent_id", "conversation_id", "execution_id", "user_message_id")}}).encode()
    request = urllib.request.Request(settings.chat_url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=CHAT_TIMEOUT_S) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return Check("chat", False, f"cannot reach the chat function at {settings.chat_url}: {reason}", EXIT_USAGE)
    try:
        code = json.loads(raw)["error"]["code"]
    except (ValueError, KeyError, TypeError):
        code = None
    if code in CONTEXT_REFUSALS:
        return Check("chat", True, f"chat function at {settings.chat_url} accepts the service credential")
    if code in ("invalid_service_credential", "service_header_required", "service_not_allowed"):
        return Check("chat", False, f"the chat function at {settings.chat_url} refuses the service credential"
                     f" (HTTP {status} {code}): set SUPABASE_SECRET_KEY to the project's secret key", EXIT_USAGE)
    return Check("chat", False, f"unexpected answer from {settings.chat_url}: HTTP {status}"
                 f"{' ' + code if code else ''} (is CHAT_URL the chat function?)", EXIT_USAGE)


def run_checks(settings: Settings) -> list[Check]:
    """Every check, in order; the database ones stop at the first connection failure."""
    checks: list[Check] = []
    try:
        with psycopg.connect(settings.database_url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S,
                             application_name="agent-tasks worker --check") as conn:
            checks.extend(_database_checks(conn))
    except psycopg.OperationalError as exc:
        checks.append(Check("database", False, f"cannot reach the database: {one_line(exc)}",
                            EXIT_UNREACHABLE))
    except psycopg.Error as exc:
        checks.append(Check("database", False, f"database check failed: {one_line(exc)}", EXIT_USAGE))
    checks.append(_chat_check(settings))
    return checks


def exit_code(checks: list[Check]) -> int:
    """3 when the database is unreachable, else 2 when anything failed, else 0."""
    codes = {c.code for c in checks if not c.ok}
    if EXIT_UNREACHABLE in codes:
        return EXIT_UNREACHABLE
    return EXIT_USAGE if codes else EXIT_OK


def report(checks: list[Check], as_json: bool) -> int:
    """Print one line per check (`ok: ...` on stdout, `error: ...` on stderr), or one JSON object."""
    code = exit_code(checks)
    if as_json:
        out: dict[str, Any] = {"ok": code == EXIT_OK,
                               "checks": [{"name": c.name, "ok": c.ok, "message": c.message} for c in checks]}
        if code != EXIT_OK:
            problems = [c.message for c in checks if not c.ok]
            out["error"] = {"code": ERROR_CODES[code], "message": "; ".join(problems)}
        print(json.dumps(out))
    for c in checks:
        if c.ok:
            if not as_json:
                print(f"ok: {c.message}")
        else:
            print(f"error: {c.message}", file=sys.stderr)
    sys.stdout.flush()
    return code
