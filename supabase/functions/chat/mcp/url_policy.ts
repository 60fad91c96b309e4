// Which MCP server URLs the function connects to: the connect-time half of the
// rule whose write-time half is chat_private.integration_url_problem (migration
// 20261121001400_integrations.sql). The SQL is the stored rule: `urlProblem`
// states it again, step for step and with the same messages, on the text of
// the URL (tests/integration/test_url_rule_parity.py runs one table of URLs
// through both). Connecting then judges the host that fetch will really use
// (the WHATWG reading of the same text) and every address a name resolves
// to, so a name that points inside the network, or a host the URL parser
// reads differently from the SQL rule, is refused even though it looked
// harmless when it was written.

/** The operator's policy (chat_private.integration_policy). */
export interface UrlPolicy {
  allow_http: boolean;
  allow_loopback: boolean;
  allow_private: boolean;
}

export const STRICT_POLICY: UrlPolicy = { allow_http: false, allow_loopback: false, allow_private: false };

/** As the SQL rule: length(p_url), in characters (code points), at most this. */
export const MAX_URL_CHARS = 2000;

export class UrlRefused extends Error {}

/** A dotted-quad IPv4 address as Postgres' inet reads it (decimal parts, leading zeros allowed), or null. */
function v4(text: string, leadingZeros = true): number[] | null {
  const m = /^(\d+)\.(\d+)\.(\d+)\.(\d+)$/.exec(text);
  if (!m) return null;
  const digits = m.slice(1);
  if (!leadingZeros && digits.some((d) => d.length > 1 && d.startsWith("0"))) return null;
  const parts = digits.map(Number);
  return parts.every((p) => p <= 255) ? parts : null;
}

/** Expand an IPv6 address to its 8 groups, or null (an embedded IPv4 tail without leading zeros, as inet). */
function v6(text: string): number[] | null {
  let s = text.toLowerCase();
  const tail = /:([^:]*\.[^:]*)$/.exec(s);
  if (tail) {
    const b = v4(tail[1], false);
    if (!b) return null;
    s = s.slice(0, -tail[1].length) + `${((b[0] << 8) | b[1]).toString(16)}:${((b[2] << 8) | b[3]).toString(16)}`;
  }
  const halves = s.split("::");
  if (halves.length > 2) return null;
  const parse = (h: string) => (h === "" ? [] : h.split(":").map((g) => (/^[0-9a-f]{1,4}$/.test(g) ? parseInt(g, 16) : NaN)));
  const head = parse(halves[0]);
  const rest = halves.length === 2 ? parse(halves[1]) : [];
  const fill = halves.length === 2 ? 8 - head.length - rest.length : 0;
  const groups = [...head, ...new Array(Math.max(fill, 0)).fill(0), ...rest];
  return groups.length === 8 && groups.every((g) => Number.isInteger(g)) && (halves.length === 2 ? fill >= 1 : true)
    ? groups
    : null;
}

function inV4(a: number[], base: number[], bits: number): boolean {
  const n = (x: number[]) => ((x[0] << 24) | (x[1] << 16) | (x[2] << 8) | x[3]) >>> 0;
  const mask = bits === 0 ? 0 : (~0 << (32 - bits)) >>> 0;
  return ((n(a) & mask) >>> 0) === ((n(base) & mask) >>> 0);
}

/** Why connecting to this literal address is refused, or null (chat_private.integration_address_problem). */
export function addressProblem(address: string, policy: UrlPolicy): string | null {
  let a4 = v4(address);
  if (!a4) {
    const g = v6(address);
    if (!g) return "server_url has a malformed IP address";
    if (g.slice(0, 5).every((x) => x === 0) && g[5] === 0xffff) {
      a4 = [g[6] >> 8, g[6] & 255, g[7] >> 8, g[7] & 255]; // IPv4-mapped
    } else {
      if (g.slice(0, 7).every((x) => x === 0) && g[7] === 1) {
        return policy.allow_loopback ? null : "server_url must not point at a loopback address";
      }
      if ((g[0] & 0xffc0) === 0xfe80) return "server_url must not point at a link-local address";
      if (g.every((x) => x === 0) || (g[0] & 0xff00) === 0xff00) {
        return "server_url must not point at an unspecified, multicast or reserved address";
      }
      if ((g[0] & 0xfe00) === 0xfc00) {
        return policy.allow_private ? null : "server_url must not point at a private address";
      }
      return null;
    }
  }
  if (inV4(a4, [127, 0, 0, 0], 8)) return policy.allow_loopback ? null : "server_url must not point at a loopback address";
  if (inV4(a4, [169, 254, 0, 0], 16)) return "server_url must not point at a link-local address";
  if (inV4(a4, [0, 0, 0, 0], 8) || inV4(a4, [224, 0, 0, 0], 3)) {
    return "server_url must not point at an unspecified, multicast or reserved address";
  }
  const priv: [number[], number][] = [
    [[10, 0, 0, 0], 8],
    [[172, 16, 0, 0], 12],
    [[192, 168, 0, 0], 16],
    [[100, 64, 0, 0], 10],
    [[198, 18, 0, 0], 15],
  ];
  if (priv.some(([base, bits]) => inV4(a4!, base, bits))) {
    return policy.allow_private ? null : "server_url must not point at a private address";
  }
  return null;
}

function isLocalhostName(host: string): boolean {
  return host === "localhost" || host.endsWith(".localhost");
}

function loopbackName(policy: UrlPolicy): string | null {
  return policy.allow_loopback ? null : "server_url must not point at a loopback address";
}

/**
 * Why the written URL is refused under the operator's policy, or null: the
 * rule of chat_private.integration_url_problem on the URL's text (scheme,
 * user info, host form, literal address ranges; names are judged when
 * connecting).
 */
export function urlProblem(raw: string, policy: UrlPolicy): string | null {
  if ([...raw].length > MAX_URL_CHARS) {
    return `server_url must be an http(s) URL of at most ${MAX_URL_CHARS} characters`;
  }
  // `s`: Postgres' `.` matches a newline too
  const parts = /^([a-zA-Z][a-zA-Z0-9+.-]*):\/\/([^/?#]*)([/?#].*)?$/s.exec(raw);
  if (!parts) return "server_url is not an absolute URL";
  const scheme = parts[1].toLowerCase();
  if (scheme === "http") {
    if (!policy.allow_http) return "server_url must use https";
  } else if (scheme !== "https") {
    return "server_url must use https";
  }
  if (parts[2].includes("@")) return "server_url must not carry a user name or password";
  let host: string;
  const authority = parts[2].toLowerCase();
  if (authority.startsWith("[")) {
    const m = /^\[([0-9a-f:.]+)\](:[0-9]{1,5})?$/.exec(authority);
    if (!m) return "server_url has a malformed IPv6 host";
    host = m[1];
  } else {
    const m = /^([a-z0-9.-]+)(:[0-9]{1,5})?$/.exec(authority);
    if (!m) return "server_url has a malformed host";
    host = m[1].replace(/\.+$/, "");
  }
  if (isLocalhostName(host)) return loopbackName(policy);
  // a leading zero: Postgres reads 0177 as decimal, fetch's URL parser as octal
  if (/(^|\.)0[0-9]/.test(host) && /^[0-9.]+$/.test(host)) return "server_url has a malformed IP address";
  if (/^[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+$/.test(host) || host.includes(":")) {
    return addressProblem(host, policy);
  }
  // numeric forms that resolvers read as addresses (2130706433, 0x7f.1, 127.1)
  if (/^[0-9.]+$/.test(host) || /(^|\.)0x[0-9a-f]*(\.|$)/.test(host)) return "server_url has a malformed IP address";
  return null;
}

export type Resolver = (host: string) => Promise<string[]>;

/** A and AAAA records of a host (Deno's resolver). */
export const resolveHost: Resolver = async (host) => {
  const found: string[] = [];
  for (const kind of ["A", "AAAA"] as const) {
    try {
      found.push(...await Deno.resolveDns(host, kind));
    } catch {
      // no record of this kind
    }
  }
  return found;
};

/**
 * Check a URL right before connecting: the written rule (urlProblem), then
 * the host fetch will use and every address it resolves to. Throws UrlRefused
 * with a message that names the rule.
 */
export async function checkConnectTarget(raw: string, policy: UrlPolicy, resolve: Resolver = resolveHost): Promise<void> {
  const problem = urlProblem(raw, policy);
  if (problem) throw new UrlRefused(problem);
  let url: URL;
  try {
    url = new URL(raw);
  } catch {
    // the URL parser (and so fetch) refuses it as well (a port over 65535): it reaches nothing
    return;
  }
  // the host fetch connects to, as the URL parser reads the text (a second look: the
  // written rule already refuses the forms known to read differently, such as 0177.0.0.1)
  const host = url.hostname.replace(/^\[|\]$/g, "").replace(/\.+$/, "").toLowerCase();
  if (isLocalhostName(host)) {
    const refused = loopbackName(policy);
    if (refused) throw new UrlRefused(refused);
    return;
  }
  const literal = v4(host) !== null || host.includes(":");
  const addresses = literal ? [host] : await resolve(host);
  if (addresses.length === 0) throw new UrlRefused(`server_url's host ${host} does not resolve`);
  for (const address of addresses) {
    const refused = addressProblem(address, policy);
    if (refused) {
      throw new UrlRefused(literal ? `${refused} (the URL's host reads as ${host})` : `${refused} (${host} resolves to ${address})`);
    }
  }
}
