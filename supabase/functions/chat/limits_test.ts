import { deepStrictEqual as assertEquals } from "node:assert/strict";
import { limitRefusal } from "./limits.ts";

function pgError(code: string, message: string): Error {
  return Object.assign(new Error(message), { code });
}

Deno.test("limitRefusal: an unknown user is 401 invalid_token, never 500", () => {
  const err = limitRefusal(pgError("28000", "unknown user"));
  assertEquals([err?.status, err?.code, err?.retryable], [401, "invalid_token", false]);
});

Deno.test("limitRefusal: a used-up budget is 429 budget_exhausted, not retryable, with its sentence", () => {
  const err = limitRefusal(pgError("PT429", "daily token budget used up: 10 of 10 tokens today"));
  assertEquals([err?.status, err?.code, err?.retryable], [429, "budget_exhausted", false]);
  assertEquals(err?.message, "daily token budget used up: 10 of 10 tokens today");
});

Deno.test("limitRefusal: a model off the allow-list is 422 model_not_allowed", () => {
  const err = limitRefusal(pgError("PT422", "model o1-pro is not allowed"));
  assertEquals([err?.status, err?.code], [422, "model_not_allowed"]);
});

Deno.test("limitRefusal: any other database error is not a limit", () => {
  assertEquals(limitRefusal(pgError("23503", "violates foreign key")), null);
  assertEquals(limitRefusal(new Error("boom")), null);
  assertEquals(limitRefusal("text"), null);
});
