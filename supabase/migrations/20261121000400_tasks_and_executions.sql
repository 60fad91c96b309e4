-- Agent tasks (the schedules), their executions (the queue and the history in
-- one table), notifications and the worker registry: the tables, their
-- constraints and indexes. The functions that write them live by topic:
-- queue transitions, scheduling, task lifecycle (docs/architecture.md).

-- The execution status vocabulary, stated once: the CHECKs on
-- agent_task_executions.status are built from it (below).
-- worker/status.py mirrors it (ExecutionStatus) and tests/unit/test_status.py
-- holds the two equal. (A domain would say the same, but the column would then
-- no longer be plain text to clients comparing rows.)
create or replace function scheduler.execution_statuses() returns text[]
language sql immutable
set search_path = ''
as $$
  select array['queued', 'running', 'succeeded', 'failed', 'timed_out', 'needs_input', 'cancelled', 'skipped']
$$;

-- The statuses after which nothing moves an execution again.
--
-- These helpers read no object; they still pin `search_path = ''` (the
-- Supabase advisors require it of every function), which keeps Postgres from
-- inlining them: a call costs microseconds, measured in bench/.
create or replace function scheduler.is_terminal(p_status text) returns boolean
language plpgsql immutable
set search_path = ''
as $$
begin
  return p_status not in ('queued', 'running');
end
$$;

-- The run time of an execution in milliseconds (NULL when it never started),
-- the one expression every finishing transition writes into duration_ms.
--
-- These small helpers, called for every row of the queue's hot path, are
-- PL/pgSQL rather than SQL: the pinned search_path keeps a SQL function from
-- being inlined, and a SQL function that is not inlined is planned anew at
-- every call (~30 us each inside a finish of ten rows), while PL/pgSQL keeps
-- its expression plans for the session (bench/README.md).
create or replace function scheduler.duration_ms(p_started_at timestamptz, p_finished_at timestamptz)
returns integer
language plpgsql immutable
set search_path = ''
as $$
begin
  return case when p_started_at is not null and p_finished_at is not null
              then greatest(0, (extract(epoch from (p_finished_at - p_started_at)) * 1000)::integer) end;
end
$$;

-- The terminal statuses a worker may finish a running execution with (the
-- others come from cancel_execution and the scheduler's skips).
create or replace function scheduler.is_finishing(p_status text) returns boolean
language plpgsql immutable
set search_path = ''
as $$
begin
  return p_status in ('succeeded', 'failed', 'timed_out', 'needs_input');
end
$$;

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
  -- extra instructions added to the system prompt of this task's runs
  system_addon text check (char_length(system_addon) <= 4000),

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
  -- orders runs within this user's own work only (never ahead of other users)
  priority smallint not null default 0 check (priority between -100 and 100),
  -- the operator's global class: a higher class is claimed before a lower one
  -- across all users (fair sharing applies within a class). Not writable by
  -- users (no column grant); copied onto each execution when it is queued.
  priority_class smallint not null default 0 check (priority_class between -10 and 10),
  max_retries smallint not null default 3 check (max_retries between 0 and 20),
  timeout_seconds integer not null default 300 check (timeout_seconds between 1 and 3600),
  overlap_policy text not null default 'skip' check (overlap_policy in ('skip', 'queue', 'allow')),
  misfire_policy text not null default 'run_once' check (misfire_policy in ('run_once', 'skip', 'run_all')),
  misfire_grace_seconds integer not null default 60 check (misfire_grace_seconds between 0 and 86400),
  -- budgets per UTC day (NULL: none beyond the user's); a task that uses one
  -- up pauses itself until the next day (scheduler.pause_for_budget)
  max_runs_per_day integer check (max_runs_per_day > 0),
  max_tokens_per_day integer check (max_tokens_per_day > 0),

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
  -- what the user is notified of (a question always is): failure (default),
  -- success (every succeeded run), change (a succeeded run whose reply
  -- differs from the last succeeded run's: last_reply_hash, kept only while
  -- success or change is on; see scheduler.notify_success)
  notify_on text[] not null default '{failure}'
    check (notify_on <@ array['failure', 'needs_input', 'success', 'change']::text[] and cardinality(notify_on) <= 4),
  last_reply_hash text check (char_length(last_reply_hash) = 32),
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
-- the planner: active cron tasks waiting for their next occurrence, oldest
-- plan first. On plan_from, not updated_at: a finish writes only unindexed
-- columns of its task (counters, last_run_at, updated_at), so that update is
-- HOT (no index entries; with fillfactor 90 below there is room on the page)
create index agent_tasks_to_plan_idx on public.agent_tasks (plan_from)
  where status = 'active' and next_run_at is null and schedule_type = 'cron';
-- the task list (public.list_tasks): keyset on (created_at, id) after user_id
create index agent_tasks_user_idx on public.agent_tasks (user_id, created_at desc, id desc);
-- one agent's tasks (public.list_tasks with p_agent_id): keyset on (created_at,
-- id) after agent and user; its (agent_id, user_id) prefix also serves the
-- cascade from agents
create index agent_tasks_agent_idx on public.agent_tasks (agent_id, user_id, created_at desc, id desc);
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
  -- CHECKs agent_task_executions_status_check and _finished_iff_terminal: below
  status text not null default 'queued',
  scheduled_for timestamptz not null,
  run_after timestamptz not null default now(),
  attempt integer not null default 0 check (attempt >= 0),
  max_attempts integer not null default 4 check (max_attempts >= 1),
  priority smallint not null default 0,
  -- the task's priority_class and the fair-share position among users, both
  -- set when the row is queued (scheduler.assign_turn, queue transitions)
  priority_class smallint not null default 0,
  turn bigint not null default 0,
  timeout_seconds integer not null default 300,
  -- overlap_policy of the task is skip or queue: never two running at once
  exclusive boolean not null default true,
  worker_id text,
  lease_expires_at timestamptz,
  heartbeat_at timestamptz,
  started_at timestamptz,
  finished_at timestamptz,
  -- scheduler.duration_ms(started_at, finished_at), written with finished_at
  duration_ms integer check (duration_ms >= 0),
  conversation_id uuid references public.conversation_sessions (id) on delete set null,
  resolved_prompt text,
  user_message_id uuid,
  assistant_message_id uuid,
  output text,
  -- what the user sees of a failure (scheduler.public_error); the text the
  -- worker reported is kept in error_detail, which only operators can read
  error text,
  error_detail text,
  error_kind text check (error_kind in ('transient', 'permanent', 'timeout', 'cancelled',
                                        'lease_expired', 'worker_lost', 'overlap', 'misfire', 'empty_reply',
                                        'shutdown', 'unreachable')),
  usage jsonb,
  retry_of uuid references public.agent_task_executions (id) on delete set null,
  cancel_requested_at timestamptz,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),

  constraint agent_task_executions_occurrence_key unique (task_id, scheduled_for),
  constraint agent_task_executions_running_has_lease check (
    status <> 'running' or (worker_id is not null and lease_expires_at is not null and started_at is not null)
  ),
  constraint agent_task_executions_attempts check (attempt <= max_attempts)
);
-- The status CHECKs, built from the vocabulary above as constant arrays: a
-- function call in a CHECK is inlined anew for every statement (about 10 us
-- each, measured), constants cost nothing. River's invariant: finished_at is
-- set iff the status is terminal.
do $$
begin
  execute format(
    'alter table public.agent_task_executions
       add constraint agent_task_executions_status_check check (status = any (%L::text[])),
       add constraint agent_task_executions_finished_iff_terminal
         check ((status = any (%L::text[])) = (finished_at is not null))',
    scheduler.execution_statuses(),
    array(select s from unnest(scheduler.execution_statuses()) s where scheduler.is_terminal(s)));
end
$$;
comment on table public.agent_task_executions is
  'Executions of agent tasks: the queue (queued, running) and the history (every terminal state).';
-- the claim's fair order: queued rows by operator class, then turn (whose
-- turn among users; docs/state-machine.md "Fair sharing")
create index agent_task_executions_claim_idx
  on public.agent_task_executions (priority_class desc, turn, run_after) where status = 'queued';
-- the claim's pick within one user's work: that user's own priority order
create index agent_task_executions_user_queue_idx
  on public.agent_task_executions (user_id, priority_class desc, priority desc, scheduled_for, run_after)
  where status = 'queued';
-- a new run's turn: its user's last queued turn
create index agent_task_executions_user_turn_idx
  on public.agent_task_executions (user_id, turn desc) where status = 'queued';
-- the rescuer: running rows by lease
create index agent_task_executions_lease_idx
  on public.agent_task_executions (lease_expires_at) where status = 'running';
-- overlap checks and per-user caps
create index agent_task_executions_active_task_idx
  on public.agent_task_executions (task_id) where status in ('queued', 'running');
create index agent_task_executions_running_user_idx
  on public.agent_task_executions (user_id) where status = 'running';
-- history pages (public.list_executions): keyset on (created_at, id)
create index agent_task_executions_task_history_idx
  on public.agent_task_executions (task_id, created_at desc, id desc);
create index agent_task_executions_user_history_idx
  on public.agent_task_executions (user_id, created_at desc, id desc);
create index agent_task_executions_conversation_idx
  on public.agent_task_executions (conversation_id) where conversation_id is not null;
-- retry_of is set null when its execution is purged: find those by index
create index agent_task_executions_retry_of_idx
  on public.agent_task_executions (retry_of) where retry_of is not null;
-- the purge, and the figures of what finished lately (scheduler.queue_stats)
create index agent_task_executions_finished_idx
  on public.agent_task_executions (finished_at) where finished_at is not null;
-- the operator's latest failures (the console's operator page): only failed
-- rows, so the list does not walk every success before them (102 ms at
-- 1,000,000 finished rows and none failed)
create index agent_task_executions_failed_idx
  on public.agent_task_executions (finished_at desc) where status in ('failed', 'timed_out');
-- Autovacuum for the churn, not the size. Every claim and finish leaves a dead
-- row version (and dead entries at the head of the claim index), every enqueue
-- and outcome updates its task. The default threshold (20% of the table) is
-- ~200,000 dead rows at 1,000,000 executions, and until then each claim and
-- each enqueue pass walks past the dead entries (the pass grew from 0.9 ms to
-- 41 ms over 80,000 runs). 1% + 5,000 (executions) and 1% + 1,000 (tasks)
-- keep the dead set small; analyze at 2% keeps estimates current.
alter table public.agent_task_executions set (
  autovacuum_vacuum_scale_factor = 0.01,
  autovacuum_vacuum_threshold = 5000,
  autovacuum_analyze_scale_factor = 0.02
);
alter table public.agent_tasks set (
  fillfactor = 90,
  autovacuum_vacuum_scale_factor = 0.01,
  autovacuum_vacuum_threshold = 1000,
  autovacuum_analyze_scale_factor = 0.02
);
create trigger agent_task_executions_set_updated_at before update on public.agent_task_executions
  for each row execute function scheduler.set_updated_at();
-- tasks paused by a used-up daily budget, resumed by scheduler.resume_after_budget
create index agent_tasks_budget_paused_idx on public.agent_tasks (id)
  where status = 'paused' and state ? 'budget_paused_until';

-- What a user may read of a failure. The worker's own failures (kinds
-- transient, permanent, empty_reply) carry text from the worker's machine
-- (exception messages, addresses); users see it only when it is one of the
-- chat function's answers ("chat function <status> <code>: <message>", whose
-- messages are written for the caller, docs/chat/api.md) other than
-- internal_error, or a prompt template error; otherwise a stable sentence.
-- The transitions' own texts (timeouts, cancels, rescues, skips) are ours
-- and pass unchanged.
create or replace function scheduler.public_error(p_error text, p_kind text) returns text
language sql
immutable
set search_path = ''
as $$
  select case
    when p_error is null or p_kind is null or p_kind not in ('transient', 'permanent', 'empty_reply') then p_error
    when p_error ~ '^chat function [0-9]{3} [a-z_]+(: |$)'
         and p_error !~ '^chat function [0-9]{3} internal_error' then p_error
    when p_error ~ '^prompt template: ' then p_error
    when p_kind = 'empty_reply' then 'the model returned an empty reply'
    when p_kind = 'transient' then 'the run failed on a temporary error (details in the operator''s logs)'
    else 'the run failed (details in the operator''s logs)'
  end
$$;

-- Keep the worker's text for operators (error_detail) and show users
-- scheduler.public_error of it.
create or replace function scheduler.executions_split_error() returns trigger
language plpgsql
set search_path = ''
as $$
begin
  if tg_op = 'UPDATE' and new.error is not distinct from old.error then
    return new;
  end if;
  new.error_detail := new.error;
  new.error := scheduler.public_error(new.error, new.error_kind);
  return new;
end
$$;
create trigger agent_task_executions_split_error before insert or update of error on public.agent_task_executions
  for each row when (new.error is not null)
  execute function scheduler.executions_split_error();

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
  kind text not null check (kind in ('task_failed', 'task_needs_input', 'task_completed', 'task_succeeded',
                                     'task_changed', 'task_paused', 'info')),
  title text not null check (char_length(title) <= 200),
  body text check (char_length(body) <= 2000),
  data jsonb not null default '{}'::jsonb,
  read_at timestamptz,
  created_at timestamptz not null default now()
);
comment on table public.notifications is 'Alerts for a user: failed runs, questions from agents, completed tasks, successes and changed results (per task notify_on).';
create index notifications_user_idx on public.notifications (user_id, created_at desc);
create index notifications_unread_idx on public.notifications (user_id) where read_at is null;
-- the purge job's walk (scheduler.purge_expired)
create index notifications_created_idx on public.notifications (created_at);

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
