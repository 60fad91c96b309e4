// The project's keys as the platform injects them into every edge function,
// and the constant-time comparison of secrets.
//
// Supabase gives a function `SUPABASE_SECRET_KEYS` and
// `SUPABASE_PUBLISHABLE_KEYS` as JSON objects of named keys
// (`{"default":"sb_secret_…"}`; a project may hold several during a
// rotation) and its key set as `SUPABASE_JWKS`. A value in any other shape
// (a bare key, a comma-separated list) is refused when the function starts:
// read as something else it would only show up later as every service call
// being refused.

import type { JSONWebKeySet } from "jose";

/** A platform variable holds something other than what Supabase injects there. */
export class PlatformEnvError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "PlatformEnvError";
  }
}

/**
 * The keys of a JSON object of named keys (`SUPABASE_SECRET_KEYS`,
 * `SUPABASE_PUBLISHABLE_KEYS`); unset or blank is no keys.
 */
export function parseKeyDictionary(name: string, raw: string | undefined): string[] {
  if (raw === undefined || raw.trim() === "") return [];
  const example = `${name} must be a JSON object of named keys, e.g. {"default":"sb_…"}`;
  let parsed: unknown;
  try {
    parsed = JSON.parse(raw);
  } catch {
    throw new PlatformEnvError(`${example}; it is not JSON`);
  }
  if (parsed === null || typeof parsed !== "object" || Array.isArray(parsed)) {
    throw new PlatformEnvError(`${example}; it is ${Array.isArray(parsed) ? "an array" : typeof parsed}`);
  }
  const keys: string[] = [];
  for (const [keyName, value] of Object.entries(parsed as Record<string, unknown>)) {
    if (typeof value !== "string" || value.trim() === "") {
      throw new PlatformEnvError(`${example}; the key "${keyName}" is not a non-empty string`);
    }
    keys.push(value.trim());
  }
  return [...new Set(keys)];
}

/** `SUPABASE_JWKS`: `{"keys": [...]}`; unset or blank is undefined. */
export function parseJwks(name: string, raw: string | undefined): JSONWebKeySet | undefined {
  if (raw === undefined || raw.trim() === "") return undefined;
  let parsed: unknown;
  try {
    parsed = JSON.parse(raw);
  } catch {
    throw new PlatformEnvError(`${name} must be a JSON Web Key Set ({"keys": [...]}); it is not JSON`);
  }
  const keys = (parsed as { keys?: unknown } | null)?.keys;
  if (!Array.isArray(keys) || keys.some((k) => k === null || typeof k !== "object" || typeof k.kty !== "string")) {
    throw new PlatformEnvError(`${name} must be a JSON Web Key Set ({"keys": [{"kty": …}, …]})`);
  }
  return parsed as JSONWebKeySet;
}

/** Where Supabase Auth publishes a project's key set. */
export function jwksUrlOf(supabaseUrl: string): string {
  return `${supabaseUrl.replace(/\/+$/, "")}/auth/v1/.well-known/jwks.json`;
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
