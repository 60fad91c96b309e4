"""Worker settings: required URL, transaction pooler refused, derived defaults."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from worker.config import Settings, transaction_pooler_reason


def test_settings__defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://u:p@db.example.com:5432/postgres")
    s = Settings(_env_file=None)  # type: ignore[call-arg]
    assert s.worker_concurrency == 32 and s.worker_per_user_limit == 8 and s.lease_seconds == 30
    assert s.heartbeat_s == 10 and s.poll_interval_s == 1.0 and s.tick_interval_s == 1.0
    assert s.shutdown_grace_s == 20 and s.retry_base_s == 5 and s.retry_cap_s == 600
    assert s.worker_id.count("-") >= 2


def test_settings__falls_back_to_supabase_db_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.setenv("SUPABASE_DB_URL", "postgresql://u:p@localhost:5432/x")
    assert Settings(_env_file=None).database_url.endswith("/x")  # type: ignore[call-arg]


def test_settings__database_url_required(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.delenv("SUPABASE_DB_URL", raising=False)
    with pytest.raises(ValidationError, match="required"):
        Settings(_env_file=None)  # type: ignore[call-arg]


@pytest.mark.parametrize("url", [
    "postgresql://postgres.ref:pw@aws-0-eu-central-1.pooler.supabase.com:6543/postgres",
    "postgresql://u:p@host:5432/postgres?pgbouncer=true",
    "host=x port=6543 dbname=postgres",
])
def test_settings__transaction_pooler_refused(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    assert transaction_pooler_reason(url) is not None
    monkeypatch.setenv("DATABASE_URL", url)
    with pytest.raises(ValidationError, match="session"):
        Settings(_env_file=None)  # type: ignore[call-arg]


def test_settings__service_headers_prefer_secret_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://localhost/x")
    monkeypatch.setenv("SUPABASE_SECRET_KEY", "sb_secret_abc")
    monkeypatch.setenv("SUPABASE_SERVICE_ROLE_KEY", "jwt")
    h = Settings(_env_file=None).service_headers()  # type: ignore[call-arg]
    assert h["apikey"] == "sb_secret_abc" and "Authorization" not in h
    assert h["X-Service"] == "task-executor"
    monkeypatch.delenv("SUPABASE_SECRET_KEY")
    h = Settings(_env_file=None).service_headers()  # type: ignore[call-arg]
    assert h["Authorization"] == "Bearer jwt"


def test_settings__heartbeat_shorter_than_lease(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://localhost/x")
    monkeypatch.setenv("LEASE_SECONDS", "6")
    assert Settings(_env_file=None).heartbeat_s == 2  # type: ignore[call-arg]
    monkeypatch.setenv("HEARTBEAT_INTERVAL_S", "6")
    with pytest.raises(ValidationError):
        Settings(_env_file=None)  # type: ignore[call-arg]


# --- tick alignment (worker/runner.py) ---------------------------------------


def test_tick_delay__lands_just_after_the_next_whole_second() -> None:
    from worker.runner import TICK_ALIGN_OFFSET_S, tick_delay_s

    assert abs(tick_delay_s(1000.3, 1.0) - (0.7 + TICK_ALIGN_OFFSET_S)) < 1e-9
    # just before this second's tick: wait for it, not for the next one
    assert abs(tick_delay_s(1000.0, 1.0) - TICK_ALIGN_OFFSET_S) < 1e-9
    # just after this second's tick ran: the next second's
    assert abs(tick_delay_s(1000.0 + TICK_ALIGN_OFFSET_S, 1.0) - 1.0) < 1e-9


def test_tick_delay__other_intervals_align_to_their_multiples() -> None:
    from worker.runner import tick_delay_s

    assert abs(tick_delay_s(1001.0, 5.0, 0.0) - 4.0) < 1e-9
    assert abs(tick_delay_s(1000.2, 0.5, 0.01) - 0.31) < 1e-9
    for now in (0.0, 0.004, 12.9999, 1e9 + 0.5):
        assert 0.001 <= tick_delay_s(now, 1.0) <= 1.0 + 0.011
