"""Webhooks end to end: a real worker process POSTs a user's notifications to a real HTTP
receiver, signed as Standard Webhooks (checked with the reference implementation), retries
what failed with the same webhook-id, and stops at a 410 Gone; an address the outbound
policy refuses is never connected to."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import psycopg
import pytest
from standardwebhooks.webhooks import Webhook

from tests.conftest import as_user, create_agent, create_task, create_user
from tests.e2e.workers import (
    ChatEndpoint,
    WorkerProcess,
    chat_endpoint,
    connect,
    run_now,
    spawn_worker,
    wait_for,
    wait_status,
)

pytestmark = pytest.mark.e2e
__all__ = ["chat_endpoint"]


@dataclass
class Receiver:
    """An HTTP endpoint on 127.0.0.1 that records every request and answers the next status of
    `answers` (then 200)."""

    port: int = 0
    answers: list[int] = field(default_factory=list)
    requests: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    rec = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            with rec.lock:
                rec.requests.append({"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()},
                                     "body": body, "at": time.monotonic()})
                status = rec.answers.pop(0) if rec.answers else 200
            self.send_response(status)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    rec.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield rec
    server.shutdown()


@pytest.fixture(scope="module")
def worker(chat_endpoint: ChatEndpoint, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    with connect(chat_endpoint.db_url) as db:
        # the receiver is plain HTTP on loopback: what the local stack's policy allows
        db.execute("update chat_private.integration_policy set allow_http = true, allow_loopback = true")
    wp = spawn_worker(chat_endpoint, tmp_path_factory.mktemp("workers"), name="webhooks-worker",
                      webhook_retry_base_s=0.3, webhook_timeout_s=3)
    yield wp
    wp.stop()
    out = wp.output()
    assert "Traceback" not in out, out[-4000:]


@pytest.fixture
def db(chat_endpoint: ChatEndpoint, worker: WorkerProcess) -> Iterator[psycopg.Connection[dict[str, Any]]]:
    with connect(chat_endpoint.db_url) as conn:
        yield conn


def user_row(db: psycopg.Connection[Any], user: uuid.UUID, sql: str, params: tuple[Any, ...]) -> dict[str, Any]:
    """One statement's row as the user would get it through PostgREST (tests.conftest.as_user)."""
    with as_user(db, user):
        row = db.execute(sql, params).fetchone()
    assert row is not None
    return dict(row)


def add_webhook(db: psycopg.Connection[Any], user: uuid.UUID, url: str, kinds: list[str]) -> dict[str, Any]:
    return user_row(db, user, "insert into public.webhooks (url, kinds) values (%s, %s) returning *", (url, kinds))


def hits(receiver: Receiver, marker: str) -> list[dict[str, Any]]:
    with receiver.lock:
        return [r for r in receiver.requests if marker.encode() in r["body"]]


def test_webhook__a_failed_run_is_posted_signed_and_verifiable(db: psycopg.Connection[Any],
                                                               receiver: Receiver) -> None:
    uid = create_user(db)
    hook = add_webhook(db, uid, receiver.url, ["task_failed"])
    marker = uuid.uuid4().hex[:10]
    task = create_task(db, uid, create_agent(db, uid), name=f"Doomed {marker}", prompt_template="[[fail:401]] no")
    ex = run_now(db, task)
    wait_status(db, ex, ("failed",))
    wait_for(lambda: len(hits(receiver, marker)) == 1, 10, what="the failure's webhook")
    [request] = hits(receiver, marker)
    headers = request["headers"]
    # the reference implementation verifies what the worker sent
    payload = Webhook(hook["secret"]).verify(request["body"], headers)
    assert payload["type"] == "task_failed"
    assert payload["data"]["execution_id"] == str(ex) and payload["data"]["task_id"] == str(task)
    assert marker in payload["data"]["title"]
    assert headers["content-type"] == "application/json" and headers["user-agent"].startswith("agent-tasks-webhooks/")
    # the worker records the outcome once the receiver has answered
    delivery = wait_for(lambda: db.execute("select * from scheduler.webhook_deliveries where id = %s"
                                           " and status <> 'delivering'", (headers["webhook-id"],)).fetchone(),
                        5, what="the delivery's outcome")
    assert delivery["status"] == "delivered" and delivery["attempts"] == 1
    assert delivery["last_status"] == 200
    row = db.execute("select last_delivered_at, last_error from public.webhooks where id = %s",
                     (hook["id"],)).fetchone()
    assert row is not None and row["last_delivered_at"] is not None and row["last_error"] is None


def test_webhook__failures_are_retried_with_the_same_id_and_a_410_disables_it(db: psycopg.Connection[Any],
                                                                              receiver: Receiver) -> None:
    uid = create_user(db)
    hook = add_webhook(db, uid, receiver.url, ["info"])
    marker = uuid.uuid4().hex[:10]
    with receiver.lock:
        receiver.answers[:] = [500, 503]
    db.execute("insert into public.notifications (user_id, kind, title) values (%s, 'info', %s)",
               (uid, f"Retry me {marker}"))
    wait_for(lambda: len(hits(receiver, marker)) == 3, 15, what="two failures, then the delivery")
    first, second, third = hits(receiver, marker)
    assert first["headers"]["webhook-id"] == second["headers"]["webhook-id"] == third["headers"]["webhook-id"]
    # backoff: 0.3 s, then 1.8 s (WEBHOOK_RETRY_BASE_S 0.3; 5 s and 30 s by default)
    assert second["at"] - first["at"] >= 0.25 and third["at"] - second["at"] >= 1.5
    wait_for(lambda: db.execute("select status from scheduler.webhook_deliveries where id = %s",
                                (first["headers"]["webhook-id"],)).fetchone()["status"] == "delivered",
             5, what="the delivery to be recorded")

    # the endpoint is gone: 410 fails the delivery at once and disables the webhook
    with receiver.lock:
        receiver.answers[:] = [410]
    gone = uuid.uuid4().hex[:10]
    db.execute("insert into public.notifications (user_id, kind, title) values (%s, 'info', %s)",
               (uid, f"Gone {gone}"))
    wait_for(lambda: db.execute("select enabled from public.webhooks where id = %s",
                                (hook["id"],)).fetchone()["enabled"] is False, 10, what="the webhook to be disabled")
    row = db.execute("select disabled_reason from public.webhooks where id = %s", (hook["id"],)).fetchone()
    assert row is not None and "410" in row["disabled_reason"]
    assert len(hits(receiver, gone)) == 1
    # nothing more is sent to it
    later = uuid.uuid4().hex[:10]
    db.execute("insert into public.notifications (user_id, kind, title) values (%s, 'info', %s)", (uid, later))
    time.sleep(1.0)
    assert hits(receiver, later) == []


def test_webhook__an_address_the_policy_refuses_is_never_connected_to(db: psycopg.Connection[Any],
                                                                      receiver: Receiver) -> None:
    uid = create_user(db)
    hook = add_webhook(db, uid, receiver.url, ["info"])
    # the operator tightens the policy after the URL was accepted (or a name now resolves elsewhere):
    # the worker checks the address right before it connects
    db.execute("update chat_private.integration_policy set allow_loopback = false")
    try:
        marker = uuid.uuid4().hex[:10]
        db.execute("insert into public.notifications (user_id, kind, title) values (%s, 'info', %s)", (uid, marker))
        wait_for(lambda: (db.execute("select status from scheduler.webhook_deliveries where webhook_id = %s",
                                     (hook["id"],)).fetchone() or {}).get("status") == "failed",
                 10, what="the delivery to fail")
        delivery = db.execute("select * from scheduler.webhook_deliveries where webhook_id = %s",
                              (hook["id"],)).fetchone()
        assert delivery is not None and delivery["attempts"] == 1 and delivery["last_status"] is None
        assert "url must not point at a loopback address" in delivery["last_error"]
        assert hits(receiver, marker) == []
    finally:
        db.execute("update chat_private.integration_policy set allow_loopback = true")


def test_webhook__a_test_delivery_reaches_the_endpoint(db: psycopg.Connection[Any], receiver: Receiver) -> None:
    uid = create_user(db)
    hook = add_webhook(db, uid, receiver.url, ["task_failed"])
    delivery_id = str(user_row(db, uid, "select public.test_webhook(%s) as id", (hook["id"],))["id"])
    wait_for(lambda: any(r["headers"].get("webhook-id") == delivery_id for r in receiver.requests), 10,
             what="the test delivery")
    [request] = [r for r in receiver.requests if r["headers"].get("webhook-id") == delivery_id]
    payload = Webhook(hook["secret"]).verify(request["body"], request["headers"])
    assert payload["type"] == "webhook.test" and payload["data"]["webhook_id"] == str(hook["id"])
