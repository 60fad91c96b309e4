// Who is calling: a signed-in user, or an allow-listed service acting as a user.
//
// This module only decides; verifying signatures and comparing secrets is
// injected (see jwt.ts), so every branch of the decision is unit-tested
// without keys. The order of the checks is part of the act-as contract:
//
// - X-Service plus a valid *user* token is refused outright: a request must
//   never be ambiguous about whose identity it carries.
// - X-Service without a valid service credential is 401 before the
//   allow-list is consulted, so unauthenticated callers learn nothing about
//   which services exist.
// - A service credential without X-Service is refused: the worker must say
//   which service it is, and a leaked key used by hand is visible as such.

import { ChatError } from "./errors.ts";

/** Claims of a verified user access token (what PostgREST puts in request.jwt.claims). */
export type JwtClaims = Record<string, unknown> & { sub: string; role: string };

export type TokenCheck =
  | { ok: true; claims: JwtClaims }
  | { ok: false; reason: "expired" | "invalid"; detail?: string };

/** The credential-bearing parts of a request. */
export interface Credentials {
  /** The token after `Authorization: Bearer`, or null. */
  bearer: string | null;
  /** The `apikey` header, or null. */
  apikey: string | null;
  /** The `X-Service` header, or null when absent. */
  service: string | null;
}

export interface AuthDeps {
  verifyUserToken(token: string): Promise<TokenCheck>;
  isServiceCredential(creds: Credentials): Promise<boolean>;
  serviceAllowlist: ReadonlySet<string>;
}

export type Caller =
  | { kind: "user"; userId: string; claims: JwtClaims }
  | { kind: "service"; service: string };

/** The bearer token of an Authorization header, or null. */
export function bearerToken(authorization: string | null): string | null {
  if (!authorization) return null;
  const match = /^Bearer\s+(\S+)\s*$/i.exec(authorization);
  return match ? match[1] : null;
}

/** Read the credential headers of a request. */
export function credentialsOf(headers: Headers): Credentials {
  return {
    bearer: bearerToken(headers.get("authorization")),
    apikey: headers.get("apikey"),
    service: headers.get("x-service"),
  };
}

/** A JWT has three base64url segments; secret keys (sb_secret_…) do not. */
export function looksLikeJwt(token: string): boolean {
  return /^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$/.test(token);
}

/** Decide who is calling, or throw the refusal. */
export async function authenticate(creds: Credentials, deps: AuthDeps): Promise<Caller> {
  const userCheck = creds.bearer && looksLikeJwt(creds.bearer)
    ? await deps.verifyUserToken(creds.bearer)
    : null;

  if (creds.service !== null) {
    if (userCheck?.ok) {
      throw new ChatError(
        403,
        "service_header_with_user_token",
        "X-Service cannot be combined with a user access token",
      );
    }
    if (!(await deps.isServiceCredential(creds))) {
      throw new ChatError(
        401,
        "invalid_service_credential",
        "X-Service requires the service credential (secret key in apikey, or the service-role key)",
      );
    }
    if (!deps.serviceAllowlist.has(creds.service)) {
      throw new ChatError(403, "service_not_allowed", "this service may not act as users");
    }
    return { kind: "service", service: creds.service };
  }

  if (userCheck?.ok) {
    return { kind: "user", userId: userCheck.claims.sub, claims: userCheck.claims };
  }
  if (await deps.isServiceCredential(creds)) {
    throw new ChatError(
      403,
      "service_header_required",
      "service credentials must name the calling service in X-Service",
    );
  }
  if (!creds.bearer) {
    throw new ChatError(401, "missing_token", "Authorization: Bearer <access token> is required");
  }
  if (userCheck && !userCheck.ok && userCheck.reason === "expired") {
    throw new ChatError(401, "token_expired", "the access token has expired; refresh the session");
  }
  throw new ChatError(401, "invalid_token", "the access token is not a valid user token");
}

const encoder = new TextEncoder();

/**
 * Compare two secrets in time that depends only on the length of `expected`
 * (the configured secret), never on where the first difference is.
 */
export function timingSafeEqual(given: string, expected: string): boolean {
  const a = encoder.encode(given);
  const b = encoder.encode(expected);
  let diff = a.length ^ b.length;
  for (let i = 0; i < b.length; i++) {
    diff |= (a[i % Math.max(a.length, 1)] ?? 0) ^ b[i];
  }
  return diff === 0 && b.length > 0;
}

/** Does `given` equal any of the configured secrets (checked against all of them)? */
export function matchesAnySecret(given: string | null, secrets: readonly string[]): boolean {
  if (!given) return false;
  let found = false;
  for (const secret of secrets) {
    // no early exit: the time taken does not reveal which key matched
    if (timingSafeEqual(given, secret)) found = true;
  }
  return found;
}

/** Split a comma-separated allow-list or key list, dropping blanks. */
export function splitList(value: string | undefined | null): string[] {
  return (value ?? "").split(",").map((s) => s.trim()).filter((s) => s.length > 0);
}
