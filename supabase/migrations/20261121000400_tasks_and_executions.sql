-- Agent tasks (the schedules), their executions (the queue and the history in
-- one table) and notifications.

-- A recurring or one-off job for an agent: a prompt template, a schedule, the
-- conversation it runs in and how it executes.
create table public.agent_tasks (
  id uuid primary key default gen_random_uuid(),
  user_id uuid not null default auth.uid() references auth.users (id) on delete cascade,
  agent_id uuid not null,
  name text not null check (char_length(btrim(name)) between 1 and 200),
  description text check (char_length(description) <= 2000),
  prompt_template text not null check (char_length(prompt_template) between 1 and 10000),
  prompt_variables jsonb not null default '{}'::jsonb,

  -- schedule
  schedule_type text not null check (schedule_type in ('cron', 'interval', 'once', 'manual')),
  cron_expression text,
  interval_seconds integer check (interval_seconds between 1 and 31622400),
  run_at timestamptz,
  timezone text not null default 'UTC',
  starts_at timestamptz,
  ends_at timestamptz,
  max_runs integer check (max_runs > 0),

  -- conversation rule
  conversation_mode text not null default 'reuse' check (conversation_mode in ('reuse', 'new_per_run')),
  conversation_id uuid,

  -- execution settings
  priority smallint not null default 0 check (priority between -100 and 100),
  max_retries smallint not null default 3 check (max_retries between 0 and 20),
  timeout_seconds integer not null default 300 check (timeout_seconds between 1 and 3600),
  overlap_policy text not null default 'skip' check (overlap_policy in ('skip', 'queue', 'allow')),
  misfire_policy text not null default 'run_once' check (misfire_policy in ('run_once', 'skip', 'run_all')),
  misfire_grace_seconds integer not null default 60 check (misfire_grace_seconds between 0 and 86400),

  -- state
  status text not null default 'active'
    check (status in ('active', 'paused', 'waiting_input', 'completed', 'error')),
  state jsonb not null default '{}'::jsonb check (jsonb_typeof(state) = 'object'),
  next_run_at timestamptz,
  last_scheduled_for timestamptz,
  -- the planner looks for cron occurrences after max(plan_from,
  -- last_scheduled_for): a new, edited or resumed schedule starts from now
  -- instead of "catching up" what it missed while paused
  plan_from timestamptz not null default now(),
  last_run_at timestamptz,
  -- bumped whenever the schedule changes, so a planner working from an old
  -- copy of the row cannot overwrite a newer plan
  schedule_version integer not null default 1,
  run_count integer not null default 0 check (run_count >= 0),
  success_count integer not null default 0 check (success_count >= 0),
  failure_count integer not null default 0 check (failure_count >= 0),
  last_error text,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),

  foreign key (agent_id, user_id) references public.agents (id, user_id) on delete cascade,
  -- a target conversation must be this user's conversation with this agent
  foreign key (conversation_id, user_id, agent_id)
    references public.conversation_sessions (id, user_id, agent_id) on delete set null (conversation_id),

  constraint agent_tasks_schedule_fields check (
    case schedule_type
      when 'cron' then cron_expression is not null and interval_seconds is null and run_at is null
      when 'interval' then interval_seconds is not null and cron_expression is null and run_at is null
      when 'once' then run_at is not null and cron_expression is null and interval_seconds is null
      when 'manual' then cron_expression is null and interval_seconds is null and run_at is null
    end
  ),
  constraint agent_tasks_window check (ends_at is null or starts_at is null or ends_at > starts_at),
  constraint agent_tasks_next_run_only_when_active check (next_run_at is null or status = 'active')
);
comment on table public.agent_tasks is
  'A scheduled agent job: prompt template + schedule (cron | interval | once | manual) + conversation rule.';
-- the due scan: active tasks by next_run_at
create index agent_tasks_due_idx on public.agent_tasks (next_run_at) where status = 'active';
-- the planner: active cron tasks waiting for their next occurrence
create index agent_tasks_to_plan_idx on public.agent_tasks (updated_at)
  where status = 'active' and next_run_at is null and schedule_type = 'cron';
create index agent_tasks_user_idx on public.agent_tasks (user_id, created_at desc);
create index agent_tasks_agent_idx on public.agent_tasks (agent_id, user_id);
create index agent_tasks_conversation_idx on public.agent_tasks (conversation_id) where conversation_id is not null;
create trigger agent_tasks_set_updated_at before update on public.agent_tasks
  for each row execute function scheduler.set_updated_at();

-- The queue and the history. One scheduled occurrence is unique per
-- (task_id, scheduled_for); manual runs and retries get their own instant.
create table public.agent_task_executions (
  id uuid primary key default gen_random_uuid(),
  task_id uuid not null references public.agent_tasks (id) on delete cascade,
  user_id uuid not null references auth.users (id) on delete cascade,
  agent_id uuid not null,
  trigger_type text not null check (trigger_type in ('schedule', 'manual', 'retry', 'user_reply')),
  status text not null default 'queued'
    check (status in ('queued', 'running', 'succeeded', 'failed', 'timed_out', 'needs_input', 'cancelled', 'skipped')),
  scheduled_for timestamptz not null,
  run_after timestamptz not null default now(),
  attempt integer not null default 0 check (attempt >= 0),
  max_attempts integer not null default 4 check (max_attempts >= 1),
  priority smallint not null default 0,
  timeout_seconds integer not null default 300,
  -- overlap_policy of the task is skip or queue: never two running at once
  exclusive boolean not null default true,
  worker_id text,
  lease_expires_at timestamptz,
  heartbeat_at timestamptz,
  started_at timestamptz,
  finished_at timestamptz,
  duration_ms integer check (duration_ms >= 0),
  conversation_id uuid references public.conversation_sessions (id) on delete set null,
  resolved_prompt text,
  user_message_id uuid,
  assistant_message_id uuid,
  output text,
  error text,
  error_kind text check (error_kind in ('transient', 'permanent', 'timeout', 'cancelled',
                                        'lease_expired', 'overlap', 'misfire', 'empty_reply', 'shutdown')),
  usage jsonb,
  retry_of uuid references public.agent_task_executions (id) on delete set null,
  cancel_requested_at timestamptz,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),

  constraint agent_task_executions_occurrence_key unique (task_id, scheduled_for),
  -- River's invariant: finished_at is set iff the status is terminal
  constraint agent_task_executions_finished_iff_terminal check (
    (status in ('succeeded', 'failed', 'timed_out', 'needs_input', 'cancelled', 'skipped'))
    = (finished_at is not null)
  ),
  constraint agent_task_executions_running_has_lease check (
    status <> 'running' or (worker_id is not null and lease_expires_at is not null and started_at is not null)
  ),
  constraint agent_task_executions_attempts check (attempt <= max_attempts)
);
comment on table public.agent_task_executions is
  'Executions of agent tasks: the queue (queued, running) and the history (every terminal state).';
-- the claim: queued rows by priority, then occurrence
create index agent_task_executions_claim_idx
  on public.agent_task_executions (priority desc, scheduled_for, run_after) where status = 'queued';
-- the rescuer: running rows by lease
create index agent_task_executions_lease_idx
  on public.agent_task_executions (lease_expires_at) where status = 'running';
-- overlap checks and per-user caps
create index agent_task_executions_active_task_idx
  on public.agent_task_executions (task_id) where status in ('queued', 'running');
create index agent_task_executions_running_user_idx
  on public.agent_task_executions (user_id) where status = 'running';
-- history pages
create index agent_task_executions_task_history_idx
  on public.agent_task_executions (task_id, created_at desc);
create index agent_task_executions_user_history_idx
  on public.agent_task_executions (user_id, created_at desc);
create index agent_task_executions_conversation_idx
  on public.agent_task_executions (conversation_id) where conversation_id is not null;
-- retry_of is set null when its execution is purged: find those by index
create index agent_task_executions_retry_of_idx
  on public.agent_task_executions (retry_of) where retry_of is not null;
-- the purge
create index agent_task_executions_finished_idx
  on public.agent_task_executions (finished_at) where finished_at is not null;
create trigger agent_task_executions_set_updated_at before update on public.agent_task_executions
  for each row execute function scheduler.set_updated_at();

alter table public.chat_messages_v2
  add constraint chat_messages_v2_execution_fk
  foreign key (execution_id) references public.agent_task_executions (id) on delete set null;
-- the purge sets execution_id null on messages: find them by index (the unique
-- index above is partial on role, so the foreign key check cannot use it)
create index chat_messages_v2_execution_idx
  on public.chat_messages_v2 (execution_id) where execution_id is not null;

-- Notifications for the user: a run failed for good, an agent needs input.
create table public.notifications (
  id uuid primary key default gen_random_uuid(),
  user_id uuid not null references auth.users (id) on delete cascade,
  kind text not null check (kind in ('task_failed', 'task_needs_input', 'task_completed', 'info')),
  title text not null check (char_length(title) <= 200),
  body text check (char_length(body) <= 2000),
  data jsonb not null default '{}'::jsonb,
  read_at timestamptz,
  created_at timestamptz not null default now()
);
comment on table public.notifications is 'Alerts for a user: failed runs, questions from agents.';
create index notifications_user_idx on public.notifications (user_id, created_at desc);
create index notifications_unread_idx on public.notifications (user_id) where read_at is null;

-- Write-time checks and schedule bookkeeping for agent_tasks.
-- security definer: calls the private validators; it reads nothing the
-- writer could not read and changes only the row being written.
create or replace function scheduler.agent_tasks_before_write() returns trigger
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_error text;
  -- current_user is this function's owner (security definer): the caller's
  -- API role is the `role` setting PostgREST made with `set local role`
  v_api_role boolean := current_setting('role', true) in ('anon', 'authenticated');
  v_schedule_changed boolean;
begin
  -- Validate only what this write sets or changes: the row already passed
  -- these checks when those fields were written. The hot path (counters from
  -- every finished run, enqueue_due's bookkeeping) changes none of them, so it
  -- runs no validator at all.
  if new.schedule_type = 'cron'
     and (tg_op = 'INSERT' or new.schedule_type is distinct from old.schedule_type
          or new.cron_expression is distinct from old.cron_expression) then
    v_error := scheduler.cron_error(new.cron_expression);
    if v_error is not null then
      raise exception '%', v_error using errcode = '22023', hint = 'e.g. ''0 9 * * 1-5'' runs at 09:00 on weekdays';
    end if;
    new.cron_expression := btrim(new.cron_expression);
  end if;
  if tg_op = 'INSERT' or new.timezone is distinct from old.timezone then
    v_error := scheduler.timezone_error(new.timezone);
    if v_error is not null then
      raise exception '%', v_error using errcode = '22023';
    end if;
  end if;
  if tg_op = 'INSERT' or new.prompt_template is distinct from old.prompt_template
     or new.prompt_variables is distinct from old.prompt_variables then
    v_error := scheduler.template_error(new.prompt_template, new.prompt_variables);
    if v_error is not null then
      raise exception '%', v_error using errcode = '22023';
    end if;
  end if;

  if tg_op = 'INSERT' then
    v_schedule_changed := true;
  else
    v_schedule_changed :=
      new.schedule_type is distinct from old.schedule_type
      or new.cron_expression is distinct from old.cron_expression
      or new.interval_seconds is distinct from old.interval_seconds
      or new.run_at is distinct from old.run_at
      or new.timezone is distinct from old.timezone
      or new.starts_at is distinct from old.starts_at
      or new.ends_at is distinct from old.ends_at
      or new.max_runs is distinct from old.max_runs
      or (new.status = 'active' and old.status <> 'active');
  end if;

  if v_api_role then
    -- users move a task only between active and paused (and answer a question)
    if tg_op = 'INSERT' and new.status not in ('active', 'paused') then
      raise exception 'a new task must be active or paused, not %', new.status using errcode = '22023';
    end if;
    if tg_op = 'UPDATE' and new.status is distinct from old.status
       and not (new.status in ('active', 'paused') and old.status in ('active', 'paused', 'waiting_input', 'error', 'completed')) then
      raise exception 'status can be changed to active or paused only (from %)', old.status using errcode = '22023';
    end if;
  end if;

  if new.status <> 'active' then
    new.next_run_at := null;
  elsif v_schedule_changed then
    new.schedule_version := case when tg_op = 'INSERT' then 1 else old.schedule_version + 1 end;
    new.plan_from := now();
    new.next_run_at := case new.schedule_type
      when 'once' then new.run_at
      when 'interval' then case
        when new.starts_at is not null and new.starts_at >= now() then new.starts_at
        else now() + make_interval(secs => new.interval_seconds)
      end
      else null  -- cron: the planner computes it (croniter, in the task's time zone)
    end;
    if tg_op = 'UPDATE' and new.schedule_type = 'once' and new.run_at is not distinct from old.run_at
       and old.last_scheduled_for is not null then
      new.next_run_at := null;  -- a one-off that already ran does not run again on resume
    end if;
    if new.next_run_at is not null and new.ends_at is not null and new.next_run_at > new.ends_at then
      new.next_run_at := null;
    end if;
    if new.schedule_type = 'cron' then
      perform pg_notify('agent_tasks_plan', '');
    end if;
  end if;
  return new;
end
$$;
create trigger agent_tasks_before_write before insert or update on public.agent_tasks
  for each row execute function scheduler.agent_tasks_before_write();

-- One NOTIFY per statement (not per row) when executions become claimable.
create or replace function scheduler.notify_executions_queued() returns trigger
language plpgsql
set search_path = ''
as $$
begin
  if exists (select 1 from new_rows where status = 'queued') then
    perform pg_notify('agent_task_executions', '');
  end if;
  return null;
end
$$;
create trigger agent_task_executions_notify_insert after insert on public.agent_task_executions
  referencing new table as new_rows
  for each statement execute function scheduler.notify_executions_queued();
