"""End-to-end fixtures: the fake OpenAI-compatible model and the real chat function under Deno.

Each test module gets its own database and its own chat function process
pointed at it, so modules never share rows. `llm` is the shared fake model,
reset for the test that asks for it; `scheduled_turn` prepares an act-as
context exactly the way the worker does (enqueue, claim, start).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from psycopg.rows import dict_row

from tests.conftest import create_agent, create_user
from worker import stack

ROOT = Path(__file__).resolve().parents[2]


def _wait_http(url: str, proc: subprocess.Popen[bytes], log: Path, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        try:
            httpx.get(url, timeout=0.5)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up; log:\n{log.read_text(errors='replace')[-3000:]}")


@dataclass
class FakeLLM:
    """Handle on the fake model server (tests/fakes/openai_server.py)."""

    base_url: str  # ends with /v1
    proc: subprocess.Popen[bytes]

    @property
    def root(self) -> str:
        return self.base_url.removesuffix("/v1")

    def configure(self, **settings: Any) -> None:
        httpx.post(f"{self.root}/_fake/config", json=settings, timeout=5).raise_for_status()

    def reset(self) -> None:
        httpx.post(f"{self.root}/_fake/reset", timeout=5).raise_for_status()

    def requests(self) -> list[dict[str, Any]]:
        r = httpx.get(f"{self.root}/_fake/requests", timeout=5)
        r.raise_for_status()
        return list(r.json()["requests"])


@pytest.fixture(scope="session")
def fake_llm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeLLM]:
    port = stack.free_port(0)
    log = tmp_path_factory.mktemp("fake-llm") / "fake-llm.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "fakes" / "openai_server.py"),
                                 "--port", str(port)], stdout=out, stderr=subprocess.STDOUT)
    llm = FakeLLM(base_url=f"http://127.0.0.1:{port}/v1", proc=proc)
    _wait_http(f"{llm.root}/_fake/requests", proc, log)
    yield llm
    proc.terminate()
    proc.wait(timeout=10)


@dataclass
class ChatFunction:
    """The chat edge function served by Deno against one test database."""

    url: str
    db_url: str
    state: stack.State
    proc: subprocess.Popen[bytes]
    log: Path
    env: dict[str, str] = field(default_factory=dict)

    @property
    def secret_key(self) -> str:
        return self.state.secret_key

    @property
    def service_role_key(self) -> str:
        return stack.api_keys(self.state)["service_role_key"]

    def user_token(self, user_id: Any, ttl_s: int = 3600) -> str:
        return stack.user_token(self.state, str(user_id), ttl_s=ttl_s)

    def user_headers(self, user_id: Any) -> dict[str, str]:
        """What supabase-js sends for a signed-in user: the anon key and the access token."""
        return {"apikey": stack.api_keys(self.state)["anon_key"],
                "authorization": f"Bearer {self.user_token(user_id)}"}

    def service_headers(self) -> dict[str, str]:
        """What the worker sends: the secret key and its service name."""
        return {"apikey": self.secret_key, "x-service": "task-executor"}

    def post(self, body: Any, headers: dict[str, str], timeout_s: float = 30.0) -> httpx.Response:
        return httpx.post(self.url, json=body, headers=headers, timeout=timeout_s)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def spawn_chat_function(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """Start supabase/functions/chat under Deno with exactly `env`."""
    fn = ROOT / "supabase" / "functions" / "chat"
    with log.open("wb") as out:
        return subprocess.Popen([stack.deno_binary(), "run", "--allow-net", "--allow-env", "--allow-read",
                                 "--config", str(fn / "deno.json"), str(fn / "index.ts")],
                                stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)


def start_chat_function(state: stack.State, db_url: str, llm: FakeLLM, log: Path,
                        extra_env: dict[str, str] | None = None,
                        platform: dict[str, str | None] | None = None) -> ChatFunction:
    """Serve supabase/functions/chat under Deno with the environment Supabase gives a function
    (stack.function_env): the platform's variables, then the function's settings (`extra_env`).
    `platform` replaces platform variables (None removes one), to test other projects' shapes."""
    port = stack.free_port(0)
    env = stack.function_env(state, db_url, port, {
        "OPENAI_BASE_URL": llm.base_url, "OPENAI_API_KEY": "fake-key", **(extra_env or {})})
    for name, value in (platform or {}).items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    proc = spawn_chat_function(env, log)
    url = f"http://127.0.0.1:{port}/functions/v1/chat"
    _wait_http(f"http://127.0.0.1:{port}/health", proc, log)
    return ChatFunction(url=url, db_url=db_url, state=state, proc=proc, log=log, env=env)


@pytest.fixture(scope="module")
def chat_function(stack_state: stack.State, module_db_url: str, fake_llm: FakeLLM,
                  tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChatFunction]:
    log = tmp_path_factory.mktemp("chat") / "chat.log"
    fn = start_chat_function(stack_state, module_db_url, fake_llm, log)
    yield fn
    fn.stop()


@pytest.fixture
def llm(fake_llm: FakeLLM) -> Iterator[FakeLLM]:
    """The fake model with default behaviour and no recorded requests."""
    fake_llm.reset()
    yield fake_llm
    fake_llm.reset()


def scheduled_turn(conn: psycopg.Connection[Any], user_id: Any, agent_id: Any, prompt: str,
                   conversation_id: Any = None, worker_id: str = "e2e-chat-tests") -> dict[str, str]:
    """Insert a scheduled user message the way the worker does, as the superuser.

    A manual task (in `conversation_id` when given, else a conversation the
    first run creates) is enqueued with scheduler.enqueue_now, claimed with
    scheduler.claim_executions and started with scheduler.start_execution.
    Returns the act-as `context` for the chat function.
    """
    cur = conn.cursor(row_factory=dict_row)
    fields: dict[str, Any] = {"user_id": user_id, "agent_id": agent_id, "name": "Scheduled check-in",
                              "prompt_template": prompt, "schedule_type": "manual"}
    if conversation_id is not None:
        fields["conversation_id"] = conversation_id
    task = cur.execute(
        f"insert into public.agent_tasks ({', '.join(fields)}) values ({', '.join(['%s'] * len(fields))})"
        " returning id", list(fields.values())).fetchone()
    assert task is not None
    execution = cur.execute("select scheduler.enqueue_now(%s) as id", (task["id"],)).fetchone()
    assert execution is not None
    claimed = cur.execute("select id, attempt from scheduler.claim_executions(%s, 100)", (worker_id,)).fetchall()
    attempt = next(r["attempt"] for r in claimed if r["id"] == execution["id"])
    started = cur.execute(
        "select conversation_id, user_message_id from scheduler.start_execution(%s, %s, %s, %s)",
        (execution["id"], worker_id, attempt, prompt)).fetchone()
    assert started is not None
    return {"user_id": str(user_id), "agent_id": str(agent_id),
            "conversation_id": str(started["conversation_id"]), "execution_id": str(execution["id"]),
            "user_message_id": str(started["user_message_id"])}


def sse_events(text: str) -> list[tuple[str, Any]]:
    """Parse a text/event-stream body into (event, json data) pairs."""
    events: list[tuple[str, Any]] = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        name, data = "message", []
        for line in block.split("\n"):
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].removeprefix(" "))
        if data:
            events.append((name, json.loads("\n".join(data))))
    return events


# --- rows for the chat tests (test modules may override `agent`) ---------------------------


@pytest.fixture
def db(chat_function: ChatFunction) -> Iterator[psycopg.Connection[dict[str, Any]]]:
    """A superuser connection to the database the module's chat function serves."""
    with psycopg.connect(chat_function.db_url, autocommit=True, row_factory=dict_row) as conn:
        yield conn


@pytest.fixture
def alice(db: psycopg.Connection[Any]) -> uuid.UUID:
    return create_user(db)


@pytest.fixture
def agent(db: psycopg.Connection[Any], alice: uuid.UUID) -> uuid.UUID:
    return create_agent(db, alice)
