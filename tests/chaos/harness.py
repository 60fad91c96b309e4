"""Chaos scenarios against real parts: worker processes (python -m worker.runner),
the chat function under Deno, the fake model, the stack's Postgres.

`run_scenario` drives one scenario and returns its report (a dict that
bench/bench_chaos.py prints as JSON and tests/chaos asserts on): every
execution terminal, none lost, model calls per run (the fake model logs each
request and the status it answered; a run's prompt is unique, `chaos <task>
at {{NOW}}`), task counters equal to the rows, Postgres deadlocks during the
run, and how long the runs a fault hit stayed `running` after it (stranded).

The faults (SCENARIOS), one every `fault_every_s` while the load runs:

* ``sigkill``             SIGKILL a random worker and start a new one (the next kill once
                          it is up).
* ``pg_restart``          `pg_ctl restart -m fast` of the cluster.
* ``terminate_backends``  pg_terminate_backend of every worker connection (pool and LISTEN).
* ``chat_kill``           SIGKILL the chat function and start it again on the same port.
* ``chat_outage``         the gateway in front of the chat function answers 503 for 3 s.
* ``pool_exhaustion``     each worker has a pool of 1 connection for 8 concurrent runs (no
                          further fault: every write waits for the pool).
* ``model_failures``      20% of model calls answer 503 (no further fault).

"Stranded" is per run hit by a fault: from the fault (its end, for an outage)
until the run left `running` (finished, or back in the queue).
"""

from __future__ import annotations

import random
import statistics
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import psycopg

from tests.conftest import create_agent, create_user
from tests.e2e.conftest import ChatFunction, FakeLLM, _wait_http, spawn_chat_function
from tests.e2e.workers import WorkerProcess, connect, spawn_worker
from worker import stack

SCENARIOS = ("sigkill", "pg_restart", "terminate_backends", "chat_kill", "chat_outage", "pool_exhaustion",
             "model_failures")
OUTAGE_S = 3.0
# Attempts each run has beyond the first. A chat outage or a killed function must spend none:
# with no retry at all, any attempt they spent would fail the run. Model failures are real
# failures of the run: 20% of calls fail, so six attempts.
MAX_RETRIES = {"chat_outage": 0, "chat_kill": 0, "model_failures": 5}
MODEL_FAILURE_RATE = 0.2


def _deadlocks(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("select deadlocks from pg_stat_database where datname = current_database()").fetchone()
    assert row is not None
    return int(row["deadlocks"])


def _last_user_text(request: dict[str, Any]) -> str:
    for message in reversed(request.get("messages", [])):
        if message.get("role") == "user":
            return str(message.get("content"))
    return ""


def _quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3)


class Gateway:
    """A reverse proxy in front of the chat function, as the platform's gateway is: while `down`
    it answers 503 with an HTML page of its own (the function is not reached)."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.down = False
        self.client = httpx.Client(timeout=120.0, limits=httpx.Limits(max_connections=100))
        gateway = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                if gateway.down:
                    status, payload, ctype = 503, b"<html><body>no healthy upstream</body></html>", "text/html"
                else:
                    headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
                    try:
                        r = gateway.client.post(gateway.upstream, content=body, headers=headers)
                        status, payload = r.status_code, r.content
                        ctype = r.headers.get("content-type", "application/json")
                    except httpx.HTTPError:
                        status, payload, ctype = 502, b"<html><body>bad gateway</body></html>", "text/html"
                self.send_response(status)
                self.send_header("content-type", ctype)
                self.send_header("content-length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/functions/v1/chat"
        self.thread = threading.Thread(target=self.server.serve_forever, name="gateway", daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.client.close()


def _running_ids(conn: psycopg.Connection[Any], worker_id: str | None = None) -> list[Any]:
    if worker_id is None:
        rows = conn.execute("select id from public.agent_task_executions where status = 'running'").fetchall()
    else:
        rows = conn.execute("select id from public.agent_task_executions where status = 'running'"
                            " and worker_id = %s", (worker_id,)).fetchall()
    return [r["id"] for r in rows]


def _reconnect(db_url: str, timeout_s: float = 60.0) -> psycopg.Connection[Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return connect(db_url)
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def _wait_registered(db_url: str, worker_id: str, limit_s: float) -> None:
    with _reconnect(db_url) as conn:
        deadline = time.monotonic() + limit_s
        while conn.execute("select 1 from scheduler.workers where id = %s and backend_pid is not null",
                           (worker_id,)).fetchone() is None:
            assert time.monotonic() < deadline, f"worker {worker_id} did not start"
            time.sleep(0.05)


def _time_stranded(db_url: str, ids: list[Any], since: float, limit_s: float) -> list[float]:
    """Seconds from `since` until each of `ids` left `running` (polled every 20 ms)."""
    out: list[float] = []
    left = set(ids)
    conn = _reconnect(db_url)
    try:
        while left:
            try:
                rows = conn.execute("select id from public.agent_task_executions where id = any (%s)"
                                    " and status = 'running'", (list(left),)).fetchall()
            except psycopg.OperationalError:
                conn = _reconnect(db_url)
                continue
            still = {r["id"] for r in rows}
            now = time.monotonic()
            out += [now - since] * len(left - still)
            left = still
            assert now - since < limit_s, f"{len(left)} runs stayed running {limit_s:.0f} s after a fault"
            time.sleep(0.02)
    finally:
        conn.close()
    return out


def run_scenario(scenario: str, chat: ChatFunction, llm: FakeLLM, log_dir: Path, *, tasks: int, per_task: int,
                 workers: int = 3, fault_every_s: float = 3.0, lease_s: int = 30, concurrency: int = 8,
                 model_latency_ms: int = 300, deadline_s: float = 240.0,
                 rescue_at_once: bool = False, first_fault_s: float | None = None) -> dict[str, Any]:
    """Run tasks * per_task executions on `workers` worker processes while `scenario`'s fault
    strikes `first_fault_s` (default `fault_every_s`) after the start, then `fault_every_s` after
    the end of the previous one, until every execution is terminal; return the report.

    `rescue_at_once` (terminate_backends): right after each termination, rescue_dead_workers
    with no grace, as a tick does on a loaded machine when the workers re-attach their LISTEN
    sessions late: their runs go back to the queue while their turns still call the model."""
    assert scenario in SCENARIOS, scenario
    llm.reset()
    llm.configure(latency_ms=model_latency_ms)
    if scenario == "model_failures":
        llm.configure(fail_rate=MODEL_FAILURE_RATE, fail_seed=11)
    rng = random.Random(11)
    gateway = Gateway(chat.url) if scenario == "chat_outage" else None
    worker_settings: dict[str, Any] = {"lease_seconds": lease_s, "worker_concurrency": concurrency,
                                       "worker_per_user_limit": 0}
    if gateway is not None:
        worker_settings["chat_url"] = gateway.url
    if scenario == "pool_exhaustion":
        worker_settings["db_pool_size"] = 1
    with connect(chat.db_url) as conn:
        uid = create_user(conn)
        agent = create_agent(conn, uid)
        retries = MAX_RETRIES.get(scenario, 3)
        task_ids = [conn.execute(
            "insert into public.agent_tasks (user_id, agent_id, name, prompt_template, schedule_type,"
            " overlap_policy, conversation_mode, max_retries) values (%s, %s, %s, %s, 'manual', 'allow',"
            " 'new_per_run', %s) returning id",
            (uid, agent, f"chaos {i:04d}", f"chaos {i:04d} at {{{{NOW}}}}", retries)).fetchone()["id"]
            for i in range(tasks)]
        deadlocks_before = _deadlocks(conn)
        live: list[WorkerProcess] = []
        started: list[WorkerProcess] = []

        def spawn(wait_ready: bool = True) -> None:
            wp = spawn_worker(chat, log_dir, wait_ready=wait_ready, **worker_settings)
            live.append(wp)
            started.append(wp)

        for _ in range(workers):
            spawn()
        t_start = time.monotonic()
        stranded: list[float] = []
        faults: list[int] = [0]
        stop = threading.Event()
        failures: list[BaseException] = []
        limit_s = lease_s * 2.0

        def strike() -> None:
            """One fault; then time how long the runs it hit stayed running."""
            kconn = _reconnect(chat.db_url)
            try:
                if scenario == "sigkill":
                    victim = live.pop(rng.randrange(len(live)))
                    victim.kill()
                    since = time.monotonic()
                    hit = _running_ids(kconn, victim.worker_id)
                    spawn(wait_ready=False)  # the replacement starts while the victim's runs wait
                elif scenario == "pg_restart":
                    hit = _running_ids(kconn)
                    kconn.close()
                    stack.restart_postgres()
                    since = time.monotonic()
                elif scenario == "terminate_backends":
                    hit = _running_ids(kconn)
                    n = kconn.execute("select count(pg_terminate_backend(pid)) as n from pg_stat_activity"
                                      " where application_name like 'agent-tasks %'").fetchone()["n"]
                    assert n > 0, "no worker connection to terminate"
                    since = time.monotonic()
                    if rescue_at_once:
                        kconn.execute("select * from scheduler.rescue_dead_workers(0)")
                elif scenario == "chat_kill":
                    hit = _running_ids(kconn)
                    chat.proc.kill()
                    chat.proc.wait(timeout=10)
                    chat.proc = spawn_chat_function(chat.env, chat.log)
                    since = time.monotonic()
                    _wait_http(chat.url.replace("/functions/v1/chat", "/health"), chat.proc, chat.log)
                elif scenario == "chat_outage":
                    assert gateway is not None
                    hit = _running_ids(kconn)
                    gateway.down = True
                    time.sleep(OUTAGE_S)
                    gateway.down = False
                    since = time.monotonic()
                else:
                    return  # pool_exhaustion, model_failures: the load itself is the fault
                faults[0] += 1
            finally:
                kconn.close()
            stranded.extend(_time_stranded(chat.db_url, hit, since, limit_s))
            if scenario == "sigkill":
                # the next kill comes once the replacement is up: a kill always leaves two live
                # workers to rescue (a worker starts in seconds on a loaded machine; killing
                # while none is up measures the start-up, not the rescue)
                _wait_registered(chat.db_url, live[-1].worker_id, limit_s)

        def chaos() -> None:
            try:
                wait_s = fault_every_s if first_fault_s is None else first_fault_s
                while not stop.wait(wait_s):
                    strike()
                    wait_s = fault_every_s
            except BaseException as exc:
                failures.append(exc)

        thread = threading.Thread(target=chaos, name="chaos")
        thread.start()
        load = _Db(chat.db_url)
        try:
            # one execution per task per second: {{NOW}} (seconds) makes every prompt unique.
            # Each enqueue commits on its own, as a user's or the scheduler's would.
            for _ in range(per_task):
                for task_id in task_ids:
                    load.one("select scheduler.enqueue_now(%s)", (task_id,))
                last_second = int(time.time())
                while int(time.time()) <= last_second:
                    time.sleep(0.01)
            total = tasks * per_task
            while True:
                left = load.one("select count(*) as n from public.agent_task_executions"
                                " where status in ('queued', 'running') and task_id = any (%s)", (task_ids,))["n"]
                if left == 0 or failures:
                    break
                assert time.monotonic() - t_start < deadline_s, f"{left} executions not terminal in time"
                time.sleep(0.05)
        finally:
            stop.set()
            thread.join(timeout=lease_s * 3)
            for wp in list(live):
                wp.stop()
            if gateway is not None:
                gateway.close()
            load.close()
        assert not failures, failures
        elapsed_s = time.monotonic() - t_start

    with connect(chat.db_url) as conn:
        report = _report(conn, llm, task_ids, deadlocks_before)
    # the workers' circuit breakers on the chat function (worker/breaker.py)
    report["circuit_opened"] = sum(wp.output().count("chat circuit open") for wp in started)
    conditions = {"failure_rate": MODEL_FAILURE_RATE} if scenario == "model_failures" else {}
    if scenario == "chat_outage":
        conditions["outage_s"] = OUTAGE_S
    if scenario == "pool_exhaustion":
        conditions["db_pool_size"] = 1
    return {
        "scenario": scenario, "tasks": tasks, "executions": total, "workers": workers,
        "worker_concurrency": concurrency, "first_fault_s": fault_every_s if first_fault_s is None else first_fault_s,
        "fault_every_s": fault_every_s, "lease_s": lease_s,
        "model_latency_ms": model_latency_ms, "faults": faults[0], "elapsed_s": round(elapsed_s, 1),
        **conditions, **report,
        "lost": total - sum(n for s, n in report["statuses"].items() if s in ("succeeded", "failed", "timed_out")),
        "stranded_s": {"runs": len(stranded), "p50": _quantile(stranded, 0.5), "p99": _quantile(stranded, 0.99),
                       "max": round(max(stranded), 3) if stranded else None,
                       "mean": round(statistics.fmean(stranded), 3) if stranded else None},
    }


class _Db:
    """The load generator's connection: its statements ride out a Postgres restart (a statement
    cut by the restart is sent again on a new connection; enqueue_now commits on its own)."""

    def __init__(self, db_url: str) -> None:
        self.db_url = db_url
        self.conn = _reconnect(db_url)

    def one(self, sql: str, params: tuple[Any, ...] = ()) -> Any:
        deadline = time.monotonic() + 60.0
        while True:
            try:
                return self.conn.execute(sql, params).fetchone()
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                self.conn.close()
                time.sleep(0.2)
                self.conn = _reconnect(self.db_url)

    def close(self) -> None:
        self.conn.close()


def _report(conn: psycopg.Connection[Any], llm: FakeLLM, task_ids: list[Any], deadlocks_before: int) -> dict[str, Any]:
    rows = conn.execute("select id, status, resolved_prompt, attempt, error_kind from public.agent_task_executions"
                        " where task_id = any (%s)", (task_ids,)).fetchall()
    statuses = Counter(r["status"] for r in rows)
    requests = llm.requests()
    calls = Counter(_last_user_text(r) for r in requests)
    answered = Counter(_last_user_text(r) for r in requests if r.get("_fake_status") == 200)
    per_run = [calls.get(r["resolved_prompt"], 0) for r in rows]
    replies = conn.execute(
        "select count(*) filter (where n <> 1) as wrong from (select e.id, count(m.id) as n"
        " from public.agent_task_executions e left join public.chat_messages_v2 m"
        "   on m.execution_id = e.id and m.role = 'assistant'"
        " where e.task_id = any (%s) and e.status = 'succeeded' group by e.id) x", (task_ids,)).fetchone()
    counters = conn.execute(
        "select coalesce(sum(success_count), 0) as ok, coalesce(sum(failure_count), 0) as bad"
        " from public.agent_tasks where id = any (%s)", (task_ids,)).fetchone()
    return {
        "rows": len(rows), "statuses": dict(statuses),
        # a run whose model answered more than once: paid twice (a failed call retried is not)
        "duplicated": sum(1 for r in rows if answered.get(r["resolved_prompt"], 0) > 1),
        "model_calls_per_run": dict(sorted(Counter(per_run).items())),
        "runs_with_a_model_failure": sum(1 for r in rows
                                         if calls.get(r["resolved_prompt"], 0) > answered.get(r["resolved_prompt"], 0)),
        "runs_without_exactly_one_reply": replies["wrong"],
        "task_counters": {"success": counters["ok"], "failure": counters["bad"]},
        "deadlocks": _deadlocks(conn) - deadlocks_before,
    }


def run_sigkill(chat: ChatFunction, llm: FakeLLM, log_dir: Path, *, kill_every_s: float = 3.0,
                **kwargs: Any) -> dict[str, Any]:
    """The SIGKILL scenario (run_scenario('sigkill', ...))."""
    return run_scenario("sigkill", chat, llm, log_dir, fault_every_s=kill_every_s, **kwargs)
