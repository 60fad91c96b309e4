"""The chat function's execution statuses (a TypeScript union) are the database's.

supabase/functions/chat/execution_status.ts lists them for the act-as path
(a finished execution gets no reply); the database's list is
scheduler.execution_statuses(), from which the CHECKs on
agent_task_executions.status are built, and "finished" is the terminal set.
"""

from __future__ import annotations

import json
import os
import subprocess
from typing import Any

import psycopg
import pytest
from psycopg.rows import tuple_row

from worker import stack

pytestmark = pytest.mark.integration


def ts_statuses() -> dict[str, list[str]]:
    code = ('import { EXECUTION_STATUSES, FINISHED_EXECUTION_STATUSES } from '
            '"./supabase/functions/chat/execution_status.ts";'
            'console.log(JSON.stringify({all: EXECUTION_STATUSES, finished: FINISHED_EXECUTION_STATUSES}))')
    res = subprocess.run([stack.deno_binary(), "eval", code], cwd=stack.ROOT, capture_output=True, text=True,
                         env=dict(os.environ, NO_COLOR="1"),
                         timeout=120, check=True)
    parsed: dict[str, list[str]] = json.loads(res.stdout)
    return parsed


def db_statuses(conn: psycopg.Connection[Any]) -> dict[str, list[str]]:
    """The database's vocabulary (the status CHECKs are built from it; pgTAP holds them equal)."""
    cur = conn.cursor(row_factory=tuple_row)
    row = cur.execute("""
        select s.statuses,
               array(select x from unnest(s.statuses) x where scheduler.is_terminal(x))
        from (select scheduler.execution_statuses() as statuses) s""").fetchone()
    assert row is not None
    return {"all": list(row[0]), "finished": list(row[1])}


def test_execution_statuses__the_functions_union_is_the_databases(conn: psycopg.Connection[Any]) -> None:
    ts, db = ts_statuses(), db_statuses(conn)
    assert len(db["all"]) >= 8 and set(db["finished"]) < set(db["all"]), db
    assert sorted(ts["all"]) == sorted(db["all"])
    assert sorted(ts["finished"]) == sorted(db["finished"])
