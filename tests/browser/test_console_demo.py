"""The one-click demo sign-in in a real browser: a console on the local stack offers it and signs the
demo user in; the same console given a database URL (a deployment's setting) neither offers nor honours it.

All the consoles run against the local stack's main database, where the demo user lives (as after
`make demo`), so the only difference between them is the local-stack setting. They send no chat
message: their chat URL points nowhere, and no chat function or worker is started.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from playwright.sync_api import Browser, expect
from psycopg.rows import dict_row

from tests.browser.conftest import ROOT, shot
from tests.conftest import create_agent, create_user
from tests.e2e.conftest import _wait_http
from worker import stack
from worker.console.auth import USER_COOKIE
from worker.demo import DEMO_EMAIL

pytestmark = pytest.mark.e2e

NO_CHAT = "http://127.0.0.1:9/functions/v1/chat"  # never called: these tests send no message


@dataclass
class DemoRows:
    """Rows in the main database: the demo user's agent and conversation, and another user's."""

    db_url: str
    agent_id: uuid.UUID
    agent_name: str
    title: str
    other_title: str
    other_conversation: uuid.UUID


def _conversation(conn: psycopg.Connection[dict[str, Any]], uid: uuid.UUID, agent: uuid.UUID,
                  title: str) -> uuid.UUID:
    row = conn.execute("insert into public.conversation_sessions (user_id, agent_id, title) values (%s, %s, %s)"
                       " returning id", (uid, agent, title)).fetchone()
    assert row is not None
    return uuid.UUID(str(row["id"]))


@pytest.fixture(scope="module")
def demo_rows(stack_state: stack.State) -> Iterator[DemoRows]:
    """The demo user (found, or created and removed again), an agent and a conversation of theirs, and
    another user's conversation the demo user must not see; all removed afterwards."""
    url = stack.database_url(stack_state)
    tag = uuid.uuid4().hex[:6]
    with psycopg.connect(url, autocommit=True, row_factory=dict_row) as conn:
        found = conn.execute("select id from auth.users where email = %s", (DEMO_EMAIL,)).fetchone()
        uid = uuid.UUID(str(found["id"])) if found else create_user(conn, DEMO_EMAIL)
        other = create_user(conn, f"not-demo-{tag}@example.test")
        agent: uuid.UUID | None = None
        try:
            agent_name = f"Demo sign-in check {tag}"
            agent = create_agent(conn, uid, name=agent_name)
            title, other_title = f"The demo user's {tag}", f"Not the demo user's {tag}"
            _conversation(conn, uid, agent, title)
            other_conversation = _conversation(conn, other, create_agent(conn, other, name=f"Other {tag}"),
                                               other_title)
            yield DemoRows(url, agent, agent_name, title, other_title, other_conversation)
        finally:
            if agent is not None:
                conn.execute("delete from public.agents where id = %s", (agent,))  # its conversation with it
            conn.execute("delete from auth.users where id = %s", (other,))
            if found is None:
                conn.execute("delete from auth.users where id = %s", (uid,))


# how each console gets its database: the local stack's setting (none given), else as a deployment gives it
SETTINGS = ["local stack", "--database-url", "DATABASE_URL"]


@pytest.fixture(scope="module")
def consoles(stack_state: stack.State, demo_rows: DemoRows,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """`agent-tasks console` as its own process once per setting, all started together, with none of the
    caller's database or Supabase settings; the others get the same database and key set as the local one."""
    logs = tmp_path_factory.mktemp("demo")
    base = {k: v for k, v in os.environ.items()
            if not k.startswith(("SUPABASE_", "CHAT_", "DATABASE_URL", "CONSOLE_"))}
    base["PYTHONUNBUFFERED"] = "1"
    procs: dict[str, tuple[subprocess.Popen[bytes], str, Path]] = {}
    try:
        for how in SETTINGS:
            port, env, args = stack.free_port(0), dict(base), ["--chat-url", NO_CHAT]
            if how != "local stack":
                env["SUPABASE_JWKS"] = json.dumps(stack.jwks(stack_state))
                if how.startswith("--"):
                    args += [how, demo_rows.db_url]
                else:
                    env[how] = demo_rows.db_url
            log = logs / f"console-{how.strip('-').replace(' ', '-')}.log"
            with log.open("wb") as out:
                proc = subprocess.Popen([sys.executable, "-m", "worker", "console", "--port", str(port), *args],
                                        stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
            procs[how] = (proc, f"http://127.0.0.1:{port}", log)
        for proc, url, log in procs.values():
            _wait_http(f"{url}/login", proc, log)
        yield {how: url for how, (_, url, _) in procs.items()}
    finally:
        for proc, _, _ in procs.values():
            proc.terminate()
        for proc, _, _ in procs.values():
            proc.wait(timeout=10)


def test_demo_sign_in__one_click_on_the_local_stack_signs_in_the_demo_user(
        browser: Browser, consoles: dict[str, str], demo_rows: DemoRows) -> None:
    context = browser.new_context(base_url=consoles["local stack"])
    context.set_default_timeout(15_000)
    page = context.new_page()
    page.goto("/login")
    button = page.locator("#demo-sign-in")
    expect(button).to_contain_text(DEMO_EMAIL)
    button.click()
    page.wait_for_url("**/conversations")
    expect(page.locator("header .who .email")).to_have_text(DEMO_EMAIL)
    # the demo user's own agent and conversation, under the demo user's RLS; not another user's
    expect(page.locator("#conversation-list .sidebar-head")).to_contain_text(demo_rows.agent_name)
    page.goto(f"/conversations?agent={demo_rows.agent_id}")
    titles = page.locator("#conversation-list .conv .title")
    expect(titles.filter(has_text=demo_rows.title)).to_have_count(1)
    expect(page.locator("#conversation-list")).not_to_contain_text(demo_rows.other_title)
    shot(page, "demo-sign-in")
    response = page.goto(f"/c/{demo_rows.other_conversation}")
    assert response is not None and response.status == 404
    cookie = next(c for c in context.cookies() if c["name"] == USER_COOKIE)
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    context.close()


@pytest.mark.parametrize("how", SETTINGS[1:])
def test_demo_sign_in__refused_by_a_console_not_on_the_local_stack(
        browser: Browser, consoles: dict[str, str], how: str) -> None:
    url = consoles[how]  # the demo user is in its database all the same
    context = browser.new_context(base_url=url)
    context.set_default_timeout(15_000)
    page = context.new_page()
    page.goto("/login")
    expect(page.locator("#access_token")).to_be_visible()
    expect(page.locator("#demo-sign-in")).to_have_count(0)
    expect(page.locator("form[action='/login/demo']")).to_have_count(0)
    # posting to it anyway (as the page's own origin) is refused with a JSON error, and signs nobody in
    r = page.request.post("/login/demo", headers={"origin": url}, max_redirects=0)
    assert r.status == 404
    assert r.json()["error"]["code"] == "not_found"
    assert "local stack" in r.json()["error"]["message"]
    assert USER_COOKIE not in {c["name"] for c in context.cookies()}
    page.goto("/conversations")
    page.wait_for_url("**/login")
    assert DEMO_EMAIL not in page.content()
    context.close()
