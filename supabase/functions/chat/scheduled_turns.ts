// At most one model call per scheduled run, across attempts and function
// instances. A rescued run's new attempt can reach the function while the
// first attempt's turn is still calling the model (its caller died, the turn
// goes on and stores its reply). The turn in flight is recorded per
// execution in chat_private.scheduled_turns and renewed while it runs; a
// second attempt that finds it waits for the reply it stores instead of
// calling the model again, and takes the turn over only once it is stale
// (its instance died: killed, crashed).

import * as lit from "../_shared/sql_literal.ts";
import type { MessageRow, Sql } from "./db.ts";

/** A turn not renewed for this long is taken over (its instance died). */
export const TURN_STALE_S = 5;
/** How often a turn in flight says it is alive (well under TURN_STALE_S). */
export const TURN_RENEW_MS = 1_500;
const POLL_MS = 150;

async function asService(sql: Sql, call: string): Promise<Record<string, unknown>> {
  const results = await sql.unsafe(
    `select set_config('role', 'service_role', true); ${call}`,
  ) as unknown as Record<string, unknown>[][];
  return results[1][0];
}

/** The storage a waiting attempt needs (the database, or a fake in unit tests). */
export interface TurnStore {
  take(executionId: string): Promise<boolean>;
  renew(executionId: string): Promise<void>;
  release(executionId: string): Promise<void>;
  state(executionId: string): Promise<{ reply: MessageRow | null; inFlight: boolean }>;
}

export function databaseTurnStore(sql: Sql): TurnStore {
  return {
    async take(executionId) {
      const row = await asService(
        sql,
        lit.sqlText`select chat_private.take_scheduled_turn(${lit.uuid(executionId)}, ${
          lit.fragment(String(TURN_STALE_S))
        }) as taken;`,
      );
      return row.taken === true;
    },
    async renew(executionId) {
      await asService(sql, lit.sqlText`select chat_private.renew_scheduled_turn(${lit.uuid(executionId)});`);
    },
    async release(executionId) {
      await asService(sql, lit.sqlText`select chat_private.release_scheduled_turn(${lit.uuid(executionId)});`);
    },
    async state(executionId) {
      const row = await asService(
        sql,
        lit.sqlText`select * from chat_private.scheduled_turn_state(${lit.uuid(executionId)}, ${
          lit.fragment(String(TURN_STALE_S))
        });`,
      );
      return { reply: (row.reply as MessageRow | null) ?? null, inFlight: row.in_flight === true };
    },
  };
}

/**
 * Take the scheduled turn of `executionId`, or wait for the reply of the one in flight.
 * Returns the stored reply (another attempt's turn answered: use it, call no model),
 * or null when the turn is now the caller's (call the model, store the reply).
 */
export async function takeTurnOrAwaitReply(
  store: TurnStore,
  executionId: string,
  signal?: AbortSignal,
  sleep: (ms: number) => Promise<void> = (ms) => new Promise((r) => setTimeout(r, ms)),
): Promise<MessageRow | null> {
  for (;;) {
    if (await store.take(executionId)) return null;
    // another instance runs this execution's turn: wait for its reply or its death
    for (;;) {
      if (signal?.aborted) throw signal.reason ?? new Error("aborted");
      await sleep(POLL_MS);
      const { reply, inFlight } = await store.state(executionId);
      if (reply) return reply;
      if (!inFlight) break; // stale: try to take it over
    }
  }
}

/** Renew the turn while `work` runs, so a concurrent attempt keeps waiting for it; a turn
 * that fails (no reply stored) is released, so the next attempt need not wait for it. */
export async function whileRenewed<T>(store: TurnStore, executionId: string, work: () => Promise<T>): Promise<T> {
  const timer = setInterval(() => {
    store.renew(executionId).catch(() => {}); // a missed renewal only risks a takeover after TURN_STALE_S
  }, TURN_RENEW_MS);
  try {
    return await work();
  } catch (err) {
    await store.release(executionId).catch(() => {}); // else the next attempt waits TURN_STALE_S
    throw err;
  } finally {
    clearInterval(timer);
  }
}
