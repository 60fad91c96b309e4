"""Keyset pages: the conversation list at depth 1k / 10k / 100k.

One user owns N conversations (plus 10 other users' 1,000 each, so RLS has
rows to hide), inserted in bulk. Each depth's cursor is the next_cursor of the
row at that depth; the page is `public.list_conversations(null, 20, cursor)`
called the way PostgREST calls it (one transaction, `set local role
authenticated`, the JWT claims in request.jwt.claims), in one session, after
warm-up calls. Client wall time of the call only, p50 / p99 over --calls.

Prints one JSON object. Not a test: figures are noisy on a shared machine.

    python bench/bench_pages.py [--conversations 100100] [--calls 200]
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

from worker import stack  # noqa: E402

GOAL_P50_MS = 2.0
PAGE = 20
WARMUP = 10


def seed(conn: psycopg.Connection[Any], n: int) -> uuid.UUID:
    owner = uuid.uuid4()
    others = [uuid.uuid4() for _ in range(10)]
    for u in [owner, *others]:
        conn.execute("insert into auth.users (id, email) values (%s, %s)",
                     (u, f"pages-{u.hex[:8]}@example.test"))
        conn.execute("insert into public.agents (user_id, name) values (%s, 'Pages')", (u,))
    for u, count in [(owner, n), *((o, 1000) for o in others)]:
        conn.execute(
            "insert into public.conversation_sessions (user_id, agent_id, title, last_message_at,"
            " message_count, created_at)"
            " select %(u)s, a.id, 'c ' || g, now() - make_interval(secs => g), 1,"
            "        now() - make_interval(secs => g + 1)"
            " from public.agents a cross join generate_series(1, %(n)s) g where a.user_id = %(u)s",
            {"u": u, "n": count})
    conn.execute("analyze public.conversation_sessions")
    return owner


def page(conn: psycopg.Connection[Any], claims: str, cursor: str | None) -> tuple[float, int]:
    with conn.transaction():
        conn.execute("set local role authenticated")
        conn.execute("select set_config('request.jwt.claims', %s, true)", (claims,))
        started = time.perf_counter()
        rows = conn.execute("select id from public.list_conversations(null, %s, %s)",
                            (PAGE, cursor)).fetchall()
        return (time.perf_counter() - started) * 1000, len(rows)


def cursor_at(conn: psycopg.Connection[Any], owner: uuid.UUID, depth: int) -> str | None:
    if depth == 0:
        return None
    row = conn.execute(
        "select to_char(activity_at at time zone 'UTC',"
        " 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') || '|' || id::text"
        " from public.conversation_sessions where user_id = %s and deleted_at is null"
        " order by activity_at desc, id desc offset %s limit 1",
        (owner, depth - 1)).fetchone()
    assert row is not None
    return str(row[0])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--conversations", type=int, default=100_100)
    parser.add_argument("--calls", type=int, default=200)
    args = parser.parse_args()
    depths = [d for d in (0, 1_000, 10_000, 100_000) if d <= args.conversations - PAGE]

    state = stack.up(with_services=False)
    name = f"bench_pages_{uuid.uuid4().hex[:8]}"
    url = stack.create_database(state, name)
    results: dict[str, Any] = {}
    ok = True
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            owner = seed(conn, args.conversations)
            claims = json.dumps({"role": "authenticated", "sub": str(owner)})
            for depth in depths:
                cursor = cursor_at(conn, owner, depth)
                for _ in range(WARMUP):
                    page(conn, claims, cursor)
                times = []
                for _ in range(args.calls):
                    ms, n = page(conn, claims, cursor)
                    ok = ok and n == PAGE
                    times.append(ms)
                times.sort()
                results[str(depth)] = {
                    "p50_ms": round(statistics.median(times), 3),
                    "p99_ms": round(times[int(len(times) * 0.99) - 1], 3),
                    "max_ms": round(times[-1], 3)}
    finally:
        stack.drop_database(state, name)

    deepest = results[str(depths[-1])]["p50_ms"]
    print(json.dumps({
        "conversations": args.conversations,
        "by_depth": results,
        "goal_p50_ms_at_100k": GOAL_P50_MS,
        "goal_met": deepest < GOAL_P50_MS if depths[-1] == 100_000 else None,
        "conditions": {
            "load_average": os.getloadavg(), "cpus": os.cpu_count(), "calls": args.calls,
            "page_size": PAGE,
            "notes": ("one user with N conversations plus 10 users with 1,000 each; list_conversations"
                      " as that user under RLS (set local role authenticated + JWT claims), one"
                      " session, after warm-up; client wall time of the call, not the transaction"
                      " or the role switch; no PostgREST/HTTP. The local cluster runs with fsync"
                      " off; the machine is shared with other work, so figures are noisy."),
        },
    }, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
