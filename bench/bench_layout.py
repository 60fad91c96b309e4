"""What the table layout alone allows: plain SQL claim -> finish, no functions.

The queue core (bench_queue.py) runs our functions: fair turns, the per-user
cap, exclusive tasks, counters and budgets on the task. This bench takes all
of that away and drives three layouts with the same two plain statements per
batch through pgbench (prepared, `--concurrency` clients, claim `--batch`
rows with FOR UPDATE SKIP LOCKED, then finish them), so the difference
between them is the layout's own cost:

* ``ceiling``: bench_queue's minimal SKIP LOCKED table (one partial index
  on queued rows, one on running rows, no triggers, no CHECKs);
* ``executions``: public.agent_task_executions as shipped (its indexes,
  CHECK constraints and triggers), claimed in the claim index's order;
* ``split``: the Solid Queue layout — a copy of the same rows in a history
  table with only the indexes no transition writes (fillfactor 80, so the
  claim's and the finish's updates can be HOT), plus a ready table (the
  claim's indexes) and a claimed table (running rows by user, task, lease,
  worker): a claim deletes from ready and inserts into claimed, a finish
  deletes from claimed, both update the history row. Maintained here by the
  statements themselves, not by triggers.

The `executions` and `split` layouts start from the same seeded database
(N queued runs over 1,000 users' tasks, plus `--history` finished rows),
copied for every run; the rounds go round the layouts in turn. Prints one
JSON object: jobs/s per layout (median, min, max of the rounds) and each as
a share of the ceiling in the same run.

    python bench/bench_layout.py [--n 20000] [--history 1000000] [--rounds 3]
"""

from __future__ import annotations

import argparse
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

import psycopg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_queue import PEER_TIMEOUT_S, TASKS, run_ceiling, seed_ours  # noqa: E402

from worker import stack  # noqa: E402

USERS = 1000

EXECUTIONS_SCRIPT = """\
update public.agent_task_executions set status = 'running', worker_id = 'w' || :client_id,
  attempt = attempt + 1, started_at = now(), heartbeat_at = now(), lease_expires_at = now() + interval '30 s'
where id in (select id from public.agent_task_executions where status = 'queued' and run_after <= now()
             order by priority_class desc, turn limit {batch} for update skip locked);
update public.agent_task_executions set status = 'succeeded', finished_at = now(), lease_expires_at = null
where status = 'running' and worker_id = 'w' || :client_id;
"""

SPLIT_SCRIPT = """\
with d as (delete from layout_ready where id in (
             select id from layout_ready where run_after <= now()
             order by priority_class desc, turn limit {batch} for update skip locked)
           returning id, user_id, task_id),
     c as (insert into layout_claimed select d.id, :client_id, d.user_id, d.task_id,
             now() + interval '30 s' from d)
update layout_history h set status = 'running', worker_id = 'w' || :client_id, attempt = h.attempt + 1,
  started_at = now(), heartbeat_at = now(), lease_expires_at = now() + interval '30 s'
from d where h.id = d.id;
with d as (delete from layout_claimed where worker = :client_id returning id)
update layout_history h set status = 'succeeded', finished_at = now(), lease_expires_at = null
from d where h.id = d.id;
"""

SPLIT_DDL = [
    # the history: the executions' columns, only indexes no transition writes
    "create table layout_history (like public.agent_task_executions including defaults)"
    " with (fillfactor = 80)",
    "insert into layout_history select * from public.agent_task_executions",
    "alter table layout_history add primary key (id)",
    "create unique index on layout_history (task_id, scheduled_for)",
    "create index on layout_history (task_id, created_at desc, id desc)",
    "create index on layout_history (user_id, created_at desc, id desc)",
    "create index on layout_history (conversation_id) where conversation_id is not null",
    "create index on layout_history (retry_of) where retry_of is not null",
    "create index on layout_history (created_at)",
    # the ready queue: the claim's three orders and the overlap check
    "create table layout_ready (id uuid primary key, user_id uuid not null, task_id uuid not null,"
    " priority_class smallint not null, turn bigint not null, priority smallint not null,"
    " scheduled_for timestamptz not null, run_after timestamptz not null, exclusive boolean not null)",
    "insert into layout_ready select id, user_id, task_id, priority_class, turn, priority, scheduled_for,"
    " run_after, exclusive from public.agent_task_executions where status = 'queued'",
    "create index on layout_ready (priority_class desc, turn, run_after)",
    "create index on layout_ready (user_id, priority_class desc, priority desc, scheduled_for, run_after)",
    "create index on layout_ready (user_id, turn desc)",
    "create index on layout_ready (task_id)",
    # the claimed runs: caps, overlap, the rescuers
    "create table layout_claimed (id uuid primary key, worker integer not null, user_id uuid not null,"
    " task_id uuid not null, lease_expires_at timestamptz not null)",
    "create index on layout_claimed (user_id)",
    "create index on layout_claimed (task_id)",
    "create index on layout_claimed (lease_expires_at)",
    "create index on layout_claimed (worker)",
    "vacuum analyze layout_history, layout_ready, layout_claimed",
]


def pgbench(url: str, script: str, n: int, concurrency: int, batch: int) -> float:
    """pgbench over `script` until N jobs are claimed and finished; jobs/s."""
    binary = shutil.which("pgbench")
    if binary is None:
        raise RuntimeError("pgbench is not on PATH (postgresql-client)")
    per_client = -(-n // (batch * concurrency))
    with tempfile.NamedTemporaryFile("w", suffix=".sql") as f:
        f.write(script.format(batch=batch))
        f.flush()
        res = subprocess.run(
            [binary, "-n", "-M", "prepared", "-c", str(concurrency), "-j", "2",
             "-t", str(per_client), "-f", f.name, url],
            capture_output=True, text=True, timeout=PEER_TIMEOUT_S)
    if res.returncode != 0:
        raise RuntimeError(f"pgbench failed:\n{res.stderr[-3000:]}")
    tps = re.search(r"tps = ([0-9.]+) \(without initial connection time\)", res.stdout)
    if tps is None:
        raise RuntimeError(f"no tps in pgbench output:\n{res.stdout[-2000:]}")
    return float(tps.group(1)) * batch


def statuses(url: str, table: str) -> dict[str, int]:
    with psycopg.connect(url, autocommit=True) as conn:
        return dict(conn.execute(f"select status, count(*)::int from {table} group by 1").fetchall())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--history", type=int, default=1_000_000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--batch", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    state = stack.up(with_services=False)
    base = f"bench_layout_{uuid.uuid4().hex[:8]}"
    created: list[str] = []
    per_s: dict[str, list[float]] = {"ceiling": [], "executions": [], "split": []}
    ok = True
    total = args.n + args.history
    try:
        started = time.perf_counter()
        created.append(base)
        seed_ours(stack.create_database(state, base), args.n, TASKS, USERS, args.history)
        seed_s = time.perf_counter() - started
        layouts = list(per_s)
        for r in range(args.rounds):
            for layout in layouts[r % 3:] + layouts[:r % 3]:
                name = f"{base}_{layout}_{r}"
                with psycopg.connect(stack.database_url(state, "postgres"), autocommit=True) as admin:
                    admin.execute(f'create database "{name}" template "{base}" strategy file_copy')
                created.append(name)
                url = stack.database_url(state, name)
                if layout == "split":
                    with psycopg.connect(url, autocommit=True) as conn:
                        for ddl in SPLIT_DDL:
                            conn.execute(ddl)
                # every layout starts with nothing left to write (the split's
                # copy of the history would otherwise be checkpointed during
                # its drain)
                with psycopg.connect(url, autocommit=True) as conn:
                    conn.execute("checkpoint")
                if layout == "ceiling":
                    result = run_ceiling(url, args.n, args.concurrency, args.batch)
                    per_s[layout].append(result["per_s"])
                    ok = ok and result["exactly_once"]
                elif layout == "executions":
                    per_s[layout].append(pgbench(url, EXECUTIONS_SCRIPT, args.n, args.concurrency, args.batch))
                    ok = ok and statuses(url, "public.agent_task_executions") == {"succeeded": total}
                else:
                    per_s[layout].append(pgbench(url, SPLIT_SCRIPT, args.n, args.concurrency, args.batch))
                    ok = ok and statuses(url, "layout_history") == {"succeeded": total}
                stack.drop_database(state, name)
                created.remove(name)
    finally:
        for name in created:
            stack.drop_database(state, name)

    medians = {k: statistics.median(v) for k, v in per_s.items()}
    print(json.dumps({
        "per_s": {k: {"median": round(medians[k]), "min": round(min(v)), "max": round(max(v))}
                  for k, v in per_s.items()},
        "share_of_ceiling": {k: round(medians[k] / medians["ceiling"], 3) for k in ("executions", "split")},
        "split_vs_executions": round(medians["split"] / medians["executions"], 2),
        "exactly_once": ok,
        "conditions": {
            "n": args.n, "history_rows": args.history, "users": USERS, "tasks": TASKS,
            "concurrency": args.concurrency, "batch": args.batch, "rounds": args.rounds,
            "seed_s": round(seed_s, 1), "load_average_end": os.getloadavg(), "cpus": os.cpu_count(),
            "notes": ("pgbench -M prepared -j 2, two plain statements per batch (claim with FOR UPDATE"
                      " SKIP LOCKED, finish), no functions: no fair turns, caps, counters or budgets."
                      " The ceiling table starts with the N jobs only; executions and split hold the"
                      " history too. Local cluster with fsync off."),
        },
    }, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
