"""The web console in a real browser against the real stack (Postgres, chat function, worker, fake model).

A user's journey end to end, the same pages on a 390-px-wide phone, a second
user who sees none of the first user's rows, pages or live events, and
hostile message content that stays inert.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, expect

from tests.browser.conftest import Console, Person, shot, signed_in
from tests.conftest import create_agent, create_user
from tests.e2e.conftest import FakeLLM
from tests.e2e.workers import wait_for
from worker import stack

pytestmark = pytest.mark.e2e


def _new_conversation(page: Page) -> str:
    page.goto("/conversations")
    page.click("#new-conversation")
    page.wait_for_url(re.compile(r"/c/[0-9a-f-]{36}$"))
    return page.url.rsplit("/", 1)[1]


def _send(page: Page, text: str) -> None:
    page.fill("#message", text)
    page.press("#message", "Enter")


def _create_task(console: Console, person: Person, **fields: Any) -> uuid.UUID:
    cols: dict[str, Any] = {"user_id": person.id, "agent_id": person.agent_id, "name": "Task",
                            "prompt_template": "Say hello", "schedule_type": "manual", **fields}
    with console.db() as conn:
        row = conn.execute(
            f"insert into public.agent_tasks ({', '.join(cols)}) values ({', '.join(['%s'] * len(cols))})"
            " returning id", list(cols.values())).fetchone()
    assert row is not None
    return uuid.UUID(str(row["id"]))


def _wait_run(console: Console, task_id: Any) -> None:
    """Wait for the task's newest run to succeed (the worker runs it); the test then checks the page showed it."""
    with console.db() as conn:
        def done() -> bool:
            row = conn.execute("select status, error from public.agent_task_executions where task_id = %s"
                               " order by created_at desc limit 1", (task_id,)).fetchone()
            if row is not None and row["status"] in ("failed", "timed_out", "cancelled"):
                raise AssertionError(f"the run did not succeed: {row}\n{console.log.read_text()[-2000:]}")
            return row is not None and row["status"] == "succeeded"
        wait_for(done, 20, what=f"task {task_id} to run")


def test_journey__schedule_run_live_chat_tools_conversations_notifications(browser: Browser, console: Console) -> None:
    context = signed_in(browser, console, console.alice, viewport={"width": 1280, "height": 860})
    page = context.new_page()
    page.on("dialog", lambda d: d.accept())
    page.goto("/conversations")
    expect(page.locator(".who .email")).to_have_text(console.alice.email)
    conv_id = _new_conversation(page)
    shot(page, "desktop-chat-empty")

    # a schedule from a preset: the expression in words and the next five occurrences in its zone
    page.goto("/tasks")
    page.click("#preset-daily-summary")
    expect(page.locator("#name")).to_have_value("Daily summary")
    expect(page.locator("#cron_expression")).to_have_value("0 9 * * *")
    expect(page.locator("#cron-next li")).to_have_count(5)
    expect(page.locator("#cron-words")).to_contain_text("09:00")
    page.fill("#timezone", "Asia/Tokyo")
    page.dispatch_event("#timezone", "change")
    expect(page.locator("#cron-next li").first).to_contain_text("09:00:00+09:00")
    expect(page.locator("#cron-words")).to_contain_text("Asia/Tokyo")
    page.select_option("#cron_preset", "0 9 * * 1-5")
    expect(page.locator("#cron_expression")).to_have_value("0 9 * * 1-5")
    # the database's readable refusal appears next to the field it names, nothing is saved
    page.fill("#cron_expression", "0 25 * * *")
    expect(page.locator("#cron-error")).to_contain_text("hour")
    page.select_option("#conversation_id", conv_id)
    page.click("#save-task")
    expect(page.locator("#error-cron_expression")).to_contain_text("out of range")
    with console.db() as conn:
        assert conn.execute("select count(*) as n from public.agent_tasks where name = 'Daily summary'"
                            ).fetchone() == {"n": 0}
    page.fill("#cron_expression", "0 9 * * 1-5")
    page.select_option("#conversation_id", conv_id)
    shot(page, "desktop-schedule-form")
    page.click("#save-task")
    page.wait_for_url("**/tasks?created=*")
    expect(page.locator("#notice")).to_have_text("Schedule “Daily summary” created.")
    row = page.locator("tr.task", has_text="Daily summary")
    expect(row).to_contain_text("0 9 * * 1-5")
    expect(row).to_contain_text("Asia/Tokyo")
    task_id = row.get_attribute("data-id")
    with console.db() as conn:
        task = conn.execute("select * from public.agent_tasks where id = %s", (task_id,)).fetchone()
    assert task is not None and task["timezone"] == "Asia/Tokyo" and str(task["conversation_id"]) == conv_id
    assert task["next_run_at"] is None or task["next_run_at"].astimezone().minute == 0
    shot(page, "desktop-schedules")

    # run it now from one tab while the conversation is open in another: prompt and reply arrive live
    chat = context.new_page()
    chat.goto(f"/c/{conv_id}")
    chat.wait_for_function("document.body.dataset.liveReady === '1'")
    page.locator("tr.task", has_text="Daily summary").locator("button.run-now").click()
    page.wait_for_url(f"**/tasks/{task_id}/runs?queued=*")
    _wait_run(console, task_id)
    expect(page.locator("tr.run .status.succeeded")).to_have_count(1)  # live, no reload
    scheduled = chat.locator("article.msg.user.scheduled")
    expect(scheduled).to_have_count(1, timeout=10_000)
    expect(scheduled.locator(".scheduler-badge")).to_contain_text("Daily summary")
    expect(chat.locator("article.msg.assistant")).to_contain_text("Echo:")
    shot(chat, "desktop-chat-scheduled")

    # the badge links to the run in the history: status, trigger, attempt, duration, usage
    chat.locator(".scheduler-badge").click()
    chat.wait_for_url(f"**/tasks/{task_id}/runs#run-*")
    run = chat.locator("tr.run").first
    expect(run).to_contain_text("succeeded")
    expect(run).to_contain_text("manual")
    expect(run.locator("td[data-label=Usage]")).to_have_text(re.compile(r"^\d+$"))
    expect(run.locator("a.messages-link")).to_have_attribute("href", re.compile(conv_id))
    shot(chat, "desktop-run-history")

    # chat: typing indicator while streaming, a tool call shown with its structured result, and an error
    chat.goto(f"/c/{conv_id}")
    _send(chat, "[[sleep:700]] What is next?")
    expect(chat.locator("#typing")).to_be_visible()
    expect(chat.locator("article.msg.assistant").last).to_contain_text("What is next?")
    expect(chat.locator("#typing")).to_be_hidden()
    _send(chat, "[[tool:list_schedules:{}]]")
    tool = chat.locator("article.msg.assistant").last.locator("details.tool")
    expect(tool.locator("summary")).to_contain_text("using: list_schedules")
    expect(tool.locator("pre.result")).to_contain_text("Daily summary", use_inner_text=False)
    _send(chat, '[[tool:create_schedule:{"name": "Broken", "prompt": "x", "cron_expression": "61 * * * *"}]]')
    failed_tool = chat.locator("article.msg.assistant").last.locator("details.tool.error")
    expect(failed_tool.locator("summary")).to_contain_text("using: create_schedule — error")
    expect(failed_tool.locator("pre.result")).to_contain_text("minute", use_inner_text=False)

    # Shift+Enter adds a line, Enter would send; the counter warns near the limit
    chat.fill("#message", "first")
    chat.press("#message", "Shift+Enter")
    chat.type("#message", "second")
    expect(chat.locator("#message")).to_have_value("first\nsecond")
    chat.fill("#message", "x" * 9_500)
    chat.dispatch_event("#message", "input")
    expect(chat.locator("#counter")).to_have_class(re.compile(r"\bwarn\b"))
    expect(chat.locator("#counter")).to_contain_text("9,500 / 10,000")
    chat.fill("#message", "")
    shot(chat, "desktop-chat-tools")

    # older history pages on scroll, until the first message
    with console.db() as conn:
        conn.execute("""insert into public.chat_messages_v2 (conversation_id, user_id, role, content, created_at)
                        select %s, %s, 'user', 'old message ' || i, now() - interval '1 day' + i * interval '1 s'
                        from generate_series(1, 120) i""", (conv_id, console.alice.id))
    chat.goto(f"/c/{conv_id}")
    expect(chat.locator("#older")).to_have_count(1)
    old = chat.locator("article.msg", has_text="old message")
    first_page = old.count()
    assert 0 < first_page < 120

    def all_loaded() -> bool:
        chat.locator("#messages").evaluate("el => el.scrollTop = 0")
        return old.count() == 120 and chat.locator("#older").count() == 0

    wait_for(all_loaded, 15, interval_s=0.2, what="every older page to load on scroll")
    expect(chat.locator("article.msg").first).to_contain_text("old message 1")

    # rename, archive, delete (soft, after a confirmation)
    chat.fill("#title", "Morning planning")
    chat.click("#rename")
    expect(chat.locator(f"li.conv[data-id='{conv_id}'] .title")).to_have_text("Morning planning")
    chat.click("#archive")
    expect(chat.locator("#unarchive")).to_be_visible()
    chat.goto("/conversations")
    expect(chat.locator(f"li.conv[data-id='{conv_id}']")).to_have_count(0)
    chat.click("text=Show archived")
    expect(chat.locator(f"li.conv[data-id='{conv_id}']")).to_contain_text("archived")
    chat.on("dialog", lambda d: d.accept())
    chat.goto(f"/c/{conv_id}")
    chat.click("#delete-conversation")
    chat.wait_for_url("**/conversations")
    with console.db() as conn:
        row2 = conn.execute("select title, archived_at, deleted_at from public.conversation_sessions where id = %s",
                            (conv_id,)).fetchone()
    assert row2 is not None and row2["title"] == "Morning planning"
    assert row2["archived_at"] is not None and row2["deleted_at"] is not None
    chat.goto(f"/c/{conv_id}")
    expect(chat.locator("h1")).to_have_text("Not found")

    # a question from a scheduled run: the unread badge counts it live, "Answer" opens the conversation,
    # the reply resumes the task (which then completes), the notifications are marked read
    steps = [{"status": "needs_input", "question": "Which city should the weather note cover?"},
             {"status": "complete", "summary": "Weather note posted."}]
    asking = _create_task(console, console.alice, name="Weather note",
                          prompt_template=f"[[status:{json.dumps(steps)}]] Post a weather note.",
                          conversation_mode="new_per_run")
    page.goto("/notifications")
    page.wait_for_function("document.body.dataset.liveReady === '1'")
    expect(page.locator("#unread")).to_have_text("")
    with console.db() as conn:
        conn.execute("select scheduler.enqueue_now(%s)", (asking,))
    expect(page.locator("#unread")).to_have_text("1", timeout=20_000)
    note = page.locator("li.note.unread", has_text="Weather note")
    expect(note).to_have_count(1)
    shot(page, "desktop-notifications")
    note.locator("a.answer").click()
    page.wait_for_url(re.compile(r"/c/[0-9a-f-]{36}$"))
    expect(page.locator("article.msg.assistant").last).to_contain_text("Which city")
    _send(page, "Berlin")
    expect(page.locator("article.msg.user").last).to_contain_text("Berlin")
    with console.db() as conn:
        wait_for(lambda: conn.execute("select 1 from public.agent_tasks where id = %s and status = 'completed'",
                                      (asking,)).fetchone(), 20, what="the answer to resume and complete the task")
        resumed = conn.execute("select status from public.agent_task_executions where task_id = %s"
                               " and trigger_type = 'user_reply'", (asking,)).fetchall()
    assert resumed == [{"status": "succeeded"}]
    page.goto("/notifications")
    question = page.locator("li.note", has_text="Which city")
    question.locator("button.mark-read").click()
    expect(page.locator("li.note", has_text="Which city")).not_to_have_class(re.compile(r"\bunread\b"))
    page.click("#mark-all-read")
    expect(page.locator("li.note.unread")).to_have_count(0)
    expect(page.locator("#unread")).to_have_text("")
    with console.db() as conn:
        assert conn.execute("select count(*) as n from public.notifications where user_id = %s and read_at is null",
                            (console.alice.id,)).fetchone() == {"n": 0}
    context.close()


def test_mobile_390__the_main_pages_fit_and_work(browser: Browser, console: Console) -> None:
    context = signed_in(browser, console, console.alice, viewport={"width": 390, "height": 844},
                        is_mobile=True, has_touch=True)
    page = context.new_page()
    conv_id = _new_conversation(page)
    _send(page, "Hello from a phone")
    expect(page.locator("article.msg.assistant").last).to_contain_text("Echo: Hello from a phone")
    shot(page, "mobile-chat")
    task_id = _create_task(console, console.alice, name="Phone task")
    pages = {"mobile-conversations": "/conversations", "mobile-schedules": "/tasks",
             "mobile-schedule-form": "/tasks/new?preset=weekly-digest",
             "mobile-run-history": f"/tasks/{task_id}/runs", "mobile-notifications": "/notifications",
             "mobile-webhooks": "/webhooks"}
    for name, path in pages.items():
        page.goto(path)
        expect(page.locator("header.top nav")).to_be_visible()
        width = page.evaluate("document.scrollingElement.scrollWidth")
        assert width <= 390, f"{path} is {width} px wide at a 390-px viewport"
        shot(page, name)
    page.goto("/tasks/new?preset=weekly-digest")
    expect(page.locator("#cron-next li")).to_have_count(5)
    page.goto("/tasks")
    page.locator("tr.task", has_text="Phone task").locator("button.run-now").click()
    page.wait_for_url(f"**/tasks/{task_id}/runs?queued=*")
    _wait_run(console, task_id)
    expect(page.locator("tr.run .status.succeeded")).to_have_count(1)
    page.goto(f"/c/{conv_id}")
    expect(page.locator("#composer")).to_be_visible()
    context.close()


def test_second_user__sees_none_of_the_first_users_rows_pages_or_live_events(browser: Browser,
                                                                             console: Console) -> None:
    alice, bob = console.alice, console.bob
    task_id = _create_task(console, alice, name="Alice's secret schedule")
    with console.db() as conn:
        conv = conn.execute("insert into public.conversation_sessions (user_id, agent_id, title)"
                            " values (%s, %s, 'Alice private') returning id", (alice.id, alice.agent_id)).fetchone()
        note = conn.execute("insert into public.notifications (user_id, kind, title) values (%s, 'info',"
                            " 'for alice only') returning id", (alice.id,)).fetchone()
    assert conv is not None and note is not None
    context = signed_in(browser, console, bob)
    page = context.new_page()
    # record every live event bob's browser receives
    page.add_init_script("""
        window.__live = [];
        const Original = window.EventSource;
        window.EventSource = function (url) {
          const source = new Original(url);
          source.addEventListener('live', (ev) => window.__live.push(JSON.parse(ev.data)));
          return source;
        };""")
    page.goto("/tasks")
    page.wait_for_function("document.body.dataset.liveReady === '1'")
    expect(page.locator("body")).not_to_contain_text("Alice's secret schedule")
    for path in (f"/c/{conv['id']}", f"/tasks/{task_id}/runs", f"/tasks/{task_id}/edit",
                 f"/c/{uuid.uuid4()}", f"/tasks/{uuid.uuid4()}/runs"):
        response = page.goto(path)
        assert response is not None and response.status == 404, path
        expect(page.locator("h1")).to_have_text("Not found")
    page.goto("/conversations")
    expect(page.locator("body")).not_to_contain_text("Alice private")
    page.goto("/notifications")
    expect(page.locator("body")).not_to_contain_text("for alice only")
    # bob's forged actions on alice's rows answer like missing rows and change nothing
    for path in (f"/tasks/{task_id}/run", f"/tasks/{task_id}/pause", f"/tasks/{task_id}/delete",
                 f"/c/{conv['id']}/delete", f"/notifications/{note['id']}/read"):
        response = page.request.post(path, headers={"origin": console.url})
        assert response.status == 404, (path, response.status)
    with console.db() as conn:
        assert conn.execute("select status from public.agent_tasks where id = %s", (task_id,)).fetchone() == {
            "status": "active"}
        assert conn.execute("select count(*) as n from public.agent_task_executions where task_id = %s",
                            (task_id,)).fetchone() == {"n": 0}
        assert conn.execute("select deleted_at from public.conversation_sessions where id = %s",
                            (conv["id"],)).fetchone() == {"deleted_at": None}
        assert conn.execute("select read_at from public.notifications where id = %s",
                            (note["id"],)).fetchone() == {"read_at": None}
    # alice's rows change (a run with its messages, a notification) while bob's page listens ...
    page.goto("/notifications")
    page.wait_for_function("document.body.dataset.liveReady === '1'")
    with console.db() as conn:
        conn.execute("select scheduler.enqueue_now(%s)", (task_id,))
        wait_for(lambda: conn.execute("select 1 from public.agent_task_executions where task_id = %s"
                                      " and status = 'succeeded'", (task_id,)).fetchone(), 20,
                 what="alice's run to finish")
        conn.execute("insert into public.notifications (user_id, kind, title) values (%s, 'info', 'alice again')",
                     (alice.id,))
        # ... then one of bob's own: it arrives, so the stream was live all along
        bobs = conn.execute("insert into public.notifications (user_id, kind, title) values (%s, 'info', 'for bob')"
                            " returning id", (bob.id,)).fetchone()
    assert bobs is not None
    page.wait_for_function("window.__live.some(e => e.t === 'notifications')")
    events = page.evaluate("window.__live")
    assert events == [{"t": "notifications", "c": None, "ids": [str(bobs["id"])], "n": 1}], events
    expect(page.locator("#unread")).to_have_text("1")
    expect(page.locator("li.note", has_text="for bob")).to_have_count(1)  # the live region refreshed
    expect(page.locator("body")).not_to_contain_text("alice again")
    context.close()


def test_hostile_content__is_shown_as_text_and_never_runs(browser: Browser, console: Console) -> None:
    context = signed_in(browser, console, console.alice)
    page = context.new_page()
    page.add_init_script("window.__pwned = 0;")
    conv_id = _new_conversation(page)
    hostile = ('<img src=x onerror="window.__pwned=1"><script>window.__pwned=2</script>'
               ' [link](javascript:window.__pwned=3) <iframe src="javascript:window.__pwned=4"></iframe>')
    _send(page, hostile)
    assistant = page.locator("article.msg.assistant").first
    expect(assistant).to_contain_text("Echo:")
    task_id = _create_task(console, console.alice, name='<b onmouseover="window.__pwned=5">bold</b>',
                           conversation_id=conv_id)
    with console.db() as conn:
        conn.execute("select scheduler.enqueue_now(%s)", (task_id,))
    expect(page.locator(".scheduler-badge")).to_contain_text('<b onmouseover="window.__pwned=5">bold</b>',
                                                              timeout=20_000)
    page.reload()
    for message in (page.locator("article.msg.user").first, assistant):
        expect(message).to_contain_text("<script>window.__pwned=2</script>")
    messages = page.locator("#messages")
    assert messages.locator("img, script, iframe, b").count() == 0
    assert messages.locator("a[href^='javascript']").count() == 0
    page.locator(".scheduler-badge").hover()
    assert page.evaluate("window.__pwned") == 0
    # the stored content is the user's text, unchanged
    with console.db() as conn:
        stored = conn.execute("select content from public.chat_messages_v2 where conversation_id = %s"
                              " and role = 'user' order by created_at limit 1", (conv_id,)).fetchone()
    assert stored == {"content": hostile}
    assert json.dumps(hostile)  # the payload really contained markup
    context.close()


def test_schedules__every_type_toggle_edit_cancel_retry_delete_and_the_shortcut(browser: Browser,
                                                                                console: Console) -> None:
    context = signed_in(browser, console, console.alice)
    page = context.new_page()
    page.on("dialog", lambda d: d.accept())
    # Alt+Shift+N opens a new conversation from any conversation page
    page.goto("/conversations")
    before = page.url
    page.keyboard.press("Alt+Shift+KeyN")
    page.wait_for_url(re.compile(r"/c/[0-9a-f-]{36}$"))
    assert page.url != before
    # an interval schedule and a one-off one, through the form
    page.goto("/tasks/new")
    page.fill("#name", "Every ten minutes")
    page.check("input[name=schedule_type][value=interval]")
    expect(page.locator("#interval_seconds")).to_be_visible()
    expect(page.locator("#cron_expression")).to_be_hidden()
    page.fill("#interval_seconds", "600")
    page.fill("#prompt_template", "Check {{NOW}} for {{TEAM}}")
    page.fill("#prompt_variables", "TEAM=platform")
    page.select_option("#conversation_mode", "new_per_run")
    page.click("#save-task")
    page.wait_for_url("**/tasks?created=*")
    page.goto("/tasks/new")
    page.fill("#name", "Once at new year")
    page.check("input[name=schedule_type][value=once]")
    page.fill("#run_at", "2031-01-01T09:30")
    page.fill("#timezone", "Europe/Berlin")
    page.fill("#prompt_template", "Happy new year, {{UNKNOWN}}")
    page.click("#save-task")
    expect(page.locator("#error-prompt_template")).to_contain_text("UNKNOWN")  # the database's refusal
    page.fill("#prompt_template", "Happy new year")
    page.click("#save-task")
    page.wait_for_url("**/tasks?created=*")
    with console.db() as conn:
        rows = {r["name"]: r for r in conn.execute(
            "select name, schedule_type, interval_seconds, run_at, timezone, prompt_variables, conversation_mode"
            " from public.agent_tasks where user_id = %s", (console.alice.id,)).fetchall()}
    assert rows["Every ten minutes"]["interval_seconds"] == 600
    assert rows["Every ten minutes"]["prompt_variables"] == {"TEAM": "platform"}
    assert rows["Every ten minutes"]["conversation_mode"] == "new_per_run"
    assert rows["Once at new year"]["run_at"].isoformat() == "2031-01-01T08:30:00+00:00"
    # the enabled toggle pauses and resumes; Edit keeps the type and changes the name
    row = page.locator("tr.task", has_text="Once at new year")
    row.locator("button.toggle").click()
    expect(page.locator("tr.task", has_text="Once at new year").locator(".status")).to_have_text("paused")
    page.locator("tr.task", has_text="Once at new year").locator("button.toggle").click()
    expect(page.locator("tr.task", has_text="Once at new year").locator(".status")).to_have_text("active")
    page.locator("tr.task", has_text="Once at new year").locator("text=Edit").click()
    expect(page.locator("#run_at")).to_have_value("2031-01-01T09:30")
    page.fill("#name", "Once at new year (edited)")
    page.click("#save-task")
    expect(page.locator("tr.task", has_text="Once at new year (edited)")).to_have_count(1)
    # cancel a running run, retry it, then delete the schedule after the confirmation
    slow = _create_task(console, console.alice, name="Slow one", prompt_template="[[sleep:2500]] slowly")
    page.goto("/tasks")
    page.locator("tr.task", has_text="Slow one").locator("button.run-now").click()
    page.wait_for_url(f"**/tasks/{slow}/runs?queued=*")
    expect(page.locator("tr.run .status.running")).to_have_count(1, timeout=10_000)
    page.locator("tr.run").first.locator("button.danger").click()
    expect(page.locator("tr.run .status.cancelled")).to_have_count(1)
    page.locator("tr.run", has_text="cancelled").locator("text=Retry").click()
    expect(page.locator("tr.run")).to_have_count(2)
    expect(page.locator("tr.run").first).to_contain_text("retry")
    _wait_run(console, slow)
    expect(page.locator("tr.run .status.succeeded")).to_have_count(1)
    page.goto("/tasks")
    page.locator("tr.task", has_text="Slow one").locator("button.danger").click()
    expect(page.locator("tr.task", has_text="Slow one")).to_have_count(0)
    with console.db() as conn:
        assert conn.execute("select 1 from public.agent_tasks where id = %s", (slow,)).fetchone() is None
    context.close()


def test_live_region__a_change_during_a_re_read_is_shown(browser: Browser, console: Console,
                                                        stack_state: stack.State) -> None:
    """A change that arrives while the live region is being re-read: the newer re-read's rows
    show. Each re-read used to swap the element it was scheduled for; when the older re-read
    swapped it first, the newer one landed on a detached element and its rows never showed.
    Here every re-read resolves 1 s after the server answered (a slow network), so the second
    change always arrives while the first re-read is in flight."""
    with console.db() as conn:
        email = f"erin-{uuid.uuid4().hex[:6]}@example.test"
        uid = create_user(conn, email)
        erin = Person(uid, email, create_agent(conn, uid), stack.user_token(stack_state, str(uid), email))
    context = signed_in(browser, console, erin)
    context.add_init_script("""
        const fetchNow = window.fetch.bind(window);
        window.fetch = async (url, init) => {
          const res = await fetchNow(url, init);
          if (init && init.headers && init.headers["x-live"]) await new Promise((r) => setTimeout(r, 1000));
          return res;
        };""")
    page = context.new_page()
    page.goto("/notifications")
    page.wait_for_function("document.body.dataset.liveReady === '1'")
    page.wait_for_timeout(1500)  # the re-read every (re)connection starts is over
    with console.db() as conn:
        conn.execute("insert into public.notifications (user_id, kind, title) values (%s, 'info', 'First change')",
                     (uid,))
        time.sleep(0.5)  # its re-read started 150 ms after the event and resolves 1 s later
        conn.execute("insert into public.notifications (user_id, kind, title) values (%s, 'info', 'Second change')",
                     (uid,))
    expect(page.locator("li.note", has_text="Second change")).to_have_count(1, timeout=10_000)
    expect(page.locator("li.note", has_text="First change")).to_have_count(1)
    context.close()


def test_chat__the_agent_is_told_the_time_in_the_browsers_zone(browser: Browser, console: Console,
                                                               fake_llm: FakeLLM) -> None:
    """The page sends the browser's time zone with each message; the chat function puts the
    time in that zone at the end of the system prompt, so "tomorrow at 9" means the user's 9."""
    context = signed_in(browser, console, console.bob, timezone_id="Asia/Tokyo")
    page = context.new_page()
    _new_conversation(page)
    marker = f"tz-{uuid.uuid4().hex[:8]}"
    _send(page, f"Remind me tomorrow at 9 {marker}")
    expect(page.locator("article.msg.assistant").last).to_contain_text(marker)
    [request] = [r for r in fake_llm.requests()
                 if any(marker in str(m.get("content")) for m in r["messages"] if m["role"] == "user")]
    now = request["messages"][0]["content"].split("\n\n")[-1]
    assert "in the user's time zone, Asia/Tokyo (UTC+09:00)" in now, now
    context.close()


def test_schedule_form__every_option_enabled_box_and_what_each_save_did(browser: Browser,
                                                                          console: Console) -> None:
    """The form sets what the table holds (description, window, run cap, overlap and misfire
    rules, notifications, instructions), creates a schedule paused when Enabled is off, says what
    each save and run now did, and shows the database's refusal of a bad window next to it."""
    context = signed_in(browser, console, console.bob)
    page = context.new_page()
    page.goto("/tasks/new")
    page.fill("#name", "Options galore")
    page.fill("#description", "Checks the build every morning")
    page.uncheck("#enabled")
    page.fill("#cron_expression", "30 7 * * 1-5")
    page.fill("#timezone", "Europe/Berlin")
    page.fill("#starts_at", "2030-01-01T00:00")
    page.fill("#ends_at", "2030-06-30T18:00")
    page.fill("#max_runs", "5")
    page.fill("#prompt_template", "How is the build?")
    page.fill("#system_addon", "Answer in one line.")
    page.select_option("#overlap_policy", "queue")
    page.select_option("#misfire_policy", "skip")
    page.uncheck("input[name=notify_on][value=failure]")
    page.check("input[name=notify_on][value=success]")
    page.check("input[name=notify_on][value=change]")
    page.click("#save-task")
    page.wait_for_url("**/tasks?created=*")
    expect(page.locator("#notice")).to_have_text(
        "Schedule “Options galore” created. It is paused: it runs once you enable it.")
    with console.db() as conn:
        task = conn.execute("select * from public.agent_tasks where user_id = %s and name = 'Options galore'",
                            (console.bob.id,)).fetchone()
    assert task is not None
    assert (task["description"], task["system_addon"], task["max_runs"]) == (
        "Checks the build every morning", "Answer in one line.", 5)
    assert (task["overlap_policy"], task["misfire_policy"], task["notify_on"]) == (
        "queue", "skip", ["success", "change"])
    assert task["starts_at"].isoformat() == "2029-12-31T23:00:00+00:00"  # Berlin's midnight
    assert task["ends_at"].isoformat() == "2030-06-30T16:00:00+00:00"  # summer time
    assert task["status"] == "paused" and task["next_run_at"] is None

    # the edit form shows every option back; Enabled on resumes it; the notice says "saved"
    page.goto(f"/tasks/{task['id']}/edit")
    expect(page.locator("#ends_at")).to_have_value("2030-06-30T18:00")
    expect(page.locator("#overlap_policy")).to_have_value("queue")
    expect(page.locator("input[name=notify_on][value=change]")).to_be_checked()
    expect(page.locator("#enabled")).not_to_be_checked()
    page.check("#enabled")
    page.click("#save-task")
    page.wait_for_url("**/tasks?saved=*")
    expect(page.locator("#notice")).to_have_text("Schedule “Options galore” saved.")
    with console.db() as conn:
        row = conn.execute("select status, next_run_at from public.agent_tasks where id = %s",
                           (task["id"],)).fetchone()
    assert row is not None and row["status"] == "active" and row["next_run_at"] is not None

    # a window that ends before it starts is refused, and nothing changes
    page.goto(f"/tasks/{task['id']}/edit")
    page.fill("#ends_at", "2029-06-30T18:00")
    page.click("#save-task")
    expect(page.locator("#error-ends_at")).to_contain_text("must be later than the start of the schedule")
    with console.db() as conn:
        row = conn.execute("select ends_at from public.agent_tasks where id = %s", (task["id"],)).fetchone()
    assert row is not None and row["ends_at"].isoformat() == "2030-06-30T16:00:00+00:00"

    # run now: the runs page says what happens next
    page.goto("/tasks")
    page.locator("tr.task", has_text="Options galore").locator("button.run-now").click()
    page.wait_for_url(f"**/tasks/{task['id']}/runs?queued=*")
    expect(page.locator("#notice")).to_contain_text("Run queued")
    context.close()


def test_schedules__tick_several_pause_resume_and_delete_them_at_once(browser: Browser, console: Console,
                                                                      stack_state: stack.State) -> None:
    """Bulk actions from the list: ticked rows (kept across a live re-read) paused together,
    "All on this page" resumed, two deleted after the confirmation."""
    with console.db() as conn:
        email = f"fay-{uuid.uuid4().hex[:6]}@example.test"
        uid = create_user(conn, email)
        fay = Person(uid, email, create_agent(conn, uid), stack.user_token(stack_state, str(uid), email))
    names = ["Bulk one", "Bulk two", "Bulk three"]
    ids = [_create_task(console, fay, name=n) for n in names]
    context = signed_in(browser, console, fay)
    page = context.new_page()
    page.on("dialog", lambda d: d.accept())
    page.goto("/tasks")
    page.wait_for_function("document.body.dataset.liveReady === '1'")
    page.locator("tr.task", has_text="Bulk one").locator("input.pick").check()
    page.locator("tr.task", has_text="Bulk three").locator("input.pick").check()
    # a change arrives while the boxes are ticked: the re-read keeps them
    with console.db() as conn:
        conn.execute("update public.agent_tasks set name = 'Bulk two (renamed)' where id = %s", (ids[1],))
    expect(page.locator("tr.task", has_text="Bulk two (renamed)")).to_have_count(1)
    expect(page.locator("tr.task", has_text="Bulk one").locator("input.pick")).to_be_checked()
    page.select_option("#bulk-action", "pause")
    page.click("#bulk-apply")
    expect(page.locator("#notice")).to_have_text("Paused 2 schedules.")
    with console.db() as conn:
        status = {r["name"]: r["status"] for r in conn.execute(
            "select name, status from public.agent_tasks where user_id = %s", (uid,)).fetchall()}
    assert status == {"Bulk one": "paused", "Bulk two (renamed)": "active", "Bulk three": "paused"}
    page.check("#select-all")
    page.select_option("#bulk-action", "resume")
    page.click("#bulk-apply")
    expect(page.locator("#notice")).to_contain_text("Resumed 3 schedules.")
    expect(page.locator("tr.task .status.paused")).to_have_count(0)
    page.locator("tr.task", has_text="Bulk one").locator("input.pick").check()
    page.locator("tr.task", has_text="Bulk two").locator("input.pick").check()
    page.select_option("#bulk-action", "delete")
    page.click("#bulk-apply")
    expect(page.locator("#notice")).to_have_text("Deleted 2 schedules.")
    expect(page.locator("tr.task")).to_have_count(1)
    expect(page.locator("tr.task")).to_contain_text("Bulk three")
    context.close()
