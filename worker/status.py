"""The execution status vocabulary, as the worker speaks it.

The database states it once (`scheduler.execution_statuses()`,
`scheduler.is_terminal`, `scheduler.is_finishing` in
supabase/migrations/20261121000400_tasks_and_executions.sql); this is its
Python mirror, and tests/unit/test_status.py and
tests/integration/test_status_vocabulary.py hold the two equal.
"""

from __future__ import annotations

import enum
from typing import Final


class ExecutionStatus(enum.StrEnum):
    """Values of agent_task_executions.status, in lifecycle order."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    NEEDS_INPUT = "needs_input"
    CANCELLED = "cancelled"
    SKIPPED = "skipped"

    @property
    def is_terminal(self) -> bool:
        """Nothing moves the execution again (scheduler.is_terminal)."""
        return self not in (ExecutionStatus.QUEUED, ExecutionStatus.RUNNING)

    @property
    def is_finishing(self) -> bool:
        """A status a worker may finish a running execution with (scheduler.is_finishing)."""
        return self in FINISHING


FINISHING: Final = frozenset({ExecutionStatus.SUCCEEDED, ExecutionStatus.FAILED,
                              ExecutionStatus.TIMED_OUT, ExecutionStatus.NEEDS_INPUT})
