"""The planner's time budget: croniter runs off the event loop and one slow task cannot hold the others."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from worker import planner
from worker.plan_pool import PlanPool, budget_message, plan_batch

NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
# the expression of finding 1: 100,000 list items in the minute field
HEAVY = "0-59," * 100_000 + "0 * * * *"


def _row(cron: str) -> dict[str, object]:
    return {"id": uuid.uuid4(), "schedule_version": 1, "cron_expression": cron, "timezone": "UTC",
            "created_at": NOW, "plan_from": NOW}


def test_plan_batch__a_task_over_budget_gets_a_readable_error_and_the_next_is_planned() -> None:
    started = time.monotonic()
    results = plan_batch([_row(HEAVY), _row("*/5 * * * *")], NOW, 0.2)
    elapsed = time.monotonic() - started
    assert results[0] == budget_message(0.2)
    assert "PLAN_TIME_BUDGET_S" in str(results[0])
    assert isinstance(results[1], planner.Plan)
    # an occurrence at exactly plan_from counts: due now (the database runs it), the next in 5 minutes
    assert results[1].due == [NOW] and results[1].next_run_at == NOW + timedelta(minutes=5)
    assert elapsed < 2.0, f"the budget did not stop croniter: {elapsed:.2f} s"


def test_plan_batch__an_invalid_row_is_its_own_error() -> None:
    results = plan_batch([_row("61 * * * *"), _row("0 9 * * *")], NOW, 1.0)
    assert isinstance(results[0], str) and "invalid cron expression" in results[0]
    assert isinstance(results[1], planner.Plan)


def test_plan_pool__the_event_loop_keeps_running_while_a_heavy_task_is_planned() -> None:
    """Before: croniter on the loop stalled it ~3 s per such task. Now the loop ticks on."""

    async def scenario() -> tuple[list[planner.Plan | str], float]:
        pool = PlanPool(budget_s=0.5)
        try:
            await pool.plan([_row("* * * * *")], NOW)  # start the child process first
            worst_gap = 0.0
            done = asyncio.Event()

            async def ticker() -> None:
                nonlocal worst_gap
                last = time.monotonic()
                while not done.is_set():
                    await asyncio.sleep(0.01)
                    now = time.monotonic()
                    worst_gap = max(worst_gap, now - last)
                    last = now

            tick = asyncio.create_task(ticker())
            results = await pool.plan([_row(HEAVY), _row(HEAVY), _row("0 * * * *")], NOW)
            done.set()
            await tick
            return results, worst_gap
        finally:
            pool.close()

    results, worst_gap = asyncio.run(scenario())
    assert results[0] == budget_message(0.5) and results[1] == budget_message(0.5)
    assert isinstance(results[2], planner.Plan)
    # pickling the 500 KB expressions is the only work left on the loop
    assert worst_gap < 0.25, f"the event loop stalled {worst_gap:.2f} s"


def test_plan_pool__the_child_dies_with_the_worker() -> None:
    """A SIGKILLed worker (the chaos tests kill them every 2 s) must not leave its planner child behind."""
    script = (
        "import os, signal, time\n"
        "from worker.plan_pool import PlanPool\n"
        "if __name__ == '__main__':\n"
        "    pool = PlanPool(1.0)\n"
        "    pool.start()\n"
        "    time.sleep(0.3)\n"
        "    kids = open(f'/proc/{os.getpid()}/task/{os.getpid()}/children').read().split()\n"
        "    print(' '.join(kids), flush=True)\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=root, timeout=60)
    children = [int(pid) for pid in proc.stdout.split()]
    assert children, proc.stderr
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline and any(os.path.exists(f"/proc/{pid}") for pid in children):
        time.sleep(0.05)
    left = [pid for pid in children if os.path.exists(f"/proc/{pid}")
            and open(f"/proc/{pid}/stat").read().split()[2] != "Z"]
    assert left == [], f"planner children outlived their worker: {left}"


# Python's exit hook for process pools (concurrent.futures.process._python_exit) writes to
# each pool's wakeup pipe after checking that it is open; the pool's manager thread closes
# that pipe when it ends. The sleep between the check and the write makes the race that once
# printed a traceback at a worker's exit happen every time the thread is still running then.
_STOP_AND_EXIT = """
import asyncio, time
from concurrent.futures import process
from datetime import UTC, datetime
from worker.plan_pool import PlanPool

def slow_wakeup(self):
    if not self._closed:
        time.sleep(0.3)
        self._writer.send_bytes(b"")

process._ThreadWakeup.wakeup = slow_wakeup

async def main():
    pool = PlanPool(1.0)
    pool.start()
    now = datetime.now(UTC)
    await pool.plan([{"id": 1, "schedule_version": 1, "cron_expression": "* * * * *", "timezone": "UTC",
                      "created_at": now, "plan_from": now}], now)
    pool.close()

asyncio.run(main())
"""


def test_plan_pool__stopping_prints_no_traceback() -> None:
    proc = subprocess.run([sys.executable, "-c", _STOP_AND_EXIT], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[2], timeout=60)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr


def test_plan_pool__close_cuts_a_running_pass_short() -> None:
    """A worker stopping mid-pass does not wait for croniter: the busy child is ended."""

    async def scenario() -> tuple[float, list[int]]:
        pool = PlanPool(budget_s=5.0)
        pool.start()
        planning = asyncio.create_task(pool.plan([_row(HEAVY), _row(HEAVY)], NOW))
        await asyncio.sleep(0.5)  # the child is inside croniter now
        executor = pool._executor
        assert executor is not None
        children = list(getattr(executor, "_processes", {}))
        planning.cancel()  # the worker's shutdown cancels its planner loop
        started = time.monotonic()
        pool.close()
        return time.monotonic() - started, children

    took, children = asyncio.run(scenario())
    assert children and took < 2.0, f"close() waited {took:.2f} s for a pass of up to 10 s"
    assert not any(os.path.exists(f"/proc/{pid}") and open(f"/proc/{pid}/stat").read().split()[2] != "Z"
                   for pid in children)
