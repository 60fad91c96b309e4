// A scheduled turn's reply is stored through a database blip. The model has
// already answered (and been paid) when the reply is written: a restart of
// Postgres or a cut connection at that moment must not throw the answer away,
// or the worker's next attempt pays for the model again. Storing a scheduled
// reply is idempotent per execution_id (chat_private.save_reply returns the
// stored one), so the write is simply sent again, on a new connection, for a
// bounded time.

/** postgres.js's own codes for a connection that is gone or could not be made. */
const CONNECTION_CODES = new Set([
  "CONNECTION_CLOSED",
  "CONNECTION_ENDED",
  "CONNECTION_DESTROYED",
  "CONNECT_TIMEOUT",
  "ECONNREFUSED",
  "ECONNRESET",
  "EPIPE",
]);
/** SQLSTATEs of a server shutting down or starting up (57P01 admin_shutdown, 57P02, 57P03). */
const SERVER_GOING_AWAY = /^57P0[123]$/;

export const STORE_RETRY_BUDGET_MS = 15_000;
const FIRST_PAUSE_MS = 100;
const MAX_PAUSE_MS = 1_000;

/** Whether `err` says the database connection went away (not that the statement was refused). */
export function isConnectionError(err: unknown): boolean {
  if (typeof err !== "object" || err === null) return false;
  const e = err as { code?: unknown; errno?: unknown; name?: unknown };
  const code = typeof e.code === "string" ? e.code : typeof e.errno === "string" ? e.errno : "";
  if (CONNECTION_CODES.has(code) || SERVER_GOING_AWAY.test(code)) return true;
  return e.name === "ConnectionRefused" || e.name === "ConnectionReset" || e.name === "BrokenPipe";
}

/** Run `write` again (pauses doubling from 100 ms to 1 s) while it fails on a lost
 * connection, for at most `budgetMs`; any other error, or the last one, is thrown. */
export async function retryThroughBlips<T>(
  write: () => Promise<T>,
  budgetMs = STORE_RETRY_BUDGET_MS,
  sleep: (ms: number) => Promise<void> = (ms) => new Promise((r) => setTimeout(r, ms)),
): Promise<T> {
  const deadline = Date.now() + budgetMs;
  let pause = FIRST_PAUSE_MS;
  for (;;) {
    try {
      return await write();
    } catch (err) {
      if (!isConnectionError(err) || Date.now() + pause > deadline) throw err;
      await sleep(pause);
      pause = Math.min(pause * 2, MAX_PAUSE_MS);
    }
  }
}
