-- The chat edge function's per-turn SQL as functions.
--
-- Why: the function may not use prepared statements (`prepare: false`, for
-- Supabase's transaction pooler), so each turn's multi-statement SQL used to
-- be parsed and planned anew on every request (~1 ms of Postgres CPU per
-- turn). PL/pgSQL caches the plans of a function's statements per
-- connection, so a request now sends one short call per transaction and the
-- plans are reused for as long as the pooled connection lives.
--
-- `chat_turn` holds ONLY security invoker functions that the chat function
-- calls after `set_config('role', 'authenticated', true)` and the user's
-- claims: they run under the user's RLS and do nothing the user could not do
-- with supabase-js themselves (read their own agent, conversation and
-- messages, start a conversation, post a user message). So authenticated may
-- use the schema and call them; anon may not. PostgREST does not expose the
-- schema (keep it out of `[api] schemas`). What needs more than RLS (the
-- rate limit, the act-as check, the assistant's reply) stays in
-- chat_private, callable by service_role only.

-- Plans: PL/pgSQL plans each statement with its actual values for the first
-- five calls, then keeps a generic plan only if it looks no costlier; several
-- of the turn's statements (RLS filters, partial indexes, a parameter LIMIT)
-- never qualify and were re-planned on every call (~0.5 ms of the ~2 ms per
-- turn, measured serially). `plan_cache_mode = force_generic_plan` on the turn
-- functions, nested calls and triggers included, plans each statement once
-- per connection (as scheduler.claim_executions does).
--
-- A generic plan is kept until the tables' statistics change, so a plan
-- made while a table is small (a new project, stats not yet analyzed) stays
-- for a while. The history query could then read all of a user's messages through
-- chat_messages_v2_user_idx (the RLS filter) and sort them: 2.7 ms at 5,000
-- messages, measured. `enable_sort = off` in the turn functions (which sort
-- nothing else) makes the planner walk chat_messages_v2_conversation_idx
-- backwards and stop at the limit, whatever the statistics say.

create schema if not exists chat_turn;
revoke all on schema chat_turn from public;
grant usage on schema chat_turn to authenticated, service_role;
alter default privileges in schema chat_turn revoke execute on functions from public;

-- The agent's settings as the turn uses them: max_tokens and
-- history_token_budget clamped to the operator's max_output_tokens and
-- max_history_token_budget (scheduler.limits), which chat_private.turn_check
-- left in transaction-local settings earlier in the same transaction (users
-- cannot read scheduler.limits). The write trigger refuses larger values
-- from users; this holds for agents written before a limit was lowered, or
-- by the operator.
create or replace function chat_turn.clamped_settings(p_settings jsonb) returns jsonb
language plpgsql
stable
set search_path = ''
as $$
declare
  v_settings jsonb := p_settings;
  v_key text;
  v_max numeric;
begin
  foreach v_key in array array['max_tokens', 'history_token_budget'] loop
    v_max := nullif(current_setting('chat.limit_' || v_key, true), '')::numeric;
    if v_max is not null and jsonb_typeof(v_settings -> v_key) = 'number'
       and (v_settings ->> v_key)::numeric > v_max then
      v_settings := jsonb_set(v_settings, array[v_key], to_jsonb(v_max));
    end if;
  end loop;
  return v_settings;
end
$$;

-- tx1 of a user's turn, under the user's RLS (security invoker: the caller
-- has already become role authenticated with the user's claims; every read
-- and write below is one the user may make through supabase-js). p_rate_wait
-- is chat_private.rate_limit_hit's verdict, counted by the caller as its own
-- role in the statement before: > 0 means refused, and nothing is read or
-- written. When p_conversation_id is null a conversation is started (its
-- title comes from the first message, set by a trigger). The user's message
-- is inserted only when the agent and conversation are the user's and go
-- together, so a refused request writes no row. history: prior user and
-- assistant messages, newest first (read before the insert, so without the
-- new message).
create or replace function chat_turn.user_turn_begin(
  p_rate_wait integer,
  p_agent_id uuid,
  p_conversation_id uuid,
  p_message text,
  p_history_default integer,
  p_history_max integer,
  out wait integer,
  out agent json,
  out conversation json,
  out user_message json,
  out history json
)
language plpgsql
security invoker
set search_path = ''
-- see "Plans" at the top of this file
set enable_sort = off
set plan_cache_mode = force_generic_plan
as $$
declare
  v_agent record;
  v_limit integer;
  v_conversation_id uuid := p_conversation_id;
  v_conversation_agent uuid;
  v_message_id uuid;
  v_message_at timestamptz;
begin
  wait := p_rate_wait;
  history := '[]'::json;
  if p_rate_wait > 0 then
    return;
  end if;
  select a.id, a.system_prompt, a.model, a.settings into v_agent
  from public.agents a where a.id = p_agent_id;
  if not found then
    return;
  end if;
  agent := json_build_object('id', v_agent.id, 'system_prompt', v_agent.system_prompt,
                             'model', v_agent.model, 'settings', chat_turn.clamped_settings(v_agent.settings));
  if v_conversation_id is null then
    insert into public.conversation_sessions (agent_id) values (p_agent_id)
    returning id into v_conversation_id;
  end if;
  select c.agent_id into v_conversation_agent from public.conversation_sessions c
  where c.id = v_conversation_id and c.deleted_at is null;
  if not found then
    return;
  end if;
  conversation := json_build_object('id', v_conversation_id, 'agent_id', v_conversation_agent);
  if v_conversation_agent <> v_agent.id then
    return;
  end if;
  -- the agent's settings.history_messages clamped as _shared/history.ts clamps it,
  -- so the database returns no more rows than the window can use
  v_limit := least(greatest(coalesce(
      case when jsonb_typeof(v_agent.settings -> 'history_messages') = 'number'
           then floor((v_agent.settings ->> 'history_messages')::numeric) end, p_history_default), 1), p_history_max)::integer;
  select coalesce(json_agg(json_build_object('role', h.role, 'content', h.content)
                           order by h.created_at desc, h.id desc), '[]'::json)
  into history
  from (select m.id, m.role, m.content, m.created_at from public.chat_messages_v2 m
        where m.conversation_id = v_conversation_id and m.role in ('user', 'assistant')
        order by m.created_at desc, m.id desc
        limit v_limit) h;
  insert into public.chat_messages_v2 (conversation_id, role, content)
  values (v_conversation_id, 'user', p_message)
  returning id, created_at into v_message_id, v_message_at;
  user_message := json_build_object('id', v_message_id, 'created_at', v_message_at);
end
$$;
comment on function chat_turn.user_turn_begin(integer, uuid, uuid, text, integer, integer) is
  'tx1 of a user turn, under the user''s RLS: agent, conversation (started when none is given), history, the user''s message.';

-- tx1 of an act-as turn (the scheduler's worker acting as the task's owner),
-- under that user's RLS (security invoker, like user_turn_begin: reads only
-- what the user may read). p_context_ok is chat_private.check_act_as's
-- verdict = 'ok', checked by the caller as service_role in the statement
-- before; when false nothing is read. user_message: the scheduled user
-- message as the user sees it; reply: the assistant message already stored
-- for this execution (a replay); execution_status: null when the execution
-- is not the user's; history: messages up to and including the scheduled
-- one, newest first; task: the task being run (name, run number, schedule,
-- state, system_addon) for the scheduled turn's system prompt.
create or replace function chat_turn.act_as_turn_begin(
  p_context_ok boolean,
  p_agent_id uuid,
  p_conversation_id uuid,
  p_execution_id uuid,
  p_user_message_id uuid,
  p_history_default integer,
  p_history_max integer,
  out agent json,
  out conversation json,
  out user_message json,
  out reply json,
  out execution_status text,
  out history json,
  out task json
)
language plpgsql
stable
security invoker
set search_path = ''
-- see "Plans" at the top of this file
set enable_sort = off
set plan_cache_mode = force_generic_plan
as $$
declare
  v_agent record;
  v_limit integer;
  v_conversation record;
  v_message record;
begin
  history := '[]'::json;
  if not p_context_ok then
    return;
  end if;
  select a.id, a.system_prompt, a.model, a.settings into v_agent
  from public.agents a where a.id = p_agent_id;
  if found then
    agent := json_build_object('id', v_agent.id, 'system_prompt', v_agent.system_prompt,
                               'model', v_agent.model,
                               'settings', chat_turn.clamped_settings(v_agent.settings));
  end if;
  select c.id, c.agent_id into v_conversation from public.conversation_sessions c
  where c.id = p_conversation_id and c.deleted_at is null;
  if found then
    conversation := json_build_object('id', v_conversation.id, 'agent_id', v_conversation.agent_id);
  end if;
  select m.id, m.conversation_id, m.role, m.execution_id, m.created_at into v_message
  from public.chat_messages_v2 m where m.id = p_user_message_id;
  if found then
    user_message := json_build_object('id', v_message.id, 'conversation_id', v_message.conversation_id,
                                      'role', v_message.role, 'execution_id', v_message.execution_id);
  end if;
  select json_build_object('id', m.id, 'role', m.role, 'content', m.content, 'tool_calls', m.tool_calls,
                           'metadata', m.metadata, 'created_at', m.created_at)
  into reply
  from public.chat_messages_v2 m
  where m.execution_id = p_execution_id and m.role = 'assistant';
  select e.status,
         json_build_object('id', t.id, 'name', t.name, 'run_count', t.run_count,
                           'schedule_type', t.schedule_type, 'cron_expression', t.cron_expression,
                           'interval_seconds', t.interval_seconds, 'run_at', t.run_at, 'timezone', t.timezone,
                           'ends_at', t.ends_at, 'max_runs', t.max_runs, 'state', t.state,
                           'system_addon', t.system_addon,
                           'trigger_type', e.trigger_type)
  into execution_status, task
  from public.agent_task_executions e
  left join public.agent_tasks t on t.id = e.task_id
  where e.id = p_execution_id;
  if v_agent.id is not null and v_message.conversation_id = p_conversation_id then
    v_limit := least(greatest(coalesce(
        case when jsonb_typeof(v_agent.settings -> 'history_messages') = 'number'
             then floor((v_agent.settings ->> 'history_messages')::numeric) end, p_history_default), 1), p_history_max)::integer;
    select coalesce(json_agg(json_build_object('role', h.role, 'content', h.content)
                             order by h.created_at desc, h.id desc), '[]'::json)
    into history
    from (select m.id, m.role, m.content, m.created_at from public.chat_messages_v2 m
          where m.conversation_id = p_conversation_id and m.role in ('user', 'assistant')
            and (m.created_at, m.id) <= (v_message.created_at, v_message.id)
          order by m.created_at desc, m.id desc
          limit v_limit) h;
  end if;
end
$$;
comment on function chat_turn.act_as_turn_begin(boolean, uuid, uuid, uuid, uuid, integer, integer) is
  'tx1 of an act-as turn, under the user''s RLS: agent, conversation, the scheduled message, a stored reply, history, the task.';

revoke execute on all functions in schema chat_turn from public, anon;
grant execute on function
  chat_turn.clamped_settings(jsonb),
  chat_turn.user_turn_begin(integer, uuid, uuid, text, integer, integer),
  chat_turn.act_as_turn_begin(boolean, uuid, uuid, uuid, uuid, integer, integer)
to authenticated, service_role;
