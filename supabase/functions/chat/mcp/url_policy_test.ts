import assert from "node:assert/strict";
import { addressProblem, checkConnectTarget, STRICT_POLICY, UrlRefused, urlProblem } from "./url_policy.ts";

const LOCAL = { allow_http: true, allow_loopback: true, allow_private: false };

Deno.test("url_policy: loopback, link-local, private and reserved addresses are refused by default", () => {
  for (const a of ["127.0.0.1", "127.9.9.9", "::1", "::ffff:127.0.0.1", "::ffff:7f00:1"]) {
    assert.match(addressProblem(a, STRICT_POLICY) ?? "", /loopback/, a);
  }
  for (const a of ["169.254.169.254", "fe80::1", "::ffff:169.254.169.254"]) {
    assert.match(addressProblem(a, STRICT_POLICY) ?? "", /link-local/, a);
  }
  for (const a of ["10.1.2.3", "172.16.0.1", "172.31.255.255", "192.168.1.1", "100.64.0.1", "fd00::1"]) {
    assert.match(addressProblem(a, STRICT_POLICY) ?? "", /private/, a);
  }
  for (const a of ["0.0.0.0", "224.0.0.1", "255.255.255.255", "::", "ff02::1"]) {
    assert.match(addressProblem(a, STRICT_POLICY) ?? "", /reserved/, a);
  }
  for (const a of ["8.8.8.8", "172.32.0.1", "2606:4700::1111", "::ffff:8.8.8.8"]) {
    assert.equal(addressProblem(a, STRICT_POLICY), null, a);
  }
});

Deno.test("url_policy: the operator's policy opens loopback and private ranges, never link-local", () => {
  assert.equal(addressProblem("127.0.0.1", LOCAL), null);
  assert.match(addressProblem("10.0.0.1", LOCAL) ?? "", /private/);
  assert.equal(addressProblem("10.0.0.1", { ...LOCAL, allow_private: true }), null);
  assert.match(addressProblem("169.254.169.254", { ...LOCAL, allow_private: true }) ?? "", /link-local/);
});

Deno.test("url_policy: a name is judged by what it resolves to, at connect time", async () => {
  const resolver = (map: Record<string, string[]>) => (host: string) => Promise.resolve(map[host] ?? []);
  const dns = resolver({ "mcp.example.com": ["93.184.216.34"], "sneaky.example.com": ["93.184.216.34", "10.0.0.5"] });
  await checkConnectTarget("https://mcp.example.com/mcp", STRICT_POLICY, dns);
  await assert.rejects(
    () => checkConnectTarget("https://sneaky.example.com/mcp", STRICT_POLICY, dns),
    (e: Error) => e instanceof UrlRefused && /private address \(sneaky.example.com resolves to 10.0.0.5\)/.test(e.message),
  );
  await assert.rejects(() => checkConnectTarget("https://nowhere.example.com/", STRICT_POLICY, dns), /does not resolve/);
  await assert.rejects(() => checkConnectTarget("http://mcp.example.com/mcp", STRICT_POLICY, dns), /https/);
  await assert.rejects(() => checkConnectTarget("ftp://mcp.example.com/", STRICT_POLICY, dns), /https/);
  await assert.rejects(() => checkConnectTarget("https://u:p@mcp.example.com/", STRICT_POLICY, dns), /user name/);
  await assert.rejects(() => checkConnectTarget("http://127.0.0.1:9/mcp", STRICT_POLICY, dns), /https/);
  await assert.rejects(() => checkConnectTarget("https://[::1]:9/mcp", STRICT_POLICY, dns), /loopback/);
  await assert.rejects(() => checkConnectTarget("https://localhost/mcp", STRICT_POLICY, dns), /loopback/);
  await checkConnectTarget("http://127.0.0.1:9/mcp", LOCAL, dns);
  await checkConnectTarget("http://localhost:9/mcp", LOCAL, dns);
});

Deno.test("url_policy: connecting judges the host as fetch reads it, not only as written", async () => {
  const dns = () => Promise.resolve(["93.184.216.34"]);
  // Postgres' inet reads 0177 as decimal 177, fetch's URL parser as octal 127: a leading
  // zero is refused outright, written or connecting
  assert.equal(urlProblem("https://0177.0.0.1/mcp", STRICT_POLICY), "server_url has a malformed IP address");
  await assert.rejects(
    () => checkConnectTarget("https://0177.0.0.1/mcp", STRICT_POLICY, dns),
    /malformed IP address/,
  );
  // text the URL parser refuses reaches nothing: the written rule decides
  assert.equal(urlProblem("https://mcp.example.com:99999/", STRICT_POLICY), null);
  await checkConnectTarget("https://mcp.example.com:99999/", STRICT_POLICY, dns);
  assert.match(urlProblem("https://mcp.example.com:99999/" + "a".repeat(2000), STRICT_POLICY) ?? "", /2000 characters/);
});
