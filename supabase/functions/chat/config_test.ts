import assert from "node:assert/strict";
import { PlatformEnvError } from "../_shared/keys.ts";
import { loadConfig } from "./config.ts";

const PLATFORM: Record<string, string> = {
  SUPABASE_URL: "https://abcdefghijklmnopqrst.supabase.co",
  SUPABASE_DB_URL: "postgresql://postgres:pw@db.example:5432/postgres",
  SUPABASE_SECRET_KEYS: '{"default":"sb_secret_one","worker":"sb_secret_two"}',
  SUPABASE_PUBLISHABLE_KEYS: '{"default":"sb_publishable_one"}',
  SUPABASE_JWKS: '{"keys":[{"kty":"EC","crv":"P-256","x":"x","y":"y","kid":"k1","alg":"ES256"}]}',
  SUPABASE_SERVICE_ROLE_KEY: "legacy.service.role",
  SUPABASE_ANON_KEY: "legacy.anon.key",
};

function load(env: Record<string, string | undefined>) {
  return loadConfig((name) => env[name]);
}

Deno.test("loadConfig__reads_the_platforms_environment", () => {
  const config = load(PLATFORM);
  assert.deepEqual(config.secretKeys, ["sb_secret_one", "sb_secret_two"]);
  assert.deepEqual(config.publishableKeys, ["sb_publishable_one"]);
  assert.equal(config.jwks?.keys[0].kid, "k1");
  assert.equal(config.jwksUrl, undefined, "a given key set is not fetched");
  assert.equal(config.serviceRoleKey, "legacy.service.role");
  assert.equal(config.legacyJwtSecret, undefined);
  assert.deepEqual([...config.serviceAllowlist], ["task-executor"]);
});

Deno.test("loadConfig__without_supabase_jwks_uses_the_key_set_under_supabase_url", () => {
  const config = load({ ...PLATFORM, SUPABASE_JWKS: undefined });
  assert.equal(config.jwksUrl, "https://abcdefghijklmnopqrst.supabase.co/auth/v1/.well-known/jwks.json");
});

Deno.test("loadConfig__user_settings_have_names_the_cli_accepts", () => {
  const config = load({ ...PLATFORM, CHAT_JWT_SECRET: " legacy-secret ", CHAT_JWT_ISSUER: "https://x/auth/v1" });
  assert.equal(config.legacyJwtSecret, "legacy-secret");
  assert.equal(config.jwtIssuer, "https://x/auth/v1");
  // the names the function used to read are not settable on a project, and no longer read
  const ignored = load({ ...PLATFORM, SUPABASE_JWT_SECRET: "x", SUPABASE_SECRET_KEY: "sb_secret_three" });
  assert.equal(ignored.legacyJwtSecret, undefined);
  assert.deepEqual(ignored.secretKeys, ["sb_secret_one", "sb_secret_two"]);
});

Deno.test("loadConfig__refuses_malformed_platform_values_naming_them", () => {
  const cases: [Record<string, string | undefined>, RegExp][] = [
    [{ SUPABASE_SECRET_KEYS: "sb_secret_one,sb_secret_two" }, /^SUPABASE_SECRET_KEYS must be a JSON object/],
    [{ SUPABASE_PUBLISHABLE_KEYS: "sb_publishable_one" }, /^SUPABASE_PUBLISHABLE_KEYS must be a JSON object/],
    [{ SUPABASE_JWKS: '{"keys": "none"}' }, /^SUPABASE_JWKS must be a JSON Web Key Set/],
    [{ SUPABASE_PUBLISHABLE_KEYS: '{"oops":"sb_secret_one"}' }, /in both SUPABASE_SECRET_KEYS and SUPABASE_PUBLISHABLE_KEYS/],
    [{ SUPABASE_DB_URL: undefined }, /^SUPABASE_DB_URL is required/],
    [{ CHAT_DB_POOL_MAX: "0" }, /^CHAT_DB_POOL_MAX must be a positive integer/],
  ];
  for (const [change, message] of cases) {
    assert.throws(() => load({ ...PLATFORM, ...change }), (err: unknown) => {
      return err instanceof PlatformEnvError && message.test(err.message);
    }, JSON.stringify(change));
  }
});
