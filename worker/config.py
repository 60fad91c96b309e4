"""Worker settings, read from the environment (and a `.env` file in the working directory).

Every duration carries its unit in its name. `Settings()` fails with a clear
message when the database URL is missing or points at Supabase's transaction
pooler: the worker LISTENs for NOTIFY, which needs a session-mode (port 5432
of the pooler) or a direct connection.
"""

from __future__ import annotations

import os
import secrets
import socket
from typing import Any
from urllib.parse import parse_qs, urlsplit

from pydantic import AliasChoices, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

TRANSACTION_POOLER_PORT = 6543


def default_worker_id() -> str:
    """host-pid-random: unique per process, readable in `scheduler.workers`."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


def transaction_pooler_reason(url: str) -> str | None:
    """Why `url` looks like Supabase's transaction pooler (port 6543 or pgbouncer=true), or None."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    if port == TRANSACTION_POOLER_PORT:
        return f"port {TRANSACTION_POOLER_PORT} is Supabase's transaction pooler"
    query = {k.lower(): v for k, v in parse_qs(parts.query).items()}
    if any(v.lower() == "true" for v in query.get("pgbouncer", [])):
        return "pgbouncer=true marks a transaction-pooler connection string"
    # key=value conninfo strings
    lowered = url.lower()
    if f"port={TRANSACTION_POOLER_PORT}" in lowered.replace(" ", ""):
        return f"port {TRANSACTION_POOLER_PORT} is Supabase's transaction pooler"
    return None


class Settings(BaseSettings):
    """Configuration of one worker process. Environment variable names are the field names in
    upper case (DATABASE_URL, WORKER_CONCURRENCY, ...)."""

    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", case_sensitive=False,
        populate_by_name=True,
    )

    database_url: str = Field(
        default="",
        validate_default=True,
        validation_alias=AliasChoices("DATABASE_URL", "SUPABASE_DB_URL", "database_url"),
        description="Direct or session-mode Postgres URL (LISTEN needs a session).",
    )
    chat_url: str = Field(
        default="http://127.0.0.1:54321/functions/v1/chat",
        description="URL of the chat edge function.",
    )
    supabase_secret_key: str | None = Field(default=None, description="sb_secret_... key (apikey header).")
    supabase_service_role_key: str | None = Field(
        default=None, description="Legacy service-role JWT (Authorization: Bearer), used without a secret key.")

    worker_id: str = Field(default_factory=default_worker_id)
    worker_concurrency: int = Field(default=32, ge=1, le=10_000)
    worker_per_user_limit: int = Field(default=8, ge=0, description="0 = unlimited")
    lease_seconds: int = Field(default=30, ge=2, le=3600)
    heartbeat_interval_s: float | None = Field(default=None, gt=0, description="default lease_seconds / 3")
    poll_interval_s: float = Field(default=1.0, gt=0)
    tick_interval_s: float = Field(default=1.0, gt=0)
    planner_batch_size: int = Field(default=500, ge=1)
    plan_time_budget_s: float = Field(default=2.0, gt=0, le=60)
    enqueue_batch_size: int = Field(default=5000, ge=1)
    shutdown_grace_s: float = Field(default=20.0, ge=0)
    session_grace_s: float = Field(default=0.5, gt=0, le=60)
    retry_base_s: float = Field(default=5.0, ge=0)
    retry_cap_s: float = Field(default=600.0, ge=0)
    retry_min_s: float = Field(default=2.0, ge=0)
    db_write_retry_s: float = Field(default=15.0, ge=0, le=600)
    db_pool_size: int = Field(default=10, ge=1, le=200)
    http_connect_timeout_s: float = Field(default=5.0, gt=0)
    webhook_timeout_s: float = Field(default=10.0, gt=0, le=120)
    webhook_retry_base_s: float = Field(default=5.0, ge=0)
    worker_metrics_port: int | None = Field(default=None, ge=0, le=65535,
                                            description="Prometheus /metrics and /healthz; unset = off")
    worker_metrics_host: str = Field(default="127.0.0.1")
    log_level: str = Field(default="INFO")
    log_json: bool = Field(default=False)

    @field_validator("database_url")
    @classmethod
    def _not_transaction_pooler(cls, value: str) -> str:
        value = value.strip()
        if not value:
            raise ValueError("DATABASE_URL (or SUPABASE_DB_URL) is required: a direct or "
                             "session-mode Postgres connection string")
        reason = transaction_pooler_reason(value)
        if reason is not None:
            raise ValueError(
                f"DATABASE_URL points at the transaction pooler ({reason}). The worker uses "
                "LISTEN/NOTIFY and needs a session: use the direct connection string "
                "(db.<project>.supabase.co:5432) or the session-mode pooler (port 5432)."
            )
        return value

    @model_validator(mode="after")
    def _derived(self) -> Settings:
        if self.heartbeat_interval_s is None:
            self.heartbeat_interval_s = self.lease_seconds / 3
        if self.heartbeat_interval_s >= self.lease_seconds:
            raise ValueError("HEARTBEAT_INTERVAL_S must be shorter than LEASE_SECONDS")
        if self.retry_cap_s < self.retry_base_s:
            raise ValueError("RETRY_CAP_S must be >= RETRY_BASE_S")
        return self

    @property
    def heartbeat_s(self) -> float:
        """The heartbeat interval in seconds (always set after validation)."""
        assert self.heartbeat_interval_s is not None
        return self.heartbeat_interval_s

    @property
    def per_user_limit(self) -> int | None:
        """The per-user cap passed to claim_executions (None = unlimited)."""
        return self.worker_per_user_limit or None

    def service_headers(self) -> dict[str, str]:
        """Headers of a service (act-as) call to the chat function."""
        headers = {"X-Service": "task-executor", "Content-Type": "application/json"}
        if self.supabase_secret_key:
            headers["apikey"] = self.supabase_secret_key
        elif self.supabase_service_role_key:
            headers["Authorization"] = f"Bearer {self.supabase_service_role_key}"
        else:
            raise ValueError("set SUPABASE_SECRET_KEY (sb_secret_...) or SUPABASE_SERVICE_ROLE_KEY "
                             "so the worker can call the chat function")
        return headers

    def redacted(self) -> dict[str, Any]:
        """Settings for logs, secrets masked."""
        out = self.model_dump()
        for key in ("supabase_secret_key", "supabase_service_role_key"):
            if out.get(key):
                out[key] = "***"
        parts = urlsplit(self.database_url)
        if parts.password:
            out["database_url"] = self.database_url.replace(f":{parts.password}@", ":***@")
        return out
