"""Prompt templates: every built-in variable, custom variables, whitespace, unknown names."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from worker.templates import BUILTIN_VARIABLES, UnknownVariableError, builtin_values, resolve, variables_in

# 2026-03-08 12:30 UTC is 08:30 EDT on the day New York springs forward (a Sunday)
AT = datetime(2026, 3, 8, 12, 30, 15, 123456, tzinfo=UTC)


def test_builtin_values__every_variable_in_the_task_zone() -> None:
    v = builtin_values(AT, "America/New_York")
    assert v == {
        "NOW": "2026-03-08T08:30:15-04:00",
        "TODAY": "2026-03-08",
        "YESTERDAY": "2026-03-07",
        "LAST_7_DAYS": "2026-03-01 to 2026-03-08",
        "LAST_30_DAYS": "2026-02-06 to 2026-03-08",
        "WEEKDAY": "Sunday",
        "MONTH": "March",
    }
    assert set(v) == set(BUILTIN_VARIABLES)


def test_builtin_values__local_date_differs_from_utc_date() -> None:
    late = datetime(2026, 1, 1, 23, 30, tzinfo=UTC)
    assert builtin_values(late, "Asia/Tokyo")["TODAY"] == "2026-01-02"
    assert builtin_values(late, "Asia/Tokyo")["WEEKDAY"] == "Friday"
    assert builtin_values(late, "America/Los_Angeles")["TODAY"] == "2026-01-01"
    assert builtin_values(late, "UTC")["NOW"] == "2026-01-01T23:30:00+00:00"


def test_builtin_values__month_and_year_boundaries() -> None:
    v = builtin_values(datetime(2026, 1, 1, 12, tzinfo=UTC), "Europe/Berlin")
    assert v["YESTERDAY"] == "2025-12-31"
    assert v["MONTH"] == "January"
    assert v["LAST_30_DAYS"] == "2025-12-02 to 2026-01-01"


def test_builtin_values__needs_aware_instant() -> None:
    with pytest.raises(ValueError):
        builtin_values(datetime(2026, 1, 1), "UTC")


@pytest.mark.parametrize("name", BUILTIN_VARIABLES)
def test_resolve__each_builtin(name: str) -> None:
    expected = builtin_values(AT, "Europe/Berlin")[name]
    assert resolve(f"<{{{{{name}}}}}>", AT, "Europe/Berlin") == f"<{expected}>"


def test_resolve__custom_variables_and_whitespace() -> None:
    out = resolve("Report for {{ team }} on {{TODAY}}, {{  TEAM_LEAD}}!", AT, "UTC",
                  {"team": "core", "TEAM_LEAD": "Ada"})
    assert out == "Report for core on 2026-03-08, Ada!"


def test_resolve__values_are_not_scanned_again() -> None:
    assert resolve("{{x}}", AT, "UTC", {"x": "{{TODAY}}"}) == "{{TODAY}}"


def test_resolve__no_variables_is_identity() -> None:
    assert resolve("plain text { not } a {var}", AT, "UTC") == "plain text { not } a {var}"


def test_resolve__unknown_variable_raises_with_all_names() -> None:
    with pytest.raises(UnknownVariableError) as err:
        resolve("{{today}} {{MISSING}} {{today}}", AT, "UTC")
    assert err.value.names == ["today", "MISSING"]  # built-in names are upper case


def test_resolve__empty_braces_are_unknown() -> None:
    with pytest.raises(UnknownVariableError):
        resolve("{{ }}", AT, "UTC")


def test_variables_in__same_pattern_as_the_database() -> None:
    assert variables_in("{{A}} {{ B }} {{\nC\t}} {{A}} {{{D}}}") == ["A", "B", "C", "D"]
