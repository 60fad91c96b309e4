-- The act-as boundary: `chat_private`, what the chat edge function needs
-- beyond the user's RLS, callable by service_role only. The act-as check
-- (does a worker's context belong together?) is chat_private.act_as_context;
-- the assistant's reply is written once per execution by
-- record_assistant_reply (through save_reply), which also counts the usage
-- the model reported toward the budgets; user calls are rate limited per
-- user; turn_check applies the operator's limits to every turn.

-- The act-as check, the database's half (the function's HTTP-level half is
-- in supabase/functions): does a service call's context belong together?
-- Returns the verified context: verdict 'ok' with the user, agent and
-- conversation (NULL when none was named) it may act in, or a refusal with
-- NULL ids: 'agent_not_found' / 'conversation_not_found' (no such row at all,
-- 404) or 'context_mismatch' (rows exist but belong to someone else, 403).
create or replace function chat_private.act_as_context(
  p_user_id uuid, p_agent_id uuid, p_conversation_id uuid,
  out verdict text, out user_id uuid, out agent_id uuid, out conversation_id uuid
)
language plpgsql
stable
security definer
set search_path = ''
as $$
declare
  v_agent_owner uuid;
  v_conv public.conversation_sessions;
begin
  select a.user_id into v_agent_owner from public.agents a where a.id = p_agent_id;
  if not found then
    verdict := 'agent_not_found';
    return;
  end if;
  if v_agent_owner <> p_user_id then
    verdict := 'context_mismatch';
    return;
  end if;
  if p_conversation_id is not null then
    select * into v_conv from public.conversation_sessions c where c.id = p_conversation_id;
    if not found or v_conv.deleted_at is not null then
      verdict := 'conversation_not_found';
      return;
    end if;
    if v_conv.user_id <> p_user_id or v_conv.agent_id <> p_agent_id then
      verdict := 'context_mismatch';
      return;
    end if;
  end if;
  verdict := 'ok';
  user_id := p_user_id;
  agent_id := p_agent_id;
  conversation_id := p_conversation_id;
end
$$;

-- The verdict of act_as_context alone ('ok' or the refusal), under the name
-- the chat function calls.
create or replace function chat_private.check_act_as(
  p_user_id uuid, p_agent_id uuid, p_conversation_id uuid
) returns text
language sql
stable
security definer
set search_path = ''
as $$
  select (chat_private.act_as_context(p_user_id, p_agent_id, p_conversation_id)).verdict
$$;
-- Persist the assistant's reply. The function calls this only after the
-- user's own RLS context has read the conversation; it checks ownership again
-- and is idempotent per execution_id (a retried run never gets two replies).
-- Returns the message id (the existing one on replay).
create or replace function chat_private.record_assistant_reply(
  p_user_id uuid,
  p_conversation_id uuid,
  p_content text,
  p_tool_calls jsonb default null,
  p_metadata jsonb default '{}'::jsonb,
  p_execution_id uuid default null
) returns uuid
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_id uuid;
  v_status text;
begin
  perform 1 from public.conversation_sessions c
  where c.id = p_conversation_id and c.user_id = p_user_id and c.deleted_at is null;
  if not found then
    raise exception 'conversation % not found for this user', p_conversation_id using errcode = 'P0002';
  end if;
  if p_execution_id is not null then
    select e.status into v_status from public.agent_task_executions e
    where e.id = p_execution_id and e.user_id = p_user_id and e.conversation_id = p_conversation_id;
    if not found then
      raise exception 'execution % does not belong to conversation %', p_execution_id, p_conversation_id
        using errcode = '42501';
    end if;
    -- a replay returns the stored reply whatever the status; a new reply is
    -- written only while the run is live, so a cancelled (or already
    -- finished) run never gets one late. A run back in the queue is live: its
    -- worker's session ended (rescue_dead_workers, the lease) while this turn
    -- still called the model, and its next attempt replays the reply stored
    -- here (refused, the turn would be released and the model paid again).
    select m.id into v_id from public.chat_messages_v2 m
    where m.execution_id = p_execution_id and m.role = 'assistant';
    if v_id is not null then
      return v_id;
    end if;
    if v_status not in ('running', 'queued') then
      raise exception 'execution % is % and takes no reply', p_execution_id, v_status
        using errcode = '55000';
    end if;
  end if;
  insert into public.chat_messages_v2 (conversation_id, user_id, role, content, metadata, tool_calls, execution_id)
  values (p_conversation_id, p_user_id, 'assistant', p_content, coalesce(p_metadata, '{}'::jsonb),
          p_tool_calls, p_execution_id)
  on conflict (execution_id, role) where execution_id is not null and role in ('user', 'assistant')
  do nothing
  returning id into v_id;
  if v_id is not null then
    -- the budgets count what the model reported for this reply, once
    perform scheduler.count_usage(p_user_id, p_execution_id, p_metadata -> 'usage');
  end if;
  if v_id is null then
    select m.id into v_id from public.chat_messages_v2 m
    where m.execution_id = p_execution_id and m.role = 'assistant';
  end if;
  return v_id;
end
$$;

-- tx2: persist the assistant's reply once and return the stored row, run as
-- service_role (security invoker: what the chat function's service_role could
-- do statement by statement; the privileged write is record_assistant_reply,
-- which re-checks ownership and is idempotent per execution). A scheduled
-- run's reply is not written once its execution has finished (p_finished:
-- the statuses after which nobody waits) unless a reply is already stored;
-- null is returned then. On a replay (a concurrent attempt of the same
-- execution won) the earlier reply is returned.
create or replace function chat_private.save_reply(
  p_user_id uuid,
  p_conversation_id uuid,
  p_content text,
  p_tool_calls jsonb,
  p_metadata jsonb,
  p_execution_id uuid,
  p_finished text[]
) returns json
language plpgsql
security invoker
set search_path = ''
-- see "Plans" at the top of 20261121001000_chat_turn_functions.sql (it applies
-- to record_assistant_reply and the triggers it runs, too)
set plan_cache_mode = force_generic_plan
as $$
declare
  v_id uuid;
  v_message json;
begin
  if p_execution_id is not null and exists (
       select 1 from public.agent_task_executions e
       where e.id = p_execution_id and e.status = any (p_finished)
         and not exists (select 1 from public.chat_messages_v2 r
                         where r.execution_id = e.id and r.role = 'assistant')) then
    return null;
  end if;
  v_id := chat_private.record_assistant_reply(p_user_id, p_conversation_id, p_content, p_tool_calls,
                                              p_metadata, p_execution_id);
  select json_build_object('id', m.id, 'role', m.role, 'content', m.content, 'tool_calls', m.tool_calls,
                           'metadata', m.metadata, 'created_at', m.created_at)
  into v_message
  from public.chat_messages_v2 m where m.id = v_id;
  return v_message;
end
$$;
comment on function chat_private.save_reply(uuid, uuid, text, jsonb, jsonb, uuid, text[]) is
  'tx2 of a turn (service_role): the assistant''s reply stored once through record_assistant_reply, as stored.';

-- Per-user rate limits, in Postgres so they hold across function instances:
-- a fixed window per user and action ('chat': the chat function's user
-- calls; 'run_now' and 'retry': the client API, scheduler.action_rate_check).
create table chat_private.rate_limits (
  user_id uuid not null references auth.users (id) on delete cascade,
  action text not null default 'chat',
  window_started_at timestamptz not null,
  hits integer not null,
  primary key (user_id, action)
);
alter table chat_private.rate_limits enable row level security;
comment on table chat_private.rate_limits is 'Fixed-window request counters per user and action (chat turns, run now, retry).';

-- Count one request. Returns 0 when allowed, else the seconds to wait.
create or replace function chat_private.rate_limit_hit(
  p_user_id uuid, p_limit integer, p_window_seconds integer, p_now timestamptz default null,
  p_action text default 'chat'
) returns integer
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_now timestamptz := coalesce(p_now, clock_timestamp());
  v_row chat_private.rate_limits;
begin
  -- a valid token of a user who does not exist (never did, or was deleted)
  -- is an invalid credential: 28000, which the function answers with 401
  if not exists (select 1 from auth.users u where u.id = p_user_id) then
    raise exception 'unknown user' using errcode = '28000';
  end if;
  insert into chat_private.rate_limits as r (user_id, action, window_started_at, hits)
  values (p_user_id, p_action, v_now, 1)
  on conflict (user_id, action) do update set
    window_started_at = case when r.window_started_at <= v_now - make_interval(secs => p_window_seconds)
                             then v_now else r.window_started_at end,
    hits = case when r.window_started_at <= v_now - make_interval(secs => p_window_seconds)
                then 1 else r.hits + 1 end
  returning * into v_row;
  if v_row.hits <= p_limit then
    return 0;
  end if;
  return greatest(1, ceil(extract(epoch from (v_row.window_started_at
                                              + make_interval(secs => p_window_seconds) - v_now)))::integer);
end
$$;

-- The operator's limits on a turn, before the model is called (user and
-- act-as turns alike): the user's daily token budget (scheduler.budget_error;
-- SQLSTATE PT429, answered 429 budget_exhausted) and the model allow-list for
-- the agent's model (PT422, answered 422 model_not_allowed), so an agent
-- written before the operator narrowed the list is refused too. The clamps
-- on max_tokens and history_token_budget are left in transaction-local
-- settings for chat_turn.clamped_settings, which runs as the user.
create or replace function chat_private.turn_check(p_user_id uuid, p_agent_id uuid) returns boolean
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_error text := scheduler.budget_error(p_user_id, null);
  v_models text[] := scheduler.allowed_models();
  v_model text;
begin
  if v_error is not null then
    raise exception '%', v_error using errcode = 'PT429';
  end if;
  select a.model into v_model from public.agents a where a.id = p_agent_id and a.user_id = p_user_id;
  if v_model is not null and v_models is not null and v_model <> all (v_models) then
    raise exception 'model % is not allowed (allowed_models: %)', v_model, array_to_string(v_models, ', ')
      using errcode = 'PT422';
  end if;
  perform set_config('chat.limit_max_tokens',
                     coalesce(scheduler.limit_int('max_output_tokens')::text, ''), true),
          set_config('chat.limit_history_token_budget',
                     coalesce(scheduler.limit_int('max_history_token_budget')::text, ''), true);
  return true;
end
$$;

-- At most one model call per scheduled run: the turn of an execution in
-- flight in some function instance (started_at, renewed while the model is
-- called) makes a concurrent attempt of the same execution (a rescued run
-- whose first attempt's turn still runs) wait for its stored reply instead of
-- calling the model again. A turn whose instance died stops renewing and is
-- taken over once it is stale.
create table chat_private.scheduled_turns (
  execution_id uuid primary key references public.agent_task_executions (id) on delete cascade,
  started_at timestamptz not null,
  renewed_at timestamptz not null
);
alter table chat_private.scheduled_turns enable row level security;
comment on table chat_private.scheduled_turns is
  'The scheduled turn in flight per execution (chat function), so a second attempt waits for its reply.';

-- Take the turn of an execution: true when it is the caller's (none in
-- flight, or the one in flight was not renewed for p_stale_seconds, or no
-- such execution to coordinate on), false when another instance runs it.
create or replace function chat_private.take_scheduled_turn(p_execution_id uuid, p_stale_seconds double precision)
returns boolean
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_now timestamptz := clock_timestamp();
  v_taken boolean;
begin
  if not exists (select 1 from public.agent_task_executions e where e.id = p_execution_id) then
    return true;
  end if;
  insert into chat_private.scheduled_turns as t (execution_id, started_at, renewed_at)
  values (p_execution_id, v_now, v_now)
  on conflict (execution_id) do update set started_at = v_now, renewed_at = v_now
    where t.renewed_at < v_now - make_interval(secs => p_stale_seconds)
  returning true into v_taken;
  return coalesce(v_taken, false);
end
$$;

-- The turn in flight is alive: renewed while its model call runs.
create or replace function chat_private.renew_scheduled_turn(p_execution_id uuid)
returns void
language sql
security definer
set search_path = ''
as $$
  update chat_private.scheduled_turns set renewed_at = clock_timestamp() where execution_id = p_execution_id
$$;

-- A turn that ended without storing a reply (the model failed) lets the next
-- attempt take over at once.
create or replace function chat_private.release_scheduled_turn(p_execution_id uuid)
returns void
language sql
security definer
set search_path = ''
as $$
  delete from chat_private.scheduled_turns where execution_id = p_execution_id
$$;

-- What a waiting attempt polls: the reply stored for the execution (null
-- while none), and whether another turn is still in flight (renewed within
-- p_stale_seconds).
create or replace function chat_private.scheduled_turn_state(p_execution_id uuid, p_stale_seconds double precision,
                                                             out reply json, out in_flight boolean)
language plpgsql
stable
security definer
set search_path = ''
as $$
begin
  select json_build_object('id', m.id, 'role', m.role, 'content', m.content, 'tool_calls', m.tool_calls,
                           'metadata', m.metadata, 'created_at', m.created_at)
  into reply
  from public.chat_messages_v2 m
  where m.execution_id = p_execution_id and m.role = 'assistant';
  in_flight := exists (select 1 from chat_private.scheduled_turns t
                       where t.execution_id = p_execution_id
                         and t.renewed_at >= clock_timestamp() - make_interval(secs => p_stale_seconds));
end
$$;

revoke execute on all functions in schema chat_private from public, anon, authenticated;
grant execute on function
  chat_private.act_as_context(uuid, uuid, uuid),
  chat_private.check_act_as(uuid, uuid, uuid),
  chat_private.record_assistant_reply(uuid, uuid, text, jsonb, jsonb, uuid),
  chat_private.save_reply(uuid, uuid, text, jsonb, jsonb, uuid, text[]),
  chat_private.rate_limit_hit(uuid, integer, integer, timestamptz, text),
  chat_private.turn_check(uuid, uuid),
  chat_private.take_scheduled_turn(uuid, double precision),
  chat_private.renew_scheduled_turn(uuid),
  chat_private.release_scheduled_turn(uuid),
  chat_private.scheduled_turn_state(uuid, double precision)
to service_role;
