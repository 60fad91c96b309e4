"""One URL rule, two implementations: they must agree.

Which MCP server URLs may be connected is checked when a row is written, in
SQL (`chat_private.integration_url_problem`, migration
20261121001400_integrations.sql, the stored rule), and again right before
connecting, in the chat function (`supabase/functions/chat/mcp/url_policy.ts`,
which also checks every address a name resolves to). They cannot share code,
so this test runs one table of URLs through both, under the strict default
policy and the local stack's, and asserts the same verdict and the same
message for each. Host names resolve to a public address here, so every
verdict depends on the URL alone, as it does at write time.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import psycopg
import pytest

from worker import stack

pytestmark = pytest.mark.integration

VERDICTS_TS = Path(__file__).with_name("url_rule_verdicts.ts")
PUBLIC_ADDRESS = "93.184.216.34"

GOOD = [
    "https://mcp.example.com/mcp", "https://mcp.example.com:8443/mcp", "https://MCP.Example.COM/mcp",
    "HTTPS://mcp.example.com/mcp", "https://mcp.example.com./mcp", "https://mcp.example.com?x=1",
    "https://mcp.example.com#top", "https://mcp.example.com", "https://8.8.8.8/mcp", "https://172.32.0.1/",
    "https://[2606:4700::1111]/mcp", "https://[::ffff:8.8.8.8]/", "https://xn--bcher-kva.example/",
]
BAD_SCHEME = [
    "http://mcp.example.com/mcp", "ftp://mcp.example.com/", "javascript:alert(1)", "mcp.example.com/mcp",
    "//mcp.example.com/mcp", "https:/mcp.example.com/mcp", "https:mcp.example.com", "ws://mcp.example.com/",
    "file:///etc/passwd", "", " https://mcp.example.com/", "https://mcp.example.com/ ",
]
CREDENTIALS = [
    "https://user:pass@mcp.example.com/", "https://user@mcp.example.com/", "https://:@mcp.example.com/",
    "https://mcp.example.com@127.0.0.1/", "https://mcp.example.com\\@127.0.0.1/",
    "https://user%40x:p@mcp.example.com/",
]
LOOPBACK = [
    "https://127.0.0.1/", "https://127.1.2.3:8443/mcp", "https://localhost/", "https://LOCALHOST./mcp",
    "https://api.localhost/", "https://[::1]/", "https://[0:0:0:0:0:0:0:1]/", "https://[::ffff:127.0.0.1]/",
    "https://[::ffff:7f00:1]/", "http://127.0.0.1:54331/mcp", "http://localhost:54331/mcp",
]
PRIVATE = [
    "https://10.1.2.3/", "https://172.16.0.1/", "https://172.31.255.255/", "https://192.168.1.1/",
    "https://100.64.0.1/", "https://198.18.0.1/", "https://[fd00::1]/", "https://[fc00::1]/",
    "https://[::ffff:10.0.0.1]/",
]
LINK_LOCAL_AND_RESERVED = [
    "https://169.254.169.254/latest/meta-data", "https://[fe80::1]/", "https://[::ffff:169.254.169.254]/",
    "https://0.0.0.0/", "https://224.0.0.1/", "https://255.255.255.255/", "https://[::]/", "https://[ff02::1]/",
]
ODD_ENCODINGS = [
    "https://2130706433/", "https://0x7f.1/", "https://0x7f000001/", "https://127.1/",
    "https://127.0.0.01/", "https://%31%32%37.0.0.1/", "https://\uff11\uff12\uff17.\uff10.\uff10.\uff11/", "https://bücher.example/",
    "https://my_server.example.com/", "https://mcp.exa\tmple.com/", "https://mcp.example.com\n/",
    "https://[fe80::1%25eth0]/", "https://[::1", "https://[1:2:3:4:5:6:7:8:9]/", "https://256.1.1.1/",
    "https://1.2.3.4.5/", "https://mcp.example.com:99999/", "https://mcp.example.com:/",
    "https://mcp.example.com:8a/", "https://[::1.2.3.4]/", "https://[::ffff:1.2.3.4.5]/",
    "https://mcp..example.com/", "https://-mcp.example.com/", "https://[::ffff:127.0.0.01]/",
    "https://00000127.0.0.1/", "https://010.0.0.1/", "https://0300.0.0.1/", "https://[1.2.3.4]/",
    "https://[...]/", "https://mcp.example.1/",
]
TOO_LONG = [
    "https://mcp.example.com/" + "a" * (2000 - len("https://mcp.example.com/")),
    "https://mcp.example.com/" + "a" * (2001 - len("https://mcp.example.com/")),
    "https://mcp.example.com/" + "é" * 1976,
    "https://mcp.example.com/" + "\U0001F600" * 1000,  # 1,024 characters, 2,024 UTF-16 units
]
# A leading-zero part: Postgres' inet reads 0177.0.0.1 as decimal (177.0.0.1), the URL parser
# that fetch uses as octal (127.0.0.1); both sides refuse it, so what is stored is what is reached.
LEADING_ZERO = "https://0177.0.0.1/"
URLS = [LEADING_ZERO, *GOOD, *BAD_SCHEME, *CREDENTIALS, *LOOPBACK, *PRIVATE, *LINK_LOCAL_AND_RESERVED,
        *ODD_ENCODINGS, *TOO_LONG]

POLICIES = {
    "strict": {"allow_http": False, "allow_loopback": False, "allow_private": False},
    "local stack": {"allow_http": True, "allow_loopback": True, "allow_private": False},
    "private network": {"allow_http": True, "allow_loopback": False, "allow_private": True},
}


def sql_verdicts(conn: psycopg.Connection[Any], policy: dict[str, bool]) -> list[str | None]:
    conn.execute("update chat_private.integration_policy set allow_http = %(allow_http)s,"
                 " allow_loopback = %(allow_loopback)s, allow_private = %(allow_private)s", policy)
    return [conn.execute("select chat_private.integration_url_problem(%s) as problem", (url,)).fetchone()["problem"]
            for url in URLS]


def ts_verdicts(policy: dict[str, bool]) -> list[str | None]:
    out = subprocess.run([stack.deno_binary(), "run", "--no-config", "--no-lock", str(VERDICTS_TS)],
                         input=json.dumps({"policy": policy, "urls": URLS, "resolves_to": PUBLIC_ADDRESS}),
                         capture_output=True, text=True, timeout=120, check=True)
    return list(json.loads(out.stdout))


@pytest.mark.parametrize("policy", POLICIES.values(), ids=POLICIES.keys())
def test_url_rule__sql_and_the_chat_function_agree(conn: psycopg.Connection[Any], policy: dict[str, bool]) -> None:
    sql, ts = sql_verdicts(conn, policy), ts_verdicts(policy)
    differ = {url: (s, t) for url, s, t in zip(URLS, sql, ts, strict=True) if s != t}
    assert differ == {}, "\n".join(f"{url[:80]!r}: SQL {s!r}, TS {t!r}" for url, (s, t) in differ.items())
    assert sql[URLS.index(LEADING_ZERO)] == "server_url has a malformed IP address"
    # the table reaches both sides of the rule under every policy
    assert sql.count(None) >= len(GOOD) and len(sql) - sql.count(None) >= 40
