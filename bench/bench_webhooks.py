"""Webhook delivery: what the fan-out costs a notification, and how fast one worker delivers.

Real pieces: the local Postgres (a fresh database), the chat function under
Deno with the fake model (the worker checks it at start), one
`python -m worker.runner` process, and an HTTP receiver in this process
(aiohttp, on 127.0.0.1: the local outbound policy allows loopback and
plain HTTP) that answers 200 at once and records when each POST arrived.

* fan_out: N notifications inserted one per statement (as
  scheduler.notify_user inserts them), for a user with no webhook and for a
  user with one matching endpoint; the difference per insert is what the
  outbox trigger costs (the delivery row, its indexes, the NOTIFY).
* delivery: N notifications of one user with ENDPOINTS endpoints, inserted
  in one transaction while the worker idles; time from that commit until
  the receiver has every POST, and each POST's latency from the commit.
  Every delivery must end `delivered` with one attempt, and every body must
  verify with its endpoint's secret (worker.webhooks.sign).

Prints one JSON object with its conditions. Not a test: the machine has
2 cores shared with whatever else runs (the load average is printed).

    python bench/bench_webhooks.py [--notifications 500] [--endpoints 2]
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._worker_support import start_env, summary_ms, wait_until
from tests.conftest import create_user
from worker.webhooks import sign


class Receiver:
    """aiohttp on its own thread and loop: 200 for every POST, with its arrival time."""

    def __init__(self) -> None:
        self.arrivals: list[tuple[float, dict[str, str], bytes]] = []
        self.port = 0
        self._ready = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, daemon=True)

    async def _post(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.arrivals.append((time.time(), dict(request.headers), body))
        return web.Response(status=200)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application()
        app.router.add_post("/hook/{n}", self._post)
        runner = web.AppRunner(app, access_log=None)
        self._loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", 0)
        self._loop.run_until_complete(site.start())
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._ready.set()
        self._loop.run_forever()

    def start(self) -> None:
        self._thread.start()
        self._ready.wait(10)

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)


def fan_out(conn: Any, n: int) -> dict[str, Any]:
    """µs per notification insert without and with one matching endpoint (alternating blocks)."""
    plain, hooked = create_user(conn), create_user(conn)
    conn.execute("insert into public.webhooks (user_id, url, kinds) values (%s, 'http://127.0.0.1:9/none', '{info}')",
                 (hooked,))
    times: dict[str, list[float]] = {"without": [], "with": []}
    block = max(1, n // 5)
    for _ in range(5):
        for label, user in (("without", plain), ("with", hooked)):
            started = time.perf_counter()
            for i in range(block):
                conn.execute("insert into public.notifications (user_id, kind, title) values (%s, 'info', %s)",
                             (user, f"n{i}"))
            times[label].append((time.perf_counter() - started) * 1e6 / block)
    # the endpoint is unreachable on purpose: its deliveries must not be sent while measuring delivery
    conn.execute("delete from public.webhooks where user_id = %s", (hooked,))
    medians = {k: statistics.median(v) for k, v in times.items()}
    return {"notifications_per_case": block * 5, "us_per_insert_median": {k: round(v, 1) for k, v in medians.items()},
            "trigger_cost_us": round(medians["with"] - medians["without"], 1),
            "block_medians_us": {k: [round(x, 1) for x in v] for k, v in times.items()}}


def delivery(env: Any, conn: Any, receiver: Receiver, n: int, endpoints: int) -> dict[str, Any]:
    user = create_user(conn)
    secrets: dict[str, str] = {}
    for e in range(endpoints):
        row = conn.execute("insert into public.webhooks (user_id, url, kinds) values (%s, %s, '{info}')"
                           " returning id, secret", (user, f"http://127.0.0.1:{receiver.port}/hook/{e}")).fetchone()
        secrets[str(row[0])] = row[1]
    expected = n * endpoints
    with conn.transaction():
        conn.execute("insert into public.notifications (user_id, kind, title)"
                     " select %s, 'info', 'bench ' || g from generate_series(1, %s) g", (user, n))
    committed = time.time()
    if not wait_until(lambda: len(receiver.arrivals) >= expected, 600, 0.02):
        raise RuntimeError(f"{len(receiver.arrivals)} of {expected} POSTs arrived in 600 s")
    last = max(t for t, _, _ in receiver.arrivals)
    wait_until(lambda: conn.execute("select count(*) from scheduler.webhook_deliveries where status = 'delivered'"
                                    " and user_id = %s", (user,)).fetchone()[0] == expected, 60)
    by_status = dict(conn.execute("select status || ':' || attempts, count(*)::int from scheduler.webhook_deliveries"
                                  " where user_id = %s group by 1", (user,)).fetchall())
    hooks = dict(conn.execute("select id::text, webhook_id::text from scheduler.webhook_deliveries"
                              " where user_id = %s", (user,)).fetchall())
    verified = 0
    for _, headers, body in receiver.arrivals:
        h = {k.lower(): v for k, v in headers.items()}
        expected_sig = sign(secrets[hooks[h["webhook-id"]]], h["webhook-id"], int(h["webhook-timestamp"]), body)
        verified += hmac.compare_digest(expected_sig, h["webhook-signature"])
    latencies = sorted((t - committed) * 1000 for t, _, _ in receiver.arrivals)
    seconds = last - committed
    return {"notifications": n, "endpoints": endpoints, "posts": len(receiver.arrivals),
            "seconds": round(seconds, 3), "posts_per_s": round(len(receiver.arrivals) / seconds, 1),
            "latency_from_commit_ms": summary_ms(latencies),
            "deliveries_by_status_and_attempts": by_status, "signatures_verified": verified,
            "all_delivered_once": by_status == {"delivered:1": expected} and verified == expected}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--notifications", type=int, default=500)
    parser.add_argument("--endpoints", type=int, default=2)
    args = parser.parse_args()
    receiver = Receiver()
    receiver.start()
    env = start_env("bench_webhooks")
    try:
        with env.connect() as conn:
            conn.execute("update chat_private.integration_policy set allow_http = true, allow_loopback = true")
            fan = fan_out(conn, args.notifications)
            conn.execute("delete from scheduler.webhook_deliveries")
            env.spawn_worker("bench-webhooks")
            result = delivery(env, conn, receiver, args.notifications, args.endpoints)
    finally:
        env.close()
        receiver.stop()
    print(json.dumps({
        "fan_out": fan,
        "delivery": result,
        "conditions": {
            "worker": "one python -m worker.runner, WEBHOOK_BATCH 8 (POSTs concurrently per claim)",
            "receiver": "aiohttp on 127.0.0.1, 200 at once, in the bench's process",
            "load_average_end": os.getloadavg(), "cpus": os.cpu_count(),
            "notes": "fsync off (local stack); a fresh database; the fan-out figure is client wall time per "
                     "single-row insert statement in one session, five alternating blocks per case",
        },
    }, indent=2))
    return 0 if result["all_delivered_once"] else 1


if __name__ == "__main__":
    sys.exit(main())
