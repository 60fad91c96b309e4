-- Agents, conversations and messages.

-- An agent a user owns: its system prompt, model and settings.
create table public.agents (
  id uuid primary key default gen_random_uuid(),
  user_id uuid not null default auth.uid() references auth.users (id) on delete cascade,
  name text not null check (char_length(btrim(name)) between 1 and 100),
  system_prompt text not null default '' check (char_length(system_prompt) <= 20000),
  model text not null default 'gpt-4o-mini' check (char_length(model) between 1 and 200),
  -- temperature, max_tokens, history_messages, history_token_budget, tools
  settings jsonb not null default '{}'::jsonb check (jsonb_typeof(settings) = 'object'),
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  -- target of the composite foreign keys that keep an agent's conversations
  -- and tasks with the agent's owner
  unique (id, user_id)
);
comment on table public.agents is 'An AI agent owned by a user.';
create index agents_user_id_idx on public.agents (user_id, created_at desc);
create trigger agents_set_updated_at before update on public.agents
  for each row execute function scheduler.set_updated_at();

-- The operator's limits on agents (scheduler.limits, docs/security.md):
-- settings size for every writer; for users (the API roles) also the model
-- allow-list and the clamps on max_tokens and history_token_budget. Checked
-- only when the write changes model or settings.
-- security definer: reads scheduler.limits, which users cannot read.
create or replace function scheduler.agents_before_write() returns trigger
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_error text;
  v_models text[];
  v_max bigint;
  v_key text;
  v_limit text;
begin
  if tg_op = 'UPDATE' and new.model is not distinct from old.model
     and new.settings is not distinct from old.settings then
    return new;
  end if;
  v_error := scheduler.json_size_error('settings', new.settings, 'max_agent_settings_bytes');
  if v_error is not null then
    raise exception '%', v_error using errcode = '22023';
  end if;
  -- security definer: the caller's API role is the `role` setting
  if current_setting('role', true) not in ('anon', 'authenticated') then
    return new;
  end if;
  v_models := scheduler.allowed_models();
  if v_models is not null and new.model <> all (v_models)
     and (tg_op = 'INSERT' or new.model is distinct from old.model) then
    raise exception 'model % is not allowed here; allowed models: % (allowed_models)',
      new.model, array_to_string(v_models, ', ') using errcode = '22023';
  end if;
  -- the clamps: settings key, limit
  for v_key, v_limit in values ('max_tokens', 'max_output_tokens'),
                               ('history_token_budget', 'max_history_token_budget') loop
    v_max := scheduler.limit_int(v_limit);
    if jsonb_typeof(new.settings -> v_key) = 'number' and (new.settings ->> v_key)::numeric > v_max then
      raise exception 'settings.% is %; the limit is % (%)', v_key, new.settings ->> v_key, v_max, v_limit
        using errcode = '22023';
    end if;
  end loop;
  return new;
end
$$;
create trigger agents_before_write before insert or update on public.agents
  for each row execute function scheduler.agents_before_write();

-- A conversation between a user and one of their agents. The counters and the
-- preview are kept by a trigger on chat_messages_v2 so list pages read one row.
create table public.conversation_sessions (
  id uuid primary key default gen_random_uuid(),
  user_id uuid not null default auth.uid() references auth.users (id) on delete cascade,
  agent_id uuid not null,
  title text check (char_length(title) <= 200),
  archived_at timestamptz,
  deleted_at timestamptz,
  last_message_at timestamptz,
  message_count integer not null default 0 check (message_count >= 0),
  last_message_preview text,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  -- the list order: a plain column, so a keyset condition on it is an index
  -- condition under RLS (an expression like coalesce() is not leakproof, and
  -- behind the policy it would only filter: page N read every row before it)
  activity_at timestamptz generated always as (coalesce(last_message_at, created_at)) stored,
  -- the agent must belong to the same user
  foreign key (agent_id, user_id) references public.agents (id, user_id) on delete cascade,
  -- target of the composite foreign key from agent_tasks
  unique (id, user_id, agent_id)
);
comment on table public.conversation_sessions is
  'A conversation (conversation_id) between a user and an agent; archived and soft-deleted states, list counters.';
-- conversation list by user (and agent), most recent first
create index conversation_sessions_user_recent_idx
  on public.conversation_sessions (user_id, activity_at desc, id desc)
  where deleted_at is null;
create index conversation_sessions_agent_idx on public.conversation_sessions (agent_id, user_id);
-- RLS filters and user deletes that do not filter on deleted_at
create index conversation_sessions_user_idx on public.conversation_sessions (user_id);
create trigger conversation_sessions_set_updated_at before update on public.conversation_sessions
  for each row execute function scheduler.set_updated_at();

-- A message. Scheduled runs write a user message with
-- metadata = {source: 'scheduler', task_id, execution_id, trigger_type} and the
-- assistant's reply, both carrying execution_id.
create table public.chat_messages_v2 (
  id uuid primary key default gen_random_uuid(),
  conversation_id uuid not null references public.conversation_sessions (id) on delete cascade,
  user_id uuid not null default auth.uid() references auth.users (id) on delete cascade,
  role text not null check (role in ('user', 'assistant', 'system', 'tool')),
  content text not null,
  metadata jsonb not null default '{}'::jsonb check (jsonb_typeof(metadata) = 'object'),
  -- [{id, name, arguments, result, status, duration_ms}]
  tool_calls jsonb check (tool_calls is null or jsonb_typeof(tool_calls) = 'array'),
  execution_id uuid,
  created_at timestamptz not null default clock_timestamp(),
  constraint chat_messages_v2_user_content_length
    check (role <> 'user' or char_length(content) <= 10000),
  constraint chat_messages_v2_content_length check (char_length(content) <= 200000),
  -- a scheduled prompt names its run in metadata, where the name outlives the run:
  -- deleting the task or purging history sets the execution_id column null
  -- (the foreign key below), and the message keeps its badge
  constraint chat_messages_v2_scheduler_metadata
    check ((metadata ->> 'source') is distinct from 'scheduler' or (metadata ->> 'execution_id') is not null)
);
comment on table public.chat_messages_v2 is 'Messages of a conversation; execution_id is set only by scheduled runs.';
-- history by conversation, oldest first
create index chat_messages_v2_conversation_idx on public.chat_messages_v2 (conversation_id, created_at, id);
create index chat_messages_v2_user_idx on public.chat_messages_v2 (user_id);
-- one user message and one assistant reply per execution: retries never duplicate
create unique index chat_messages_v2_execution_role_key
  on public.chat_messages_v2 (execution_id, role)
  where execution_id is not null and role in ('user', 'assistant');

-- Nobody but the scheduler path writes scheduler messages. The scheduler's
-- functions run as their owner; the API roles (even service_role, which
-- bypasses RLS) are refused. `source = 'scheduler'`, `task_id`,
-- `execution_id` and `trigger_type` are the scheduler's whatever their
-- spelling: case and every character that is not an ASCII letter or digit
-- (spaces, underscores, dashes, zero-width characters) are ignored in keys
-- and in the source's value, so {"Source": "scheduler"}, "scheduler ",
-- "scheduler\u200b" and "taskId" are refused too (a user's own
-- {"source": "web"} is not). (security invoker on purpose: inside
-- the scheduler's security definer functions current_user is their owner.)
create or replace function scheduler.guard_chat_message() returns trigger
language plpgsql
set search_path = ''
as $$
declare
  v_key text;
begin
  if current_user in ('anon', 'authenticated', 'service_role', 'authenticator') then
    select k.key into v_key
    from jsonb_each(case when jsonb_typeof(new.metadata) = 'object' then new.metadata else '{}' end) k
    where regexp_replace(lower(k.key), '[^a-z0-9]', '', 'g') in ('taskid', 'executionid', 'triggertype')
       or (regexp_replace(lower(k.key), '[^a-z0-9]', '', 'g') = 'source'
           and regexp_replace(lower(k.value #>> '{}'), '[^a-z0-9]', '', 'g') = 'scheduler')
    limit 1;
    if new.execution_id is not null or v_key is not null then
      raise exception 'only the scheduler may write messages with metadata.source = ''scheduler'' or an execution_id'
        using errcode = '42501',
              detail = format('refused: %s (the scheduler''s keys source = scheduler, task_id, execution_id '
                              'and trigger_type, in any spelling)', coalesce(quote_literal(v_key), 'execution_id'));
    end if;
  end if;
  if tg_op = 'UPDATE' and new.conversation_id is distinct from old.conversation_id then
    raise exception 'a message cannot move to another conversation' using errcode = '42501';
  end if;
  return new;
end
$$;
-- The WHEN clauses (evaluated by the executor, as the writing role) call the
-- function only when it has something to check: an API role writing an
-- execution_id or any metadata at all (most messages have none); current_user
-- there is the same role the function sees.
create trigger chat_messages_v2_guard before insert or update on public.chat_messages_v2
  for each row
  when ((new.execution_id is not null or new.metadata <> '{}'::jsonb)
        and current_user in ('anon', 'authenticated', 'service_role', 'authenticator'))
  execute function scheduler.guard_chat_message();
create trigger chat_messages_v2_guard_move before update on public.chat_messages_v2
  for each row when (new.conversation_id is distinct from old.conversation_id)
  execute function scheduler.guard_chat_message();

-- The conversation's counters, preview and title are kept by
-- scheduler.chat_message_after_insert (migration 20261121000700_task_lifecycle.sql:
-- one AFTER INSERT trigger that also resumes a task waiting for the user).

-- A message's user_id is its conversation's owner; its metadata within the size cap.
create or replace function scheduler.message_owner() returns trigger
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_owner uuid;
  v_error text;
begin
  -- the metadata size cap, for every writer (scheduler.limits)
  if new.metadata <> '{}'::jsonb then
    v_error := scheduler.json_size_error('metadata', new.metadata, 'max_message_metadata_bytes');
    if v_error is not null then
      raise exception '%', v_error using errcode = '22023';
    end if;
  end if;
  select user_id into v_owner from public.conversation_sessions where id = new.conversation_id;
  if v_owner is not null and new.user_id is distinct from v_owner then
    -- security definer: the caller's API role is the `role` setting, not current_user
    -- the very error RLS gives for a conversation that does not exist, so
    -- another user's conversation id reveals nothing
    if current_setting('role', true) in ('anon', 'authenticated') then
      raise exception 'new row violates row-level security policy for table "chat_messages_v2"'
        using errcode = '42501';
    end if;
    new.user_id := v_owner;
  end if;
  return new;
end
$$;
create trigger chat_messages_v2_owner before insert on public.chat_messages_v2
  for each row execute function scheduler.message_owner();
