// One turn of a conversation: load under RLS, ask the model (with tools),
// persist the reply once.
//
// The database connection is released between the two transactions, so a
// slow model holds no connection and no lock: a pool of 10 serves many
// concurrent turns.

import { ChatError } from "../_shared/errors.ts";
import {
  buildPrompt,
  type HistoryMessage,
  parseAgentSettings,
  windowHistory,
} from "./history.ts";
import { addUsage, type ModelClient, type PromptMessage, type ToolCall, type Usage } from "../_shared/openai.ts";
import { checkActAsContext } from "./auth.ts";
import { isFinished } from "./execution_status.ts";
import { retryThroughBlips } from "./db_retry.ts";
import { databaseTurnStore, takeTurnOrAwaitReply, whileRenewed } from "./scheduled_turns.ts";
import type { ActAsRequest, UserTurnRequest } from "./request.ts";
import {
  REPORT_TASK_STATUS,
  REQUEST_USER_INPUT,
  type SchedulerTool,
  toolsFor,
  validateToolArgs,
} from "./tools/definitions.ts";
import { lastReport, scheduledTurnPrompt, type TaskReport } from "./tools/task_status.ts";
import type { Config } from "./config.ts";
import {
  type AgentRow,
  type HistoryRow,
  type Json,
  type MessageRow,
  persistReply,
  type Sql,
  startActAsTurn,
  type TaskRow,
  startUserTurn,
} from "./db.ts";
import { runSchedulerTool } from "./tools/execute.ts";
import { withoutNul } from "../_shared/sql_literal.ts";
import { EMPTY_TOOLBOX, type McpDeps, openToolbox, type Toolbox } from "./mcp/toolbox.ts";
import type { Loaded } from "./mcp/store.ts";
import { timeContext } from "./time_context.ts";

/** Model calls that may request tools; one more call then must answer in text. */
export const MAX_TOOL_ROUNDS = 5;

export interface TurnDeps {
  sql: Sql;
  model: ModelClient;
  config: Config;
  /** MCP integrations (absent: the turn offers only the built-in tools). */
  mcp?: McpDeps;
}

/** Progress of a streamed turn. */
export type TurnEvent =
  | { type: "delta"; content: string }
  | { type: "tool"; call: ToolCallRecord };

export interface TurnOptions {
  signal?: AbortSignal;
  /** Set for streamed turns: receives content deltas and tool results as they happen. */
  onEvent?: (event: TurnEvent) => void;
}

/** What chat_messages_v2.tool_calls stores for each call. */
export interface ToolCallRecord {
  id: string;
  name: string;
  /** The integration that served an MCP tool call, and its own name for the tool. */
  server?: string;
  tool?: string;
  arguments: unknown;
  result: unknown;
  status: "ok" | "error";
  duration_ms: number;
  started_at: string;
  finished_at: string;
}

export interface TurnResult {
  conversation_id: string;
  user_message_id: string;
  message: MessageRow;
  usage: Usage | null;
  replayed: boolean;
  needs_input: { question: string } | null;
  /** The run's report_task_status arguments (scheduled turns), or null. */
  task_status: TaskReport | null;
}

interface Conversation {
  claims: string;
  userId: string;
  agent: AgentRow;
  conversationId: string;
  history: HistoryRow[];
  actAs: boolean;
  /** The task of a scheduled turn (its system prompt section). */
  task: TaskRow | null;
  /** The agent's MCP integrations, loaded with the turn's first transaction. */
  integrations: Loaded | null;
  /** The zone the user's words are in: the client's (user turns) or the task's (scheduled runs). */
  timeZone: string | null;
}

interface Reply {
  content: string;
  toolCalls: ToolCallRecord[];
  usage: Usage | null;
  finishReason: string | null;
  model: string;
  needsInput: { question: string } | null;
  taskStatus: TaskReport | null;
  /** Integrations whose tools could not be offered in this turn, and why. */
  unavailable?: Toolbox["unavailable"];
}

/** A user's own turn: `{agent_id, conversation_id?, message}`. */
export async function userTurn(
  deps: TurnDeps,
  user: { userId: string; claims: Record<string, unknown> },
  request: UserTurnRequest,
  options: TurnOptions = {},
): Promise<TurnResult> {
  const claims = JSON.stringify(user.claims);
  const start = await startUserTurn(deps.sql, {
    userId: user.userId,
    claims,
    agentId: request.agentId,
    conversationId: request.conversationId,
    message: request.message,
    rateLimit: deps.config.rateLimit,
    rateWindowS: deps.config.rateWindowSeconds,
    withIntegrations: deps.mcp !== undefined,
  });
  if (start.wait > 0) {
    throw new ChatError(429, "rate_limited", `too many requests; retry in ${start.wait} s`, {
      retryable: true,
      headers: { "Retry-After": String(start.wait) },
    });
  }
  if (!start.agent) throw new ChatError(404, "agent_not_found", "no such agent");
  if (!start.conversation) throw new ChatError(404, "conversation_not_found", "no such conversation");
  if (start.conversation.agent_id !== start.agent.id) {
    throw new ChatError(400, "invalid_body", "the conversation belongs to another agent", {
      field: "conversation_id",
    });
  }
  if (!start.userMessage) throw new Error("user message was not inserted");
  // the new message is not in the history snapshot: it is the newest one
  const history: HistoryRow[] = [{ role: "user", content: request.message }, ...start.history];
  const conversationId = start.conversation.id;
  const reply = await converse(deps, {
    claims,
    userId: user.userId,
    agent: start.agent,
    conversationId,
    history,
    actAs: false,
    task: null,
    integrations: start.integrations,
    timeZone: request.timeZone,
  }, options);
  return await finish(deps, { claims, userId: user.userId, conversationId }, start.userMessage.id, reply, null, options);
}

/** A scheduled run acting as the task's owner: `{context}`. */
export async function actAsTurn(deps: TurnDeps, request: ActAsRequest, options: TurnOptions = {}): Promise<TurnResult> {
  const ctx = request.context;
  const claims = JSON.stringify({ sub: ctx.userId, role: "authenticated" });
  const start = await startActAsTurn(deps.sql, { claims, ...ctx, withIntegrations: deps.mcp !== undefined });
  const agent = checkActAsContext(ctx, {
    verdict: start.verdict,
    agent: start.agent,
    conversationFound: start.conversation !== null,
    userMessage: start.userMessage,
    executionStatus: start.executionStatus,
    replied: start.reply !== null,
  });
  // idempotent per execution: a retried run gets the stored reply, and the model is not called
  if (start.reply) return replayedTurn(ctx, start.reply);
  if (start.executionStatus !== null && isFinished(start.executionStatus)) {
    throw executionFinished(start.executionStatus);
  }
  // an earlier attempt's turn may still be in flight: wait for its reply rather than pay twice
  const turns = databaseTurnStore(deps.sql);
  const earlier = await takeTurnOrAwaitReply(turns, ctx.executionId, options.signal);
  if (earlier) return replayedTurn(ctx, earlier);
  return await whileRenewed(turns, ctx.executionId, async () => {
    const reply = await converse(deps, {
      claims,
      userId: ctx.userId,
      agent,
      conversationId: ctx.conversationId,
      history: start.history,
      actAs: true,
      task: start.task,
      integrations: start.integrations,
      timeZone: start.task?.timezone ?? null,
    }, options);
    return await finish(
      deps,
      { claims, userId: ctx.userId, conversationId: ctx.conversationId },
      ctx.userMessageId,
      reply,
      ctx.executionId,
      options,
    );
  });
}

function replayedTurn(ctx: ActAsRequest["context"], message: MessageRow): TurnResult {
  const meta = message.metadata ?? {};
  return {
    conversation_id: ctx.conversationId,
    user_message_id: ctx.userMessageId,
    message,
    usage: (meta.usage as Usage | undefined) ?? null,
    replayed: true,
    needs_input: (meta.needs_input as { question: string } | undefined) ?? null,
    task_status: (meta.task_status as TaskReport | undefined) ?? null,
  };
}

async function finish(
  deps: TurnDeps,
  who: { claims: string; userId: string; conversationId: string },
  userMessageId: string,
  reply: Reply,
  executionId: string | null,
  options: TurnOptions,
): Promise<TurnResult> {
  if (options.signal?.aborted) {
    // the caller gave up (a cancelled or timed-out run): write nothing it will not read
    throw new ChatError(499, "client_closed", "the caller went away before the reply was stored", {
      retryable: true,
    });
  }
  const metadata: Record<string, Json> = {
    model: reply.model,
    usage: reply.usage as Json,
    finish_reason: reply.finishReason,
  };
  if (reply.needsInput) metadata.needs_input = reply.needsInput as Json;
  if (reply.taskStatus) metadata.task_status = reply.taskStatus as unknown as Json;
  if (reply.unavailable?.length) metadata.integrations_unavailable = reply.unavailable as unknown as Json;
  // Postgres text cannot hold NUL characters; a model (or a tool result) may produce them
  const content = withoutNul(reply.content);
  const store = () =>
    persistReply(deps.sql, {
      claims: who.claims,
      userId: who.userId,
      conversationId: who.conversationId,
      content,
      toolCalls: reply.toolCalls.length > 0 ? withoutNul(reply.toolCalls) as unknown as Json : null,
      metadata: withoutNul(metadata),
      executionId,
    });
  // a scheduled reply is idempotent per execution: stored through a database blip, not lost
  const stored = executionId === null ? await store() : await retryThroughBlips(store);
  if (!stored) throw executionFinished("finished");
  // a concurrent attempt of the same execution stored its reply first: report that one
  const replayed = stored.content !== content;
  const storedMeta = stored.metadata ?? {};
  return {
    conversation_id: who.conversationId,
    user_message_id: userMessageId,
    message: stored,
    usage: replayed ? (storedMeta.usage as Usage | undefined) ?? null : reply.usage,
    replayed,
    needs_input: replayed
      ? (storedMeta.needs_input as { question: string } | undefined) ?? null
      : reply.needsInput,
    task_status: replayed ? (storedMeta.task_status as TaskReport | undefined) ?? null : reply.taskStatus,
  };
}

function executionFinished(status: string): ChatError {
  return new ChatError(409, "execution_not_running", `the execution is ${status}: its reply is no longer wanted`);
}

function parsedArguments(raw: string): unknown {
  try {
    return JSON.parse(raw);
  } catch {
    return raw;
  }
}

/** The model loop with the caller's MCP tools, closed whatever happens. */
async function converse(deps: TurnDeps, conv: Conversation, options: TurnOptions): Promise<Reply> {
  const toolbox = deps.mcp
    ? await openToolbox(deps.mcp, { claims: conv.claims, userId: conv.userId }, conv.integrations)
    : EMPTY_TOOLBOX;
  try {
    const reply = await converseWith(deps, conv, options, toolbox);
    return { ...reply, unavailable: toolbox.unavailable };
  } finally {
    await toolbox.close();
  }
}

/** The model loop: answer, or run the requested tools and ask again (bounded). */
async function converseWith(deps: TurnDeps, conv: Conversation, options: TurnOptions, toolbox: Toolbox): Promise<Reply> {
  const settings = parseAgentSettings(conv.agent.settings);
  const oldestFirst: HistoryMessage[] = [...conv.history].reverse();
  const window = windowHistory(oldestFirst, {
    maxMessages: settings.historyMessages,
    tokenBudget: settings.historyTokenBudget,
  });
  const systemPrompt = conv.task
    ? [conv.agent.system_prompt, scheduledTurnPrompt(conv.task)].filter((p) => p.trim() !== "").join("\n\n")
    : conv.agent.system_prompt;
  // the time last: what comes before it is the same from turn to turn (a provider's prompt cache)
  const now = timeContext(new Date(), conv.timeZone, conv.actAs ? "task" : "user");
  const messages: PromptMessage[] = buildPrompt(
    [systemPrompt, toolbox.promptSection, now].filter((p) => p.trim() !== "").join("\n\n"),
    window,
  );
  const tools = [...toolsFor({ actAs: conv.actAs, enabled: settings.tools }), ...toolbox.definitions];
  const offered = new Set(tools.map((t) => t.function.name));
  const model = deps.config.modelOverride ?? conv.agent.model;

  const parts: string[] = [];
  const records: ToolCallRecord[] = [];
  let usage: Usage | null = null;
  let finishReason: string | null = null;
  let modelName = model;
  const onEvent = options.onEvent;

  for (let round = 0;; round++) {
    const mayUseTools = round < MAX_TOOL_ROUNDS;
    let streamedThisRound = false;
    const onDelta = onEvent
      ? (content: string) => {
        // rounds are joined with a blank line in the stored reply; stream the same text
        if (!streamedThisRound && parts.some((p) => p !== "")) onEvent({ type: "delta", content: "\n\n" });
        streamedThisRound = true;
        onEvent({ type: "delta", content });
      }
      : undefined;
    const completion = await deps.model.complete({
      model,
      messages,
      tools: tools.length > 0 ? tools : undefined,
      toolChoice: mayUseTools ? "auto" : "none",
      temperature: settings.temperature,
      maxTokens: settings.maxTokens,
    }, { signal: options.signal, onDelta });
    usage = addUsage(usage, completion.usage);
    finishReason = completion.finishReason;
    if (completion.model) modelName = completion.model;
    if (completion.content !== "") parts.push(completion.content);

    if (completion.toolCalls.length === 0 || !mayUseTools) break;

    messages.push({ role: "assistant", content: completion.content || null, tool_calls: completion.toolCalls });
    let question: string | null = null;
    for (const call of completion.toolCalls) {
      const record = toolbox.has(call.function.name)
        ? await runMcpTool(toolbox, call, options.signal)
        : await runTool(deps, conv, call, offered);
      records.push(record);
      if (call.function.name === REQUEST_USER_INPUT && record.status === "ok") {
        question = (record.arguments as { question: string }).question;
      }
      messages.push({ role: "tool", tool_call_id: call.id, content: JSON.stringify(record.result) });
      onEvent?.({ type: "tool", call: record });
    }
    const report = lastReport(records);
    if (report?.status === "needs_input") question = report.question!;
    if (question !== null) {
      // the run cannot go on without the user: the question is the reply
      return {
        content: question,
        toolCalls: records,
        usage,
        finishReason,
        model: modelName,
        needsInput: { question },
        taskStatus: report,
      };
    }
    if (report !== null) {
      // the agent reported the run's outcome: the run ends here
      const text = parts.join("\n\n");
      return {
        content: text.trim() !== "" ? text : report.summary ?? `Task status: ${report.status}.`,
        toolCalls: records,
        usage,
        finishReason,
        model: modelName,
        needsInput: null,
        taskStatus: report,
      };
    }
  }

  const content = parts.join("\n\n");
  if (content.trim() === "" && records.length === 0) {
    throw new ChatError(502, "empty_reply", "the model returned an empty reply", { retryable: true });
  }
  return { content, toolCalls: records, usage, finishReason, model: modelName, needsInput: null, taskStatus: null };
}

async function runTool(
  deps: TurnDeps,
  conv: Conversation,
  call: ToolCall,
  offered: ReadonlySet<string>,
): Promise<ToolCallRecord> {
  const started = performance.now();
  const startedAt = new Date().toISOString();
  const name = call.function.name;
  const checked = validateToolArgs(name, call.function.arguments, offered);
  const base = { id: call.id, name, arguments: parsedArguments(call.function.arguments), started_at: startedAt };
  const timing = () => ({ duration_ms: elapsed(started), finished_at: new Date().toISOString() });
  if (!checked.ok) {
    return { ...base, result: { error: checked.error }, status: "error", ...timing() };
  }
  if (name === REQUEST_USER_INPUT) {
    return { ...base, arguments: checked.args, result: { asked: true }, status: "ok", ...timing() };
  }
  if (name === REPORT_TASK_STATUS) {
    return { ...base, arguments: checked.args, result: { reported: checked.args.status }, status: "ok", ...timing() };
  }
  const outcome = await runSchedulerTool(name as SchedulerTool, checked.args, {
    sql: deps.sql,
    claims: conv.claims,
    agentId: conv.agent.id,
    conversationId: conv.conversationId,
  });
  return {
    ...base,
    result: outcome.result,
    status: outcome.ok ? "ok" : "error",
    ...timing(),
  };
}

async function runMcpTool(toolbox: Toolbox, call: ToolCall, signal?: AbortSignal): Promise<ToolCallRecord> {
  const started = performance.now();
  const startedAt = new Date().toISOString();
  const args = parsedArguments(call.function.arguments || "{}");
  const outcome = await toolbox.call(call.function.name, args, signal);
  return {
    id: call.id,
    name: call.function.name,
    server: outcome.server,
    tool: outcome.tool,
    arguments: args,
    result: outcome.result,
    status: outcome.status,
    started_at: startedAt,
    finished_at: new Date().toISOString(),
    duration_ms: elapsed(started),
  };
}

function elapsed(started: number): number {
  return Math.round(performance.now() - started);
}
