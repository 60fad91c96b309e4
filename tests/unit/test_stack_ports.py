"""The local stack's services are its own: a port something listens on is not proof that the
service this stack started listens there (two checkouts starting their stacks at once)."""

from __future__ import annotations

import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from worker import stack

# listens on argv[1] until killed (SO_REUSEADDR, as the stack's services bind)
LISTENER = ("import socket, sys, time\n"
            "s = socket.socket()\n"
            "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
            "s.bind(('127.0.0.1', int(sys.argv[1])))\n"
            "s.listen()\n"
            "time.sleep(60)\n")


def _listener(port: int) -> tuple[list[str], dict[str, str]]:
    return [sys.executable, "-c", LISTENER, str(port)], {}


@pytest.fixture
def logs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(stack, "LOG_DIR", tmp_path)
    return tmp_path


@pytest.fixture
def held() -> Iterator[int]:
    """A port another program (this test) listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield int(s.getsockname()[1])


def test_listens__only_the_services_own_session_counts(logs: Path, held: int) -> None:
    port, pid = stack._serve("own", 0, _listener)
    other = stack._spawn("idle", [sys.executable, "-c", "import time; time.sleep(60)"], {})
    try:
        assert stack.listens(pid, port)
        assert not stack.listens(other, port), "a live process of another session does not own the port"
        assert stack.port_open(held) and not stack.listens(other, held), "an open port is not a started service"
        assert not stack.listens(None, port)
    finally:
        stack._stop_pid(pid)
        stack._stop_pid(other)
    assert not stack.listens(pid, port), "a stopped service listens nowhere"


def test_wait_port__a_service_that_could_not_bind_has_not_started(logs: Path, held: int) -> None:
    # before: the port was open (the other program's), so the dead service counted as started
    pid = stack._spawn("late", *_listener(held))
    with pytest.raises(stack.StackError, match=f"late did not start on port {held}"):
        stack._wait_port(held, "late", pid)
    assert "Address already in use" in (logs / "late.log").read_text()


def test_serve__starts_again_on_another_port_when_its_port_was_taken(logs: Path, held: int,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    # the race: the preferred port looked free, and another stack bound it first
    real = stack.free_port
    monkeypatch.setattr(stack, "free_port", lambda preferred: held if preferred == 54999 else real(preferred))
    port, pid = stack._serve("racer", 54999, _listener)
    try:
        assert port != held and stack.listens(pid, port)
    finally:
        stack._stop_pid(pid)
