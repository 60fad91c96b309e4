import assert from "node:assert/strict";
import { exportJWK, generateKeyPair, SignJWT } from "jose";
import {
  type AuthDeps,
  authenticate,
  bearerToken,
  type Credentials,
  matchesAnySecret,
  splitList,
  timingSafeEqual,
  type TokenCheck,
} from "./auth.ts";
import { ChatError } from "./errors.ts";
import { createServiceCredentialCheck, createUserTokenVerifier, VerifiedTokenCache } from "./jwt.ts";

const USER = "11111111-1111-4111-8111-111111111111";
const USER_JWT = "user.jwt.sig";
const EXPIRED_JWT = "expired.jwt.sig";
const SECRET = "sb_secret_abc";

// Verification is injected: these tests are about the decision, not the crypto.
const deps: AuthDeps = {
  verifyUserToken: (token: string): Promise<TokenCheck> =>
    Promise.resolve(
      token === USER_JWT
        ? { ok: true, claims: { sub: USER, role: "authenticated" } }
        : token === EXPIRED_JWT
        ? { ok: false, reason: "expired" }
        : { ok: false, reason: "invalid" },
    ),
  isServiceCredential: (c: Credentials) => Promise.resolve(c.apikey === SECRET || c.bearer === SECRET),
  serviceAllowlist: new Set(["task-executor"]),
};

function creds(partial: Partial<Credentials>): Credentials {
  return { bearer: null, apikey: null, service: null, ...partial };
}

async function refusal(c: Credentials): Promise<[number, string]> {
  try {
    await authenticate(c, deps);
  } catch (err) {
    assert.ok(err instanceof ChatError);
    return [err.status, err.code];
  }
  throw new Error("expected a refusal");
}

Deno.test("authenticate__user_token_is_a_user_call", async () => {
  const caller = await authenticate(creds({ bearer: USER_JWT, apikey: "anon-key" }), deps);
  assert.deepEqual(caller, { kind: "user", userId: USER, claims: { sub: USER, role: "authenticated" } });
});

Deno.test("authenticate__secret_key_with_allowed_service_is_a_service_call", async () => {
  const caller = await authenticate(creds({ apikey: SECRET, service: "task-executor" }), deps);
  assert.deepEqual(caller, { kind: "service", service: "task-executor" });
});

Deno.test("authenticate__refusals", async () => {
  assert.deepEqual(await refusal(creds({})), [401, "missing_token"]);
  assert.deepEqual(await refusal(creds({ bearer: "not.a.token" })), [401, "invalid_token"]);
  assert.deepEqual(await refusal(creds({ bearer: EXPIRED_JWT })), [401, "token_expired"]);
  assert.deepEqual(await refusal(creds({ service: "task-executor" })), [401, "invalid_service_credential"]);
  assert.deepEqual(
    await refusal(creds({ apikey: "wrong", service: "task-executor" })),
    [401, "invalid_service_credential"],
  );
  assert.deepEqual(
    await refusal(creds({ bearer: USER_JWT, service: "task-executor" })),
    [403, "service_header_with_user_token"],
  );
  // a user token stays refused with X-Service even next to a valid secret key
  assert.deepEqual(
    await refusal(creds({ bearer: USER_JWT, apikey: SECRET, service: "task-executor" })),
    [403, "service_header_with_user_token"],
  );
  assert.deepEqual(await refusal(creds({ apikey: SECRET, service: "billing" })), [403, "service_not_allowed"]);
  assert.deepEqual(await refusal(creds({ apikey: SECRET })), [403, "service_header_required"]);
});

Deno.test("authenticate__bad_credential_is_checked_before_the_allow_list", async () => {
  assert.deepEqual(await refusal(creds({ apikey: "wrong", service: "billing" })), [401, "invalid_service_credential"]);
});

Deno.test("bearerToken__parses_the_header", () => {
  assert.equal(bearerToken("Bearer abc.def.ghi"), "abc.def.ghi");
  assert.equal(bearerToken("bearer   xyz "), "xyz");
  assert.equal(bearerToken("Basic abc"), null);
  assert.equal(bearerToken(null), null);
});

Deno.test("timingSafeEqual__compares_whole_strings", () => {
  assert.equal(timingSafeEqual("sb_secret_abc", "sb_secret_abc"), true);
  assert.equal(timingSafeEqual("sb_secret_abd", "sb_secret_abc"), false);
  assert.equal(timingSafeEqual("sb_secret_ab", "sb_secret_abc"), false);
  assert.equal(timingSafeEqual("sb_secret_abcd", "sb_secret_abc"), false);
  assert.equal(timingSafeEqual("", ""), false, "an empty configured secret never matches");
  assert.equal(matchesAnySecret("k2", ["k1", "k2"]), true);
  assert.equal(matchesAnySecret(null, ["k1"]), false);
  assert.deepEqual(splitList(" a, ,b ,"), ["a", "b"]);
});

const JWT_SECRET = "super-secret-jwt-token-with-at-least-32-characters";
const key = new TextEncoder().encode(JWT_SECRET);

async function sign(claims: Record<string, unknown>, expiresIn = "1h"): Promise<string> {
  return await new SignJWT(claims).setProtectedHeader({ alg: "HS256" }).setIssuedAt().setExpirationTime(expiresIn)
    .sign(key);
}

Deno.test("createUserTokenVerifier__checks_signature_audience_role_and_expiry", async () => {
  const verify = createUserTokenVerifier({ jwtSecret: JWT_SECRET });
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
  const verify = createUserTokenVerifier({ jwtSecret: JWT_SECRET, issuer: "https://x.supabase.co/auth/v1" });
  const claims = { sub: USER, role: "authenticated", aud: "authenticated" };
  assert.equal((await verify(await sign({ ...claims, iss: "https://x.supabase.co/auth/v1" }))).ok, true);
  assert.equal((await verify(await sign({ ...claims, iss: "elsewhere" }))).ok, false);
});

Deno.test("createUserTokenVerifier__accepts_asymmetric_tokens_from_the_projects_jwks", async () => {
  // projects with asymmetric signing keys: ES256 tokens, public keys published as a JWKS
  const { publicKey, privateKey } = await generateKeyPair("ES256", { extractable: true });
  const jwk = { ...(await exportJWK(publicKey)), kid: "key-1", alg: "ES256", use: "sig" };
  const verify = createUserTokenVerifier({ jwks: JSON.stringify({ keys: [jwk] }) });
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

Deno.test("createServiceCredentialCheck__accepts_secret_keys_and_service_role_jwts", async () => {
  const serviceRoleKey = await sign({ role: "service_role" }, "10y");
  const check = createServiceCredentialCheck({
    secretKeys: ["sb_secret_one", "sb_secret_two"],
    serviceRoleKey,
    jwtSecret: JWT_SECRET,
  });
  assert.equal(await check(creds({ apikey: "sb_secret_two" })), true);
  assert.equal(await check(creds({ bearer: "sb_secret_one" })), true);
  assert.equal(await check(creds({ bearer: serviceRoleKey })), true);
  assert.equal(await check(creds({ bearer: await sign({ role: "service_role" }) })), true, "re-issued key");
  assert.equal(await check(creds({ bearer: await sign({ role: "anon" }) })), false);
  assert.equal(await check(creds({ apikey: "sb_secret_three" })), false);
  assert.equal(await check(creds({})), false);
});

Deno.test("createUserTokenVerifier__caches_verified_tokens_until_they_expire", async () => {
  const cache = new VerifiedTokenCache(2);
  const verify = createUserTokenVerifier({ jwtSecret: JWT_SECRET }, cache);
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
  const verify = createUserTokenVerifier({ jwtSecret: JWT_SECRET });
  const noExp = await new SignJWT({ sub: USER, role: "authenticated", aud: "authenticated" })
    .setProtectedHeader({ alg: "HS256" }).sign(key);
  assert.equal((await verify(noExp)).ok, false);
});
