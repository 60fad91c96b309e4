import assert from "node:assert/strict";
import { KeyRingError, loadKeyRing } from "./crypto.ts";

const key = (fill: number) => btoa(String.fromCharCode(...new Uint8Array(32).fill(fill)));
const ctx = { integrationId: "11111111-1111-1111-1111-111111111111", userId: "22222222-2222-2222-2222-222222222222" };

Deno.test("crypto: a credential sealed under the last key opens, and the ciphertext hides it", async () => {
  const ring = (await loadKeyRing(JSON.stringify({ old: key(1), new: key(2) })))!;
  const sealed = await ring.seal("secret-token-123", ctx);
  assert.equal(sealed.keyId, "new");
  assert.ok(!atob(sealed.ciphertext).includes("secret-token-123"));
  assert.equal(await ring.open(sealed, ctx), "secret-token-123");
  const again = await ring.seal("secret-token-123", ctx);
  assert.notEqual(again.ciphertext, sealed.ciphertext, "a fresh nonce every time");
});

Deno.test("crypto: rotation — rows under the old key still open after a new key is added", async () => {
  const before = (await loadKeyRing(JSON.stringify({ k1: key(1) })))!;
  const sealed = await before.seal("tok", ctx);
  const after = (await loadKeyRing(JSON.stringify({ k1: key(1), k2: key(2) })))!;
  assert.equal(await after.open(sealed, ctx), "tok");
  const resealed = await after.seal(await after.open(sealed, ctx), ctx);
  assert.equal(resealed.keyId, "k2");
  const onlyNew = (await loadKeyRing(JSON.stringify({ k2: key(2) })))!;
  assert.equal(await onlyNew.open(resealed, ctx), "tok");
  await assert.rejects(() => onlyNew.open(sealed, ctx), (e: Error) => e instanceof KeyRingError && e.message.includes("not configured"));
});

Deno.test("crypto: a ciphertext moved to another user's or integration's row does not open", async () => {
  const ring = (await loadKeyRing(JSON.stringify({ k: key(3) })))!;
  const sealed = await ring.seal("tok", ctx);
  await assert.rejects(() => ring.open(sealed, { ...ctx, userId: "33333333-3333-3333-3333-333333333333" }), (e: Error) => e instanceof KeyRingError);
  await assert.rejects(() => ring.open(sealed, { ...ctx, integrationId: ctx.userId }), (e: Error) => e instanceof KeyRingError);
  const tampered = { ...sealed, ciphertext: sealed.ciphertext.slice(0, -4) + "AAAA" };
  await assert.rejects(() => ring.open(tampered, ctx), (e: Error) => e instanceof KeyRingError && e.message.includes("could not be decrypted"));
});

Deno.test("crypto: bad key rings are refused with the variable's name", async () => {
  assert.equal(await loadKeyRing(undefined), null);
  assert.equal(await loadKeyRing(" "), null);
  await assert.rejects(() => loadKeyRing("[1]"), (e: Error) => e instanceof KeyRingError && e.message.includes("CHAT_INTEGRATIONS_KEYS"));
  await assert.rejects(() => loadKeyRing("{}"), (e: Error) => e instanceof KeyRingError && e.message.includes("no key"));
  await assert.rejects(() => loadKeyRing(JSON.stringify({ k: btoa("short") })), (e: Error) => e instanceof KeyRingError && e.message.includes("32 bytes"));
  await assert.rejects(() => loadKeyRing(JSON.stringify({ "bad id": key(1) })), (e: Error) => e instanceof KeyRingError && e.message.includes("key id"));
});
