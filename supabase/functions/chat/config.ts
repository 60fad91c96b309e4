// Settings of the chat function, read once at start from the environment.
//
// Two kinds of variables (docs/chat/api.md lists every one):
// - what the platform injects into every edge function (`SUPABASE_*`, set by
//   Supabase on a project, by `supabase functions serve`, and by the local
//   stack in the same names and formats);
// - what the project's owner sets with `supabase secrets set`, whose names
//   must not start with `SUPABASE_` (the CLI skips those): `OPENAI_*`,
//   `CHAT_*`.
// A value in the wrong shape stops the function at start with a message that
// names the variable.

import type { JSONWebKeySet } from "jose";
import { jwksUrlOf, parseJwks, parseKeyDictionary, PlatformEnvError } from "../_shared/keys.ts";
import { splitList } from "./auth.ts";

export interface Config {
  port: number;
  dbUrl: string;
  dbPoolMax: number;
  /** SUPABASE_JWKS: the project's key set. */
  jwks?: JSONWebKeySet;
  /** SUPABASE_URL's published key set, used when SUPABASE_JWKS is not given. */
  jwksUrl?: string;
  /** CHAT_JWT_SECRET: a legacy project's HS256 secret. */
  legacyJwtSecret?: string;
  /** CHAT_JWT_ISSUER: the `iss` user tokens must carry, when set. */
  jwtIssuer?: string;
  /** Every key of SUPABASE_SECRET_KEYS. */
  secretKeys: string[];
  /** Every key of SUPABASE_PUBLISHABLE_KEYS (client keys; never a service credential). */
  publishableKeys: string[];
  /** SUPABASE_SERVICE_ROLE_KEY: the legacy service-role JWT. */
  serviceRoleKey?: string;
  serviceAllowlist: Set<string>;
  openaiBaseUrl: string;
  openaiApiKey: string;
  modelOverride?: string;
  modelTimeoutMs: number;
  rateLimit: number;
  rateWindowSeconds: number;
  /** CHAT_MCP_*: timeouts, result cap and tool-list cache of MCP integrations (docs/integrations.md). */
  mcp: { timeoutMs: number; resultMaxChars: number; turnResultMaxChars: number; toolsTtlS: number };
}

function positiveInt(env: (name: string) => string | undefined, name: string, fallback: number): number {
  const raw = env(name);
  if (raw === undefined || raw.trim() === "") return fallback;
  const value = Number(raw);
  if (!Number.isInteger(value) || value <= 0) {
    throw new PlatformEnvError(`${name} must be a positive integer, got ${raw}`);
  }
  return value;
}

export function loadConfig(env: (name: string) => string | undefined = (n) => Deno.env.get(n)): Config {
  const dbUrl = env("SUPABASE_DB_URL");
  if (!dbUrl) throw new PlatformEnvError("SUPABASE_DB_URL is required");
  const blank = (v: string | undefined) => (v && v.trim() !== "" ? v.trim() : undefined);
  const jwks = parseJwks("SUPABASE_JWKS", env("SUPABASE_JWKS"));
  const supabaseUrl = blank(env("SUPABASE_URL"));
  const publishableKeys = parseKeyDictionary("SUPABASE_PUBLISHABLE_KEYS", env("SUPABASE_PUBLISHABLE_KEYS"));
  const secretKeys = parseKeyDictionary("SUPABASE_SECRET_KEYS", env("SUPABASE_SECRET_KEYS"));
  const clash = secretKeys.find((k) => publishableKeys.includes(k));
  if (clash !== undefined) {
    throw new PlatformEnvError("a key is in both SUPABASE_SECRET_KEYS and SUPABASE_PUBLISHABLE_KEYS");
  }
  return {
    port: positiveInt(env, "PORT", 8000),
    dbUrl,
    dbPoolMax: positiveInt(env, "CHAT_DB_POOL_MAX", 10),
    jwks,
    jwksUrl: !jwks && supabaseUrl ? jwksUrlOf(supabaseUrl) : undefined,
    legacyJwtSecret: blank(env("CHAT_JWT_SECRET")),
    jwtIssuer: blank(env("CHAT_JWT_ISSUER")),
    secretKeys,
    publishableKeys,
    serviceRoleKey: blank(env("SUPABASE_SERVICE_ROLE_KEY")),
    serviceAllowlist: new Set(splitList(env("CHAT_SERVICE_ALLOWLIST") ?? "task-executor")),
    openaiBaseUrl: blank(env("OPENAI_BASE_URL")) ?? "https://api.openai.com/v1",
    openaiApiKey: env("OPENAI_API_KEY") ?? "",
    modelOverride: blank(env("OPENAI_MODEL")),
    modelTimeoutMs: positiveInt(env, "OPENAI_TIMEOUT_MS", 60_000),
    rateLimit: positiveInt(env, "CHAT_RATE_LIMIT", 60),
    rateWindowSeconds: positiveInt(env, "CHAT_RATE_WINDOW_SECONDS", 60),
    mcp: {
      timeoutMs: positiveInt(env, "CHAT_MCP_TIMEOUT_MS", 15_000),
      resultMaxChars: positiveInt(env, "CHAT_MCP_RESULT_MAX_CHARS", 20_000),
      turnResultMaxChars: positiveInt(env, "CHAT_MCP_TURN_RESULT_MAX_CHARS", 60_000),
      toolsTtlS: positiveInt(env, "CHAT_MCP_TOOLS_TTL_S", 60),
    },
  };
}
