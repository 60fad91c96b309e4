// Signature checks behind auth.ts: user access tokens and service credentials.
//
// Keys are imported once when the verifier is built (not per request). HS256
// tokens are checked with the project's JWT secret (local stack and legacy
// projects); any other algorithm goes to the project's JWKS (asymmetric
// signing keys), fetched and cached by jose.

import {
  createLocalJWKSet,
  createRemoteJWKSet,
  errors as joseErrors,
  type JSONWebKeySet,
  type JWTPayload,
  jwtVerify,
  type JWTVerifyGetKey,
} from "jose";
import { type Credentials, type JwtClaims, looksLikeJwt, matchesAnySecret, type TokenCheck } from "./auth.ts";

export interface JwtConfig {
  /** SUPABASE_JWT_SECRET: the HS256 secret. */
  jwtSecret?: string;
  /** SUPABASE_JWKS: the key set as JSON text. */
  jwks?: string;
  /** SUPABASE_JWKS_URL: where to fetch the key set. */
  jwksUrl?: string;
  /** SUPABASE_JWT_ISSUER: required `iss` when set. */
  issuer?: string;
}

const ASYMMETRIC_ALGS = ["RS256", "ES256", "EdDSA", "PS256", "ES384", "RS384", "RS512"];
const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

/** The HS256 secret as a CryptoKey, imported once: jose would re-import raw bytes on every verify. */
function hmacKey(secret: string): Promise<CryptoKey> {
  return crypto.subtle.importKey("raw", new TextEncoder().encode(secret), { name: "HMAC", hash: "SHA-256" }, false, [
    "verify",
  ]);
}

function keyResolver(config: JwtConfig): { getKey: JWTVerifyGetKey | null; algorithms: string[] } {
  const secret = config.jwtSecret ? hmacKey(config.jwtSecret) : null;
  let jwks: JWTVerifyGetKey | null = null;
  if (config.jwks) {
    jwks = createLocalJWKSet(JSON.parse(config.jwks) as JSONWebKeySet);
  } else if (config.jwksUrl) {
    jwks = createRemoteJWKSet(new URL(config.jwksUrl));
  }
  const algorithms = [...(secret ? ["HS256"] : []), ...(jwks ? ASYMMETRIC_ALGS : [])];
  if (!secret && !jwks) return { getKey: null, algorithms };
  const getKey: JWTVerifyGetKey = (header, token) => {
    if (header.alg === "HS256") {
      if (!secret) throw new joseErrors.JOSENotSupported("HS256 tokens are not accepted");
      return secret;
    }
    if (!jwks) throw new joseErrors.JOSENotSupported("asymmetric tokens need SUPABASE_JWKS(_URL)");
    return jwks(header, token);
  };
  return { getKey, algorithms };
}

async function verify(
  token: string,
  getKey: JWTVerifyGetKey,
  algorithms: string[],
  issuer: string | undefined,
  audience: string | undefined,
): Promise<{ ok: true; payload: JWTPayload } | { ok: false; reason: "expired" | "invalid"; detail: string }> {
  try {
    const { payload } = await jwtVerify(token, getKey, { algorithms, issuer, audience });
    return { ok: true, payload };
  } catch (err) {
    if (err instanceof joseErrors.JWTExpired) return { ok: false, reason: "expired", detail: "expired" };
    return { ok: false, reason: "invalid", detail: err instanceof Error ? err.name : "invalid" };
  }
}

/**
 * Verified tokens, kept until they expire. A client sends the same access
 * token on every request for up to an hour; checking its HMAC each time
 * costs a crypto operation on Deno's worker threads per request. Only tokens
 * that passed every check are cached, keyed by the exact token string, and
 * an entry is used only before the token's `exp`.
 */
export class VerifiedTokenCache {
  private entries = new Map<string, { claims: JwtClaims; exp: number }>();
  constructor(private readonly maxEntries = 10_000) {}

  get(token: string, nowS: number): JwtClaims | null {
    const entry = this.entries.get(token);
    if (!entry) return null;
    if (entry.exp <= nowS) {
      this.entries.delete(token);
      return null;
    }
    return entry.claims;
  }

  set(token: string, claims: JwtClaims, exp: number): void {
    if (this.entries.size >= this.maxEntries) {
      // Map keeps insertion order: drop the oldest entry
      const oldest = this.entries.keys().next().value;
      if (oldest !== undefined) this.entries.delete(oldest);
    }
    this.entries.set(token, { claims, exp });
  }

  get size(): number {
    return this.entries.size;
  }
}

/**
 * Build the user-token check: signature, `exp`, `aud = authenticated`,
 * `role = authenticated`, a UUID `sub`, and `iss` when configured.
 */
export function createUserTokenVerifier(
  config: JwtConfig,
  cache: VerifiedTokenCache = new VerifiedTokenCache(),
): (token: string) => Promise<TokenCheck> {
  const { getKey, algorithms } = keyResolver(config);
  return async (token: string): Promise<TokenCheck> => {
    const cached = cache.get(token, Date.now() / 1000);
    if (cached) return { ok: true, claims: cached };
    if (!getKey) return { ok: false, reason: "invalid", detail: "no verification key configured" };
    const result = await verify(token, getKey, algorithms, config.issuer, "authenticated");
    if (!result.ok) return result;
    const { payload } = result;
    if (payload.role !== "authenticated") {
      return { ok: false, reason: "invalid", detail: `role ${String(payload.role)} is not a user` };
    }
    if (typeof payload.sub !== "string" || !UUID_RE.test(payload.sub)) {
      return { ok: false, reason: "invalid", detail: "sub is not a user id" };
    }
    if (typeof payload.exp !== "number") {
      // Supabase access tokens always expire; a token that never does is not one
      return { ok: false, reason: "invalid", detail: "exp is missing" };
    }
    const claims = payload as JwtClaims;
    cache.set(token, claims, payload.exp);
    return { ok: true, claims };
  };
}

export interface ServiceCredentialConfig {
  /** SUPABASE_SECRET_KEY and SUPABASE_SECRET_KEYS: the new sb_secret_… keys. */
  secretKeys: string[];
  /** SUPABASE_SERVICE_ROLE_KEY: the legacy service-role JWT. */
  serviceRoleKey?: string;
  /** SUPABASE_JWT_SECRET: lets a re-issued legacy service-role JWT verify. */
  jwtSecret?: string;
}

/**
 * Build the service-credential check. Accepted: a secret key in `apikey` (or
 * as the bearer, as supabase-js sends it), the exact legacy service-role key,
 * or an HS256 JWT signed with the project secret whose role is service_role.
 */
export function createServiceCredentialCheck(
  config: ServiceCredentialConfig,
): (creds: Credentials) => Promise<boolean> {
  const secret = config.jwtSecret ? hmacKey(config.jwtSecret) : null;
  const legacy = config.serviceRoleKey ? [config.serviceRoleKey] : [];
  return async (creds: Credentials): Promise<boolean> => {
    if (matchesAnySecret(creds.apikey, config.secretKeys)) return true;
    if (matchesAnySecret(creds.bearer, config.secretKeys)) return true;
    if (matchesAnySecret(creds.bearer, legacy) || matchesAnySecret(creds.apikey, legacy)) return true;
    if (secret && creds.bearer && looksLikeJwt(creds.bearer)) {
      try {
        const { payload } = await jwtVerify(creds.bearer, await secret, { algorithms: ["HS256"] });
        return payload.role === "service_role";
      } catch {
        return false;
      }
    }
    return false;
  };
}
