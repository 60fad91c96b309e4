"""What the pages show that needs care: model output as sanitised Markdown, cron in words and occurrences."""

from __future__ import annotations

from datetime import UTC, datetime
from itertools import islice
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import nh3
from cron_descriptor import Options, get_description  # type: ignore[import-untyped]
from markdown_it import MarkdownIt
from markupsafe import Markup
from pygments import highlight
from pygments.formatters import HtmlFormatter
from pygments.lexers import get_lexer_by_name
from pygments.token import STANDARD_TYPES
from pygments.util import ClassNotFound

from worker.planner import occurrences

# a fenced block longer than this is shown plain: highlighting is linear, but a page of replies
# should not pay for megabytes of it
HIGHLIGHT_MAX_CHARS = 20_000
# Pygments' short token classes (span class="k", "s2", ...): the only classes a reply's HTML may
# carry, so a model cannot borrow the page's own classes (nh3's allowed_classes)
_TOKEN_CLASSES = {c for c in STANDARD_TYPES.values() if c}
_formatter = HtmlFormatter(nowrap=True)


def _highlight(code: str, lang: str, _attrs: str) -> str:
    """A fenced block with a language Pygments knows, as `<pre class="hl">` with token spans
    (static/highlight.css colours them); anything else: "" (markdown-it's plain, escaped block)."""
    if not lang or len(code) > HIGHLIGHT_MAX_CHARS:
        return ""
    try:
        lexer = get_lexer_by_name(lang.split()[0])
    except ClassNotFound:
        return ""
    return f'<pre class="hl"><code>{highlight(code, lexer, _formatter)}</code></pre>\n'


# html=False: raw HTML in a message is escaped into text, never passed through; nh3
# (ammonia) then cleans what Markdown itself produced (links keep only safe schemes)
_md = MarkdownIt("commonmark", {"html": False, "linkify": False, "highlight": _highlight}).enable("table")
_ALLOWED_TAGS = {"p", "br", "strong", "em", "code", "pre", "blockquote", "ul", "ol", "li", "a", "h1", "h2",
                 "h3", "h4", "h5", "h6", "hr", "table", "thead", "tbody", "tr", "th", "td", "del", "span"}
_ALLOWED_CLASSES = {"pre": {"hl"}, "span": _TOKEN_CLASSES}


def markdown(text: str | None) -> Markup:
    """Markdown to HTML that is safe to insert into a page: no raw HTML, no scripts, no event handlers;
    fenced code with a known language highlighted (Pygments)."""
    html = _md.render(text or "")
    return Markup(nh3.clean(html, tags=_ALLOWED_TAGS, url_schemes={"http", "https", "mailto"},
                            link_rel="noopener noreferrer nofollow", allowed_classes=_ALLOWED_CLASSES))


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
