"""Prompt templates: `{{NAME}}` variables resolved at run time.

Built-in variables (the list scheduler.builtin_template_variables() holds):

| variable          | value (in the task's time zone)                      |
|-------------------|------------------------------------------------------|
| `{{NOW}}`         | ISO 8601 with offset, seconds: 2026-03-08T09:00:00-04:00 |
| `{{TODAY}}`       | YYYY-MM-DD                                            |
| `{{YESTERDAY}}`   | YYYY-MM-DD                                            |
| `{{LAST_7_DAYS}}` | "YYYY-MM-DD to YYYY-MM-DD": seven days ago to today   |
| `{{LAST_30_DAYS}}`| "YYYY-MM-DD to YYYY-MM-DD": thirty days ago to today  |
| `{{WEEKDAY}}`     | English day name: Monday                              |
| `{{MONTH}}`       | English month name: March                             |

Custom variables come from the task's prompt_variables (a JSON object of
strings); names match exactly, built-in names are upper case. Whitespace
inside the braces is allowed (`{{ TODAY }}`), with the same pattern the
database's template_error() uses, so both agree on what a variable is.

The reference instant is the execution's `scheduled_for`: the occurrence
for scheduled runs, the moment "run now" was pressed for manual runs. So a
run that waited in a queue, or is retried an hour later, still says
"TODAY" = the day it was due, and every attempt resolves the same text.
Date arithmetic is on local calendar days, so DST days are not off by one.

An unknown variable raises UnknownVariableError. The database refuses such
a template at save time, so at run time it is a permanent error.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

# Same pattern as scheduler.template_error() in the validation migration.
VARIABLE_RE = re.compile(r"\{\{\s*([^{}]*?)\s*\}\}")

BUILTIN_VARIABLES = ("NOW", "TODAY", "YESTERDAY", "LAST_7_DAYS", "LAST_30_DAYS", "WEEKDAY", "MONTH")

_WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August",
           "September", "October", "November", "December")


class UnknownVariableError(ValueError):
    """The template names a variable that is neither built in nor in prompt_variables."""

    def __init__(self, names: list[str]) -> None:
        self.names = names
        listed = ", ".join("{{" + n + "}}" for n in names)
        super().__init__(f"unknown template variable{'s' if len(names) > 1 else ''} {listed}")


def _range(start: date, end: date) -> str:
    return f"{start.isoformat()} to {end.isoformat()}"


def builtin_values(at: datetime, timezone: str) -> dict[str, str]:
    """The built-in variables at instant `at` (aware) seen in IANA zone `timezone`."""
    if at.tzinfo is None:
        raise ValueError("builtin_values needs an aware datetime")
    local = at.astimezone(ZoneInfo(timezone))
    today = local.date()
    return {
        "NOW": local.isoformat(timespec="seconds"),
        "TODAY": today.isoformat(),
        "YESTERDAY": (today - timedelta(days=1)).isoformat(),
        "LAST_7_DAYS": _range(today - timedelta(days=7), today),
        "LAST_30_DAYS": _range(today - timedelta(days=30), today),
        "WEEKDAY": _WEEKDAYS[local.weekday()],
        "MONTH": _MONTHS[local.month - 1],
    }


def variables_in(template: str) -> list[str]:
    """Variable names used in a template, in order of first use."""
    seen: dict[str, None] = {}
    for match in VARIABLE_RE.finditer(template):
        seen.setdefault(match.group(1), None)
    return list(seen)


def resolve(template: str, at: datetime, timezone: str,
            variables: Mapping[str, object] | None = None) -> str:
    """Replace every `{{NAME}}` in one pass (values are not scanned again).

    Built-ins win over a custom variable of the same name (the database forbids
    defining one anyway).
    """
    if "{{" not in template:
        return template
    values: dict[str, str] = {}
    for key, value in (variables or {}).items():
        values[key] = value if isinstance(value, str) else str(value)
    values.update(builtin_values(at, timezone))
    unknown = [name for name in variables_in(template) if name not in values]
    if unknown:
        raise UnknownVariableError(unknown)
    return VARIABLE_RE.sub(lambda m: values[m.group(1)], template)
