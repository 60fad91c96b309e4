import assert from "node:assert/strict";
import { ChatError } from "../_shared/errors.ts";
import { charLength, MAX_MESSAGE_CHARS, parseActAsBody, parseJson, parseUserBody } from "./request.ts";

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
  });
  assert.equal(parseUserBody({ agent_id: ID, conversation_id: ID, message: "hi", stream: true }).stream, true);
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
