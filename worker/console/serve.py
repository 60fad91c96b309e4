"""`agent-tasks console`: settings from flags, the environment or the local stack, then uvicorn."""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import os
import sys
from typing import Any

from worker.console.settings import ConsoleSettings
from worker.errors import EXIT_USAGE, CliError


def local_stack_settings(require_chat: bool = True) -> dict[str, Any]:
    """The running local stack's database, chat function and key set, and the demo sign-in."""
    from worker import stack
    from worker.demo import DEMO_EMAIL

    state = stack.State.load()
    if state is None or not stack.pg_running():
        raise CliError("no database: pass --database-url (or set DATABASE_URL), or start the local stack"
                       " with `agent-tasks stack up`", EXIT_USAGE)
    if require_chat and not state.chat_port:
        raise CliError("the local stack has no chat function: `agent-tasks stack up` (not --db-only)", EXIT_USAGE)
    return {
        "database_url": stack.database_url(state),
        "chat_url": f"http://127.0.0.1:{state.chat_port}/functions/v1/chat" if state.chat_port else None,
        "jwks": stack.jwks(state),
        "demo_user_email": DEMO_EMAIL,
        "demo_token": lambda uid, email: stack.user_token(state, uid, email),
    }


def settings_from_args(args: argparse.Namespace) -> ConsoleSettings:
    """Flags first, then the environment; with neither a database URL nor a JWKS/secret, the local stack."""
    overrides: dict[str, Any] = {"database_url": args.database_url, "chat_url": args.chat_url,
                                 "operator_token": args.operator_token}
    env_db = os.environ.get("DATABASE_URL") or os.environ.get("SUPABASE_DB_URL")
    if not args.database_url and not env_db:
        # the stack's chat function is needed only when no other is named (--chat-url)
        local = local_stack_settings(require_chat=not args.chat_url)
        overrides = {**local, **{k: v for k, v in overrides.items() if v}}
    try:
        settings = ConsoleSettings.from_env(**overrides)
    except ValueError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    if not settings.chat_url:
        raise CliError("no chat function: pass --chat-url, or set CHAT_URL or SUPABASE_URL", EXIT_USAGE)
    if not (settings.jwks or settings.jwks_url or settings.jwt_secret):
        raise CliError("no way to verify sign-ins: set SUPABASE_URL (its JWKS), SUPABASE_JWKS or CHAT_JWT_SECRET",
                       EXIT_USAGE)
    return settings


def loopback_only(settings: ConsoleSettings, host: str) -> ConsoleSettings:
    """The demo sign-in mints a token for anyone who clicks: offer it only on a loopback address."""
    if settings.demo_token is None:
        return settings
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if loopback:
        return settings
    print(f"console: listening on {host}, so the one-click demo sign-in is off (it is offered on 127.0.0.1 only)",
          file=sys.stderr)
    return dataclasses.replace(settings, demo_user_email=None, demo_token=None)


def serve(settings: ConsoleSettings, host: str, port: int) -> None:
    import uvicorn

    from worker.console.app import create_app

    settings = loopback_only(settings, host)

    # open event streams never end by themselves: give them 2 s on shutdown, then close them
    uvicorn.run(create_app(settings), host=host, port=port, log_level="warning", access_log=False,
                timeout_graceful_shutdown=2)


def spawn_local(log_path: Any, preferred_port: int = 8765) -> tuple[Any, str]:
    """Start `agent-tasks console` against the local stack as a child process (the demo's);
    returns the process and the URL to open."""
    import subprocess

    from worker import stack

    port = stack.free_port(preferred_port)
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "SUPABASE_DB_URL")}
    with open(log_path, "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "worker", "console", "--port", str(port)], env=env,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    return proc, f"http://127.0.0.1:{port}/"
