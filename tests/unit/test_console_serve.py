"""The console's start-up settings: the one-click demo sign-in only on loopback, and a page size the
list functions can serve."""

import pytest

from worker.console.serve import loopback_only
from worker.console.settings import PAGE_SIZE_MAX, ConsoleSettings


def _local() -> ConsoleSettings:
    return ConsoleSettings(database_url="postgresql://x", chat_url="http://127.0.0.1:1/chat",
                           demo_user_email="demo@agent-tasks.local", demo_token=lambda uid, email: "t")


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "localhost", "127.0.0.2"])
def test_loopback_only__keeps_the_demo_sign_in_on_loopback(host: str) -> None:
    kept = loopback_only(_local(), host)
    assert kept.demo_token is not None and kept.demo_user_email == "demo@agent-tasks.local"


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.10", "console.example.com"])
def test_loopback_only__turns_it_off_on_any_other_address(host: str, capsys: pytest.CaptureFixture[str]) -> None:
    off = loopback_only(_local(), host)
    assert off.demo_token is None and off.demo_user_email is None
    assert off.database_url == "postgresql://x"  # nothing else changes
    assert "demo sign-in is off" in capsys.readouterr().err


def test_page_size__from_the_environment_within_what_the_list_functions_serve(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONSOLE_PAGE_SIZE", str(PAGE_SIZE_MAX))
    assert ConsoleSettings.from_env().page_size == 99  # one more than a page is the functions' 100
    for bad in ("100", "0", "-5", "fifty"):
        monkeypatch.setenv("CONSOLE_PAGE_SIZE", bad)
        with pytest.raises(ValueError, match="CONSOLE_PAGE_SIZE must be a whole number from 1 to 99"):
            ConsoleSettings.from_env()
