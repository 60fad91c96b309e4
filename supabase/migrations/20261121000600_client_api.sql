-- Client actions that need more than a row write, called from supabase-js
-- with `supabase.rpc(...)`. Each checks that the caller owns the row; they
-- answer "not found" for other users' rows so ids cannot be probed.
-- security definer: executions are written only through the queue's guarded
-- transitions, never by a client directly.

create or replace function scheduler.owned_task(p_task_id uuid) returns public.agent_tasks
language plpgsql
stable
security definer
set search_path = ''
as $$
declare
  v_task public.agent_tasks;
begin
  if auth.uid() is null then
    raise exception 'not authenticated' using errcode = '42501';
  end if;
  select * into v_task from public.agent_tasks t where t.id = p_task_id and t.user_id = auth.uid();
  if not found then
    raise exception 'task % not found', p_task_id using errcode = 'P0002';
  end if;
  return v_task;
end
$$;

create or replace function scheduler.owned_execution(p_execution_id uuid)
returns public.agent_task_executions
language plpgsql
stable
security definer
set search_path = ''
as $$
declare
  v_exec public.agent_task_executions;
begin
  if auth.uid() is null then
    raise exception 'not authenticated' using errcode = '42501';
  end if;
  select * into v_exec from public.agent_task_executions e
  where e.id = p_execution_id and e.user_id = auth.uid();
  if not found then
    raise exception 'execution % not found', p_execution_id using errcode = 'P0002';
  end if;
  return v_exec;
end
$$;

-- Run a task now, whatever its schedule. Returns the new execution's id.
create or replace function public.run_task_now(p_task_id uuid) returns uuid
language plpgsql
security definer
set search_path = ''
as $$
begin
  perform scheduler.owned_task(p_task_id);
  return scheduler.enqueue_now(p_task_id, 'manual');
end
$$;
comment on function public.run_task_now(uuid) is 'Enqueue a manual run of one of your tasks; returns the execution id.';

-- Pause a task: no further occurrences; its queued scheduled runs are
-- cancelled (running ones finish). Operators call it directly.
create or replace function scheduler.pause_task(p_task_id uuid) returns public.agent_tasks
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_task public.agent_tasks;
begin
  update public.agent_tasks set status = 'paused' where id = p_task_id returning * into v_task;
  if not found then
    raise exception 'task % not found', p_task_id using errcode = 'P0002';
  end if;
  perform scheduler.cancel_execution(e.id, 'task paused')
  from public.agent_task_executions e
  where e.task_id = p_task_id and e.status = 'queued' and e.trigger_type = 'schedule';
  return v_task;
end
$$;

-- Resume a paused (or waiting, errored, completed) task: its next occurrence
-- is computed again from now. Operators call it directly.
create or replace function scheduler.resume_task(p_task_id uuid) returns public.agent_tasks
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_task public.agent_tasks;
begin
  update public.agent_tasks set
    status = 'active',
    state = state - 'pending_question' - 'waiting_conversation_id'
  where id = p_task_id and status <> 'active'
  returning * into v_task;
  if not found then
    select * into v_task from public.agent_tasks where id = p_task_id;
    if not found then
      raise exception 'task % not found', p_task_id using errcode = 'P0002';
    end if;
  end if;
  return v_task;
end
$$;

grant execute on function scheduler.pause_task(uuid), scheduler.resume_task(uuid) to service_role;

create or replace function public.pause_task(p_task_id uuid) returns public.agent_tasks
language plpgsql
security definer
set search_path = ''
as $$
begin
  perform scheduler.owned_task(p_task_id);
  return scheduler.pause_task(p_task_id);
end
$$;
comment on function public.pause_task(uuid) is 'Pause one of your tasks and cancel its queued scheduled runs.';

create or replace function public.resume_task(p_task_id uuid) returns public.agent_tasks
language plpgsql
security definer
set search_path = ''
as $$
begin
  perform scheduler.owned_task(p_task_id);
  return scheduler.resume_task(p_task_id);
end
$$;
comment on function public.resume_task(uuid) is 'Resume one of your tasks; the next occurrence is computed from now.';

-- Cancel a queued or running execution of yours.
create or replace function public.cancel_execution(p_execution_id uuid) returns boolean
language plpgsql
security definer
set search_path = ''
as $$
begin
  perform scheduler.owned_execution(p_execution_id);
  return scheduler.cancel_execution(p_execution_id, 'cancelled by the user');
end
$$;
comment on function public.cancel_execution(uuid) is
  'Cancel one of your queued or running executions; false when it had already finished.';

-- Re-run a failed, timed out, cancelled or skipped execution of yours.
create or replace function public.retry_execution(p_execution_id uuid) returns uuid
language plpgsql
security definer
set search_path = ''
as $$
begin
  perform scheduler.owned_execution(p_execution_id);
  return scheduler.retry_execution(p_execution_id);
end
$$;
comment on function public.retry_execution(uuid) is 'Re-run one of your finished executions; returns the new execution id.';

-- Check a schedule before saving it (for forms). Returns {} when valid, else
-- {field: reason} for cron_expression, timezone and prompt_template.
-- security definer: calls the private validators; reads no table.
create or replace function public.validate_schedule(
  p_schedule_type text,
  p_cron_expression text default null,
  p_timezone text default 'UTC',
  p_prompt_template text default null,
  p_prompt_variables jsonb default '{}'::jsonb
) returns jsonb
language sql
stable
security definer
set search_path = ''
as $$
  select jsonb_strip_nulls(jsonb_build_object(
    'schedule_type', case when p_schedule_type is null
                            or p_schedule_type not in ('cron', 'interval', 'once', 'manual')
                          then 'schedule_type must be cron, interval, once or manual' end,
    'cron_expression', case when p_schedule_type = 'cron' then scheduler.cron_error(p_cron_expression) end,
    'timezone', scheduler.timezone_error(p_timezone),
    'prompt_template', case when p_prompt_template is not null
                            then scheduler.template_error(p_prompt_template, coalesce(p_prompt_variables, '{}'::jsonb))
                       end))
$$;
comment on function public.validate_schedule(text, text, text, text, jsonb) is
  'Validate a schedule before saving: {} when valid, else {field: reason}.';

-- Conversations for list pages, most recent first, with a keyset cursor.
-- Pass the last row's next_cursor to get the following page. security
-- invoker: RLS decides which rows the caller sees.
create or replace function public.list_conversations(
  p_agent_id uuid default null,
  p_limit integer default 20,
  p_cursor text default null,
  p_include_archived boolean default false
) returns table (
  id uuid, agent_id uuid, title text, archived_at timestamptz, last_message_at timestamptz,
  message_count integer, last_message_preview text, created_at timestamptz, next_cursor text
)
language plpgsql
stable
set search_path = ''
as $$
declare
  v_after_at timestamptz;
  v_after_id uuid;
begin
  if p_limit is null or p_limit < 1 or p_limit > 100 then
    raise exception 'p_limit must be between 1 and 100' using errcode = '22023';
  end if;
  if p_cursor is not null then
    begin
      v_after_at := split_part(p_cursor, '|', 1)::timestamptz;
      v_after_id := split_part(p_cursor, '|', 2)::uuid;
    exception when others then
      raise exception 'invalid cursor %: pass next_cursor from the previous page', p_cursor
        using errcode = '22023';
    end;
  end if;
  return query
    select c.id, c.agent_id, c.title, c.archived_at, c.last_message_at, c.message_count,
           c.last_message_preview, c.created_at,
           to_char(coalesce(c.last_message_at, c.created_at) at time zone 'UTC',
                   'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') || '|' || c.id::text
    from public.conversation_sessions c
    where c.deleted_at is null
      and (p_include_archived or c.archived_at is null)
      and (p_agent_id is null or c.agent_id = p_agent_id)
      and (p_cursor is null
           or (coalesce(c.last_message_at, c.created_at), c.id) < (v_after_at, v_after_id))
    order by coalesce(c.last_message_at, c.created_at) desc, c.id desc
    limit p_limit;
end
$$;
comment on function public.list_conversations(uuid, integer, text, boolean) is
  'Your conversations, most recent first, with message_count and last_message_preview; keyset pagination via next_cursor.';

-- After a message is inserted, in one trigger (one function call per message):
--
-- 1. Keep the conversation's counters, preview and title, so list pages read
--    one row.
-- 2. A user's reply in a conversation where a task waits for input resumes
--    the task (seed 001: waiting_input -> active, pending question cleared,
--    the answer kept in state). The partial index below makes the check for
--    such a task an empty index probe for the (usual) user with none.
--
-- security definer: the counters are not writable by users, yet every user
-- message must move them; the user's message moves the task's status, which
-- users cannot set to arbitrary values themselves.
create or replace function scheduler.chat_message_after_insert() returns trigger
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_flat text;
begin
  -- whitespace collapsed: preview (160 characters) and title (200). Collapsing
  -- a prefix gives a prefix of the collapsed whole, so a long reply is not
  -- scanned to its end when the first 1,000 characters are enough.
  v_flat := regexp_replace(left(new.content, 1000), '\s+', ' ', 'g');
  if char_length(v_flat) < 202 and char_length(new.content) > 1000 then
    v_flat := regexp_replace(new.content, '\s+', ' ', 'g');
  end if;
  update public.conversation_sessions c set
    message_count = c.message_count + 1,
    last_message_at = greatest(coalesce(c.last_message_at, new.created_at), new.created_at),
    last_message_preview = left(v_flat, 160),
    title = coalesce(c.title, case when new.role = 'user' then nullif(left(btrim(v_flat), 200), '') end)
  where c.id = new.conversation_id;

  if new.role = 'user' and new.execution_id is null then
    update public.agent_tasks t set
      status = 'active',
      state = (t.state - 'pending_question' - 'waiting_conversation_id')
              || jsonb_build_object('last_answer', left(new.content, 2000),
                                    'answered_at', new.created_at)
    where t.user_id = new.user_id and t.status = 'waiting_input'
      and t.state ->> 'waiting_conversation_id' = new.conversation_id::text;
  end if;
  return null;
end
$$;
create trigger chat_messages_v2_after_insert after insert on public.chat_messages_v2
  for each row execute function scheduler.chat_message_after_insert();

-- the tasks waiting for their user's answer, probed on every user message
create index agent_tasks_waiting_input_idx on public.agent_tasks (user_id) where status = 'waiting_input';

-- ---------------------------------------------------------------------------
-- chat_private: what the chat edge function needs beyond the user's RLS.

-- Does an act-as context belong together? 'ok', or the refusal:
-- 'agent_not_found' / 'conversation_not_found' (no such row at all, 404) or
-- 'context_mismatch' (rows exist but belong to someone else, 403).
create or replace function chat_private.check_act_as(
  p_user_id uuid, p_agent_id uuid, p_conversation_id uuid
) returns text
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
    return 'agent_not_found';
  end if;
  if v_agent_owner <> p_user_id then
    return 'context_mismatch';
  end if;
  if p_conversation_id is not null then
    select * into v_conv from public.conversation_sessions c where c.id = p_conversation_id;
    if not found or v_conv.deleted_at is not null then
      return 'conversation_not_found';
    end if;
    if v_conv.user_id <> p_user_id or v_conv.agent_id <> p_agent_id then
      return 'context_mismatch';
    end if;
  end if;
  return 'ok';
end
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
    -- finished) run never gets one late
    select m.id into v_id from public.chat_messages_v2 m
    where m.execution_id = p_execution_id and m.role = 'assistant';
    if v_id is not null then
      return v_id;
    end if;
    if v_status <> 'running' then
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
  if v_id is null then
    select m.id into v_id from public.chat_messages_v2 m
    where m.execution_id = p_execution_id and m.role = 'assistant';
  end if;
  return v_id;
end
$$;

-- Per-user rate limit for user calls, in Postgres so it holds across function
-- instances: a fixed window per user.
create table chat_private.rate_limits (
  user_id uuid primary key references auth.users (id) on delete cascade,
  window_started_at timestamptz not null,
  hits integer not null
);
alter table chat_private.rate_limits enable row level security;
comment on table chat_private.rate_limits is 'Fixed-window request counters of the chat function, per user.';

-- Count one request. Returns 0 when allowed, else the seconds to wait.
create or replace function chat_private.rate_limit_hit(
  p_user_id uuid, p_limit integer, p_window_seconds integer, p_now timestamptz default null
) returns integer
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_now timestamptz := coalesce(p_now, clock_timestamp());
  v_row chat_private.rate_limits;
begin
  insert into chat_private.rate_limits as r (user_id, window_started_at, hits)
  values (p_user_id, v_now, 1)
  on conflict (user_id) do update set
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

grant execute on function
  chat_private.check_act_as(uuid, uuid, uuid),
  chat_private.record_assistant_reply(uuid, uuid, text, jsonb, jsonb, uuid),
  chat_private.rate_limit_hit(uuid, integer, integer, timestamptz)
to service_role;
