// POST /integrations: what a user does with an integration that needs the
// function's key (docs/integrations.md). Rows themselves (name, URL, auth kind,
// per-agent allow-lists) are written with supabase-js under RLS; the
// credential goes through here, because only the function can encrypt it.
//
//   {"action": "set_credential", "integration_id": ..., "credential": "..." | null}
//   {"action": "test", "integration_id": ...}   -> connect, list the tools
//
// Users only (their own access token); an integration that is not the
// caller's answers exactly like one that does not exist.

import { ChatError, invalidBody } from "../../_shared/errors.ts";
import type { KeyRing } from "./crypto.ts";
import { MAX_CREDENTIAL_CHARS } from "./crypto.ts";
import { storeCredential } from "./store.ts";
import { type McpDeps, testIntegration } from "./toolbox.ts";

const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

export const INTEGRATION_PATHS = new Set(["/integrations", "/chat/integrations", "/functions/v1/chat/integrations"]);

function notFound(): ChatError {
  return new ChatError(404, "integration_not_found", "no such integration");
}

function requireKeyRing(ring: KeyRing | null): KeyRing {
  if (!ring) {
    throw new ChatError(503, "integrations_not_configured", "the function has no CHAT_INTEGRATIONS_KEYS: credentials cannot be stored");
  }
  return ring;
}

export async function handleIntegrations(
  deps: McpDeps,
  user: { userId: string; claims: Record<string, unknown> },
  body: unknown,
): Promise<unknown> {
  if (body === null || typeof body !== "object" || Array.isArray(body)) throw invalidBody("body", "body must be a JSON object");
  const b = body as Record<string, unknown>;
  if (typeof b.integration_id !== "string" || !UUID_RE.test(b.integration_id)) {
    throw invalidBody("integration_id", "integration_id must be a UUID");
  }
  const integrationId = b.integration_id;
  const claims = JSON.stringify(user.claims);
  if (b.action === "set_credential") {
    const credential = b.credential;
    if (credential !== null && (typeof credential !== "string" || credential.length === 0 || credential.length > MAX_CREDENTIAL_CHARS)) {
      throw invalidBody("credential", `credential must be a string of 1 to ${MAX_CREDENTIAL_CHARS} characters, or null`);
    }
    if (typeof credential === "string" && /[\r\n\0]/.test(credential)) {
      throw invalidBody("credential", "credential must not contain line breaks or NUL");
    }
    const sealed = credential === null
      ? null
      : await requireKeyRing(deps.keyRing).seal(credential, { integrationId, userId: user.userId });
    if (!(await storeCredential(deps.sql, claims, integrationId, sealed))) throw notFound();
    return { ok: true, has_credential: credential !== null };
  }
  if (b.action === "test") {
    const outcome = await testIntegration(deps, { claims, userId: user.userId }, integrationId);
    if (!outcome) throw notFound();
    return outcome;
  }
  throw invalidBody("action", "action must be set_credential or test");
}
