"""The cron planner: occurrences in the task's time zone across DST, and plan() policies."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from worker.planner import (
    MAX_DUE_PER_PASS,
    NoNextOccurrence,
    TaskSchedule,
    next_occurrence,
    occurrences,
    plan,
)


def local(tz: str, *args: int, fold: int = 0) -> datetime:
    return datetime(*args, tzinfo=ZoneInfo(tz), fold=fold)  # type: ignore[arg-type,misc]


def as_local(instant: datetime, tz: str) -> str:
    return instant.astimezone(ZoneInfo(tz)).isoformat()


def take(expr: str, tz: str, after: datetime, n: int) -> list[str]:
    gen = occurrences(expr, tz, after.astimezone(UTC))
    return [as_local(next(gen), tz) for _ in range(n)]


# --- next_occurrence ---------------------------------------------------------------


def test_next_occurrence__is_in_the_tasks_time_zone() -> None:
    after = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)  # 13:00 in Berlin
    got = next_occurrence("0 9 * * *", "Europe/Berlin", after)
    assert got == local("Europe/Berlin", 2026, 1, 6, 9, 0).astimezone(UTC)
    assert got.tzinfo is not None and got.utcoffset() == timedelta(0)


def test_next_occurrence__is_strictly_after() -> None:
    at = local("UTC", 2026, 1, 5, 9, 0)
    assert next_occurrence("0 9 * * *", "UTC", at) == local("UTC", 2026, 1, 6, 9, 0)


def test_next_occurrence__needs_an_aware_instant() -> None:
    with pytest.raises(ValueError):
        next_occurrence("0 9 * * *", "UTC", datetime(2026, 1, 1))


def test_next_occurrence__impossible_date_raises() -> None:
    with pytest.raises(NoNextOccurrence):
        next_occurrence("0 0 30 2 *", "UTC", datetime(2026, 1, 1, tzinfo=UTC))


def test_next_occurrence__aliases_and_names() -> None:
    after = datetime(2026, 1, 1, 12, tzinfo=UTC)  # a Thursday
    assert next_occurrence("@daily", "UTC", after) == datetime(2026, 1, 2, tzinfo=UTC)
    assert next_occurrence("0 9 * * mon-fri", "UTC", after) == datetime(2026, 1, 2, 9, tzinfo=UTC)
    assert next_occurrence("0 9 * * 7", "UTC", after) == datetime(2026, 1, 4, 9, tzinfo=UTC)


# spring forward: the nonexistent local time runs at the jump (the next valid instant)
@pytest.mark.parametrize(("tz", "day", "expr", "expected"), [
    # New York, 2026-03-08: 02:00 EST -> 03:00 EDT
    ("America/New_York", (2026, 3, 8), "30 2 * * *",
     ["2026-03-08T03:00:00-04:00", "2026-03-09T02:30:00-04:00"]),
    # Berlin, 2026-03-29: 02:00 CET -> 03:00 CEST
    ("Europe/Berlin", (2026, 3, 29), "30 2 * * *",
     ["2026-03-29T03:00:00+02:00", "2026-03-30T02:30:00+02:00"]),
    # Lord Howe, 2026-10-04: 02:00 +10:30 -> 02:30 +11:00 (a 30-minute shift)
    ("Australia/Lord_Howe", (2026, 10, 4), "15 2 * * *",
     ["2026-10-04T02:30:00+11:00", "2026-10-05T02:15:00+11:00"]),
])
def test_occurrences__spring_forward_runs_at_the_next_valid_instant(
        tz: str, day: tuple[int, int, int], expr: str, expected: list[str]) -> None:
    assert take(expr, tz, local(tz, *day, 0, 0), 2) == expected


def test_occurrences__several_times_in_one_gap_run_once() -> None:
    got = take("*/20 2-3 * * *", "Europe/Berlin", local("Europe/Berlin", 2026, 3, 29, 0, 0), 3)
    assert got == ["2026-03-29T03:00:00+02:00", "2026-03-29T03:20:00+02:00", "2026-03-29T03:40:00+02:00"]


def test_occurrences__lord_howe_half_hour_gap_keeps_valid_minutes() -> None:
    got = take("*/15 2 * * *", "Australia/Lord_Howe", local("Australia/Lord_Howe", 2026, 10, 4, 0, 0), 3)
    # 02:00 and 02:15 do not exist (-> 02:30 once), 02:30 and 02:45 do
    assert got == ["2026-10-04T02:30:00+11:00", "2026-10-04T02:45:00+11:00", "2026-10-05T02:00:00+11:00"]


# fall back: a repeated local time runs once, at the first of the two
@pytest.mark.parametrize(("tz", "day", "expr", "expected"), [
    # New York, 2026-11-01: 02:00 EDT -> 01:00 EST
    ("America/New_York", (2026, 11, 1), "30 1 * * *",
     ["2026-11-01T01:30:00-04:00", "2026-11-02T01:30:00-05:00"]),
    # Berlin, 2026-10-25: 03:00 CEST -> 02:00 CET
    ("Europe/Berlin", (2026, 10, 25), "30 2 * * *",
     ["2026-10-25T02:30:00+02:00", "2026-10-26T02:30:00+01:00"]),
    # Lord Howe, 2026-04-05: 02:00 +11:00 -> 01:30 +10:30
    ("Australia/Lord_Howe", (2026, 4, 5), "45 1 * * *",
     ["2026-04-05T01:45:00+11:00", "2026-04-06T01:45:00+10:30"]),
])
def test_occurrences__fall_back_runs_once(
        tz: str, day: tuple[int, int, int], expr: str, expected: list[str]) -> None:
    assert take(expr, tz, local(tz, *day, 0, 0), 2) == expected


def test_occurrences__fall_back_every_half_hour_does_not_repeat_the_hour() -> None:
    got = take("*/30 * * * *", "America/New_York", local("America/New_York", 2026, 11, 1, 0, 10), 5)
    assert got == ["2026-11-01T00:30:00-04:00", "2026-11-01T01:00:00-04:00", "2026-11-01T01:30:00-04:00",
                   "2026-11-01T02:00:00-05:00", "2026-11-01T02:30:00-05:00"]


def test_occurrences__after_an_instant_in_the_repeated_hour() -> None:
    # 01:10 EST is the second pass; 01:30 (first pass, EDT) is already in the past
    after = local("America/New_York", 2026, 11, 1, 1, 10, fold=1)
    assert take("*/30 * * * *", "America/New_York", after, 1) == ["2026-11-01T02:00:00-05:00"]


@pytest.mark.parametrize(("tz", "start"), [
    ("America/New_York", datetime(2026, 3, 1, tzinfo=UTC)),
    ("America/New_York", datetime(2026, 10, 25, tzinfo=UTC)),
    ("Europe/Berlin", datetime(2026, 3, 25, tzinfo=UTC)),
    ("Europe/Berlin", datetime(2026, 10, 20, tzinfo=UTC)),
    ("Australia/Lord_Howe", datetime(2026, 4, 1, tzinfo=UTC)),
    ("Australia/Lord_Howe", datetime(2026, 10, 1, tzinfo=UTC)),
])
def test_occurrences__strictly_increasing_across_each_transition(tz: str, start: datetime) -> None:
    gen = occurrences("*/30 * * * *", tz, start)
    prev = start
    for _ in range(2 * 24 * 10):
        cur = next(gen)
        assert cur > prev
        assert cur - prev <= timedelta(minutes=90)  # never loses more than the shifted hour
        prev = cur


# --- plan -------------------------------------------------------------------------------

NOW = datetime(2026, 6, 10, 12, 0, 30, tzinfo=UTC)


def task(**kw: object) -> TaskSchedule:
    fields: dict[str, object] = {
        "id": "t1", "schedule_version": 1, "cron_expression": "0 * * * *", "timezone": "UTC",
        "created_at": datetime(2026, 6, 1, tzinfo=UTC),
    }
    fields.update(kw)
    return TaskSchedule(**fields)  # type: ignore[arg-type]


def test_plan__new_task_plans_from_creation() -> None:
    p = plan(task(created_at=NOW - timedelta(seconds=10)), NOW)
    assert p == type(p)(next_run_at=datetime(2026, 6, 10, 13, 0, tzinfo=UTC))


def test_plan__new_task_with_future_start_plans_from_start_inclusive() -> None:
    start = datetime(2026, 7, 1, 9, 0, tzinfo=UTC)
    p = plan(task(created_at=NOW, starts_at=start), NOW)
    assert p.next_run_at == start


def test_plan__from_the_last_occurrence_not_from_now() -> None:
    # the planner ran 30 s late: the occurrence at 12:00 is due (on time: the database runs it)
    p = plan(task(last_scheduled_for=datetime(2026, 6, 10, 11, 0, tzinfo=UTC)), NOW)
    assert p.due == [datetime(2026, 6, 10, 12, 0, tzinfo=UTC)]
    assert p.next_run_at == datetime(2026, 6, 10, 13, 0, tzinfo=UTC) and not p.complete


def test_plan__accepts_a_row_mapping() -> None:
    row = {"id": "t", "schedule_version": 3, "cron_expression": "0 * * * *", "timezone": "UTC",
           "created_at": NOW, "starts_at": None, "ends_at": None, "max_runs": None, "run_count": 0,
           "last_scheduled_for": None, "misfire_policy": "run_once", "misfire_grace_seconds": 60}
    assert plan(row, NOW).next_run_at == datetime(2026, 6, 10, 13, tzinfo=UTC)


def _missed_task(policy: str) -> TaskSchedule:
    # last occurrence 07:00; 08:00..12:00 since; now 12:00:30 with 10 s grace -> 08..12 are missed
    return task(last_scheduled_for=datetime(2026, 6, 10, 7, tzinfo=UTC), misfire_policy=policy,
                misfire_grace_seconds=10)


def hours(*hs: int) -> list[datetime]:
    return [datetime(2026, 6, 10, h, tzinfo=UTC) for h in hs]


def test_plan__lists_every_due_occurrence_whatever_the_policy() -> None:
    # which of them run is misfire_policy's decision, in the database (scheduler.misfire_plan)
    for policy in ("run_once", "skip", "run_all"):
        p = plan(_missed_task(policy), NOW)
        assert p.due == hours(8, 9, 10, 11, 12)
        assert p.next_run_at == hours(13)[0] and not p.more and not p.complete


def test_plan__due_are_capped_per_pass_and_planning_continues() -> None:
    t = task(cron_expression="* * * * *", misfire_grace_seconds=0, last_scheduled_for=NOW - timedelta(days=3))
    p = plan(t, NOW)
    assert p.more and p.next_run_at is None and not p.complete
    assert len(p.due) == MAX_DUE_PER_PASS
    # the next pass continues from the last one handed over, never dropping an occurrence
    seen = list(p.due)
    for _ in range(10):
        if not p.more:
            break
        p = plan(task(cron_expression="* * * * *", misfire_grace_seconds=0, last_scheduled_for=seen[-1]), NOW)
        seen += p.due
    assert not p.more and p.next_run_at is not None
    assert len(seen) == len(set(seen)) == 3 * 24 * 60
    assert all(b - a == timedelta(minutes=1) for a, b in itertools.pairwise(seen))


def test_plan__ends_at_completes() -> None:
    p = plan(task(last_scheduled_for=hours(12)[0], ends_at=datetime(2026, 6, 10, 12, 30, tzinfo=UTC)), NOW)
    assert p.complete and p.next_run_at is None


def test_plan__ends_at_is_inclusive() -> None:
    p = plan(task(last_scheduled_for=hours(12)[0], ends_at=hours(13)[0]), NOW)
    assert p.next_run_at == hours(13)[0] and not p.complete


def test_plan__the_due_ones_before_the_end_are_listed_and_the_schedule_completes() -> None:
    t = _missed_task("run_once")
    t = task(**{**t.__dict__, "ends_at": datetime(2026, 6, 10, 10, 30, tzinfo=UTC)})
    p = plan(t, NOW)
    assert p.due == hours(8, 9, 10) and p.complete and p.next_run_at is None


def test_plan__max_runs_reached_completes() -> None:
    p = plan(task(max_runs=3, run_count=3, last_scheduled_for=hours(11)[0]), NOW)
    assert p.complete and p.next_run_at is None


def test_plan__impossible_expression_completes() -> None:
    p = plan(task(cron_expression="0 0 30 2 *", created_at=NOW), NOW)
    assert p.complete and p.next_run_at is None


def test_plan__dst_gap_in_task_zone() -> None:
    tz = "America/New_York"
    t = task(cron_expression="30 2 * * *", timezone=tz,
             last_scheduled_for=local(tz, 2026, 3, 7, 2, 30).astimezone(UTC))
    p = plan(t, local(tz, 2026, 3, 7, 12, 0).astimezone(UTC))
    assert p.next_run_at is not None and as_local(p.next_run_at, tz) == "2026-03-08T03:00:00-04:00"


def test_plan__resumed_task_plans_from_plan_from_not_the_missed_past() -> None:
    # paused for two days: the database set plan_from to the resume instant
    resumed = NOW - timedelta(seconds=5)
    t = task(last_scheduled_for=NOW - timedelta(days=2), plan_from=resumed)
    p = plan(t, NOW)
    assert p.due == []
    assert p.next_run_at == datetime(2026, 6, 10, 13, 0, tzinfo=UTC)


def test_plan__plan_from_older_than_last_occurrence_changes_nothing() -> None:
    # the 12:00 occurrence after the last one (11:30:30) is still within the grace
    t = task(last_scheduled_for=NOW - timedelta(minutes=30), plan_from=NOW - timedelta(days=3))
    assert plan(t, NOW).due == [datetime(2026, 6, 10, 12, 0, tzinfo=UTC)]
