"""Cron planning off the event loop, with a time budget per task.

croniter is pure Python: one pathological expression (a field listing
thousands of values) costs seconds of CPU, and on the worker's asyncio loop
those seconds stall every claim, heartbeat and in-flight run of every tenant.
So the planner's pass runs in a child process, and each task gets
``PLAN_TIME_BUDGET_S`` there (an interval timer interrupts croniter's Python
loop): a task over budget comes back as a readable error, which the worker
records with ``scheduler.fail_plan`` (status ``error``, ``last_error``), and
the other tasks of the pass are planned as usual. The database caps the
expression's length first (``max_cron_expression_chars``); the budget is the
guard for whatever still gets through.

The child is forked when the worker starts and replaced if it dies or
overruns the whole pass's budget (a hang outside Python code, which the timer
cannot interrupt). ``planner.plan`` itself stays a pure function. Tasks are
planned one after another in the child, so a pass holding N tasks over budget
delays the plans after them by up to N x PLAN_TIME_BUDGET_S; the database's
length cap keeps such tasks out in the first place.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import multiprocessing
import os
import signal
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from datetime import UTC, datetime
from typing import Any

from worker import planner

# Slack on top of the per-task budgets for the whole pass (process start, pickling).
PASS_SLACK_S = 30.0
PR_SET_PDEATHSIG = 1  # linux/prctl.h


class PlanBudgetExceeded(Exception):
    """Planning one task took longer than its time budget."""


def _on_alarm(signum: int, frame: Any) -> None:
    raise PlanBudgetExceeded


def _child_init(parent_pid: int) -> None:
    """The child's first act: forget the worker's signal plumbing, and die with the worker.

    Forked, it inherits the event loop's signal wakeup fd (a signal here would
    reach the worker's loop as if the worker got it: Ctrl-C would count twice)
    and nothing would end it if the worker were SIGKILLed (an orphan per kill).
    """
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the worker decides; it ends the pool on shutdown
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: the pool's own EOF handling is what is left
        pass
    if os.getppid() != parent_pid:  # the worker died before prctl took effect
        os._exit(0)


def budget_message(budget_s: float) -> str:
    """The readable error a task over budget gets (its last_error)."""
    return (f"planning this cron expression took longer than {budget_s:g} s "
            "(the planner's time budget per task, PLAN_TIME_BUDGET_S): simplify the expression")


def plan_batch(rows: Sequence[Mapping[str, Any]], now: datetime,
               budget_s: float) -> list[planner.Plan | str]:
    """Plan each row within `budget_s` seconds of CPU-bound work; a Plan, or the error text.

    Runs in the child process (its main thread, where SIGALRM is delivered).
    """
    previous = signal.signal(signal.SIGALRM, _on_alarm)
    results: list[planner.Plan | str] = []
    try:
        for row in rows:
            try:
                signal.setitimer(signal.ITIMER_REAL, budget_s)
                try:
                    results.append(planner.plan(row, now))
                finally:
                    signal.setitimer(signal.ITIMER_REAL, 0)
            except PlanBudgetExceeded:
                results.append(budget_message(budget_s))
            except Exception as exc:  # one bad row must not stop the others
                results.append(str(exc) or repr(exc))
    finally:
        signal.signal(signal.SIGALRM, previous)
    return results


class PlanPool:
    """One child process that plans the worker's cron tasks, off its event loop."""

    def __init__(self, budget_s: float) -> None:
        self.budget_s = budget_s
        self._executor: ProcessPoolExecutor | None = None
        self._pass: Future[list[planner.Plan | str]] | None = None  # the latest pass sent to the child

    def _pool(self) -> ProcessPoolExecutor:
        if self._executor is None:
            # fork: ~20 ms, where spawn re-imports the package (1.5 s on a busy 2-core machine,
            # longer than a cron task may wait for its first plan). The child runs only
            # planner.plan (croniter, zoneinfo): no logging, sockets or event loop of the parent.
            self._executor = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("fork"),
                                                 initializer=_child_init, initargs=(os.getpid(),))
        return self._executor

    def start(self) -> None:
        """Start the child now (the worker calls this before its loops run), not at the first pass."""
        self._pool().submit(plan_batch, [], datetime.now(UTC), self.budget_s)

    async def plan(self, rows: Sequence[Mapping[str, Any]], now: datetime) -> list[planner.Plan | str]:
        """For each row, its Plan or the readable reason it has none (in order)."""
        if not rows:
            return []
        # the child's own future: it stays running when this coroutine is cancelled (shutdown)
        self._pass = self._pool().submit(plan_batch, [dict(r) for r in rows], now, self.budget_s)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(self._pass),
                                          timeout=self.budget_s * len(rows) + PASS_SLACK_S)
        except (TimeoutError, BrokenProcessPool):
            self._kill()
            raise

    def _kill(self) -> None:
        # the stuck child is not interrupted by shutdown(); end it (our own child, by its pid)
        self._stop(kill=True)

    def close(self) -> None:
        """Stop the child process (a plan still running in it is cut short) and the pool's thread."""
        self._stop(kill=self._pass is not None and not self._pass.done())

    def _stop(self, kill: bool) -> None:
        """End the pool and wait until its manager thread has ended.

        Waiting is what keeps the worker's exit quiet: after shutdown(wait=False)
        the manager thread closes its wakeup pipe while the interpreter's exit
        hook (concurrent.futures.process._python_exit) may be writing to it, and
        the exit printed "Exception ignored in: <module 'threading'> ... OSError:
        [Errno 9] Bad file descriptor" (seen once in 40 worker stops). Once the
        thread has ended, the hook finds the pipe closed and skips it. The wait
        is short: an idle child exits at the pool's sentinel, a busy one is
        killed first.
        """
        executor, self._executor = self._executor, None
        if executor is None:
            return
        if kill:
            processes: dict[int, Any] = getattr(executor, "_processes", None) or {}
            for process in list(processes.values()):
                process.kill()
        executor.shutdown(wait=True, cancel_futures=True)
