"""Shared pieces of the end-to-end worker benchmarks (bench_worker.py, bench_latency.py).

`Env` is one private set-up next to the running local Postgres: a fresh
database copied from the migrated template, the fake OpenAI-compatible model
(tests/fakes/openai_server.py) and the real chat function under Deno, pointed
at that database. Workers are real `python -m worker.runner` processes
started with tests/e2e/workers.spawn_worker (the environment a deployment
gives them). Everything listens on loopback and is stopped by `Env.close()`.

Also: bulk creation of users, agents and tasks in SQL, a sampler thread
(running executions in the database, the worker's RSS), CPU accounting per
process (/proc), and percentiles.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.e2e.conftest import ChatFunction, FakeLLM, _wait_http, start_chat_function  # noqa: E402
from tests.e2e.workers import WorkerProcess, spawn_worker  # noqa: E402
from worker import stack  # noqa: E402

CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


# --- /proc ---------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process, 0 when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def proc_status_kb(pid: int, key: str) -> int | None:
    """A `kB` line of /proc/<pid>/status (VmRSS, VmHWM), None when the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def percentile(sorted_values: list[float], q: float) -> float | None:
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_values:
        return None
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[index]


def summary_ms(values_ms: list[float]) -> dict[str, Any]:
    v = sorted(values_ms)
    return {
        "n": len(v),
        "p50_ms": _r(percentile(v, 0.50)),
        "p90_ms": _r(percentile(v, 0.90)),
        "p99_ms": _r(percentile(v, 0.99)),
        "max_ms": _r(v[-1] if v else None),
        "min_ms": _r(v[0] if v else None),
    }


def _r(x: float | None, nd: int = 1) -> float | None:
    return None if x is None else round(x, nd)


# --- the environment -----------------------------------------------------------------------


@dataclass
class Env:
    """A database, the fake model and the chat function of one benchmark run."""

    state: stack.State
    db_name: str
    db_url: str
    logs: Path
    llm: FakeLLM
    chat: ChatFunction | None = None
    workers: list[WorkerProcess] = field(default_factory=list)
    keep_logs: bool = False  # the worker/chat/fake logs (and py-spy output) stay in `logs`

    def connect(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self.db_url, autocommit=True)

    def spawn_worker(self, name: str, **settings: Any) -> WorkerProcess:
        """A `python -m worker.runner` process against this env (settings: worker_concurrency=64, ...)."""
        assert self.chat is not None
        wp = spawn_worker(self.chat, self.logs, name=name, **settings)
        self.workers.append(wp)
        return wp

    def stop_worker(self, wp: WorkerProcess, timeout_s: float = 20.0) -> int | None:
        wp.stop(timeout_s)
        return wp.proc.returncode

    def backend_pids(self) -> dict[str, list[int]]:
        """Postgres backends of this database, by the client that owns them."""
        with self.connect() as conn:
            rows = conn.execute("select pid, application_name from pg_stat_activity where datname = %s",
                                (self.db_name,)).fetchall()
        out: dict[str, list[int]] = {"pg_chat_function": [], "pg_worker": [], "pg_other": []}
        for pid, app in rows:
            if pid == os.getpid():
                continue
            key = ("pg_chat_function" if app == "chat-function"
                   else "pg_worker" if (app or "").startswith("agent-tasks") else "pg_other")
            out[key].append(int(pid))
        return out

    def close(self) -> None:
        for wp in self.workers:
            try:
                wp.stop(10.0)
            except Exception:
                pass
        if self.chat is not None:
            self.chat.stop()
        self.llm.proc.terminate()
        try:
            self.llm.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.llm.proc.kill()
        stack.drop_database(self.state, self.db_name)
        if not self.keep_logs:
            import shutil
            shutil.rmtree(self.logs, ignore_errors=True)


def start_env(prefix: str, chat_env: dict[str, str] | None = None) -> Env:
    """Fresh database + fake model + chat function (rate limit raised: the worker is one 'user' per call
    but the limit is per user, and the bench does not measure refusals)."""
    state = stack.up(with_services=False)
    db_name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    db_url = stack.create_database(state, db_name)
    with stack.connect(state) as conn:  # per-function call counts and times (pg_stat_user_functions)
        conn.execute(f'alter database "{db_name}" set track_functions = \'all\'')
    logs = Path(tempfile.mkdtemp(prefix=f"{prefix}-"))
    port = stack.free_port(0)
    with (logs / "fake-llm.log").open("wb") as out:
        proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "fakes" / "openai_server.py"),
                                 "--port", str(port)], stdout=out, stderr=subprocess.STDOUT)
    llm = FakeLLM(base_url=f"http://127.0.0.1:{port}/v1", proc=proc)
    env = Env(state=state, db_name=db_name, db_url=db_url, logs=logs, llm=llm)
    try:
        _wait_http(f"{llm.root}/_fake/requests", proc, logs / "fake-llm.log")
        env.chat = start_chat_function(state, db_url, llm, logs / "chat.log",
                                       extra_env={"CHAT_RATE_LIMIT": "1000000000", **(chat_env or {})})
    except BaseException:
        env.close()
        raise
    return env


# --- data ----------------------------------------------------------------------------------


def create_users_and_agents(conn: psycopg.Connection[Any], n_users: int) -> list[tuple[uuid.UUID, uuid.UUID]]:
    """n users (auth.users rows, as GoTrue writes them) with one agent each."""
    users = [uuid.uuid4() for _ in range(n_users)]
    with conn.cursor() as cur:
        cur.executemany("insert into auth.users (id, email) values (%s, %s)",
                        [(u, f"{u.hex[:10]}@bench.test") for u in users])
    pairs: list[tuple[uuid.UUID, uuid.UUID]] = []
    for u in users:
        row = conn.execute("insert into public.agents (user_id, name, system_prompt) values (%s, %s, %s) "
                           "returning id", (u, "Bench agent", "You are a concise assistant.")).fetchone()
        assert row is not None
        pairs.append((u, row[0]))
    return pairs


def create_tasks(conn: psycopg.Connection[Any], owners: list[tuple[uuid.UUID, uuid.UUID]], n_tasks: int,
                 **fields: Any) -> list[uuid.UUID]:
    """n tasks spread round robin over the owners; `fields` are column values shared by all."""
    cols = ["user_id", "agent_id", "name", "prompt_template", *fields]
    rows = []
    for i in range(n_tasks):
        user_id, agent_id = owners[i % len(owners)]
        rows.append((user_id, agent_id, f"Bench task {i}", "Give me a one-line status for {{TODAY}}.",
                     *(json.dumps(v) if isinstance(v, dict) else v for v in fields.values())))
    placeholders = ", ".join(["%s"] * len(cols))
    ids: list[uuid.UUID] = []
    with conn.cursor() as cur:
        for r in rows:
            cur.execute(f"insert into public.agent_tasks ({', '.join(cols)}) values ({placeholders}) "
                        "returning id", r)
            got = cur.fetchone()
            assert got is not None
            ids.append(got[0])
    return ids


def enqueue_manual_bulk(conn: psycopg.Connection[Any], task_ids: list[uuid.UUID], per_task: int) -> int:
    """per_task manual executions of every task in ONE statement (what N run_task_now calls make,
    in bulk; scheduled_for differs by a microsecond so (task_id, scheduled_for) stays unique)."""
    cur = conn.execute(
        """
        insert into public.agent_task_executions (
          task_id, user_id, agent_id, trigger_type, status, scheduled_for, run_after, priority,
          max_attempts, timeout_seconds, exclusive)
        select t.id, t.user_id, t.agent_id, 'manual', 'queued',
               now() + make_interval(secs => (k * 1000 + o) / 1e6), now(), t.priority,
               t.max_retries + 1, t.timeout_seconds, t.overlap_policy <> 'allow'
        from unnest(%s::uuid[]) with ordinality as x(id, o)
        join public.agent_tasks t on t.id = x.id
        cross join generate_series(1, %s) as k
        order by k, o
        """, (task_ids, per_task))
    conn.execute("update public.agent_tasks set run_count = run_count + %s where id = any(%s)",
                 (per_task, task_ids))
    return cur.rowcount


# --- observation ---------------------------------------------------------------------------


class Sampler(threading.Thread):
    """Samples `running` executions in the database and the worker's RSS every interval_s."""

    def __init__(self, db_url: str, worker_pid: int | None, interval_s: float = 0.1) -> None:
        super().__init__(daemon=True, name="sampler")
        self.db_url = db_url
        self.worker_pid = worker_pid
        self.interval_s = interval_s
        self.samples: list[tuple[float, int, int | None]] = []  # (t, running, rss_kb)
        self._halt = threading.Event()
        self.error: str | None = None

    def run(self) -> None:
        try:
            with psycopg.connect(self.db_url, autocommit=True, application_name="bench-sampler") as conn:
                while not self._halt.is_set():
                    t = time.monotonic()
                    row = conn.execute("select count(*) from public.agent_task_executions "
                                       "where status = 'running'").fetchone()
                    rss = proc_status_kb(self.worker_pid, "VmRSS") if self.worker_pid else None
                    self.samples.append((t, int(row[0]) if row else 0, rss))
                    self._halt.wait(max(0.0, self.interval_s - (time.monotonic() - t)))
        except Exception as exc:
            self.error = repr(exc)

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=5)

    @property
    def peak_running(self) -> int:
        return max((s[1] for s in self.samples), default=0)

    @property
    def peak_rss_kb(self) -> int:
        return max((s[2] or 0 for s in self.samples), default=0)


def machine_busy_s() -> float:
    """CPU seconds all cores of the machine spent busy since boot (/proc/stat)."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except OSError:
        return 0.0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / CLOCK_TICKS


class CpuMeter:
    """CPU seconds used by named groups of processes between start() and stop().

    `groups` may be re-read at stop() (`refresh`): Postgres backends opened during
    the window (the chat function's pool grows lazily) count from zero."""

    def __init__(self, groups: dict[str, list[int]], refresh: Any = None) -> None:
        self.groups = groups
        self.refresh = refresh
        self.before: dict[int, float] = {}
        self.used: dict[str, float] = {}
        self.wall_s = 0.0
        self._t0 = 0.0
        self._busy0 = 0.0
        self.machine_busy = 0.0

    def start(self) -> None:
        self._t0 = time.monotonic()
        self._busy0 = machine_busy_s()
        self.before = {p: cpu_seconds(p) for pids in self.groups.values() for p in pids}

    def stop(self) -> None:
        self.wall_s = time.monotonic() - self._t0
        self.machine_busy = machine_busy_s() - self._busy0
        if self.refresh is not None:
            for name, pids in self.refresh().items():
                self.groups[name] = sorted(set(self.groups.get(name, [])) | set(pids))
        self.used = {name: sum(max(0.0, cpu_seconds(p) - self.before.get(p, 0.0)) for p in pids)
                     for name, pids in self.groups.items()}

    def report(self, units: int) -> dict[str, Any]:
        """CPU seconds per group, share of one core, and CPU ms per unit of work."""
        wall = max(self.wall_s, 1e-9)
        ours = sum(self.used.values())
        return {
            "window_s": round(self.wall_s, 2),
            "cores_used": {k: round(v / wall, 2) for k, v in self.used.items()},
            "cpu_ms_per_execution": {k: round(v * 1000 / max(units, 1), 3) for k, v in self.used.items()},
            "machine_cores_busy": round(self.machine_busy / wall, 2),
            "bench_cores_busy": round(ours / wall, 2),
            "other_processes_cores_busy": round(max(0.0, self.machine_busy - ours) / wall, 2),
        }


def machine_load() -> dict[str, Any]:
    """Load average and the number of other busy processes: figures are noisy when others run."""
    try:
        load = [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        load = []
    return {"loadavg": load, "cpus": os.cpu_count()}


def execution_stats(conn: psycopg.Connection[Any]) -> dict[str, Any]:
    """Status counts, the claim→finish window, and the message check of every succeeded execution."""
    statuses = dict(conn.execute("select status, count(*) from public.agent_task_executions "
                                 "group by status").fetchall())
    row = conn.execute("""
        select min(started_at), max(finished_at),
               extract(epoch from max(finished_at) - min(started_at)),
               percentile_cont(0.5) within group (order by duration_ms),
               percentile_cont(0.99) within group (order by duration_ms)
        from public.agent_task_executions where started_at is not null""").fetchone()
    assert row is not None
    check = conn.execute("""
        with m as (
          select e.id,
                 count(c.id) as n,
                 count(c.id) filter (where c.role = 'user' and c.metadata->>'source' = 'scheduler'
                                     and c.id = e.user_message_id) as n_user,
                 count(c.id) filter (where c.role = 'assistant' and c.id = e.assistant_message_id) as n_assistant
          from public.agent_task_executions e
          left join public.chat_messages_v2 c on c.execution_id = e.id
          where e.status = 'succeeded'
          group by e.id)
        select count(*), count(*) filter (where n = 2 and n_user = 1 and n_assistant = 1)
        from m""").fetchone()
    assert check is not None
    stages = conn.execute("""
        select
          percentile_cont(0.5) within group (order by extract(epoch from u.created_at - e.started_at) * 1000),
          percentile_cont(0.5) within group (order by extract(epoch from a.created_at - u.created_at) * 1000),
          percentile_cont(0.5) within group (order by extract(epoch from e.finished_at - a.created_at) * 1000),
          percentile_cont(0.99) within group (order by extract(epoch from u.created_at - e.started_at) * 1000),
          percentile_cont(0.99) within group (order by extract(epoch from a.created_at - u.created_at) * 1000),
          percentile_cont(0.99) within group (order by extract(epoch from e.finished_at - a.created_at) * 1000)
        from public.agent_task_executions e
        join public.chat_messages_v2 u on u.id = e.user_message_id
        join public.chat_messages_v2 a on a.id = e.assistant_message_id
        where e.status = 'succeeded'""").fetchone()
    errors = conn.execute("""select left(coalesce(error, ''), 160), count(*) from public.agent_task_executions
                             where error is not null group by 1 order by 2 desc limit 3""").fetchall()
    return {
        "statuses": statuses,
        "first_claim": row[0], "last_finish": row[1],
        "window_s": float(row[2]) if row[2] is not None else None,
        "duration_ms_p50": _r(row[3]), "duration_ms_p99": _r(row[4]),
        "succeeded_checked": int(check[0]), "messages_ok": int(check[1]),
        "top_errors": [[e, int(n)] for e, n in errors],
        # wall time of each stage of a succeeded execution, from row timestamps (transaction
        # start times: a stage includes waiting for CPU, a pool connection or a lock)
        "stages_ms": None if stages is None or stages[0] is None else {
            "claim_to_user_message_p50": _r(stages[0]), "claim_to_user_message_p99": _r(stages[3]),
            "user_message_to_reply_p50": _r(stages[1]), "user_message_to_reply_p99": _r(stages[4]),
            "reply_to_finished_p50": _r(stages[2]), "reply_to_finished_p99": _r(stages[5]),
        },
    }


def create_run_now_task(conn: psycopg.Connection[Any], user_id: uuid.UUID, agent_id: uuid.UUID) -> uuid.UUID:
    """A manual task runs may overlap in, for "run now" measurements; the operator lifts the per-user
    run-now rate limit of this database (docs/security.md), which a measurement would otherwise hit."""
    row = conn.execute("""insert into public.agent_tasks (user_id, agent_id, name, prompt_template,
                                                        schedule_type, overlap_policy)
                         values (%s, %s, 'Run now', 'Quick check, please.', 'manual', 'allow')
                         returning id""", (user_id, agent_id)).fetchone()
    assert row is not None
    conn.execute("update scheduler.limits set value = 'null' where name = 'run_now_per_minute'")
    return uuid.UUID(str(row[0]))


def run_now_as_user(api: psycopg.Connection[Any], claims: str, task_id: uuid.UUID) -> uuid.UUID:
    """`rpc('run_task_now')` the way PostgREST runs it: one transaction, role authenticated, the owner's
    claims. Returns the execution id."""
    with api.transaction():
        api.execute("set local role authenticated")
        api.execute("select set_config('request.jwt.claims', %s, true)", (claims,))
        got = api.execute("select public.run_task_now(%s)", (task_id,)).fetchone()
    assert got is not None
    return uuid.UUID(str(got[0]))


def wait_until(predicate: Any, timeout_s: float, interval_s: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval_s)
    return bool(predicate())


def function_stats(conn: psycopg.Connection[Any], limit: int = 12) -> list[dict[str, Any]]:
    """The SQL functions that took the most time (track_functions = all on the bench database)."""
    rows = conn.execute("""
        select schemaname || '.' || funcname, calls, total_time, self_time
        from pg_stat_user_functions order by total_time desc limit %s""", (limit,)).fetchall()
    return [{"function": f, "calls": int(c), "total_ms": round(t, 1), "self_ms": round(st, 1),
             "ms_per_call": round(t / max(c, 1), 3)} for f, c, t, st in rows]


class PySpy:
    """`py-spy record` on one process for the measured window (collapsed stacks), when installed."""

    def __init__(self, pid: int, out: Path, rate: int = 100) -> None:
        import shutil
        self.out = out
        self.proc: subprocess.Popen[bytes] | None = None
        exe = shutil.which("py-spy")
        if exe is None:
            return
        self.proc = subprocess.Popen([exe, "record", "--pid", str(pid), "--rate", str(rate), "--format", "raw",
                                      "--output", str(out), "--nonblocking"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop(self) -> None:
        import signal
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()

    def summary(self, buckets: dict[str, tuple[str, ...]]) -> dict[str, Any]:
        """Share of samples whose stack contains one of each bucket's markers (first match wins),
        the idle share (the event loop waiting in select/epoll) separately."""
        if not self.out.exists():
            return {}
        counts: dict[str, int] = {}
        total = 0
        for line in self.out.read_text(errors="replace").splitlines():
            stack_text, _, n = line.rpartition(" ")
            try:
                k = int(n)
            except ValueError:
                continue
            total += k
            name = "other"
            if "select (selectors.py" in stack_text or "poll (selectors.py" in stack_text:
                name = "idle (epoll wait)"
            else:
                for bucket, markers in buckets.items():
                    if any(m in stack_text for m in markers):
                        name = bucket
                        break
            counts[name] = counts.get(name, 0) + k
        return {"samples": total,
                "share": {k: round(v / max(total, 1), 3) for k, v in sorted(counts.items(), key=lambda x: -x[1])},
                "file": str(self.out)}


WORKER_PROFILE_BUCKETS: dict[str, tuple[str, ...]] = {
    "logging": ("log_event (worker/log.py", "logging/__init__.py"),
    "http client (httpx/httpcore)": ("httpx/", "httpcore/", "h11/", "anyio/"),
    "postgres client (psycopg/pool)": ("psycopg/", "psycopg_pool/"),
    "prompt templates": ("templates.py",),
    "asyncio machinery": ("asyncio/",),
}
