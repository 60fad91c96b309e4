// Signature checks of user access tokens (and of legacy service-role JWTs).
//
// The keys are what the platform gives a function: `SUPABASE_JWKS` (the
// project's signing keys; asymmetric public keys, and on the CLI's local
// runtime also the legacy secret as a symmetric `oct` key), else the key set
// published under `SUPABASE_URL`. A legacy project that still signs with its
// HS256 secret sets that secret under a name the CLI accepts
// (`CHAT_JWT_SECRET`, see chat/config.ts). Keys are imported once when the
// verifier is built, not per request.

import {
  base64url,
  createLocalJWKSet,
  createRemoteJWKSet,
  errors as joseErrors,
  type JSONWebKeySet,
  type JWTPayload,
  jwtVerify,
  type JWTVerifyGetKey,
} from "jose";

/** Claims of a verified user access token (what PostgREST puts in request.jwt.claims). */
export type JwtClaims = Record<string, unknown> & { sub: string; role: string };

export type TokenCheck =
  | { ok: true; claims: JwtClaims }
  | { ok: false; reason: "expired" | "invalid"; detail?: string };

export interface JwtConfig {
  /** SUPABASE_JWKS, parsed. When given it is the whole truth: jwksUrl is not consulted. */
  jwks?: JSONWebKeySet;
  /** Where to fetch the key set when SUPABASE_JWKS is not given. */
  jwksUrl?: string;
  /** CHAT_JWT_SECRET: a legacy project's HS256 secret. */
  legacySecret?: string;
  /** CHAT_JWT_ISSUER: required `iss` when set. */
  issuer?: string;
}

const ASYMMETRIC_ALGS = ["RS256", "ES256", "EdDSA", "PS256", "ES384", "RS384", "RS512"];
const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

interface HmacKey {
  kid?: string;
  key: Promise<CryptoKey>;
}

/** An HS256 key as a CryptoKey, imported once: jose would re-import raw bytes on every verify. */
function hmacKey(raw: Uint8Array): Promise<CryptoKey> {
  return crypto.subtle.importKey("raw", new Uint8Array(raw), { name: "HMAC", hash: "SHA-256" }, false, ["verify"]);
}

/** The symmetric keys: every `oct` key of the key set, then the legacy secret. */
function hmacKeys(config: JwtConfig): HmacKey[] {
  const keys: HmacKey[] = [];
  for (const jwk of config.jwks?.keys ?? []) {
    if (jwk.kty === "oct" && typeof jwk.k === "string") {
      keys.push({ kid: jwk.kid, key: hmacKey(base64url.decode(jwk.k)) });
    }
  }
  if (config.legacySecret) keys.push({ key: hmacKey(new TextEncoder().encode(config.legacySecret)) });
  return keys;
}

/** The asymmetric keys: the given key set without its `oct` keys, else the published one. */
function asymmetricKeys(config: JwtConfig): JWTVerifyGetKey | null {
  if (config.jwks) {
    const keys = config.jwks.keys.filter((k) => k.kty !== "oct");
    return keys.length > 0 ? createLocalJWKSet({ keys }) : null;
  }
  return config.jwksUrl ? createRemoteJWKSet(new URL(config.jwksUrl)) : null;
}

type Failure = { ok: false; reason: "expired" | "invalid"; detail: string };
type Verified = { ok: true; payload: JWTPayload } | Failure;

function failure(err: unknown): Failure {
  if (err instanceof joseErrors.JWTExpired) return { ok: false, reason: "expired", detail: "expired" };
  return { ok: false, reason: "invalid", detail: err instanceof Error ? err.name : "invalid" };
}

/** A verifier of signatures and standard claims over every key the config names. */
function createSignatureCheck(config: JwtConfig): (token: string, audience?: string) => Promise<Verified> {
  const hmac = hmacKeys(config);
  const asymmetric = asymmetricKeys(config);
  return async (token, audience) => {
    let alg: string | undefined;
    let kid: string | undefined;
    try {
      const header = JSON.parse(new TextDecoder().decode(base64url.decode(token.split(".")[0])));
      alg = typeof header.alg === "string" ? header.alg : undefined;
      kid = typeof header.kid === "string" ? header.kid : undefined;
    } catch {
      return { ok: false, reason: "invalid", detail: "malformed header" };
    }
    const options = { issuer: config.issuer, audience };
    if (alg === "HS256") {
      // a token naming a key id is checked with that key; one without, with each symmetric key
      const named = hmac.filter((k) => kid !== undefined && k.kid === kid);
      const candidates = named.length > 0 ? named : hmac;
      if (candidates.length === 0) return { ok: false, reason: "invalid", detail: "no HS256 key configured" };
      let last: Failure = { ok: false, reason: "invalid", detail: "invalid" };
      for (const candidate of candidates) {
        try {
          const { payload } = await jwtVerify(token, await candidate.key, { ...options, algorithms: ["HS256"] });
          return { ok: true, payload };
        } catch (err) {
          last = failure(err);
          // jose checks the signature before the claims: an expired token was signed with this key
          if (last.reason === "expired") return last;
        }
      }
      return last;
    }
    if (!asymmetric) return { ok: false, reason: "invalid", detail: "no asymmetric key configured" };
    try {
      const { payload } = await jwtVerify(token, asymmetric, { ...options, algorithms: ASYMMETRIC_ALGS });
      return { ok: true, payload };
    } catch (err) {
      return failure(err);
    }
  };
}

/**
 * Verified tokens, kept until they expire. A client sends the same access
 * token on every request for up to an hour; checking its signature each time
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
  const check = createSignatureCheck(config);
  return async (token: string): Promise<TokenCheck> => {
    const cached = cache.get(token, Date.now() / 1000);
    if (cached) return { ok: true, claims: cached };
    const result = await check(token, "authenticated");
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

/**
 * Build the check of a legacy service-role JWT that is not the configured
 * SUPABASE_SERVICE_ROLE_KEY itself (one re-issued with the same secret):
 * an HS256 signature by one of the symmetric keys and `role = service_role`.
 */
export function createServiceRoleTokenCheck(config: JwtConfig): (token: string) => Promise<boolean> {
  // symmetric keys only, and no issuer: the legacy keys carry `iss: supabase`, not the Auth URL
  const symmetric = (config.jwks?.keys ?? []).filter((k) => k.kty === "oct");
  const check = createSignatureCheck({ jwks: { keys: symmetric }, legacySecret: config.legacySecret });
  return async (token: string): Promise<boolean> => {
    const result = await check(token);
    return result.ok && result.payload.role === "service_role";
  };
}
