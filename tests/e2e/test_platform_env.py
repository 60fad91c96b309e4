"""The chat function under the environment Supabase gives it, in every shape a project can have.

The local stack injects what the platform injects (worker.stack.platform_env):
SUPABASE_SECRET_KEYS and SUPABASE_PUBLISHABLE_KEYS as JSON objects of named
keys, the key set as SUPABASE_JWKS, the legacy anon and service-role keys,
and nothing else. Each test starts the real function under Deno with one
project's shape and calls it over HTTP.
"""

from __future__ import annotations

import base64
import json
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import httpx
import jwt
import psycopg
import pytest

from tests.conftest import create_agent, create_user
from tests.e2e.conftest import ChatFunction, FakeLLM, scheduled_turn, spawn_chat_function, start_chat_function
from worker import stack

pytestmark = pytest.mark.e2e

PLATFORM_NAMES = {
    "SUPABASE_URL", "SUPABASE_DB_URL", "SUPABASE_PUBLISHABLE_KEYS", "SUPABASE_SECRET_KEYS", "SUPABASE_JWKS",
    "SUPABASE_ANON_KEY", "SUPABASE_SERVICE_ROLE_KEY",
}


@pytest.fixture
def serve(stack_state: stack.State, module_db_url: str, fake_llm: FakeLLM,
          tmp_path: Path) -> Iterator[Any]:
    """Start the function with changed settings or platform variables; stopped after the test."""
    started: list[ChatFunction] = []

    def start(settings: dict[str, str] | None = None, **platform: str | None) -> ChatFunction:
        fn = start_chat_function(stack_state, module_db_url, fake_llm, tmp_path / f"chat-{len(started)}.log",
                                 extra_env=settings, platform=platform)
        started.append(fn)
        return fn

    yield start
    for fn in started:
        fn.stop()


@pytest.fixture
def db(module_db_url: str) -> Iterator[psycopg.Connection[dict[str, Any]]]:
    from psycopg.rows import dict_row
    with psycopg.connect(module_db_url, autocommit=True, row_factory=dict_row) as c:
        yield c


def user_call(fn: ChatFunction, token: str, agent: uuid.UUID) -> httpx.Response:
    return fn.post({"agent_id": str(agent), "message": "hello"},
                   {"apikey": fn.state.publishable_key, "authorization": f"Bearer {token}"})


def hs256_user_token(secret: str, user: uuid.UUID, **header: str) -> str:
    """A user token signed the legacy way: HS256 with the project's JWT secret."""
    now = int(time.time())
    return jwt.encode({"sub": str(user), "role": "authenticated", "aud": "authenticated", "iat": now,
                       "exp": now + 600}, secret, algorithm="HS256", headers=header or None)


def oct_jwk(secret: str, **extra: str) -> dict[str, str]:
    k = base64.urlsafe_b64encode(secret.encode()).rstrip(b"=").decode()
    return {"kty": "oct", "k": k, **extra}


# --- what the stack injects --------------------------------------------------------------------


def test_stack__injects_exactly_the_platforms_names_and_formats(stack_state: stack.State,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    # a developer's shell may hold SUPABASE_ names the platform never gives a function
    monkeypatch.setenv("SUPABASE_JWT_SECRET", "from-the-shell")
    monkeypatch.setenv("SUPABASE_SECRET_KEY", "sb_secret_from_the_shell")
    env = stack.function_env(stack_state, "postgresql://x", 1234, {"OPENAI_API_KEY": "k"})
    assert {k for k in env if k.startswith("SUPABASE_")} == PLATFORM_NAMES
    assert json.loads(env["SUPABASE_SECRET_KEYS"]) == {"default": stack_state.secret_key}
    assert json.loads(env["SUPABASE_PUBLISHABLE_KEYS"]) == {"default": stack_state.publishable_key}
    keys = json.loads(env["SUPABASE_JWKS"])["keys"]
    assert [(k["kty"], k["alg"], k["kid"]) for k in keys] == [("EC", "ES256", stack_state.signing_kid)]
    assert "d" not in keys[0], "the key set carries the public key only"
    assert env["OPENAI_API_KEY"] == "k" and env["PORT"] == "1234"


def test_stack__user_tokens_verify_against_the_injected_key_set(stack_state: stack.State) -> None:
    token = stack.user_token(stack_state, str(uuid.uuid4()))
    assert jwt.get_unverified_header(token) == {"alg": "ES256", "kid": stack_state.signing_kid, "typ": "JWT"}
    key = jwt.PyJWKSet.from_dict(stack.jwks(stack_state))[stack_state.signing_kid]
    assert jwt.decode(token, key, algorithms=["ES256"], audience="authenticated")["role"] == "authenticated"


# --- service credentials ---------------------------------------------------------------------------


def test_service__the_new_secret_key_from_supabase_secret_keys(chat_function: ChatFunction, llm: FakeLLM,
                                                              db: psycopg.Connection[Any]) -> None:
    alice = create_user(db)
    context = scheduled_turn(db, alice, create_agent(db, alice), "Check in")
    r = chat_function.post({"context": context}, {"apikey": chat_function.secret_key, "x-service": "task-executor"})
    assert r.status_code == 200, r.text
    assert r.json()["message"]["role"] == "assistant"


def test_service__the_legacy_service_role_key(chat_function: ChatFunction, llm: FakeLLM,
                                              db: psycopg.Connection[Any]) -> None:
    alice = create_user(db)
    context = scheduled_turn(db, alice, create_agent(db, alice), "Check in")
    r = chat_function.post({"context": context}, {"authorization": f"Bearer {chat_function.service_role_key}",
                                                  "x-service": "task-executor"})
    assert r.status_code == 200, r.text


def test_service__every_key_of_the_dictionary_and_a_rotated_out_key_refused(
        serve: Any, llm: FakeLLM, db: psycopg.Connection[Any], stack_state: stack.State) -> None:
    # the project rotated: a new key is named "worker", the old "default" key was deleted
    new_key = "sb_secret_" + uuid.uuid4().hex
    fn = serve(SUPABASE_SECRET_KEYS=json.dumps({"ci": "sb_secret_" + uuid.uuid4().hex, "worker": new_key}))
    alice = create_user(db)
    context = scheduled_turn(db, alice, create_agent(db, alice), "Check in")
    old = fn.post({"context": context}, {"apikey": stack_state.secret_key, "x-service": "task-executor"})
    assert (old.status_code, old.json()["error"]["code"]) == (401, "invalid_service_credential")
    r = fn.post({"context": context}, {"apikey": new_key, "x-service": "task-executor"})
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("value", [
    "sb_secret_one,sb_secret_two",  # what the old comma-separated setting took
    "sb_secret_one",
    '["sb_secret_one"]',
    '{"default": 42}',
])
def test_start__malformed_supabase_secret_keys_is_a_clear_start_up_error(
        stack_state: stack.State, module_db_url: str, tmp_path: Path, value: str) -> None:
    env = stack.function_env(stack_state, module_db_url, stack.free_port(0))
    env["SUPABASE_SECRET_KEYS"] = value
    log = tmp_path / "chat.log"
    proc = spawn_chat_function(env, log)
    try:
        code = proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError("the function served with a malformed SUPABASE_SECRET_KEYS") from None
    out = log.read_text()
    assert code == 78, out
    assert "configuration error: SUPABASE_SECRET_KEYS must be a JSON object of named keys" in out, out


# --- user tokens -------------------------------------------------------------------------------------


def test_user__es256_token_verified_with_supabase_jwks(chat_function: ChatFunction, llm: FakeLLM,
                                                      db: psycopg.Connection[Any]) -> None:
    alice = create_user(db)
    agent = create_agent(db, alice)
    r = user_call(chat_function, chat_function.user_token(alice), agent)
    assert r.status_code == 200, r.text
    # the legacy HS256 secret is not given to a function: a token signed with it is refused
    r = user_call(chat_function, hs256_user_token(chat_function.state.jwt_secret, alice), agent)
    assert (r.status_code, r.json()["error"]["code"]) == (401, "invalid_token")


def test_user__hs256_token_verified_with_an_oct_key_of_supabase_jwks(serve: Any, llm: FakeLLM,
                                                                    db: psycopg.Connection[Any],
                                                                    stack_state: stack.State) -> None:
    # the CLI's local runtime puts the project's symmetric key into the key set
    key_set = stack.jwks(stack_state)
    key_set["keys"].append(oct_jwk(stack_state.jwt_secret))
    fn = serve(SUPABASE_JWKS=json.dumps(key_set))
    alice = create_user(db)
    agent = create_agent(db, alice)
    assert user_call(fn, hs256_user_token(stack_state.jwt_secret, alice), agent).status_code == 200
    assert user_call(fn, fn.user_token(alice), agent).status_code == 200, "the asymmetric key still works"
    forged = hs256_user_token("another-secret-that-is-long-enough-000", alice)
    assert user_call(fn, forged, agent).status_code == 401


def test_user__legacy_hs256_project_sets_chat_jwt_secret(serve: Any, llm: FakeLLM, db: psycopg.Connection[Any],
                                                         stack_state: stack.State) -> None:
    alice = create_user(db)
    agent = create_agent(db, alice)
    token = hs256_user_token(stack_state.jwt_secret, alice)
    legacy = serve({"CHAT_JWT_SECRET": stack_state.jwt_secret}, SUPABASE_JWKS=json.dumps({"keys": []}))
    r = user_call(legacy, token, agent)
    assert r.status_code == 200, r.text
    unset = serve(SUPABASE_JWKS=json.dumps({"keys": []}))
    assert user_call(unset, token, agent).status_code == 401


class _JwksHandler(BaseHTTPRequestHandler):
    body = b""
    paths: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        type(self).paths.append(self.path)
        found = self.path == "/auth/v1/.well-known/jwks.json"
        self.send_response(200 if found else 404)
        self.send_header("content-type", "application/json")
        self.end_headers()
        self.wfile.write(self.body if found else b"{}")

    def log_message(self, *args: Any) -> None:
        pass


def test_user__without_supabase_jwks_the_key_set_is_fetched_from_supabase_url(
        serve: Any, llm: FakeLLM, db: psycopg.Connection[Any], stack_state: stack.State) -> None:
    _JwksHandler.body = json.dumps(stack.jwks(stack_state)).encode()
    _JwksHandler.paths = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _JwksHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        fn = serve(SUPABASE_JWKS=None, SUPABASE_URL=f"http://127.0.0.1:{server.server_port}")
        alice = create_user(db)
        r = user_call(fn, fn.user_token(alice), create_agent(db, alice))
        assert r.status_code == 200, r.text
        assert _JwksHandler.paths == ["/auth/v1/.well-known/jwks.json"]
    finally:
        server.shutdown()
