"""The worker's ExecutionStatus and the database's vocabulary agree, asked of the database itself."""

from __future__ import annotations

import psycopg
import pytest

from worker.status import ExecutionStatus

pytestmark = pytest.mark.integration


def test_status_vocabulary__matches_the_database(db_url: str) -> None:
    with psycopg.connect(db_url) as conn:
        statuses = conn.execute("select scheduler.execution_statuses()").fetchone()
        assert statuses is not None and statuses[0] == [s.value for s in ExecutionStatus]
        for status in ExecutionStatus:
            row = conn.execute("select scheduler.is_terminal(%s), scheduler.is_finishing(%s)",
                               (status.value, status.value)).fetchone()
            assert row == (status.is_terminal, status.is_finishing), status
