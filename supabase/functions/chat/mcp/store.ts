// The integrations' SQL: every call runs as service_role with the caller's
// claims, through chat_private functions keyed on auth.uid(), so a turn only
// ever loads its own user's integrations (migration 20261121001400_integrations.sql).

import type { Sql } from "../db.ts";
import * as lit from "../../_shared/sql_literal.ts";
import type { UrlPolicy } from "./url_policy.ts";

/** One integration as a turn loads it (the credential still encrypted). */
export interface IntegrationRow {
  id: string;
  name: string;
  description: string | null;
  server_url: string;
  auth_kind: "none" | "bearer" | "header";
  header_name: string | null;
  updated_at: string;
  /** The tools this agent may call (null: all). */
  enabled_tools: string[] | null;
  key_id: string | null;
  ciphertext: string | null;
}

export interface Loaded {
  policy: UrlPolicy;
  integrations: IntegrationRow[];
}

async function asOwner(sql: Sql, claims: string, statement: string): Promise<unknown[]> {
  const results = await sql.unsafe(lit.sqlText`
      select set_config('role', 'service_role', true), set_config('request.jwt.claims', ${lit.text(claims)}, true);
      ${lit.fragment(statement)}`) as unknown as Record<string, unknown>[][];
  return results[1];
}

/**
 * The statement that loads the caller's integrations enabled for an agent, or
 * the one integration asked for (column `loaded`, a Loaded; null when `when`,
 * a SQL condition, is false). It runs as service_role with the caller's
 * claims; a turn appends it to its first transaction (db.ts), so loading
 * costs no round trip of its own.
 */
export function integrationsStatement(
  target: { agentId: string } | { integrationId: string },
  when: lit.Literal = lit.fragment("true"),
): lit.Literal {
  const agentId = "agentId" in target ? target.agentId : null;
  const integrationId = "integrationId" in target ? target.integrationId : null;
  return lit.fragment(lit.sqlText`select case when ${when}
      then chat_private.integrations_for(${lit.uuid(agentId)}, ${lit.uuid(integrationId)}) end as loaded;`);
}

/** One integration, as `integrations test` loads it. */
export async function loadIntegrations(
  sql: Sql,
  claims: string,
  target: { integrationId: string },
): Promise<Loaded> {
  const rows = await asOwner(sql, claims, integrationsStatement(target).toSql()) as { loaded: Loaded }[];
  return rows[0].loaded;
}

/** Store (or with null, remove) an encrypted credential; false when the integration is not the caller's. */
export async function storeCredential(
  sql: Sql,
  claims: string,
  integrationId: string,
  sealed: { keyId: string; ciphertext: string } | null,
): Promise<boolean> {
  const rows = await asOwner(
    sql,
    claims,
    lit.sqlText`select chat_private.set_integration_credential(${lit.uuid(integrationId)},
      ${lit.textOrNull(sealed?.keyId ?? null)}, ${lit.textOrNull(sealed?.ciphertext ?? null)}) as ok;`,
  ) as { ok: boolean }[];
  return rows[0].ok;
}

/** What the last connection found, shown to the user as status and last_error. */
export async function recordStatus(
  sql: Sql,
  claims: string,
  integrationId: string,
  error: string | null,
): Promise<void> {
  await asOwner(
    sql,
    claims,
    lit.sqlText`select chat_private.record_integration_status(${lit.uuid(integrationId)},
      ${lit.text(error === null ? "ok" : "error")}, ${lit.textOrNull(error)});`,
  );
}
