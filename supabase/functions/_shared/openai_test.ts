import assert from "node:assert/strict";
import { ChatError } from "./errors.ts";
import {
  addUsage,
  parseCompletion,
  providerErrorDetail,
  providerStatusError,
  StreamAccumulator,
} from "./openai.ts";

function code(err: ChatError): [number, string, boolean] {
  return [err.status, err.code, err.retryable];
}

Deno.test("providerStatusError__maps_provider_statuses_for_the_worker", () => {
  assert.deepEqual(code(providerStatusError(429, "")), [503, "model_rate_limited", true]);
  assert.deepEqual(code(providerStatusError(500, "")), [502, "model_unavailable", true]);
  assert.deepEqual(code(providerStatusError(503, "")), [502, "model_unavailable", true]);
  assert.deepEqual(code(providerStatusError(408, "")), [504, "model_timeout", true]);
  for (const status of [400, 401, 403, 404]) {
    assert.deepEqual(code(providerStatusError(status, "")), [422, "model_request_rejected", false]);
  }
  assert.equal(providerStatusError(429, "", "7").headers["Retry-After"], "7");
  assert.equal(providerErrorDetail('{"error":{"message":"bad key"}}'), "bad key");
  assert.equal(providerErrorDetail("plain"), "plain");
});

Deno.test("providerStatusError__never_returns_the_providers_body", () => {
  const secret = "Incorrect API key provided: sk-proj-****************************abcd";
  for (const status of [400, 401, 404, 429, 500, 503]) {
    const err = providerStatusError(status, secret);
    assert.ok(!JSON.stringify(err.toBody()).includes("abcd"), `HTTP ${status} leaks the provider's body`);
  }
});

Deno.test("parseCompletion__reads_content_tool_calls_and_usage", () => {
  const c = parseCompletion({
    model: "m",
    choices: [{
      message: {
        role: "assistant",
        content: null,
        tool_calls: [{ id: "c1", type: "function", function: { name: "list_schedules", arguments: "{}" } }],
      },
      finish_reason: "tool_calls",
    }],
    usage: { prompt_tokens: 3, completion_tokens: 2, total_tokens: 5 },
  });
  assert.deepEqual(c, {
    content: "",
    toolCalls: [{ id: "c1", type: "function", function: { name: "list_schedules", arguments: "{}" } }],
    finishReason: "tool_calls",
    usage: { prompt_tokens: 3, completion_tokens: 2, total_tokens: 5 },
    model: "m",
  });
});

Deno.test("parseCompletion__refuses_unusable_bodies_as_retryable", () => {
  for (const body of [null, {}, { choices: [] }, { choices: [{}] }, { choices: [{ message: { content: 5 } }] }]) {
    assert.throws(() => parseCompletion(body), (err: unknown) => {
      return err instanceof ChatError && err.code === "model_bad_response" && err.retryable;
    });
  }
});

Deno.test("StreamAccumulator__rebuilds_content_and_tool_calls_from_chunks", () => {
  const acc = new StreamAccumulator();
  const deltas = [
    { model: "m", choices: [{ delta: { role: "assistant", content: "" } }] },
    { choices: [{ delta: { content: "Hel" } }] },
    { choices: [{ delta: { content: "lo" } }] },
    { choices: [{ delta: { tool_calls: [{ index: 0, id: "c1", function: { name: "pause_", arguments: "" } }] } }] },
    { choices: [{ delta: { tool_calls: [{ index: 0, function: { name: "schedule", arguments: '{"schedule_' } }] } }] },
    { choices: [{ delta: { tool_calls: [{ index: 0, function: { arguments: 'id":"x"}' } }] } }] },
    { choices: [{ delta: {}, finish_reason: "tool_calls" }] },
    { choices: [], usage: { prompt_tokens: 1, completion_tokens: 1, total_tokens: 2 } },
  ].map((chunk) => acc.push(chunk));
  assert.deepEqual(deltas, ["", "Hel", "lo", "", "", "", "", ""]);
  assert.deepEqual(acc.result(), {
    content: "Hello",
    toolCalls: [{ id: "c1", type: "function", function: { name: "pause_schedule", arguments: '{"schedule_id":"x"}' } }],
    finishReason: "tool_calls",
    usage: { prompt_tokens: 1, completion_tokens: 1, total_tokens: 2 },
    model: "m",
  });
});

Deno.test("addUsage__sums_rounds", () => {
  const u = { prompt_tokens: 1, completion_tokens: 2, total_tokens: 3 };
  assert.deepEqual(addUsage(null, u), u);
  assert.deepEqual(addUsage(u, null), u);
  assert.deepEqual(addUsage(u, u), { prompt_tokens: 2, completion_tokens: 4, total_tokens: 6 });
});
