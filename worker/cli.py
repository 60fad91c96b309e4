"""The `agent-tasks` command line: the worker, the local stack, the demo and operator commands.

Operator commands talk to Postgres directly (the project's direct or session
connection string: `--database-url`, else DATABASE_URL, else the local stack)
and go through the same SQL functions as everything else. Every listing takes
`--json` for scripts.

Exit codes: 0 done; 1 refused or not found (the message says why); 2 bad usage
or configuration; 3 the database cannot be reached.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row
from rich.console import Console
from rich.table import Table

from worker import stack

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3

console = Console()
err_console = Console(stderr=True)


class CliError(Exception):
    """A failure with its exit code."""

    def __init__(self, message: str, code: int = EXIT_REFUSED) -> None:
        super().__init__(message)
        self.code = code


# --- helpers ---------------------------------------------------------------------


def resolve_database_url(explicit: str | None) -> str:
    """--database-url, else DATABASE_URL / SUPABASE_DB_URL, else the running local stack."""
    url = explicit or os.environ.get("DATABASE_URL") or os.environ.get("SUPABASE_DB_URL")
    if url:
        return url
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
        raise CliError(f"cannot reach the database: {exc}", EXIT_UNREACHABLE) from exc


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    return value


def emit(rows: Sequence[dict[str, Any]], columns: Sequence[str], as_json: bool, title: str) -> None:
    """Print rows as a rich table, or as JSON lines-free array for scripts."""
    if as_json:
        print(json.dumps([{k: _jsonable(v) for k, v in r.items()} for r in rows], indent=2))
        return
    table = Table(title=title, show_lines=False)
    for col in columns:
        table.add_column(col)
    for r in rows:
        table.add_row(*[_short(r.get(c)) for c in columns])
    console.print(table)


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
    message = diag.message_primary or str(exc)
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
            "user_id": user_id, "agent_id": args.agent, "name": args.name,
            "prompt_template": args.prompt, "timezone": args.timezone,
            "prompt_variables": json.dumps(dict(v.split("=", 1) for v in args.var)),
            "conversation_mode": "new_per_run" if args.new_per_run else "reuse",
            "conversation_id": args.conversation, "priority": args.priority,
            "max_retries": args.max_retries, "timeout_seconds": args.timeout,
            "overlap_policy": args.overlap, **schedule,
        }
        cols = ", ".join(fields)
        params = ", ".join(f"%({k})s" for k in fields)
        try:
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


def _row_action(args: argparse.Namespace, key: str, sql: str, done: str, refused: str) -> int:
    """Run one SQL action on the row named by args.<key>; print its result (or JSON)."""
    target = getattr(args, key)
    with connect(args) as conn:
        try:
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
    return _task_action(args, "select scheduler.enqueue_now(%s, 'manual') as execution_id",
                        "queued execution [bold]{result}[/bold] for task {id}")


def cmd_tasks_pause(args: argparse.Namespace) -> int:
    return _task_action(args, "select status from scheduler.pause_task(%s)",
                        "task {id} is now {result} (its queued scheduled runs were cancelled)")


def cmd_tasks_resume(args: argparse.Namespace) -> int:
    return _task_action(args, "select next_run_at from scheduler.resume_task(%s)",
                        "resumed task {id}; next run {result}")


# --- executions ------------------------------------------------------------------------


EXEC_COLUMNS = ["id", "task", "trigger_type", "status", "attempt", "scheduled_for", "started_at",
                "duration_ms", "worker_id", "error"]


def _executions(conn: psycopg.Connection[dict[str, Any]], task: str | None, status: str | None,
                limit: int, since: datetime | None = None) -> list[dict[str, Any]]:
    return conn.execute(
        """
        select e.id, t.name as task, e.task_id, e.trigger_type, e.status, e.attempt, e.max_attempts,
               e.scheduled_for, e.started_at, e.finished_at, e.duration_ms, e.worker_id,
               e.conversation_id, e.error, e.error_kind, e.output, e.updated_at
        from public.agent_task_executions e
        join public.agent_tasks t on t.id = e.task_id
        where (%(task)s::uuid is null or e.task_id = %(task)s::uuid)
          and (%(status)s::text is null or e.status = %(status)s)
          and (%(since)s::timestamptz is null or e.updated_at > %(since)s)
        order by e.updated_at desc
        limit %(limit)s
        """, {"task": task, "status": status, "limit": limit, "since": since}).fetchall()


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
    return _exec_action(args, "select scheduler.retry_execution(%s) as new_id",
                        "queued retry [bold]{result}[/bold] of execution {id}")


def cmd_executions_cancel(args: argparse.Namespace) -> int:
    return _exec_action(args, "select scheduler.cancel_execution(%s, 'cancelled by an operator') as ok",
                        "cancelled execution {id}")


# --- queue -------------------------------------------------------------------------------


def cmd_queue_stats(args: argparse.Namespace) -> int:
    with connect(args) as conn:
        rows = conn.execute("select * from scheduler.queue_stats()").fetchall()
        workers = conn.execute(
            "select id, hostname, pid, concurrency, in_flight, last_seen_at from scheduler.workers"
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
    emit(workers, ["id", "hostname", "pid", "concurrency", "in_flight", "last_seen_at"], False, "workers")
    if lag and lag["oldest_ready_s"] is not None:
        console.print(f"oldest claimable execution has waited {lag['oldest_ready_s']:.1f} s")
    return EXIT_OK


# --- worker, stack, demo ----------------------------------------------------------------------


def cmd_worker(args: argparse.Namespace) -> int:
    """Run a worker until SIGTERM/SIGINT; configuration errors exit 2 with the setting named."""
    from worker.runner import main as worker_main

    return worker_main()


def cmd_stack(args: argparse.Namespace) -> int:
    return stack.main(args.stack_args)


def cmd_demo(args: argparse.Namespace) -> int:
    from worker.demo import run_demo

    return run_demo(duration_s=args.duration)


# --- parser -----------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="agent-tasks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser, listing: bool = True) -> None:
        p.add_argument("--database-url", help="defaults to DATABASE_URL, then the local stack")
        p.add_argument("--json", action="store_true", help="machine-readable output")

    p = sub.add_parser("worker", help="run a worker (configuration from the environment / .env)")
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("stack", help="the local stack: up | down | status [--json] | reset")
    p.add_argument("stack_args", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_stack)

    p = sub.add_parser("demo", help="start everything and watch scheduled runs arrive in a conversation")
    p.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    p.set_defaults(func=cmd_demo)

    tasks = sub.add_parser("tasks", help="list, create, run, pause, resume tasks").add_subparsers(
        dest="tasks_command", required=True)
    p = tasks.add_parser("list")
    common(p)
    p.add_argument("--user", help="user id or email")
    p.add_argument("--status")
    p.add_argument("--limit", type=int, default=50)
    p.set_defaults(func=cmd_tasks_list)

    p = tasks.add_parser("create")
    common(p)
    p.add_argument("--user", required=True, help="owner: user id or email")
    p.add_argument("--agent", required=True, help="agent id (the owner's)")
    p.add_argument("--name", required=True)
    p.add_argument("--prompt", required=True, help="prompt template; {{TODAY}}, {{NOW}}, ... allowed")
    when = p.add_mutually_exclusive_group()
    when.add_argument("--cron", help="five-field cron expression, e.g. '0 9 * * 1-5'")
    when.add_argument("--every", type=int, metavar="SECONDS", help="interval schedule")
    when.add_argument("--at", help="run once at this ISO 8601 instant")
    p.add_argument("--timezone", default="UTC", help="IANA time zone of the schedule")
    p.add_argument("--var", action="append", default=[], metavar="NAME=VALUE", help="custom template variable")
    p.add_argument("--conversation", help="run in this conversation (reuse)")
    p.add_argument("--new-per-run", action="store_true", help="a new conversation for every run")
    p.add_argument("--priority", type=int, default=0)
    p.add_argument("--max-retries", type=int, default=3)
    p.add_argument("--timeout", type=int, default=300, help="seconds")
    p.add_argument("--overlap", choices=["skip", "queue", "allow"], default="skip")
    p.set_defaults(func=cmd_tasks_create)

    for name, func, helptext in [("run", cmd_tasks_run, "run now"), ("pause", cmd_tasks_pause, "pause"),
                                 ("resume", cmd_tasks_resume, "resume")]:
        p = tasks.add_parser(name, help=helptext)
        common(p)
        p.add_argument("task_id")
        p.set_defaults(func=func)

    execs = sub.add_parser("executions", help="list, tail, retry, cancel executions").add_subparsers(
        dest="executions_command", required=True)
    p = execs.add_parser("list")
    common(p)
    p.add_argument("--task")
    p.add_argument("--status")
    p.add_argument("--limit", type=int, default=50)
    p.set_defaults(func=cmd_executions_list)
    p = execs.add_parser("tail", help="follow status changes")
    common(p)
    p.add_argument("--task")
    p.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    p.set_defaults(func=cmd_executions_tail)
    for name, func in [("retry", cmd_executions_retry), ("cancel", cmd_executions_cancel)]:
        p = execs.add_parser(name)
        common(p)
        p.add_argument("execution_id")
        p.set_defaults(func=func)

    queue = sub.add_parser("queue", help="queue figures").add_subparsers(dest="queue_command", required=True)
    p = queue.add_parser("stats")
    common(p)
    p.set_defaults(func=cmd_queue_stats)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
        return code
    except CliError as exc:
        err_console.print(f"[red]error:[/red] {exc}")
        return exc.code
    except stack.StackError as exc:
        err_console.print(f"[red]error:[/red] {exc}")
        return EXIT_USAGE


if __name__ == "__main__":
    raise SystemExit(main())
