"""Queue core throughput: claim -> finish of no-op executions, against two peers.

Ours, graphile-worker and Procrastinate each get a fresh database on the same
local Postgres cluster, in the same run, and do the same thing: N queued no-op
jobs, C concurrent workers, time until the queue is empty.

- ours: N queued executions over 1,000 tasks (overlap_policy 'allow', so
  non-exclusive; priority 0), inserted in bulk (not timed). C asyncio
  workers, one psycopg AsyncConnection each (autocommit), loop:
  `scheduler.claim_executions(worker, BATCH, 30)` then finish what they
  claimed. `--finish batch` (default) finishes a whole claim in one round trip
  with `scheduler.finish_executions(worker, jsonb)`; `--finish pipeline` sends
  one `scheduler.finish_execution` per row in a single psycopg pipeline (one
  network round trip, one transaction per row); `--finish single` awaits each
  `finish_execution` in turn. No HTTP, no chat: the queue only.
  `--analyze-every S` runs ANALYZE on the executions table every S seconds
  during ours' drain (statistics taken mid-burst rebuild every cached plan).
- graphile-worker (npm, bench/peers/graphile_bench.js): add_jobs in bulk, a
  runner with concurrency C, until the N-th job completed.
- Procrastinate (PyPI, bench/peers/procrastinate_bench.py): batch defer, one
  worker with concurrency C and wait=False, until it returns.

Prints one JSON object. Not a test: figures are noisy on a shared machine.

    python bench/bench_queue.py [--n 20000] [--concurrency 16] [--batch 10]
                                [--finish batch|pipeline|single] [--rounds 2]
                                [--only ours --only graphile]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from worker import stack  # noqa: E402

PEERS = ROOT / "bench" / "peers"
TASKS = 1000
LEASE_S = 30
GOAL_RATIO_VS_GRAPHILE = 2.0
GOAL_SHARE_OF_CEILING = 0.40
SYSTEMS = ["ours", "ours_batch1", "graphile", "ceiling", "procrastinate"]
PEER_TIMEOUT_S = 900


# --- ours ------------------------------------------------------------------------


def seed_ours(url: str, n: int, tasks: int, users: int = 1, history: int = 0) -> None:
    """N queued, non-exclusive executions spread over `tasks` manual tasks.

    Consecutive occurrences belong to different tasks, so concurrent finishes
    rarely update the same agent_tasks row (as with many users' tasks). The
    tasks are inserted with triggers off (session_replication_role = replica):
    their write-time validation costs ~0.1 s a row (timezone_error scans
    pg_timezone_names) and is not what this bench measures; the rows are
    valid manual tasks, for which that trigger would change nothing."""
    tasks = min(tasks, n)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("insert into auth.users (id, email)"
                     " select gen_random_uuid(), 'bench-' || g || '@example.test'"
                     " from generate_series(1, %s) g", (users,))
        conn.execute("insert into public.agents (user_id, name) select id, 'Bench' from auth.users")
        conn.execute("set session_replication_role = replica")
        # task g belongs to user g mod users: consecutive occurrences (below)
        # belong to different users, as with many users' tasks
        conn.execute(
            "insert into public.agent_tasks (user_id, agent_id, name, prompt_template,"
            " schedule_type, overlap_policy)"
            " select a.user_id, a.id, 'bench ' || g, 'Say hello', 'manual', 'allow'"
            " from generate_series(1, %s) g"
            " join (select id, user_id, row_number() over (order by id) - 1 as k"
            "       from public.agents) a on a.k = g %% %s", (tasks, users))
        if history:
            # finished history: a month of a busy product, set-based
            conn.execute(
                "insert into public.agent_task_executions (task_id, user_id, agent_id,"
                " trigger_type, status, scheduled_for, run_after, attempt, worker_id,"
                " started_at, finished_at, duration_ms, created_at, exclusive)"
                " select t.id, t.user_id, t.agent_id, 'manual', 'succeeded',"
                "        now() - interval '60 days' + make_interval(secs => k * %(tasks)s + t.rn),"
                "        now() - interval '60 days', 1, 'history', now() - interval '30 days',"
                "        now() - interval '30 days', 1, now() - interval '30 days', false"
                " from (select id, user_id, agent_id, row_number() over (order by id) as rn"
                "       from public.agent_tasks) t"
                " cross join generate_series(0, %(per)s - 1) k"
                " where k * %(tasks)s + t.rn <= %(history)s",
                {"tasks": tasks, "per": -(-history // tasks), "history": history})
        conn.execute("set session_replication_role = origin")
        insert_queued(conn, tasks, 0, n)
        conn.execute("analyze public.agent_task_executions")
        conn.execute("analyze public.agent_tasks")
        (count,) = conn.execute("select count(*) from public.agent_task_executions"
                                " where status = 'queued'").fetchone() or (0,)
        conn.execute("vacuum analyze public.agent_task_executions")
        assert count == n, f"seeded {count} executions, wanted {n}"


def insert_queued(conn: psycopg.Connection[Any], tasks: int, have: int, upto: int) -> None:
    """Queued occurrences number have+1 .. upto, round-robin over the tasks
    (occurrence i belongs to task i mod tasks, one second apart)."""
    conn.execute(
        "insert into public.agent_task_executions (task_id, user_id, agent_id, trigger_type,"
        " status, scheduled_for, run_after, priority, exclusive)"
        " select t.id, t.user_id, t.agent_id, 'manual', 'queued',"
        "        now() - interval '1 day' + make_interval(secs => k * %(tasks)s + t.rn),"
        "        now() - interval '1 minute', 0, false"
        " from (select id, user_id, agent_id, row_number() over (order by id) as rn"
        "       from public.agent_tasks) t"
        " cross join generate_series(%(from)s::int, %(to)s::int) k"
        " where k * %(tasks)s + t.rn between %(have)s + 1 and %(upto)s",
        {"tasks": tasks, "from": have // tasks, "to": upto // tasks + 1,
         "have": have, "upto": upto})


async def _worker(url: str, worker_id: str, batch: int, finish: str,
                  counts: dict[str, int], per_user_limit: int | None) -> None:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        while True:
            cur = await conn.execute(
                "select id, attempt from scheduler.claim_executions(%s, %s, %s, %s)",
                (worker_id, batch, LEASE_S, per_user_limit))
            rows = await cur.fetchall()
            if not rows:
                return
            counts["claimed"] += len(rows)
            if finish == "batch":
                results = [{"id": str(i), "attempt": a, "status": "succeeded"} for i, a in rows]
                cur = await conn.execute(
                    "select count(*) from scheduler.finish_executions(%s, %s::jsonb)",
                    (worker_id, json.dumps(results)))
                (applied,) = await cur.fetchone() or (0,)
                counts["finished"] += applied
            elif finish == "pipeline":
                async with conn.pipeline():
                    curs = [await conn.execute(
                        "select scheduler.finish_execution(%s, %s, %s, 'succeeded')",
                        (i, worker_id, a)) for i, a in rows]
                for c in curs:
                    (ok,) = await c.fetchone() or (False,)
                    counts["finished"] += int(ok)
            else:
                for i, a in rows:
                    cur = await conn.execute(
                        "select scheduler.finish_execution(%s, %s, %s, 'succeeded')",
                        (i, worker_id, a))
                    (ok,) = await cur.fetchone() or (False,)
                    counts["finished"] += int(ok)


async def _analyze_every(url: str, seconds: float, stop: asyncio.Event, counts: dict[str, int]) -> None:
    """Statistics taken during the drain, as autovacuum's analyze takes them
    during a burst (2 % of the rows changed): every cached plan of the claim
    and the finish is rebuilt from them."""
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        while True:
            try:
                await asyncio.wait_for(stop.wait(), timeout=seconds)
                return
            except TimeoutError:
                await conn.execute("analyze public.agent_task_executions")
                counts["analyzes"] += 1


async def _drain(url: str, concurrency: int, batch: int, finish: str,
                 per_user_limit: int | None, analyze_every: float = 0) -> tuple[dict[str, int], float]:
    """The counts, and the seconds from the first claim until the queue is
    empty (an analyze still running then is waited for outside that time)."""
    counts = {"claimed": 0, "finished": 0, "analyzes": 0}
    stop = asyncio.Event()
    analyzer = (asyncio.create_task(_analyze_every(url, analyze_every, stop, counts))
                if analyze_every > 0 else None)
    started = time.perf_counter()
    await asyncio.gather(*(
        _worker(url, f"bench-{os.getpid()}-{w}", batch, finish, counts, per_user_limit)
        for w in range(concurrency)))
    seconds = time.perf_counter() - started
    stop.set()
    if analyzer is not None:
        await analyzer
    return counts, seconds


def run_ours(url: str, n: int, concurrency: int, batch: int, finish: str,
             per_user_limit: int | None = None, users: int = 1, history: int = 0,
             seeded: bool = False, analyze_every: float = 0) -> dict[str, Any]:
    """One drain of N queued executions; `seeded`: the database is a copy of
    a template that seed_ours already filled (history included)."""
    if not seeded:
        seed_ours(url, n, TASKS, users, history)
    counts, seconds = asyncio.run(_drain(url, concurrency, batch, finish, per_user_limit, analyze_every))
    # a claim that found every queued row locked by a concurrent claim returns
    # nothing; those rows belong to that claim, so nothing should be left
    with psycopg.connect(url, autocommit=True) as conn:
        by_status = dict(conn.execute(
            "select status, count(*)::int from public.agent_task_executions group by 1").fetchall())
        (attempts_ok,) = conn.execute(
            "select count(*)::int from public.agent_task_executions"
            " where status = 'succeeded' and attempt = 1 and finished_at is not null"
            " and worker_id is not null").fetchone() or (0,)
        (success_sum,) = conn.execute(
            "select coalesce(sum(success_count), 0)::int from public.agent_tasks").fetchone() or (0,)
    total = n + history
    exactly_once = (counts["claimed"] == n and counts["finished"] == n
                    and by_status == {"succeeded": total} and attempts_ok == total
                    and success_sum == n)
    return {
        "per_s": n / seconds, "seconds": seconds, "batch": batch, "finish": finish,
        "history_rows": history, "per_user_limit": per_user_limit, "users": users,
        "claimed": counts["claimed"], "finished": counts["finished"], "by_status": by_status,
        "analyzes_during_drain": counts["analyzes"],
        "task_success_count_sum": success_sum, "exactly_once": exactly_once,
    }


# --- the ceiling: a minimal SKIP LOCKED queue driven by pgbench ------------------

CEILING_SCRIPT = """\
update ceiling_jobs set status = 'running', worker = :client_id
where id in (select id from ceiling_jobs where status = 'queued' order by id
             limit {batch} for update skip locked);
update ceiling_jobs set status = 'done' where status = 'running' and worker = :client_id;
"""


def run_ceiling(url: str, n: int, concurrency: int, batch: int) -> dict[str, Any]:
    """The physical limit on this cluster: one table, one partial index, claim
    `batch` rows with FOR UPDATE SKIP LOCKED and finish them, two statements
    (two transactions, two round trips) per script, as ours does; pgbench with
    `concurrency` clients, prepared statements, until N jobs are done."""
    pgbench = shutil.which("pgbench")
    if pgbench is None:
        raise RuntimeError("pgbench is not on PATH (postgresql-client)")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("create table ceiling_jobs (id bigint primary key, status text not null,"
                     " worker int, payload jsonb not null default '{}')")
        conn.execute("create index ceiling_jobs_queued on ceiling_jobs (id) where status = 'queued'")
        conn.execute("create index ceiling_jobs_running on ceiling_jobs (worker)"
                     " where status = 'running'")
        conn.execute("insert into ceiling_jobs (id, status) select g, 'queued'"
                     " from generate_series(1, %s) g", (n,))
        conn.execute("vacuum analyze ceiling_jobs")
    per_client = -(-n // (batch * concurrency))
    with tempfile.NamedTemporaryFile("w", suffix=".sql") as script:
        script.write(CEILING_SCRIPT.format(batch=batch))
        script.flush()
        started = time.perf_counter()
        res = subprocess.run(
            [pgbench, "-n", "-M", "prepared", "-c", str(concurrency), "-j", "2",
             "-t", str(per_client), "-f", script.name, url],
            capture_output=True, text=True, timeout=PEER_TIMEOUT_S)
        seconds = time.perf_counter() - started
    if res.returncode != 0:
        raise RuntimeError(f"pgbench failed:\n{res.stderr[-3000:]}")
    tps = re.search(r"tps = ([0-9.]+) \(without initial connection time\)", res.stdout)
    with psycopg.connect(url, autocommit=True) as conn:
        by_status: dict[str, int] = dict(conn.execute(
            "select status, count(*)::int from ceiling_jobs group by 1").fetchall())
    return {
        "per_s": float(tps.group(1)) * batch if tps else n / seconds,
        "seconds_wall": seconds, "batch": batch, "by_status": by_status,
        "exactly_once": by_status == {"done": n},
    }


# --- peers -----------------------------------------------------------------------


def _run_json(cmd: list[str], cwd: Path) -> dict[str, Any]:
    res = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=PEER_TIMEOUT_S)
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:2])} failed:\n{res.stderr[-3000:]}")
    return dict(json.loads(res.stdout.strip().splitlines()[-1]))


def ensure_graphile() -> None:
    """npm install bench/peers (graphile-worker) once; node_modules is git-ignored."""
    if (PEERS / "node_modules" / "graphile-worker").exists():
        return
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError("npm is not on PATH: install Node.js 20+ to run the graphile-worker peer")
    print("[bench] npm install in bench/peers", file=sys.stderr, flush=True)
    subprocess.run([npm, "install", "--no-audit", "--no-fund", "--silent"], cwd=PEERS, check=True)


def ensure_procrastinate() -> None:
    try:
        import procrastinate  # noqa: F401
    except ImportError as exc:  # the `bench` group of uv.lock, synced into .venv/ by `make setup`
        raise RuntimeError("procrastinate is not installed in this environment: run `make setup`") from exc


def run_graphile(url: str, n: int, concurrency: int) -> dict[str, Any]:
    ensure_graphile()
    out = _run_json(["node", "graphile_bench.js", url, str(n), str(concurrency)], PEERS)
    out["exactly_once"] = out["completed"] == n and out["failed"] == 0 and out["jobs_left"] == 0
    return out


def run_procrastinate(url: str, n: int, concurrency: int) -> dict[str, Any]:
    ensure_procrastinate()
    out = _run_json([sys.executable, "procrastinate_bench.py", url, str(n), str(concurrency)], PEERS)
    out["exactly_once"] = out["by_status"] == {"succeeded": n}
    return out


# --- main --------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=20000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--batch", type=int, default=10, help="claim batch size (ours)")
    parser.add_argument("--finish", choices=["batch", "pipeline", "single"], default="batch")
    parser.add_argument("--rounds", type=int, default=3,
                        help="runs of ours and graphile-worker, alternating; the median counts")
    parser.add_argument("--history", type=int, default=0,
                        help="finished executions in the table before the run (ours), e.g. 1000000")
    parser.add_argument("--per-user-limit", type=int, default=8,
                        help="claim_executions' p_per_user_limit (the worker's default is 8; 0 = off)")
    parser.add_argument("--users", type=int, default=1000, help="users owning the tasks (ours)")
    parser.add_argument("--analyze-every", type=float, default=0, metavar="SECONDS",
                        help="ours: ANALYZE agent_task_executions every SECONDS during the drain"
                             " (statistics taken mid-burst, as autovacuum's analyze takes them); 0 = off")
    parser.add_argument("--unpinned", action="store_true",
                        help="ours with claim_executions' plan settings reset (the plan before)")
    parser.add_argument("--only", choices=SYSTEMS, action="append",
                        help="run only these systems (repeatable); default: all")
    args = parser.parse_args()
    systems = args.only or SYSTEMS

    state = stack.up(with_services=False)
    # ours runs in copies of one seeded template (history included): a million
    # finished rows are built once, not once a round
    template = f"bench_queue_tpl_{uuid.uuid4().hex[:8]}"
    if any(s.startswith("ours") for s in systems):
        template_url = stack.create_database(state, template)
        seed_ours(template_url, args.n, TASKS, args.users, args.history)
        if args.unpinned:
            with psycopg.connect(template_url, autocommit=True) as conn:
                for setting in ("enable_sort", "enable_bitmapscan", "jit"):
                    conn.execute("alter function scheduler.claim_executions(text, integer,"
                                 f" integer, integer, timestamptz) reset {setting}")

    def ours(batch: int) -> Any:
        return lambda url: run_ours(url, args.n, args.concurrency, batch, args.finish,
                                    args.per_user_limit or None, args.users, args.history,
                                    seeded=True, analyze_every=args.analyze_every)

    runners = {
        "ours": ours(args.batch),
        "ours_batch1": ours(1),
        "graphile": lambda url: run_graphile(url, args.n, args.concurrency),
        "ceiling": lambda url: run_ceiling(url, args.n, args.concurrency, args.batch),
        "procrastinate": lambda url: run_procrastinate(url, args.n, args.concurrency),
    }
    # ours and graphile-worker alternate who goes first each round, so a burst
    # of load from elsewhere on the machine does not always hit the same one;
    # Procrastinate (slowest by far) runs once, last
    fast = [s for s in systems if s != "procrastinate"]
    plan: list[str] = []
    for r in range(args.rounds):
        plan += fast if r % 2 == 0 else fast[::-1]
    if "procrastinate" in systems:
        plan.append("procrastinate")
    rounds: dict[str, list[dict[str, Any]]] = {s: [] for s in systems}
    try:
        for system in plan:
            name = f"bench_queue_{system}_{uuid.uuid4().hex[:8]}"
            if system.startswith("ours"):
                # copied as files: the default copy (WAL_LOG) wrote the whole
                # seeded database (1,000,000 history rows: ~1 GB) through the
                # WAL and shared buffers, and the checkpoint and writes that
                # set off ran during ours' drain and no peer's
                with stack.connect(state) as conn:
                    conn.execute(f'create database "{name}" template "{template}" strategy file_copy')
                url = stack.database_url(state, name)
            else:
                url = stack.create_database(state, name)
            # every system starts with nothing left to write
            with stack.connect(state) as conn:
                conn.execute("checkpoint")
            try:
                rounds[system].append(runners[system](url))
            finally:
                stack.drop_database(state, name)
    finally:
        stack.drop_database(state, template)
    detail = {s: {"per_s_median": statistics.median(r["per_s"] for r in runs),
                  "per_s_min": min(r["per_s"] for r in runs),
                  "per_s_max": max(r["per_s"] for r in runs), "runs": runs}
              for s, runs in rounds.items()}

    def per_s(system: str) -> float | None:
        return round(detail[system]["per_s_median"], 1) if system in detail else None

    def ratio(peer: str, system: str = "ours") -> float | None:
        ours, other = per_s(system), per_s(peer)
        return round(ours / other, 2) if ours and other else None

    with stack.connect(state) as conn:
        settings = dict(conn.execute(
            "select name, setting from pg_settings where name in"
            " ('fsync', 'synchronous_commit', 'full_page_writes', 'shared_buffers', 'server_version')"
        ).fetchall())
    ratio_g = ratio("graphile")
    share = ratio("ceiling")
    print(json.dumps({
        "ours_per_s": per_s("ours"),
        "ours_batch1_per_s": per_s("ours_batch1"),
        "graphile_worker_per_s": per_s("graphile"),
        "ceiling_per_s": per_s("ceiling"),
        "procrastinate_per_s": per_s("procrastinate"),
        "ratio_vs_graphile": ratio_g,
        "ratio_batch1_vs_graphile": ratio("graphile", "ours_batch1"),
        "share_of_ceiling": share,
        "ratio_vs_procrastinate": ratio("procrastinate"),
        "goal_ratio_vs_graphile": GOAL_RATIO_VS_GRAPHILE,
        "goal_share_of_ceiling": GOAL_SHARE_OF_CEILING,
        "goal_met": None if ratio_g is None or share is None
        else ratio_g >= GOAL_RATIO_VS_GRAPHILE and share >= GOAL_SHARE_OF_CEILING,
        "n": args.n,
        "concurrency": args.concurrency,
        "conditions": {
            "history_rows_ours": args.history, "claim_plan_settings_reset": args.unpinned,
            "analyze_every_s_ours": args.analyze_every or None,
            "per_user_limit_ours": args.per_user_limit or None,
            "users_ours": args.users, "batch_ours": args.batch, "rounds": args.rounds,
            "load_average_end": os.getloadavg(), "cpus": os.cpu_count(),
            "history_note": ("history = finished executions of the same tasks, vacuumed and"
                             " analysed before the run; graphile-worker deletes finished jobs,"
                             " and the peers here start empty"),
        },
        "notes": (
            f"ours: {args.concurrency} asyncio workers in one process, one psycopg connection each,"
            f" claim_executions(batch={args.batch}, per_user_limit={args.per_user_limit or None})"
            f" then finish mode '{args.finish}' (batch = one finish_executions call per claim;"
            " pipeline = one finish_execution per row sent in one psycopg pipeline; single = one"
            f" awaited finish_execution per row); ours_batch1 = the same with batch 1; {TASKS}"
            f" manual tasks over {args.users} users, overlap_policy allow, {args.history} finished"
            " executions already in the table (copies of one seeded, vacuumed template)."
            f" graphile-worker: concurrency {args.concurrency}, maxPoolSize {args.concurrency},"
            " one job per fetch, empty table. ceiling: a minimal SKIP LOCKED queue (one table,"
            f" partial index) driven by pgbench, {args.concurrency} clients, claim"
            f" {args.batch} then finish them, two statements per script, empty table."
            f" procrastinate: one worker, concurrency {args.concurrency}, wait=False,"
            " listen_notify=False. Each run in its own database on the same cluster, one after"
            f" the other, {args.rounds} rounds of all but Procrastinate (alternating order,"
            " median/min/max reported), Procrastinate once; seeding is not timed. Not the"
            " product's worker (no HTTP, no chat: bench_worker.py measures that). The local"
            " cluster runs with fsync/synchronous_commit/full_page_writes off; 2-core machine"
            " shared with other work, so figures are noisy."
        ),
        "postgres": settings,
        "detail": detail,
    }, indent=2))
    ok = all(r.get("exactly_once") for runs in rounds.values() for r in runs)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
