"""Chat function throughput and latency: user turns against an instant fake model.

Starts its own pieces next to the running local Postgres: a fresh database
from the migrated template, the fake OpenAI-compatible model with no
latency, and the real chat function under Deno (CHAT_RATE_LIMIT raised so
the per-user limit is counted but never refuses). Each caller is its own
user with its own agent and keeps one conversation going (so history is
loaded and sent, up to the default 30 messages), starting a new
conversation every NEW_CONVERSATION_EVERY turns so both paths are measured.

Non-streamed turns are sent with an asyncio aiohttp client by 1 and then 32
concurrent callers for a fixed time each. Prints one JSON object:

    {"concurrency_1": {"rps", "p50_ms", "p99_ms", "n", "errors"},
     "concurrency_32": {...}, "db_transactions_per_turn", "goals": {...}}

db_transactions_per_turn: the bench database's transactions (pg_stat_database)
during the concurrency levels, warm-up included, divided by the turns answered
in them. The function sends each transaction as one multi-statement query, so
this is also its round trips per turn; the bench's own few reads add < 0.01.
Counted 11 s after the load stops, when idle backends have reported.

--deep-messages N (default 100,000; 0 skips it) adds one more phase: one
caller whose conversation already holds N messages (inserted in bulk, not
timed) keeps that conversation for every turn, so each turn reads its history
window from the end of a deep conversation; reported as "deep_history" beside
the one-caller figures of a fresh conversation.

Goals on a 2-core machine: p50 < 15 ms at 1 caller, >= 400 turns/s at 32.
The client, Deno, Postgres and the fake share those cores, so the figures
are a floor for the function itself. Not a test: figures are noisy.

    python bench/bench_chat.py [--seconds 10] [--warmup 2] [--concurrency 1,32] [--functions]
                               [--deep-messages 100000]

--functions turns on track_functions in the bench database and adds, per
level, each SQL function's calls and total / self ms per turn
(pg_stat_user_functions; wall time inside the function, so under load it
includes waiting for a core).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import psycopg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.conftest import create_agent, create_user  # noqa: E402
from tests.e2e.conftest import FakeLLM, _wait_http, start_chat_function  # noqa: E402
from worker import stack  # noqa: E402

NEW_CONVERSATION_EVERY = 20
CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
MAX_SECONDS = 60.0
STATS_IDLE_FLUSH_S = 11.0
GOAL_P50_MS_AT_1 = 15.0
GOAL_RPS_AT_32 = 400.0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process (Linux /proc), 0 when unavailable."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def backend_pids(db_url: str, db_name: str) -> list[int]:
    with psycopg.connect(db_url, autocommit=True) as conn:
        rows = conn.execute("select pid from pg_stat_activity where datname = %s and application_name = %s",
                            (db_name, "chat-function")).fetchall()
    return [int(r[0]) for r in rows]


def transactions(db_url: str, db_name: str) -> int:
    """Committed and rolled-back transactions of the bench database so far (pg_stat_database)."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        row = conn.execute("select xact_commit + xact_rollback from pg_stat_database where datname = %s",
                           (db_name,)).fetchone()
    return int(row[0]) if row else 0


def function_times(db_url: str) -> dict[str, tuple[int, float, float]]:
    """pg_stat_user_functions: (calls, total ms, self ms) per function (needs track_functions)."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("select pg_stat_clear_snapshot()")
        rows = conn.execute("select schemaname || '.' || funcname, calls, total_time, self_time"
                            " from pg_stat_user_functions").fetchall()
    return {str(r[0]): (int(r[1]), float(r[2]), float(r[3])) for r in rows}


def function_deltas(before: dict[str, tuple[int, float, float]], after: dict[str, tuple[int, float, float]],
                    turns: int) -> dict[str, dict[str, float]]:
    """Calls, total and self ms per turn of each function called during a phase, costliest first.

    Stats reach the view when a backend goes idle, so the figures cover warm-up turns too
    (divided by measured turns they read a little high); a rough guide, not a measurement.
    """
    out: dict[str, dict[str, float]] = {}
    for name, (calls, total, self_) in after.items():
        c0, t0, s0 = before.get(name, (0, 0.0, 0.0))
        if calls > c0:
            out[name] = {"calls": round((calls - c0) / turns, 2), "total_ms": round((total - t0) / turns, 3),
                         "self_ms": round((self_ - s0) / turns, 3)}
    return dict(sorted(out.items(), key=lambda kv: -kv[1]["total_ms"]))


def percentile(sorted_ms: list[float], q: float) -> float:
    if not sorted_ms:
        return float("nan")
    index = min(len(sorted_ms) - 1, max(0, round(q * (len(sorted_ms) - 1))))
    return sorted_ms[index]


async def caller(session: aiohttp.ClientSession, url: str, headers: dict[str, str], agent_id: str,
                 stop_at: float, record_after: float, latencies: list[float], errors: list[str],
                 keep_conversation: str | None = None, answered: list[int] | None = None) -> None:
    """Turns until stop_at; a new conversation every NEW_CONVERSATION_EVERY turns,
    or always keep_conversation when given."""
    conversation_id: str | None = keep_conversation
    turns = 0
    while time.monotonic() < stop_at:
        body: dict[str, Any] = {"agent_id": agent_id, "message": f"How is my plan going? (turn {turns})"}
        if conversation_id is not None:
            body["conversation_id"] = conversation_id
        started = time.monotonic()
        try:
            async with session.post(url, json=body, headers=headers) as r:
                status = r.status
                data = await r.json() if status == 200 else None
                text = "" if status == 200 else (await r.text())[:120]
        except (aiohttp.ClientError, TimeoutError) as exc:
            errors.append(type(exc).__name__)
            continue
        elapsed_ms = (time.monotonic() - started) * 1000
        if status != 200 or data is None:
            errors.append(f"{status} {text}")
            continue
        if started >= record_after:
            latencies.append(elapsed_ms)
        turns += 1
        if answered is not None:
            answered[0] += 1
        if keep_conversation is None:
            conversation_id = None if turns % NEW_CONVERSATION_EVERY == 0 else data["conversation_id"]


async def measure(url: str, identities: list[tuple[dict[str, str], str]], concurrency: int,
                  seconds: float, warmup: float, pids: dict[str, list[int]], db_url: str,
                  db_name: str, keep_conversation: str | None = None,
                  answered: list[int] | None = None) -> dict[str, Any]:
    latencies: list[float] = []
    errors: list[str] = []
    # The load generator shares the 2 cores with what it measures: aiohttp (C
    # parser, one keep-alive connection per caller) keeps its share small.
    clients = [aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1),
                                     timeout=aiohttp.ClientTimeout(total=30.0)) for _ in range(concurrency)]
    try:
        start = time.monotonic()
        record_after = start + warmup
        stop_at = record_after + seconds
        cpu_before: dict[str, float] = {}

        async def snapshot_after_warmup() -> None:
            await asyncio.sleep(max(0.0, record_after - time.monotonic()))
            # the pool's connections exist by now: count their backends too
            pids["postgres"] = backend_pids(db_url, db_name)
            cpu_before.update({name: sum(cpu_seconds(p) for p in ps) for name, ps in pids.items()})

        await asyncio.gather(snapshot_after_warmup(), *(
            caller(clients[i], url, identities[i][0], identities[i][1], stop_at, record_after, latencies, errors,
                   keep_conversation, answered)
            for i in range(concurrency)))
        # turns that started in the window; the window ends when the last one returns
        window_s = max(time.monotonic() - record_after, 1e-9)
        cpu_used = {name: sum(cpu_seconds(p) for p in ps) - cpu_before[name] for name, ps in pids.items()}
    finally:
        for client in clients:
            await client.close()
    latencies.sort()
    turns = max(len(latencies), 1)
    # CPU per turn of each process over the measured window (turns still running at its
    # end add a little): unlike wall-clock figures it hardly depends on what else runs
    cpu_ms = {name: round(used * 1000 / turns, 3) for name, used in cpu_used.items()}
    return {
        "rps": round(len(latencies) / window_s, 1),
        "p50_ms": round(percentile(latencies, 0.50), 2),
        "p99_ms": round(percentile(latencies, 0.99), 2),
        "mean_ms": round(statistics.fmean(latencies), 2) if latencies else None,
        "n": len(latencies),
        "errors": len(errors),
        "cpu_ms_per_turn": cpu_ms,
        **({"first_errors": errors[:3]} if errors else {}),
    }


def deep_conversation(conn: psycopg.Connection[Any], user: uuid.UUID, agent: uuid.UUID, n: int) -> str:
    """A conversation of `user` with `agent` holding n messages, user and
    assistant in turn, one second apart and all in the past. Inserted with
    triggers off (each would update the conversation's counters, one row n
    times); the counters are then set once, as the trigger would have."""
    row = conn.execute("insert into public.conversation_sessions (user_id, agent_id, title)"
                       " values (%s, %s, 'Deep') returning id", (user, agent)).fetchone()
    assert row is not None
    conn.execute("set session_replication_role = replica")
    conn.execute(
        "insert into public.chat_messages_v2 (conversation_id, user_id, role, content, created_at)"
        " select %s, %s, case when g %% 2 = 1 then 'user' else 'assistant' end,"
        "        'Earlier message ' || g, now() - make_interval(secs => %s - g + 60)"
        " from generate_series(1, %s) g", (row[0], user, n, n))
    conn.execute("set session_replication_role = origin")
    conn.execute("update public.conversation_sessions c set message_count = %s,"
                 " last_message_at = now() - interval '60 seconds' where c.id = %s", (n, row[0]))
    conn.execute("vacuum analyze public.chat_messages_v2")
    return str(row[0])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--concurrency", default="1,32", help="comma-separated caller counts")
    parser.add_argument("--functions", action="store_true",
                        help="track_functions = all in the bench database; add the SQL functions' time per turn")
    parser.add_argument("--deep-messages", type=int, default=100_000,
                        help="messages already in the deep-history caller's conversation (0: no such phase)")
    args = parser.parse_args(argv)
    seconds = min(args.seconds, MAX_SECONDS)
    levels = [int(c) for c in args.concurrency.split(",") if c.strip()]

    state = stack.up(with_services=False)
    db_name = f"bench_chat_{uuid.uuid4().hex[:8]}"
    db_url = stack.create_database(state, db_name)
    if args.functions:
        with psycopg.connect(db_url, autocommit=True) as conn:
            conn.execute(f'alter database "{db_name}" set track_functions = \'all\'')
    logs = Path(tempfile.mkdtemp(prefix="bench-chat-"))
    llm_port = stack.free_port(0)
    with (logs / "fake-llm.log").open("wb") as out:
        llm_proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "fakes" / "openai_server.py"),
                                     "--port", str(llm_port)], stdout=out, stderr=subprocess.STDOUT)
    llm = FakeLLM(base_url=f"http://127.0.0.1:{llm_port}/v1", proc=llm_proc)
    fn = None
    try:
        _wait_http(f"{llm.root}/_fake/requests", llm_proc, logs / "fake-llm.log")
        fn = start_chat_function(state, db_url, llm, logs / "chat.log",
                                 extra_env={"CHAT_RATE_LIMIT": "1000000000"})
        identities: list[tuple[dict[str, str], str]] = []
        with psycopg.connect(db_url, autocommit=True) as conn:
            for _ in range(max(levels)):
                user = create_user(conn)
                agent = create_agent(conn, user, system_prompt="You are a helpful planning assistant.")
                identities.append((fn.user_headers(user), str(agent)))
        results: dict[str, Any] = {}
        xacts_before, answered = transactions(db_url, db_name), [0]
        for level in levels:
            pids = {"chat_function": [fn.proc.pid], "fake_llm": [llm_proc.pid], "client": [os.getpid()],
                    "postgres": []}
            before = function_times(db_url) if args.functions else {}
            results[f"concurrency_{level}"] = asyncio.run(
                measure(fn.url, identities, level, seconds, args.warmup, pids, db_url, db_name,
                        answered=answered))
            if args.functions:
                result = results[f"concurrency_{level}"]
                result["sql_functions_ms_per_turn"] = function_deltas(before, function_times(db_url),
                                                                      max(result["n"], 1))
        # an idle backend reports its counts after PGSTAT_IDLE_INTERVAL (10 s): wait for them
        time.sleep(STATS_IDLE_FLUSH_S)
        results["db_transactions_per_turn"] = round(
            (transactions(db_url, db_name) - xacts_before) / max(answered[0], 1), 3)
        if args.deep_messages > 0:
            with psycopg.connect(db_url, autocommit=True) as conn:
                user = create_user(conn)
                agent = create_agent(conn, user, system_prompt="You are a helpful planning assistant.")
                conversation = deep_conversation(conn, user, agent, args.deep_messages)
            pids = {"chat_function": [fn.proc.pid], "fake_llm": [llm_proc.pid], "client": [os.getpid()],
                    "postgres": []}
            results["deep_history"] = {
                "messages_in_conversation": args.deep_messages,
                **asyncio.run(measure(fn.url, [(fn.user_headers(user), str(agent))], 1, seconds, args.warmup,
                                      pids, db_url, db_name, keep_conversation=conversation)),
            }
        results["goals"] = {
            "p50_ms_at_1": GOAL_P50_MS_AT_1, "rps_at_32": GOAL_RPS_AT_32,
            "met": {
                "p50_at_1": results.get("concurrency_1", {}).get("p50_ms", float("inf")) < GOAL_P50_MS_AT_1,
                "rps_at_32": results.get("concurrency_32", {}).get("rps", 0) >= GOAL_RPS_AT_32,
            },
        }
        print(json.dumps(results))
    finally:
        if fn is not None:
            fn.stop()
        llm_proc.terminate()
        llm_proc.wait(timeout=10)
        stack.drop_database(state, db_name)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
