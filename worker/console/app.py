"""Assembly of the console: routes, static files, security headers, the pool, the live hub."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from worker.console import pages
from worker.console.auth import TokenVerifier
from worker.console.db import make_pool
from worker.console.live import LiveHub
from worker.console.settings import ConsoleSettings

# scripts and styles from the package only: a message that smuggled markup in could not run code
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'")


class Guard(BaseHTTPMiddleware):
    """Security headers on every answer; a state-changing request from another origin is refused
    (the cookies are SameSite=Strict as well)."""

    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        if request.method not in ("GET", "HEAD", "OPTIONS"):
            origin = request.headers.get("origin")
            if origin and origin.rstrip("/") != str(request.base_url).rstrip("/"):
                return pages.error_json(403, "cross_origin", "requests from another origin are refused")
        response = await call_next(request)
        response.headers.setdefault("Content-Security-Policy", CSP)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        return response


def routes() -> list[Route | Mount]:
    r = Route
    return [
        r("/", pages.home),
        r("/login", pages.login_page, methods=["GET"]),
        r("/login", pages.login, methods=["POST"]),
        r("/login/demo", pages.login_demo, methods=["POST"]),
        r("/logout", pages.logout, methods=["POST"]),
        r("/conversations", pages.conversations, methods=["GET"]),
        r("/conversations", pages.conversation_new, methods=["POST"]),
        r("/c/{id}", pages.conversation, methods=["GET"]),
        r("/c/{id}/messages", pages.conversation_messages, methods=["GET"]),
        r("/c/{id}/rename", pages.conversation_rename, methods=["POST"]),
        r("/c/{id}/archive", pages.conversation_archive, methods=["POST"]),
        r("/c/{id}/unarchive", pages.conversation_archive, methods=["POST"]),
        r("/c/{id}/delete", pages.conversation_delete, methods=["POST"]),
        r("/c/{id}/send", pages.conversation_send, methods=["POST"]),
        r("/tasks", pages.tasks, methods=["GET"]),
        r("/tasks/new", pages.task_new, methods=["GET"]),
        r("/tasks/new", pages.task_save, methods=["POST"]),
        r("/tasks/bulk", pages.tasks_bulk, methods=["POST"]),
        r("/tasks/{id}/edit", pages.task_edit, methods=["GET"]),
        r("/tasks/{id}/edit", pages.task_save, methods=["POST"]),
        r("/tasks/{id}/runs", pages.task_runs, methods=["GET"]),
        r("/tasks/{id}/{action}", pages.task_action, methods=["POST"]),
        r("/runs/{id}/{action}", pages.run_action, methods=["POST"]),
        r("/api/cron", pages.cron_preview, methods=["GET"]),
        r("/notifications", pages.notifications, methods=["GET"]),
        r("/notifications/count", pages.notification_count, methods=["GET"]),
        r("/notifications/read-all", pages.notification_read, methods=["POST"]),
        r("/notifications/{id}/read", pages.notification_read, methods=["POST"]),
        r("/webhooks", pages.webhooks, methods=["GET"]),
        r("/webhooks", pages.webhook_add, methods=["POST"]),
        r("/webhooks/{id}/{action}", pages.webhook_action, methods=["POST"]),
        r("/events", pages.events, methods=["GET"]),
        r("/operator", pages.operator, methods=["GET"]),
        r("/operator/login", pages.operator_login, methods=["GET", "POST"]),
        r("/operator/runs/{id}/retry", pages.operator_retry, methods=["POST"]),
        Mount("/static", StaticFiles(packages=[("worker.console", "static")]), name="static"),
    ]


async def _not_found(request: Request, exc: Exception) -> Response:
    return pages.page(request, "not_found.html", pages.current_user(request), status=404)


async def _refused(request: Request, exc: Exception) -> Response:
    """A database refusal: the readable reason, as a page for a browser's form, else as JSON."""
    if "text/html" in request.headers.get("accept", ""):
        return pages.page(request, "refused.html", pages.current_user(request), status=409, message=str(exc))
    return pages.error_json(409, "refused", str(exc))


def create_app(settings: ConsoleSettings) -> Starlette:
    """The console application for these settings."""

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        app.state.pool = make_pool(settings.database_url)
        await app.state.pool.open(wait=True, timeout=30)
        app.state.hub = LiveHub(settings.database_url, app.state.pool)
        app.state.hub.start()
        app.state.http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, sock_connect=10,
                                                                             sock_read=180))
        try:
            yield
        finally:
            await app.state.hub.stop()
            await app.state.http.close()
            await app.state.pool.close()

    app = Starlette(routes=routes(), lifespan=lifespan, middleware=[Middleware(Guard)],
                    exception_handlers={pages.NotFound: _not_found, pages.Refused: _refused})
    app.state.settings = settings
    app.state.verifier = TokenVerifier(settings)
    return app
