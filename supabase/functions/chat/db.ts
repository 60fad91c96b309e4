// Every SQL statement of the chat function.
//
// Two short transactions per turn, none held during the model call:
//   tx1 (as the user: role authenticated + the user's claims, so RLS decides)
//       load agent, conversation and history, insert the user's message;
//   tx2 (as service_role with the user's claims) persist the reply through
//       chat_private.record_assistant_reply, which re-checks ownership.
// Each is ONE multi-statement query: one round trip, one implicit
// transaction (`set_config(..., true)` lasts until its end). Values enter
// those statements only as typed literals (../_shared/sql_literal.ts says
// why). `prepare: false` keeps the function usable through Supabase's
// transaction pooler.

import postgres from "postgres";
import { DEFAULT_HISTORY_MESSAGES, MAX_HISTORY_MESSAGES } from "../_shared/history.ts";
import * as lit from "../_shared/sql_literal.ts";

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

// The agent's settings.history_messages, clamped as history.ts clamps it, so
// the database returns no more rows than the window can use.
function agentCte(agentId: lit.Literal): lit.Literal {
  return lit.fragment(lit.sqlText`
  agent as (
    select a.id, a.system_prompt, a.model, a.settings,
           least(greatest(coalesce(
             case when jsonb_typeof(a.settings -> 'history_messages') = 'number'
                  then floor((a.settings ->> 'history_messages')::numeric) end, ${DEFAULT_LIMIT}), 1), ${HISTORY_ROWS_MAX})::integer as history_limit
    from public.agents a
    where a.id = ${agentId}
  )`);
}

const AGENT_JSON = lit.fragment(
  "json_build_object('id', id, 'system_prompt', system_prompt, 'model', model, 'settings', settings)",
);
const MESSAGE_JSON = lit.fragment(`json_build_object('id', m.id, 'role', m.role, 'content', m.content,
  'tool_calls', m.tool_calls, 'metadata', m.metadata, 'created_at', m.created_at)`);

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
}

/** Rows of a multi-statement query: postgres.js returns one result per statement. */
async function statements(sql: Sql, text: string): Promise<Record<string, unknown>[][]> {
  const results = await sql.unsafe(text) as unknown as Record<string, unknown>[][];
  return results;
}

/**
 * tx1 of a user turn, one round trip (one implicit transaction):
 *   1. count the request (rate_limit_hit runs as the connection's role; its
 *      verdict is kept in a transaction-local setting), then become the user;
 *   2. when no conversation is given, create one (the title comes from the
 *      first message, set by a trigger);
 *   3. under RLS: load agent, conversation and history, and insert the
 *      message only if nothing was refused, so a refused request writes no
 *      row (refused requests still count toward the rate limit window).
 */
export async function startUserTurn(sql: Sql, args: {
  userId: string;
  claims: string;
  agentId: string;
  conversationId: string | null;
  message: string;
  rateLimit: number;
  rateWindowS: number;
}): Promise<UserTurnStart> {
  const agentId = lit.uuid(args.agentId);
  // set_config('role', …, true) is `set local role` (PostgREST does the same). In one
  // statement with rate_limit_hit: the function's EXECUTE privilege is checked when the
  // statement starts, as the connection's role, and the new role applies from the next.
  const becomeUser = lit.sqlText`
    select set_config('chat.rate_wait',
             chat_private.rate_limit_hit(${lit.uuid(args.userId)}, ${lit.int(args.rateLimit)},
                                         ${lit.int(args.rateWindowS)})::text, true),
           set_config('chat.conversation_id', ${lit.text(args.conversationId ?? "")}, true),
           set_config('role', 'authenticated', true),
           set_config('request.jwt.claims', ${lit.text(args.claims)}, true);`;
  const createConversation = args.conversationId !== null ? "" : lit.sqlText`
    with created as (
      insert into public.conversation_sessions (agent_id)
      select a.id from public.agents a
      where a.id = ${agentId} and current_setting('chat.rate_wait')::integer = 0
      returning id
    )
    select set_config('chat.conversation_id', coalesce((select id::text from created), ''), true);`;
  const turn = lit.sqlText`
    with ${agentCte(agentId)},
    conv as (
      select c.id, c.agent_id from public.conversation_sessions c
      where c.id = nullif(current_setting('chat.conversation_id'), '')::uuid and c.deleted_at is null
    ),
    target as (
      select conv.id from conv join agent on agent.id = conv.agent_id
      where current_setting('chat.rate_wait')::integer = 0
    ),
    ins as (
      insert into public.chat_messages_v2 (conversation_id, role, content)
      select target.id, 'user', ${lit.text(args.message)} from target
      returning id, created_at
    ),
    hist as (
      select h.* from (
        -- a constant inner limit lets the planner walk the (conversation_id, created_at, id)
        -- index backwards however long the conversation is; the agent's own limit applies outside
        select m.id, m.role, m.content, m.created_at from public.chat_messages_v2 m
        where m.conversation_id = (select target.id from target) and m.role in ('user', 'assistant')
        order by m.created_at desc, m.id desc
        limit ${HISTORY_ROWS_MAX}
      ) h
      order by h.created_at desc, h.id desc
      limit (select agent.history_limit from agent)
    )
    select
      current_setting('chat.rate_wait')::integer as wait,
      (select ${AGENT_JSON} from agent) as agent,
      (select json_build_object('id', id, 'agent_id', agent_id) from conv) as conversation,
      (select json_build_object('id', id, 'created_at', created_at) from ins) as user_message,
      coalesce((select json_agg(json_build_object('role', role, 'content', content)
                                order by created_at desc, id desc) from hist), '[]'::json) as history;`;
  const results = await statements(sql, becomeUser + createConversation + turn);
  const row = results[results.length - 1][0] as {
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
  };
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
  executionStatus: string | null;
  /** Messages up to and including the scheduled one, newest first. */
  history: HistoryRow[];
}

/**
 * tx1 of an act-as turn. First, as service_role, check that user, agent and
 * conversation belong together; only when they do, become the user and read
 * everything else under the user's RLS (one round trip each).
 */
export async function startActAsTurn(sql: Sql, args: {
  claims: string;
  userId: string;
  agentId: string;
  conversationId: string;
  executionId: string;
  userMessageId: string;
}): Promise<ActAsStart> {
  const checked = await statements(
    sql,
    lit.sqlText`
      select set_config('role', 'service_role', true);
      select chat_private.check_act_as(${lit.uuid(args.userId)}, ${lit.uuid(args.agentId)},
                                       ${lit.uuid(args.conversationId)}) as verdict;`,
  );
  const verdict = String(checked[1][0].verdict);
  if (verdict !== "ok") {
    return {
      verdict,
      agent: null,
      conversation: null,
      userMessage: null,
      reply: null,
      executionStatus: null,
      history: [],
    };
  }
  const conversationId = lit.uuid(args.conversationId);
  const executionId = lit.uuid(args.executionId);
  const results = await statements(
    sql,
    lit.sqlText`
      select set_config('role', 'authenticated', true), set_config('request.jwt.claims', ${lit.text(args.claims)}, true);
      with ${agentCte(lit.uuid(args.agentId))},
      conv as (
        select c.id, c.agent_id from public.conversation_sessions c
        where c.id = ${conversationId} and c.deleted_at is null
      ),
      um as (
        select m.id, m.conversation_id, m.role, m.execution_id, m.created_at
        from public.chat_messages_v2 m where m.id = ${lit.uuid(args.userMessageId)}
      ),
      reply as (
        select m.id, m.role, m.content, m.tool_calls, m.metadata, m.created_at
        from public.chat_messages_v2 m
        where m.execution_id = ${executionId} and m.role = 'assistant'
      ),
      hist as (
        select h.* from (
          select m.id, m.role, m.content, m.created_at from public.chat_messages_v2 m
          where m.conversation_id = ${conversationId} and m.role in ('user', 'assistant')
            and (m.created_at, m.id) <= (select um.created_at, um.id from um where um.conversation_id = ${conversationId})
          order by m.created_at desc, m.id desc
          limit ${HISTORY_ROWS_MAX}
        ) h
        order by h.created_at desc, h.id desc
        limit (select agent.history_limit from agent)
      )
      select
        (select ${AGENT_JSON} from agent) as agent,
        (select json_build_object('id', id, 'agent_id', agent_id) from conv) as conversation,
        (select json_build_object('id', id, 'conversation_id', conversation_id, 'role', role,
                                  'execution_id', execution_id) from um) as user_message,
        (select ${MESSAGE_JSON} from reply m) as reply,
        (select e.status from public.agent_task_executions e where e.id = ${executionId}) as execution_status,
        coalesce((select json_agg(json_build_object('role', role, 'content', content)
                                  order by created_at desc, id desc) from hist), '[]'::json) as history;`,
  );
  const row = results[1][0] as {
    agent: AgentRow | null;
    conversation: { id: string; agent_id: string } | null;
    user_message: ActAsStart["userMessage"];
    reply: MessageRow | null;
    execution_status: string | null;
    history: HistoryRow[];
  };
  return {
    verdict,
    agent: row.agent,
    conversation: row.conversation,
    userMessage: row.user_message,
    reply: row.reply,
    executionStatus: row.execution_status,
    history: row.history,
  };
}

/** Execution statuses after which nobody waits for a reply. */
export const FINISHED_EXECUTION_STATUSES = ["succeeded", "failed", "timed_out", "needs_input", "cancelled", "skipped"];
const FINISHED = lit.fragment(FINISHED_EXECUTION_STATUSES.map((s) => `'${s}'`).join(", "));

/**
 * tx2: persist the assistant's reply once, in one round trip, as
 * service_role with the user's claims. record_assistant_reply returns only
 * the id; a transaction-local setting hands it to the next statement, which
 * reads the stored row (the earlier reply when a concurrent attempt of the
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
  const executionId = lit.uuid(args.executionId);
  const results = await statements(
    sql,
    lit.sqlText`
      select set_config('role', 'service_role', true), set_config('request.jwt.claims', ${lit.text(args.claims)}, true);
      select set_config('chat.reply_id', coalesce((
        select chat_private.record_assistant_reply(
          ${lit.uuid(args.userId)}, ${lit.uuid(args.conversationId)}, ${lit.text(args.content)},
          ${lit.jsonb(args.toolCalls)}, ${lit.jsonb(args.metadata)}, ${executionId})::text
        where not exists (select 1 from public.agent_task_executions e
                          where e.id = ${executionId} and e.status in (${FINISHED})
                            and not exists (select 1 from public.chat_messages_v2 r
                                            where r.execution_id = e.id and r.role = 'assistant'))
      ), ''), true);
      select ${MESSAGE_JSON} as message
      from public.chat_messages_v2 m
      where m.id = nullif(current_setting('chat.reply_id'), '')::uuid;`,
  );
  const rows = results[2] as { message: MessageRow }[];
  return rows.length > 0 ? rows[0].message : null;
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
