"""The console's routes. Every user route runs its SQL in `db.as_user` (the user's RLS); a row that
is not the user's is answered exactly like one that does not exist (404)."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode
from zoneinfo import ZoneInfo, available_timezones

import aiohttp
import psycopg
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.templating import Jinja2Templates

from worker.console import render
from worker.console.auth import OPERATOR_COOKIE, USER_COOKIE, TokenError, User, operator_ok
from worker.console.db import as_operator, as_user
from worker.templates import BUILTIN_VARIABLES

HERE = Path(__file__).parent
templates = Jinja2Templates(directory=str(HERE / "templates"))
templates.env.filters["markdown"] = render.markdown
templates.env.filters["tojson_pretty"] = lambda v: json.dumps(v, indent=2, default=str, ensure_ascii=False)

MESSAGE_LIMIT = 10_000
TITLE_LIMIT = 200
SSE_KEEPALIVE_S = 15.0

CRON_PRESETS = [("0 9 * * *", "Daily at 9:00"), ("0 9 * * 1-5", "Weekdays at 9:00"),
                ("0 9 * * 1", "Mondays at 9:00"), ("0 * * * *", "Hourly")]
TASK_PRESETS: dict[str, dict[str, Any]] = {
    "daily-summary": {"name": "Daily summary", "schedule_type": "cron", "cron_expression": "0 9 * * *",
                      "prompt_template": "Summarise what happened on {{YESTERDAY}} in five bullet points."},
    "weekly-digest": {"name": "Weekly digest", "schedule_type": "cron", "cron_expression": "0 9 * * 1",
                      "prompt_template": "Write a digest of {{LAST_7_DAYS}}: highlights, open questions, next steps."},
    "code-review": {"name": "Code review", "schedule_type": "cron", "cron_expression": "0 9 * * 1-5",
                    "prompt_template": "Review the open pull requests of {{REPO}} and list what needs attention today.",
                    "prompt_variables": {"REPO": "my-org/my-repo"}},
}
TIMEZONES = sorted(available_timezones())
TASK_FIELDS = ["name", "description", "schedule_type", "cron_expression", "interval_seconds", "run_at", "timezone",
               "starts_at", "ends_at", "max_runs", "prompt_template", "prompt_variables", "system_addon", "priority",
               "max_retries", "timeout_seconds", "overlap_policy", "misfire_policy", "notify_on",
               "conversation_mode", "conversation_id"]
# what the form offers for notify_on (a question is always notified)
NOTIFY_CHOICES = [("failure", "a run fails"), ("success", "every run succeeds"),
                  ("change", "a reply differs from the last one")]
# statuses whose "Enabled" box the form shows: on = active (or waiting for an answer), off = paused
ENABLED_STATUSES = ("active", "waiting_input", "paused")

Handler = Callable[[Request], Awaitable[Response]]


# --- helpers ------------------------------------------------------------------------


class NotFound(Exception):
    """The row does not exist or is not the user's: the same answer for both."""


class Refused(Exception):
    """The database refused an action with a readable reason (answered 409 with code `refused`)."""


# SQLSTATE classes of a database in trouble (connection, resources, operator intervention, system,
# internal), as opposed to a refusal of the request: psycopg files both under OperationalError
# (a cap's 54000 or a state's 55000 is a readable refusal, not an outage)
_TROUBLE_CLASSES = ("08", "53", "57", "58", "XX")


def is_refusal(exc: psycopg.Error) -> bool:
    """The database refused the request with a reason (shown to the user), rather than failing."""
    return exc.sqlstate is not None and not exc.sqlstate.startswith(_TROUBLE_CLASSES)


async def act(conn_cm: Any, statement: str, params: tuple[Any, ...]) -> dict[str, Any] | None:
    """Run one action statement in `conn_cm` (db.as_user or db.as_operator); the row it returns.
    "Not found" from the SQL function becomes NotFound, any other refusal Refused."""
    try:
        async with conn_cm as conn:
            row: dict[str, Any] | None = await (await conn.execute(statement, params)).fetchone()
            return row
    except psycopg.errors.NoDataFound:
        raise NotFound from None
    except psycopg.Error as exc:
        if not is_refusal(exc):
            raise
        raise Refused(sql_message(exc)) from exc


# the keyset bound of a first page of messages: above every (created_at, id)
FIRST_PAGE = (datetime.max.replace(tzinfo=UTC), uuid.UUID(int=(1 << 128) - 1))


def error_json(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


def current_user(request: Request) -> User | None:
    token = request.cookies.get(USER_COOKIE)
    if not token:
        return None
    try:
        user: User = request.app.state.verifier.verify(token)
    except TokenError:
        return None
    return user


def page(request: Request, name: str, user: User | None, status: int = 200, **context: Any) -> Response:
    return templates.TemplateResponse(request, name, {"user": user, "settings": request.app.state.settings,
                                                      "message_limit": MESSAGE_LIMIT, **context},
                                      status_code=status)


def signed_in(handler: Callable[[Request, User], Awaitable[Response]]) -> Handler:
    """Route decorator: the verified user, or the sign-in page (JSON 401 for API calls)."""
    async def wrapper(request: Request) -> Response:
        user = current_user(request)
        if user is None:
            if request.url.path.startswith(("/api/", "/events")) or request.headers.get("accept") == "application/json":
                return error_json(401, "not_signed_in", "sign in first")
            return RedirectResponse("/login", status_code=303)
        try:
            return await handler(request, user)
        except NotFound:
            return page(request, "not_found.html", user, status=404)
    wrapper.__name__ = handler.__name__
    return wrapper


def path_uuid(request: Request, name: str = "id") -> uuid.UUID:
    try:
        return uuid.UUID(request.path_params[name])
    except ValueError as exc:
        raise NotFound from exc


def pool(request: Request) -> Any:
    return request.app.state.pool


def cursor_of(row: dict[str, Any]) -> str:
    return f"{row['created_at'].isoformat()}|{row['id']}"


def parse_cursor(value: str | None) -> tuple[datetime, uuid.UUID] | None:
    if not value:
        return None
    try:
        at, _, rid = value.partition("|")
        return datetime.fromisoformat(at), uuid.UUID(rid)
    except ValueError:
        return None


def back(request: Request, default: str) -> RedirectResponse:
    """After a form action: where the form came from (same origin only), else `default`."""
    target = request.headers.get("referer", "")
    base = str(request.base_url)
    return RedirectResponse(target if target.startswith(base) else default, status_code=303)


def sql_message(exc: psycopg.Error) -> str:
    diag = exc.diag
    text = diag.message_primary or str(exc)
    return text + (f" ({diag.message_hint})" if diag.message_hint else "")


def field_of(exc: psycopg.Error, fields: list[str]) -> str:
    """Which form field a database refusal names (column, constraint or message), else 'form'."""
    diag = exc.diag
    if diag.column_name in fields:
        return str(diag.column_name)
    haystack = f"{diag.constraint_name or ''} {diag.message_primary or ''}"
    for name in sorted(fields, key=len, reverse=True):
        if name in haystack:
            return name
    if "cron" in haystack:
        return "cron_expression"
    if "time zone" in haystack or "timezone" in haystack:
        return "timezone"
    return "form"


# --- sign-in ------------------------------------------------------------------------


async def login_page(request: Request) -> Response:
    return page(request, "login.html", current_user(request), error=None)


def _signed_in_response(token: str, target: str = "/conversations") -> Response:
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(USER_COOKIE, token, httponly=True, samesite="strict", secure=False, path="/")
    return response


async def login(request: Request) -> Response:
    form = await request.form()
    token = str(form.get("access_token", "")).strip()
    try:
        request.app.state.verifier.verify(token)
    except TokenError as exc:
        return page(request, "login.html", None, status=401, error=str(exc))
    return _signed_in_response(token)


async def login_demo(request: Request) -> Response:
    settings = request.app.state.settings
    if not settings.demo_user_email or settings.demo_token is None:
        return error_json(404, "not_found", "demo sign-in is only offered on the local stack")
    async with as_operator(pool(request)) as conn:
        row = await (await conn.execute("select id from auth.users where email = %s",
                                        (settings.demo_user_email,))).fetchone()
    if row is None:
        return page(request, "login.html", None, status=404,
                    error=f"no demo user {settings.demo_user_email}: run `make demo` first")
    return _signed_in_response(settings.demo_token(str(row["id"]), settings.demo_user_email))


async def logout(request: Request) -> Response:
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(USER_COOKIE, path="/")
    return response


async def home(request: Request) -> Response:
    return RedirectResponse("/conversations" if current_user(request) else "/login", status_code=303)


# --- conversations ------------------------------------------------------------------


async def _agents(conn: Any) -> list[dict[str, Any]]:
    return list(await (await conn.execute(
        "select id, name from public.agents order by created_at, id")).fetchall())


async def _keyset_page(conn: Any, query: str, args: tuple[Any, ...], limit: int, cursor: str | None,
                       *rest: Any) -> tuple[list[dict[str, Any]], str | None]:
    """A page of one of the public list functions (`query` takes args, the page size, the cursor,
    then rest): the rows, and the cursor of the next page when there is one. The database owns
    the cursor's format; one it cannot read is a page that does not exist."""
    try:
        rows = list(await (await conn.execute(query, (*args, limit + 1, cursor or None, *rest))).fetchall())
    except psycopg.errors.InvalidParameterValue:
        raise NotFound from None
    more = len(rows) > limit
    rows = rows[:limit]
    return rows, (rows[-1]["next_cursor"] if more and rows else None)


async def _conversation_list(conn: Any, agent_id: uuid.UUID, cursor: str | None, archived: bool,
                             limit: int = 20) -> tuple[list[dict[str, Any]], str | None]:
    return await _keyset_page(conn, "select * from public.list_conversations(%s, %s, %s, %s)", (agent_id,),
                              limit, cursor, archived)


def _agent_param(request: Request, agents: list[dict[str, Any]]) -> dict[str, Any] | None:
    wanted = request.query_params.get("agent")
    for agent in agents:
        if wanted and str(agent["id"]) == wanted:
            return agent
    return agents[0] if agents else None


@signed_in
async def conversations(request: Request, user: User) -> Response:
    archived = request.query_params.get("archived") == "1"
    async with as_user(pool(request), user) as conn:
        agents = await _agents(conn)
        agent = _agent_param(request, agents)
        rows: list[dict[str, Any]] = []
        next_cursor: str | None = None
        if agent is not None:
            rows, next_cursor = await _conversation_list(conn, agent["id"], request.query_params.get("cursor"),
                                                         archived)
    return page(request, "conversations.html", user, agents=agents, agent=agent, conversations=rows,
                next_cursor=next_cursor, archived=archived, current=None)


@signed_in
async def conversation_new(request: Request, user: User) -> Response:
    form = await request.form()
    try:
        agent_id = uuid.UUID(str(form.get("agent_id", "")))
    except ValueError:
        raise NotFound from None
    try:
        async with as_user(pool(request), user) as conn:
            row = await (await conn.execute(
                "insert into public.conversation_sessions (agent_id) values (%s) returning id",
                (agent_id,))).fetchone()
    except psycopg.errors.ForeignKeyViolation:
        raise NotFound from None
    assert row is not None
    return RedirectResponse(f"/c/{row['id']}", status_code=303)


# The conversation view pages messages itself: it also reads the messages
# after one (live updates, oldest first) and each scheduled message's task,
# which public.list_messages (older pages only) does not give. The same
# keyset on (created_at, id) and the same index.
MESSAGE_SQL = """
    select m.id, m.role, m.content, m.metadata, m.tool_calls, m.execution_id, m.created_at,
           t.name as task_name, t.id as task_id
    from public.chat_messages_v2 m
    left join public.agent_tasks t
      on m.metadata->>'source' = 'scheduler' and t.id = (m.metadata->>'task_id')::uuid
    where m.conversation_id = %s and {where}
    order by m.created_at {order}, m.id {order}
    limit %s
"""


async def _messages(conn: Any, conversation_id: uuid.UUID, limit: int, before: tuple[datetime, uuid.UUID] | None = None,
                    after: tuple[datetime, uuid.UUID] | None = None) -> list[dict[str, Any]]:
    if after is not None:
        query = MESSAGE_SQL.format(where="(m.created_at, m.id) > (%s, %s)", order="asc")
        return list(await (await conn.execute(query, (conversation_id, *after, limit))).fetchall())
    bound = before or FIRST_PAGE
    query = MESSAGE_SQL.format(where="(m.created_at, m.id) < (%s, %s)", order="desc")
    rows = list(await (await conn.execute(query, (conversation_id, *bound, limit))).fetchall())
    rows.reverse()
    return rows


async def _conversation(conn: Any, conversation_id: uuid.UUID) -> dict[str, Any]:
    row = await (await conn.execute(
        "select c.*, a.name as agent_name from public.conversation_sessions c"
        " join public.agents a on a.id = c.agent_id where c.id = %s and c.deleted_at is null",
        (conversation_id,))).fetchone()
    if row is None:
        raise NotFound
    return dict(row)


@signed_in
async def conversation(request: Request, user: User) -> Response:
    cid = path_uuid(request)
    size = request.app.state.settings.page_size
    async with as_user(pool(request), user) as conn:
        conv = await _conversation(conn, cid)
        messages = await _messages(conn, cid, size + 1)
        agents = await _agents(conn)
        listing, next_cursor = await _conversation_list(conn, conv["agent_id"], None, False)
    older = None
    if len(messages) > size:
        messages.pop(0)
        older = cursor_of(messages[0])
    agent = next((a for a in agents if a["id"] == conv["agent_id"]), None)
    return page(request, "chat.html", user, conv=conv, messages=messages, older=older, agents=agents,
                agent=agent, conversations=listing, next_cursor=next_cursor, archived=False, current=cid)


@signed_in
async def conversation_messages(request: Request, user: User) -> Response:
    """A fragment of messages: older than `before`, or newer than `after` (live updates)."""
    cid = path_uuid(request)
    size = request.app.state.settings.page_size
    before = parse_cursor(request.query_params.get("before"))
    after = parse_cursor(request.query_params.get("after"))
    async with as_user(pool(request), user) as conn:
        await _conversation(conn, cid)
        if after is not None:
            messages = await _messages(conn, cid, 200, after=after)
            older = None
        else:
            messages = await _messages(conn, cid, size + 1, before=before)
            older = None
            if len(messages) > size:
                messages.pop(0)
                older = cursor_of(messages[0])
    return page(request, "_messages.html", user, messages=messages, older=older, conv={"id": cid})


@signed_in
async def conversation_rename(request: Request, user: User) -> Response:
    cid = path_uuid(request)
    title = str((await request.form()).get("title", "")).strip()
    if not title or len(title) > TITLE_LIMIT:
        return error_json(400, "invalid_title", f"a title has 1 to {TITLE_LIMIT} characters")
    return await _update_conversation(request, user, cid, "title = %s", (title,))


@signed_in
async def conversation_archive(request: Request, user: User) -> Response:
    cid = path_uuid(request)
    unarchive = request.url.path.endswith("/unarchive")
    return await _update_conversation(request, user, cid,
                                      "archived_at = " + ("null" if unarchive else "now()"), ())


@signed_in
async def conversation_delete(request: Request, user: User) -> Response:
    cid = path_uuid(request)
    await _update_conversation(request, user, cid, "deleted_at = now()", ())
    return RedirectResponse("/conversations", status_code=303)


async def _update_conversation(request: Request, user: User, cid: uuid.UUID, assignment: str,
                               params: tuple[Any, ...]) -> Response:
    async with as_user(pool(request), user) as conn:
        row = await (await conn.execute(
            f"update public.conversation_sessions set {assignment} where id = %s and deleted_at is null"
            " returning id", (*params, cid))).fetchone()
    if row is None:
        raise NotFound
    return back(request, f"/c/{cid}")


@signed_in
async def conversation_send(request: Request, user: User) -> Response:
    """One chat turn through the chat function with the user's own token, streamed to the page as
    the function streams it (server-sent events: delta, tool, done, error)."""
    cid = path_uuid(request)
    try:
        body = await request.json()
        message = body["message"]
        # the browser's time zone, checked by the chat function (400 invalid_body, field timezone)
        zone = body.get("timezone")
    except (ValueError, KeyError, TypeError, AttributeError):
        return error_json(400, "invalid_body", "send {\"message\": \"...\", \"timezone\"?: \"Europe/Berlin\"}")
    if not isinstance(message, str) or not message.strip():
        return error_json(400, "invalid_body", "the message is empty")
    if len(message) > MESSAGE_LIMIT:
        return error_json(413, "message_too_long", f"a message has at most {MESSAGE_LIMIT:,} characters")
    async with as_user(pool(request), user) as conn:
        conv = await _conversation(conn, cid)
    session: aiohttp.ClientSession = request.app.state.http
    upstream = await session.post(
        request.app.state.settings.chat_url,
        json={"agent_id": str(conv["agent_id"]), "conversation_id": str(cid), "message": message,
              "stream": True, **({"timezone": zone} if zone is not None else {})},
        headers={"Authorization": f"Bearer {user.token}", "Accept": "text/event-stream"})
    if upstream.status != 200 or not upstream.content_type.startswith("text/event-stream"):
        payload = await upstream.read()
        upstream.release()
        return Response(payload, status_code=upstream.status, media_type="application/json")

    async def relay() -> AsyncIterator[bytes]:
        try:
            async for chunk in upstream.content.iter_any():
                yield chunk
        finally:
            upstream.release()

    return StreamingResponse(relay(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


# --- schedules ----------------------------------------------------------------------


@signed_in
async def tasks(request: Request, user: User) -> Response:
    size = request.app.state.settings.page_size
    async with as_user(pool(request), user) as conn:
        agents = await _agents(conn)
        # ?agent=: one agent's schedules (an id that is not one of the user's agents: none, like any
        # other agent that does not exist)
        wanted = request.query_params.get("agent")
        try:
            agent_id = uuid.UUID(wanted) if wanted else None
        except ValueError:
            raise NotFound from None
        rows, next_cursor = await _keyset_page(
            conn, "select * from public.list_tasks(%s, %s, %s)", (), size, request.query_params.get("cursor"),
            agent_id)
        notice = await _task_notice(conn, request) or _bulk_notice(request)
    return page(request, "tasks.html", user, tasks=rows, next_cursor=next_cursor, notice=notice,
                agents=agents, agent_id=agent_id)


async def _task_notice(conn: Any, request: Request) -> str | None:
    """What the last form did ("Schedule “X” created."), named by the redirect's query; a task that
    is not the user's (or gone) gets no notice."""
    for key, done in (("created", "created"), ("saved", "saved")):
        raw = request.query_params.get(key)
        if raw is None:
            continue
        try:
            tid = uuid.UUID(raw)
        except ValueError:
            return None
        row = await (await conn.execute("select name, status from public.agent_tasks where id = %s",
                                        (tid,))).fetchone()
        if row is None:
            return None
        paused = " It is paused: it runs once you enable it." if row["status"] == "paused" else ""
        return f"Schedule “{row['name']}” {done}.{paused}"
    return None


def _task_form_values(form: FormData) -> tuple[dict[str, Any], dict[str, str]]:
    """Form fields to agent_tasks columns; errors the form itself can tell (not the database's rules)."""
    errors: dict[str, str] = {}
    kind = str(form.get("schedule_type", "manual"))
    values: dict[str, Any] = {
        "name": str(form.get("name", "")).strip(),
        "description": str(form.get("description", "")).strip() or None,
        "system_addon": str(form.get("system_addon", "")).strip() or None,
        "overlap_policy": str(form.get("overlap_policy", "skip")),
        "misfire_policy": str(form.get("misfire_policy", "run_once")),
        "notify_on": [str(v) for v in form.getlist("notify_on")],
        "schedule_type": kind,
        "timezone": str(form.get("timezone", "UTC")).strip() or "UTC",
        "prompt_template": str(form.get("prompt_template", "")),
        "conversation_mode": str(form.get("conversation_mode", "reuse")),
        "cron_expression": None, "interval_seconds": None, "run_at": None,
    }
    if kind == "cron":
        values["cron_expression"] = str(form.get("cron_expression", "")).strip()
    elif kind == "interval":
        try:
            values["interval_seconds"] = int(str(form.get("interval_seconds", "")))
        except ValueError:
            errors["interval_seconds"] = "a whole number of seconds"
    elif kind == "once":
        raw = str(form.get("run_at", ""))
        try:
            local = datetime.fromisoformat(raw)
            values["run_at"] = local if local.tzinfo else local.replace(tzinfo=ZoneInfo(values["timezone"]))
        except (ValueError, KeyError):
            errors["run_at"] = "a date and time, e.g. 2026-12-24T09:00"
    for name in ("priority", "max_retries", "timeout_seconds"):
        try:
            values[name] = int(str(form.get(name, "")))
        except ValueError:
            errors[name] = "a whole number"
    raw_max = str(form.get("max_runs", "")).strip()
    try:
        values["max_runs"] = int(raw_max) if raw_max else None
    except ValueError:
        errors["max_runs"] = "a whole number, or empty for no limit"
    # the window, in the task's time zone like run_at (the zone is checked by the database)
    for name in ("starts_at", "ends_at"):
        raw = str(form.get(name, "")).strip()
        try:
            edge = datetime.fromisoformat(raw) if raw else None
            values[name] = (edge if edge is None or edge.tzinfo
                            else edge.replace(tzinfo=ZoneInfo(values["timezone"])))
        except (ValueError, KeyError):
            errors[name] = "a date and time, e.g. 2026-12-24T09:00, or empty"
    variables: dict[str, str] = {}
    for line in str(form.get("prompt_variables", "")).splitlines():
        if not line.strip():
            continue
        key, sep, value = line.partition("=")
        if not sep or not key.strip():
            errors["prompt_variables"] = f"one NAME=value per line (not {line.strip()[:40]!r})"
            break
        variables[key.strip()] = value.strip()
    values["prompt_variables"] = variables
    conv = str(form.get("conversation_id", "")).strip()
    try:
        values["conversation_id"] = uuid.UUID(conv) if conv else None
    except ValueError:
        errors["conversation_id"] = "pick a conversation"
    if values["conversation_mode"] == "new_per_run":
        values["conversation_id"] = None
    return values, errors


async def _task_form_context(conn: Any, task: dict[str, Any]) -> dict[str, Any]:
    agents = await _agents(conn)
    agent_id = task.get("agent_id") or (agents[0]["id"] if agents else None)
    convs = list(await (await conn.execute(
        "select id, coalesce(title, 'Untitled') as title from public.conversation_sessions"
        " where agent_id = %s and deleted_at is null order by activity_at desc limit 50", (agent_id,))).fetchall())
    zone = ZoneInfo(task["timezone"]) if render.zone_ok(str(task.get("timezone"))) else UTC
    local = {f"{name}_local": value.astimezone(zone).strftime("%Y-%m-%dT%H:%M") if isinstance(value, datetime) else ""
             for name in ("run_at", "starts_at", "ends_at") for value in [task.get(name)]}
    return {"agents": agents, "agent_id": agent_id, "conversations": convs, "cron_presets": CRON_PRESETS,
            **local, "notify_choices": NOTIFY_CHOICES, "enabled_statuses": ENABLED_STATUSES,
            "task_presets": TASK_PRESETS, "timezones": TIMEZONES, "builtin_variables": BUILTIN_VARIABLES}


def _task_defaults(preset: str | None) -> dict[str, Any]:
    task: dict[str, Any] = {"name": "", "schedule_type": "cron", "cron_expression": "0 9 * * *",
                            "interval_seconds": 3600, "run_at": None, "timezone": "UTC", "prompt_template": "",
                            "prompt_variables": {}, "priority": 0, "max_retries": 3, "timeout_seconds": 300,
                            "conversation_mode": "reuse", "conversation_id": None, "description": None,
                            "system_addon": None, "overlap_policy": "skip", "misfire_policy": "run_once",
                            "notify_on": ["failure"], "max_runs": None, "starts_at": None, "ends_at": None,
                            "status": "active"}
    task.update(TASK_PRESETS.get(preset or "", {}))
    return task


@signed_in
async def task_new(request: Request, user: User) -> Response:
    task = _task_defaults(request.query_params.get("preset"))
    async with as_user(pool(request), user) as conn:
        context = await _task_form_context(conn, task)
    return page(request, "task_form.html", user, task=task, errors={}, editing=False, **context)


@signed_in
async def task_edit(request: Request, user: User) -> Response:
    tid = path_uuid(request)
    async with as_user(pool(request), user) as conn:
        row = await (await conn.execute("select * from public.agent_tasks where id = %s", (tid,))).fetchone()
        if row is None:
            raise NotFound
        context = await _task_form_context(conn, dict(row))
    return page(request, "task_form.html", user, task=dict(row), errors={}, editing=True, **context)


@signed_in
async def task_save(request: Request, user: User) -> Response:
    """Create (no id) or update a task. The database's readable refusals are shown next to the field
    they name: public.validate_schedule first (every problem at once), then the write itself."""
    editing = "id" in request.path_params
    tid = path_uuid(request) if editing else None
    form = await request.form()
    values, errors = _task_form_values(form)
    try:
        agent_id = uuid.UUID(str(form.get("agent_id", "")))
    except ValueError:
        agent_id = None
        errors["agent_id"] = "pick an agent"
    # the "Enabled" box: pause_task / resume_task after the write, in its transaction
    enabled = form.get("enabled") is not None
    shows_enabled = form.get("enabled_shown") is not None
    saved: Any = None
    async with as_user(pool(request), user) as conn:
        if not errors:
            found = await (await conn.execute(
                "select public.validate_schedule(%s, %s, %s, %s, %s) as errors",
                (values["schedule_type"], values["cron_expression"], values["timezone"],
                 values["prompt_template"], json.dumps(values["prompt_variables"])))).fetchone()
            errors.update(found["errors"] if found else {})
        if not errors:
            columns = dict(values, prompt_variables=json.dumps(values["prompt_variables"]))
            try:
                async with conn.transaction():
                    if editing:
                        sets = ", ".join(f"{k} = %s" for k in columns)
                        saved = await (await conn.execute(
                            f"update public.agent_tasks set {sets} where id = %s returning id",
                            (*columns.values(), tid))).fetchone()
                        if saved is None:
                            raise NotFound
                    else:
                        columns["agent_id"] = agent_id
                        saved = await (await conn.execute(
                            f"insert into public.agent_tasks ({', '.join(columns)})"
                            f" values ({', '.join(['%s'] * len(columns))}) returning id",
                            list(columns.values()))).fetchone()
                    if shows_enabled:
                        await conn.execute(
                            "select case when t.status = 'paused' and %(on)s then public.resume_task(t.id)"
                            "            when t.status in ('active', 'waiting_input') and not %(on)s"
                            "              then public.pause_task(t.id) end"
                            " from public.agent_tasks t where t.id = %(id)s", {"on": enabled, "id": saved["id"]})
            except psycopg.errors.ForeignKeyViolation as exc:
                errors["conversation_id" if "conversation" in (exc.diag.constraint_name or "")
                       else "agent_id"] = "not found"
            except psycopg.Error as exc:
                if not is_refusal(exc):
                    raise
                errors[field_of(exc, [*TASK_FIELDS, "agent_id"])] = sql_message(exc)
        if errors:
            task = dict(values, agent_id=agent_id, id=tid,
                        status=("active" if enabled else "paused") if shows_enabled else None)
            context = await _task_form_context(conn, task)
    if errors:
        return page(request, "task_form.html", user, status=422, task=task, errors=errors, editing=editing,
                    **context)
    return RedirectResponse(f"/tasks?{'saved' if editing else 'created'}={saved['id']}", status_code=303)


# a schedule's actions: the public functions (run now, pause, resume) or a row delete under RLS
TASK_ACTIONS = {"run": "select public.run_task_now(%s) as id", "pause": "select (public.pause_task(%s)).id",
                "resume": "select (public.resume_task(%s)).id",
                "delete": "delete from public.agent_tasks where id = %s returning id"}
# what the list says after a bulk action ("Paused 3 schedules.")
BULK_DONE = {"run": "Queued a run of", "pause": "Paused", "resume": "Resumed", "delete": "Deleted"}
# at most one page of the list at a time
BULK_MAX = 100


async def _path_action(request: Request, user: User, actions: dict[str, str]) -> tuple[uuid.UUID, str]:
    """POST /<rows>/{id}/{action}: the action's statement on that row under the user's RLS. An
    unknown action, or a row that is not the user's, is NotFound (like one that does not exist)."""
    rid = path_uuid(request)
    action = request.path_params["action"]
    if action not in actions or await act(as_user(pool(request), user), actions[action], (rid,)) is None:
        raise NotFound
    return rid, action


@signed_in
async def task_action(request: Request, user: User) -> Response:
    """Run now, pause, resume or delete one schedule (TASK_ACTIONS)."""
    tid, action = await _path_action(request, user, TASK_ACTIONS)
    if action == "run":
        return RedirectResponse(f"/tasks/{tid}/runs?queued=1", status_code=303)
    return back(request, "/tasks")


@signed_in
async def tasks_bulk(request: Request, user: User) -> Response:
    """One action on the schedules ticked in the list: each in its own savepoint, so one refusal
    (a full backlog, a run cap) does not undo the others; the list then says what was done and
    the first refusal's reason. Ids that are not the user's count as not found and change nothing."""
    form = await request.form()
    action = str(form.get("action", ""))
    if action not in TASK_ACTIONS:
        raise Refused("pick an action: run now, pause, resume or delete")
    try:
        ids = list(dict.fromkeys(uuid.UUID(str(v)) for v in form.getlist("ids")))
    except ValueError:
        raise Refused("the selection names a schedule that does not exist") from None
    if not ids:
        raise Refused("tick the schedules to act on first")
    if len(ids) > BULK_MAX:
        raise Refused(f"at most {BULK_MAX} schedules at a time")
    done, refused, why = 0, 0, ""
    async with as_user(pool(request), user) as conn:
        for tid in ids:
            try:
                async with conn.transaction():
                    row = await (await conn.execute(TASK_ACTIONS[action], (tid,))).fetchone()
                if row is None:
                    raise psycopg.errors.NoDataFound("not found")
                done += 1
            except psycopg.Error as exc:
                if not is_refusal(exc) and not isinstance(exc, psycopg.errors.NoDataFound):
                    raise
                refused += 1
                why = why or ("a schedule was not found" if isinstance(exc, psycopg.errors.NoDataFound)
                              else sql_message(exc))
    query = urlencode({"bulk": action, "done": done, "refused": refused, "why": why[:300]})
    return RedirectResponse(f"/tasks?{query}", status_code=303)


def _bulk_notice(request: Request) -> str | None:
    """What the last bulk action did, from its redirect's query."""
    action = request.query_params.get("bulk")
    if action not in BULK_DONE:
        return None
    try:
        done, refused = int(request.query_params.get("done", "0")), int(request.query_params.get("refused", "0"))
    except ValueError:
        return None
    text = f"{BULK_DONE[action]} {done} schedule{'' if done == 1 else 's'}."
    if refused:
        why = request.query_params.get("why", "")[:300]
        text += f" {refused} could not be: {why}" if why else f" {refused} could not be."
    return text


# --- webhooks -----------------------------------------------------------------------

# what the form offers (every notification kind), failures and questions ticked by default
WEBHOOK_KINDS = [("task_failed", "a run fails"), ("task_needs_input", "an agent asks a question"),
                 ("task_completed", "a task completes"), ("task_succeeded", "a run succeeds (tasks notifying of "
                                                                            "success)"),
                 ("task_changed", "a reply changes (tasks notifying of change)"), ("task_paused", "a task pauses"),
                 ("info", "other notices")]
# the newest deliveries shown under each endpoint (public.list_webhook_deliveries)
WEBHOOK_LOG_ROWS = 5
WEBHOOK_ACTIONS = {"enable": "update public.webhooks set enabled = true where id = %s returning id",
                   "disable": "update public.webhooks set enabled = false where id = %s returning id",
                   "delete": "delete from public.webhooks where id = %s returning id",
                   "test": "select public.test_webhook(%s) as id"}


async def _webhook_page(request: Request, user: User, status: int = 200, errors: dict[str, str] | None = None,
                        form: dict[str, Any] | None = None, notice: str | None = None) -> Response:
    async with as_user(pool(request), user) as conn:
        rows = [dict(r) for r in await (await conn.execute(
            "select * from public.webhooks order by created_at, id")).fetchall()]
        for row in rows:  # at most max_webhooks_per_user of them
            row["deliveries"] = list(await (await conn.execute(
                "select * from public.list_webhook_deliveries(%s, %s)", (row["id"], WEBHOOK_LOG_ROWS))).fetchall())
    return page(request, "webhooks.html", user, status=status, webhooks=rows, errors=errors or {},
                form=form or {"kinds": ["task_failed", "task_needs_input"]}, kind_choices=WEBHOOK_KINDS,
                notice=notice)


@signed_in
async def webhooks(request: Request, user: User) -> Response:
    notices = {"added": "Webhook added: verify its POSTs with the signing secret below.",
               "saved": "Webhook saved.", "deleted": "Webhook deleted.",
               "tested": "Test delivery queued: your endpoint receives a webhook.test POST in a moment."}
    notice = notices.get(request.query_params.get("done", ""))
    return await _webhook_page(request, user, notice=notice)


@signed_in
async def webhook_add(request: Request, user: User) -> Response:
    """A row of public.webhooks under the user's RLS; the database's refusals (the URL policy, the
    per-user cap, the kinds) are shown next to their field."""
    form = await request.form()
    values = {"url": str(form.get("url", "")).strip(), "description": str(form.get("description", "")).strip() or None,
              "kinds": [str(v) for v in form.getlist("kinds")]}
    errors: dict[str, str] = {}
    if not values["kinds"]:
        errors["kinds"] = "tick at least one kind"
    if not errors:
        try:
            async with as_user(pool(request), user) as conn:
                await conn.execute("insert into public.webhooks (url, description, kinds) values (%s, %s, %s)",
                                   (values["url"], values["description"], values["kinds"]))
        except psycopg.Error as exc:
            if not is_refusal(exc):
                raise
            errors[field_of(exc, ["url", "description", "kinds"])] = sql_message(exc)
    if errors:
        return await _webhook_page(request, user, status=422, errors=errors, form=values)
    return RedirectResponse("/webhooks?done=added", status_code=303)


@signed_in
async def webhook_action(request: Request, user: User) -> Response:
    """Enable, disable, delete or test one endpoint (WEBHOOK_ACTIONS)."""
    _, action = await _path_action(request, user, WEBHOOK_ACTIONS)
    done = {"delete": "deleted", "test": "tested"}.get(action, "saved")
    return RedirectResponse(f"/webhooks?done={done}", status_code=303)


@signed_in
async def task_runs(request: Request, user: User) -> Response:
    tid = path_uuid(request)
    size = request.app.state.settings.page_size
    async with as_user(pool(request), user) as conn:
        task = await (await conn.execute("select id, name, status from public.agent_tasks where id = %s",
                                          (tid,))).fetchone()
        if task is None:
            raise NotFound
        rows, next_cursor = await _keyset_page(
            conn, "select * from public.list_executions(%s, %s, %s)", (tid,), size,
            request.query_params.get("cursor"))
    notice = ("Run queued: its reply will appear in the task's conversation."
              if request.query_params.get("queued") else None)
    return page(request, "runs.html", user, task=task, runs=rows, next_cursor=next_cursor, notice=notice)


@signed_in
async def run_action(request: Request, user: User) -> Response:
    eid = path_uuid(request)
    action = request.path_params["action"]
    if action not in ("cancel", "retry"):
        raise NotFound
    await act(as_user(pool(request), user), f"select public.{action}_execution(%s)", (eid,))
    return back(request, "/tasks")


@signed_in
async def cron_preview(request: Request, user: User) -> Response:
    """The expression in words and its next five occurrences in the zone; the database's own
    validator (public.validate_schedule) decides what is valid."""
    expr = request.query_params.get("expr", "").strip()
    zone = request.query_params.get("tz", "UTC").strip() or "UTC"
    async with as_user(pool(request), user) as conn:
        row = await (await conn.execute("select public.validate_schedule('cron', %s, %s) as errors",
                                        (expr, zone))).fetchone()
    errors = dict(row["errors"]) if row else {}
    errors.pop("prompt_template", None)
    if errors:
        return JSONResponse({"errors": errors}, status_code=422)
    try:
        words = render.cron_in_words(expr)
        upcoming = [t.isoformat() for t in render.next_occurrences(expr, zone)]
    except Exception as exc:  # the database accepted it; the describer or croniter did not
        return JSONResponse({"errors": {"cron_expression": str(exc)}}, status_code=422)
    return JSONResponse({"description": words, "timezone": zone, "next": upcoming})


# --- notifications ------------------------------------------------------------------


@signed_in
async def notifications(request: Request, user: User) -> Response:
    async with as_user(pool(request), user) as conn:
        rows = list(await (await conn.execute(
            "select id, kind, title, body, data, read_at, created_at from public.notifications"
            " order by created_at desc, id desc limit 100")).fetchall())
    return page(request, "notifications.html", user, notifications=rows)


@signed_in
async def notification_count(request: Request, user: User) -> Response:
    async with as_user(pool(request), user) as conn:
        row = await (await conn.execute("select public.unread_notification_count() as n")).fetchone()
    return JSONResponse({"unread": row["n"] if row else 0})


@signed_in
async def notification_read(request: Request, user: User) -> Response:
    async with as_user(pool(request), user) as conn:
        if request.url.path.endswith("/read-all"):
            await conn.execute("select public.mark_all_notifications_read()")
        else:
            row = await (await conn.execute("select public.mark_notification_read(%s) as ok",
                                            (path_uuid(request),))).fetchone()
            if not (row and row["ok"]):
                exists = await (await conn.execute("select 1 from public.notifications where id = %s",
                                                   (path_uuid(request),))).fetchone()
                if exists is None:
                    raise NotFound
    return back(request, "/notifications")


# --- live events --------------------------------------------------------------------


@signed_in
async def events(request: Request, user: User) -> Response:
    """Server-sent events for this user only: what changed (table, conversation, ids), never content."""
    hub = request.app.state.hub
    queue = await hub.watch(user.id)

    async def stream() -> AsyncIterator[str]:
        try:
            yield "retry: 1000\nevent: ready\ndata: {}\n\n"
            while True:
                try:
                    event = await asyncio.wait_for(queue.get(), SSE_KEEPALIVE_S)
                except TimeoutError:
                    yield ": keepalive\n\n"
                    continue
                yield f"event: live\ndata: {json.dumps(event, default=str)}\n\n"
        finally:
            hub.unsubscribe(user.id, queue)

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


# --- operator -----------------------------------------------------------------------


def _operator(request: Request) -> bool:
    return operator_ok(request.app.state.settings, request.cookies.get(OPERATOR_COOKIE))


async def operator_login(request: Request) -> Response:
    settings = request.app.state.settings
    if request.method == "POST":
        token = str((await request.form()).get("operator_token", ""))
        if operator_ok(settings, token):
            response = RedirectResponse("/operator", status_code=303)
            response.set_cookie(OPERATOR_COOKIE, token, httponly=True, samesite="strict", path="/operator")
            return response
        return page(request, "operator_login.html", None, status=401, error="wrong operator token",
                    configured=bool(settings.operator_token))
    return page(request, "operator_login.html", None, error=None, configured=bool(settings.operator_token))


OPERATOR_QUERIES = {
    "stats": "select * from scheduler.queue_stats()",
    "workers": "select id, hostname, pid, concurrency, in_flight, last_seen_at, started_at"
               " from scheduler.workers order by started_at",
    "running": """select e.id, e.worker_id, e.attempt, e.started_at, e.lease_expires_at, t.name as task_name,
                         e.lease_expires_at < now() as expired
                  from public.agent_task_executions e join public.agent_tasks t on t.id = e.task_id
                  where e.status = 'running' order by e.started_at limit 200""",
    "failed": """select e.id, e.status, e.attempt, e.finished_at, e.error, e.error_kind, t.name as task_name,
                        t.user_id
                 from public.agent_task_executions e join public.agent_tasks t on t.id = e.task_id
                 where e.status in ('failed', 'timed_out') order by e.finished_at desc limit 50""",
}
CRON_SQL = """
    select j.jobid, j.jobname, j.schedule, j.active, d.status as last_status, d.start_time as last_start,
           d.return_message as last_message
    from cron.job j
    left join lateral (select status, start_time, return_message from cron.job_run_details r
                       where r.jobid = j.jobid order by r.start_time desc limit 1) d on true
    order by j.jobid
"""


async def operator(request: Request) -> Response:
    if not _operator(request):
        return RedirectResponse("/operator/login", status_code=303)
    data: dict[str, Any] = {}
    async with as_operator(pool(request)) as conn:
        for name, query in OPERATOR_QUERIES.items():
            data[name] = list(await (await conn.execute(query)).fetchall())
    cron_error = None
    try:
        async with as_operator(pool(request)) as conn:
            data["cron"] = list(await (await conn.execute(CRON_SQL)).fetchall())
    except psycopg.errors.UndefinedTable:
        data["cron"], cron_error = [], "pg_cron does not run in this database (cron.database_name is another)"
    return page(request, "operator.html", None, cron_error=cron_error, **data)


async def operator_retry(request: Request) -> Response:
    if not _operator(request):
        return error_json(401, "operator_only", "operator pages need the operator token")
    await act(as_operator(pool(request)), "select scheduler.retry_execution(%s)", (path_uuid(request),))
    return RedirectResponse("/operator", status_code=303)
