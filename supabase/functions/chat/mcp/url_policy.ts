// Which MCP server URLs the function connects to: the connect-time half of the
// rule whose write-time half is chat_private.integration_url_problem (migration
// 20261121001400_integrations.sql). Same ranges, applied here to every address
// the host resolves to, so a name that points inside the network is refused
// even though it looked harmless when it was written.

/** The operator's policy (chat_private.integration_policy). */
export interface UrlPolicy {
  allow_http: boolean;
  allow_loopback: boolean;
  allow_private: boolean;
}

export const STRICT_POLICY: UrlPolicy = { allow_http: false, allow_loopback: false, allow_private: false };

export class UrlRefused extends Error {}

function v4(text: string): number[] | null {
  const m = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/.exec(text);
  if (!m) return null;
  const parts = m.slice(1).map(Number);
  return parts.every((p) => p <= 255) ? parts : null;
}

/** Expand an IPv6 address to its 8 groups, or null. */
function v6(text: string): number[] | null {
  let s = text.toLowerCase();
  const tail = /:(\d+\.\d+\.\d+\.\d+)$/.exec(s);
  if (tail) {
    const b = v4(tail[1]);
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

/** Why connecting to this literal address is refused, or null. */
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

/** The host of a URL the function may connect to (scheme and form checked), or a refusal. */
export function urlHost(url: URL, policy: UrlPolicy): string {
  if (url.protocol === "http:") {
    if (!policy.allow_http) throw new UrlRefused("server_url must use https");
  } else if (url.protocol !== "https:") {
    throw new UrlRefused("server_url must use https");
  }
  if (url.username || url.password) throw new UrlRefused("server_url must not carry a user name or password");
  return url.hostname.replace(/^\[|\]$/g, "").replace(/\.$/, "").toLowerCase();
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
 * Check a URL right before connecting: its form, then every address its host
 * resolves to. Throws UrlRefused with a message that names the rule.
 */
export async function checkConnectTarget(raw: string, policy: UrlPolicy, resolve: Resolver = resolveHost): Promise<void> {
  let url: URL;
  try {
    url = new URL(raw);
  } catch {
    throw new UrlRefused("server_url is not an absolute URL");
  }
  const host = urlHost(url, policy);
  if (host === "localhost" || host.endsWith(".localhost")) {
    if (!policy.allow_loopback) throw new UrlRefused("server_url must not point at a loopback address");
    return;
  }
  const literal = v4(host) !== null || host.includes(":");
  const addresses = literal ? [host] : await resolve(host);
  if (addresses.length === 0) throw new UrlRefused(`server_url's host ${host} does not resolve`);
  for (const address of addresses) {
    const problem = addressProblem(address, policy);
    if (problem) throw new UrlRefused(literal ? problem : `${problem} (${host} resolves to ${address})`);
  }
}
