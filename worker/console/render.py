"""What the pages show that needs care: model output as sanitised Markdown, cron in words and occurrences."""

from __future__ import annotations

from datetime import UTC, datetime
from itertools import islice
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import nh3
from cron_descriptor import Options, get_description  # type: ignore[import-untyped]
from markdown_it import MarkdownIt
from markupsafe import Markup

from worker.planner import occurrences

# html=False: raw HTML in a message is escaped into text, never passed through; nh3
# (ammonia) then cleans what Markdown itself produced (links keep only safe schemes)
_md = MarkdownIt("commonmark", {"html": False, "linkify": False}).enable("table")
_ALLOWED_TAGS = {"p", "br", "strong", "em", "code", "pre", "blockquote", "ul", "ol", "li", "a", "h1", "h2",
                 "h3", "h4", "h5", "h6", "hr", "table", "thead", "tbody", "tr", "th", "td", "del"}


def markdown(text: str | None) -> Markup:
    """Markdown to HTML that is safe to insert into a page: no raw HTML, no scripts, no event handlers."""
    html = _md.render(text or "")
    return Markup(nh3.clean(html, tags=_ALLOWED_TAGS, url_schemes={"http", "https", "mailto"},
                            link_rel="noopener noreferrer nofollow"))


def cron_in_words(expression: str) -> str:
    """A five-field cron expression in English ("At 09:00 AM, Monday through Friday")."""
    options = Options()
    options.use_24hour_time_format = True
    return str(get_description(expression, options))


def next_occurrences(expression: str, timezone: str, count: int = 5, start: datetime | None = None) -> list[datetime]:
    """The next `count` occurrences, in the task's time zone, as the planner computes them
    (worker.planner.occurrences: DST gaps and repeated hours follow the same rule)."""
    zone = ZoneInfo(timezone)
    after = start or datetime.now(UTC)
    return [t.astimezone(zone) for t in islice(occurrences(expression, timezone, after), count)]


def zone_ok(timezone: str) -> bool:
    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        return False
    return True
