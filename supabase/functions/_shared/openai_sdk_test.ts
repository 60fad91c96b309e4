import assert from "node:assert/strict";
import { ChatError } from "./errors.ts";
import { createSdkModelClient } from "./openai_sdk.ts";

function fakeFetch(respond: (init: RequestInit) => Response | Promise<Response>): typeof fetch {
  return ((_input: string | URL | Request, init?: RequestInit) => Promise.resolve(respond(init ?? {}))) as typeof fetch;
}

async function failure(promise: Promise<unknown>): Promise<[number, string]> {
  try {
    await promise;
  } catch (err) {
    assert.ok(err instanceof ChatError, String(err));
    return [err.status, err.code];
  }
  throw new Error("expected a failure");
}

const request = { model: "m", messages: [{ role: "user" as const, content: "hi" }] };
const sse = (...events: unknown[]) =>
  new Response(events.map((e) => `data: ${typeof e === "string" ? e : JSON.stringify(e)}\n\n`).join(""), {
    headers: { "content-type": "text/event-stream" },
  });

Deno.test("sdk client: transport failures map to the function's codes", async () => {
  const client = (timeoutMs: number, f: typeof fetch) =>
    createSdkModelClient({ baseUrl: "http://x/v1", apiKey: "k", timeoutMs, fetch: f });
  assert.deepEqual(
    await failure(client(1000, () => Promise.reject(new TypeError("connection refused"))).complete(request)),
    [502, "model_unreachable"],
  );
  const hang = fakeFetch((init) =>
    new Promise((_, reject) => init.signal?.addEventListener("abort", () => reject(init.signal?.reason)))
  );
  assert.deepEqual(await failure(client(20, hang).complete(request)), [504, "model_timeout"]);
  const garbage = fakeFetch(() => new Response("not json", { status: 200, headers: { "content-type": "application/json" } }));
  assert.deepEqual(await failure(client(1000, garbage).complete(request)), [502, "model_bad_response"]);
  const badKey = fakeFetch(() =>
    new Response('{"error":{"message":"bad key"}}', { status: 401, headers: { "content-type": "application/json" } })
  );
  assert.deepEqual(await failure(client(1000, badKey).complete(request)), [422, "model_request_rejected"]);
  const limited = fakeFetch(() =>
    new Response('{"error":{"message":"slow down"}}', {
      status: 429,
      headers: { "content-type": "application/json", "retry-after": "7" },
    })
  );
  const err = await client(1000, limited).complete(request).catch((e) => e);
  assert.ok(err instanceof ChatError && err.code === "model_rate_limited" && err.headers["Retry-After"] === "7");
});

Deno.test("sdk client: streamed deltas, parallel tool calls by index, usage", async () => {
  let sent: Record<string, unknown> = {};
  const client = createSdkModelClient({
    baseUrl: "http://x/v1/",
    apiKey: "k",
    timeoutMs: 1000,
    fetch: fakeFetch((init) => {
      sent = JSON.parse(String(init.body));
      return sse(
        { model: "m1", choices: [{ index: 0, delta: { content: "Hi " } }] },
        { choices: [{ index: 0, delta: { tool_calls: [{ index: 0, id: "a", function: { name: "t1", arguments: "" } }] } }] },
        { choices: [{ index: 0, delta: { tool_calls: [{ index: 1, id: "b", function: { name: "t2", arguments: '{"x"' } }] } }] },
        { choices: [{ index: 0, delta: { tool_calls: [{ index: 0, function: { arguments: '{"y":1}' } }] } }] },
        { choices: [{ index: 0, delta: { tool_calls: [{ index: 1, function: { arguments: ":2}" } }] } }] },
        { choices: [{ index: 0, delta: {}, finish_reason: "tool_calls" }] },
        { choices: [], usage: { prompt_tokens: 3, completion_tokens: 4, total_tokens: 7 } },
        "[DONE]",
      );
    }),
  });
  const deltas: string[] = [];
  const result = await client.complete(request, { onDelta: (d) => deltas.push(d) });
  assert.deepEqual(deltas, ["Hi "]);
  assert.equal(sent.stream, true);
  assert.deepEqual(sent.stream_options, { include_usage: true });
  assert.deepEqual(result.toolCalls.map((c) => [c.id, c.function.name, c.function.arguments]), [
    ["a", "t1", '{"y":1}'],
    ["b", "t2", '{"x":2}'],
  ]);
  assert.equal(result.finishReason, "tool_calls");
  assert.deepEqual(result.usage, { prompt_tokens: 3, completion_tokens: 4, total_tokens: 7 });
  assert.equal(result.model, "m1");
});

Deno.test("sdk client: an error event mid-stream is a retryable model_unavailable", async () => {
  const client = createSdkModelClient({
    baseUrl: "http://x/v1",
    apiKey: "k",
    timeoutMs: 1000,
    fetch: fakeFetch(() => sse({ choices: [{ index: 0, delta: { content: "Hi" } }] }, { error: { message: "overloaded" } })),
  });
  assert.deepEqual(await failure(client.complete(request, { onDelta: () => {} })), [502, "model_unavailable"]);
});

Deno.test("sdk client: a plain completion is parsed and checked", async () => {
  const client = createSdkModelClient({
    baseUrl: "http://x/v1",
    apiKey: "k",
    timeoutMs: 1000,
    fetch: fakeFetch(() =>
      new Response(JSON.stringify({ model: "m", choices: [{ message: { role: "assistant", content: "ok" }, finish_reason: "stop" }] }), {
        headers: { "content-type": "application/json" },
      })
    ),
  });
  const result = await client.complete(request);
  assert.equal(result.content, "ok");
  assert.equal(result.finishReason, "stop");
});
