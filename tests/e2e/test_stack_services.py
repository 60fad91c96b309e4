"""`stack up` keeps running services, unless they were started from other code."""

from __future__ import annotations

from pathlib import Path

import pytest

from worker import stack

pytestmark = pytest.mark.e2e


def test_code_digest__changes_with_a_source_file_only(tmp_path: Path) -> None:
    (tmp_path / "index.ts").write_text("export const a = 1;\n")
    (tmp_path / "notes.md").write_text("x\n")
    first = stack.code_digest(tmp_path)
    (tmp_path / "notes.md").write_text("y\n")
    assert stack.code_digest(tmp_path) == first
    (tmp_path / "index.ts").write_text("export const a = 2;\n")
    assert stack.code_digest(tmp_path) != first


def test_up__restarts_services_started_from_other_code_on_the_same_port() -> None:
    state = stack.up()
    assert state.chat_pid and state.chat_port
    kept = stack.up()
    assert kept.chat_pid == state.chat_pid  # same code: the running function is kept

    kept.chat_digest = "from-another-checkout"
    if kept.llm_is_fake:
        kept.llm_digest = "from-another-checkout"
    kept.save()
    fresh = stack.up()
    assert fresh.chat_pid != state.chat_pid and fresh.chat_port == state.chat_port
    assert stack.port_open(fresh.chat_port)
    assert fresh.chat_digest == stack.code_digest(stack.CHAT_FUNCTION.parents[1])
    if fresh.llm_is_fake:
        assert fresh.llm_pid != state.llm_pid and fresh.llm_port == state.llm_port
        assert stack.port_open(fresh.llm_port or 0)
