"""`worker --check` knows which scheduler functions the worker calls, from the worker's own SQL."""

from __future__ import annotations

from worker import check


def test_worker_functions__are_read_from_the_workers_sql() -> None:
    needed = check.worker_functions()
    # the queue's core: if the SQL moves out of worker.db's constants, this list must follow it
    assert {"claim_executions", "heartbeat", "register_worker", "requeue_later", "enqueue_due"} <= set(needed)
    assert needed == sorted(set(needed))


def test_exit_code__unreachable_wins_over_configuration() -> None:
    ok = check.Check("a", True, "fine")
    config = check.Check("b", False, "bad key", check.EXIT_USAGE)
    down = check.Check("c", False, "no database", check.EXIT_UNREACHABLE)
    assert check.exit_code([ok]) == 0
    assert check.exit_code([ok, config]) == 2
    assert check.exit_code([config, down]) == 3
