"""Claim latency against queue depth (1k -> 100k queued) over finished history.

One fresh database: 1,000 users with one manual task each (overlap_policy
allow) and H finished executions of those tasks (default 1,000,000,
set-based insert, then vacuum analyze), copied once per depth; each copy's
queue is topped up to its depth (analysed again, as autovacuum would, then a
checkpoint). Each round then goes round the depths in turn (so that the
machine's other activity falls on every depth alike): `--calls` claims of 10
with the per-user cap 8 (the worker's default), each in a transaction that is
rolled back, so the depth stays put; client wall time → p50 / p99 (median of
the rounds, min and max of their p50), and the shared pages one claim touches
(EXPLAIN ANALYZE, BUFFERS): its work, which the machine's load does not move.

Each depth is measured twice in the same run: with the function as shipped
(ordered walks of the claim indexes pinned: enable_sort, enable_bitmapscan,
enable_hashjoin, enable_mergejoin and jit off) and with those settings reset
on the function (the plan the planner picks on its own, as before), in
alternating order.

Prints one JSON object. Not a test: figures are noisy on a shared machine.

    python bench/bench_claim_depth.py [--history 1000000] [--depths 1000,10000,100000]
                                      [--calls 200] [--rounds 11]
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

from bench_queue import insert_queued, seed_ours  # noqa: E402

from worker import stack  # noqa: E402

CLAIM = "scheduler.claim_executions(text, integer, integer, integer, timestamptz)"
PINNED = ("enable_sort", "enable_bitmapscan", "enable_hashjoin", "enable_mergejoin", "jit")
TASKS = 1000
GOAL_SPREAD = 0.20
WARMUP = 10


def top_up(conn: psycopg.Connection[Any], depth: int) -> None:
    """Queued executions up to `depth`, occurrences after those already there."""
    (have,) = conn.execute("select count(*)::int from public.agent_task_executions"
                           " where status = 'queued'").fetchone() or (0,)
    if depth > have:
        insert_queued(conn, TASKS, have, depth)
    conn.execute("vacuum analyze public.agent_task_executions")
    # the top-up's dirty pages written now, not by the checkpointer during
    # the measurement that follows (it made one depth's rounds slower than
    # another's with the same work, buffers_per_claim below)
    conn.execute("checkpoint")


def set_pinned(conn: psycopg.Connection[Any], pinned: bool) -> None:
    for name in PINNED:
        if pinned:
            conn.execute(f"alter function {CLAIM} set {name} = off")
        else:
            conn.execute(f"alter function {CLAIM} reset {name}")


CLAIM_CALL = "select id from scheduler.claim_executions('bench-depth', 10, 30, 8)"


def claims(url: str, calls: int) -> dict[str, Any]:
    """A new session (a fresh cached plan), warm-up, then `calls` claims rolled back;
    then one more under EXPLAIN (ANALYZE, BUFFERS): the pages one claim touches,
    a measure of its work that the machine's other activity does not move."""
    times: list[float] = []
    got: list[int] = []
    with psycopg.connect(url) as conn:
        for i in range(WARMUP + calls):
            started = time.perf_counter()
            rows = conn.execute(CLAIM_CALL).fetchall()
            ms = (time.perf_counter() - started) * 1000
            conn.rollback()
            if i >= WARMUP:
                times.append(ms)
                got.append(len(rows))
        (plan,) = conn.execute(
            "explain (analyze, buffers, format json) " + CLAIM_CALL).fetchone() or (None,)
        conn.rollback()
    top = plan[0]["Plan"]
    times.sort()
    return {"p50_ms": round(statistics.median(times), 3),
            "p99_ms": round(times[max(0, int(len(times) * 0.99) - 1)], 3),
            "max_ms": round(times[-1], 3), "claimed_per_call_min": min(got),
            "buffers_per_claim": top["Shared Hit Blocks"] + top["Shared Read Blocks"]}


def summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Rounds of one variant at one depth: median of the rounds' p50 and p99."""
    return {"p50_ms": statistics.median(r["p50_ms"] for r in runs),
            "p50_ms_min": min(r["p50_ms"] for r in runs),
            "p50_ms_max": max(r["p50_ms"] for r in runs),
            "p99_ms": statistics.median(r["p99_ms"] for r in runs),
            "max_ms": max(r["max_ms"] for r in runs),
            "claimed_per_call_min": min(r["claimed_per_call_min"] for r in runs),
            "buffers_per_claim": statistics.median(r["buffers_per_claim"] for r in runs)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--history", type=int, default=1_000_000)
    parser.add_argument("--depths", default="1000,10000,100000")
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=11,
                        help="measurements per variant and depth (alternating), median reported")
    args = parser.parse_args()
    depths = sorted(int(d) for d in args.depths.split(","))

    state = stack.up(with_services=False)
    base = f"bench_claim_depth_{uuid.uuid4().hex[:8]}"
    names = {depth: f"{base}_{depth}" for depth in depths}
    urls: dict[int, str] = {}
    runs: dict[int, dict[str, list[dict[str, Any]]]] = {d: {"shipped": [], "unpinned": []} for d in depths}
    try:
        started = time.perf_counter()
        first = depths[0]
        urls[first] = stack.create_database(state, names[first])
        seed_ours(urls[first], first, TASKS, TASKS, args.history)
        # one database per depth, copies of the seeded one, so that the rounds
        # can go round the depths: whatever else the machine does (autovacuum,
        # checkpoints, other work) falls on every depth alike
        with psycopg.connect(stack.database_url(state, "postgres"), autocommit=True) as admin:
            for depth in depths[1:]:
                admin.execute(f'create database "{names[depth]}" template "{names[first]}"'
                              " strategy file_copy")
                urls[depth] = stack.database_url(state, names[depth])
        for depth in depths:
            with psycopg.connect(urls[depth], autocommit=True) as conn:
                top_up(conn, depth)
        seed_s = time.perf_counter() - started
        for r in range(args.rounds):
            order = depths[r % len(depths):] + depths[:r % len(depths)]
            for i, depth in enumerate(order):
                with psycopg.connect(urls[depth], autocommit=True) as conn:
                    for pinned in ([True, False] if (i + r) % 2 == 0 else [False, True]):
                        set_pinned(conn, pinned)
                        runs[depth]["shipped" if pinned else "unpinned"].append(claims(urls[depth], args.calls))
                    set_pinned(conn, True)
    finally:
        for name in names.values():
            stack.drop_database(state, name)
    by_depth = {str(d): {k: summary(v) for k, v in runs[d].items()} for d in depths}

    p50s = [by_depth[str(d)]["shipped"]["p50_ms"] for d in depths]
    spread = max(p50s) / min(p50s) - 1
    buffers = [by_depth[str(d)]["shipped"]["buffers_per_claim"] for d in depths]
    ok = all(e[k]["claimed_per_call_min"] == 10 for e in by_depth.values() for k in e)
    print(json.dumps({
        "history_rows": args.history,
        "by_depth": by_depth,
        "shipped_p50_spread": round(spread, 3),
        "shipped_buffers_spread": round(max(buffers) / min(buffers) - 1, 3),
        "goal_p50_spread": GOAL_SPREAD,
        "goal_met": spread <= GOAL_SPREAD,
        "conditions": {
            "load_average_end": os.getloadavg(), "cpus": os.cpu_count(), "calls": args.calls, "rounds": args.rounds,
            "seed_s": round(seed_s, 1),
            "notes": ("claim_executions(worker, 10, 30, per_user_limit 8) over 1,000 users' tasks,"
                      " one session per measurement, rolled back after each call; client wall"
                      " time; 'unpinned' resets " + ", ".join(PINNED) + " on the"
                      " function (the planner's own choice, as before). No finish, no worker."
                      " buffers_per_claim: shared pages hit or read by one claim (EXPLAIN ANALYZE,"
                      " BUFFERS, nested statements included), median of the rounds. One database"
                      " per depth (copies of one seeded database), each topped up, vacuumed,"
                      " analysed and checkpointed; the rounds go round the depths in turn."
                      " The local cluster runs with fsync off; 2-core machine shared with other"
                      " work, so figures are noisy."),
        },
    }, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
