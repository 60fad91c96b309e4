// The act-as check: every HTTP-level decision about who is calling, in one place.
//
// 1. The credential: a signed-in user's access token, or the service
//    credential (a secret key from SUPABASE_SECRET_KEYS, or the legacy
//    service-role key).
// 2. The X-Service allow-list for service calls.
// 3. For service calls, a context whose ids belong together (the database
//    answers the question as service_role; `checkActAsContext` turns the
//    answer into the refusal).
//
// Verifying signatures and comparing secrets is injected (see
// _shared/jwt.ts and _shared/keys.ts), so every branch of the decision is
// unit-tested without keys. The order of the checks is part of the act-as
// contract:
//
// - X-Service plus a valid *user* token is refused outright: a request must
//   never be ambiguous about whose identity it carries.
// - X-Service without a valid service credential is 401 before the
//   allow-list is consulted, so unauthenticated callers learn nothing about
//   which services exist.
// - A service credential without X-Service is refused: the worker must say
//   which service it is, and a leaked key used by hand is visible as such.

import { ChatError } from "../_shared/errors.ts";
import type { JwtClaims, TokenCheck } from "../_shared/jwt.ts";
import { matchesAnySecret } from "../_shared/keys.ts";
import type { ActAsContext } from "./request.ts";

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

export interface ServiceCredentialConfig {
  /** Every key of SUPABASE_SECRET_KEYS (the new sb_secret_… keys). */
  secretKeys: readonly string[];
  /** SUPABASE_SERVICE_ROLE_KEY: the legacy service-role JWT. */
  serviceRoleKey?: string;
  /** A legacy service-role JWT re-issued with the project's HS256 secret (see jwt.ts). */
  isServiceRoleToken?: (token: string) => Promise<boolean>;
}

/**
 * Build the service-credential check. Accepted: a secret key in `apikey` (or
 * as the bearer, as supabase-js sends it), the exact legacy service-role key,
 * or a JWT that `isServiceRoleToken` accepts.
 */
export function createServiceCredentialCheck(
  config: ServiceCredentialConfig,
): (creds: Credentials) => Promise<boolean> {
  const legacy = config.serviceRoleKey ? [config.serviceRoleKey] : [];
  return async (creds: Credentials): Promise<boolean> => {
    if (matchesAnySecret(creds.apikey, config.secretKeys)) return true;
    if (matchesAnySecret(creds.bearer, config.secretKeys)) return true;
    if (matchesAnySecret(creds.bearer, legacy) || matchesAnySecret(creds.apikey, legacy)) return true;
    if (config.isServiceRoleToken && creds.bearer && looksLikeJwt(creds.bearer)) {
      return await config.isServiceRoleToken(creds.bearer);
    }
    return false;
  };
}

/** What the database found about an act-as context (see db.ts startActAsTurn). */
export interface ActAsFindings<Agent> {
  /** chat_private.check_act_as: ok | agent_not_found | conversation_not_found | a mismatch. */
  verdict: string;
  agent: Agent | null;
  conversationFound: boolean;
  userMessage: { conversation_id: string; role: string; execution_id: string | null } | null;
  /** The execution's status as the user sees it (null: not the user's). */
  executionStatus: string | null;
  /** A reply for this execution is already stored (a replay needs no running execution). */
  replied: boolean;
}

/**
 * The context's ids must belong together: the agent and conversation are
 * the user's (and the conversation the agent's), the message is the user
 * message of that conversation written for that execution, and the
 * execution is the user's. Throws the refusal; returns the agent when they do.
 */
export function checkActAsContext<Agent>(ctx: ActAsContext, found: ActAsFindings<Agent>): Agent {
  switch (found.verdict) {
    case "ok":
      break;
    case "agent_not_found":
      throw new ChatError(404, "agent_not_found", "no such agent");
    case "conversation_not_found":
      throw new ChatError(404, "conversation_not_found", "no such conversation");
    default:
      throw new ChatError(403, "context_mismatch", "user, agent and conversation do not belong together");
  }
  if (found.agent === null) throw new ChatError(404, "agent_not_found", "no such agent");
  if (!found.conversationFound) throw new ChatError(404, "conversation_not_found", "no such conversation");
  const um = found.userMessage;
  if (!um) throw new ChatError(404, "message_not_found", "the scheduled user message does not exist");
  if (um.conversation_id !== ctx.conversationId || um.role !== "user" || um.execution_id !== ctx.executionId) {
    throw new ChatError(403, "context_mismatch", "the user message does not belong to this execution");
  }
  if (!found.replied && found.executionStatus === null) {
    throw new ChatError(403, "context_mismatch", "the execution does not belong to this user");
  }
  return found.agent;
}

/** Split a comma-separated allow-list, dropping blanks. */
export function splitList(value: string | undefined | null): string[] {
  return (value ?? "").split(",").map((s) => s.trim()).filter((s) => s.length > 0);
}
