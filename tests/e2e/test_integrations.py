"""MCP integrations end to end: the real chat function, real MCP servers (official Python SDK,
Streamable HTTP), the fake model's `[[tool:...]]` directive.

The tickets server (worker/mcp_tickets.py) keeps every call it served, so each test compares
what the function stored in `tool_calls` with what the server saw. A second server
(mcp_misbehaving.py) is slow, fails, or answers too much on request.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from tests.conftest import as_user, create_agent, create_user
from tests.e2e.conftest import ChatFunction, FakeLLM, scheduled_turn, sse_events, start_chat_function
from worker import stack

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
KEY_1 = base64.b64encode(b"1" * 32).decode()
KEY_2 = base64.b64encode(b"2" * 32).decode()
LIST_DIRECTIVE = '[[tool:tickets__list_tickets:{"updated_since":"2000-01-01"}]] Summarise the tickets.'


@dataclass
class McpServer:
    url: str
    token: str
    proc: subprocess.Popen[bytes]

    def calls(self) -> list[dict[str, Any]]:
        r = httpx.get(self.url.removesuffix("/mcp") + "/calls", headers={"authorization": f"Bearer {self.token}"})
        r.raise_for_status()
        return list(r.json()["calls"])


def _serve(cmd: list[str], port: int, log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, env={**os.environ, **(env or {})})
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if stack.port_open(port):
            return proc
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    raise RuntimeError(f"MCP server did not start: {log.read_text(errors='replace')[-2000:]}")


@pytest.fixture(scope="module")
def tickets(tmp_path_factory: pytest.TempPathFactory) -> Iterator[McpServer]:
    port = stack.free_port(0)
    token = "tickets-" + secrets.token_urlsafe(16)
    proc = _serve([sys.executable, "-m", "worker.mcp_tickets", "--port", str(port)], port,
                  tmp_path_factory.mktemp("tickets") / "tickets.log", {"TICKETS_MCP_TOKEN": token})
    yield McpServer(f"http://127.0.0.1:{port}/mcp", token, proc)
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture(scope="module")
def misbehaving(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = stack.free_port(0)
    proc = _serve([sys.executable, str(ROOT / "tests" / "e2e" / "mcp_misbehaving.py"), "--port", str(port)], port,
                  tmp_path_factory.mktemp("misbehaving") / "misbehaving.log")
    yield f"http://127.0.0.1:{port}/mcp"
    proc.terminate()
    proc.wait(timeout=10)


FUNCTION_ENV = {"CHAT_INTEGRATIONS_KEYS": json.dumps({"k1": KEY_1}), "CHAT_MCP_TIMEOUT_MS": "1500",
                "CHAT_MCP_RESULT_MAX_CHARS": "5000", "CHAT_MCP_TURN_RESULT_MAX_CHARS": "8000",
                "CHAT_MCP_TOOLS_TTL_S": "60"}


@pytest.fixture(scope="module")
def chat_function(stack_state: stack.State, module_db_url: str, fake_llm: FakeLLM,
                  tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChatFunction]:
    log = tmp_path_factory.mktemp("chat") / "chat.log"
    fn = start_chat_function(stack_state, module_db_url, fake_llm, log, FUNCTION_ENV)
    yield fn
    fn.stop()


@pytest.fixture(autouse=True)
def local_policy(db: psycopg.Connection[Any]) -> Iterator[None]:
    """The local stack's policy (loopback over HTTP) unless a test tightens it."""
    db.execute("update chat_private.integration_policy set allow_http = true, allow_loopback = true,"
               " allow_private = false")
    yield
    db.execute("update chat_private.integration_policy set allow_http = true, allow_loopback = true,"
               " allow_private = false")


def integrations_call(fn: ChatFunction, user: uuid.UUID, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(fn.url + "/integrations", json=body, headers=fn.user_headers(user), timeout=30)


def connect(db: psycopg.Connection[Any], fn: ChatFunction, user: uuid.UUID, agent: uuid.UUID, name: str, url: str,
            credential: str | None = None, enabled_tools: list[str] | None = None) -> str:
    """What a user does: insert the row and the allow-list under RLS, the credential through the function."""
    with as_user(db, user):
        row = db.execute("insert into public.user_integrations (name, server_url, auth_kind) values (%s, %s, %s)"
                         " returning id", (name, url, "bearer" if credential else "none")).fetchone()
        assert row is not None
        db.execute("insert into public.agent_integrations (agent_id, integration_id, enabled_tools)"
                   " values (%s, %s, %s)", (agent, row["id"], enabled_tools))
    if credential is not None:
        r = integrations_call(fn, user, {"action": "set_credential", "integration_id": str(row["id"]),
                                         "credential": credential})
        assert r.status_code == 200, r.text
    return str(row["id"])


def turn(fn: ChatFunction, user: uuid.UUID, agent: uuid.UUID, message: str, **extra: Any) -> httpx.Response:
    return fn.post({"agent_id": str(agent), "message": message, **extra}, fn.user_headers(user), timeout_s=60)


def test_chat_turn__calls_the_mcp_tool_and_stores_what_the_server_saw(
        chat_function: ChatFunction, llm: FakeLLM, db: psycopg.Connection[Any], alice: uuid.UUID,
        agent: uuid.UUID, tickets: McpServer) -> None:
    connect(db, chat_function, alice, agent, "tickets", tickets.url, tickets.token)
    seen_before = len(tickets.calls())
    r = turn(chat_function, alice, agent, LIST_DIRECTIVE)
    assert r.status_code == 200, r.text
    message = r.json()["message"]
    (call,) = message["tool_calls"]
    served = tickets.calls()[seen_before:]
    assert [c["tool"] for c in served] == ["list_tickets"]
    assert call["server"] == "tickets" and call["tool"] == "list_tickets" and call["name"] == "tickets__list_tickets"
    assert call["status"] == "ok"
    assert call["arguments"] == {"updated_since": "2000-01-01"}
    assert served[0]["arguments"]["updated_since"] == "2000-01-01"
    assert call["result"] == served[0]["result"]
    assert call["started_at"] <= call["finished_at"] and call["duration_ms"] >= 0
    assert "TCK-101" in message["content"], "the reply quotes what the server returned"
    stored = db.execute("select tool_calls from public.chat_messages_v2 where id = %s", (message["id"],)).fetchone()
    assert stored is not None and stored["tool_calls"][0]["result"] == served[0]["result"]
    # the model was offered the server's tools, namespaced, and told which integrations exist
    sent = llm.requests()[0]
    assert {"tickets__list_tickets", "tickets__get_ticket", "tickets__add_comment"} <= {
        t["function"]["name"] for t in sent["tools"]}
    assert "tickets" in sent["messages"][0]["content"]
    status = db.execute("select status, last_error from public.user_integrations where user_id = %s",
                        (alice,)).fetchone()
    assert status == {"status": "ok", "last_error": None}
    # streamed: the tool call arrives as a `tool` event
    streamed = turn(chat_function, alice, agent, LIST_DIRECTIVE, stream=True)
    events = sse_events(streamed.text)
    tool_events = [data for name, data in events if name == "tool"]
    assert [e["server"] for e in tool_events] == ["tickets"] and tool_events[0]["status"] == "ok"
    # the allow-list narrows the tools offered
    db.execute("update public.agent_integrations set enabled_tools = '{get_ticket}' where agent_id = %s", (agent,))
    llm.reset()
    assert turn(chat_function, alice, agent, "hello").status_code == 200
    offered = {t["function"]["name"] for t in llm.requests()[0]["tools"]}
    assert "tickets__get_ticket" in offered and "tickets__list_tickets" not in offered


def test_url_written_near_the_length_cap__connects_as_written(
        chat_function: ChatFunction, db: psycopg.Connection[Any], alice: uuid.UUID, agent: uuid.UUID,
        tickets: McpServer) -> None:
    # 1,950 characters as written (the rule's cap is 2,000); the transport sends it percent-encoded,
    # six times longer: the connect-time check judges the text that was written
    url = tickets.url + "?note=" + "\u00e9" * (1950 - len(tickets.url) - len("?note="))
    assert len(url) == 1950
    connect(db, chat_function, alice, agent, "tickets", url, tickets.token)
    seen_before = len(tickets.calls())
    r = turn(chat_function, alice, agent, LIST_DIRECTIVE)
    assert r.status_code == 200, r.text
    (call,) = r.json()["message"]["tool_calls"]
    assert call["status"] == "ok" and len(tickets.calls()) == seen_before + 1


def test_scheduled_turn__gets_exactly_the_users_tools(
        chat_function: ChatFunction, llm: FakeLLM, db: psycopg.Connection[Any], alice: uuid.UUID,
        agent: uuid.UUID, tickets: McpServer) -> None:
    connect(db, chat_function, alice, agent, "tickets", tickets.url, tickets.token)
    context = scheduled_turn(db, alice, agent, LIST_DIRECTIVE)
    seen_before = len(tickets.calls())
    r = chat_function.post({"context": context}, chat_function.service_headers(), timeout_s=60)
    assert r.status_code == 200, r.text
    (call,) = r.json()["message"]["tool_calls"]
    served = tickets.calls()[seen_before:]
    assert call["status"] == "ok" and call["result"] == served[0]["result"]
    row = db.execute("select execution_id, content from public.chat_messages_v2 where id = %s",
                     (r.json()["message"]["id"],)).fetchone()
    assert row is not None and str(row["execution_id"]) == context["execution_id"] and "TCK-102" in row["content"]


def test_failing_servers__give_the_model_a_tool_error_and_the_turn_ends_cleanly(
        chat_function: ChatFunction, llm: FakeLLM, db: psycopg.Connection[Any], alice: uuid.UUID,
        agent: uuid.UUID, misbehaving: str) -> None:
    down_port = stack.free_port(0)
    connect(db, chat_function, alice, agent, "gone", f"http://127.0.0.1:{down_port}/mcp")
    connect(db, chat_function, alice, agent, "flaky", misbehaving)
    cases = {
        '[[tool:flaky__slow:{"seconds": 5}]]': "timed out",
        "[[tool:flaky__boom:{}]]": "",
        '[[tool:flaky__big:{"chars": 6000}]]': "over the limit of 5000",
    }
    for directive, expected in cases.items():
        started = time.monotonic()
        r = turn(chat_function, alice, agent, directive)
        assert r.status_code == 200, r.text
        message = r.json()["message"]
        (call,) = message["tool_calls"]
        assert call["status"] == "error" and call["server"] == "flaky", call
        assert expected.lower() in json.dumps(call["result"]).lower(), call
        assert message["content"].startswith("Done: "), "the model saw the error and answered"
        unavailable = message["metadata"]["integrations_unavailable"]
        assert [u["server"] for u in unavailable] == ["gone"]
        assert time.monotonic() - started < 20
    gone = db.execute("select status, last_error from public.user_integrations where name = 'gone'").fetchone()
    assert gone is not None and gone["status"] == "error" and gone["last_error"]


def test_parallel_calls__share_the_turns_result_budget(
        chat_function: ChatFunction, llm: FakeLLM, db: psycopg.Connection[Any], alice: uuid.UUID,
        agent: uuid.UUID, misbehaving: str) -> None:
    connect(db, chat_function, alice, agent, "flaky", misbehaving)
    r = turn(chat_function, alice, agent, '[[tool:flaky__big:{"chars": 3000}]]' * 3)
    assert r.status_code == 200, r.text
    calls = r.json()["message"]["tool_calls"]
    assert [c["status"] for c in calls] == ["ok", "ok", "error"], "3,000 + 3,000 fit in 8,000; a third does not"
    assert [len(c["result"]) for c in calls[:2]] == [3000, 3000]
    assert "exceed 8000 characters" in calls[2]["result"]["error"]
    # the model got all three results (tool messages count toward its usage)
    tool_messages = [m for m in llm.requests()[-1]["messages"] if m["role"] == "tool"]
    assert len(tool_messages) == 3 and sum(len(m["content"]) for m in tool_messages) > 6000


def test_wrong_credential__is_an_error_that_never_shows_the_credential(
        chat_function: ChatFunction, llm: FakeLLM, db: psycopg.Connection[Any], alice: uuid.UUID,
        agent: uuid.UUID, tickets: McpServer) -> None:
    wrong = "wrong-" + secrets.token_urlsafe(12)
    integration = connect(db, chat_function, alice, agent, "tickets", tickets.url, wrong)
    r = turn(chat_function, alice, agent, LIST_DIRECTIVE)
    assert r.status_code == 200, r.text
    assert r.json()["message"]["metadata"]["integrations_unavailable"][0]["server"] == "tickets"
    test = integrations_call(chat_function, alice, {"action": "test", "integration_id": integration})
    assert test.status_code == 200 and test.json()["ok"] is False
    row = db.execute("select * from public.user_integrations where id = %s", (integration,)).fetchone()
    assert row is not None and row["status"] == "error"
    everything = json.dumps([r.json(), test.json(), row], default=str)
    assert wrong not in everything
    assert wrong not in chat_function.log.read_text(errors="replace")
    # the right one works at once (a new credential is a new cache entry)
    fixed = integrations_call(chat_function, alice, {"action": "set_credential", "integration_id": integration,
                                                     "credential": tickets.token})
    assert fixed.status_code == 200
    test = integrations_call(chat_function, alice, {"action": "test", "integration_id": integration})
    assert test.json()["ok"] is True
    assert {t["name"] for t in test.json()["tools"]} == {"list_tickets", "get_ticket", "add_comment"}


def test_ssrf__refused_at_write_and_at_connect(
        chat_function: ChatFunction, llm: FakeLLM, db: psycopg.Connection[Any], alice: uuid.UUID,
        agent: uuid.UUID, tickets: McpServer) -> None:
    db.execute("update chat_private.integration_policy set allow_http = false, allow_loopback = false")
    refused = {
        "https://169.254.169.254/latest": "link-local",
        "https://10.0.0.7/mcp": "private",
        "https://[::1]/mcp": "loopback",
        "https://localhost/mcp": "loopback",
        "https://2130706433/mcp": "malformed",
        "http://mcp.example.com/mcp": "https",
        "https://user:pw@mcp.example.com/mcp": "user name",
        "file:///etc/passwd": "must use https",
        "mcp.example.com/mcp": "not an absolute URL",
    }
    for url, reason in refused.items():
        with pytest.raises(psycopg.errors.InvalidParameterValue, match=reason), as_user(db, alice):
            db.execute("insert into public.user_integrations (name, server_url) values ('x', %s)", (url,))
    with as_user(db, alice):
        db.execute("insert into public.user_integrations (name, server_url) values ('ok', 'https://mcp.example.com/mcp')")
    # written while the operator allowed loopback; the connect-time check refuses it once they do not
    db.execute("update chat_private.integration_policy set allow_http = true, allow_loopback = true")
    integration = connect(db, chat_function, alice, agent, "tickets", tickets.url, tickets.token)
    db.execute("update chat_private.integration_policy set allow_loopback = false")
    seen_before = len(tickets.calls())
    test = integrations_call(chat_function, alice, {"action": "test", "integration_id": integration})
    assert test.json()["ok"] is False and "loopback" in test.json()["error"]
    r = turn(chat_function, alice, agent, LIST_DIRECTIVE)
    assert r.status_code == 200
    assert "loopback" in r.json()["message"]["metadata"]["integrations_unavailable"][0]["error"]
    assert len(tickets.calls()) == seen_before, "the server was never contacted"


def test_isolation__user_b_can_neither_see_nor_use_user_as_integration(
        chat_function: ChatFunction, llm: FakeLLM, db: psycopg.Connection[Any], alice: uuid.UUID,
        agent: uuid.UUID, tickets: McpServer) -> None:
    integration = connect(db, chat_function, alice, agent, "tickets", tickets.url, tickets.token)
    bob = create_user(db)
    bobs_agent = create_agent(db, bob)
    with as_user(db, bob):
        assert db.execute("select * from public.user_integrations").fetchall() == []
        assert db.execute("select * from public.agent_integrations").fetchall() == []
        assert db.execute("update public.user_integrations set server_url = 'https://evil.example.com/'"
                          " where id = %s", (integration,)).rowcount == 0
        assert db.execute("delete from public.user_integrations where id = %s", (integration,)).rowcount == 0
    with pytest.raises(psycopg.errors.ForeignKeyViolation), as_user(db, bob):
        db.execute("insert into public.agent_integrations (agent_id, integration_id) values (%s, %s)",
                   (bobs_agent, integration))
    # through the function: "not yours" answers exactly like "does not exist"
    for body in ({"action": "test", "integration_id": integration},
                 {"action": "set_credential", "integration_id": integration, "credential": "mine-now"}):
        theirs = integrations_call(chat_function, bob, body)
        missing = integrations_call(chat_function, bob, {**body, "integration_id": str(uuid.uuid4())})
        assert theirs.status_code == missing.status_code == 404
        assert theirs.json() == missing.json()
    seen_before = len(tickets.calls())
    r = turn(chat_function, bob, bobs_agent, LIST_DIRECTIVE)
    assert r.status_code == 200
    (call,) = r.json()["message"]["tool_calls"]
    assert call["status"] == "error" and "server" not in call
    assert len(tickets.calls()) == seen_before
    assert "tickets__list_tickets" not in {t["function"]["name"] for t in llm.requests()[-1].get("tools", [])}


def test_credential__is_write_only_for_every_client_path(
        chat_function: ChatFunction, llm: FakeLLM, db: psycopg.Connection[Any], alice: uuid.UUID,
        agent: uuid.UUID, tickets: McpServer) -> None:
    integration = connect(db, chat_function, alice, agent, "tickets", tickets.url, tickets.token)
    assert turn(chat_function, alice, agent, LIST_DIRECTIVE).status_code == 200
    stored = db.execute("select key_id, ciphertext from chat_private.integration_credentials"
                        " where integration_id = %s", (integration,)).fetchone()
    assert stored is not None and stored["key_id"] == "k1" and tickets.token not in stored["ciphertext"]
    with as_user(db, alice):
        visible = db.execute("select * from public.user_integrations").fetchall()
        messages = db.execute("select * from public.chat_messages_v2").fetchall()
    assert visible[0]["has_credential"] is True
    assert tickets.token not in json.dumps([visible, messages], default=str)
    assert stored["ciphertext"] not in json.dumps([visible, messages], default=str)
    for statement in ("select * from chat_private.integration_credentials",
                      "select chat_private.integrations_for(null, null)"):
        with pytest.raises(psycopg.errors.InsufficientPrivilege), as_user(db, alice):
            db.execute(statement)
    published = db.execute("select schemaname, tablename, attnames from pg_publication_tables"
                           " where pubname = 'supabase_realtime'").fetchall()
    assert "user_integrations" in {p["tablename"] for p in published}
    assert all(p["schemaname"] == "public" for p in published)
    assert not any({"ciphertext", "key_id"} & set(p["attnames"]) for p in published)
    assert tickets.token not in chat_function.log.read_text(errors="replace")


def test_key_rotation__old_rows_work_after_a_new_key_and_reencrypting_moves_them(
        stack_state: stack.State, chat_function: ChatFunction, fake_llm: FakeLLM, db: psycopg.Connection[Any],
        alice: uuid.UUID, agent: uuid.UUID, tickets: McpServer, tmp_path: Path) -> None:
    integration = connect(db, chat_function, alice, agent, "tickets", tickets.url, tickets.token)
    rotated_keys = json.dumps({"k1": KEY_1, "k2": KEY_2})
    rotated = start_chat_function(stack_state, chat_function.db_url, fake_llm, tmp_path / "chat.log",
                                  {**FUNCTION_ENV, "CHAT_INTEGRATIONS_KEYS": rotated_keys})
    try:
        test = integrations_call(rotated, alice, {"action": "test", "integration_id": integration})
        assert test.json()["ok"] is True, "a row under the old key still works"
        fn_dir = ROOT / "supabase" / "functions"
        out = subprocess.run(
            [stack.deno_binary(), "run", "--allow-net", "--allow-env", "--allow-read", "--config",
             str(fn_dir / "deno.json"), str(fn_dir / "chat" / "mcp" / "reencrypt.ts")],
            env={**os.environ, "SUPABASE_DB_URL": chat_function.db_url, "CHAT_INTEGRATIONS_KEYS": rotated_keys},
            capture_output=True, text=True, timeout=120, check=True)
        # the module's database holds the other tests' credentials too: all of them move
        before = db.execute("select count(*) as n from chat_private.integration_credentials").fetchone()
        assert before is not None
        assert json.loads(out.stdout.strip().splitlines()[-1]) == {"reencrypted": before["n"], "current_key_id": "k2"}
        keys = db.execute("select distinct key_id from chat_private.integration_credentials").fetchall()
        assert keys == [{"key_id": "k2"}]
    finally:
        rotated.stop()
    only_new = start_chat_function(stack_state, chat_function.db_url, fake_llm, tmp_path / "chat2.log",
                                   {**FUNCTION_ENV, "CHAT_INTEGRATIONS_KEYS": json.dumps({"k2": KEY_2})})
    try:
        test = integrations_call(only_new, alice, {"action": "test", "integration_id": integration})
        assert test.json()["ok"] is True, "moved under the new key, the old one can go"
    finally:
        only_new.stop()


def test_cli__add_test_list_remove_acting_as_the_user(
        chat_function: ChatFunction, llm: FakeLLM, db: psycopg.Connection[Any], alice: uuid.UUID,
        agent: uuid.UUID, tickets: McpServer, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    from worker import cli

    monkeypatch.setenv("WT_TICKETS_TOKEN", tickets.token)
    common = ["--user", str(alice), "--database-url", chat_function.db_url, "--json"]
    to_function = ["--chat-url", chat_function.url]

    def run(*args: str) -> tuple[int, Any]:
        code = cli.main(list(args))
        out = capsys.readouterr().out.strip()
        return code, json.loads(out) if out else None

    code, added = run("integrations", "add", "tickets", tickets.url, "--auth", "bearer",
                      "--credential-env", "WT_TICKETS_TOKEN", "--agent", str(agent), *common, *to_function)
    assert code == 0 and added["has_credential"] is True
    code, tested = run("integrations", "test", "tickets", *common, *to_function)
    assert code == 0 and tested["ok"] is True
    assert {t["name"] for t in tested["tools"]} == {"list_tickets", "get_ticket", "add_comment"}
    code, listed = run("integrations", "list", *common)
    assert code == 0 and [(r["name"], r["status"], r["has_credential"], r["agents"]) for r in listed] == [
        ("tickets", "ok", True, [str(agent)])]
    assert tickets.token not in json.dumps(listed)
    # a refused URL is the database's readable error, exit 1
    code, error = run("integrations", "add", "meta", "https://169.254.169.254/", *common, *to_function)
    assert code == 1 and "link-local" in error["error"]["message"]
    # another user's integration does not exist for them
    bob = create_user(db)
    code, error = run("integrations", "remove", "tickets", "--user", str(bob), "--database-url",
                      chat_function.db_url, "--json")
    assert code == 1 and "not found" in error["error"]["message"]
    code, removed = run("integrations", "remove", "tickets", *common)
    assert code == 0 and removed == {"removed": "tickets"}
    assert db.execute("select count(*) as n from chat_private.integration_credentials where integration_id = %s",
                      (added["id"],)).fetchone() == {"n": 0}, "the credential went with it"
