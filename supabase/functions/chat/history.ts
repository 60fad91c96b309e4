// Which past messages the model sees.
//
// The database returns the most recent `history_messages` messages; this
// module trims them to the agent's token budget, keeping the newest ones,
// and builds the prompt: system prompt first, then the window oldest first.
// Tokens are estimated as characters / 4 (plus a small per-message overhead,
// as chat formats add role markers): exact counts would need the model's
// tokenizer, and the budget only has to keep requests well under the
// context window.

import type { PromptMessage } from "../_shared/openai.ts";

export type HistoryRole = "user" | "assistant";

export interface HistoryMessage {
  role: HistoryRole;
  content: string;
}


export const DEFAULT_HISTORY_MESSAGES = 30;
export const MAX_HISTORY_MESSAGES = 200;
export const DEFAULT_HISTORY_TOKEN_BUDGET = 6000;
const PER_MESSAGE_OVERHEAD_TOKENS = 4;

/** Rough token count of one message. */
export function estimateTokens(text: string): number {
  return Math.ceil(text.length / 4) + PER_MESSAGE_OVERHEAD_TOKENS;
}

export interface WindowOptions {
  maxMessages: number;
  tokenBudget: number;
}

/**
 * The newest messages that fit both limits, oldest first. The newest message
 * (the one being answered) is always kept, even when it alone exceeds the
 * budget: dropping it would answer a question nobody asked.
 */
export function windowHistory(oldestFirst: readonly HistoryMessage[], options: WindowOptions): HistoryMessage[] {
  const maxMessages = Math.max(1, Math.floor(options.maxMessages));
  const kept: HistoryMessage[] = [];
  let used = 0;
  for (let i = oldestFirst.length - 1; i >= 0 && kept.length < maxMessages; i--) {
    const message = oldestFirst[i];
    const cost = estimateTokens(message.content);
    if (kept.length > 0 && used + cost > options.tokenBudget) break;
    kept.push(message);
    used += cost;
  }
  return kept.reverse();
}

/** System prompt (when non-blank) first, then the history window. */
export function buildPrompt(systemPrompt: string, window: readonly HistoryMessage[]): PromptMessage[] {
  const messages: PromptMessage[] = [];
  if (systemPrompt.trim() !== "") messages.push({ role: "system", content: systemPrompt });
  for (const m of window) messages.push({ role: m.role, content: m.content });
  return messages;
}

export interface AgentSettings {
  temperature?: number;
  maxTokens?: number;
  historyMessages: number;
  historyTokenBudget: number;
  /** Tool names the agent may use; null = all scheduler tools. */
  tools: string[] | null;
}

function finiteNumber(value: unknown): number | undefined {
  return typeof value === "number" && Number.isFinite(value) ? value : undefined;
}

/**
 * Read the agent's settings jsonb leniently: a malformed setting falls back
 * to its default instead of failing every turn of that agent.
 */
export function parseAgentSettings(raw: unknown): AgentSettings {
  const s = (raw && typeof raw === "object" && !Array.isArray(raw)) ? raw as Record<string, unknown> : {};
  const temperature = finiteNumber(s.temperature);
  const maxTokens = finiteNumber(s.max_tokens);
  const historyMessages = finiteNumber(s.history_messages);
  const budget = finiteNumber(s.history_token_budget);
  let tools: string[] | null = null;
  if (s.tools === false) tools = [];
  else if (Array.isArray(s.tools)) tools = s.tools.filter((t): t is string => typeof t === "string");
  return {
    temperature: temperature !== undefined && temperature >= 0 && temperature <= 2 ? temperature : undefined,
    maxTokens: maxTokens !== undefined && maxTokens >= 1 ? Math.floor(maxTokens) : undefined,
    historyMessages: historyMessages !== undefined && historyMessages >= 1
      ? Math.min(Math.floor(historyMessages), MAX_HISTORY_MESSAGES)
      : DEFAULT_HISTORY_MESSAGES,
    historyTokenBudget: budget !== undefined && budget >= 1 ? Math.floor(budget) : DEFAULT_HISTORY_TOKEN_BUDGET,
    tools,
  };
}
