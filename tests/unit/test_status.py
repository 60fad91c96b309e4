"""The execution status vocabulary: worker/status.py mirrors the migration that states it."""

from __future__ import annotations

import re
from pathlib import Path

from worker.status import FINISHING, ExecutionStatus

MIGRATION = (Path(__file__).resolve().parents[2] / "supabase" / "migrations"
             / "20261121000400_tasks_and_executions.sql")


def _sql_function_body(name: str) -> str:
    text = MIGRATION.read_text()
    match = re.search(rf"create or replace function scheduler\.{name}\(.*?\$\$(.*?)\$\$", text, re.S)
    assert match, f"scheduler.{name} not found in {MIGRATION.name}"
    return match.group(1)


def _quoted(body: str) -> list[str]:
    return re.findall(r"'([a-z_]+)'", body)


def test_status__same_values_in_the_same_order_as_the_database() -> None:
    assert [s.value for s in ExecutionStatus] == _quoted(_sql_function_body("execution_statuses"))


def test_status__terminal_as_scheduler_is_terminal() -> None:
    not_terminal = _quoted(_sql_function_body("is_terminal"))
    assert "not in" in _sql_function_body("is_terminal")
    assert {s for s in ExecutionStatus if not s.is_terminal} == set(not_terminal) == {"queued", "running"}


def test_status__finishing_as_scheduler_is_finishing() -> None:
    assert {s.value for s in FINISHING} == set(_quoted(_sql_function_body("is_finishing")))
    assert all(s.is_terminal for s in FINISHING)
    assert ExecutionStatus("needs_input").is_finishing and not ExecutionStatus.CANCELLED.is_finishing


def test_status__is_a_str() -> None:
    assert ExecutionStatus.SUCCEEDED == "succeeded" and f"{ExecutionStatus.TIMED_OUT}" == "timed_out"
