"""Claim latency against queue depth (1k -> 100k queued) over finished history.

One fresh database: 1,000 users with one manual task each (overlap_policy
allow), H finished executions of those tasks (default 1,000,000, set-based
insert, then vacuum analyze), and a queue topped up to each depth in turn
(analysed again, as autovacuum would). At each depth: `--calls` claims of 10
with the per-user cap 8 (the worker's default), each in a transaction that is
rolled back, so the depth stays put; client wall time → p50 / p99, each
measured --rounds times (median of the rounds, min and max of their p50).

Each depth is measured twice in the same run: with the function as shipped
(ordered walks of the claim indexes pinned: enable_sort, enable_bitmapscan,
enable_hashjoin, enable_mergejoin and jit off) and with those settings reset
on the function (the plan the planner picks on its own, as before), in
alternating order.

Prints one JSON object. Not a test: figures are noisy on a shared machine.

    python bench/bench_claim_depth.py [--history 1000000] [--depths 1000,10000,100000]
                                      [--calls 200] [--rounds 3]
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


def set_pinned(conn: psycopg.Connection[Any], pinned: bool) -> None:
    for name in PINNED:
        if pinned:
            conn.execute(f"alter function {CLAIM} set {name} = off")
        else:
            conn.execute(f"alter function {CLAIM} reset {name}")


def claims(url: str, calls: int) -> dict[str, Any]:
    """A new session (a fresh cached plan), warm-up, then `calls` claims rolled back."""
    times: list[float] = []
    got: list[int] = []
    with psycopg.connect(url) as conn:
        for i in range(WARMUP + calls):
            started = time.perf_counter()
            rows = conn.execute(
                "select id from scheduler.claim_executions('bench-depth', 10, 30, 8)").fetchall()
            ms = (time.perf_counter() - started) * 1000
            conn.rollback()
            if i >= WARMUP:
                times.append(ms)
                got.append(len(rows))
    times.sort()
    return {"p50_ms": round(statistics.median(times), 3),
            "p99_ms": round(times[max(0, int(len(times) * 0.99) - 1)], 3),
            "max_ms": round(times[-1], 3), "claimed_per_call_min": min(got)}


def summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Rounds of one variant at one depth: median of the rounds' p50 and p99."""
    return {"p50_ms": statistics.median(r["p50_ms"] for r in runs),
            "p50_ms_min": min(r["p50_ms"] for r in runs),
            "p50_ms_max": max(r["p50_ms"] for r in runs),
            "p99_ms": statistics.median(r["p99_ms"] for r in runs),
            "max_ms": max(r["max_ms"] for r in runs),
            "claimed_per_call_min": min(r["claimed_per_call_min"] for r in runs)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--history", type=int, default=1_000_000)
    parser.add_argument("--depths", default="1000,10000,100000")
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3,
                        help="measurements per variant and depth (alternating), median reported")
    args = parser.parse_args()
    depths = sorted(int(d) for d in args.depths.split(","))

    state = stack.up(with_services=False)
    name = f"bench_claim_depth_{uuid.uuid4().hex[:8]}"
    url = stack.create_database(state, name)
    by_depth: dict[str, dict[str, Any]] = {}
    try:
        started = time.perf_counter()
        seed_ours(url, depths[0], TASKS, TASKS, args.history)
        seed_s = time.perf_counter() - started
        with psycopg.connect(url, autocommit=True) as conn:
            for i, depth in enumerate(depths):
                top_up(conn, depth)
                runs: dict[str, list[dict[str, Any]]] = {"shipped": [], "unpinned": []}
                for r in range(args.rounds):
                    for pinned in ([True, False] if (i + r) % 2 == 0 else [False, True]):
                        set_pinned(conn, pinned)
                        runs["shipped" if pinned else "unpinned"].append(claims(url, args.calls))
                set_pinned(conn, True)
                by_depth[str(depth)] = {k: summary(v) for k, v in runs.items()}
    finally:
        stack.drop_database(state, name)

    p50s = [by_depth[str(d)]["shipped"]["p50_ms"] for d in depths]
    spread = max(p50s) / min(p50s) - 1
    ok = all(e[k]["claimed_per_call_min"] == 10 for e in by_depth.values() for k in e)
    print(json.dumps({
        "history_rows": args.history,
        "by_depth": by_depth,
        "shipped_p50_spread": round(spread, 3),
        "goal_p50_spread": GOAL_SPREAD,
        "goal_met": spread <= GOAL_SPREAD,
        "conditions": {
            "load_average_end": os.getloadavg(), "cpus": os.cpu_count(), "calls": args.calls, "rounds": args.rounds,
            "seed_s": round(seed_s, 1),
            "notes": ("claim_executions(worker, 10, 30, per_user_limit 8) over 1,000 users' tasks,"
                      " one session per measurement, rolled back after each call; client wall"
                      " time; 'unpinned' resets " + ", ".join(PINNED) + " on the"
                      " function (the planner's own choice, as before). No finish, no worker."
                      " The local cluster runs with fsync off; 2-core machine shared with other"
                      " work, so figures are noisy."),
        },
    }, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
