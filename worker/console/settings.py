"""What the console needs to run: the database, the chat function, how to verify tokens, the operator token."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ConsoleSettings:
    """Configuration of one console process.

    `database_url` must be a role that may `set role authenticated` (the
    project's `postgres` user, or `authenticator` as PostgREST uses it); the
    operator pages also read the `scheduler` schema and `cron` tables with it.
    """

    database_url: str
    chat_url: str
    # user tokens: a JWKS (as SUPABASE_JWKS), else the key set at jwks_url, and/or a legacy HS256 secret
    jwks: dict[str, Any] | None = None
    jwks_url: str | None = None
    jwt_secret: str | None = None
    jwt_issuer: str | None = None
    # operator pages are off unless a token is configured
    operator_token: str | None = None
    # the local stack only: sign in as the demo user with one click (mints a token)
    demo_user_email: str | None = None
    demo_token: Any = field(default=None, compare=False)  # Callable[[str, str], str] | None
    # the page size of histories and lists (CONSOLE_PAGE_SIZE)
    page_size: int = 50

    @classmethod
    def from_env(cls, **overrides: Any) -> ConsoleSettings:
        """Settings from the environment (names the platform and `supabase secrets` use), then overrides."""
        env = os.environ
        supabase_url = env.get("SUPABASE_URL", "").rstrip("/")
        values: dict[str, Any] = {
            "database_url": env.get("DATABASE_URL") or env.get("SUPABASE_DB_URL") or "",
            "chat_url": env.get("CHAT_URL") or (f"{supabase_url}/functions/v1/chat" if supabase_url else ""),
            "jwks": json.loads(env["SUPABASE_JWKS"]) if env.get("SUPABASE_JWKS") else None,
            "jwks_url": f"{supabase_url}/auth/v1/.well-known/jwks.json" if supabase_url else None,
            "jwt_secret": env.get("CHAT_JWT_SECRET") or None,
            "jwt_issuer": env.get("CHAT_JWT_ISSUER") or None,
            "operator_token": env.get("CONSOLE_OPERATOR_TOKEN") or None,
        }
        if env.get("CONSOLE_PAGE_SIZE"):
            values["page_size"] = page_size(env["CONSOLE_PAGE_SIZE"])
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


# The lists page through the public list functions, which return at most 100
# rows (public.page_cursor_position); the console asks for one more than a
# page to know whether there is a next one.
PAGE_SIZE_MAX = 99


def page_size(value: str) -> int:
    """CONSOLE_PAGE_SIZE, checked: a whole number from 1 to PAGE_SIZE_MAX."""
    try:
        size = int(value)
    except ValueError:
        size = 0
    if not 1 <= size <= PAGE_SIZE_MAX:
        raise ValueError(f"CONSOLE_PAGE_SIZE must be a whole number from 1 to {PAGE_SIZE_MAX}, not {value!r}")
    return size
