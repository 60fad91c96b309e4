"""One list of the state keys the scheduler keeps, in SQL and in the chat function.

A task's state holds the agent's own keys and a few the task lifecycle keeps
(the question a task waits on, a budget pause). The database drops those from
every report (`scheduler.lifecycle_state_keys()`, used by
`scheduler.apply_task_report`); the chat function hides them from the agent's
view of its state and refuses a report that sets one
(`LIFECYCLE_STATE_KEYS` in supabase/functions/chat/tools/definitions.ts).
They cannot share code, so this test holds the two lists equal.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import psycopg
import pytest

from worker import stack

pytestmark = pytest.mark.integration

KEYS_TS = Path(__file__).with_name("lifecycle_state_keys.ts")


def test_lifecycle_state_keys__sql_and_the_chat_function_list_the_same(conn: psycopg.Connection[Any]) -> None:
    sql = conn.execute("select scheduler.lifecycle_state_keys() as keys").fetchone()["keys"]
    out = subprocess.run([stack.deno_binary(), "run", "--no-config", "--no-lock", str(KEYS_TS)],
                         capture_output=True, text=True, timeout=120, check=True)
    ts = json.loads(out.stdout)
    assert sorted(sql) == sorted(ts)
    # the question's keys, which an answer clears, are among them
    question = conn.execute("select scheduler.question_state_keys() as keys").fetchone()["keys"]
    assert set(question) < set(sql) and "pending_question" in question
