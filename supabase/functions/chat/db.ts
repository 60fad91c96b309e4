// Every SQL statement of the chat function.
//
// Two short transactions per turn, none held during the model call:
//   tx1 (as the user: role authenticated + the user's claims, so RLS decides)
//       load agent, conversation and history, insert the user's message:
//       chat_turn.user_turn_begin / chat_turn.act_as_turn_begin (security
//       invoker); then, as service_role with the same claims, the agent's MCP
//       integrations (mcp/store.ts, keyed on auth.uid());
//   tx2 (as service_role with the user's claims) persist the reply:
//       chat_private.save_reply, through chat_private.record_assistant_reply,
//       which re-checks ownership.
// Each is ONE multi-statement query: one round trip, one implicit
// transaction (`set_config(..., true)` lasts until its end). The work is in
// PL/pgSQL functions (migration 20261121001000_chat_turn_functions.sql)
// because `prepare: false` (required by Supabase's transaction pooler) means
// a statement sent as text is parsed and planned on every request, while a
// function's statements are planned once per connection. Values enter the
// short calls only as typed literals (../_shared/sql_literal.ts says why).

import postgres from "postgres";
import { DEFAULT_HISTORY_MESSAGES, MAX_HISTORY_MESSAGES } from "./history.ts";
import * as lit from "../_shared/sql_literal.ts";
import { type ExecutionStatus, FINISHED_EXECUTION_STATUSES } from "./execution_status.ts";
import { integrationsStatement, type Loaded } from "./mcp/store.ts";

export type Sql = postgres.Sql;
export type Tx = postgres.TransactionSql;
export type Json = postgres.JSONValue;
/** Column values for postgres.js's insert/update helpers. */
export type Row = Record<string, postgres.ParameterOrJSON<never>>;

export function createPool(url: string, max: number): Sql {
  return postgres(url, {
    prepare: false,
    max,
    idle_timeout: 60,
    connect_timeout: 10,
    // reconnect pause after a lost connection, in seconds. postgres.js's default grows with
    // every failed connection of the pool (3^n / 100, up to 20 s): after a Postgres restart
    // the function then stayed without a database for ~15 s, holding scheduled runs
    backoff: (retries: number) => Math.min(0.05 * 2 ** retries, 1),
    // the function reads only built-in types: skip the type lookup per connection
    fetch_types: false,
    onnotice: () => {},
    connection: { application_name: "chat-function" },
  });
}

export interface AgentRow {
  id: string;
  system_prompt: string;
  model: string;
  settings: Record<string, unknown>;
}

export interface HistoryRow {
  role: "user" | "assistant";
  content: string;
}

export interface MessageRow {
  id: string;
  role: string;
  content: string;
  tool_calls: Json | null;
  metadata: Record<string, unknown>;
  created_at: string;
}

// Upper bound of history rows read per turn, and the default (history.ts uses the same).
const HISTORY_ROWS_MAX = lit.int(MAX_HISTORY_MESSAGES);
const DEFAULT_LIMIT = lit.int(DEFAULT_HISTORY_MESSAGES);

export interface UserTurnStart {
  /** Seconds to wait when rate limited, else 0. */
  wait: number;
  agent: AgentRow | null;
  /** The conversation (null when not found or not the caller's). */
  conversation: { id: string; agent_id: string } | null;
  /** The inserted user message (null when anything was refused). */
  userMessage: { id: string; created_at: string } | null;
  /** Prior messages, newest first. */
  history: HistoryRow[];
  /** The agent's integrations (null when not asked for, or the turn was refused). */
  integrations: Loaded | null;
}

/** Rows of a multi-statement query: postgres.js returns one result per statement. */
async function statements(sql: Sql, text: string): Promise<Record<string, unknown>[][]> {
  const results = await sql.unsafe(text) as unknown as Record<string, unknown>[][];
  return results;
}

/**
 * tx1 of a user turn, one round trip (one implicit transaction):
 *   1. count the request (rate_limit_hit runs as the connection's role; its
 *      verdict is kept in a transaction-local setting) and apply the
 *      operator's limits (turn_check raises: limits.ts maps it), then become
 *      the user;
 *   2. under RLS, chat_turn.user_turn_begin: load agent and conversation
 *      (started when none is given; its title comes from the first message,
 *      set by a trigger) and history, and insert the message only if nothing
 *      was refused, so a refused request writes no row (refused requests
 *      still count toward the rate limit window).
 */
export async function startUserTurn(sql: Sql, args: {
  userId: string;
  claims: string;
  agentId: string;
  conversationId: string | null;
  message: string;
  rateLimit: number;
  rateWindowS: number;
  /** Also load the agent's MCP integrations (the function has MCP set up). */
  withIntegrations: boolean;
}): Promise<UserTurnStart> {
  // set_config('role', …, true) is `set local role` (PostgREST does the same). In one
  // statement with rate_limit_hit: the function's EXECUTE privilege is checked when the
  // statement starts, as the connection's role, and the new role applies from the next.
  const results = await statements(
    sql,
    lit.sqlText`
      select set_config('chat.rate_wait',
               chat_private.rate_limit_hit(${lit.uuid(args.userId)}, ${lit.int(args.rateLimit)},
                                           ${lit.int(args.rateWindowS)})::text, true),
             chat_private.turn_check(${lit.uuid(args.userId)}, ${lit.uuid(args.agentId)}),
             set_config('role', 'authenticated', true),
             set_config('request.jwt.claims', ${lit.text(args.claims)}, true);
      select * from chat_turn.user_turn_begin(current_setting('chat.rate_wait')::integer,
        ${lit.uuid(args.agentId)}, ${lit.uuid(args.conversationId)}, ${lit.text(args.message)},
        ${DEFAULT_LIMIT}, ${HISTORY_ROWS_MAX});
      ${integrationsAfter(args.withIntegrations, args.agentId, "current_setting('chat.rate_wait')::integer = 0")}`,
  );
  const row = results[1][0] as {
    wait: number;
    agent: AgentRow | null;
    conversation: { id: string; agent_id: string } | null;
    user_message: { id: string; created_at: string } | null;
    history: HistoryRow[];
  };
  return {
    wait: row.wait,
    agent: row.agent,
    conversation: row.conversation,
    userMessage: row.user_message,
    history: row.history,
    integrations: loadedAt(results, 3),
  };
}

/**
 * The statements that end tx1 by loading the agent's integrations as
 * service_role (the role set by the first takes effect from the second), when
 * `guard` holds; nothing when not wanted.
 */
function integrationsAfter(wanted: boolean, agentId: string, guard: string): lit.Literal {
  if (!wanted) return lit.fragment("");
  return lit.fragment(lit.sqlText`select set_config('role', 'service_role', true);
      ${integrationsStatement({ agentId }, lit.fragment(guard))}`);
}

function loadedAt(results: Record<string, unknown>[][], index: number): Loaded | null {
  return (results[index]?.[0]?.loaded as Loaded | null | undefined) ?? null;
}

/** The task a scheduled turn runs, as the user sees it. */
export interface TaskRow {
  id: string;
  name: string;
  run_count: number;
  schedule_type: "cron" | "interval" | "once" | "manual";
  cron_expression: string | null;
  interval_seconds: number | null;
  run_at: string | null;
  timezone: string;
  ends_at: string | null;
  max_runs: number | null;
  state: Record<string, Json>;
  /** The task's own instructions for its runs (agent_tasks.system_addon). */
  system_addon: string | null;
  trigger_type: string;
}

export interface ActAsStart {
  verdict: string;
  agent: AgentRow | null;
  conversation: { id: string; agent_id: string } | null;
  userMessage: {
    id: string;
    conversation_id: string;
    role: string;
    execution_id: string | null;
  } | null;
  /** The reply already written for this execution (a replay), or null. */
  reply: MessageRow | null;
  /** The execution's status as the user sees it (null: not the user's). */
  executionStatus: ExecutionStatus | null;
  /** Messages up to and including the scheduled one, newest first. */
  history: HistoryRow[];
  /** The task being run (null: not the user's). */
  task: TaskRow | null;
  /** The agent's integrations (null when not asked for, or the context was refused). */
  integrations: Loaded | null;
}

/**
 * tx1 of an act-as turn, one round trip. First, as service_role, check that
 * user, agent and conversation belong together; only when they do
 * (chat_turn.act_as_turn_begin reads nothing otherwise), become the user and
 * read everything else under the user's RLS.
 */
export async function startActAsTurn(sql: Sql, args: {
  claims: string;
  userId: string;
  agentId: string;
  conversationId: string;
  executionId: string;
  userMessageId: string;
  /** Also load the agent's MCP integrations (the function has MCP set up). */
  withIntegrations: boolean;
}): Promise<ActAsStart> {
  // Each set_config('role', …) takes effect from the next statement: check_act_as's
  // EXECUTE privilege is checked as service_role, the reads run as the user.
  const results = await statements(
    sql,
    lit.sqlText`
      select set_config('role', 'service_role', true);
      select set_config('chat.act_as', chat_private.check_act_as(${lit.uuid(args.userId)},
               ${lit.uuid(args.agentId)}, ${lit.uuid(args.conversationId)}), true) as verdict,
             chat_private.turn_check(${lit.uuid(args.userId)}, ${lit.uuid(args.agentId)});
      select set_config('role', 'authenticated', true), set_config('request.jwt.claims', ${lit.text(args.claims)}, true);
      select * from chat_turn.act_as_turn_begin(current_setting('chat.act_as') = 'ok',
        ${lit.uuid(args.agentId)}, ${lit.uuid(args.conversationId)}, ${lit.uuid(args.executionId)},
        ${lit.uuid(args.userMessageId)}, ${DEFAULT_LIMIT}, ${HISTORY_ROWS_MAX});
      ${integrationsAfter(args.withIntegrations, args.agentId, "current_setting('chat.act_as') = 'ok'")}`,
  );
  const verdict = String(results[1][0].verdict);
  if (verdict !== "ok") {
    return {
      verdict,
      agent: null,
      conversation: null,
      userMessage: null,
      reply: null,
      executionStatus: null,
      history: [],
      task: null,
      integrations: null,
    };
  }
  const row = results[3][0] as {
    agent: AgentRow | null;
    conversation: { id: string; agent_id: string } | null;
    user_message: ActAsStart["userMessage"];
    reply: MessageRow | null;
    execution_status: ExecutionStatus | null;
    history: HistoryRow[];
    task: TaskRow | null;
  };
  return {
    verdict,
    agent: row.agent,
    conversation: row.conversation,
    userMessage: row.user_message,
    reply: row.reply,
    executionStatus: row.execution_status,
    history: row.history,
    task: row.task,
    integrations: loadedAt(results, 5),
  };
}

const FINISHED = lit.fragment(
  `array[${FINISHED_EXECUTION_STATUSES.map((s) => `'${s}'`).join(", ")}]::text[]`,
);

/**
 * tx2: persist the assistant's reply once, in one round trip, as
 * service_role with the user's claims, through chat_private.save_reply: it
 * returns the stored row (the earlier reply when a concurrent attempt of the
 * same execution won). A scheduled run's reply is not written once its
 * execution has finished (cancelled while the model was answering: the
 * worker went away and nobody reads it); null is returned then.
 */
export async function persistReply(sql: Sql, args: {
  claims: string;
  userId: string;
  conversationId: string;
  content: string;
  toolCalls: Json | null;
  metadata: Json;
  executionId: string | null;
}): Promise<MessageRow | null> {
  const results = await statements(
    sql,
    lit.sqlText`
      select set_config('role', 'service_role', true), set_config('request.jwt.claims', ${lit.text(args.claims)}, true);
      select chat_private.save_reply(${lit.uuid(args.userId)}, ${lit.uuid(args.conversationId)},
        ${lit.text(args.content)}, ${lit.jsonb(args.toolCalls)}, ${lit.jsonb(args.metadata)},
        ${lit.uuid(args.executionId)}, ${FINISHED}) as message;`,
  );
  const rows = results[1] as { message: MessageRow | null }[];
  return rows[0]?.message ?? null;
}

/**
 * Run statements as the user (role authenticated + claims) in one
 * transaction. Used by the tools, which are rare enough that bound
 * parameters (and their extra round trips) cost nothing that matters.
 */
export async function asUser<T>(sql: Sql, claims: string, run: (tx: Tx) => Promise<T>): Promise<T> {
  return await sql.begin(async (tx) => {
    await tx`select set_config('role', 'authenticated', true), set_config('request.jwt.claims', ${claims}, true)`;
    return await run(tx);
  }) as T;
}
