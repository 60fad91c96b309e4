"""The console's pure parts: sanitised Markdown, cron in words, occurrences, the live fan-out filter."""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from datetime import UTC, datetime

from pygments.token import STANDARD_TYPES

from worker.console.live import LiveHub
from worker.console.render import cron_in_words, markdown, next_occurrences


def test_markdown__raw_html_and_scripts_become_text() -> None:
    html = str(markdown('<script>alert(1)</script> <img src=x onerror="alert(2)"> **bold**'))
    assert "<script" not in html and "<img" not in html
    assert "&lt;script&gt;" in html and "<strong>bold</strong>" in html


def test_markdown__javascript_links_are_not_links() -> None:
    html = str(markdown("[x](javascript:alert(1)) [ok](https://example.com)"))
    assert 'href="javascript' not in html
    assert '<a href="https://example.com" rel="noopener noreferrer nofollow">ok</a>' in html


def test_markdown__code_and_lists_survive() -> None:
    html = str(markdown("- a\n- b\n\n```\n<b>x</b>\n```"))
    assert "<li>a</li>" in html and "&lt;b&gt;x&lt;/b&gt;" in html


def test_markdown__fenced_code_with_a_known_language_is_highlighted_and_stays_inert() -> None:
    html = str(markdown("```python\ndef f(x):\n    return '<b>' + x  # hi\n```"))
    assert html.startswith('<pre class="hl"><code><span class="k">def</span>')
    assert '<span class="s1">\'&lt;b&gt;\'</span>' in html and '<span class="c1"># hi</span>' in html
    # no language, an unknown one, or an info string trying to add attributes: plain and escaped
    for fence in ("", "nosuchlang", 'python" onclick="alert(1)'):
        plain = str(markdown(f"```{fence}\n<i>x</i>\n```"))
        assert "<span" not in plain and "onclick" not in plain and "&lt;i&gt;" in plain, fence
    # the only classes a reply's tags carry are Pygments' token classes and pre.hl, never the page's own
    classes = set(re.findall(r'<[a-z0-9]+ [^>]*class="([^"]*)"', html + str(markdown("```js\nlet a = `x`\n```"))))
    assert classes and classes <= {c for c in STANDARD_TYPES.values() if c} | {"hl"}
    too_long = str(markdown("```python\n" + "x = 1\n" * 5000 + "```"))
    assert "<span" not in too_long


def test_cron_in_words__uses_24_hour_time() -> None:
    assert cron_in_words("0 9 * * 1-5") == "At 09:00, Monday through Friday"


def test_next_occurrences__in_the_zone_across_a_dst_gap() -> None:
    # Europe/Berlin springs forward on 2026-03-29 at 02:00: 02:30 does not exist that day
    start = datetime(2026, 3, 27, 12, 0, tzinfo=UTC)
    got = next_occurrences("30 2 * * *", "Europe/Berlin", 3, start)
    assert [t.isoformat() for t in got] == ["2026-03-28T02:30:00+01:00", "2026-03-29T03:00:00+02:00",
                                            "2026-03-30T02:30:00+02:00"]


async def test_live_hub__delivers_only_to_the_owner() -> None:
    hub = LiveHub("postgresql://unused")
    alice, bob = uuid.uuid4(), uuid.uuid4()
    a1, a2, b = hub.subscribe(alice), hub.subscribe(alice), hub.subscribe(bob)
    event = {"t": "chat_messages_v2", "u": str(alice), "c": str(uuid.uuid4()), "ids": ["x"], "n": 1}
    assert hub.dispatch(json.dumps(event)) == 2
    assert a1.get_nowait() == a2.get_nowait() == {k: event[k] for k in ("t", "c", "ids", "n")}
    assert b.empty()
    hub.unsubscribe(alice, a1)
    hub.unsubscribe(alice, a2)
    assert hub.dispatch(json.dumps(event)) == 0 and alice not in hub.subscribers
    assert hub.dispatch("not json") == 0 and hub.dispatch(json.dumps({"t": "x"})) == 0
    await asyncio.sleep(0)
