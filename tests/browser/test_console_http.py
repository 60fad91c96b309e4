"""The console's HTTP answers that a browser journey does not show: refusals, headers, operator access."""

from __future__ import annotations

import html
import re
import time
import uuid

import httpx
import jwt
import pytest

from tests.browser.conftest import Console
from tests.conftest import create_agent, create_task, create_user
from worker import stack
from worker.console.auth import OPERATOR_COOKIE, USER_COOKIE
from worker.console.pages import WEBHOOK_KINDS

pytestmark = pytest.mark.e2e


def _client(console: Console, token: str | None = None, **cookies: str) -> httpx.Client:
    jar = dict(cookies)
    if token:
        jar[USER_COOKIE] = token
    return httpx.Client(base_url=console.url, cookies=jar, timeout=30, headers={"origin": console.url})


def test_sign_in__refuses_bad_expired_and_non_user_tokens(console: Console, stack_state: stack.State) -> None:
    now = int(time.time())
    base = {"aud": "authenticated", "sub": str(console.alice.id), "iat": now, "exp": now + 600}
    tokens = {
        "not a token": "nonsense",
        "expired": stack.sign_token(stack_state, {**base, "role": "authenticated", "exp": now - 10}),
        "anon key": stack.api_keys(stack_state)["anon_key"],
        "service role": stack.api_keys(stack_state)["service_role_key"],
        "wrong key": jwt.encode({**base, "role": "authenticated"}, "x" * 32, algorithm="HS256"),
        "wrong audience": stack.sign_token(stack_state, {**base, "role": "authenticated", "aud": "other"}),
    }
    with _client(console) as client:
        for what, token in tokens.items():
            r = client.post("/login", data={"access_token": token})
            assert r.status_code == 401, what
            assert USER_COOKIE not in r.cookies, what
            assert "expired" in r.text if what == "expired" else True
    # a cookie holding such a token signs nobody in either
    for token in tokens.values():
        with _client(console, token) as client:
            r = client.get("/tasks", follow_redirects=False)
            assert r.status_code == 303 and r.headers["location"] == "/login"
    with _client(console) as client:
        r = client.get("/api/cron", params={"expr": "* * * * *"})
        assert r.status_code == 401 and r.json()["error"]["code"] == "not_signed_in"
        # demo sign-in exists on the local stack only (this console was given a database URL)
        assert client.post("/login/demo").status_code == 404


def test_pages__security_headers_and_cross_origin_posts(console: Console) -> None:
    with _client(console, console.alice.token) as client:
        r = client.get("/conversations")
        assert r.status_code == 200
        assert "script-src 'self'" in r.headers["content-security-policy"]
        assert r.headers["x-content-type-options"] == "nosniff"
        r = client.post("/conversations", data={"agent_id": str(console.alice.agent_id)},
                        headers={"origin": "https://evil.example"})
        assert r.status_code == 403 and r.json()["error"]["code"] == "cross_origin"
        assert client.get("/static/console.js").status_code == 200
        assert client.get("/static/../pages.py").status_code == 404


def test_send__bad_input_is_refused_with_a_json_code(console: Console) -> None:
    with _client(console, console.alice.token) as client:
        r = client.post("/conversations", data={"agent_id": str(console.alice.agent_id)}, follow_redirects=False)
        conv = r.headers["location"].rsplit("/", 1)[1]
        cases = [({"message": "x" * 10_001}, 413, "message_too_long"), ({"message": "  "}, 400, "invalid_body"),
                 ({"text": "hi"}, 400, "invalid_body")]
        for body, status, code in cases:
            r = client.post(f"/c/{conv}/send", json=body)
            assert (r.status_code, r.json()["error"]["code"]) == (status, code)
        r = client.post(f"/c/{conv}/send", content=b"{not json", headers={"content-type": "application/json"})
        assert r.status_code == 400
        # another user's conversation, and one that does not exist: the same answer
        with _client(console, console.bob.token) as bob:
            assert bob.post(f"/c/{conv}/send", json={"message": "hi"}).status_code == 404
            assert bob.post(f"/c/{uuid.uuid4()}/send", json={"message": "hi"}).status_code == 404
            assert bob.post("/c/not-a-uuid/rename", data={"title": "x"}).status_code == 404
        r = client.post(f"/c/{conv}/rename", data={"title": "t" * 201})
        assert (r.status_code, r.json()["error"]["code"]) == (400, "invalid_title")
        # the model failing before it answers: the chat function's status and code come through
        r = client.post(f"/c/{conv}/send", json={"message": "[[fail:503]] hello"})
        assert r.status_code == 502 and r.json()["error"]["code"] == "model_unavailable"


def test_operator__needs_the_operator_token_never_a_users(console: Console) -> None:
    with _client(console, console.alice.token) as client:
        r = client.get("/operator", follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == "/operator/login"
        r = client.post("/operator/login", data={"operator_token": console.alice.token})
        assert r.status_code == 401
        r = client.post(f"/operator/runs/{uuid.uuid4()}/retry")
        assert r.status_code == 401 and r.json()["error"]["code"] == "operator_only"
    with _client(console, **{OPERATOR_COOKIE: "wrong"}) as client:
        assert client.get("/operator", follow_redirects=False).status_code == 303
    with _client(console) as client:
        r = client.post("/operator/login", data={"operator_token": console.operator_token}, follow_redirects=False)
        assert r.status_code == 303 and OPERATOR_COOKIE in r.cookies
        client.cookies.set(OPERATOR_COOKIE, console.operator_token)
        page = client.get("/operator")
        assert page.status_code == 200
        assert "console-worker" in page.text  # the module's worker, with its in-flight count
        for section in ("queue-stats", "workers", "running", "failed", "cron-jobs"):
            assert f'id="{section}"' in page.text
        assert "pg_cron does not run in this database" in page.text  # a test copy, not cron.database_name
        # a user page is not an operator's: the operator cookie signs no user in
        assert client.get("/tasks", follow_redirects=False).status_code == 303


def test_lists__tasks_and_runs_page_by_the_databases_cursor(console: Console, stack_state: stack.State) -> None:
    """The schedule list and a task's runs are pages of public.list_tasks and
    public.list_executions: 50 rows, then an "Older" link with next_cursor, and a
    cursor the database cannot read is a page that does not exist."""
    with console.db() as db:
        email = f"carol-{uuid.uuid4().hex[:6]}@example.test"
        uid = create_user(db, email)
        agent = create_agent(db, uid, name="Carol's assistant")
        tasks = [create_task(db, uid, agent, name=f"Task {i:02d}") for i in range(53)]
        db.execute("""insert into public.agent_task_executions
                        (task_id, user_id, agent_id, trigger_type, status, scheduled_for, created_at,
                         attempt, worker_id, started_at, finished_at, error)
                      select %s, %s, %s, 'manual', 'failed', t, t, 1, 'w', t, t, 'run ' || g
                      from generate_series(1, 52) g,
                           lateral (select now() - make_interval(mins => g) as t) x""",
                   (tasks[0], uid, agent))
    token = stack.user_token(stack_state, str(uid), email)
    with _client(console, token) as client:
        first = client.get("/tasks")
        assert first.status_code == 200 and first.text.count('class="task status-') == 50
        older = re.search(r'href="(/tasks\?cursor=[^"]+)"', first.text)
        assert older is not None
        second = client.get(html.unescape(older.group(1)))
        assert second.status_code == 200 and second.text.count('class="task status-') == 3
        assert "Older schedules" not in second.text
        # newest first, so the second page holds the three created first
        assert all(f"Task {i:02d}" in second.text for i in range(3))
        assert "Task 03" not in second.text

        runs = client.get(f"/tasks/{tasks[0]}/runs")
        assert runs.status_code == 200 and runs.text.count('class="run status-') == 50
        assert "run 1<" in runs.text and "run 51<" not in runs.text  # the newest run is "run 1"
        older = re.search(r'href="(/tasks/[^"]+/runs\?cursor=[^"]+)"', runs.text)
        assert older is not None
        rest = client.get(html.unescape(older.group(1)))
        assert rest.status_code == 200 and rest.text.count('class="run status-') == 2
        assert "run 51<" in rest.text and "run 52<" in rest.text

        assert client.get("/tasks", params={"cursor": "soon|x"}).status_code == 404
        assert client.get(f"/tasks/{tasks[0]}/runs", params={"cursor": "soon|x"}).status_code == 404
    # another user's task has no runs page at all
    with _client(console, console.bob.token) as client:
        assert client.get(f"/tasks/{tasks[0]}/runs").status_code == 404


def test_lists__one_agents_schedules_page_by_its_own_cursor(console: Console, stack_state: stack.State) -> None:
    """/tasks?agent= is public.list_tasks(p_agent_id): only that agent's schedules, its "Older"
    link keeps the agent, another user's agent shows nothing (like one that does not exist), and
    the conversation list links to the agent's schedules."""
    with console.db() as db:
        email = f"dan-{uuid.uuid4().hex[:6]}@example.test"
        uid = create_user(db, email)
        planner = create_agent(db, uid, name="Planner")
        writer = create_agent(db, uid, name="Writer")
        for i in range(52):
            create_task(db, uid, planner, name=f"Plan {i:02d}")
        create_task(db, uid, writer, name="Draft the newsletter")
    token = stack.user_token(stack_state, str(uid), email)
    with _client(console, token) as client:
        everything = client.get("/tasks")
        assert everything.status_code == 200 and 'id="agent-filter"' in everything.text
        assert "Draft the newsletter" in everything.text
        plans = client.get("/tasks", params={"agent": str(planner)})
        assert plans.status_code == 200 and plans.text.count('class="task status-') == 50
        assert "Draft the newsletter" not in plans.text
        older = re.search(r'href="(/tasks\?cursor=[^"]+)" id="more-tasks"', plans.text)
        assert older is not None and f"agent={planner}" in html.unescape(older.group(1))
        rest = client.get(html.unescape(older.group(1)))
        assert rest.status_code == 200 and rest.text.count('class="task status-') == 2
        assert "Plan 00" in rest.text and "Plan 01" in rest.text and "Draft the newsletter" not in rest.text
        writers = client.get("/tasks", params={"agent": str(writer)})
        assert writers.text.count('class="task status-') == 1 and "Draft the newsletter" in writers.text
        # another user's agent: an empty list, exactly like an agent that does not exist
        theirs = client.get("/tasks", params={"agent": str(console.bob.agent_id)})
        nobody = client.get("/tasks", params={"agent": str(uuid.uuid4())})
        assert theirs.status_code == nobody.status_code == 200
        assert theirs.text.count('class="task status-') == nobody.text.count('class="task status-') == 0
        assert client.get("/tasks", params={"agent": "not-a-uuid"}).status_code == 404
        conversations = client.get("/conversations", params={"agent": str(writer)})
        assert f'href="/tasks?agent={writer}" id="agent-schedules"' in conversations.text


def test_run_now__a_full_backlog_is_refused_with_its_reason(console: Console, stack_state: stack.State) -> None:
    """Run now on an exclusive task with max_queued_runs_per_task runs waiting is a 409
    naming the limit (a page for a form, JSON otherwise); nothing is queued."""
    with console.db() as db:
        email = f"dave-{uuid.uuid4().hex[:6]}@example.test"
        uid = create_user(db, email)
        task = create_task(db, uid, create_agent(db, uid), name="Nightly digest")  # overlap_policy skip
        limit = db.execute("select scheduler.limit_int('max_queued_runs_per_task') as n").fetchone()["n"]
        # due in an hour: the suite's worker leaves them queued
        for _ in range(limit):
            db.execute("select scheduler.enqueue_now(%s, 'manual', now() + interval '1 hour')", (task,))
    token = stack.user_token(stack_state, str(uid), email)
    with _client(console, token) as client:
        page = client.post(f"/tasks/{task}/run", headers={"accept": "text/html"})
        assert page.status_code == 409
        assert f"already has {limit} waiting to run" in html.unescape(page.text)
        assert "max_queued_runs_per_task" in page.text
        api = client.post(f"/tasks/{task}/run", headers={"accept": "application/json"})
        assert api.status_code == 409 and api.json()["error"]["code"] == "refused"
    with console.db() as db:
        queued = db.execute("select count(*) as n from public.agent_task_executions where task_id = %s",
                            (task,)).fetchone()["n"]
    assert queued == limit


def test_bulk__one_refusal_keeps_the_others_and_is_named_and_not_yours_is_not_found(
        console: Console, stack_state: stack.State) -> None:
    """POST /tasks/bulk runs the action on each ticked schedule in its own savepoint: a full
    backlog refuses one run now and the others are queued; the list names what was done and why
    one was not. Another user's schedule counts as not found and is left alone; bad requests are
    409 with the reason."""
    with console.db() as db:
        email = f"erin-{uuid.uuid4().hex[:6]}@example.test"
        uid = create_user(db, email)
        agent = create_agent(db, uid)
        full, free = create_task(db, uid, agent, name="Full one"), create_task(db, uid, agent, name="Free one")
        limit = db.execute("select scheduler.limit_int('max_queued_runs_per_task') as n").fetchone()["n"]
        for _ in range(limit):
            db.execute("select scheduler.enqueue_now(%s, 'manual', now() + interval '1 hour')", (full,))
        bobs = create_task(db, console.bob.id, console.bob.agent_id, name="Bob's own")
    token = stack.user_token(stack_state, str(uid), email)
    with _client(console, token) as client:
        r = client.post("/tasks/bulk", data={"action": "run", "ids": [str(full), str(free)]})
        assert r.status_code == 303
        listing = client.get(r.headers["location"])
        text = html.unescape(listing.text)
        assert "Queued a run of 1 schedule. 1 could not be:" in text
        assert f"already has {limit} waiting to run" in text
        r = client.post("/tasks/bulk", data={"action": "pause", "ids": [str(free), str(bobs)]})
        text = html.unescape(client.get(r.headers["location"]).text)
        assert "Paused 1 schedule. 1 could not be: a schedule was not found" in text
        for data in ({"action": "explode", "ids": [str(free)]}, {"action": "pause"},
                     {"action": "pause", "ids": ["not-a-uuid"]},
                     {"action": "pause", "ids": [str(uuid.uuid4()) for _ in range(101)]}):
            refused = client.post("/tasks/bulk", data=data, headers={"accept": "application/json"})
            assert refused.status_code == 409 and refused.json()["error"]["code"] == "refused", data
    with console.db() as db:
        rows = {r["id"]: r for r in db.execute(
            "select t.id, t.status,"
            " (select count(*) from public.agent_task_executions e where e.task_id = t.id) as runs"
            " from public.agent_tasks t where t.id = any(%s)", ([full, free, bobs],)).fetchall()}
    assert rows[full]["runs"] == limit and rows[free]["runs"] == 1
    assert rows[free]["status"] == "paused" and rows[bobs]["status"] == "active" and rows[bobs]["runs"] == 0


def test_webhooks__add_toggle_delete_and_another_users_are_not_found(console: Console,
                                                                     stack_state: stack.State) -> None:
    """The webhooks page: an endpoint added with its kinds (its secret shown to its owner), a URL the
    outbound policy refuses shown next to the field with nothing stored, disable / enable / delete,
    and another user's endpoint answering 404 to every action."""
    with console.db() as db:
        email = f"gus-{uuid.uuid4().hex[:6]}@example.test"
        uid = create_user(db, email)
        allowed = {m["kind"] for m in db.execute(
            "select distinct (regexp_matches(pg_get_constraintdef(oid), '''([a-z_]+)''', 'g'))[1] as kind"
            " from pg_constraint where conrelid = 'public.notifications'::regclass"
            " and conname = 'notifications_kind_check'").fetchall()}
    assert {k for k, _ in WEBHOOK_KINDS} == allowed  # the form offers every notification kind
    token = stack.user_token(stack_state, str(uid), email)
    with _client(console, token) as client:
        # (the local stack's policy allows plain HTTP and loopback, not private ranges)
        refused = client.post("/webhooks", data={"url": "https://10.1.2.3/in", "kinds": ["task_failed"]})
        assert refused.status_code == 422 and 'id="error-url"' in refused.text
        assert "url must not point at a private address" in refused.text
        assert client.post("/webhooks", data={"url": "https://hooks.example.com/in"}).status_code == 422  # no kind
        r = client.post("/webhooks", data={"url": "https://hooks.example.com/in", "description": "Ops channel",
                                           "kinds": ["task_failed", "task_paused"]})
        assert r.status_code == 303
        listing = client.get(r.headers["location"])
        assert "Webhook added" in listing.text and "https://hooks.example.com/in" in listing.text
        assert "task_failed, task_paused" in listing.text
        with console.db() as db:
            hook = db.execute("select id, secret, enabled from public.webhooks where user_id = %s", (uid,)).fetchone()
        assert hook is not None and hook["secret"] in listing.text and hook["enabled"]
        tested = client.post(f"/webhooks/{hook['id']}/test")
        assert tested.status_code == 303 and "Test delivery queued" in client.get(tested.headers["location"]).text
        with console.db() as db:
            sent = db.execute("select event from scheduler.webhook_deliveries where webhook_id = %s",
                              (hook["id"],)).fetchone()
        assert sent is not None and sent["event"] == "webhook.test"
        # the page's log of the endpoint's latest deliveries (public.list_webhook_deliveries)
        assert '<tr class="delivery status-' in client.get("/webhooks").text
        assert client.post(f"/webhooks/{hook['id']}/disable").status_code == 303
        # a disabled endpoint cannot be tested: a 409 with the reason
        off = client.post(f"/webhooks/{hook['id']}/test", headers={"accept": "application/json"})
        assert off.status_code == 409 and "is disabled" in off.json()["error"]["message"]
        assert "disabled" in client.get("/webhooks").text
    with _client(console, console.bob.token) as bob:
        assert hook["secret"] not in bob.get("/webhooks").text
        for action in ("enable", "disable", "delete", "test"):
            assert bob.post(f"/webhooks/{hook['id']}/{action}").status_code == 404
        assert bob.post(f"/webhooks/{hook['id']}/explode").status_code == 404
    with _client(console, token) as client:
        assert client.post(f"/webhooks/{hook['id']}/enable").status_code == 303
        with console.db() as db:
            assert db.execute("select enabled from public.webhooks where id = %s", (hook["id"],)).fetchone()["enabled"]
        assert client.post(f"/webhooks/{hook['id']}/delete").status_code == 303
        assert "No webhooks yet" in client.get("/webhooks").text
        # the per-user cap (SQLSTATE 54000) is a refusal shown on the form, not an outage
        with console.db() as db:
            for i in range(5):
                db.execute("insert into public.webhooks (user_id, url) values (%s, %s)",
                           (uid, f"https://hooks.example.com/{i}"))
        full = client.post("/webhooks", data={"url": "https://hooks.example.com/6", "kinds": ["info"]})
        assert full.status_code == 422 and "at most 5 webhooks (max_webhooks_per_user)" in full.text
