import assert from "node:assert/strict";
import { ChatError } from "../_shared/errors.ts";
import {
  charLength,
  MAX_MESSAGE_CHARS,
  parseActAsBody,
  parseJson,
  parseUserBody,
  readBodyText,
} from "./request.ts";

const ID = "22222222-2222-4222-8222-222222222222";

function refusal(fn: () => unknown): [number, string, string | undefined] {
  try {
    fn();
  } catch (err) {
    assert.ok(err instanceof ChatError);
    return [err.status, err.code, err.field];
  }
  throw new Error("expected a refusal");
}

Deno.test("parseUserBody__accepts_a_turn", () => {
  assert.deepEqual(parseUserBody({ agent_id: ID, message: "hi" }), {
    agentId: ID,
    conversationId: null,
    message: "hi",
    stream: false,
    timeZone: null,
  });
  assert.equal(parseUserBody({ agent_id: ID, conversation_id: ID, message: "hi", stream: true }).stream, true);
});

Deno.test("parseUserBody__takes_the_users_time_zone_by_its_canonical_name", () => {
  const zone = (timezone: unknown) => parseUserBody({ agent_id: ID, message: "hi", timezone }).timeZone;
  assert.equal(zone("Europe/Berlin"), "Europe/Berlin");
  assert.equal(zone("america/new_york"), "America/New_York");
  assert.equal(zone("Asia/Kolkata"), "Asia/Kolkata");
  assert.equal(zone(null), null);
  for (const bad of ["Mars/Olympus_Mons", "", "Europe/Berlin; drop table", "+01:00", 5, ["UTC"], "A".repeat(65)]) {
    assert.deepEqual(refusal(() => parseUserBody({ agent_id: ID, message: "hi", timezone: bad })), [
      400,
      "invalid_body",
      "timezone",
    ], String(bad));
  }
});

Deno.test("parseUserBody__refuses_bad_bodies_naming_the_field", () => {
  assert.deepEqual(refusal(() => parseUserBody([])), [400, "invalid_body", "body"]);
  assert.deepEqual(refusal(() => parseUserBody({ message: "hi" })), [400, "invalid_body", "agent_id"]);
  assert.deepEqual(refusal(() => parseUserBody({ agent_id: "x", message: "hi" })), [400, "invalid_body", "agent_id"]);
  assert.deepEqual(refusal(() => parseUserBody({ agent_id: ID, conversation_id: 5, message: "hi" })), [
    400,
    "invalid_body",
    "conversation_id",
  ]);
  assert.deepEqual(refusal(() => parseUserBody({ agent_id: ID })), [400, "invalid_body", "message"]);
  assert.deepEqual(refusal(() => parseUserBody({ agent_id: ID, message: "  " })), [400, "invalid_body", "message"]);
  assert.deepEqual(refusal(() => parseUserBody({ agent_id: ID, message: "hi", stream: "yes" })), [
    400,
    "invalid_body",
    "stream",
  ]);
  assert.deepEqual(refusal(() => parseUserBody({ agent_id: ID, message: "hi", context: {} })), [
    400,
    "invalid_body",
    "context",
  ]);
  assert.deepEqual(refusal(() => parseJson("{nope")), [400, "invalid_json", undefined]);
});

Deno.test("parseUserBody__limits_messages_to_10000_characters", () => {
  assert.equal(parseUserBody({ agent_id: ID, message: "a".repeat(MAX_MESSAGE_CHARS) }).message.length, 10_000);
  assert.deepEqual(refusal(() => parseUserBody({ agent_id: ID, message: "a".repeat(MAX_MESSAGE_CHARS + 1) })), [
    413,
    "message_too_long",
    "message",
  ]);
  // characters as Postgres counts them: an emoji is one character, two UTF-16 units
  const emoji = "\u{1F600}".repeat(MAX_MESSAGE_CHARS);
  assert.equal(charLength(emoji), MAX_MESSAGE_CHARS);
  assert.equal(parseUserBody({ agent_id: ID, message: emoji }).message, emoji);
});

Deno.test("parseActAsBody__requires_a_complete_context", () => {
  const context = { user_id: ID, agent_id: ID, conversation_id: ID, execution_id: ID, user_message_id: ID };
  assert.deepEqual(parseActAsBody({ context }).context, {
    userId: ID,
    agentId: ID,
    conversationId: ID,
    executionId: ID,
    userMessageId: ID,
  });
  assert.deepEqual(refusal(() => parseActAsBody({})), [400, "invalid_body", "context"]);
  assert.deepEqual(refusal(() => parseActAsBody({ context: { ...context, execution_id: null } })), [
    400,
    "invalid_body",
    "context.execution_id",
  ]);
  assert.deepEqual(refusal(() => parseActAsBody({ context, message: "hi" })), [400, "invalid_body", "message"]);
});

/** A chunked body (no Content-Length) that would go on forever; counts the chunks pulled. */
function endlessBody(chunk: Uint8Array): { req: Request; pulled: () => number } {
  let pulled = 0;
  const body = new ReadableStream<Uint8Array>({
    pull(controller) {
      pulled++;
      controller.enqueue(chunk);
    },
  });
  return { req: new Request("http://x/chat", { method: "POST", body }), pulled: () => pulled };
}

Deno.test("readBodyText__stops_reading_a_chunked_body_at_the_byte_limit", async () => {
  const { req, pulled } = endlessBody(new Uint8Array(64 * 1024));
  assert.equal(req.headers.get("content-length"), null);
  await assert.rejects(readBodyText(req, 256 * 1024), (err: unknown) => {
    assert.ok(err instanceof ChatError);
    assert.equal(err.status, 413);
    assert.equal(err.code, "body_too_large");
    return true;
  });
  // 256 KiB in 64 KiB chunks: the fifth chunk passes the limit and reading stops there
  assert.ok(pulled() <= 6, `read ${pulled()} chunks of an endless body`);
});

Deno.test("readBodyText__counts_bytes_not_characters", async () => {
  const text = "\u20ac".repeat(100); // 100 characters, 300 bytes of UTF-8
  const ok = new Request("http://x/chat", { method: "POST", body: text });
  assert.equal(await readBodyText(ok, 300), text);
  const over = new Request("http://x/chat", { method: "POST", body: text });
  await assert.rejects(readBodyText(over, 299), (err: unknown) => err instanceof ChatError && err.status === 413);
});

Deno.test("readBodyText__refuses_a_declared_length_over_the_limit_before_reading", async () => {
  const { req, pulled } = endlessBody(new Uint8Array(16));
  const declared = new Request(req, { headers: { "content-length": String(10 ** 9) } });
  await assert.rejects(readBodyText(declared, 1024), (err: unknown) => err instanceof ChatError && err.status === 413);
  assert.ok(pulled() <= 1);
});
