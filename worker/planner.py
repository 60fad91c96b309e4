"""The cron planner: the next occurrence of a cron task, in the task's time zone.

Pure functions, no I/O: the worker's planner loop feeds them rows from
scheduler.tasks_to_plan() and hands the result to scheduler.apply_plan().

Wall-clock semantics. A cron expression names local wall-clock times in the
task's IANA time zone (croniter iterates naive local times; zoneinfo maps
them to instants):

* spring forward: a local time that does not exist (02:30 on the day clocks
  jump 02:00 -> 03:00 in New York, 02:15 on Lord Howe Island where they jump
  02:00 -> 02:30) runs at the next valid instant, the moment of the jump
  (03:00 and 02:30 local). Several occurrences inside one gap run once.
* fall back: a local time that happens twice (01:30 in New York on the
  first Sunday of November) runs once, at the first of the two. An
  occurrence is never planned before the instant we plan after.

Plans are made from the last planned occurrence (`last_scheduled_for`), or
from max(plan_from, starts_at) when that is later (a new, edited or resumed
schedule: the database sets plan_from to now()), never from the planner's "now",
so a late planner pass does not shift the schedule: it finds the occurrences
it missed and hands them all to scheduler.apply_plan, where the task's
misfire_policy decides which run (scheduler.misfire_plan, the one home of that
rule for every kind of schedule). The planner only computes occurrences.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from croniter import CroniterBadCronError, CroniterBadDateError, croniter

# At most this many due occurrences are handed to apply_plan per planner pass;
# a task with more is planned again at once, continuing where the pass stopped.
MAX_DUE_PER_PASS = 1100
# Guard against pathological expressions: candidates examined per call.
MAX_CANDIDATES = 200_000

_ONE_US = timedelta(microseconds=1)


class NoNextOccurrence(ValueError):
    """The expression has no occurrence after the given instant (e.g. '0 0 30 2 *')."""


def _local_to_instant(local: datetime, zone: ZoneInfo) -> datetime:
    """The UTC instant of naive wall-clock time `local` in `zone`.

    Ambiguous (fall back): the first of the two instants (fold=0).
    Nonexistent (spring forward): the instant the clocks jumped, i.e. the
    first valid local time after the gap.
    """
    first = local.replace(tzinfo=zone, fold=0)
    instant = first.astimezone(UTC)
    if instant.astimezone(zone).replace(tzinfo=None) == local:
        return instant
    # In a gap, fold=0 applies the offset before the jump and fold=1 the one
    # after; the jump lies between the two readings. Binary search to the
    # second (transitions fall on whole seconds).
    lo = local.replace(tzinfo=zone, fold=1).astimezone(UTC)
    hi = instant
    if lo > hi:
        lo, hi = hi, lo
    after_offset = hi.astimezone(zone).utcoffset()
    while hi - lo > timedelta(seconds=1):
        mid = lo + (hi - lo) / 2
        mid = mid.replace(microsecond=0)
        if mid.astimezone(zone).utcoffset() == after_offset:
            hi = mid
        else:
            lo = mid
    return hi


def occurrences(cron_expr: str, tz: str, after_utc: datetime) -> Iterator[datetime]:
    """Occurrences strictly after `after_utc`, as aware UTC datetimes, strictly increasing.

    Ends (StopIteration) when the expression has no further date.
    """
    if after_utc.tzinfo is None:
        raise ValueError("after_utc must be timezone-aware")
    zone = ZoneInfo(tz)
    start_local = after_utc.astimezone(zone).replace(tzinfo=None)
    try:
        it = croniter(cron_expr.strip(), start_local)
    except CroniterBadCronError as exc:
        raise ValueError(f"invalid cron expression {cron_expr!r}: {exc}") from exc
    last = after_utc
    examined = 0
    while True:
        try:
            local = it.get_next(datetime)
        except CroniterBadDateError:
            return
        examined += 1
        if examined > MAX_CANDIDATES:
            return
        instant = _local_to_instant(local, zone)
        # drops the second pass of a repeated hour and duplicates inside a gap
        if instant > last:
            last = instant
            examined = 0
            yield instant


def next_occurrence(cron_expr: str, tz: str, after_utc: datetime) -> datetime:
    """The first occurrence strictly after `after_utc` (aware, UTC) of `cron_expr` read in zone `tz`.

    Raises NoNextOccurrence when there is none.
    """
    for instant in occurrences(cron_expr, tz, after_utc):
        return instant
    raise NoNextOccurrence(f"{cron_expr!r} has no occurrence after {after_utc.isoformat()}")


@dataclass(frozen=True)
class TaskSchedule:
    """What the planner needs of a task: the columns of scheduler.tasks_to_plan()."""

    id: Any
    schedule_version: int
    cron_expression: str
    timezone: str
    created_at: datetime
    starts_at: datetime | None = None
    ends_at: datetime | None = None
    max_runs: int | None = None
    run_count: int = 0
    last_scheduled_for: datetime | None = None
    misfire_policy: str = "run_once"
    misfire_grace_seconds: int = 60
    # set to now() by the database whenever the schedule is created, edited or resumed
    plan_from: datetime | None = None

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> TaskSchedule:
        names = cls.__dataclass_fields__
        return cls(**{k: v for k, v in row.items() if k in names})


@dataclass(frozen=True)
class Plan:
    """The arguments of scheduler.apply_plan() for one task.

    `due`: the occurrences at or before now not enqueued yet (ascending); which
    of them run is the database's decision (misfire_policy). `more` is True
    when the pass stopped at MAX_DUE_PER_PASS: next_run_at is None, complete
    False, and the task must be planned again (it stays in tasks_to_plan with
    last_scheduled_for moved forward).
    """

    next_run_at: datetime | None
    complete: bool = False
    due: list[datetime] = field(default_factory=list)
    more: bool = False


def plan(task: TaskSchedule | Mapping[str, Any], now: datetime) -> Plan:
    """Plan a cron task at instant `now`: its due occurrences (at or before now, not
    enqueued yet) and the next one after now. ends_at (inclusive) and max_runs end the
    schedule (complete = True); scheduler.apply_plan applies misfire_policy to `due`.
    """
    t = task if isinstance(task, TaskSchedule) else TaskSchedule.from_row(task)
    if t.max_runs is not None and t.run_count >= t.max_runs:
        return Plan(next_run_at=None, complete=True)

    # never before the schedule was (re)set: a resumed or edited task does not
    # catch up what it missed while paused
    floor = t.plan_from if t.plan_from is not None else (
        t.created_at if t.last_scheduled_for is None else None)
    if t.starts_at is not None:
        floor = t.starts_at if floor is None else max(floor, t.starts_at)
    if floor is not None:
        floor -= _ONE_US  # an occurrence at exactly the start counts
    candidates = [x for x in (floor, t.last_scheduled_for) if x is not None]
    after = max(candidates)
    if t.ends_at is not None and after >= t.ends_at:
        return Plan(next_run_at=None, complete=True)

    due: list[datetime] = []
    for occ in occurrences(t.cron_expression, t.timezone, after):
        if t.ends_at is not None and occ > t.ends_at:
            break
        if occ > now:
            return Plan(next_run_at=occ, due=due)
        if len(due) == MAX_DUE_PER_PASS:
            return Plan(next_run_at=None, due=due, more=True)
        due.append(occ)
    return Plan(next_run_at=None, complete=True, due=due)
