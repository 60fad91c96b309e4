"""Chaos at full size: 1,000 executions over 50 tasks while workers are SIGKILLed.

Runs tests/chaos/harness.run_sigkill against a private environment
(bench/_worker_support.start_env: a fresh database, the fake model, the real
chat function under Deno) with three real worker processes, one SIGKILLed
every 3 s and replaced, and prints the report as one JSON line. With
`--doc docs/reliability.md` it also writes the table of that file from this
run (the file says which run it came from). Exits non-zero when a run was
lost, ran twice or a deadlock happened; slowness is never a failure.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._worker_support import machine_load, start_env
from tests.chaos.harness import run_sigkill

NOTE = ("2 shared cores: the workers, Deno, the fake model, Postgres and anything else running "
        "compete for CPU; times are noisy")


def render_reliability(reports: list[dict[str, Any]], machine: dict[str, Any], command: str) -> str:
    """docs/reliability.md from the reports of one full run."""
    lines = [
        "# Reliability under faults",
        "",
        f"Produced by `{command}` on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; do not edit by hand,",
        "run it again. Real worker processes, the real chat function under Deno, the fake",
        f"model (tests/fakes/openai_server.py). {NOTE} (load average at the start: {machine.get('loadavg')}).",
        "",
        "*Stranded* is how long a killed worker's runs stayed `running` after the kill",
        "(until `scheduler.rescue_dead_workers` put them back; the lease is 30 s).",
        "*Model calls per run* counts the fake model's requests per execution (each",
        "execution's prompt is unique).",
        "",
        "| scenario | load | faults | executions | lost | duplicated | stranded p50 / p99 / max (s) "
        "| model calls per run | deadlocks |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in reports:
        stranded = r["stranded_s"]
        calls = ", ".join(f"{k}: {v}" for k, v in sorted(r["model_calls_per_run"].items()))
        lines.append(
            f"| {r['scenario']} every {r['kill_every_s']:g} s | {r['tasks']} tasks, {r['workers']} workers x "
            f"{r['worker_concurrency']}, model {r['model_latency_ms']} ms | {r['faults']} | {r['executions']} "
            f"| {r['lost']} | {r['duplicated']} | {stranded['p50']} / {stranded['p99']} / {stranded['max']} "
            f"| {calls} | {r['deadlocks']} |")
    lines += [
        "",
        "Not measured yet by this suite: Postgres restart, backend termination,",
        "chat function killed, a 3-second chat outage, connection-pool exhaustion.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=50)
    parser.add_argument("--per-task", type=int, default=20, help="executions per task")
    parser.add_argument("--kill-every-s", type=float, default=3.0)
    parser.add_argument("--concurrency", type=int, default=8, help="WORKER_CONCURRENCY of each of 3 workers")
    parser.add_argument("--model-latency-ms", type=int, default=350)
    parser.add_argument("--doc", type=Path, default=None, help="write the reliability table here")
    args = parser.parse_args(argv)

    machine = machine_load()
    env = start_env("chaos")
    try:
        assert env.chat is not None
        report = run_sigkill(env.chat, env.llm, env.logs, tasks=args.tasks, per_task=args.per_task,
                             kill_every_s=args.kill_every_s, concurrency=args.concurrency,
                             model_latency_ms=args.model_latency_ms, deadline_s=900.0)
    finally:
        env.close()
    out = {"machine": machine, "scenarios": [report], "note": NOTE}
    out["machine"]["loadavg_end"] = machine_load()["loadavg"]
    print(json.dumps(out, default=str))
    if args.doc is not None:
        command = "python bench/bench_chaos.py --doc " + str(args.doc)
        args.doc.write_text(render_reliability([report], machine, command))
    ok = report["lost"] == 0 and report["duplicated"] == 0 and report["deadlocks"] == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
