-- Client actions that need more than a row write, called from supabase-js
-- with `supabase.rpc(...)`. Each checks that the caller owns the row; they
-- answer "not found" for other users' rows so ids cannot be probed.
-- security definer: executions are written only through the queue's guarded
-- transitions, never by a client directly. run_task_now and retry_execution
-- are rate limited per user (scheduler.action_rate_check, SQLSTATE PT429:
-- PostgREST answers 429) and refused when a budget is used up
-- (scheduler.enqueue_now).

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
  perform scheduler.action_rate_check('run_now');
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
begin
  perform scheduler.owned_execution(p_execution_id);
  perform scheduler.action_rate_check('retry');
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
  -- no cursor: start above every row, so one keyset form serves every page
  v_after_at timestamptz := 'infinity'::timestamptz;
  v_after_id uuid := 'ffffffff-ffff-ffff-ffff-ffffffffffff'::uuid;
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
           to_char(c.activity_at at time zone 'UTC',
                   'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') || '|' || c.id::text
    from public.conversation_sessions c
    where c.deleted_at is null
      and (p_include_archived or c.archived_at is null)
      and (p_agent_id is null or c.agent_id = p_agent_id)
      -- the row comparison alone (never `p_cursor is null or …`, which the
      -- cached plan can only filter) on a plain column: an index condition
      -- on conversation_sessions_user_recent_idx, after user_id from RLS, so
      -- page 5,000 costs what page 1 costs (bench/bench_pages.py)
      and (c.activity_at, c.id) < (v_after_at, v_after_id)
    order by c.activity_at desc, c.id desc
    limit p_limit;
end
$$;
comment on function public.list_conversations(uuid, integer, text, boolean) is
  'Your conversations, most recent first, with message_count and last_message_preview; keyset pagination via next_cursor.';

