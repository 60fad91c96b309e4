"""The operator CLI against a real database: output, effects and exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.conftest import create_agent, create_task, create_user
from worker import cli

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def run_cli(capsys: pytest.CaptureFixture[str], db_url: str, *args: str) -> tuple[int, Any, str]:
    code = cli.main([*args, "--database-url", db_url, "--json"])
    out, err = capsys.readouterr()
    return code, (json.loads(out) if out.strip() else None), err


def test_tasks_create__writes_a_validated_task(capsys: pytest.CaptureFixture[str], conn: psycopg.Connection[Any],
                                               db_url: str) -> None:
    uid = create_user(conn, "ops@example.test")
    agent = create_agent(conn, uid)
    code, task, _ = run_cli(capsys, db_url, "tasks", "create", "--user", "ops@example.test",
                            "--agent", str(agent), "--name", "Morning", "--prompt", "Hi {{TEAM}} on {{TODAY}}",
                            "--var", "TEAM=platform", "--every", "60")
    assert code == cli.EXIT_OK
    assert task["schedule_type"] == "interval" and task["interval_seconds"] == 60
    assert task["prompt_variables"] == {"TEAM": "platform"}
    row = conn.execute("select next_run_at from agent_tasks where id = %s", (task["id"],)).fetchone()
    assert row is not None and row["next_run_at"] is not None


def test_tasks_create__bad_cron_is_refused_with_the_reason(capsys: pytest.CaptureFixture[str],
                                                           conn: psycopg.Connection[Any], db_url: str) -> None:
    uid = create_user(conn)
    agent = create_agent(conn, uid)
    code = cli.main(["tasks", "create", "--database-url", db_url, "--user", str(uid), "--agent", str(agent),
                     "--name", "x", "--prompt", "p", "--cron", "0 9 * * 8"])
    _, err = capsys.readouterr()
    assert code == cli.EXIT_REFUSED
    assert "day-of-week" in err
    assert conn.execute("select count(*) as n from agent_tasks").fetchone() == {"n": 0}


def test_tasks_create__acts_for_the_user_and_meets_their_limits(capsys: pytest.CaptureFixture[str],
                                                                conn: psycopg.Connection[Any], db_url: str) -> None:
    """Finding 3 through the CLI: an interval of 1 s and max_retries = 20 are refused, naming the limit."""
    uid = create_user(conn)
    agent = create_agent(conn, uid)
    base = ["tasks", "create", "--database-url", db_url, "--user", str(uid), "--agent", str(agent),
            "--name", "x", "--prompt", "p"]
    assert cli.main([*base, "--every", "1"]) == cli.EXIT_REFUSED
    assert "min_interval_seconds" in capsys.readouterr().err
    assert cli.main([*base, "--every", "60", "--max-retries", "20"]) == cli.EXIT_REFUSED
    assert "(max_retries)" in capsys.readouterr().err
    assert conn.execute("select count(*) as n from agent_tasks").fetchone() == {"n": 0}
    assert cli.main([*base, "--every", "60"]) == cli.EXIT_OK
    assert conn.execute("select user_id from agent_tasks").fetchone() == {"user_id": uid}


def test_tasks_run_and_executions_retry__meet_the_users_rate_limits(capsys: pytest.CaptureFixture[str],
                                                                    conn: psycopg.Connection[Any],
                                                                    db_url: str) -> None:
    """Finding 3 through the CLI: run now and retry count toward the user's per-minute limits."""
    conn.execute("update scheduler.limits set value = '1' where name in ('run_now_per_minute', 'retry_per_minute')")
    uid = create_user(conn)
    agent = create_agent(conn, uid)
    task = create_task(conn, uid, agent)
    code, out, _ = run_cli(capsys, db_url, "tasks", "run", str(task))
    assert code == cli.EXIT_OK
    execution = str(out["result"])
    assert cli.main(["tasks", "run", str(task), "--database-url", db_url]) == cli.EXIT_REFUSED
    assert "run_now_per_minute" in capsys.readouterr().err
    conn.execute("select scheduler.cancel_execution(%s)", (execution,))
    code, _, _ = run_cli(capsys, db_url, "executions", "retry", execution)
    assert code == cli.EXIT_OK
    assert cli.main(["executions", "retry", execution, "--database-url", db_url]) == cli.EXIT_REFUSED
    assert "retry_per_minute" in capsys.readouterr().err
    assert conn.execute("select count(*) as n from agent_task_executions").fetchone() == {"n": 2}


def test_tasks_cli__meets_the_active_task_cap_and_the_daily_budgets(capsys: pytest.CaptureFixture[str],
                                                                   conn: psycopg.Connection[Any],
                                                                   db_url: str) -> None:
    conn.execute("update scheduler.limits set value = '1' where name = 'max_active_tasks_per_user'")
    uid = create_user(conn)
    agent = create_agent(conn, uid)
    task = create_task(conn, uid, agent)
    assert cli.main(["tasks", "create", "--database-url", db_url, "--user", str(uid), "--agent", str(agent),
                     "--name", "second", "--prompt", "p"]) == cli.EXIT_REFUSED
    assert "(max_active_tasks_per_user)" in capsys.readouterr().err
    conn.execute("select scheduler.count_usage(%s, null, '{\"total_tokens\": 2000000}')", (uid,))
    assert cli.main(["tasks", "run", str(task), "--database-url", db_url]) == cli.EXIT_REFUSED
    assert "(max_tokens_per_user_per_day)" in capsys.readouterr().err


def test_tasks_run_pause_resume__move_the_task(capsys: pytest.CaptureFixture[str], conn: psycopg.Connection[Any],
                                               db_url: str) -> None:
    uid = create_user(conn)
    agent = create_agent(conn, uid)
    task = create_task(conn, uid, agent, schedule_type="interval", interval_seconds=3600)

    code, out, _ = run_cli(capsys, db_url, "tasks", "run", str(task))
    assert code == cli.EXIT_OK
    execution = conn.execute("select status, trigger_type from agent_task_executions where id = %s",
                             (out["result"],)).fetchone()
    assert execution == {"status": "queued", "trigger_type": "manual"}

    code, out, _ = run_cli(capsys, db_url, "tasks", "pause", str(task))
    assert code == cli.EXIT_OK and out["result"] == "paused"
    assert conn.execute("select next_run_at from agent_tasks where id = %s", (task,)).fetchone() == {
        "next_run_at": None}

    code, out, _ = run_cli(capsys, db_url, "tasks", "resume", str(task))
    assert code == cli.EXIT_OK and out["result"] is not None

    code, rows, _ = run_cli(capsys, db_url, "tasks", "list")
    assert code == cli.EXIT_OK and [r["status"] for r in rows] == ["active"]


def test_tasks_run__unknown_task_exits_1(capsys: pytest.CaptureFixture[str], db_url: str) -> None:
    code = cli.main(["tasks", "run", str(uuid.uuid4()), "--database-url", db_url])
    _, err = capsys.readouterr()
    assert code == cli.EXIT_REFUSED
    assert "not found" in err


def test_executions_cancel_and_retry(capsys: pytest.CaptureFixture[str], conn: psycopg.Connection[Any],
                                     db_url: str) -> None:
    uid = create_user(conn)
    agent = create_agent(conn, uid)
    task = create_task(conn, uid, agent)
    row = conn.execute("select scheduler.enqueue_now(%s) as id", (task,)).fetchone()
    assert row is not None
    execution = str(row["id"])

    code, out, _ = run_cli(capsys, db_url, "executions", "cancel", execution)
    assert code == cli.EXIT_OK and out["result"] is True
    code = cli.main(["executions", "cancel", execution, "--database-url", db_url])
    assert code == cli.EXIT_REFUSED  # already cancelled
    capsys.readouterr()

    code, out, _ = run_cli(capsys, db_url, "executions", "retry", execution)
    assert code == cli.EXIT_OK
    retry = conn.execute("select trigger_type, status, retry_of from agent_task_executions where id = %s",
                         (out["result"],)).fetchone()
    assert retry == {"trigger_type": "retry", "status": "queued", "retry_of": uuid.UUID(execution)}

    code, rows, _ = run_cli(capsys, db_url, "executions", "list", "--status", "queued")
    assert code == cli.EXIT_OK and [r["id"] for r in rows] == [out["result"]]


def test_queue_stats__counts_by_status(capsys: pytest.CaptureFixture[str], conn: psycopg.Connection[Any],
                                       db_url: str) -> None:
    uid = create_user(conn)
    agent = create_agent(conn, uid)
    task = create_task(conn, uid, agent, overlap_policy="allow")
    for _ in range(3):
        conn.execute("select scheduler.enqueue_now(%s)", (task,))
    code, out, _ = run_cli(capsys, db_url, "queue", "stats")
    assert code == cli.EXIT_OK
    assert {s["status"]: s["count"] for s in out["statuses"]} == {"queued": 3}
    assert out["oldest_ready_s"] is not None


def test_queue_stats__shows_a_worker_whose_chat_circuit_is_open(capsys: pytest.CaptureFixture[str],
                                                                conn: psycopg.Connection[Any], db_url: str) -> None:
    conn.execute("select scheduler.register_worker('w-open', 'host', 1, 4),"
                 " scheduler.register_worker('w-ok', 'host', 2, 4)")
    conn.execute("select scheduler.report_chat_circuit('w-open', true, 'chat function 503: gateway')")
    code, out, _ = run_cli(capsys, db_url, "queue", "stats")
    assert code == cli.EXIT_OK
    circuits = {w["id"]: (w["chat_circuit"], w["chat_circuit_reason"]) for w in out["workers"]}
    assert circuits["w-open"] == ("open", "chat function 503: gateway")
    assert circuits["w-ok"] == ("closed", None)


def test_unreachable_database__exits_3(capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["queue", "stats", "--database-url", "postgresql://nobody:x@127.0.0.1:1/none"])
    assert code == cli.EXIT_UNREACHABLE
    assert "cannot reach the database" in capsys.readouterr().err


def test_bad_usage__exits_2() -> None:
    # the console script of this checkout's environment (the one next to this interpreter)
    proc = subprocess.run([Path(sys.executable).parent / "agent-tasks", "tasks", "frobnicate"], capture_output=True,
                          text=True)
    assert proc.returncode == 2


UNREACHABLE = "postgresql://nobody:x@127.0.0.1:1/none"
NO_SUCH_ID = "00000000-0000-4000-8000-000000000001"

# (argv, environment, exit code, words of the message); {db} is a fresh migrated database.
# Every failure path: bad usage, bad configuration, refused / not found, unreachable.
ERROR_PATHS: list[tuple[list[str], dict[str, str], int, str]] = [
    (["tasks", "frobnicate"], {}, cli.EXIT_USAGE, "invalid choice: 'frobnicate'"),
    (["tasks", "list", "--limit", "many", "--json"], {}, cli.EXIT_USAGE, "invalid int value: 'many'"),
    (["executions", "list", "--status", "done", "--json"], {}, cli.EXIT_USAGE, "invalid choice: 'done'"),
    (["tasks", "create", "--user", "u", "--json"], {}, cli.EXIT_USAGE, "required: --agent, --name, --prompt"),
    (["queue", "stats", "--json", "--database-url", UNREACHABLE], {}, cli.EXIT_UNREACHABLE,
     "cannot reach the database"),
    (["tasks", "list", "--json", "--database-url", "not a url"], {}, cli.EXIT_USAGE, "bad database URL"),
    (["tasks", "list", "--json"], {"DATABASE_URL": UNREACHABLE}, cli.EXIT_UNREACHABLE, "port 1 failed"),
    (["tasks", "run", NO_SUCH_ID, "--json", "--database-url", "{db}"], {}, cli.EXIT_REFUSED, "not found"),
    (["tasks", "pause", "not-a-uuid", "--json", "--database-url", "{db}"], {}, cli.EXIT_REFUSED,
     "invalid input syntax for type uuid"),
    (["executions", "cancel", NO_SUCH_ID, "--json", "--database-url", "{db}"], {}, cli.EXIT_REFUSED,
     "is not queued or running"),
    (["executions", "list", "--task", "x", "--json", "--database-url", "{db}"], {}, cli.EXIT_REFUSED,
     "invalid input syntax for type uuid"),
    (["tasks", "create", "--user", "nobody@example.test", "--agent", NO_SUCH_ID, "--name", "n", "--prompt", "p",
      "--json", "--database-url", "{db}"], {}, cli.EXIT_REFUSED, "user nobody@example.test not found"),
    (["worker"], {"DATABASE_URL": ""}, cli.EXIT_USAGE, "DATABASE_URL (or SUPABASE_DB_URL) is required"),
    (["worker"], {"DATABASE_URL": "postgresql://u:p@db.example.test:6543/postgres"}, cli.EXIT_USAGE,
     "transaction pooler"),
    (["worker"], {"DATABASE_URL": UNREACHABLE, "SUPABASE_SECRET_KEY": "sb_secret_x"}, cli.EXIT_UNREACHABLE,
     "cannot reach the database"),
    (["worker"], {"DATABASE_URL": UNREACHABLE, "LEASE_SECONDS": "3", "HEARTBEAT_INTERVAL_S": "5"},
     cli.EXIT_USAGE, "HEARTBEAT_INTERVAL_S must be shorter than LEASE_SECONDS"),
]


@pytest.mark.parametrize(("argv", "env", "code", "words"), ERROR_PATHS,
                         ids=[" ".join(a[:2]) + f"->{c}" for a, _, c, _ in ERROR_PATHS])
def test_error_paths__one_line_and_the_documented_exit_code(argv: list[str], env: dict[str, str], code: int,
                                                            words: str, db_url: str, tmp_path: Path) -> None:
    argv = [db_url if a == "{db}" else a for a in argv]
    environ = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "SUPABASE_DB_URL")}
    environ.update({"SUPABASE_SECRET_KEY": "", **env})
    started = time.monotonic()
    # cwd: an empty folder (no .env, no local stack)
    proc = subprocess.run([sys.executable, "-m", "worker", *argv], capture_output=True, text=True, env=environ,
                          cwd=tmp_path, timeout=60)
    elapsed = time.monotonic() - started
    assert proc.returncode == code, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert words in lines[0]
    assert "Traceback" not in proc.stderr + proc.stdout
    if "--json" in argv:
        assert json.loads(proc.stdout) == {"error": {"code": cli.ERROR_CODES[code], "message": lines[0][7:]}}
    else:
        assert proc.stdout == ""
    assert elapsed < 20, f"{argv} took {elapsed:.1f}s to fail"  # no 30 s pool retry before giving up


def test_listings__plain_when_piped(capsys: pytest.CaptureFixture[str], conn: psycopg.Connection[Any],
                                    db_url: str) -> None:
    """Piped output is tab-separated and complete: no wrapping at 80 columns, no truncated cells."""
    uid = create_user(conn)
    agent = create_agent(conn, uid)
    name = "A task whose name is much longer than any terminal column would allow " * 2
    task = create_task(conn, uid, agent, name=name.strip())
    row = conn.execute("select scheduler.enqueue_now(%s) as id", (task,)).fetchone()
    assert row is not None
    proc = subprocess.run([sys.executable, "-m", "worker", "executions", "list", "--database-url", db_url],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    header, line = proc.stdout.splitlines()
    assert header.split("\t") == cli.EXEC_COLUMNS
    cells = dict(zip(cli.EXEC_COLUMNS, line.split("\t"), strict=True))
    assert cells["id"] == str(row["id"]) and cells["task"] == name.strip()
    assert cells["trigger_type"] == "manual" and cells["status"] == "queued"

    proc = subprocess.run([sys.executable, "-m", "worker", "tasks", "create", "--database-url", db_url,
                           "--user", str(uid), "--agent", str(agent), "--name", "x" * 150, "--prompt", "p"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("\n") == 1 and "x" * 150 in proc.stdout


ADMIN = ROOT / "sql" / "admin"


@pytest.mark.parametrize("script", ["queue_inspect.sql", "retry_failed.sql", "rescue_now.sql"])
def test_admin_scripts__run_on_a_migrated_database(script: str, conn: psycopg.Connection[Any], db_url: str) -> None:
    uid = create_user(conn)
    agent = create_agent(conn, uid)
    task = create_task(conn, uid, agent)
    row = conn.execute("select scheduler.enqueue_now(%s) as id", (task,)).fetchone()
    assert row is not None
    conn.execute("select scheduler.cancel_execution(%s)", (row["id"],))
    proc = subprocess.run(["psql", db_url, "-v", "ON_ERROR_STOP=1", "-f", str(ADMIN / script)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    if script == "retry_failed.sql":
        # cancelled executions are not retried by this script, only failed / timed out
        assert conn.execute("select count(*) as n from agent_task_executions").fetchone() == {"n": 1}


def test_admin_retry_failed__requeues_failed_runs_once(conn: psycopg.Connection[Any], db_url: str) -> None:
    uid = create_user(conn)
    agent = create_agent(conn, uid)
    task = create_task(conn, uid, agent, max_retries=0)
    conn.execute("select scheduler.enqueue_now(%s)", (task,))
    claimed = conn.execute("select id, attempt from scheduler.claim_executions('w', 1, 30)").fetchone()
    assert claimed is not None
    conn.execute("select scheduler.requeue_later(%s, 'w', %s, 'boom')", (claimed["id"], claimed["attempt"]))
    for _ in range(2):  # the second pass finds the retry already made
        proc = subprocess.run(["psql", db_url, "-v", "ON_ERROR_STOP=1", "-f", str(ADMIN / "retry_failed.sql")],
                              capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
    rows = conn.execute("select trigger_type, status from agent_task_executions order by created_at").fetchall()
    assert rows == [{"trigger_type": "manual", "status": "failed"}, {"trigger_type": "retry", "status": "queued"}]


@pytest.mark.parametrize("script", ["cron_jobs.sql", "cron_schedule.sql", "cron_pause.sql", "cron_resume.sql"])
def test_admin_cron_scripts__run_where_pg_cron_lives(script: str, stack_state: Any) -> None:
    from worker import stack

    proc = subprocess.run(["psql", stack.database_url(stack_state), "-v", "ON_ERROR_STOP=1", "-f",
                           str(ADMIN / script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    if script in ("cron_pause.sql", "cron_resume.sql"):
        assert "agent-tasks-enqueue-due" in proc.stdout


def test_worker_check__one_line_per_problem(tmp_path: Path) -> None:
    environ = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "SUPABASE_DB_URL")}
    environ.update({"DATABASE_URL": UNREACHABLE, "SUPABASE_SECRET_KEY": "", "SUPABASE_SERVICE_ROLE_KEY": ""})
    proc = subprocess.run([sys.executable, "-m", "worker", "worker", "--check", "--json"], capture_output=True,
                          text=True, env=environ, cwd=tmp_path, timeout=60)
    assert proc.returncode == cli.EXIT_UNREACHABLE
    assert proc.stderr.splitlines() == [
        "error: cannot reach the database: connection failed: connection to server at \"127.0.0.1\", port 1 failed:"
        " Connection refused; Is the server running on that host and accepting TCP/IP connections?",
        "error: set SUPABASE_SECRET_KEY (sb_secret_...) or SUPABASE_SERVICE_ROLE_KEY so the worker can call the"
        " chat function"]
    out = json.loads(proc.stdout)
    assert out["ok"] is False and out["error"]["code"] == "database_unreachable"
    assert [(c["name"], c["ok"]) for c in out["checks"]] == [("database", False), ("chat", False)]


def _history(conn: psycopg.Connection[Any]) -> tuple[uuid.UUID, uuid.UUID, dict[str, uuid.UUID]]:
    """Two tasks' executions: one claimed (running), one waiting (queued), and runs finished
    2 days, 2 hours and 10 seconds ago, one of them failed (written directly, as finished
    history is: their last change is their finish)."""
    uid = create_user(conn)
    agent = create_agent(conn, uid)
    task, other = (create_task(conn, uid, agent, overlap_policy="allow", name=n) for n in ("Digest", "Other"))
    ids: dict[str, uuid.UUID] = {}
    for name, t, status, ago in [("old", task, "succeeded", "2 days"), ("failed", task, "failed", "2 hours"),
                                 ("recent", other, "succeeded", "10 seconds")]:
        ids[name] = conn.execute(
            "insert into public.agent_task_executions (task_id, user_id, agent_id, trigger_type, status,"
            " scheduled_for, attempt, worker_id, started_at, finished_at, created_at, updated_at)"
            " select %s, %s, %s, 'manual', %s, at, 1, 'w', at, at, at, at"
            " from (select now() - %s::interval as at) x returning id",
            (t, uid, agent, status, ago)).fetchone()["id"]
    ids["claimed"] = conn.execute("select scheduler.enqueue_now(%s) as id", (task,)).fetchone()["id"]
    ids["waiting"] = conn.execute("select scheduler.enqueue_now(%s) as id", (other,)).fetchone()["id"]
    claimed = conn.execute("select id from scheduler.claim_executions('w-cli', 1, 60)").fetchone()
    assert claimed is not None and claimed["id"] == ids["claimed"], "the first queued is claimed first"
    return task, other, ids


def test_executions_list__the_queue_and_the_newest_finished_runs(capsys: pytest.CaptureFixture[str],
                                                                 conn: psycopg.Connection[Any],
                                                                 db_url: str) -> None:
    task, other, ids = _history(conn)
    by_id = {v: k for k, v in ids.items()}

    def listed(*args: str) -> list[str]:
        code, rows, _ = run_cli(capsys, db_url, "executions", "list", *args)
        assert code == cli.EXIT_OK
        return [by_id[uuid.UUID(r["id"])] for r in rows]

    # newest change first, the queue and the history together
    assert listed() == ["claimed", "waiting", "recent", "failed", "old"]
    assert listed("--limit", "2") == ["claimed", "waiting"]
    assert listed("--status", "failed") == ["failed"]
    assert listed("--status", "queued") == ["waiting"]
    assert listed("--status", "running") == ["claimed"]
    assert listed("--status", "succeeded") == ["recent", "old"]
    assert listed("--task", str(task)) == ["claimed", "failed", "old"]
    assert listed("--task", str(other), "--status", "succeeded") == ["recent"]


def test_executions_tail__prints_what_changed_in_the_last_minute(capsys: pytest.CaptureFixture[str],
                                                                 conn: psycopg.Connection[Any], db_url: str) -> None:
    _, _, ids = _history(conn)
    code = cli.main(["executions", "tail", "--duration", "0.3", "--json", "--database-url", db_url])
    out, _ = capsys.readouterr()
    assert code == cli.EXIT_OK
    seen = [uuid.UUID(json.loads(line)["id"]) for line in out.splitlines()]
    # oldest change first; what finished hours ago is not a change of the last minute
    assert seen == [ids["recent"], ids["waiting"], ids["claimed"]]
