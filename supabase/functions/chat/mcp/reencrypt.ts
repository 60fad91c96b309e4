// Move every stored integration credential under the newest key of
// CHAT_INTEGRATIONS_KEYS (key rotation, docs/integrations.md):
//
//   SUPABASE_DB_URL=... CHAT_INTEGRATIONS_KEYS='{"old":"...","new":"..."}' \
//     deno run --allow-net --allow-env --config supabase/functions/deno.json \
//     supabase/functions/chat/mcp/reencrypt.ts
//
// It runs as service_role through chat_private functions, in batches; a row
// changed meanwhile (the user set a new credential) is left as it is. Prints
// one JSON line: {"reencrypted": N, "current_key_id": "..."}.

import postgres from "postgres";
import * as lit from "../../_shared/sql_literal.ts";
import { loadKeyRing } from "./crypto.ts";

const BATCH = 100;

export async function reencryptAll(dbUrl: string, keysJson: string | undefined): Promise<{ reencrypted: number; current_key_id: string }> {
  const ring = await loadKeyRing(keysJson);
  if (!ring) throw new Error("CHAT_INTEGRATIONS_KEYS is not set");
  const sql = postgres(dbUrl, { prepare: false, max: 1, onnotice: () => {} });
  let moved = 0;
  try {
    for (;;) {
      const rows = await sql.begin(async (tx) => {
        await tx.unsafe("select set_config('role', 'service_role', true)");
        return await tx.unsafe(lit.sqlText`select * from chat_private.credentials_to_reencrypt(
          ${lit.text(ring.currentKeyId)}, ${lit.int(BATCH)})`);
      }) as unknown as { integration_id: string; user_id: string; key_id: string; ciphertext: string }[];
      if (rows.length === 0) break;
      let movedThisBatch = 0;
      for (const row of rows) {
        const ctx = { integrationId: row.integration_id, userId: row.user_id };
        const sealed = await ring.seal(await ring.open({ keyId: row.key_id, ciphertext: row.ciphertext }, ctx), ctx);
        const done = await sql.begin(async (tx) => {
          await tx.unsafe("select set_config('role', 'service_role', true)");
          return await tx.unsafe(lit.sqlText`select chat_private.replace_credential(${lit.uuid(row.integration_id)},
            ${lit.text(row.key_id)}, ${lit.text(sealed.keyId)}, ${lit.text(sealed.ciphertext)}) as ok`);
        }) as unknown as { ok: boolean }[];
        if (done[0].ok) movedThisBatch++;
      }
      moved += movedThisBatch;
      if (rows.length < BATCH) break;
    }
  } finally {
    await sql.end({ timeout: 5 });
  }
  return { reencrypted: moved, current_key_id: ring.currentKeyId };
}

if (import.meta.main) {
  const dbUrl = Deno.env.get("SUPABASE_DB_URL");
  if (!dbUrl) {
    console.error("SUPABASE_DB_URL is required");
    Deno.exit(2);
  }
  console.log(JSON.stringify(await reencryptAll(dbUrl, Deno.env.get("CHAT_INTEGRATIONS_KEYS"))));
}
