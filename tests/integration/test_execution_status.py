"""The chat function's execution statuses (a TypeScript union) are the database's.

supabase/functions/chat/execution_status.ts lists them for the act-as path
(a finished execution gets no reply); the database's list is the type or
CHECK constraint of agent_task_executions.status, and "finished" is the set
for which finished_at is set.
"""

from __future__ import annotations

import json
import os
import re
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


def quoted(definition: str) -> list[str]:
    return re.findall(r"'([^']+)'::text", definition)


def db_statuses(conn: psycopg.Connection[Any]) -> dict[str, list[str]]:
    cur = conn.cursor(row_factory=tuple_row)
    labels = cur.execute("""
        select array_agg(e.enumlabel order by e.enumsortorder)
        from pg_attribute a join pg_enum e on e.enumtypid = a.atttypid
        where a.attrelid = 'public.agent_task_executions'::regclass and a.attname = 'status'""").fetchone()
    checks = [r[0] for r in cur.execute("""
        select pg_get_constraintdef(oid) from pg_constraint
        where conrelid = 'public.agent_task_executions'::regclass and contype = 'c'""")]
    if labels is not None and labels[0] is not None:
        everything = list(labels[0])
    else:
        everything = quoted(next(c for c in checks if c.startswith("CHECK ((status = ANY")))
    finished = quoted(next(c for c in checks if "finished_at IS NOT NULL" in c and "status" in c))
    return {"all": everything, "finished": finished}


def test_execution_statuses__the_functions_union_is_the_databases(conn: psycopg.Connection[Any]) -> None:
    ts, db = ts_statuses(), db_statuses(conn)
    assert len(db["all"]) >= 8 and set(db["finished"]) < set(db["all"]), db
    assert sorted(ts["all"]) == sorted(db["all"])
    assert sorted(ts["finished"]) == sorted(db["finished"])
