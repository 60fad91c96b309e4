// Request bodies of the two paths, checked before any database work.

import { ChatError, invalidBody } from "../_shared/errors.ts";
import { canonicalTimeZone } from "./time_context.ts";

/** Same limit as the chat_messages_v2 check constraint (characters, not bytes). */
export const MAX_MESSAGE_CHARS = 10_000;
/** Bodies larger than this are refused before parsing (a message is at most ~40 KB of UTF-8). */
export const MAX_BODY_BYTES = 256 * 1024;

const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

export interface UserTurnRequest {
  agentId: string;
  conversationId: string | null;
  message: string;
  stream: boolean;
  /** The user's IANA time zone (canonical), when the client sent one: the prompt's time section. */
  timeZone: string | null;
}

export interface ActAsContext {
  userId: string;
  agentId: string;
  conversationId: string;
  executionId: string;
  userMessageId: string;
}

export interface ActAsRequest {
  context: ActAsContext;
  stream: boolean;
}

/** Postgres counts characters as code points; JS string length counts UTF-16 units. */
export function charLength(text: string): number {
  let n = 0;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    // a high surrogate followed by a low one is a single code point
    if (c >= 0xd800 && c <= 0xdbff && i + 1 < text.length) {
      const d = text.charCodeAt(i + 1);
      if (d >= 0xdc00 && d <= 0xdfff) i++;
    }
    n++;
  }
  return n;
}

function bodyTooLarge(maxBytes: number): ChatError {
  return new ChatError(413, "body_too_large", `the request body must be at most ${maxBytes} bytes`);
}

/**
 * The body as text, read as a stream and abandoned as soon as it passes
 * `maxBytes` bytes, whatever Content-Length says (or whether it says anything:
 * a chunked body has none). A declared length over the limit is refused
 * before anything is read.
 */
export async function readBodyText(req: Request, maxBytes: number = MAX_BODY_BYTES): Promise<string> {
  const declared = Number(req.headers.get("content-length") ?? "0");
  if (declared > maxBytes) throw bodyTooLarge(maxBytes);
  if (req.body === null) return "";
  const reader = req.body.getReader();
  const chunks: Uint8Array[] = [];
  let total = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    total += value.byteLength;
    if (total > maxBytes) {
      await reader.cancel().catch(() => {});
      throw bodyTooLarge(maxBytes);
    }
    chunks.push(value);
  }
  const bytes = new Uint8Array(total);
  let offset = 0;
  for (const chunk of chunks) {
    bytes.set(chunk, offset);
    offset += chunk.byteLength;
  }
  return new TextDecoder().decode(bytes);
}

export function parseJson(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    throw new ChatError(400, "invalid_json", "the request body is not valid JSON");
  }
}

function asObject(body: unknown, field = "body"): Record<string, unknown> {
  if (body === null || typeof body !== "object" || Array.isArray(body)) {
    throw invalidBody(field, `${field} must be a JSON object`);
  }
  return body as Record<string, unknown>;
}

function uuid(obj: Record<string, unknown>, key: string, field: string): string {
  const value = obj[key];
  if (typeof value !== "string" || !UUID_RE.test(value)) throw invalidBody(field, `${field} must be a UUID`);
  return value.toLowerCase();
}

function optionalBool(obj: Record<string, unknown>, key: string): boolean {
  const value = obj[key];
  if (value === undefined || value === null) return false;
  if (typeof value !== "boolean") throw invalidBody(key, `${key} must be true or false`);
  return value;
}

function optionalTimeZone(obj: Record<string, unknown>, key: string): string | null {
  const value = obj[key];
  if (value === undefined || value === null) return null;
  const zone = typeof value === "string" ? canonicalTimeZone(value) : null;
  if (zone === null) throw invalidBody(key, `${key} must be an IANA time zone name, such as "Europe/Berlin"`);
  return zone;
}

/** `{agent_id, conversation_id?, message, stream?, timezone?}` from a signed-in user. */
export function parseUserBody(body: unknown): UserTurnRequest {
  const obj = asObject(body);
  if (obj.context !== undefined) {
    throw invalidBody("context", "context is only accepted from an allow-listed service");
  }
  const agentId = uuid(obj, "agent_id", "agent_id");
  const conversationId = obj.conversation_id === undefined || obj.conversation_id === null
    ? null
    : uuid(obj, "conversation_id", "conversation_id");
  const message = obj.message;
  if (typeof message !== "string") throw invalidBody("message", "message must be a string");
  if (message.trim() === "") throw invalidBody("message", "message must not be empty");
  if (message.includes("\u0000")) throw invalidBody("message", "message must not contain NUL characters");
  if (charLength(message) > MAX_MESSAGE_CHARS) {
    throw new ChatError(413, "message_too_long", `message must be at most ${MAX_MESSAGE_CHARS} characters`, {
      field: "message",
    });
  }
  return {
    agentId,
    conversationId,
    message,
    stream: optionalBool(obj, "stream"),
    timeZone: optionalTimeZone(obj, "timezone"),
  };
}

/** `{context: {...}, stream?}` from the worker; the scheduler already wrote the user message. */
export function parseActAsBody(body: unknown): ActAsRequest {
  const obj = asObject(body);
  if (obj.context === undefined || obj.context === null) {
    throw invalidBody("context", "context is required for service calls");
  }
  if (obj.message !== undefined) {
    throw invalidBody("message", "service calls answer the scheduled message already in the conversation");
  }
  const ctx = asObject(obj.context, "context");
  return {
    context: {
      userId: uuid(ctx, "user_id", "context.user_id"),
      agentId: uuid(ctx, "agent_id", "context.agent_id"),
      conversationId: uuid(ctx, "conversation_id", "context.conversation_id"),
      executionId: uuid(ctx, "execution_id", "context.execution_id"),
      userMessageId: uuid(ctx, "user_message_id", "context.user_message_id"),
    },
    stream: optionalBool(obj, "stream"),
  };
}
