import assert from "node:assert/strict";
import type { MessageRow } from "./db.ts";
import { takeTurnOrAwaitReply, type TurnStore, whileRenewed } from "./scheduled_turns.ts";

const noSleep = () => Promise.resolve();
const reply = { id: "m1", role: "assistant", content: "stored" } as unknown as MessageRow;

function store(takes: boolean[], states: { reply: MessageRow | null; inFlight: boolean }[]): TurnStore & {
  calls: string[];
} {
  const calls: string[] = [];
  return {
    calls,
    take: () => {
      calls.push("take");
      return Promise.resolve(takes.shift() ?? false);
    },
    renew: () => Promise.resolve(),
    release: () => {
      calls.push("release");
      return Promise.resolve();
    },
    state: () => {
      calls.push("state");
      return Promise.resolve(states.shift() ?? { reply: null, inFlight: true });
    },
  };
}

Deno.test("takeTurnOrAwaitReply: no turn in flight, the turn is ours (the model is called)", async () => {
  const s = store([true], []);
  assert.equal(await takeTurnOrAwaitReply(s, "e1", undefined, noSleep), null);
  assert.deepEqual(s.calls, ["take"]);
});

Deno.test("takeTurnOrAwaitReply: a turn in flight elsewhere, its stored reply is used", async () => {
  const s = store([false], [{ reply: null, inFlight: true }, { reply, inFlight: true }]);
  assert.equal(await takeTurnOrAwaitReply(s, "e1", undefined, noSleep), reply);
  assert.deepEqual(s.calls, ["take", "state", "state"]);
});

Deno.test("takeTurnOrAwaitReply: a turn whose instance died (stale) is taken over", async () => {
  const s = store([false, true], [{ reply: null, inFlight: true }, { reply: null, inFlight: false }]);
  assert.equal(await takeTurnOrAwaitReply(s, "e1", undefined, noSleep), null);
  assert.deepEqual(s.calls, ["take", "state", "state", "take"]);
});

Deno.test("takeTurnOrAwaitReply: a caller gone stops waiting", async () => {
  const s = store([false], []);
  const gone = new AbortController();
  gone.abort(new Error("gone"));
  await assert.rejects(() => takeTurnOrAwaitReply(s, "e1", gone.signal, noSleep), /gone/);
});

Deno.test("whileRenewed: a failed turn is released for the next attempt, a stored one is not", async () => {
  const s = store([], []);
  await assert.rejects(() => whileRenewed(s, "e1", () => Promise.reject(new Error("model 503"))), /model 503/);
  assert.deepEqual(s.calls, ["release"]);
  assert.equal(await whileRenewed(s, "e1", () => Promise.resolve("ok")), "ok");
  assert.deepEqual(s.calls, ["release"]);
});
