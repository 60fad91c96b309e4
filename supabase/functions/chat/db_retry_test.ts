import assert from "node:assert/strict";
import { isConnectionError, retryThroughBlips } from "./db_retry.ts";

const noSleep = () => Promise.resolve();

Deno.test("isConnectionError: a lost connection or a server going away, not a refused statement", () => {
  assert.deepEqual(isConnectionError({ code: "CONNECTION_CLOSED" }), true);
  assert.deepEqual(isConnectionError({ code: "57P01" }), true);
  assert.deepEqual(isConnectionError({ code: "ECONNREFUSED" }), true);
  assert.deepEqual(isConnectionError({ code: "23505" }), false);
  assert.deepEqual(isConnectionError(new Error("boom")), false);
  assert.deepEqual(isConnectionError(null), false);
});

Deno.test("retryThroughBlips: a write cut by a restart is sent again until it goes through", async () => {
  let calls = 0;
  const value = await retryThroughBlips(() => {
    calls += 1;
    return calls < 3 ? Promise.reject({ code: "CONNECTION_DESTROYED" }) : Promise.resolve("stored");
  }, 1_000, noSleep);
  assert.deepEqual([value, calls], ["stored", 3]);
});

Deno.test("retryThroughBlips: any other error is thrown at once", async () => {
  let calls = 0;
  await assert.rejects(() =>
    retryThroughBlips(() => {
      calls += 1;
      return Promise.reject(Object.assign(new Error("refused"), { code: "42501" }));
    }, 1_000, noSleep)
  );
  assert.deepEqual(calls, 1);
});

Deno.test("retryThroughBlips: gives up when the budget is spent", async () => {
  let calls = 0;
  await assert.rejects(() =>
    retryThroughBlips(() => {
      calls += 1;
      return Promise.reject({ code: "CONNECTION_CLOSED" });
    }, 0, noSleep)
  );
  assert.deepEqual(calls, 1);
});
