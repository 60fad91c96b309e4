// The model client on the official `openai` npm SDK: the SDK speaks the wire
// (request building, SSE parsing, tool-call deltas, error events mid-stream);
// this module keeps the function's contract around it: the same ModelClient
// interface, the completion rebuilt by StreamAccumulator (so parallel tool
// calls assemble by index exactly as before), and every failure mapped to the
// statuses and codes the worker classifies (providerStatusError and friends in
// openai.ts). The SDK's own retries are off: the worker owns retries.

import OpenAI from "openai";
import { ChatError } from "./errors.ts";
import {
  type CallOptions,
  type Completion,
  type CompletionRequest,
  type ModelClient,
  type ModelClientConfig,
  parseCompletion,
  providerStatusError,
  providerStreamError,
  StreamAccumulator,
} from "./openai.ts";

function badResponse(detail: string): ChatError {
  return new ChatError(502, "model_bad_response", `the model returned an unusable response: ${detail}`, {
    retryable: true,
  });
}

function errorMessage(err: InstanceType<typeof OpenAI.APIError>): string {
  const body = err.error as { message?: unknown } | undefined;
  return typeof body?.message === "string" ? body.message : "";
}

/** The OpenAI-compatible client on the official SDK, with the function's error mapping. */
export function createSdkModelClient(config: ModelClientConfig): ModelClient {
  const client = new OpenAI({
    apiKey: config.apiKey,
    baseURL: config.baseUrl.replace(/\/+$/, ""),
    maxRetries: 0,
    timeout: config.timeoutMs,
    fetch: config.fetch,
  });

  return {
    async complete(request: CompletionRequest, options: CallOptions = {}): Promise<Completion> {
      const params: Record<string, unknown> = { model: request.model, messages: request.messages };
      if (request.tools && request.tools.length > 0) {
        params.tools = request.tools;
        if (request.toolChoice) params.tool_choice = request.toolChoice;
      }
      if (request.temperature !== undefined) params.temperature = request.temperature;
      if (request.maxTokens !== undefined) params.max_tokens = request.maxTokens;
      const timeout = AbortSignal.timeout(config.timeoutMs);
      const signal = options.signal ? AbortSignal.any([timeout, options.signal]) : timeout;

      // Every failure is classified by what happened, never by message text.
      const failure = (err: unknown): ChatError => {
        if (err instanceof ChatError) return err;
        if (timeout.aborted || err instanceof OpenAI.APIConnectionTimeoutError) {
          return new ChatError(504, "model_timeout", `the model did not answer within ${config.timeoutMs} ms`, {
            retryable: true,
          });
        }
        if (options.signal?.aborted) {
          return new ChatError(499, "client_closed", "the caller went away", { retryable: true });
        }
        if (err instanceof OpenAI.APIConnectionError) {
          return new ChatError(502, "model_unreachable", "the model provider could not be reached", {
            retryable: true,
          });
        }
        if (err instanceof OpenAI.APIError) {
          if (err.status === undefined) {
            // an error event in the middle of a stream
            return providerStreamError(errorMessage(err));
          }
          return providerStatusError(err.status, errorMessage(err), err.headers?.get("retry-after") ?? null);
        }
        if (err instanceof SyntaxError) return badResponse("the body is not JSON");
        return new ChatError(502, "model_unreachable", "the model provider could not be reached", { retryable: true });
      };

      try {
        if (options.onDelta === undefined) {
          const body = await client.chat.completions.create(
            params as unknown as OpenAI.Chat.ChatCompletionCreateParamsNonStreaming,
            { signal },
          );
          return parseCompletion(body);
        }
        const stream = await client.chat.completions.create(
          { ...params, stream: true, stream_options: { include_usage: true } } as unknown as
            OpenAI.Chat.ChatCompletionCreateParamsStreaming,
          { signal },
        );
        const acc = new StreamAccumulator();
        let chunks = 0;
        for await (const chunk of stream) {
          chunks++;
          const delta = acc.push(chunk);
          if (delta) options.onDelta(delta);
        }
        if (chunks === 0) throw badResponse("empty stream");
        return acc.result();
      } catch (err) {
        throw failure(err);
      }
    },
  };
}
