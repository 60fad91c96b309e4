"""The operator's reads at depth: the console's operator page and the CLI's queue and executions.

One fresh database per history size (bench_queue.seed_ours: 1,000 queued
runs of 1,000 tasks over 100 users, and H finished executions, finished 30
days ago, none failed: the failures list's worst case, where a walk by age
would pass every success). Each of the operator page's queries
(worker.console.pages.OPERATOR_QUERIES: queue figures, workers, running
runs, latest failures), the CLI's oldest-claimable query and its executions
list (all, and --status failed) and one poll of `executions tail`, --calls
times after warm-up in one session: client wall time p50.

Prints one JSON object. Not a test: figures are noisy on a shared machine.

    python bench/bench_operator.py [--histories 0,1000000] [--calls 20]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
from psycopg.rows import dict_row

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_queue import seed_ours  # noqa: E402

from worker import cli, stack  # noqa: E402
from worker.console.pages import OPERATOR_QUERIES  # noqa: E402

# the CLI's `queue stats` besides scheduler.queue_stats (worker/cli.py)
OLDEST_READY = ("select extract(epoch from (now() - min(run_after)))::float as oldest_ready_s"
                " from public.agent_task_executions where status = 'queued' and run_after <= now()")
GOAL_P50_MS = 20.0
WARMUP = 3


def measure(url: str, calls: int) -> dict[str, float]:
    out: dict[str, float] = {}
    with psycopg.connect(url, autocommit=True, row_factory=dict_row) as conn:
        since = conn.execute("select now() - interval '1 minute' as t").fetchone()
        assert since is not None
        reads: dict[str, Callable[[], Any]] = {
            **{name: (lambda q=query: conn.execute(q).fetchall()) for name, query in OPERATOR_QUERIES.items()},
            "cli_oldest_ready": lambda: conn.execute(OLDEST_READY).fetchall(),
            # `agent-tasks executions list` (default 50) and one poll of `executions tail`
            "cli_executions_list": lambda: cli._executions(conn, None, None, 50),
            "cli_executions_list_failed": lambda: cli._executions(conn, None, "failed", 50),
            "cli_executions_tail_poll": lambda: cli._executions(conn, None, None, 500, since["t"]),
        }
        for name, read in reads.items():
            times = []
            for i in range(WARMUP + calls):
                t0 = time.perf_counter()
                read()
                if i >= WARMUP:
                    times.append((time.perf_counter() - t0) * 1000)
            out[name] = round(statistics.median(times), 2)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--histories", default="0,1000000")
    parser.add_argument("--calls", type=int, default=20)
    args = parser.parse_args()
    state = stack.up(with_services=False)
    results: list[dict[str, Any]] = []
    for history in (int(h) for h in args.histories.split(",")):
        name = "bench_operator_" + uuid.uuid4().hex[:8]
        url = stack.create_database(state, name)
        try:
            seed_ours(url, 1000, 1000, 100, history)
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute("vacuum analyze")
            p50 = measure(url, args.calls)
            results.append({"history": history, "p50_ms": p50,
                            "goal_met": all(v < GOAL_P50_MS for v in p50.values())})
        finally:
            stack.drop_database(state, name)
    print(json.dumps({
        "bench": "operator",
        "conditions": {"queued": 1000, "failed_in_history": 0, "calls": args.calls,
                       "goal_p50_ms": GOAL_P50_MS, "load_average_at_end": os.getloadavg()[0]},
        "results": results,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
