"""Browser tests of the web console: Debian's Chromium driven by Playwright, against the real stack.

The suite gets its own database, the chat function under Deno with the fake
model, one real worker and `agent-tasks console` as its own process; users
sign in with access tokens signed by the stack's key (as Supabase Auth signs
them). Screenshots of the main pages go to tests/browser/artifacts/
(git-ignored).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from playwright.sync_api import Browser, BrowserContext, Page, sync_playwright
from psycopg.rows import dict_row

from tests.conftest import create_agent, create_user
from tests.e2e.conftest import ChatFunction, FakeLLM, _wait_http, fake_llm, start_chat_function
from tests.e2e.workers import WorkerProcess, spawn_worker
from worker import stack

__all__ = ["fake_llm"]  # the session fixture, shared with the end-to-end tests

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "tests" / "browser" / "artifacts"

pytestmark = pytest.mark.e2e


def chromium_path() -> str:
    found = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        pytest.fail("Debian's chromium is not installed: `make setup` installs it (apt-get install chromium)")
    return found


@dataclass
class Person:
    id: uuid.UUID
    email: str
    agent_id: uuid.UUID
    token: str


@dataclass
class Console:
    url: str
    db_url: str
    chat: ChatFunction
    proc: subprocess.Popen[bytes]
    log: Path
    alice: Person
    bob: Person
    operator_token: str

    def db(self) -> psycopg.Connection[dict[str, Any]]:
        return psycopg.connect(self.db_url, autocommit=True, row_factory=dict_row)


@pytest.fixture(scope="package")
def console_db_url(stack_state: stack.State) -> Iterator[str]:
    """One fresh, migrated database for the whole browser suite (its tests make their own rows)."""
    name = f"t_console_{uuid.uuid4().hex[:8]}"
    url = stack.create_database(stack_state, name)
    yield url
    stack.drop_database(stack_state, name)


@pytest.fixture(scope="package")
def console(stack_state: stack.State, console_db_url: str, fake_llm: FakeLLM,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Console]:
    module_db_url = console_db_url
    logs = tmp_path_factory.mktemp("console")
    chat = start_chat_function(stack_state, module_db_url, fake_llm, logs / "chat.log")
    worker: WorkerProcess | None = None
    proc: subprocess.Popen[bytes] | None = None
    try:
        people = []
        with psycopg.connect(module_db_url, autocommit=True, row_factory=dict_row) as conn:
            for name in ("alice", "bob"):
                email = f"{name}-{uuid.uuid4().hex[:6]}@example.test"
                uid = create_user(conn, email)
                agent = create_agent(conn, uid, name=f"{name.title()}'s assistant")
                people.append(Person(uid, email, agent, stack.user_token(stack_state, str(uid), email)))
        worker = spawn_worker(chat, logs, name="console-worker")
        operator_token = "operator-" + uuid.uuid4().hex
        port = stack.free_port(0)
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("SUPABASE_", "CHAT_", "DATABASE_URL", "CONSOLE_"))}
        env.update({"SUPABASE_JWKS": json.dumps(stack.jwks(stack_state)), "PYTHONUNBUFFERED": "1",
                    "CONSOLE_OPERATOR_TOKEN": operator_token})
        log = logs / "console.log"
        with log.open("wb") as out:
            proc = subprocess.Popen([sys.executable, "-m", "worker", "console", "--port", str(port),
                                     "--database-url", module_db_url, "--chat-url", chat.url],
                                    stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        url = f"http://127.0.0.1:{port}"
        _wait_http(f"{url}/login", proc, log)
        yield Console(url, module_db_url, chat, proc, log, people[0], people[1], operator_token)
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=10)
        if worker is not None:
            worker.stop()
        chat.stop()


@pytest.fixture(scope="package")
def browser() -> Iterator[Browser]:
    """Chromium for this package only: Playwright's sync API keeps an event loop in the main thread
    while it runs, which asyncio tests elsewhere must not inherit."""
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium_path(), args=["--no-sandbox", "--disable-gpu"])
        yield b
        b.close()


def signed_in(browser: Browser, console: Console, person: Person, **context_args: Any) -> BrowserContext:
    """A browser context signed in through the sign-in form with the person's access token."""
    # bypass_csp: the test's own probes (wait_for_function) evaluate strings; it also means the
    # hostile-content test proves the escaping alone, without the console's script-src 'self'
    context = browser.new_context(base_url=console.url, bypass_csp=True, **context_args)
    context.set_default_timeout(15_000)
    page = context.new_page()
    page.goto("/login")
    page.fill("#access_token", person.token)
    page.click("form[action='/login'] button[type=submit]")
    page.wait_for_url("**/conversations")
    page.close()
    return context


def shot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)
