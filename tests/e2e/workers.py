"""Helpers for end-to-end worker tests: real worker processes, a chat endpoint, waiting on rows.

`spawn_worker` starts `python -m worker.runner` as its own process with the
environment a deployment would give it. `chat_endpoint` is the real chat
function under Deno with the fake model (tests/e2e/conftest.py) when both
exist, else `StubChat`: a small in-process server that keeps the act-as
contract (same headers, body, answers, directives and idempotency per
execution) so the worker can be tested before the function lands.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Protocol, TypeVar

import psycopg
import pytest
from psycopg.rows import dict_row

from worker import stack

ROOT = Path(__file__).resolve().parents[2]
# WORKER_TESTS_STUB_CHAT=1 forces the stub (e.g. to tell a worker bug from a function bug)
REAL_CHAT = (ROOT / "supabase" / "functions" / "chat" / "index.ts").exists() and (
    ROOT / "tests" / "fakes" / "openai_server.py").exists() and not os.environ.get("WORKER_TESTS_STUB_CHAT")

T = TypeVar("T")


class ChatEndpoint(Protocol):
    url: str
    db_url: str

    @property
    def secret_key(self) -> str: ...


# --- waiting -------------------------------------------------------------------------------


def wait_for(predicate: Callable[[], T | None], timeout_s: float = 10.0, interval_s: float = 0.05,
             what: str = "condition") -> T:
    """Poll until predicate() is truthy; return its value or fail the test with `what`."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(interval_s)


def connect(db_url: str) -> psycopg.Connection[dict[str, Any]]:
    return psycopg.connect(db_url, autocommit=True, row_factory=dict_row)


def execution(conn: psycopg.Connection[Any], execution_id: Any) -> dict[str, Any]:
    row = conn.execute("select * from public.agent_task_executions where id = %s", (execution_id,)).fetchone()
    assert row is not None, f"no execution {execution_id}"
    return dict(row)


def executions(conn: psycopg.Connection[Any], task_id: Any) -> list[dict[str, Any]]:
    return [dict(r) for r in conn.execute(
        "select * from public.agent_task_executions where task_id = %s order by scheduled_for", (task_id,))]


def messages(conn: psycopg.Connection[Any], *, conversation_id: Any = None,
             execution_id: Any = None) -> list[dict[str, Any]]:
    if execution_id is not None:
        sql = "select * from public.chat_messages_v2 where execution_id = %s order by created_at, id"
        arg = execution_id
    else:
        sql = "select * from public.chat_messages_v2 where conversation_id = %s order by created_at, id"
        arg = conversation_id
    return [dict(r) for r in conn.execute(sql, (arg,))]


def run_now(conn: psycopg.Connection[Any], task_id: Any) -> uuid.UUID:
    row = conn.execute("select scheduler.enqueue_now(%s) as id", (task_id,)).fetchone()
    assert row is not None
    return uuid.UUID(str(row["id"]))


def wait_status(conn: psycopg.Connection[Any], execution_id: Any, statuses: str | tuple[str, ...],
                timeout_s: float = 10.0) -> dict[str, Any]:
    wanted = (statuses,) if isinstance(statuses, str) else statuses

    def check() -> dict[str, Any] | None:
        row = execution(conn, execution_id)
        return row if row["status"] in wanted else None

    try:
        return wait_for(check, timeout_s, what=f"execution {execution_id} to be {wanted}")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; it is {execution(conn, execution_id)['status']}") from None


# --- worker processes ----------------------------------------------------------------------


@dataclass
class WorkerProcess:
    """A `python -m worker.runner` child process and its log."""

    worker_id: str
    proc: subprocess.Popen[bytes]
    log: Path

    def signal(self, sig: signal.Signals) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    def terminate(self) -> None:
        self.signal(signal.SIGTERM)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def wait(self, timeout_s: float) -> int:
        return self.proc.wait(timeout=timeout_s)

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self, timeout_s: float = 15.0) -> None:
        """SIGTERM, then SIGKILL if it does not exit in time."""
        if self.proc.poll() is not None:
            return
        self.terminate()
        try:
            self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()


def worker_env(chat: ChatEndpoint, **overrides: Any) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("WORKER_", "SUPABASE_", "DATABASE_URL", "CHAT_URL", "LEASE_", "RETRY_",
                                "POLL_", "TICK_", "SHUTDOWN_", "HEARTBEAT_", "DB_POOL"))}
    env.update({
        "DATABASE_URL": chat.db_url,
        "CHAT_URL": chat.url,
        "SUPABASE_SECRET_KEY": chat.secret_key,
        "PYTHONPATH": str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""),
        "PYTHONUNBUFFERED": "1",
        "POLL_INTERVAL_S": "0.5",
        "LOG_LEVEL": "INFO",
    })
    env.update({k.upper(): str(v) for k, v in overrides.items()})
    return env


def spawn_worker(chat: ChatEndpoint, log_dir: Path, name: str | None = None, wait_ready: bool = True,
                 **settings: Any) -> WorkerProcess:
    """Start a worker process (settings as keyword arguments: lease_seconds=2, ...)."""
    worker_id = name or f"w-{uuid.uuid4().hex[:8]}"
    env = worker_env(chat, worker_id=worker_id, **settings)
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / f"{worker_id}.log"
    with log.open("wb") as out:
        # cwd outside the repository: a developer's .env must not leak into the test
        proc = subprocess.Popen([sys.executable, "-m", "worker.runner"], stdout=out,
                                stderr=subprocess.STDOUT, env=env, cwd=log_dir)
    wp = WorkerProcess(worker_id=worker_id, proc=proc, log=log)
    if wait_ready:
        with connect(chat.db_url) as conn:
            def ready() -> bool:
                if proc.poll() is not None:
                    raise AssertionError(f"worker {worker_id} exited {proc.returncode}:\n{wp.output()}")
                return conn.execute("select 1 from scheduler.workers where id = %s",
                                    (worker_id,)).fetchone() is not None
            wait_for(ready, 15.0, what=f"worker {worker_id} to register")
    return wp


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[list[WorkerProcess]]:
    """Collects the worker processes a test starts and stops them all at the end."""
    started: list[WorkerProcess] = []
    yield started
    for wp in started:
        wp.stop()


# --- the stub chat endpoint ------------------------------------------------------------------

_DIRECTIVE = re.compile(r"\[\[(\w+)(?::([^\]]*))?\]\]")


class StubChat:
    """The act-as half of the chat function's contract, in Python, for tests only."""

    def __init__(self, db_url: str, secret_key: str) -> None:
        self.db_url = db_url
        self._secret = secret_key
        self._fail_counts: dict[str, int] = {}
        self._lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                return

            def do_GET(self) -> None:
                self._send(200, {"ok": True})

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length)
                status, payload = stub.handle(dict(self.headers.items()), body)
                self._send(status, payload)

            def _send(self, status: int, payload: Any) -> None:
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:
                    pass  # the worker gave up on us (timeout, cancel)

        self.server = ThreadingHTTPServer(("127.0.0.1", stack.free_port(0)), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/functions/v1/chat"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def secret_key(self) -> str:
        return self._secret

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    @staticmethod
    def _error(status: int, code: str, retryable: bool) -> tuple[int, Any]:
        return status, {"error": {"code": code, "message": code.replace("_", " "), "retryable": retryable}}

    def handle(self, headers: dict[str, str], body: bytes) -> tuple[int, Any]:
        h = {k.lower(): v for k, v in headers.items()}
        if h.get("apikey") != self._secret or h.get("x-service") != "task-executor":
            return self._error(401, "unauthorized", False)
        ctx = json.loads(body)["context"]
        with connect(self.db_url) as conn:
            um = conn.execute("select * from public.chat_messages_v2 where id = %s",
                              (ctx["user_message_id"],)).fetchone()
            if um is None or str(um["execution_id"]) != ctx["execution_id"]:
                return self._error(404, "message_not_found", False)
            stored = conn.execute(
                "select * from public.chat_messages_v2 where execution_id = %s and role = 'assistant'",
                (ctx["execution_id"],)).fetchone()
            if stored is not None:
                return 200, self._result(ctx, stored, replayed=True)
            content: str = um["content"]
            question = None
            for name, arg in _DIRECTIVE.findall(content):
                if name == "sleep":
                    time.sleep(int(arg) / 1000)
                elif name == "timeout":
                    time.sleep(3600)
                elif name == "fail":
                    code = int(arg)
                    return self._error(422, "model_refused", False) if code in (400, 401, 403, 404) \
                        else self._error(502, "model_unavailable", True)
                elif name == "fail_times":
                    n, _status = arg.split(":")
                    with self._lock:
                        seen = self._fail_counts.get(content, 0)
                        self._fail_counts[content] = seen + 1
                    if seen < int(n):
                        return self._error(502, "model_unavailable", True)
                elif name == "empty":
                    return self._error(502, "empty_reply", True)
                elif name == "malformed":
                    return self._error(502, "bad_model_response", True)
                elif name == "ask":
                    question = arg
            # a cancelled run's caller is gone: the real function aborts on the closed request
            state = conn.execute("select status from public.agent_task_executions where id = %s",
                                 (ctx["execution_id"],)).fetchone()
            if state is None or state["status"] != "running":
                return self._error(409, "not_running", False)
            reply = question or f"Echo: {content}"
            meta = {"model": "stub", "needs_input": {"question": question}} if question else {"model": "stub"}
            row = conn.execute(
                "select chat_private.record_assistant_reply(%s, %s, %s, null, %s::jsonb, %s) as id",
                (ctx["user_id"], ctx["conversation_id"], reply, json.dumps(meta), ctx["execution_id"]),
            ).fetchone()
            assert row is not None
            stored = conn.execute("select * from public.chat_messages_v2 where id = %s", (row["id"],)).fetchone()
            return 200, self._result(ctx, stored, replayed=False)

    @staticmethod
    def _result(ctx: dict[str, Any], msg: Any, replayed: bool) -> dict[str, Any]:
        needs = (msg["metadata"] or {}).get("needs_input")
        return {
            "conversation_id": ctx["conversation_id"], "user_message_id": ctx["user_message_id"],
            "message": {"id": str(msg["id"]), "role": "assistant", "content": msg["content"],
                        "tool_calls": msg["tool_calls"], "metadata": msg["metadata"]},
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
            "replayed": replayed, "needs_input": needs,
        }


@pytest.fixture(scope="module")
def chat_endpoint(request: pytest.FixtureRequest) -> Iterator[ChatEndpoint]:
    """The real chat function (Deno + fake model) when available, else the in-process stub."""
    if REAL_CHAT:
        yield request.getfixturevalue("chat_function")
        return
    state: stack.State = request.getfixturevalue("stack_state")
    db_url: str = request.getfixturevalue("module_db_url")
    stub = StubChat(db_url, state.secret_key)
    try:
        yield stub
    finally:
        stub.close()
