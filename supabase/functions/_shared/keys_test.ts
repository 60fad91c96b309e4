import assert from "node:assert/strict";
import { jwksUrlOf, matchesAnySecret, parseJwks, parseKeyDictionary, PlatformEnvError, timingSafeEqual } from "./keys.ts";

Deno.test("timingSafeEqual__compares_whole_strings", () => {
  assert.equal(timingSafeEqual("sb_secret_abc", "sb_secret_abc"), true);
  assert.equal(timingSafeEqual("sb_secret_abd", "sb_secret_abc"), false);
  assert.equal(timingSafeEqual("sb_secret_ab", "sb_secret_abc"), false);
  assert.equal(timingSafeEqual("sb_secret_abcd", "sb_secret_abc"), false);
  assert.equal(timingSafeEqual("", ""), false, "an empty configured secret never matches");
  assert.equal(matchesAnySecret("k2", ["k1", "k2"]), true);
  assert.equal(matchesAnySecret(null, ["k1"]), false);
});

Deno.test("parseKeyDictionary__reads_the_platforms_json_objects", () => {
  assert.deepEqual(parseKeyDictionary("SUPABASE_SECRET_KEYS", '{"default":"sb_secret_a"}'), ["sb_secret_a"]);
  assert.deepEqual(
    parseKeyDictionary("SUPABASE_SECRET_KEYS", '{"default":"sb_secret_a","worker":"sb_secret_b"}'),
    ["sb_secret_a", "sb_secret_b"],
    "every key of the object is accepted",
  );
  assert.deepEqual(parseKeyDictionary("SUPABASE_SECRET_KEYS", undefined), []);
  assert.deepEqual(parseKeyDictionary("SUPABASE_SECRET_KEYS", "  "), []);
});

Deno.test("parseKeyDictionary__refuses_other_shapes_naming_the_variable", () => {
  for (const raw of ["sb_secret_a", "sb_secret_a,sb_secret_b", '["sb_secret_a"]', '"sb_secret_a"', '{"default":1}', '{"default":""}']) {
    assert.throws(
      () => parseKeyDictionary("SUPABASE_SECRET_KEYS", raw),
      (err: unknown) => err instanceof PlatformEnvError && err.message.startsWith("SUPABASE_SECRET_KEYS must be a JSON object"),
      raw,
    );
  }
});

Deno.test("parseJwks__reads_a_key_set_and_refuses_anything_else", () => {
  const jwks = parseJwks("SUPABASE_JWKS", '{"keys":[{"kty":"oct","k":"c2VjcmV0"}]}');
  assert.equal(jwks?.keys.length, 1);
  assert.equal(parseJwks("SUPABASE_JWKS", undefined), undefined);
  for (const raw of ["{", '{"keys":{}}', '{"keys":[{"k":"x"}]}', "[]"]) {
    assert.throws(() => parseJwks("SUPABASE_JWKS", raw), PlatformEnvError, raw);
  }
});

Deno.test("jwksUrlOf__is_under_the_auth_api", () => {
  assert.equal(jwksUrlOf("https://abc.supabase.co/"), "https://abc.supabase.co/auth/v1/.well-known/jwks.json");
});
