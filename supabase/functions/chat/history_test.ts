import assert from "node:assert/strict";
import {
  buildPrompt,
  DEFAULT_HISTORY_MESSAGES,
  DEFAULT_HISTORY_TOKEN_BUDGET,
  estimateTokens,
  type HistoryMessage,
  parseAgentSettings,
  windowHistory,
} from "./history.ts";

const msg = (role: "user" | "assistant", content: string): HistoryMessage => ({ role, content });

Deno.test("windowHistory__keeps_the_newest_messages_oldest_first", () => {
  const history = [msg("user", "1"), msg("assistant", "2"), msg("user", "3"), msg("assistant", "4"), msg("user", "5")];
  assert.deepEqual(windowHistory(history, { maxMessages: 3, tokenBudget: 1000 }).map((m) => m.content), ["3", "4", "5"]);
  assert.deepEqual(windowHistory(history, { maxMessages: 30, tokenBudget: 1000 }).length, 5);
});

Deno.test("windowHistory__stops_at_the_token_budget", () => {
  const long = "x".repeat(400); // 100 tokens + overhead
  const history = [msg("user", long), msg("assistant", long), msg("user", "short")];
  const window = windowHistory(history, { maxMessages: 30, tokenBudget: estimateTokens("short") + estimateTokens(long) });
  assert.deepEqual(window.map((m) => m.content.length), [400, 5]);
});

Deno.test("windowHistory__always_keeps_the_message_being_answered", () => {
  const huge = "y".repeat(100_000);
  const window = windowHistory([msg("assistant", "old"), msg("user", huge)], { maxMessages: 30, tokenBudget: 10 });
  assert.deepEqual(window, [msg("user", huge)]);
  assert.deepEqual(windowHistory([], { maxMessages: 30, tokenBudget: 10 }), []);
});

Deno.test("windowHistory__does_not_skip_over_a_message_that_does_not_fit", () => {
  // a gap in the middle would show the model a conversation that never happened
  const history = [msg("user", "a"), msg("assistant", "z".repeat(4000)), msg("user", "b")];
  const window = windowHistory(history, { maxMessages: 30, tokenBudget: 50 });
  assert.deepEqual(window.map((m) => m.content), ["b"]);
});

Deno.test("buildPrompt__puts_the_system_prompt_first", () => {
  assert.deepEqual(buildPrompt("Be brief.", [msg("user", "hi")]), [
    { role: "system", content: "Be brief." },
    { role: "user", content: "hi" },
  ]);
  assert.deepEqual(buildPrompt("  ", [msg("user", "hi")]), [{ role: "user", content: "hi" }]);
});

Deno.test("parseAgentSettings__reads_settings_and_falls_back_on_bad_values", () => {
  assert.deepEqual(parseAgentSettings({}), {
    temperature: undefined,
    maxTokens: undefined,
    historyMessages: DEFAULT_HISTORY_MESSAGES,
    historyTokenBudget: DEFAULT_HISTORY_TOKEN_BUDGET,
    tools: null,
  });
  const s = parseAgentSettings({
    temperature: 0.2,
    max_tokens: 512,
    history_messages: 4,
    history_token_budget: 100,
    tools: ["list_schedules", 3],
  });
  assert.deepEqual(s, { temperature: 0.2, maxTokens: 512, historyMessages: 4, historyTokenBudget: 100, tools: ["list_schedules"] });
  const bad = parseAgentSettings({ temperature: "hot", history_messages: -1, history_token_budget: "x", tools: false });
  assert.equal(bad.temperature, undefined);
  assert.equal(bad.historyMessages, DEFAULT_HISTORY_MESSAGES);
  assert.equal(bad.historyTokenBudget, DEFAULT_HISTORY_TOKEN_BUDGET);
  assert.deepEqual(bad.tools, []);
  assert.equal(parseAgentSettings({ history_messages: 10_000 }).historyMessages, 200);
  assert.equal(parseAgentSettings(null).historyMessages, DEFAULT_HISTORY_MESSAGES);
});
