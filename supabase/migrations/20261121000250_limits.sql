-- Limits and budgets: what one tenant may cost the others and the bill.
--
-- Every limit is a row of scheduler.limits, so an operator changes it with
-- one UPDATE (no migration, no restart); docs/security.md lists each one
-- with its default and who meets it. The checks live where each rule is
-- owned and read their numbers here:
--   * size caps (every writer, the scheduler included): the write triggers
--     of agents, chat_messages_v2 and agent_tasks, and scheduler.cron_error;
--   * user budgets (writes made through the API roles: supabase-js, the chat
--     function's tools, the CLI acting for a user; the operator's own SQL is
--     not limited): agent_tasks_before_write, agents_before_write, the client
--     API's rate limits (scheduler.action_rate_check);
--   * token and run budgets (scheduler.budget_error), counted from the usage
--     the model reports (chat_private.record_assistant_reply ->
--     scheduler.count_usage): refused up front (run_task_now, the chat
--     function's turn_check), and a task that uses one up pauses itself
--     (scheduler.pause_for_budget, from finish_executions, through
--     scheduler.pause_with_notice in the task lifecycle) until the next UTC
--     day (scheduler.resume_after_budget, pg_cron) or resume_task.

-- The operator's settings, one row per limit. value is jsonb: a number, or
-- for allowed_models an array of model names (null: any model).
create table scheduler.limits (
  name text primary key,
  value jsonb,
  description text not null,
  updated_at timestamptz not null default now()
);
comment on table scheduler.limits is
  'Operator limits and budgets (docs/security.md); change with UPDATE, effective at once for new writes and turns.';
alter table scheduler.limits enable row level security;
revoke all on scheduler.limits from public, anon, authenticated;
grant select, update on scheduler.limits to service_role;

insert into scheduler.limits (name, value, description) values
  ('max_cron_expression_chars', '256',
   'longest cron expression accepted (every field written out in full fits in 200 characters)'),
  ('max_message_metadata_bytes', '65536', 'largest chat_messages_v2.metadata (pg_column_size)'),
  ('max_agent_settings_bytes', '16384', 'largest agents.settings (pg_column_size)'),
  ('max_prompt_variables_bytes', '16384', 'largest agent_tasks.prompt_variables (pg_column_size)'),
  ('max_task_state_bytes', '32768',
   'largest agent_tasks.state an agent''s report may leave (pg_column_size); a larger state_update is not applied'),
  ('min_interval_seconds', '60', 'shortest interval schedule a user may set'),
  ('max_active_tasks_per_user', '100', 'active tasks one user may have'),
  ('max_queued_runs_per_task', '10',
   'runs of one exclusive task (overlap_policy skip or queue) that may wait behind its running one; later occurrences are skipped, run now and retry refused'),
  ('max_retries', '5', 'largest max_retries a user may set'),
  ('run_now_per_minute', '10', 'run_task_now calls per user per minute (agent tools included)'),
  ('retry_per_minute', '10', 'retry_execution calls per user per minute'),
  ('max_tokens_per_user_per_day', '1000000',
   'model tokens (total_tokens as the model reports them) per user per UTC day, chat and scheduled runs together'),
  ('allowed_models', '["gpt-4o-mini", "gpt-4o", "gpt-4.1-mini", "gpt-4.1-nano", "gpt-4.1"]',
   'models a user may set on an agent (null: any)'),
  ('max_output_tokens', '4096', 'largest agents.settings.max_tokens a user may set'),
  ('max_history_token_budget', '32000', 'largest agents.settings.history_token_budget a user may set'),
  -- retention (scheduler.purge_expired, the purge job): null keeps the rows
  ('history_retention_days', '30',
   'finished executions older than this many days are deleted (their messages stay in the conversations)'),
  ('notification_retention_days', '90', 'notifications older than this many days are deleted, read or not'),
  ('token_usage_retention_days', '400',
   'daily token counts (scheduler.token_usage) older than this many days are deleted; budgets read today''s');

-- A numeric limit (NULL when unset: no limit). stable: read once per statement.
-- (PL/pgSQL, as the hot path's helpers: its plan is kept for the session;
-- scheduler.duration_ms says why)
create or replace function scheduler.limit_int(p_name text) returns bigint
language plpgsql
stable
set search_path = ''
as $$
begin
  return (select (l.value #>> '{}')::bigint from scheduler.limits l
          where l.name = p_name and jsonb_typeof(l.value) = 'number');
end
$$;

-- The models users may set (NULL: any).
create or replace function scheduler.allowed_models() returns text[]
language sql
stable
set search_path = ''
as $$
  select array(select jsonb_array_elements_text(l.value))
  from scheduler.limits l where l.name = 'allowed_models' and jsonb_typeof(l.value) = 'array'
$$;

-- Why a jsonb value is too large for the limit p_limit_name, or NULL.
create or replace function scheduler.json_size_error(p_column text, p_value jsonb, p_limit_name text)
returns text
language plpgsql
stable
set search_path = ''
as $$
declare
  v_max bigint := scheduler.limit_int(p_limit_name);
  v_size integer := pg_column_size(p_value);
begin
  if p_value is not null and v_max is not null and v_size > v_max then
    return format('%s is %s bytes; the limit is %s bytes (%s)', p_column, v_size, v_max, p_limit_name);
  end if;
  return null;
end
$$;

-- Tokens the model reported, per UTC day, user and task (the nil uuid: the
-- user's own chat turns). Written by count_usage only.
create table scheduler.token_usage (
  day date not null,
  user_id uuid not null references auth.users (id) on delete cascade,
  task_id uuid not null default '00000000-0000-0000-0000-000000000000',
  tokens bigint not null default 0 check (tokens >= 0),
  turns integer not null default 0 check (turns >= 0),
  primary key (user_id, day, task_id)
);
comment on table scheduler.token_usage is
  'Model tokens per UTC day, user and task, as the model reported them (usage.total_tokens of each stored reply).';
alter table scheduler.token_usage enable row level security;
revoke all on scheduler.token_usage from public, anon, authenticated;
grant select on scheduler.token_usage to service_role;
-- a day's rows across users (also the purge job's walk, scheduler.purge_expired)
create index token_usage_day_idx on scheduler.token_usage (day);

-- The UTC day a moment counts toward, and the moment that day ends.
create or replace function scheduler.usage_day(p_now timestamptz) returns date
language plpgsql
immutable
set search_path = ''
as $$
begin
  return (p_now at time zone 'UTC')::date;
end
$$;

-- Count the usage of one stored reply (the chat function's metadata.usage)
-- toward its user's day and, for a scheduled run, its task's day.
create or replace function scheduler.count_usage(
  p_user_id uuid, p_execution_id uuid, p_usage jsonb, p_now timestamptz default null
) returns void
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_tokens bigint;
  v_task_id uuid;
begin
  if jsonb_typeof(p_usage) <> 'object' then
    return;
  end if;
  v_tokens := case when jsonb_typeof(p_usage -> 'total_tokens') = 'number'
                   then greatest(0, floor((p_usage ->> 'total_tokens')::numeric))::bigint
                   else coalesce(case when jsonb_typeof(p_usage -> 'prompt_tokens') = 'number'
                                      then floor((p_usage ->> 'prompt_tokens')::numeric)::bigint end, 0)
                        + coalesce(case when jsonb_typeof(p_usage -> 'completion_tokens') = 'number'
                                        then floor((p_usage ->> 'completion_tokens')::numeric)::bigint end, 0)
              end;
  if p_execution_id is not null then
    select e.task_id into v_task_id from public.agent_task_executions e where e.id = p_execution_id;
  end if;
  insert into scheduler.token_usage as u (day, user_id, task_id, tokens, turns)
  values (scheduler.usage_day(coalesce(p_now, now())), p_user_id,
          coalesce(v_task_id, '00000000-0000-0000-0000-000000000000'), greatest(v_tokens, 0), 1)
  on conflict (user_id, day, task_id) do update
    set tokens = u.tokens + excluded.tokens, turns = u.turns + 1;
end
$$;

-- Tokens each of these users (p_task_id NULL) or one task of theirs used on
-- the UTC day of p_now; users with nothing counted have no row. The one
-- definition of "tokens used today", for one user or a batch's.
create or replace function scheduler.tokens_used_by(p_user_ids uuid[], p_task_id uuid,
                                                    p_now timestamptz default null)
returns table (user_id uuid, tokens bigint)
language plpgsql
stable
set search_path = ''
as $$
begin
  return query
  select u.user_id, sum(u.tokens)::bigint from scheduler.token_usage u
  where u.user_id = any (p_user_ids) and u.day = scheduler.usage_day(coalesce(p_now, now()))
    and (p_task_id is null or u.task_id = p_task_id)
  group by u.user_id;
end
$$;

-- Tokens a user (p_task_id NULL) or one task used on the UTC day of p_now.
create or replace function scheduler.tokens_used(p_user_id uuid, p_task_id uuid, p_now timestamptz default null)
returns bigint
language plpgsql
stable
set search_path = ''
as $$
begin
  return coalesce((select t.tokens from scheduler.tokens_used_by(array[p_user_id], p_task_id, p_now) t), 0);
end
$$;

-- Of these users, those whose daily token budget (max_tokens_per_user_per_day)
-- is used up today: budget_error's first check, for many users at once (a
-- finish of ten runs asks once, and runs budget_error only for the tasks that
-- can be over a budget).
create or replace function scheduler.users_over_token_budget(p_user_ids uuid[], p_now timestamptz default null)
returns uuid[]
language plpgsql
stable
security definer
set search_path = ''
as $$
declare
  v_max bigint := scheduler.limit_int('max_tokens_per_user_per_day');
begin
  if v_max is null then
    return '{}'::uuid[];
  end if;
  return array(select t.user_id from scheduler.tokens_used_by(p_user_ids, null, p_now) t where t.tokens >= v_max);
end
$$;

-- The budget a user or task has used up today, as a readable sentence naming
-- the limit, or NULL. p_task_id NULL checks the user's daily tokens only.
create or replace function scheduler.budget_error(p_user_id uuid, p_task_id uuid, p_now timestamptz default null)
returns text
language plpgsql
stable
security definer
set search_path = ''
as $$
declare
  v_now timestamptz := coalesce(p_now, now());
  v_day_start timestamptz := scheduler.usage_day(v_now)::timestamp at time zone 'UTC';
  v_used bigint;
  v_task record;
begin
  if p_user_id = any (scheduler.users_over_token_budget(array[p_user_id], v_now)) then
    return format('daily token budget used up: %s of %s tokens today (max_tokens_per_user_per_day); '
                  || 'it renews at 00:00 UTC', scheduler.tokens_used(p_user_id, null, v_now),
                  scheduler.limit_int('max_tokens_per_user_per_day'));
  end if;
  if p_task_id is null then
    return null;
  end if;
  select t.max_runs_per_day, t.max_tokens_per_day into v_task from public.agent_tasks t where t.id = p_task_id;
  if v_task.max_tokens_per_day is not null then
    v_used := scheduler.tokens_used(p_user_id, p_task_id, v_now);
    if v_used >= v_task.max_tokens_per_day then
      return format('this task''s daily token budget is used up: %s of %s tokens today (max_tokens_per_day); '
                    || 'it renews at 00:00 UTC', v_used, v_task.max_tokens_per_day);
    end if;
  end if;
  if v_task.max_runs_per_day is not null then
    select count(*) into v_used from public.agent_task_executions e
    where e.task_id = p_task_id and e.created_at >= v_day_start and e.status <> 'skipped';
    if v_used >= v_task.max_runs_per_day then
      return format('this task ran %s times today, its max_runs_per_day is %s; it renews at 00:00 UTC',
                    v_used, v_task.max_runs_per_day);
    end if;
  end if;
  return null;
end
$$;

-- Count one call of p_action ('run_now' or 'retry') by the signed-in user
-- (the fixed window of chat_private.rate_limit_hit, one minute); refuse it
-- (SQLSTATE PT429: PostgREST answers HTTP 429) when the user is over
-- <action>_per_minute. The refused call counts too.
create or replace function scheduler.action_rate_check(p_action text, p_now timestamptz default null)
returns void
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_limit_name text := p_action || '_per_minute';
  v_max bigint := scheduler.limit_int(v_limit_name);
  v_wait integer;
begin
  if v_max is null or auth.uid() is null then
    return;
  end if;
  v_wait := chat_private.rate_limit_hit(auth.uid(), least(v_max, 2147483647)::integer, 60, p_now, p_action);
  if v_wait > 0 then
    raise exception 'rate limit reached: at most % % calls per minute (%); retry in % s',
      v_max, p_action, v_limit_name, v_wait using errcode = 'PT429';
  end if;
end
$$;

grant execute on function
  scheduler.limit_int(text),
  scheduler.allowed_models(),
  scheduler.budget_error(uuid, uuid, timestamptz),
  scheduler.users_over_token_budget(uuid[], timestamptz),
  scheduler.tokens_used(uuid, uuid, timestamptz),
  scheduler.tokens_used_by(uuid[], uuid, timestamptz)
to service_role;
