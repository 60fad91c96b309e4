// The operator's limits as the function answers them.
//
// The limits themselves live in the database (scheduler.limits, checked by
// chat_private.rate_limit_hit and chat_private.turn_check in tx1 of every
// turn; docs/security.md lists them). They refuse with SQLSTATEs of their own;
// this module turns those into the function's error shape. Everything else a
// query raises stays an internal error.

import { ChatError } from "../_shared/errors.ts";

function sqlState(err: unknown): string | null {
  if (err === null || typeof err !== "object") return null;
  const code = (err as { code?: unknown }).code;
  return typeof code === "string" ? code : null;
}

/** The refusal a database limit raised, or null for any other error. */
export function limitRefusal(err: unknown): ChatError | null {
  const message = err instanceof Error ? err.message : "";
  switch (sqlState(err)) {
    case "28000":
      // a well-signed token of a user who does not exist (or was deleted)
      return new ChatError(401, "invalid_token", "the token does not belong to a user of this project");
    case "PT429":
      // a daily budget: retrying today cannot help (the message says when it renews)
      return new ChatError(429, "budget_exhausted", message, { retryable: false });
    case "PT422":
      return new ChatError(422, "model_not_allowed", message, { field: "agent_id" });
    default:
      return null;
  }
}
