import assert from "node:assert/strict";
import { ChatError } from "../_shared/errors.ts";
import type { TokenCheck } from "../_shared/jwt.ts";
import {
  type ActAsFindings,
  type AuthDeps,
  authenticate,
  bearerToken,
  checkActAsContext,
  createServiceCredentialCheck,
  type Credentials,
  splitList,
} from "./auth.ts";
import type { ActAsContext } from "./request.ts";

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

Deno.test("splitList__drops_blanks", () => {
  assert.deepEqual(splitList(" a, ,b ,"), ["a", "b"]);
});

Deno.test("createServiceCredentialCheck__accepts_every_secret_key_and_the_legacy_key", async () => {
  const reissued = "re.issued.jwt";
  const check = createServiceCredentialCheck({
    secretKeys: ["sb_secret_one", "sb_secret_two"],
    serviceRoleKey: "legacy.service.role",
    isServiceRoleToken: (token) => Promise.resolve(token === reissued),
  });
  assert.equal(await check(creds({ apikey: "sb_secret_two" })), true);
  assert.equal(await check(creds({ bearer: "sb_secret_one" })), true);
  assert.equal(await check(creds({ bearer: "legacy.service.role" })), true);
  assert.equal(await check(creds({ apikey: "legacy.service.role" })), true);
  assert.equal(await check(creds({ bearer: reissued })), true, "a re-issued legacy key");
  assert.equal(await check(creds({ bearer: "other.signed.jwt" })), false);
  assert.equal(await check(creds({ apikey: "sb_secret_three" })), false, "a key rotated out");
  assert.equal(await check(creds({})), false);
});

const CTX: ActAsContext = {
  userId: USER,
  agentId: "22222222-2222-4222-8222-222222222222",
  conversationId: "33333333-3333-4333-8333-333333333333",
  executionId: "44444444-4444-4444-8444-444444444444",
  userMessageId: "55555555-5555-4555-8555-555555555555",
};
const AGENT = { id: CTX.agentId };
const FOUND: ActAsFindings<typeof AGENT> = {
  verdict: "ok",
  agent: AGENT,
  conversationFound: true,
  userMessage: { conversation_id: CTX.conversationId, role: "user", execution_id: CTX.executionId },
  executionStatus: "running",
  replied: false,
};

function contextRefusal(found: Partial<ActAsFindings<typeof AGENT>>): [number, string] {
  try {
    checkActAsContext(CTX, { ...FOUND, ...found });
  } catch (err) {
    assert.ok(err instanceof ChatError);
    return [err.status, err.code];
  }
  throw new Error("expected a refusal");
}

Deno.test("checkActAsContext__ids_that_belong_together_pass", () => {
  assert.equal(checkActAsContext(CTX, FOUND), AGENT);
  // a replay needs no running execution: the stored reply is returned
  assert.equal(checkActAsContext(CTX, { ...FOUND, executionStatus: null, replied: true }), AGENT);
});

Deno.test("checkActAsContext__refusals", () => {
  assert.deepEqual(contextRefusal({ verdict: "agent_not_found" }), [404, "agent_not_found"]);
  assert.deepEqual(contextRefusal({ verdict: "conversation_not_found" }), [404, "conversation_not_found"]);
  assert.deepEqual(contextRefusal({ verdict: "agent_mismatch" }), [403, "context_mismatch"]);
  assert.deepEqual(contextRefusal({ agent: null }), [404, "agent_not_found"]);
  assert.deepEqual(contextRefusal({ conversationFound: false }), [404, "conversation_not_found"]);
  assert.deepEqual(contextRefusal({ userMessage: null }), [404, "message_not_found"]);
  const um = FOUND.userMessage!;
  assert.deepEqual(contextRefusal({ userMessage: { ...um, role: "assistant" } }), [403, "context_mismatch"]);
  assert.deepEqual(contextRefusal({ userMessage: { ...um, execution_id: null } }), [403, "context_mismatch"]);
  assert.deepEqual(
    contextRefusal({ userMessage: { ...um, conversation_id: CTX.agentId } }),
    [403, "context_mismatch"],
  );
  assert.deepEqual(contextRefusal({ executionStatus: null }), [403, "context_mismatch"]);
});
