"""The database's cron validator and the planner's croniter accept the same expressions.

`scheduler.cron_error(expr) is null` must hold exactly for the five-field
expressions (and @ aliases) that croniter accepts, because the worker's planner
feeds croniter whatever the database stored. The reference is
`croniter.is_valid(expr, strict=True)`:

* strict, because the non-strict check accepts a day that no selected month
  has (`0 0 31 2 *`), for which `get_next` raises: the planner could never
  schedule it, so the database refuses it with a clear message;
* minus `R` (random) fields, which croniter accepts but which would make the
  next run irreproducible; the database refuses them (and `H`, which croniter
  refuses without a hash id anyway);
* minus a restricted day-of-month together with a restricted day-of-week when
  one of them uses `#`, `L` or `W`: croniter intersects the two then (instead
  of its usual OR) and may never find a date (`0 0 11 * 1#1`).

Expressions come from a grammar biased towards near-valid input, so most
examples exercise the edges (ranges, steps, names, `L`, `W`, `#`, `?`).
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import psycopg
import pytest
from croniter import croniter
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.integration

ALIASES = {"@midnight", "@hourly", "@daily", "@weekly", "@monthly", "@yearly", "@annually"}
# croniter splits fields on ASCII white space only
FIELD_RE = re.compile(r"[^ \t\n\r\f\v]+")
HASH_RE = re.compile(r"^(h|r)(\((\d+)-(\d+)\))?(/(\d+))?$", re.ASCII)
START = datetime(2026, 11, 21, 8, 30)

MONTHS = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]
DAYS = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"]


def croniter_accepts(expr: str) -> bool:
    """What the planner can use: croniter's strict check, five fields or an alias, no R/H."""
    if expr.lower() not in ALIASES:
        fields = FIELD_RE.findall(expr)
        if len(fields) != 5:
            return False
        if any(HASH_RE.match(f.lower()) for f in fields):
            return False
    if not croniter.is_valid(expr, strict=True):
        return False
    return not _intersects_day_fields(expr)


def _intersects_day_fields(expr: str) -> bool:
    """#/L in day-of-week with a restricted day-of-month, or W with a restricted day-of-week.

    croniter ORs a restricted day-of-month with a restricted day-of-week, but
    #, L and W are applied on top of the other field (see croniter._calc and
    _calc_next), an intersection that may hold no date at all (`0 0 11 * 1#1`);
    the database asks for `*` or `?` in the other field instead.
    """
    if expr.lower() in ALIASES:
        return False
    expanded, nth = croniter.expand(expr)
    dom = FIELD_RE.findall(expr.lower())[2]
    nearest_weekday = bool(re.match(r"^(?:\d+w|w\d+)$", dom, re.ASCII))
    return bool((nth and expanded[2][0] != "*") or (nearest_weekday and expanded[4][0] != "*"))


@pytest.fixture(scope="module")
def vconn(module_db_url: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(module_db_url, autocommit=True) as c:
        yield c


def cron_error(conn: psycopg.Connection[Any], expr: str) -> str | None:
    row = conn.execute("select scheduler.cron_error(%s)", (expr,)).fetchone()
    assert row is not None
    return row[0]  # type: ignore[no-any-return]


# --- the grammar ------------------------------------------------------------------
#
# Per field, a pool of items built from the grammar (numbers in and around the
# field's range, with leading zeros and huge ones; names in mixed case and
# misspelt; ranges, reversed ranges, steps, L, W, #, ?, H, R, junk), split by
# whether croniter accepts the item alone in that field, so that whole
# expressions are valid often enough to test both sides. A smaller share of
# fields comes from a free-form composite grammar.

BOUNDS = [(0, 59), (0, 23), (1, 31), (1, 12), (0, 6)]
STEPS = ["0", "1", "2", "3", "5", "7", "15", "30", "59", "60", "61", "00", "05", "1000",
         "99999999999999999999"]
SPECIALS = ["L", "l", "L5", "L0", "L7", "L8", "l05", "L*", "5L", "LW", "15W", "w15", "0W", "31W", "32W",
            "W", "1#1", "1#5", "1#6", "1#0", "01#02", "7#1", "8#1", "mon-fri#2", "MON#3", "Sun-Sat#1",
            "fri-mon#5", "jan#1", "1-5#2", "sun#", "#2", "x#2", "?", "*", "H", "R", "H/15", "R/5",
            "R(1-5)", "H(0-29)/10", "r(5-1)"]
JUNK = ["", "-", "/", "#", "@", "**", "+5", "5.0", "-5", "5-", "1--2", "é", "٣", "1/", "/5", "*-",
        "5//2", "1-2-3", "(1-2)", "0x1", "½", "*/", "*/x", "*-5", "5/2/3", "?/2", "L-5", "5-L",
        "5-L/2", "*/5-3", "mon/x", "\u00a0"]


def _cased(word: str) -> list[str]:
    return [word, word.upper(), word.capitalize(), word[0] + word[1:].upper()]


def _field_pool(index: int) -> list[str]:
    lo, hi = BOUNDS[index]
    numbers = [str(n) for n in range(max(lo - 1, 0), hi + 3)]
    numbers += ["00", "07", "007", "060", "100", "99999999999999999999"]
    names = {3: MONTHS, 4: DAYS}.get(index, [])
    atoms = numbers + [w for n in names for w in _cased(n)[:2]]
    atoms += ["jna", "moon", "thur", "foo", "sun" if index == 3 else "jan"]
    rnd = random.Random(index)
    pool = list(atoms) + SPECIALS + JUNK
    pool += [f"{rnd.choice(atoms)}-{rnd.choice(atoms)}" for _ in range(600)]
    pool += [f"*/{s}" for s in STEPS] + [f"{rnd.choice(atoms)}/{rnd.choice(STEPS)}" for _ in range(300)]
    pool += [f"{rnd.choice(atoms)}-{rnd.choice(atoms)}/{rnd.choice(STEPS)}" for _ in range(600)]
    return sorted(set(pool))


def _alone_ok(index: int, item: str) -> bool:
    fields = ["*"] * 5
    fields[index] = item
    return croniter_accepts(" ".join(fields))


def _pools(index: int) -> tuple[list[str], list[str]]:
    pool = _field_pool(index)
    good = [i for i in pool if _alone_ok(index, i)]
    return good, [i for i in pool if i not in set(good)]


POOLS = [_pools(i) for i in range(5)]


@st.composite
def wild_items(draw: st.DrawFn) -> str:
    """A free-form item: any atom combined by range, step, #, L or W."""
    atom = st.one_of(st.integers(0, 70).map(str), st.integers(0, 10**25).map(str),
                     st.sampled_from([*MONTHS, *DAYS, "L", "W", "*", "?", "x"]))
    a = draw(atom)
    shape = draw(st.sampled_from(["{a}", "{a}-{b}", "{a}/{b}", "{a}-{b}/{c}", "*/{a}", "{a}#{b}",
                                  "L{a}", "{a}W", "{a},{b}", "{a}-{b},{c}"]))
    return shape.format(a=a, b=draw(atom), c=draw(atom))


def fields(index: int) -> st.SearchStrategy[str]:
    good, bad = POOLS[index]
    # repetition weights the choice: most items are valid alone, so that a
    # good share of whole expressions is valid too
    item = st.sampled_from(good * 8 + bad)
    listed = st.lists(item, min_size=1, max_size=2).map(",".join)
    return st.sampled_from([True] * 9 + [False]).flatmap(lambda pooled: listed if pooled else wild_items())


@st.composite
def expressions(draw: st.DrawFn) -> str:
    kind = draw(st.sampled_from(["five"] * 10 + ["count", "alias"]))
    if kind == "alias":
        name = draw(st.sampled_from([*sorted(ALIASES), "@reboot", "@day", "daily", "@every"]))
        name = draw(st.sampled_from(_cased(name)))
        return draw(st.sampled_from([name, f" {name}", f"{name} ", f"{name} *"]))
    n = 5 if kind == "five" else draw(st.sampled_from([0, 1, 3, 4, 6, 7]))
    parts = [draw(fields(i % 5)) for i in range(n)]
    out = parts[0] if parts else ""
    for part in parts[1:]:
        out += draw(st.sampled_from([" ", " ", " ", "  ", "\t", "\n"])) + part
    lead = draw(st.sampled_from(["", "", "", " ", "\t"]))
    trail = draw(st.sampled_from(["", "", "", " ", "\n"]))
    return lead + out + trail


# --- the property -------------------------------------------------------------------


@settings(max_examples=2000, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(expr=expressions())
@example(expr="0 0 31 2 *")  # valid for non-strict croniter, but never comes
@example(expr="0 0 0-0 * *")  # an equal range is the whole field, even 0-0
@example(expr="59/15 * * * *")  # start at the maximum: minute 59 only
@example(expr="0 0 * * 1#2,3")  # # mixed with a plain day
@example(expr="0 0 * * mon-fri#2")
@example(expr="0 0 15W,1 * *")
@example(expr="0 0 31 *,4 *")  # croniter checks the listed month, not the star
@example(expr="R * * * *")
@example(expr="* * 11-10/30 * 7#1")  # an empty intersection: get_next raises
@example(expr="0 0 15W * 1-5")
@example(expr="* * 11-10/30 * *,7#1")  # "*" in day-of-week does not lift the intersection
@example(expr=" @daily")
def test_cron_validator__agrees_with_croniter(vconn: psycopg.Connection[Any], expr: str) -> None:
    expected = croniter_accepts(expr)
    event("croniter accepts" if expected else "croniter refuses")
    error = cron_error(vconn, expr)
    assert (error is None) == expected, (
        f"{expr!r}: croniter {'accepts' if expected else 'refuses'} it, the database says {error!r}")
    if expected:
        # anything the database accepts, the planner can compute
        nxt = croniter(expr, START).get_next(datetime)
        assert nxt > START
    else:
        assert isinstance(error, str) and error


# --- examples -------------------------------------------------------------------------


@pytest.mark.parametrize("expr", [
    "0 9 * * 1-5", "*/15 * * * *", "0 0 1 JAN *", "@daily", "@HOURLY", "0 9 * * 7", "0 9 * * SUN",
    "0 0 L * *", "0 9 15W * *", "0 9 ? * MON#1", "0 9 * * L5", "30 22-2 * * *", "0 9 * * fri-mon",
    "5/10 * * * *", "0 0 29 2 *", "0 0 1 1-12/3 *", "00 09 * * 01",
])
def test_cron_error__accepts(vconn: psycopg.Connection[Any], expr: str) -> None:
    assert cron_error(vconn, expr) is None
    assert croniter_accepts(expr)


@pytest.mark.parametrize(("expr", "mentions"), [
    ("61 * * * *", ["minute", "61", "0-59"]),
    ("* * *", ["5 fields", "found 3"]),
    ("0 9 * * 8", ["day-of-week", "8", "0-6"]),
    ("0 24 * * *", ["hour", "24", "0-23"]),
    ("0 0 32 * *", ["day-of-month", "32", "1-31"]),
    ("0 0 1 13 *", ["month", "13", "1-12"]),
    ("0 0 1 foo *", ["month", "foo"]),
    ("*/0 * * * *", ["minute", "step 0"]),
    ("0 0 31 4 *", ["day-of-month", "31", "never"]),
    ("0 ? * * *", ["hour", "?"]),
    ("0 0 * * 1#6", ["day-of-week", "1-5"]),
    ("H * * * *", ["minute", "hashed"]),
    ("0 0 11 * 1#1", ["day-of-month", "* or ?"]),
    ("0 0 15W * mon", ["day-of-week", "* or ?"]),
    ("@reboot", ["5 fields"]),
    ("", ["5 fields", "found 0"]),
])
def test_cron_error__refuses_with_a_readable_reason(vconn: psycopg.Connection[Any], expr: str,
                                                    mentions: list[str]) -> None:
    error = cron_error(vconn, expr)
    assert error is not None
    for word in mentions:
        assert word in error, f"{word!r} not in {error!r}"
    assert not croniter_accepts(expr)


def test_cron_error__null_is_required(vconn: psycopg.Connection[Any]) -> None:
    row = vconn.execute("select scheduler.cron_error(null)").fetchone()
    assert row is not None and row[0] == "cron expression is required"


def test_task_write__refuses_an_invalid_cron_expression(vconn: psycopg.Connection[Any]) -> None:
    uid = vconn.execute("insert into auth.users (id, email)"
                        " values (gen_random_uuid(), 'cron@example.test') returning id").fetchone()
    assert uid is not None
    agent = vconn.execute("insert into public.agents (user_id, name) values (%s, 'a') returning id",
                          (uid[0],)).fetchone()
    assert agent is not None
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="day-of-week"):
        vconn.execute(
            "insert into public.agent_tasks (user_id, agent_id, name, prompt_template, schedule_type,"
            " cron_expression) values (%s, %s, 't', 'p', 'cron', '0 9 * * 8')", (uid[0], agent[0]))
    vconn.execute(
        "insert into public.agent_tasks (user_id, agent_id, name, prompt_template, schedule_type,"
        " cron_expression) values (%s, %s, 't', 'p', 'cron', '0 9 * * 1-5')", (uid[0], agent[0]))
