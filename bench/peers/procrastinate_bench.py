"""Peer for bench/bench_queue.py: Procrastinate doing no-op jobs.

usage: python procrastinate_bench.py DATABASE_URL N CONCURRENCY

Applies Procrastinate's schema to the (fresh) database, defers N no-op jobs in
one batch (not timed), then runs one worker with the given concurrency and
`wait=False` (it returns when no job is left) and times it. Prints one JSON
object on stdout.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time

import procrastinate

POOL_SPARE_CONNECTIONS = 2  # the worker's fetch loop and heartbeat besides the job slots


async def main(url: str, n: int, concurrency: int) -> dict[str, object]:
    logging.disable(logging.CRITICAL)
    app = procrastinate.App(connector=procrastinate.PsycopgConnector(
        conninfo=url, min_size=1, max_size=concurrency + POOL_SPARE_CONNECTIONS))

    @app.task(name="noop")
    async def noop() -> None:
        return None

    async with app.open_async():
        await app.schema_manager.apply_schema_async()
        await noop.batch_defer_async(*({} for _ in range(n)))

        started = time.perf_counter()
        await app.run_worker_async(concurrency=concurrency, wait=False, listen_notify=False,
                                   install_signal_handlers=False)
        seconds = time.perf_counter() - started

        rows = await app.connector.execute_query_all_async(
            "select status::text as status, count(*)::int as n from procrastinate_jobs group by 1")
    by_status = {r["status"]: r["n"] for r in rows}
    return {
        "system": "procrastinate",
        "version": procrastinate.__version__,
        "n": n,
        "concurrency": concurrency,
        "by_status": by_status,
        "seconds": seconds,
        "per_s": n / seconds,
    }


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    result = asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
    print(json.dumps(result))
