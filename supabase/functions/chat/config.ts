// Settings of the chat function, read once at start from the environment
// (`supabase secrets set` in production; the local stack sets them itself).

import { splitList } from "../_shared/auth.ts";

export interface Config {
  port: number;
  dbUrl: string;
  dbPoolMax: number;
  jwtSecret?: string;
  jwks?: string;
  jwksUrl?: string;
  jwtIssuer?: string;
  secretKeys: string[];
  serviceRoleKey?: string;
  serviceAllowlist: Set<string>;
  openaiBaseUrl: string;
  openaiApiKey: string;
  modelOverride?: string;
  modelTimeoutMs: number;
  rateLimit: number;
  rateWindowSeconds: number;
}

function positiveInt(env: (name: string) => string | undefined, name: string, fallback: number): number {
  const raw = env(name);
  if (raw === undefined || raw.trim() === "") return fallback;
  const value = Number(raw);
  if (!Number.isInteger(value) || value <= 0) throw new Error(`${name} must be a positive integer, got ${raw}`);
  return value;
}

export function loadConfig(env: (name: string) => string | undefined = (n) => Deno.env.get(n)): Config {
  const dbUrl = env("SUPABASE_DB_URL");
  if (!dbUrl) throw new Error("SUPABASE_DB_URL is required");
  const blank = (v: string | undefined) => (v && v.trim() !== "" ? v.trim() : undefined);
  return {
    port: positiveInt(env, "PORT", 8000),
    dbUrl,
    dbPoolMax: positiveInt(env, "CHAT_DB_POOL_MAX", 10),
    jwtSecret: blank(env("SUPABASE_JWT_SECRET")),
    jwks: blank(env("SUPABASE_JWKS")),
    jwksUrl: blank(env("SUPABASE_JWKS_URL")),
    jwtIssuer: blank(env("SUPABASE_JWT_ISSUER")),
    secretKeys: [...new Set([...splitList(env("SUPABASE_SECRET_KEY")), ...splitList(env("SUPABASE_SECRET_KEYS"))])],
    serviceRoleKey: blank(env("SUPABASE_SERVICE_ROLE_KEY")),
    serviceAllowlist: new Set(splitList(env("CHAT_SERVICE_ALLOWLIST") ?? "task-executor")),
    openaiBaseUrl: blank(env("OPENAI_BASE_URL")) ?? "https://api.openai.com/v1",
    openaiApiKey: env("OPENAI_API_KEY") ?? "",
    modelOverride: blank(env("OPENAI_MODEL")),
    modelTimeoutMs: positiveInt(env, "OPENAI_TIMEOUT_MS", 60_000),
    rateLimit: positiveInt(env, "CHAT_RATE_LIMIT", 60),
    rateWindowSeconds: positiveInt(env, "CHAT_RATE_WINDOW_SECONDS", 60),
  };
}
