-- Scheduling: when a task runs and the execution rows it makes.
--
-- * scheduler.new_execution builds every execution row (attempts, priority,
--   timeout, exclusivity and the skip reasons come from the task here only);
-- * scheduler.initial_next_run_at is the first occurrence of a new, edited
--   or resumed interval or once schedule (cron: the planner, croniter);
-- * enqueue_due (pg_cron and every worker's tick), apply_plan / fail_plan
--   (the worker's cron planner), enqueue_now (run now) and retry_execution
--   (a new run of a finished execution) are the only writers of executions
--   into the queue and of next_run_at.

-- The execution row of one run of a task, built here and nowhere else: its
-- attempts (max_retries + 1), priority, priority_class, timeout and exclusivity
-- (overlap_policy skip or queue) come from the task, and a skipped
-- occurrence gets its reason. p_skip is NULL for a queued run, or why the
-- occurrence is recorded as skipped: 'overlap' (the previous run is still
-- active), 'backlog' (max_queued_runs_per_task runs already wait: error_kind
-- overlap), 'misfire' (later than misfire_grace_seconds) or 'missed' (passed
-- while no scheduler ran); any other reason fails the error_kind CHECK on
-- insert. Every INSERT of executions selects its rows:
-- `insert into public.agent_task_executions select x.* from ... scheduler.new_execution(...) x`.
--
-- One row expression (everything in it is schema-qualified or in
-- pg_catalog). It pins `search_path = ''` as the Supabase advisors require of
-- every function, so it is called once per row rather than inlined, and it is
-- PL/pgSQL because a SQL function that is not inlined is planned anew at every
-- call (scheduler.duration_ms). The row lists the table's columns in order; a
-- new column makes this migration fail until it is added here.
create or replace function scheduler.new_execution(
  p_task public.agent_tasks,
  p_trigger_type text,
  p_scheduled_for timestamptz,
  p_run_after timestamptz,
  p_now timestamptz,
  p_skip text default null,
  p_conversation_id uuid default null,
  p_retry_of uuid default null
) returns public.agent_task_executions
language plpgsql
volatile
set search_path = ''
as $$
begin
  return row(
    gen_random_uuid(),                                   -- id
    p_task.id, p_task.user_id, p_task.agent_id,          -- task_id, user_id, agent_id
    p_trigger_type,
    case when p_skip is null then 'queued' else 'skipped' end,
    p_scheduled_for,
    p_run_after,
    0,                                                   -- attempt
    p_task.max_retries + 1,                              -- max_attempts
    p_task.priority,
    p_task.priority_class,
    0,                                                   -- turn: scheduler.assign_turn on insert
    p_task.timeout_seconds,
    p_task.overlap_policy <> 'allow',                    -- exclusive
    null, null, null, null,                              -- worker_id, lease_expires_at, heartbeat_at, started_at
    case when p_skip is not null then p_now end,         -- finished_at
    null,                                                -- duration_ms
    -- a retry runs in its execution's conversation when the task reuses one
    case when p_task.conversation_mode = 'reuse' then p_conversation_id end,
    null, null, null, null,                              -- resolved_prompt, user_message_id, assistant_message_id, output
    case p_skip                                          -- error
      when 'overlap' then 'skipped: the previous run was still active (overlap_policy = skip)'
      when 'backlog' then format('skipped: the task already had %s waiting to run (max_queued_runs_per_task)',
                                 scheduler.limit_int('max_queued_runs_per_task'))
      when 'misfire' then 'skipped: occurrence missed by more than misfire_grace_seconds (misfire_policy = skip)'
      when 'missed' then format('skipped: occurrence missed by more than misfire_grace_seconds (misfire_policy = %s)',
                                p_task.misfire_policy)
    end,
    null,                                                -- error_detail (set from error by a trigger)
    case p_skip when 'missed' then 'misfire' when 'backlog' then 'overlap' else p_skip end,  -- error_kind
    null,                                                -- usage
    p_retry_of,
    null,                                                -- cancel_requested_at
    now(), now()                                         -- created_at, updated_at
  )::public.agent_task_executions;
end
$$;

-- How many more runs of a task may wait in the queue: the room left under
-- max_queued_runs_per_task for an exclusive task (overlap_policy skip or
-- queue: its runs wait one behind the other, so a schedule faster than its
-- runs would pile them up without end, and every claim walks past the pile),
-- NULL when there is no bound (an 'allow' task, or the limit unset). The
-- planner skips the occurrences beyond it (enqueue_due, apply_plan: reason
-- 'backlog'); run_task_now and retry_execution are refused (PT409).
-- Counts at most the limit's rows (agent_task_executions_active_task_idx).
create or replace function scheduler.backlog_room(p_task_id uuid, p_overlap_policy text)
returns integer
language plpgsql
stable
set search_path = ''
as $$
declare
  v_max integer := least(scheduler.limit_int('max_queued_runs_per_task'), 2147483647);
begin
  if p_overlap_policy = 'allow' or v_max is null then
    return null;
  end if;
  return greatest(0, v_max - (select count(*) from (
    select 1 from public.agent_task_executions e
    where e.task_id = p_task_id and e.status = 'queued'
    limit v_max) q));
end
$$;

-- The first occurrence of a new, edited or resumed interval or once schedule,
-- from p_now: a once task's run_at (unless that very occurrence already ran),
-- an interval task's starts_at while it is ahead, else one interval from now.
-- NULL past ends_at, and for cron (the planner computes it with croniter, in
-- the task's time zone) and manual schedules. Later interval occurrences
-- follow from the previous one (enqueue_due), never from "now".
create or replace function scheduler.initial_next_run_at(p_task public.agent_tasks, p_now timestamptz)
returns timestamptz
language sql
immutable
set search_path = ''
as $$
  select case when n.at > p_task.ends_at then null else n.at end
  from (select case p_task.schedule_type
                 when 'once' then case when p_task.last_scheduled_for = p_task.run_at then null
                                       else p_task.run_at end
                 when 'interval' then case when p_task.starts_at >= p_now then p_task.starts_at
                                           else p_now + make_interval(secs => p_task.interval_seconds) end
               end as at) n
$$;
-- The operator's budgets on what a user writes into a task (scheduler.limits,
-- docs/security.md): the shortest interval, the largest max_retries and the
-- number of active tasks. Checked only for what the write sets or changes
-- (p_old NULL on insert), so a lowered limit never blocks an unrelated edit.
-- Raises 22023 naming the limit.
create or replace function scheduler.check_task_budgets(p_new public.agent_tasks, p_old public.agent_tasks)
returns void
language plpgsql
stable
security definer
set search_path = ''
as $$
declare
  v_max bigint;
  v_count bigint;
begin
  v_max := scheduler.limit_int('min_interval_seconds');
  -- (under 1 s is the column's CHECK, which says so itself)
  if p_new.schedule_type = 'interval' and p_new.interval_seconds between 1 and v_max - 1
     and (p_old is null or p_new.interval_seconds is distinct from p_old.interval_seconds
          or p_new.schedule_type is distinct from p_old.schedule_type) then
    raise exception 'interval_seconds is %; the shortest interval allowed is % s (min_interval_seconds)',
      p_new.interval_seconds, v_max using errcode = '22023';
  end if;
  v_max := scheduler.limit_int('max_retries');
  if p_new.max_retries > v_max and (p_old is null or p_new.max_retries is distinct from p_old.max_retries) then
    raise exception 'max_retries is %; the limit is % (max_retries)', p_new.max_retries, v_max
      using errcode = '22023';
  end if;
  -- live tasks: active or waiting for the user (whose reply makes it active
  -- again without counting it twice)
  v_max := scheduler.limit_int('max_active_tasks_per_user');
  if p_new.status = 'active' and (p_old is null or p_old.status not in ('active', 'waiting_input'))
     and v_max is not null then
    select count(*) into v_count from public.agent_tasks t
    where t.user_id = p_new.user_id and t.status in ('active', 'waiting_input') and t.id <> p_new.id;
    if v_count >= v_max then
      raise exception 'you have % active tasks; the limit is % (max_active_tasks_per_user): pause or delete one first',
        v_count, v_max using errcode = '22023';
    end if;
  end if;
end
$$;

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
  -- the window, readably (the CHECK agent_tasks_window stays the last word)
  if new.ends_at <= new.starts_at
     and (tg_op = 'INSERT' or new.starts_at is distinct from old.starts_at or new.ends_at is distinct from old.ends_at) then
    raise exception 'ends_at (%) must be later than the start of the schedule (%)', new.ends_at, new.starts_at
      using errcode = '22023', hint = 'leave either empty for an open window';
  end if;
  if tg_op = 'INSERT' or new.prompt_template is distinct from old.prompt_template
     or new.prompt_variables is distinct from old.prompt_variables then
    -- the size cap first: every writer meets it (scheduler.limits)
    v_error := coalesce(
      scheduler.json_size_error('prompt_variables', new.prompt_variables, 'max_prompt_variables_bytes'),
      scheduler.template_error(new.prompt_template, new.prompt_variables));
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
    perform scheduler.check_task_budgets(new, case when tg_op = 'UPDATE' then old end);
  end if;

  if new.status <> 'active' then
    new.next_run_at := null;
  elsif v_schedule_changed then
    new.schedule_version := case when tg_op = 'INSERT' then 1 else old.schedule_version + 1 end;
    new.plan_from := now();
    -- cron: NULL here, the planner computes it (woken below)
    new.next_run_at := scheduler.initial_next_run_at(new, now());
    if new.schedule_type = 'cron' then
      perform pg_notify('agent_tasks_plan', '');
    end if;
    -- a one-off that already ran has nothing left to run: resuming it needs a
    -- new run_at (given in the same update)
    if tg_op = 'UPDATE' and old.status = 'completed' and new.schedule_type = 'once' and new.next_run_at is null then
      raise exception 'this one-off task already ran; give it a new run_at (in the future) to resume it'
        using errcode = '22023';
    end if;
  end if;
  return new;
end
$$;
create trigger agent_tasks_before_write before insert or update on public.agent_tasks
  for each row execute function scheduler.agent_tasks_before_write();
-- The misfire policy, once, for every kind of schedule (interval and once
-- tasks from enqueue_due, cron tasks from apply_plan with the planner's
-- occurrences). p_due: a task's occurrences at or before p_now that were not
-- enqueued yet, ascending. An occurrence no older than misfire_grace_seconds
-- (default 60) is on time: the scheduler was late by a blip (a stalled tick, a
-- database restart) and it runs, however many there are. An older one was
-- missed during real downtime: misfire_policy run_once runs the latest missed
-- one (none when an on-time one runs in the same pass), skip runs none,
-- run_all runs the latest 100; every missed one not run is recorded as a
-- skipped execution (error_kind 'misfire'). p_more: later due occurrences
-- follow in another pass, so none of these missed ones is "the latest".
-- Returns the occurrences to run and those to record as skipped.
create or replace function scheduler.misfire_plan(
  p_policy text, p_grace_seconds integer, p_due timestamptz[], p_now timestamptz, p_more boolean default false,
  out run timestamptz[], out skipped timestamptz[]
)
language plpgsql
immutable
set search_path = ''
as $$
begin
  -- the common case, one occurrence on time, without the query (a burst of
  -- due tasks calls this once per task)
  if cardinality(p_due) = 1 and p_due[1] >= p_now - make_interval(secs => p_grace_seconds) then
    run := p_due;
    skipped := '{}';
    return;
  end if;
  with d as (
    select o, o >= p_now - make_interval(secs => p_grace_seconds) as on_time
    from unnest(p_due) o
  ),
  ranked as (
    select d.o, d.on_time,
           row_number() over (partition by d.on_time order by d.o desc) as from_latest,
           bool_or(d.on_time) over () as any_on_time
    from d
  ),
  decided as (
    select r.o, r.on_time or (not p_more and case p_policy
             when 'skip' then false
             when 'run_all' then r.from_latest <= 100
             else r.from_latest = 1 and not r.any_on_time  -- run_once
           end) as runs
    from ranked r
  )
  select coalesce(array_agg(x.o order by x.o) filter (where x.runs), '{}'),
         coalesce(array_agg(x.o order by x.o) filter (where not x.runs), '{}')
  into run, skipped
  from decided x;
end
$$;

-- Enqueue every due occurrence of active tasks. Idempotent: the unique
-- (task_id, scheduled_for) key turns a second enqueue into a no-op on
-- conflict, so pg_cron and any number of workers may call it at once. The
-- due occurrences of an interval task are its grid points from next_run_at up
-- to p_now (the latest 1,100 after a long downtime), a once or cron task's is
-- next_run_at; scheduler.misfire_plan decides which of them run. A cron task
-- whose next_run_at was missed (older than its grace) is handed back to the
-- planner (next_run_at = NULL, last_scheduled_for kept), which lists all its
-- missed occurrences for apply_plan: the same policy, decided over all of
-- them at once. A run is recorded as `skipped` (overlap) when overlap_policy
-- = 'skip' finds a previous run still active. The next occurrence is
-- computed here for interval and once schedules; cron tasks get next_run_at =
-- NULL and the worker's planner (croniter) fills it in, woken by NOTIFY
-- agent_tasks_plan. Returns the number of executions inserted.
create or replace function scheduler.enqueue_due(p_now timestamptz default null, p_limit integer default 5000)
returns integer
language plpgsql
security definer
set search_path = ''
-- jit only costs here: with nothing due the pass runs in well under 1 ms,
-- but statistics taken during a burst can push its estimated cost over
-- jit_above_cost, and each call then compiled for ~50 ms
-- (bench/bench_enqueue.py, idle_after at 1,000,000 tasks)
set jit = off
-- and the due scan walks agent_tasks_due_idx in order: a bitmap scan (chosen
-- with statistics taken during a burst) never marks the dead entries a burst
-- leaves in that index, so until autovacuum came every idle pass rechecked
-- all of them (10,000 after ten bursts: 13 ms a pass at 100,000 tasks); the
-- ordered walk marks them dead once and skips them after (1.2 ms)
set enable_bitmapscan = off
-- one cached plan: the pass is one large statement, and re-planning it at
-- every call (the custom plans plpgsql chose) cost more than running it:
-- 1.75 ms p50 / 6.6 ms p99 idle at 100,000 tasks against 0.42 / 0.83 ms.
-- The generic plan cannot see how few tasks are due; with hash and merge
-- joins off it looks each due task up by primary key (nested loops over the
-- batch) instead of hashing agent_tasks (bench/bench_enqueue.py)
set plan_cache_mode = force_generic_plan
set enable_hashjoin = off
set enable_mergejoin = off
as $$
declare
  v_now timestamptz := coalesce(p_now, now());
  v_inserted integer;
  v_cron integer;
begin
  with due as (
    select t as task, t.id, t.next_run_at, t.overlap_policy, t.misfire_policy, t.misfire_grace_seconds,
           t.schedule_type, t.interval_seconds, t.ends_at, t.max_runs, t.run_count,
           -- grid points at or before now (interval), else the one occurrence
           case when t.schedule_type = 'interval'
                then floor(extract(epoch from (v_now - t.next_run_at)) / t.interval_seconds)::integer + 1
                else 1 end as steps,
           -- a missed cron occurrence: the planner decides over all the missed ones
           (t.schedule_type = 'cron'
            and t.next_run_at < v_now - make_interval(secs => t.misfire_grace_seconds)) as to_planner
    from public.agent_tasks t
    where t.status = 'active' and t.next_run_at <= v_now
    order by t.next_run_at
    limit p_limit
    for update skip locked
  ),
  decided as (
    select d.*, mp.run as run_occ, mp.skipped as missed_occ, g.last_due,
           (d.overlap_policy = 'skip' and exists (
              select 1 from public.agent_task_executions e
              where e.task_id = d.id and e.status in ('queued', 'running'))) as overlapping,
           -- an exclusive task's runs beyond the backlog's room are skipped
           -- (overlap_policy skip queues several only when catching up)
           case when d.overlap_policy = 'queue' or (d.overlap_policy = 'skip' and d.steps > 1)
                then scheduler.backlog_room(d.id, d.overlap_policy) end as room
    from due d
    cross join lateral (
      select array_agg(o order by o) as due_occ, max(o) as last_due
      from generate_series(greatest(0, d.steps - 1100), d.steps - 1) k
      cross join lateral (select d.next_run_at
                                 + make_interval(secs => coalesce(d.interval_seconds, 0)::double precision * k) as o) x
      where d.ends_at is null or x.o <= d.ends_at or d.schedule_type <> 'interval'
    ) g
    cross join lateral scheduler.misfire_plan(d.misfire_policy, d.misfire_grace_seconds,
                                              coalesce(g.due_occ, '{}'), v_now) mp
    where not d.to_planner
  ),
  inserted as (
    insert into public.agent_task_executions as e
    select x.*
    from decided d
    cross join lateral (
      select r.o, r.n from unnest(d.run_occ) with ordinality as r(o, n)
      -- never more runs than max_runs allows (the earliest ones)
      where d.max_runs is null or r.n <= d.max_runs - d.run_count
    ) r
    cross join lateral scheduler.new_execution(d.task, 'schedule', r.o, r.o, v_now,
                                               case when d.overlapping then 'overlap'
                                                    when r.n > d.room then 'backlog' end) x
    on conflict (task_id, scheduled_for) do nothing
    returning e.task_id, e.status
  ),
  missed as (
    insert into public.agent_task_executions
    select x.*
    from decided d
    cross join lateral unnest(d.missed_occ) as o
    cross join lateral scheduler.new_execution(d.task, 'schedule', o, v_now, v_now, 'missed') x
    on conflict (task_id, scheduled_for) do nothing
  ),
  counted as (
    select d.*, d.run_count + coalesce(q.n, 0) as new_run_count
    from decided d
    left join (select i.task_id, count(*)::integer as n from inserted i
               where i.status = 'queued' group by i.task_id) q on q.task_id = d.id
  ),
  planned as (
    select c.id, coalesce(c.last_due, c.next_run_at) as occurrence, c.new_run_count, c.schedule_type,
      case
        when c.max_runs is not null and c.new_run_count >= c.max_runs then null
        -- the interval grid continues after now, never from "now" itself
        when c.schedule_type = 'interval'
             and (c.ends_at is null
                  or c.next_run_at + make_interval(secs => c.interval_seconds::double precision * c.steps) <= c.ends_at)
          then c.next_run_at + make_interval(secs => c.interval_seconds::double precision * c.steps)
        else null  -- once: done; cron: the planner
      end as next_run_at,
      (c.max_runs is not null and c.new_run_count >= c.max_runs) as exhausted
    from counted c
    union all
    select d.id, null, d.run_count, d.schedule_type, null, false from due d where d.to_planner
  ),
  advanced as (
    update public.agent_tasks t set
      last_scheduled_for = coalesce(p.occurrence, t.last_scheduled_for),
      run_count = p.new_run_count,
      next_run_at = p.next_run_at,
      status = case when p.next_run_at is null and (p.schedule_type <> 'cron' or p.exhausted)
                    then 'completed' else t.status end
    from planned p
    where t.id = p.id
    returning t.id, t.schedule_type, t.next_run_at, t.status
  )
  select (select count(*) from inserted),
         (select count(*) from advanced a where a.schedule_type = 'cron' and a.status = 'active')
    into v_inserted, v_cron;

  -- cron tasks need their next occurrence from the planner (which also
  -- applies ends_at): wake it
  if v_cron > 0 then
    perform pg_notify('agent_tasks_plan', '');
  end if;
  return v_inserted;
end
$$;

-- A skipped occurrence (overlap, misfire, missed while no scheduler ran) is
-- also told in the task's conversation, so the user reading it sees the gap:
-- one system message per task and statement (a catch-up that records many
-- missed occurrences says how many), metadata {source: 'scheduler', kind:
-- 'skipped', task_id, task_name, execution_id (the first skipped),
-- scheduled_for (the first), skipped_count, reason (the error_kind: overlap /
-- misfire), trigger_type: 'schedule'}. Only a task that reuses one
-- conversation has one to write in; a new_per_run task's skips stay in its
-- execution history. Statement-level: an insert with no skipped row costs
-- one scan of the inserted rows.
create or replace function scheduler.tell_skipped_occurrences() returns trigger
language plpgsql
security definer
set search_path = ''
as $$
begin
  insert into public.chat_messages_v2 (conversation_id, user_id, role, content, metadata, execution_id)
  select t.conversation_id, t.user_id, 'system',
         case when s.n = 1
              then format('Skipped the run of "%s" scheduled for %s: %s', t.name,
                          to_char(s.first_for at time zone t.timezone, 'YYYY-MM-DD HH24:MI'), s.error)
              else format('Skipped %s runs of "%s" from %s: %s', s.n, t.name,
                          to_char(s.first_for at time zone t.timezone, 'YYYY-MM-DD HH24:MI'), s.error)
         end,
         jsonb_build_object('source', 'scheduler', 'kind', 'skipped', 'task_id', t.id, 'task_name', t.name,
                            'execution_id', s.first_id, 'scheduled_for', s.first_for, 'skipped_count', s.n,
                            'reason', s.error_kind, 'trigger_type', 'schedule'),
         s.first_id
  from (select r.task_id, count(*)::integer as n,
               (array_agg(r.id order by r.scheduled_for))[1] as first_id,
               min(r.scheduled_for) as first_for,
               (array_agg(r.error order by r.scheduled_for))[1] as error,
               (array_agg(r.error_kind order by r.scheduled_for))[1] as error_kind
        from new_rows r
        where r.status = 'skipped'
        group by r.task_id) s
  join public.agent_tasks t on t.id = s.task_id
  join public.conversation_sessions c on c.id = t.conversation_id and c.deleted_at is null
  where t.conversation_mode = 'reuse';
  return null;
end
$$;
create trigger agent_task_executions_tell_skipped after insert on public.agent_task_executions
  referencing new table as new_rows
  for each statement execute function scheduler.tell_skipped_occurrences();

-- Cron tasks waiting for their next occurrence (the planner's input).
create or replace function scheduler.tasks_to_plan(p_limit integer default 500)
returns table (
  id uuid, schedule_version integer, cron_expression text, timezone text,
  starts_at timestamptz, ends_at timestamptz, max_runs integer, run_count integer,
  last_scheduled_for timestamptz, created_at timestamptz, misfire_policy text,
  misfire_grace_seconds integer, plan_from timestamptz
)
language sql
stable
security definer
set search_path = ''
as $$
  select t.id, t.schedule_version, t.cron_expression, t.timezone, t.starts_at, t.ends_at,
         t.max_runs, t.run_count, t.last_scheduled_for, t.created_at, t.misfire_policy,
         t.misfire_grace_seconds, t.plan_from
  from public.agent_tasks t
  where t.status = 'active' and t.next_run_at is null and t.schedule_type = 'cron'
  order by t.plan_from
  limit p_limit
$$;

-- Apply the planner's result for one cron task: p_due, its occurrences at or
-- before p_now not yet enqueued (ascending; p_more when more follow in the
-- next pass), and the next occurrence after now (NULL with p_complete = true
-- ends the schedule). Which due ones run and which are recorded as skipped is
-- scheduler.misfire_plan's decision, as for interval tasks in enqueue_due.
-- Guarded on schedule_version so a plan made from an older copy of the task
-- is dropped. Returns false when the guard dropped it.
create or replace function scheduler.apply_plan(
  p_task_id uuid,
  p_schedule_version integer,
  p_next_run_at timestamptz,
  p_complete boolean default false,
  p_due timestamptz[] default '{}',
  p_more boolean default false,
  p_now timestamptz default null
) returns boolean
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_now timestamptz := coalesce(p_now, now());
  v_task public.agent_tasks;
  v_plan record;
  v_run timestamptz[];
  v_queued integer := 0;
  v_room integer;
  v_complete boolean := p_complete;
begin
  select * into v_task from public.agent_tasks
  where id = p_task_id and schedule_version = p_schedule_version
    and status = 'active' and next_run_at is null
  for update;
  if not found then
    return false;
  end if;

  select * into v_plan from scheduler.misfire_plan(v_task.misfire_policy, v_task.misfire_grace_seconds,
                                                   p_due, v_now, p_more);
  v_run := v_plan.run;
  -- runs beyond the backlog's room are recorded as skipped, not queued
  v_room := scheduler.backlog_room(p_task_id, v_task.overlap_policy);
  if cardinality(v_run) > v_room then
    insert into public.agent_task_executions
    select x.* from unnest(v_run[v_room + 1:]) s
    cross join lateral scheduler.new_execution(v_task, 'schedule', s, s, v_now, 'backlog') x
    on conflict (task_id, scheduled_for) do nothing;
    v_run := v_run[1:v_room];
  end if;
  if v_task.max_runs is not null and cardinality(v_run) >= v_task.max_runs - v_task.run_count then
    -- later occurrences are past the task's last run
    v_run := v_run[1:greatest(0, v_task.max_runs - v_task.run_count)];
    v_complete := true;
  end if;

  if cardinality(v_plan.skipped) > 0 then
    insert into public.agent_task_executions
    select x.* from unnest(v_plan.skipped) s
    cross join lateral scheduler.new_execution(v_task, 'schedule', s, v_now, v_now, 'missed') x
    on conflict (task_id, scheduled_for) do nothing;
  end if;

  if cardinality(v_run) > 0 then
    with ins as (
      insert into public.agent_task_executions
      select x.* from unnest(v_run) s
      cross join lateral scheduler.new_execution(v_task, 'schedule', s, s, v_now) x
      on conflict (task_id, scheduled_for) do nothing
      returning 1
    )
    select count(*) into v_queued from ins;
  end if;

  update public.agent_tasks set
    next_run_at = case when v_complete or p_more then null else p_next_run_at end,
    status = case when v_complete then 'completed' else status end,
    run_count = run_count + v_queued,
    last_scheduled_for = greatest(last_scheduled_for, (select max(x) from unnest(p_due) x))
  where id = p_task_id;
  return true;
end
$$;

-- A cron task the planner cannot compute (croniter refused it although the
-- database accepted it) goes to status 'error' with a readable last_error,
-- instead of silently never running, and its owner is told (a task_failed
-- notification naming the task, with no execution). Guarded on
-- schedule_version like apply_plan.
create or replace function scheduler.fail_plan(
  p_task_id uuid, p_schedule_version integer, p_error text
) returns boolean
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_task public.agent_tasks;
  v_about public.agent_task_executions;
begin
  update public.agent_tasks set
    status = 'error',
    last_error = left('cannot compute the next run: ' || p_error, 2000)
  where id = p_task_id and schedule_version = p_schedule_version and status = 'active'
  returning * into v_task;
  if not found then
    return false;
  end if;
  v_about.user_id := v_task.user_id;
  v_about.task_id := v_task.id;
  v_about.conversation_id := v_task.conversation_id;
  perform scheduler.notify_user(v_about, 'task_failed',
    format('Scheduled task "%s" stopped: its schedule cannot be computed', v_task.name), v_task.last_error);
  return true;
end
$$;

-- Enqueue a run of a task now (trigger_type 'manual'), whatever its schedule.
-- A retry of an earlier execution (trigger_type 'retry') passes that run's
-- conversation (used when the task reuses one) and its id (retry_of).
create or replace function scheduler.enqueue_now(
  p_task_id uuid, p_trigger_type text default 'manual', p_now timestamptz default null,
  p_conversation_id uuid default null, p_retry_of uuid default null
) returns uuid
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_now timestamptz := coalesce(p_now, clock_timestamp());
  v_task public.agent_tasks;
  v_id uuid;
  v_budget text;
begin
  select * into v_task from public.agent_tasks where id = p_task_id;
  if not found then
    raise exception 'task % not found', p_task_id using errcode = 'P0002';
  end if;
  -- a run nobody scheduled may not start a budget that is used up
  v_budget := scheduler.budget_error(v_task.user_id, p_task_id, v_now);
  if v_budget is not null then
    raise exception '%', v_budget using errcode = 'PT429';
  end if;
  insert into public.agent_task_executions
  select x.* from scheduler.new_execution(v_task, p_trigger_type, v_now, coalesce(p_now, now()), v_now,
                                          null, p_conversation_id, p_retry_of) x
  returning id into v_id;
  update public.agent_tasks set run_count = run_count + 1 where id = p_task_id;
  return v_id;
end
$$;

-- Re-run a finished execution as a new one (trigger_type 'retry') in the
-- same conversation. Returns the new execution's id.
create or replace function scheduler.retry_execution(p_execution_id uuid, p_now timestamptz default null)
returns uuid
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_old public.agent_task_executions;
begin
  select * into v_old from public.agent_task_executions where id = p_execution_id;
  if not found then
    raise exception 'execution % not found', p_execution_id using errcode = 'P0002';
  end if;
  if not scheduler.is_terminal(v_old.status) or v_old.status = 'succeeded' then
    raise exception 'execution % is %: only failed, timed out, cancelled or skipped executions can be retried',
      p_execution_id, v_old.status using errcode = '55000';
  end if;
  return scheduler.enqueue_now(v_old.task_id, 'retry', p_now, v_old.conversation_id, v_old.id);
end
$$;

grant execute on function
  scheduler.enqueue_due(timestamptz, integer),
  scheduler.tasks_to_plan(integer),
  scheduler.apply_plan(uuid, integer, timestamptz, boolean, timestamptz[], boolean, timestamptz),
  scheduler.misfire_plan(text, integer, timestamptz[], timestamptz, boolean),
  scheduler.fail_plan(uuid, integer, text),
  scheduler.enqueue_now(uuid, text, timestamptz, uuid, uuid),
  scheduler.retry_execution(uuid, timestamptz)
to task_worker, service_role;
