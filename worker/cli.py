"""The `agent-tasks` command line: the worker, the local stack, the demo and operator commands.

Operator commands talk to Postgres directly (the project's direct or session
connection string: `--database-url`, else DATABASE_URL, else the local stack)
and go through the same SQL functions as everything else. Every listing takes
`--json` for scripts.

Exit codes: 0 done; 1 refused or not found (the message says why); 2 bad usage
or configuration; 3 the database cannot be reached. Every failure is one line
on stderr (and, under --json, a JSON object {"error": {"code", "message"}} on
stdout). Output is plain (no colour, wrapping or truncation) when stdout is not
a terminal.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, NoReturn

import psycopg
from psycopg.rows import dict_row
from rich.console import Console
from rich.table import Table

from worker import __version__
from worker.errors import ERROR_CODES, EXIT_OK, EXIT_REFUSED, EXIT_UNREACHABLE, EXIT_USAGE, CliError, one_line
from worker.status import ExecutionStatus

if TYPE_CHECKING:
    from worker.config import Settings

__all__ = ["EXIT_OK", "EXIT_REFUSED", "EXIT_UNREACHABLE", "EXIT_USAGE", "CliError", "main"]

# soft_wrap: a long line is never folded at the terminal's (or a pipe's 80) columns
console = Console(soft_wrap=True, highlight=False)


# --- helpers ---------------------------------------------------------------------


def resolve_database_url(explicit: str | None) -> str:
    """--database-url, else DATABASE_URL / SUPABASE_DB_URL, else the running local stack."""
    url = explicit or os.environ.get("DATABASE_URL") or os.environ.get("SUPABASE_DB_URL")
    if url:
        return url
    from worker import stack  # development tooling: only when no URL is given

    state = stack.State.load()
    if state is None or not stack.pg_running():
        raise CliError("no database: pass --database-url, set DATABASE_URL, or start the local stack"
                       " with `agent-tasks stack up`", EXIT_USAGE)
    return stack.database_url(state)


def connect(args: argparse.Namespace) -> psycopg.Connection[dict[str, Any]]:
    url = resolve_database_url(getattr(args, "database_url", None))
    try:
        return psycopg.connect(url, autocommit=True, row_factory=dict_row, connect_timeout=10)
    except psycopg.OperationalError as exc:
        raise CliError(f"cannot reach the database: {one_line(str(exc))}", EXIT_UNREACHABLE) from exc
    except psycopg.ProgrammingError as exc:  # a malformed connection string
        raise CliError(f"bad database URL: {one_line(str(exc))}", EXIT_USAGE) from exc


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    return value


def emit(rows: Sequence[dict[str, Any]], columns: Sequence[str], as_json: bool, title: str) -> None:
    """Print rows as a table on a terminal; as tab-separated lines (a header, then every
    value in full) when piped; as a JSON array under --json."""
    if as_json:
        print(json.dumps([{k: _jsonable(v) for k, v in r.items()} for r in rows], indent=2))
        return
    if not sys.stdout.isatty():
        print("\t".join(columns))
        for r in rows:
            print("\t".join(_plain(r.get(c)) for c in columns))
        return
    table = Table(title=title, show_lines=False)
    for col in columns:
        table.add_column(col)
    for r in rows:
        table.add_row(*[_short(r.get(c)) for c in columns])
    console.print(table)


def _plain(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, datetime):
        return value.isoformat()
    return " ".join(str(value).split("\n")).replace("\t", " ")


def _short(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, uuid.UUID):
        return str(value)[:8]
    text = str(value).replace("\n", " ")
    return text if len(text) <= 60 else text[:57] + "..."


def _sql_error(exc: psycopg.Error) -> CliError:
    diag = exc.diag
    message = one_line(diag.message_primary or str(exc))
    if diag.sqlstate in ("P0002",):
        return CliError(message, EXIT_REFUSED)
    if diag.sqlstate in ("22023", "23514", "23503", "55000", "42501"):
        return CliError(message + (f" ({diag.message_hint})" if diag.message_hint else ""), EXIT_REFUSED)
    return CliError(message, EXIT_REFUSED)


def _user_id(conn: psycopg.Connection[dict[str, Any]], who: str) -> uuid.UUID:
    row = conn.execute("select id from auth.users where id::text = %s or email = %s", (who, who)).fetchone()
    if row is None:
        raise CliError(f"user {who} not found")
    return uuid.UUID(str(row["id"]))


def _as_user(conn: psycopg.Connection[dict[str, Any]], user_id: Any) -> None:
    """Run the rest of the current transaction as that user, the way PostgREST runs supabase-js calls.

    What the CLI does for a user (create a task, run it now, retry a run) then meets the
    same RLS, column grants and limits as the user's own client (docs/security.md).
    """
    conn.execute("select set_config('role', 'authenticated', true), set_config('request.jwt.claims', %s, true)",
                 (json.dumps({"sub": str(user_id), "role": "authenticated"}),))


def _owner(conn: psycopg.Connection[dict[str, Any]], sql: str, target: str, missing: str) -> Any:
    try:
        row = conn.execute(sql, (target,)).fetchone()
    except psycopg.Error as exc:
        raise _sql_error(exc) from exc
    if row is None:
        raise CliError(missing.format(id=target))
    return row["user_id"]


# --- tasks ------------------------------------------------------------------------


TASK_COLUMNS = ["id", "name", "schedule", "timezone", "status", "next_run_at", "last_run_at",
                "runs", "ok", "failed", "last_error"]


def cmd_tasks_list(args: argparse.Namespace) -> int:
    with connect(args) as conn:
        rows = conn.execute(
            """
            select t.id, t.name, t.user_id,
                   case t.schedule_type
                     when 'cron' then 'cron ' || t.cron_expression
                     when 'interval' then 'every ' || t.interval_seconds || 's'
                     when 'once' then 'once ' || to_char(t.run_at, 'YYYY-MM-DD HH24:MI')
                     else 'manual' end as schedule,
                   t.timezone, t.status, t.next_run_at, t.last_run_at, t.run_count as runs,
                   t.success_count as ok, t.failure_count as failed, t.last_error,
                   t.conversation_mode, t.conversation_id
            from public.agent_tasks t
            where (%(user)s::text is null or t.user_id::text = %(user)s
                   or t.user_id = (select id from auth.users where email = %(user)s))
              and (%(status)s::text is null or t.status = %(status)s)
            order by t.created_at desc
            limit %(limit)s
            """, {"user": args.user, "status": args.status, "limit": args.limit}).fetchall()
    emit(rows, TASK_COLUMNS, args.json, "agent tasks")
    return EXIT_OK


def _variables(pairs: Sequence[str]) -> dict[str, str]:
    bad = [p for p in pairs if "=" not in p or not p.split("=", 1)[0]]
    if bad:
        raise CliError(f"--var takes NAME=VALUE, got {bad[0]!r}", EXIT_USAGE)
    return dict(p.split("=", 1) for p in pairs)


def cmd_tasks_create(args: argparse.Namespace) -> int:
    schedule: dict[str, Any]
    if args.cron:
        schedule = {"schedule_type": "cron", "cron_expression": args.cron}
    elif args.every:
        schedule = {"schedule_type": "interval", "interval_seconds": args.every}
    elif args.at:
        schedule = {"schedule_type": "once", "run_at": args.at}
    else:
        schedule = {"schedule_type": "manual"}
    with connect(args) as conn:
        user_id = _user_id(conn, args.user)
        fields: dict[str, Any] = {
            "agent_id": args.agent, "name": args.name,
            "prompt_template": args.prompt, "timezone": args.timezone,
            "prompt_variables": json.dumps(_variables(args.var)),
            "conversation_mode": "new_per_run" if args.new_per_run else "reuse",
            "conversation_id": args.conversation, "priority": args.priority,
            "max_retries": args.max_retries, "timeout_seconds": args.timeout,
            "overlap_policy": args.overlap, **schedule,
        }
        cols = ", ".join(fields)
        params = ", ".join(f"%({k})s" for k in fields)
        try:
            with conn.transaction():
                _as_user(conn, user_id)  # the user's own limits apply
                row = conn.execute(f"insert into public.agent_tasks ({cols}) values ({params}) returning *",
                                   fields).fetchone()
        except psycopg.Error as exc:
            raise _sql_error(exc) from exc
    assert row is not None
    if args.json:
        print(json.dumps({k: _jsonable(v) for k, v in row.items()}, indent=2))
    else:
        console.print(f"created task [bold]{row['id']}[/bold] ({row['name']}), status {row['status']}")
    return EXIT_OK


def _row_action(args: argparse.Namespace, key: str, sql: str, done: str, refused: str,
                owner_sql: str | None = None) -> int:
    """Run one SQL action on the row named by args.<key>; print its result (or JSON).

    With `owner_sql` (the row's user_id), the action runs as that user (`_as_user`).
    """
    target = getattr(args, key)
    with connect(args) as conn:
        try:
            with conn.transaction():
                if owner_sql is not None:
                    _as_user(conn, _owner(conn, owner_sql, target, refused))
                row = conn.execute(sql, (target,)).fetchone()
        except psycopg.Error as exc:
            raise _sql_error(exc) from exc
    result = None if row is None else next(iter(row.values()))
    if row is None or result is False:
        raise CliError(refused.format(id=target))
    if args.json:
        print(json.dumps({key: target, "result": _jsonable(result)}))
    else:
        console.print(done.format(id=target, result=result))
    return EXIT_OK


def _task_action(args: argparse.Namespace, sql: str, done: str) -> int:
    return _row_action(args, "task_id", sql, done, "task {id} not found")


def cmd_tasks_run(args: argparse.Namespace) -> int:
    # as the task's owner: the rate limit and budgets of run_task_now apply
    return _row_action(args, "task_id", "select public.run_task_now(%s) as execution_id",
                       "queued execution [bold]{result}[/bold] for task {id}", "task {id} not found",
                       owner_sql="select user_id from public.agent_tasks where id = %s")


def cmd_tasks_pause(args: argparse.Namespace) -> int:
    return _task_action(args, "select status from scheduler.pause_task(%s)",
                        "task {id} is now {result} (its queued scheduled runs were cancelled)")


def cmd_tasks_resume(args: argparse.Namespace) -> int:
    return _task_action(args, "select next_run_at from scheduler.resume_task(%s)",
                        "resumed task {id}; next run {result}")


# --- conversations ---------------------------------------------------------------------


def _post_json(url: str, body: dict[str, Any], headers: dict[str, str], timeout_s: float) -> tuple[int, Any]:
    """POST a JSON body; (status, parsed JSON body or None). Standard library only."""
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"content-type": "application/json", **headers})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    except (urllib.error.URLError, TimeoutError) as exc:
        raise CliError(f"cannot reach the chat function at {url}: {exc}", EXIT_UNREACHABLE) from None
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, None


def cmd_conversations_reply(args: argparse.Namespace) -> int:
    """Post a message as the conversation's owner through the chat function (the local stack signs
    the owner's access token), exactly as the app would: a task waiting for an answer there resumes."""
    from worker import stack

    with connect(args) as conn:
        row = conn.execute(
            "select user_id, agent_id from public.conversation_sessions where id::text = %s and deleted_at is null",
            (args.conversation_id,)).fetchone()
        if row is None:
            raise CliError(f"conversation {args.conversation_id} not found")
        state = stack.State.load()
        if state is None:
            raise CliError("reply signs the owner's access token with the local stack's key: start it with"
                           " `make up` (on a deployed project, answer from the app)", EXIT_USAGE)
        url = args.chat_url or os.environ.get("CHAT_URL") or (
            f"http://127.0.0.1:{state.chat_port}/functions/v1/chat" if state.chat_port else None)
        if not url:
            raise CliError("no chat function: give --chat-url or start the stack", EXIT_USAGE)
        headers = {"apikey": stack.api_keys(state)["anon_key"],
                   "authorization": f"Bearer {stack.user_token(state, str(row['user_id']))}"}
        status, body = _post_json(url, {"agent_id": str(row["agent_id"]), "conversation_id": args.conversation_id,
                                        "message": args.message}, headers, args.timeout)
        if status != 200 or not isinstance(body, dict):
            error = (body or {}).get("error", {}) if isinstance(body, dict) else {}
            raise CliError(f"the chat function refused the reply ({status}"
                           f"{', ' + str(error.get('code')) if error.get('code') else ''}):"
                           f" {error.get('message') or 'no details'}")
        resumed = conn.execute(
            "select e.id, t.name from public.agent_task_executions e join public.agent_tasks t on t.id = e.task_id"
            " where e.conversation_id = %s and e.trigger_type = 'user_reply' and e.created_at >= now() - interval"
            " '5 minutes' order by e.created_at desc limit 1", (args.conversation_id,)).fetchone()
    if args.json:
        print(json.dumps({"message": body.get("message"),
                          "resumed_execution_id": str(resumed["id"]) if resumed else None}, default=str))
        return EXIT_OK
    content = (body.get("message") or {}).get("content", "")
    console.print(content, markup=False)
    if resumed:
        console.print(f"task \"{resumed['name']}\" resumed: execution [bold]{resumed['id']}[/bold] is queued")
    return EXIT_OK


# --- executions ------------------------------------------------------------------------


EXEC_COLUMNS = ["id", "task", "trigger_type", "status", "attempt", "scheduled_for", "started_at",
                "duration_ms", "worker_id", "error"]


# The latest changed executions: the queue (queued, running: all of them, by the partial index
# of active rows) and the newest finished ones (by finished_at, the last change of a finished
# run, along agent_task_executions_finished_idx, or _failed_idx for failures), each branch
# written with only the filters given, so each is an index condition in any plan. One ordering
# by updated_at over the whole history scanned and sorted all of it at every call, every 0.5 s
# under `executions tail` (bench/bench_operator.py).
EXECUTION_COLUMNS_SQL = """e.id, t.name as task, e.task_id, e.trigger_type, e.status, e.attempt, e.max_attempts,
    e.scheduled_for, e.started_at, e.finished_at, e.duration_ms, e.worker_id, e.conversation_id, e.error,
    e.error_kind, e.output, e.updated_at"""
ACTIVE_STATUSES = tuple(s.value for s in ExecutionStatus if not s.is_terminal)  # the queue: queued, running
# written out (our own constants), so that even a generic plan matches the partial index's predicate
ACTIVE_SQL = "x.status in (" + ", ".join(f"'{s}'" for s in ACTIVE_STATUSES) + ")"


def _executions(conn: psycopg.Connection[dict[str, Any]], task: str | None, status: str | None,
                limit: int, since: datetime | None = None) -> list[dict[str, Any]]:
    branches: list[tuple[list[str], str]] = []
    if status is None or status in ACTIVE_STATUSES:
        branches.append(([ACTIVE_SQL] + (["x.updated_at > %(since)s"] if since else []),
                         ""))
    if status not in ACTIVE_STATUSES:
        branches.append((["x.finished_at is not null"] + (["x.finished_at > %(since)s"] if since else []),
                         " order by x.finished_at desc limit %(limit)s"))
    parts = []
    for where, order in branches:
        where += ["x.task_id = %(task)s::uuid"] if task else []
        where += ["x.status = %(status)s"] if status else []
        parts.append(f"(select x.* from public.agent_task_executions x where {' and '.join(where)}{order})")
    query = (f"select {EXECUTION_COLUMNS_SQL} from ({' union all '.join(parts)}) e"
             " join public.agent_tasks t on t.id = e.task_id order by e.updated_at desc limit %(limit)s")
    return conn.execute(query, {"task": task, "status": status, "limit": limit, "since": since}).fetchall()


def cmd_executions_list(args: argparse.Namespace) -> int:
    with connect(args) as conn:
        rows = _executions(conn, args.task, args.status, args.limit)
    emit(rows, EXEC_COLUMNS, args.json, "executions")
    return EXIT_OK


def cmd_executions_tail(args: argparse.Namespace) -> int:
    """Follow execution status changes as they happen (Ctrl-C to stop)."""
    deadline = time.monotonic() + args.duration if args.duration else None
    with connect(args) as conn:
        since = conn.execute("select now() - interval '1 minute' as t").fetchone()
        assert since is not None
        last: datetime = since["t"]
        try:
            while deadline is None or time.monotonic() < deadline:
                rows = list(reversed(_executions(conn, args.task, None, 500, last)))
                for r in rows:
                    last = max(last, r["updated_at"])
                    if args.json:
                        print(json.dumps({k: _jsonable(v) for k, v in r.items()}), flush=True)
                    else:
                        console.print(_exec_line(r))
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass
    return EXIT_OK


STATUS_STYLE = {"queued": "yellow", "running": "cyan", "succeeded": "green", "failed": "red",
                "timed_out": "red", "cancelled": "magenta", "skipped": "dim", "needs_input": "blue"}


def _exec_line(r: dict[str, Any]) -> str:
    style = STATUS_STYLE.get(r["status"], "white")
    extra = ""
    if r.get("duration_ms") is not None:
        extra += f" {r['duration_ms']} ms"
    if r.get("error"):
        extra += f" [red]{_short(r['error'])}[/red]"
    return (f"[dim]{r['updated_at']:%H:%M:%S}[/dim] execution {str(r['id'])[:8]} "
            f"[{style}]{r['status']}[/{style}] {r['task']} ({r['trigger_type']}, attempt {r['attempt']}){extra}")


def _exec_action(args: argparse.Namespace, sql: str, done: str) -> int:
    return _row_action(args, "execution_id", sql, done, "execution {id} is not queued or running")


def cmd_executions_retry(args: argparse.Namespace) -> int:
    # as the execution's owner: the rate limit and budgets of retry_execution apply
    return _row_action(args, "execution_id", "select public.retry_execution(%s) as new_id",
                       "queued retry [bold]{result}[/bold] of execution {id}", "execution {id} not found",
                       owner_sql="select user_id from public.agent_task_executions where id = %s")


def cmd_executions_cancel(args: argparse.Namespace) -> int:
    return _exec_action(args, "select scheduler.cancel_execution(%s, 'cancelled by an operator') as ok",
                        "cancelled execution {id}")


# --- queue -------------------------------------------------------------------------------


def cmd_queue_stats(args: argparse.Namespace) -> int:
    with connect(args) as conn:
        rows = conn.execute("select * from scheduler.queue_stats()").fetchall()
        workers = conn.execute(
            "select id, hostname, pid, concurrency, in_flight, last_seen_at,"
            " case when chat_circuit_open_since is null then 'closed' else 'open' end as chat_circuit,"
            " chat_circuit_open_since, chat_circuit_reason from scheduler.workers"
            " order by started_at").fetchall()
        lag = conn.execute(
            """select extract(epoch from (now() - min(run_after)))::float as oldest_ready_s
               from public.agent_task_executions where status = 'queued' and run_after <= now()"""
        ).fetchone()
    if args.json:
        print(json.dumps({
            "statuses": [{k: _jsonable(v) for k, v in r.items()} for r in rows],
            "workers": [{k: _jsonable(v) for k, v in w.items()} for w in workers],
            "oldest_ready_s": lag["oldest_ready_s"] if lag else None,
        }, indent=2))
        return EXIT_OK
    emit(rows, ["status", "count", "oldest", "next_run_after"], False, "queue")
    emit(workers, ["id", "hostname", "pid", "concurrency", "in_flight", "last_seen_at", "chat_circuit"], False,
         "workers")
    for w in workers:
        if w["chat_circuit_open_since"] is not None:  # the worker stopped claiming: say why
            console.print(f"worker {w['id']}: chat function unreachable since {w['chat_circuit_open_since']}"
                          f" ({w['chat_circuit_reason']}); it claims nothing until it answers")
    if lag and lag["oldest_ready_s"] is not None:
        console.print(f"oldest claimable execution has waited {lag['oldest_ready_s']:.1f} s")
    return EXIT_OK


# --- worker, stack, demo ----------------------------------------------------------------------


def cmd_console(args: argparse.Namespace) -> int:
    from worker.console.serve import serve, settings_from_args

    settings = settings_from_args(args)
    print(f"console on http://{args.host}:{args.port}/", flush=True)
    serve(settings, args.host, args.port)
    return EXIT_OK

# What each worker setting means (`agent-tasks worker --help` lists them with their defaults;
# a unit test keeps this in step with worker.config.Settings).
SETTING_HELP = {
    "database_url": "direct or session-mode Postgres URL (port 5432); the transaction pooler (6543) is refused",
    "chat_url": "the chat edge function, e.g. https://<ref>.supabase.co/functions/v1/chat",
    "supabase_secret_key": "sb_secret_... key the worker calls the chat function with",
    "supabase_service_role_key": "legacy service-role JWT, used when no secret key is set",
    "worker_id": "the worker's name in scheduler.workers",
    "worker_concurrency": "executions in flight in this worker",
    "worker_per_user_limit": "running executions per user across all workers (0 = no cap)",
    "lease_seconds": "lease of a running execution, renewed by heartbeats",
    "heartbeat_interval_s": "seconds between heartbeats; shorter than the lease",
    "poll_interval_s": "polling fallback behind LISTEN/NOTIFY, seconds",
    "tick_interval_s": "own enqueue + rescue tick, seconds",
    "planner_batch_size": "cron tasks planned per pass",
    "plan_time_budget_s": "CPU time the planner may spend on one cron task (in a child process); a task "
                          "over it gets status error with a readable last_error",
    "enqueue_batch_size": "executions enqueued per call",
    "shutdown_grace_s": "how long SIGTERM waits for in-flight runs before releasing them",
    "session_grace_s": "a worker whose database session is gone this long has its runs rescued",
    "retry_base_s": "first retry delay (exponential backoff with full jitter)",
    "retry_cap_s": "longest retry delay",
    "retry_min_s": "shortest retry delay (at most RETRY_CAP_S), so one run's retries cannot all fit "
                   "inside a short outage",
    "db_write_retry_s": "how long the worker retries its own writes (start, finish, requeue, release) "
                        "through a database blip",
    "db_pool_size": "work connections (the listener has its own)",
    "http_connect_timeout_s": "connect timeout of calls to the chat function (a transient error)",
    "webhook_timeout_s": "how long a webhook POST may take before it counts as failed (tried again later)",
    "webhook_retry_base_s": "the first wait before a failed webhook POST is tried again; later waits grow to "
                            "2160 times it (5 s: 30 s, 2 min, 10 min, 30 min, 1 h, 3 h)",
    "worker_metrics_port": "serve Prometheus metrics (/metrics) and a health check (/healthz) on this port; "
                           "unset: off (docs/runbook.md \"Metrics\")",
    "worker_metrics_host": "the address the metrics port listens on (0.0.0.0 for a scraper on another host)",
    "log_level": "DEBUG, INFO, WARNING or ERROR",
    "log_json": "one JSON object per log line instead of key=value",
}
SETTING_DEFAULT_TEXT = {"worker_id": "host-pid-random", "heartbeat_interval_s": "LEASE_SECONDS / 3",
                        "database_url": "-", "supabase_secret_key": "-", "supabase_service_role_key": "-"}


def settings_help() -> str:
    """The worker's settings as help text: variable, default, meaning (from worker.config.Settings)."""
    from pydantic.aliases import AliasChoices

    from worker.config import Settings

    lines = ["settings (environment variables, or a .env file in the working directory):"]
    for name, field in Settings.model_fields.items():
        alias = field.validation_alias
        env = " or ".join(str(a) for a in alias.choices[:2]) if isinstance(alias, AliasChoices) else name.upper()
        default = SETTING_DEFAULT_TEXT.get(name, str(field.default).lower() if isinstance(field.default, bool)
                                           else str(field.default))
        lines.append(f"  {env} (default: {default})\n      {SETTING_HELP.get(name, '')}")
    return "\n".join(lines)


def _settings() -> Settings:
    """worker.config.Settings from the environment; each bad setting named, exit 2."""
    from pydantic import ValidationError

    from worker.config import Settings

    try:
        return Settings()
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"]).upper()
            msg = err["msg"].removeprefix("Value error, ")
            problems.append(msg if not where or msg.startswith(where) else f"{where}: {msg}")
        raise CliError("configuration: " + "; ".join(problems), EXIT_USAGE) from None


def cmd_worker(args: argparse.Namespace) -> int:
    """Run a worker until SIGTERM/SIGINT (or, with --check, check that it could)."""
    settings = _settings()
    if args.check:
        from worker.check import report, run_checks

        return report(run_checks(settings), args.json)
    from worker.check import require_database

    require_database(settings.database_url)  # fail fast, in one line, before the pool retries for 30 s
    import psycopg_pool

    from worker.runner import run

    try:
        return run(settings)
    except (psycopg.OperationalError, psycopg_pool.PoolTimeout) as exc:
        raise CliError(f"lost the database while starting: {one_line(str(exc))}", EXIT_UNREACHABLE) from exc


def cmd_stack_up(args: argparse.Namespace) -> int:
    from worker import stack

    print(stack.database_url(stack.up(with_services=not args.db_only)))
    return EXIT_OK


def cmd_stack_down(args: argparse.Namespace) -> int:
    from worker import stack

    stack.down(purge=args.purge)
    return EXIT_OK


def cmd_stack_reset(args: argparse.Namespace) -> int:
    from worker import stack

    print(stack.database_url(stack.reset()))
    return EXIT_OK


def cmd_stack_status(args: argparse.Namespace) -> int:
    from worker import stack

    stack.require_checkout()
    info = stack.status()
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        for key, value in info.items():
            print(f"{key:>22}: {value}")
    return EXIT_OK if info.get("running") else EXIT_REFUSED


def cmd_demo(args: argparse.Namespace) -> int:
    from worker.demo import run_demo

    return run_demo(duration_s=args.duration)


# --- parser -----------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """Usage errors are CliErrors (one line, exit 2), not argparse's usage dump. An epilog can be
    made only when help is shown (the worker's settings need pydantic, slow to import)."""

    epilog_factory: Callable[[], str] | None = None

    def error(self, message: str) -> NoReturn:
        raise CliError(f"{message} (see `{self.prog} --help`)", EXIT_USAGE)

    def format_help(self) -> str:
        if self.epilog_factory is not None:
            self.epilog = self.epilog_factory()
        return super().format_help()


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="agent-tasks", description=__doc__,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--database-url", help="direct or session Postgres URL; defaults to DATABASE_URL"
                       " (or SUPABASE_DB_URL), then the local stack")
        p.add_argument("--json", action="store_true", help="machine-readable output (errors too)")

    def command(parent: Any, name: str, helptext: str, **kw: Any) -> _Parser:
        return parent.add_parser(name, help=helptext, description=helptext, **kw)  # type: ignore[no-any-return]

    p = command(sub, "worker", "run a worker until SIGTERM/SIGINT (settings from the environment or .env)",
                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.epilog_factory = settings_help
    p.add_argument("--check", action="store_true",
                   help="check the database (reachable, a session connection, the migrations the worker"
                        " needs) and that the chat function accepts the service credential; exit 0 or"
                        " 2/3 with one line per problem")
    p.add_argument("--json", action="store_true", help="--check: the results as one JSON object")
    p.set_defaults(func=cmd_worker)

    stack_cmd = command(sub, "stack", "the local development stack (needs a source checkout)")
    stack_sub = stack_cmd.add_subparsers(dest="stack_command", required=True, metavar="ACTION")
    p = command(stack_sub, "up", "install what is missing, start Postgres, migrate, serve the chat function")
    p.add_argument("--db-only", action="store_true", help="only Postgres (no chat function or fake model)")
    p.set_defaults(func=cmd_stack_up)
    p = command(stack_sub, "down", "stop everything (the data is kept)")
    p.add_argument("--purge", action="store_true", help="also delete the cluster and .stack/")
    p.set_defaults(func=cmd_stack_down)
    p = command(stack_sub, "status", "where everything is; exit 1 when not running")
    p.add_argument("--json", action="store_true", help="as JSON, like `supabase status -o json`")
    p.set_defaults(func=cmd_stack_status)
    p = command(stack_sub, "reset", "delete the cluster and start a fresh one")
    p.set_defaults(func=cmd_stack_reset)

    p = command(sub, "demo", "start everything and watch scheduled runs arrive in a conversation (Ctrl-C stops)")
    p.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    p.set_defaults(func=cmd_demo)

    tasks = command(sub, "tasks", "list, create, run, pause, resume tasks").add_subparsers(
        dest="tasks_command", required=True, metavar="ACTION")
    p = command(tasks, "list", "tasks, newest first")
    common(p)
    p.add_argument("--user", help="only this user's (id or email)")
    p.add_argument("--status", choices=["active", "paused", "waiting_input", "completed", "error"],
                   help="only tasks in this status")
    p.add_argument("--limit", type=int, default=50, help="at most this many rows (default 50)")
    p.set_defaults(func=cmd_tasks_list)

    p = command(tasks, "create", "create a task (validated by the database: a bad cron or zone is refused)")
    common(p)
    p.add_argument("--user", required=True, help="owner: user id or email")
    p.add_argument("--agent", required=True, help="agent id (the owner's)")
    p.add_argument("--name", required=True, help="the task's name")
    p.add_argument("--prompt", required=True, help="prompt template; {{TODAY}}, {{NOW}}, ... allowed")
    when = p.add_mutually_exclusive_group()
    when.add_argument("--cron", help="five-field cron expression, e.g. '0 9 * * 1-5'")
    when.add_argument("--every", type=int, metavar="SECONDS", help="interval schedule")
    when.add_argument("--at", help="run once at this ISO 8601 instant")
    p.add_argument("--timezone", default="UTC", help="IANA time zone of the schedule (default UTC)")
    p.add_argument("--var", action="append", default=[], metavar="NAME=VALUE",
                   help="custom template variable (repeatable)")
    p.add_argument("--conversation", help="run in this conversation (reuse)")
    p.add_argument("--new-per-run", action="store_true", help="a new conversation for every run")
    p.add_argument("--priority", type=int, default=0, help="higher runs first among your own runs (default 0)")
    p.add_argument("--max-retries", type=int, default=3, help="retries after a transient failure (default 3)")
    p.add_argument("--timeout", type=int, default=300, help="seconds a run may take (default 300)")
    p.add_argument("--overlap", choices=["skip", "queue", "allow"], default="skip",
                   help="a due run while the previous one runs (default skip)")
    p.set_defaults(func=cmd_tasks_create)

    for name, func, helptext in [("run", cmd_tasks_run, "queue a run now"),
                                 ("pause", cmd_tasks_pause, "pause (queued scheduled runs are cancelled)"),
                                 ("resume", cmd_tasks_resume, "resume and plan the next run")]:
        p = command(tasks, name, helptext)
        common(p)
        p.add_argument("task_id", help="the task's id")
        p.set_defaults(func=func)

    execs = command(sub, "executions", "list, tail, retry, cancel executions").add_subparsers(
        dest="executions_command", required=True, metavar="ACTION")
    p = command(execs, "list", "executions, most recently changed first")
    common(p)
    p.add_argument("--task", help="only this task's (id)")
    p.add_argument("--status", choices=["queued", "running", "succeeded", "failed", "timed_out", "cancelled",
                                        "skipped", "needs_input"], help="only executions in this status")
    p.add_argument("--limit", type=int, default=50, help="at most this many rows (default 50)")
    p.set_defaults(func=cmd_executions_list)
    p = command(execs, "tail", "follow status changes (Ctrl-C stops)")
    common(p)
    p.add_argument("--task", help="only this task's (id)")
    p.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    p.set_defaults(func=cmd_executions_tail)
    for name, func, helptext in [("retry", cmd_executions_retry, "queue a new attempt of a finished execution"),
                                 ("cancel", cmd_executions_cancel, "cancel a queued or running execution")]:
        p = command(execs, name, helptext)
        common(p)
        p.add_argument("execution_id", help="the execution's id")
        p.set_defaults(func=func)

    convs = command(sub, "conversations", "act in conversations").add_subparsers(
        dest="conversations_command", required=True, metavar="ACTION")
    p = command(convs, "reply", "post a message as the conversation's owner through the chat function"
                " (a task waiting for an answer there resumes)")
    common(p)
    p.add_argument("conversation_id", help="the conversation's id")
    p.add_argument("message", help="the message (at most 10,000 characters)")
    p.add_argument("--chat-url", help="the chat function; defaults to CHAT_URL, then the local stack's")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the reply (default 120)")
    p.set_defaults(func=cmd_conversations_reply)

    p = command(sub, "console", "serve the web console (conversations, chat, schedules, runs, operator pages)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8765, help="port (default 8765)")
    p.add_argument("--database-url", help="a role that may `set role authenticated` (the project's postgres"
                   " user); defaults to DATABASE_URL, then the local stack")
    p.add_argument("--chat-url", help="the chat function; defaults to CHAT_URL, SUPABASE_URL/functions/v1/chat,"
                   " then the local stack's")
    p.add_argument("--operator-token", help="enables the operator pages; defaults to CONSOLE_OPERATOR_TOKEN")
    p.set_defaults(func=cmd_console)

    queue = command(sub, "queue", "queue figures").add_subparsers(dest="queue_command", required=True,
                                                                  metavar="ACTION")
    p = command(queue, "stats", "executions per status, workers, the oldest claimable wait")
    common(p)
    p.set_defaults(func=cmd_queue_stats)

    from worker.integrations import add_commands as add_integration_commands

    add_integration_commands(sub, command, common)
    return parser


def fail(message: str, code: int, as_json: bool) -> int:
    """Print one error line on stderr (and the JSON error object on stdout under --json)."""
    message = one_line(message)
    if as_json:
        print(json.dumps({"error": {"code": ERROR_CODES.get(code, "error"), "message": message}}), flush=True)
    prefix = "\x1b[31merror:\x1b[0m" if sys.stderr.isatty() else "error:"
    print(f"{prefix} {message}", file=sys.stderr, flush=True)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """The console script: run one command, map every failure to one line and an exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    as_json = "--json" in argv
    try:
        args = build_parser().parse_args(argv)
        return int(args.func(args))
    except CliError as exc:
        return fail(str(exc), exc.code, as_json)
    except psycopg.OperationalError as exc:
        return fail(f"cannot reach the database: {exc}", EXIT_UNREACHABLE, as_json)
    except psycopg.Error as exc:
        err = _sql_error(exc)
        return fail(str(err), err.code, as_json)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `agent-tasks ... | head`: the reader left, nothing to report
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except Exception as exc:
        if os.environ.get("AGENT_TASKS_DEBUG"):
            raise
        return fail(f"unexpected {type(exc).__name__}: {exc} (AGENT_TASKS_DEBUG=1 shows the traceback)",
                    EXIT_REFUSED, as_json)


if __name__ == "__main__":
    raise SystemExit(main())
