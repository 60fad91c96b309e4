// The model: an OpenAI-compatible POST {base}/chat/completions, plain or streamed.
// The client itself is the official `openai` SDK (openai_sdk.ts); this module
// holds the function's side of the contract: the types, the checks of a
// completion, the rebuilding of streamed tool calls by index, and the mapping
// of failures.
//
// Failures are mapped to statuses and codes the worker classifies without
// reading messages: retryable ones (rate limits, 5xx, timeouts, garbage
// bodies) versus the caller's own mistakes (bad key, unknown model), which
// no retry can fix.

import { ChatError } from "./errors.ts";

/** One message of a chat completions request. */
export interface PromptMessage {
  role: "system" | "user" | "assistant" | "tool";
  content: string | null;
  tool_calls?: unknown[];
  tool_call_id?: string;
}

/** A function-calling tool as the chat completions API takes it. */
export interface ToolDefinition {
  type: "function";
  function: { name: string; description: string; parameters: object };
}

export interface ToolCall {
  id: string;
  type: "function";
  function: { name: string; arguments: string };
}

export interface Usage {
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
}

export interface Completion {
  content: string;
  toolCalls: ToolCall[];
  finishReason: string | null;
  usage: Usage | null;
  model: string | null;
}

export interface CompletionRequest {
  model: string;
  messages: PromptMessage[];
  tools?: ToolDefinition[];
  /** "none" forces a text answer while the tools stay described. */
  toolChoice?: "auto" | "none";
  temperature?: number;
  maxTokens?: number;
}

export interface CallOptions {
  /** Aborts the call when the client goes away. */
  signal?: AbortSignal;
  /** Streams the call and receives each content delta. */
  onDelta?: (content: string) => void;
}

export interface ModelClient {
  complete(request: CompletionRequest, options?: CallOptions): Promise<Completion>;
}

const MAX_ERROR_DETAIL = 300;

function badResponse(detail: string): ChatError {
  return new ChatError(502, "model_bad_response", `the model returned an unusable response: ${detail}`, {
    retryable: true,
  });
}

/**
 * The provider's own words go to the function's log only: an error body can
 * quote the request, the account or the masked tail of the key (OpenAI's 401
 * does). The caller gets the status and a stable code.
 */
function logProviderDetail(what: string, detail: string): void {
  if (detail) console.error(`chat: model provider ${what}: ${detail.slice(0, MAX_ERROR_DETAIL)}`);
}

/** A provider's error event in the middle of a stream (its message is logged, never returned). */
export function providerStreamError(detail: string): ChatError {
  logProviderDetail("failed mid-stream", detail);
  return new ChatError(502, "model_unavailable", "the model failed mid-stream", { retryable: true });
}

/** Map a provider's non-2xx status to our error (its body is logged, never returned). */
export function providerStatusError(status: number, detail: string, retryAfter: string | null = null): ChatError {
  logProviderDetail(`answered HTTP ${status}`, detail);
  if (status === 429) {
    const headers: Record<string, string> = retryAfter && /^\d+$/.test(retryAfter) ? { "Retry-After": retryAfter } : {};
    return new ChatError(503, "model_rate_limited", "the model provider is rate limiting", {
      retryable: true,
      headers,
    });
  }
  if (status === 408) {
    return new ChatError(504, "model_timeout", "the model provider timed out", { retryable: true });
  }
  if (status >= 500 || status === 409) {
    return new ChatError(502, "model_unavailable", `the model provider failed (HTTP ${status})`, {
      retryable: true,
    });
  }
  return new ChatError(422, "model_request_rejected", `the model provider rejected the request (HTTP ${status})`, {
    retryable: false,
  });
}

/** The message of an OpenAI-style error body, else the raw text. */
export function providerErrorDetail(text: string): string {
  try {
    const body = JSON.parse(text) as { error?: { message?: unknown } };
    if (typeof body?.error?.message === "string") return body.error.message;
  } catch {
    // not JSON: fall through to the raw text
  }
  return text.trim();
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return value !== null && typeof value === "object" && !Array.isArray(value);
}

function parseUsage(value: unknown): Usage | null {
  if (!isRecord(value)) return null;
  const n = (v: unknown) => (typeof v === "number" && Number.isFinite(v) ? v : 0);
  const prompt = n(value.prompt_tokens);
  const completion = n(value.completion_tokens);
  return { prompt_tokens: prompt, completion_tokens: completion, total_tokens: n(value.total_tokens) || prompt + completion };
}

/** Validate a non-streamed `chat.completion` body. */
export function parseCompletion(body: unknown): Completion {
  if (!isRecord(body) || !Array.isArray(body.choices) || body.choices.length === 0) {
    throw badResponse("no choices");
  }
  const choice = body.choices[0];
  if (!isRecord(choice) || !isRecord(choice.message)) throw badResponse("choice without message");
  const message = choice.message;
  if (message.content !== null && message.content !== undefined && typeof message.content !== "string") {
    throw badResponse("content is not a string");
  }
  const toolCalls: ToolCall[] = [];
  if (message.tool_calls !== undefined && message.tool_calls !== null) {
    if (!Array.isArray(message.tool_calls)) throw badResponse("tool_calls is not an array");
    for (const raw of message.tool_calls) {
      if (!isRecord(raw) || !isRecord(raw.function) || typeof raw.function.name !== "string") {
        throw badResponse("malformed tool call");
      }
      const args = raw.function.arguments;
      toolCalls.push({
        id: typeof raw.id === "string" && raw.id ? raw.id : `call_${toolCalls.length}`,
        type: "function",
        function: { name: raw.function.name, arguments: typeof args === "string" ? args : JSON.stringify(args ?? {}) },
      });
    }
  }
  return {
    content: typeof message.content === "string" ? message.content : "",
    toolCalls,
    finishReason: typeof choice.finish_reason === "string" ? choice.finish_reason : null,
    usage: parseUsage(body.usage),
    model: typeof body.model === "string" ? body.model : null,
  };
}

/**
 * Rebuild one completion from `chat.completion.chunk` objects: content
 * deltas concatenate, tool calls arrive in pieces keyed by `index` (id and
 * name first, then argument fragments).
 */
export class StreamAccumulator {
  private content = "";
  private calls = new Map<number, ToolCall>();
  private finishReason: string | null = null;
  private usage: Usage | null = null;
  private model: string | null = null;

  /** Add one chunk; returns its content delta ("" when none). */
  push(chunk: unknown): string {
    if (!isRecord(chunk)) throw badResponse("stream chunk is not an object");
    if (typeof chunk.model === "string") this.model = chunk.model;
    if (chunk.usage) this.usage = parseUsage(chunk.usage);
    if (!Array.isArray(chunk.choices) || chunk.choices.length === 0) return "";
    const choice = chunk.choices[0];
    if (!isRecord(choice)) throw badResponse("stream choice is not an object");
    if (typeof choice.finish_reason === "string") this.finishReason = choice.finish_reason;
    const delta = choice.delta;
    if (!isRecord(delta)) return "";
    let text = "";
    if (typeof delta.content === "string") {
      text = delta.content;
      this.content += text;
    }
    if (Array.isArray(delta.tool_calls)) {
      for (const piece of delta.tool_calls) {
        if (!isRecord(piece)) throw badResponse("malformed tool call delta");
        const index = typeof piece.index === "number" ? piece.index : this.calls.size;
        let call = this.calls.get(index);
        if (!call) {
          call = { id: "", type: "function", function: { name: "", arguments: "" } };
          this.calls.set(index, call);
        }
        if (typeof piece.id === "string") call.id = piece.id;
        const f = piece.function;
        if (isRecord(f)) {
          if (typeof f.name === "string") call.function.name += f.name;
          if (typeof f.arguments === "string") call.function.arguments += f.arguments;
        }
      }
    }
    return text;
  }

  result(): Completion {
    const toolCalls = [...this.calls.entries()].sort(([a], [b]) => a - b).map(([i, c]) => ({
      ...c,
      id: c.id || `call_${i}`,
    }));
    for (const call of toolCalls) {
      if (!call.function.name) throw badResponse("streamed tool call without a name");
    }
    return {
      content: this.content,
      toolCalls,
      finishReason: this.finishReason,
      usage: this.usage,
      model: this.model,
    };
  }
}

/** Sum usage across the rounds of one turn. */
export function addUsage(total: Usage | null, more: Usage | null): Usage | null {
  if (!more) return total;
  if (!total) return { ...more };
  return {
    prompt_tokens: total.prompt_tokens + more.prompt_tokens,
    completion_tokens: total.completion_tokens + more.completion_tokens,
    total_tokens: total.total_tokens + more.total_tokens,
  };
}

export interface ModelClientConfig {
  baseUrl: string;
  apiKey: string;
  timeoutMs: number;
  fetch?: typeof fetch;
}
