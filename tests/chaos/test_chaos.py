"""Chaos at a small size (the full 1,000-execution scenarios: bench/bench_chaos.py).

Real worker processes are SIGKILLed every 2 s while they run executions through
the real chat function and the fake model. At the end: every run terminal, none
lost, none run twice (one model call per run), task counters equal to the
rows, no deadlock, and each killed worker's runs back in the queue long before
its 30 s lease (rescue on the death of its database session).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.chaos.harness import run_sigkill
from tests.e2e.conftest import ChatFunction, FakeLLM

pytestmark = pytest.mark.e2e


def test_chaos__repeated_sigkill__nothing_lost_nothing_run_twice(
        chat_function: ChatFunction, llm: FakeLLM, tmp_path: Path) -> None:
    # 200 runs on 12 slots, the model at 350 ms (the 200-500 ms): several kills land mid-run
    report = run_sigkill(chat_function, llm, tmp_path, tasks=50, per_task=4, kill_every_s=2.0, lease_s=30,
                         concurrency=4, model_latency_ms=350)
    print(json.dumps(report))
    assert report["rows"] == report["executions"] == 200
    assert report["statuses"] == {"succeeded": 200}, report
    assert report["lost"] == 0
    assert report["duplicated"] == 0 and report["model_calls_per_run"] == {1: 200}, report
    assert report["runs_without_exactly_one_reply"] == 0
    assert report["task_counters"] == {"success": 200, "failure": 0}
    assert report["deadlocks"] == 0
    assert report["faults"] >= 2, report
    # back in the queue on the death of the session, not after the 30 s lease
    assert report["stranded_s"]["max"] < 15, report
