-- Client actions that need more than a row write, called from supabase-js
-- with `supabase.rpc(...)`. Each checks that the caller owns the row; they
-- answer "not found" for other users' rows so ids cannot be probed.
-- security definer: executions are written only through the queue's guarded
-- transitions, never by a client directly. run_task_now and retry_execution
-- are rate limited per user (scheduler.action_rate_check, SQLSTATE PT429:
-- PostgREST answers 429), refused when a budget is used up
-- (scheduler.enqueue_now) and when an exclusive task's backlog is full
-- (scheduler.refuse_full_backlog, PT409: 409).

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

-- A run nobody scheduled may not wait behind a full backlog of an exclusive
-- task (scheduler.backlog_room): refused with PT409 (PostgREST: HTTP 409).
create or replace function scheduler.refuse_full_backlog(p_task public.agent_tasks) returns void
language plpgsql
stable
security definer
set search_path = ''
as $$
begin
  if scheduler.backlog_room(p_task.id, p_task.overlap_policy) = 0 then
    raise exception 'task "%" already has % waiting to run, the most max_queued_runs_per_task allows; try again once one has run',
      p_task.name, scheduler.limit_int('max_queued_runs_per_task') using errcode = 'PT409';
  end if;
end
$$;

-- Run a task now, whatever its schedule. Returns the new execution's id.
create or replace function public.run_task_now(p_task_id uuid) returns uuid
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_task public.agent_tasks := scheduler.owned_task(p_task_id);
begin
  perform scheduler.action_rate_check('run_now');
  perform scheduler.refuse_full_backlog(v_task);
  return scheduler.enqueue_now(p_task_id, 'manual');
end
$$;
comment on function public.run_task_now(uuid) is 'Enqueue a manual run of one of your tasks; returns the execution id.';

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
declare
  v_task public.agent_tasks;
begin
  select t.* into v_task from public.agent_tasks t
  where t.id = (scheduler.owned_execution(p_execution_id)).task_id;
  perform scheduler.action_rate_check('retry');
  perform scheduler.refuse_full_backlog(v_task);
  return scheduler.retry_execution(p_execution_id);
end
$$;
comment on function public.retry_execution(uuid) is 'Re-run one of your finished executions; returns the new execution id.';

-- Check a schedule before saving it (for forms). Returns {} when valid, else
-- {field: reason} for cron_expression, timezone, prompt_template and
-- prompt_variables. Every input is held to its column's size cap before it
-- is parsed, so the check costs little whatever a caller sends.
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
    'prompt_variables', scheduler.json_size_error('prompt_variables', p_prompt_variables,
                                                  'max_prompt_variables_bytes'),
    'prompt_template', case when p_prompt_template is not null
                             and scheduler.json_size_error('prompt_variables', p_prompt_variables,
                                                           'max_prompt_variables_bytes') is null
                            then scheduler.template_error(p_prompt_template, coalesce(p_prompt_variables, '{}'::jsonb))
                       end))
$$;
comment on function public.validate_schedule(text, text, text, text, jsonb) is
  'Validate a schedule before saving: {} when valid, else {field: reason}.';

-- Keyset pages. Every list below is newest first on a plain (timestamp, id)
-- pair that an index holds in that order after its owner column, and takes
-- the last row's next_cursor ("<timestamp>|<id>") to continue: the page is
-- a row comparison `(at, id) < (cursor)`, an index condition (also under
-- RLS: plain columns, leakproof operators), so page 5,000 costs what page 1
-- costs (bench/bench_pages.py). No cursor: start above every row, so one
-- keyset form serves every page (never `p_cursor is null or …`, which the
-- cached plan can only filter). Page sizes are 1 … 100.
create or replace function public.page_cursor_position(
  p_cursor text, p_limit integer, out at timestamptz, out id uuid
)
language plpgsql
stable
set search_path = ''
as $$
begin
  if p_limit is null or p_limit < 1 or p_limit > 100 then
    raise exception 'p_limit must be between 1 and 100' using errcode = '22023';
  end if;
  at := 'infinity'::timestamptz;
  id := 'ffffffff-ffff-ffff-ffff-ffffffffffff'::uuid;
  if p_cursor is not null then
    begin
      at := split_part(p_cursor, '|', 1)::timestamptz;
      id := split_part(p_cursor, '|', 2)::uuid;
    exception when others then
      raise exception 'invalid cursor %: pass next_cursor from the previous page', p_cursor
        using errcode = '22023';
    end;
  end if;
end
$$;
comment on function public.page_cursor_position(text, integer) is
  'The position a keyset page cursor stands for (internal to the list functions; checks the page size too).';

-- The next_cursor of a row at (p_at, p_id).
create or replace function public.page_cursor(p_at timestamptz, p_id uuid) returns text
language sql
immutable
set search_path = ''
as $$
  select to_char(p_at at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') || '|' || p_id::text
$$;
comment on function public.page_cursor(timestamptz, uuid) is
  'The keyset cursor of a row (internal to the list functions).';

-- Conversations for list pages, most recent first. security invoker: RLS
-- decides which rows the caller sees.
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
  v_after record;
begin
  v_after := public.page_cursor_position(p_cursor, p_limit);
  return query
    select c.id, c.agent_id, c.title, c.archived_at, c.last_message_at, c.message_count,
           c.last_message_preview, c.created_at, public.page_cursor(c.activity_at, c.id)
    from public.conversation_sessions c
    where c.deleted_at is null
      and (p_include_archived or c.archived_at is null)
      and (p_agent_id is null or c.agent_id = p_agent_id)
      -- an index condition on conversation_sessions_user_recent_idx, after
      -- user_id from RLS
      and (c.activity_at, c.id) < (v_after.at, v_after.id)
    order by c.activity_at desc, c.id desc
    limit p_limit;
end
$$;
comment on function public.list_conversations(uuid, integer, text, boolean) is
  'Your conversations, most recent first, with message_count and last_message_preview; keyset pagination via next_cursor.';


-- A conversation's messages for history pages, newest first (reverse a page
-- to show it). security invoker: RLS decides which rows the caller sees, so
-- a conversation that is not yours pages exactly like one that does not
-- exist (no rows).
create or replace function public.list_messages(
  p_conversation_id uuid,
  p_limit integer default 50,
  p_cursor text default null
) returns table (
  id uuid, conversation_id uuid, role text, content text, metadata jsonb, tool_calls jsonb,
  execution_id uuid, created_at timestamptz, next_cursor text
)
language plpgsql
stable
set search_path = ''
-- the ordered walk from the cursor, always: with bitmap scans allowed the
-- planner ANDed the page's index with the RLS user_id index and read every
-- row of the user (11 ms at 100,000 deep, bench/bench_pages.py)
set enable_bitmapscan = off
as $$
declare
  v_after record;
begin
  v_after := public.page_cursor_position(p_cursor, p_limit);
  return query
    select m.id, m.conversation_id, m.role, m.content, m.metadata, m.tool_calls, m.execution_id,
           m.created_at, public.page_cursor(m.created_at, m.id)
    from public.chat_messages_v2 m
    -- an index condition on chat_messages_v2_conversation_idx, walked backwards
    where m.conversation_id = p_conversation_id
      and (m.created_at, m.id) < (v_after.at, v_after.id)
    order by m.created_at desc, m.id desc
    limit p_limit;
end
$$;
comment on function public.list_messages(uuid, integer, text) is
  'Messages of one of your conversations, newest first; keyset pagination via next_cursor.';

-- Run history pages, newest first: one task's executions, or all of yours
-- when p_task_id is NULL. The error users see (error, with error_kind) is
-- listed; the worker and the worker's own text (error_detail) are not.
-- security invoker: RLS decides which rows the caller sees.
create or replace function public.list_executions(
  p_task_id uuid default null,
  p_limit integer default 20,
  p_cursor text default null
) returns table (
  id uuid, task_id uuid, trigger_type text, status text, scheduled_for timestamptz,
  started_at timestamptz, finished_at timestamptz, duration_ms integer, attempt integer,
  error_kind text, error text, usage jsonb, conversation_id uuid, user_message_id uuid,
  created_at timestamptz, next_cursor text
)
language plpgsql
stable
set search_path = ''
-- the ordered walk from the cursor, always (as list_messages)
set enable_bitmapscan = off
as $$
declare
  v_after record;
begin
  v_after := public.page_cursor_position(p_cursor, p_limit);
  -- two statements (never `p_task_id is null or …`, which the cached plan
  -- can only filter): each is an index condition on its own index,
  -- task_history_idx, or user_history_idx after RLS's user_id
  if p_task_id is not null then
    return query
      select e.id, e.task_id, e.trigger_type, e.status, e.scheduled_for, e.started_at, e.finished_at,
             e.duration_ms, e.attempt, e.error_kind, e.error, e.usage, e.conversation_id,
             e.user_message_id, e.created_at,
             public.page_cursor(e.created_at, e.id)
      from public.agent_task_executions e
      where e.task_id = p_task_id and (e.created_at, e.id) < (v_after.at, v_after.id)
      order by e.created_at desc, e.id desc
      limit p_limit;
  else
    return query
      select e.id, e.task_id, e.trigger_type, e.status, e.scheduled_for, e.started_at, e.finished_at,
             e.duration_ms, e.attempt, e.error_kind, e.error, e.usage, e.conversation_id,
             e.user_message_id, e.created_at,
             public.page_cursor(e.created_at, e.id)
      from public.agent_task_executions e
      where (e.created_at, e.id) < (v_after.at, v_after.id)
      order by e.created_at desc, e.id desc
      limit p_limit;
  end if;
end
$$;
comment on function public.list_executions(uuid, integer, text) is
  'Run history of one of your tasks (or of all of them), newest first; keyset pagination via next_cursor.';

-- Your tasks, newest first, with their agent's name (the console's schedule
-- list), all of them or one agent's. agent_tasks_user_idx holds (user_id,
-- created_at desc, id desc) and agent_tasks_agent_idx (agent_id, user_id,
-- created_at desc, id desc), so after RLS's user_id the cursor is an index
-- condition either way, as in the lists above. One branch per case, the other
-- switched off by a one-time filter: an "agent is null or agent_id = agent"
-- condition would leave a cached generic plan no index to start from.
create or replace function public.list_tasks(
  p_limit integer default 20,
  p_cursor text default null,
  p_agent_id uuid default null
) returns table (
  id uuid, agent_id uuid, agent_name text, name text, status text, schedule_type text,
  cron_expression text, interval_seconds integer, run_at timestamptz, timezone text,
  next_run_at timestamptz, last_run_at timestamptz, run_count integer, success_count integer,
  failure_count integer, last_error text, created_at timestamptz, next_cursor text
)
language plpgsql
stable
set search_path = ''
set enable_bitmapscan = off
as $$
declare
  v_after record;
begin
  v_after := public.page_cursor_position(p_cursor, p_limit);
  return query
    select t.id, t.agent_id, a.name, t.name, t.status, t.schedule_type, t.cron_expression,
           t.interval_seconds, t.run_at, t.timezone, t.next_run_at, t.last_run_at, t.run_count,
           t.success_count, t.failure_count, t.last_error, t.created_at,
           public.page_cursor(t.created_at, t.id)
    from (
      (select x.* from public.agent_tasks x
       where p_agent_id is null and (x.created_at, x.id) < (v_after.at, v_after.id)
       order by x.created_at desc, x.id desc limit p_limit)
      union all
      -- another user's agent pages like one that does not exist: RLS leaves no row
      (select x.* from public.agent_tasks x
       where x.agent_id = p_agent_id and (x.created_at, x.id) < (v_after.at, v_after.id)
       order by x.created_at desc, x.id desc limit p_limit)
    ) t
    join public.agents a on a.id = t.agent_id
    order by t.created_at desc, t.id desc
    limit p_limit;
end
$$;
comment on function public.list_tasks(integer, text, uuid) is
  'Your tasks (all, or one agent''s), newest first, with the agent''s name; keyset pagination via next_cursor.';
