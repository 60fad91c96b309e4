import assert from "node:assert/strict";
import { base64url, exportJWK, generateKeyPair, type JSONWebKeySet, SignJWT } from "jose";
import { createServiceRoleTokenCheck, createUserTokenVerifier, VerifiedTokenCache } from "./jwt.ts";

const USER = "11111111-1111-4111-8111-111111111111";
const JWT_SECRET = "super-secret-jwt-token-with-at-least-32-characters";
const key = new TextEncoder().encode(JWT_SECRET);

async function sign(claims: Record<string, unknown>, expiresIn = "1h"): Promise<string> {
  return await new SignJWT(claims).setProtectedHeader({ alg: "HS256" }).setIssuedAt().setExpirationTime(expiresIn)
    .sign(key);
}

Deno.test("createUserTokenVerifier__checks_signature_audience_role_and_expiry", async () => {
  const verify = createUserTokenVerifier({ legacySecret: JWT_SECRET });
  const good = await sign({ sub: USER, role: "authenticated", aud: "authenticated" });
  const result = await verify(good);
  assert.ok(result.ok);

  assert.equal((await verify(await sign({ sub: USER, role: "anon", aud: "authenticated" }))).ok, false);
  assert.equal((await verify(await sign({ sub: USER, role: "authenticated", aud: "other" }))).ok, false);
  assert.equal((await verify(await sign({ sub: "not-a-uuid", role: "authenticated", aud: "authenticated" }))).ok, false);
  const expired = await verify(await sign({ sub: USER, role: "authenticated", aud: "authenticated" }, "-1m"));
  assert.deepEqual(expired.ok ? null : expired.reason, "expired");
  const forged = await new SignJWT({ sub: USER, role: "authenticated", aud: "authenticated" })
    .setProtectedHeader({ alg: "HS256" }).setExpirationTime("1h").sign(new TextEncoder().encode("x".repeat(40)));
  assert.equal((await verify(forged)).ok, false);
});

Deno.test("createUserTokenVerifier__checks_the_issuer_when_configured", async () => {
  const verify = createUserTokenVerifier({ legacySecret: JWT_SECRET, issuer: "https://x.supabase.co/auth/v1" });
  const claims = { sub: USER, role: "authenticated", aud: "authenticated" };
  assert.equal((await verify(await sign({ ...claims, iss: "https://x.supabase.co/auth/v1" }))).ok, true);
  assert.equal((await verify(await sign({ ...claims, iss: "elsewhere" }))).ok, false);
});

Deno.test("createUserTokenVerifier__accepts_asymmetric_tokens_from_the_projects_jwks", async () => {
  // projects with asymmetric signing keys: ES256 tokens, public keys published as a JWKS
  const { publicKey, privateKey } = await generateKeyPair("ES256", { extractable: true });
  const jwk = { ...(await exportJWK(publicKey)), kid: "key-1", alg: "ES256", use: "sig" };
  const verify = createUserTokenVerifier({ jwks: { keys: [jwk] } });
  const claims = { sub: USER, role: "authenticated", aud: "authenticated" };
  const good = await new SignJWT(claims).setProtectedHeader({ alg: "ES256", kid: "key-1" }).setIssuedAt()
    .setExpirationTime("1h").sign(privateKey);
  assert.equal((await verify(good)).ok, true);

  // a token signed by another key pair with the same kid is refused
  const other = await generateKeyPair("ES256");
  const forged = await new SignJWT(claims).setProtectedHeader({ alg: "ES256", kid: "key-1" })
    .setExpirationTime("1h").sign(other.privateKey);
  assert.equal((await verify(forged)).ok, false);
  // without the HS256 secret configured, an HS256 token is refused too
  assert.equal((await verify(await sign(claims))).ok, false);
});

Deno.test("createServiceRoleTokenCheck__accepts_a_service_role_jwt_signed_with_a_symmetric_key", async () => {
  const check = createServiceRoleTokenCheck({ legacySecret: JWT_SECRET, issuer: "https://x.supabase.co/auth/v1" });
  assert.equal(await check(await sign({ role: "service_role", iss: "supabase" }, "10y")), true);
  assert.equal(await check(await sign({ role: "anon" })), false);
  assert.equal(await check(await sign({ role: "authenticated", sub: USER, aud: "authenticated" })), false);
  assert.equal(await createServiceRoleTokenCheck({})(await sign({ role: "service_role" })), false, "no key, no trust");
});

Deno.test("createUserTokenVerifier__accepts_hs256_tokens_signed_with_an_oct_key_of_the_jwks", async () => {
  // the CLI's local runtime puts the project's symmetric key into SUPABASE_JWKS
  const jwks: JSONWebKeySet = { keys: [{ kty: "oct", k: base64url.encode(key) }] };
  const verify = createUserTokenVerifier({ jwks });
  const claims = { sub: USER, role: "authenticated", aud: "authenticated" };
  assert.equal((await verify(await sign(claims))).ok, true);
  const other = await new SignJWT(claims).setProtectedHeader({ alg: "HS256" }).setExpirationTime("1h")
    .sign(new TextEncoder().encode("y".repeat(40)));
  assert.equal((await verify(other)).ok, false);

  // with a key id, the key of that id decides
  const named: JSONWebKeySet = { keys: [{ kty: "oct", kid: "legacy", k: base64url.encode(key) }] };
  const withKid = await new SignJWT(claims).setProtectedHeader({ alg: "HS256", kid: "legacy" }).setIssuedAt()
    .setExpirationTime("1h").sign(key);
  assert.equal((await createUserTokenVerifier({ jwks: named })(withKid)).ok, true);
});

Deno.test("createUserTokenVerifier__a_given_key_set_is_the_whole_truth", async () => {
  // SUPABASE_JWKS given: the published key set is not fetched, so a token of another key is refused at once
  const { publicKey } = await generateKeyPair("ES256", { extractable: true });
  const jwk = { ...(await exportJWK(publicKey)), kid: "key-1", alg: "ES256", use: "sig" };
  const verify = createUserTokenVerifier({ jwks: { keys: [jwk] }, jwksUrl: "http://127.0.0.1:9/jwks.json" });
  const other = await generateKeyPair("ES256");
  const token = await new SignJWT({ sub: USER, role: "authenticated", aud: "authenticated" })
    .setProtectedHeader({ alg: "ES256", kid: "key-2" }).setExpirationTime("1h").sign(other.privateKey);
  assert.equal((await verify(token)).ok, false);
  // and without any key at all, every token is refused
  assert.equal((await createUserTokenVerifier({})(await sign({ sub: USER, role: "authenticated", aud: "authenticated" }))).ok, false);
});

Deno.test("createUserTokenVerifier__caches_verified_tokens_until_they_expire", async () => {
  const cache = new VerifiedTokenCache(2);
  const verify = createUserTokenVerifier({ legacySecret: JWT_SECRET }, cache);
  const a = await sign({ sub: USER, role: "authenticated", aud: "authenticated" });
  assert.ok((await verify(a)).ok);
  assert.equal(cache.size, 1);
  assert.ok((await verify(a)).ok);
  assert.equal((await verify("x.y.z")).ok, false);
  assert.equal(cache.size, 1, "failures are not cached");
  const b = await sign({ sub: USER, role: "authenticated", aud: "authenticated", n: 2 });
  const c = await sign({ sub: USER, role: "authenticated", aud: "authenticated", n: 3 });
  await verify(b);
  await verify(c);
  assert.equal(cache.size, 2, "bounded: the oldest entry made room");
  assert.equal(cache.get(a, Date.now() / 1000), null);
  // an entry is never used at or after the token's exp
  cache.set("t", { sub: USER, role: "authenticated" }, Date.now() / 1000 - 1);
  assert.equal(cache.get("t", Date.now() / 1000), null);
  assert.equal((await verify(await sign({ sub: USER, role: "authenticated", aud: "authenticated" }, "-1s"))).ok, false);
});

Deno.test("createUserTokenVerifier__requires_exp", async () => {
  const verify = createUserTokenVerifier({ legacySecret: JWT_SECRET });
  const noExp = await new SignJWT({ sub: USER, role: "authenticated", aud: "authenticated" })
    .setProtectedHeader({ alg: "HS256" }).sign(key);
  assert.equal((await verify(noExp)).ok, false);
});
