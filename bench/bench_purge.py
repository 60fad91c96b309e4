"""The purge: one statement over a large history against the purge job's batches.

Two fresh databases with the same history: --history finished executions
(bench_queue.seed_ours: 1,000 tasks of 100 users, finished 30 days ago), each
with its two messages (the scheduled prompt and the reply, execution_id set:
the foreign key sets it to NULL when the run goes). One database deletes them
all with one statement (`scheduler.purge_history`, as before); the other
calls the purge job's function (`scheduler.purge_expired(--batch)`, each call
its own transaction) until nothing is left. A statement's time is how long
it holds the cluster's vacuum horizon (no row that died after it began can
be removed meanwhile, the hot queue table's included).

Prints one JSON object. Not a test: figures are noisy on a shared machine.

    python bench/bench_purge.py [--history 300000] [--batch 5000]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_queue import seed_ours  # noqa: E402

from worker import stack  # noqa: E402


def seed(url: str, history: int) -> None:
    seed_ours(url, 1000, 1000, 100, history)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("insert into public.conversation_sessions (id, user_id, agent_id)"
                     " select t.id, t.user_id, t.agent_id from public.agent_tasks t")
        # as seed_ours does for its rows: the write triggers' checks are not what this measures
        conn.execute("set session_replication_role = replica")
        conn.execute("insert into public.chat_messages_v2 (conversation_id, user_id, role, content, execution_id)"
                     " select e.task_id, e.user_id, r, 'x', e.id from public.agent_task_executions e,"
                     " unnest(array['user', 'assistant']) r where e.status = 'succeeded'")
        conn.execute("set session_replication_role = origin")
        conn.execute("vacuum analyze")


def one_statement(url: str) -> dict[str, Any]:
    with psycopg.connect(url, autocommit=True) as conn:
        t0 = time.perf_counter()
        row = conn.execute("select scheduler.purge_history('29 days')").fetchone()
        return {"deleted": row[0] if row else None, "seconds": round(time.perf_counter() - t0, 2)}


def batched(url: str, batch: int) -> dict[str, Any]:
    calls: list[float] = []
    deleted = 0
    with psycopg.connect(url, autocommit=True) as conn:
        t0 = time.perf_counter()
        while True:
            t1 = time.perf_counter()
            # a day on: the history (finished 30 days ago) is past the default 30-day retention
            row = conn.execute("select scheduler.purge_expired(%s, now() + interval '1 day')", (batch,)).fetchone()
            calls.append((time.perf_counter() - t1) * 1000)
            assert row is not None
            deleted += row[0]["executions"]
            if row[0]["executions"] == 0:
                break
        total = time.perf_counter() - t0
    full = calls[:-1] or calls
    return {"deleted": deleted, "calls": len(calls), "batch_ms_p50": round(statistics.median(full)),
            "batch_ms_max": round(max(full)), "seconds": round(total, 2)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--history", type=int, default=300_000)
    parser.add_argument("--batch", type=int, default=5000)
    args = parser.parse_args()
    state = stack.up(with_services=False)
    out: dict[str, Any] = {}
    ok = True
    for mode in ("one_statement", "batched"):
        name = "bench_purge_" + uuid.uuid4().hex[:8]
        url = stack.create_database(state, name)
        try:
            seed(url, args.history)
            out[mode] = one_statement(url) if mode == "one_statement" else batched(url, args.batch)
            with psycopg.connect(url) as conn:
                left = conn.execute("select count(*) from public.agent_task_executions"
                                    " where status = 'succeeded'").fetchone()
                kept = conn.execute("select count(*) from public.chat_messages_v2").fetchone()
            out[mode]["messages_kept"] = kept[0] if kept else None
            ok = ok and out[mode]["deleted"] == args.history and left is not None and left[0] == 0
        finally:
            stack.drop_database(state, name)
    print(json.dumps({
        "bench": "purge",
        "conditions": {"history": args.history, "messages_per_run": 2, "batch": args.batch,
                       "load_average_at_end": os.getloadavg()[0]},
        **out,
    }))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
