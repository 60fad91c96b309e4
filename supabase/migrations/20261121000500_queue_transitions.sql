-- Queue transitions: every move of an execution after it is queued is one
-- function here, guarded on the current state (and, for the worker's writes,
-- on worker_id and attempt, so a rescued execution cannot be finished twice):
-- claim, heartbeat, start, finish, requeue with backoff, release, rescue,
-- cancel. docs/state-machine.md draws the diagram and names the owner of each
-- edge. Making executions (enqueue) is scheduling; what a finished execution
-- does to its task is the task lifecycle (record_outcome).
--
-- All functions take an optional p_now so tests control time. They are
-- `security definer` so the worker's role (task_worker) needs no table
-- privileges at all; EXECUTE is granted to task_worker and service_role only.

-- Live workers, for `status` and operator views, and the liveness rule of
-- rescue_dead_workers: a worker is alive while the database session it
-- attached (backend_pid + backend_start, its LISTEN connection) exists.
create table scheduler.workers (
  id text primary key,
  hostname text not null,
  pid integer not null,
  concurrency integer not null,
  in_flight integer not null default 0,
  started_at timestamptz not null default now(),
  last_seen_at timestamptz not null default now(),
  backend_pid integer,
  backend_start timestamptz,
  -- when a rescuer first saw the attached session gone (null: alive or never attached)
  session_lost_at timestamptz,
  -- the worker's circuit breaker on the chat function: open since (null:
  -- closed, the worker claims), and why (scheduler.report_chat_circuit)
  chat_circuit_open_since timestamptz,
  chat_circuit_reason text check (length(chat_circuit_reason) <= 500)
);
alter table scheduler.workers enable row level security;
comment on table scheduler.workers is 'Workers that heartbeat; rows older than a few leases are removed by the rescuer.';

-- Fair sharing across users. Every queued execution gets a turn when it is
-- inserted (scheduler.assign_turn, below): one past its user's last queued
-- turn, but never behind the head of its class (the lowest turn still
-- queued there). The claim hands out slots in (priority_class desc, turn)
-- order, so users take turns one run each, round-robin, however much one of
-- them has queued and whatever priority they set; a user who queues after a
-- quiet spell starts at the head, not behind someone's backlog. A task's
-- priority orders only its owner's work: a user's slot goes to that user's
-- most urgent run. priority_class is the operator's (agent_tasks, no user
-- grant, copied by scheduler.new_execution): a higher class is served
-- before any lower one. Turns are read from
-- committed rows without a lock, so two runs of one user queued in the same
-- instant can share a turn (one extra slot, once). docs/state-machine.md
-- ("Fair sharing").
create or replace function scheduler.assign_turn() returns trigger
language plpgsql
-- security definer: the head of the queue is every user's rows, whoever
-- inserts (RLS would show an invoker only their own)
security definer
set search_path = ''
as $$
begin
  new.turn := greatest(
    (select e.turn + 1 from public.agent_task_executions e
     where e.user_id = new.user_id and e.status = 'queued'
     order by e.turn desc limit 1),
    (select e.turn from public.agent_task_executions e
     where e.status = 'queued' and e.priority_class = new.priority_class
     order by e.priority_class desc, e.turn limit 1),
    0);
  return new;
end
$$;
create trigger agent_task_executions_assign_turn before insert on public.agent_task_executions
  for each row when (new.status = 'queued') execute function scheduler.assign_turn();

-- claim_executions: take up to p_limit claimable executions for a worker.
-- Two index walks, both FOR UPDATE SKIP LOCKED and both stopping after the
-- batch: the next p_limit turns in fair order give each user its slots
-- (above), then each user's slots go to that user's own runs by priority,
-- then occurrence. Sets the lease and worker_id and increments attempt.
-- Executions of a task whose overlap_policy is skip or queue (exclusive)
-- never run two at a time, and p_per_user_limit caps how many executions of
-- one user run at once across all workers. Both caps are checked against
-- committed rows: two workers claiming in the same instant can each pass
-- them once (documented in docs/state-machine.md).
create or replace function scheduler.claim_executions(
  p_worker_id text,
  p_limit integer,
  p_lease_seconds integer default 30,
  p_per_user_limit integer default null,
  p_now timestamptz default null
) returns table (
  id uuid, task_id uuid, user_id uuid, agent_id uuid, trigger_type text, attempt integer,
  max_attempts integer, scheduled_for timestamptz, timeout_seconds integer,
  conversation_id uuid, user_message_id uuid, resolved_prompt text,
  task_name text, prompt_template text, prompt_variables jsonb, timezone text,
  conversation_mode text, task_conversation_id uuid, task_state jsonb
)
language plpgsql
security definer
set search_path = ''
-- one cached plan: re-planning this query on every call (custom plans) costs
-- more than running it (bench/bench_queue.py)
set plan_cache_mode = force_generic_plan
-- and that plan walks agent_task_executions_claim_idx in claim order and
-- stops after the batch, whatever the history size and the statistics: the
-- generic plan cannot see the LIMIT, so with a deep queue (or statistics
-- taken during a burst) it chose a bitmap scan that read and sorted every
-- queued row (49 ms at 60,000 queued). With sorts and bitmap scans disabled
-- the ordered index scans are the only plans left for the walks; the sorts
-- below (a few dozen rows) still run. Hash and merge joins off: the generic
-- plan cannot see how few rows each user's slots take either (the lateral
-- pick's LIMIT), estimated thousands, and hashed the whole executions table
-- to update ten rows; nested loops over the batch with primary-key lookups
-- are the only plan left. jit off: the disabled paths' cost would cross
-- jit_above_cost and compile for ~0.5 s per session.
-- docs/state-machine.md ("The claim's plan"); bench/bench_claim_depth.py.
set enable_sort = off
set enable_bitmapscan = off
set enable_hashjoin = off
set enable_mergejoin = off
set jit = off
as $$
declare
  v_now timestamptz := coalesce(p_now, now());
begin
  if p_limit is null or p_limit < 1 then
    return;
  end if;
  return query
  with running as (
    -- each user's running runs, counted once per claim: the users at the
    -- cap (below) and the batch users' counts (slot_running) both read this.
    -- Counting them twice, the second time joined to the batch's users row
    -- by row, was a quarter of the claim with 1,700 runs running (5.0 ms
    -- against 3.2 ms; bench/README.md, sixth pass)
    select e.user_id, count(*)::integer as n
    from public.agent_task_executions e
    where p_per_user_limit is not null and e.status = 'running'
    group by e.user_id
  ),
  capped as (
    -- users already at the cap take no slot: their backlog must not take
    -- the batch's slots and hold back everyone queued behind it
    select u.user_id from running u where u.n >= p_per_user_limit
  ),
  turns as (
    -- the next turns in fair order, locked so that a concurrent claim walks
    -- past them to the following turns. A turn that cannot run now (its user
    -- at the cap, its exclusive task running) is walked past, not counted:
    -- a slot given to it would stay empty, again at every claim
    select e.user_id
    from public.agent_task_executions e
    where e.status = 'queued' and e.run_after <= v_now
      and (p_per_user_limit is null or e.user_id not in (select c.user_id from capped c))
      and (not e.exclusive or not exists (
             select 1 from public.agent_task_executions r
             where r.task_id = e.task_id and r.status = 'running'))
    order by e.priority_class desc, e.turn
    limit p_limit
    for update skip locked
  ),
  slots as (
    select t.user_id, count(*)::integer as n from turns t group by t.user_id
  ),
  candidates as (
    -- each user's slots go to that user's most urgent runs
    select p.*
    from slots s
    cross join lateral (
      select e.id, e.user_id, e.task_id, e.exclusive, e.priority_class, e.priority, e.scheduled_for
      from public.agent_task_executions e
      where e.user_id = s.user_id and e.status = 'queued' and e.run_after <= v_now
        and (not e.exclusive or not exists (
               select 1 from public.agent_task_executions r
               where r.task_id = e.task_id and r.status = 'running'))
      order by e.priority_class desc, e.priority desc, e.scheduled_for
      limit s.n
      for update skip locked
    ) p
  ),
  ranked as (
    select c.*,
           row_number() over (partition by c.task_id order by c.scheduled_for) as task_rank,
           row_number() over (partition by c.user_id
                              order by c.priority_class desc, c.priority desc, c.scheduled_for) as user_rank
    from candidates c
  ),
  slot_running as materialized (
    -- the batch users' counts, once: an array compare, not a join to every
    -- running user for each ranked row
    select u.user_id, u.n from running u where u.user_id = any (array(select s.user_id from slots s))
  ),
  picked as (
    select r.id
    from ranked r
    left join slot_running u on u.user_id = r.user_id
    where (not r.exclusive or r.task_rank = 1)
      and (p_per_user_limit is null or r.user_rank + coalesce(u.n, 0) <= p_per_user_limit)
  ),
  claimed as (
    update public.agent_task_executions e set
      status = 'running',
      worker_id = p_worker_id,
      attempt = e.attempt + 1,
      started_at = v_now,
      heartbeat_at = v_now,
      lease_expires_at = v_now + make_interval(secs => p_lease_seconds),
      error = null,
      error_kind = null
    from picked p
    where e.id = p.id
    returning e.*
  )
  select c.id, c.task_id, c.user_id, c.agent_id, c.trigger_type, c.attempt, c.max_attempts,
         c.scheduled_for, c.timeout_seconds, c.conversation_id, c.user_message_id, c.resolved_prompt,
         t.name, t.prompt_template, t.prompt_variables, t.timezone, t.conversation_mode,
         t.conversation_id, t.state
  from claimed c
  join public.agent_tasks t on t.id = c.task_id
  order by c.priority_class desc, c.priority desc, c.scheduled_for;
end
$$;

-- Extend the leases of a worker's running executions. Returns the ones among
-- p_ids this worker no longer owns (cancelled, rescued, finished elsewhere)
-- so it can abandon them at once.
create or replace function scheduler.heartbeat(
  p_worker_id text,
  p_ids uuid[],
  p_lease_seconds integer default 30,
  p_in_flight integer default null,
  p_now timestamptz default null
) returns table (id uuid, status text)
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_now timestamptz := coalesce(p_now, now());
begin
  update scheduler.workers w set
    last_seen_at = v_now,
    in_flight = coalesce(p_in_flight, cardinality(p_ids))
  where w.id = p_worker_id;

  -- rows locked in id order, like every function that locks several
  -- executions (start_executions, finish_executions, rescue_dead_workers)
  update public.agent_task_executions e set
    heartbeat_at = v_now,
    lease_expires_at = v_now + make_interval(secs => p_lease_seconds)
  from (select x.id from public.agent_task_executions x
        where x.id = any (p_ids) and x.worker_id = p_worker_id and x.status = 'running'
        order by x.id
        for no key update) o
  where e.id = o.id;

  return query
    select x.id, coalesce(e.status, 'missing')
    from unnest(p_ids) as x(id)
    left join public.agent_task_executions e on e.id = x.id
    where e.id is null or e.status <> 'running' or e.worker_id is distinct from p_worker_id;
end
$$;

-- Prepare a claimed execution: pick or create its conversation (task rule:
-- reuse the task's conversation, create it on the first run and store it on
-- the task, or a new one per run) and insert the scheduled user message,
-- exactly once per execution whatever the number of attempts. Fenced on
-- worker and attempt. Raises 'P0002' when the task's conversation is gone.
create or replace function scheduler.start_execution(
  p_execution_id uuid,
  p_worker_id text,
  p_attempt integer,
  p_resolved_prompt text,
  p_conversation_title text default null,
  p_now timestamptz default null
) returns table (conversation_id uuid, user_message_id uuid, created_conversation boolean)
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_exec public.agent_task_executions;
  v_task public.agent_tasks;
  v_conversation uuid;
  v_created boolean := false;
  v_message uuid;
begin
  select * into v_exec from public.agent_task_executions e
  where e.id = p_execution_id and e.status = 'running'
    and e.worker_id = p_worker_id and e.attempt = p_attempt
  for update;
  if not found then
    raise exception 'execution % is not running for worker % attempt %', p_execution_id, p_worker_id, p_attempt
      using errcode = '55000';
  end if;

  if v_exec.user_message_id is not null then
    return query select v_exec.conversation_id, v_exec.user_message_id, false;
    return;
  end if;

  select * into v_task from public.agent_tasks t where t.id = v_exec.task_id;
  v_conversation := v_exec.conversation_id;

  if v_conversation is null and v_task.conversation_mode = 'reuse' then
    if v_task.conversation_id is not null then
      v_conversation := v_task.conversation_id;
    else
      -- first run of a reuse task: create the conversation and keep it
      insert into public.conversation_sessions (user_id, agent_id, title)
      values (v_task.user_id, v_task.agent_id, left(coalesce(p_conversation_title, v_task.name), 200))
      returning id into v_conversation;
      update public.agent_tasks t set conversation_id = v_conversation
      where t.id = v_task.id and t.conversation_id is null;
      if not found then
        -- a concurrent run of the same task created it first: use theirs
        delete from public.conversation_sessions c where c.id = v_conversation;
        select t.conversation_id into v_conversation from public.agent_tasks t where t.id = v_task.id;
      else
        v_created := true;
      end if;
    end if;
  elsif v_conversation is null then
    insert into public.conversation_sessions (user_id, agent_id, title)
    values (v_task.user_id, v_task.agent_id,
            left(coalesce(p_conversation_title,
                          v_task.name || ' — ' || to_char(coalesce(p_now, now()) at time zone v_task.timezone, 'YYYY-MM-DD')),
                 200))
    returning id into v_conversation;
    v_created := true;
  end if;

  perform 1 from public.conversation_sessions c
  where c.id = v_conversation and c.user_id = v_exec.user_id and c.agent_id = v_exec.agent_id
    and c.deleted_at is null;
  if not found then
    raise exception 'conversation % of task % no longer exists', v_conversation, v_task.id
      using errcode = 'P0002';
  end if;

  insert into public.chat_messages_v2 (conversation_id, user_id, role, content, metadata, execution_id)
  values (v_conversation, v_exec.user_id, 'user', p_resolved_prompt,
          jsonb_build_object('source', 'scheduler', 'task_id', v_exec.task_id, 'task_name', v_task.name,
                             'execution_id', v_exec.id, 'trigger_type', v_exec.trigger_type),
          v_exec.id)
  on conflict (execution_id, role) where execution_id is not null and role in ('user', 'assistant')
  do nothing
  returning id into v_message;
  if v_message is null then
    select m.id into v_message from public.chat_messages_v2 m
    where m.execution_id = v_exec.id and m.role = 'user';
  end if;

  update public.agent_task_executions e set
    conversation_id = v_conversation,
    resolved_prompt = p_resolved_prompt,
    user_message_id = v_message
  where e.id = v_exec.id;

  return query select v_conversation, v_message, v_created;
end
$$;

-- start_executions: start_execution for a claim batch, in one round trip.
-- p_items is a JSON array of {id, attempt, resolved_prompt, conversation_title?}.
-- Each item runs scheduler.start_execution itself (same fence on status,
-- worker and attempt; same exactly-once user message; idempotent) inside its
-- own BEGIN/EXCEPTION block, so one bad item neither aborts nor undoes the
-- others: its error comes back in error_code / error_message ('55000' fenced,
-- 'P0002' conversation gone, anything else unexpected) instead of being
-- raised. Items are taken in conversation order so two batches sharing
-- conversations lock them in the same order. Callers keep batches well under
-- 64 items: each item is a subtransaction with an XID, and more than 64 in one
-- transaction overflow the per-backend subxid cache, which slows every
-- other snapshot in the cluster.
create or replace function scheduler.start_executions(
  p_worker_id text,
  p_items jsonb,
  p_now timestamptz default null
) returns table (
  id uuid, conversation_id uuid, user_message_id uuid, created_conversation boolean,
  error_code text, error_message text
)
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_item record;
  v_started record;
begin
  if p_items is null or jsonb_typeof(p_items) <> 'array' then
    raise exception 'start_executions: p_items must be a JSON array' using errcode = '22023';
  end if;
  -- the batch's execution rows first, in id order (the one lock order of
  -- heartbeat, finish and rescue), before the conversation-ordered work below
  perform 1 from public.agent_task_executions e
  where e.id in (select (x ->> 'id')::uuid from jsonb_array_elements(p_items) x)
    and e.worker_id = p_worker_id and e.status = 'running'
  order by e.id
  for no key update;
  -- then their tasks, in id order like finish_executions: an item may write
  -- its task (a first run stores the new conversation) and which items do is
  -- only known item by item, so taking them as they come could cross another
  -- batch's order
  perform 1 from public.agent_tasks t
  where t.id in (select e.task_id from public.agent_task_executions e
                 where e.id in (select (x ->> 'id')::uuid from jsonb_array_elements(p_items) x)
                   and e.worker_id = p_worker_id and e.status = 'running')
  order by t.id
  for no key update;
  for v_item in
    select i.id, i.attempt, i.resolved_prompt, i.conversation_title
    from jsonb_array_elements(p_items) with ordinality as o(elem, ord)
    cross join lateral jsonb_to_record(o.elem)
      as i(id uuid, attempt integer, resolved_prompt text, conversation_title text)
    left join public.agent_task_executions e on e.id = i.id
    left join public.agent_tasks t on t.id = e.task_id
    order by coalesce(e.conversation_id, t.conversation_id) nulls last, e.task_id, o.ord
  loop
    begin
      select * into strict v_started
      from scheduler.start_execution(v_item.id, p_worker_id, v_item.attempt, v_item.resolved_prompt,
                                     v_item.conversation_title, p_now);
      return query select v_item.id, v_started.conversation_id, v_started.user_message_id,
                          v_started.created_conversation, null::text, null::text;
    exception when others then
      return query select v_item.id, null::uuid, null::uuid, null::boolean,
                          sqlstate::text, sqlerrm::text;
    end;
  end loop;
end
$$;

-- finish_executions: finish_execution for a batch, in one round trip and one
-- transaction. p_results is a JSON array of {id, attempt, status, output?,
-- error?, error_kind?, assistant_message_id?, usage?}. Every element is fenced
-- exactly like finish_execution (status running, this worker, that attempt)
-- and gets the same task bookkeeping; an id listed twice is applied once
-- (its first element). Returns the ids applied, in input order: an id missing
-- from the result was dropped by the fence (cancelled or rescued meanwhile).
create or replace function scheduler.finish_executions(
  p_worker_id text,
  p_results jsonb,
  p_now timestamptz default null
) returns table (id uuid)
language plpgsql
security definer
set search_path = ''
-- one cached plan: re-planning this query on every call (custom plans) costs
-- more than running it (bench/bench_queue.py)
set plan_cache_mode = force_generic_plan
as $$
declare
  v_now timestamptz := coalesce(p_now, now());
  -- the fence compares status with this variable, a parameter of the
  -- generic plan: with the literal, the planner could prove the partial
  -- indexes on running rows (running_user_idx, lease_idx) usable and chose
  -- to walk every running row of every worker (and their dead entries until
  -- vacuum) for each finish; by parameter it can only look the batch's ids
  -- up in the primary key (bench/bench_queue.py)
  v_running text := 'running';
  v_ids uuid[];
  v_bad text;
  v_finished public.agent_task_executions[];
  v_mixed_tasks uuid[];
  v_exec public.agent_task_executions;
  v_report record;
  v_task_ids uuid[];
  v_user_ids uuid[];
  v_budget_tasks uuid[];
begin
  if p_results is null or jsonb_typeof(p_results) <> 'array' then
    raise exception 'finish_executions: p_results must be a JSON array' using errcode = '22023';
  end if;
  select coalesce(r.status, 'null') into v_bad
  from jsonb_to_recordset(p_results) as r(status text)
  where r.status is null or not scheduler.is_finishing(r.status)
  limit 1;
  if found then
    raise exception 'finish_executions: % is not a finishing status', v_bad using errcode = '22023';
  end if;
  v_ids := array(select (x ->> 'id')::uuid from jsonb_array_elements(p_results) x);
  -- lock the batch's rows in id order first (the one lock order of heartbeat,
  -- start and rescue), so concurrent batches and heartbeats cannot deadlock
  perform 1 from public.agent_task_executions e
  where e.id = any (v_ids) and e.worker_id = p_worker_id and e.status = v_running
  order by e.id
  for no key update;

  with input as (
    select distinct on (r.id) r.id, r.attempt, r.status, r.output, r.error, r.error_kind,
           r.assistant_message_id, r.usage, o.ord
    from jsonb_array_elements(p_results) with ordinality as o(elem, ord)
    cross join lateral jsonb_to_record(o.elem) as r(
      id uuid, attempt integer, status text, output text, error text, error_kind text,
      assistant_message_id uuid, usage jsonb)
    order by r.id, o.ord
  ),
  finished as (
    update public.agent_task_executions e set
      status = i.status,
      finished_at = v_now,
      duration_ms = scheduler.duration_ms(e.started_at, v_now),
      output = left(i.output, 2000),
      error = left(i.error, 2000),
      error_kind = i.error_kind,
      assistant_message_id = coalesce(i.assistant_message_id, e.assistant_message_id),
      usage = coalesce(i.usage, e.usage),
      lease_expires_at = null
    from input i
    where e.id = any (v_ids) and e.id = i.id and e.status = v_running
      and e.worker_id = p_worker_id and e.attempt = i.attempt
    returning e as exec, i.ord
  )
  select array_agg(f.exec order by f.ord), array_agg(distinct (f.exec).task_id),
         array_agg(distinct (f.exec).user_id)
  into v_finished, v_task_ids, v_user_ids
  from finished f;

  -- lock the tasks in id order first, so two batches sharing tasks cannot
  -- deadlock on them
  perform 1 from public.agent_tasks t
  where t.id = any (v_task_ids)
  order by t.id
  for no key update of t;

  -- Task bookkeeping, identical to record_outcome row by row: a task whose
  -- finished executions in this batch all succeeded gets one update for all
  -- of them (the common case: counters, last_run_at, last_error cleared);
  -- any other task gets record_outcome per execution, in input order.
  update public.agent_tasks t set
    last_run_at = v_now,
    success_count = t.success_count + s.n,
    last_error = null
  from (select x.task_id, count(*)::integer as n
        from unnest(v_finished) x
        group by x.task_id
        having bool_and(x.status = 'succeeded')) s
  where t.id = s.task_id;

  select array_agg(distinct x.task_id) into v_mixed_tasks
  from unnest(v_finished) x where x.status <> 'succeeded';
  if v_mixed_tasks is not null then
    foreach v_exec in array v_finished loop
      if v_exec.task_id = any (v_mixed_tasks) then
        perform scheduler.record_outcome(v_exec, v_now);
      end if;
    end loop;
  end if;

  -- What the agent reported with report_task_status (read from the stored
  -- reply, so a replayed reply reports the same), and the run that answers a
  -- question of a task whose schedule had ended: the task lifecycle applies
  -- them (scheduler.apply_task_report).
  for v_report in
    select x as exec, (select r.call -> 'arguments'
               from jsonb_array_elements(m.tool_calls) with ordinality as r(call, ord)
               where r.call ->> 'name' = 'report_task_status' and r.call ->> 'status' = 'ok'
               order by r.ord desc limit 1) as args
    from unnest(v_finished) x
    left join public.chat_messages_v2 m
      on m.id = x.assistant_message_id and jsonb_typeof(m.tool_calls) = 'array'
    where (x.status = 'succeeded' and (m.id is not null or x.trigger_type = 'user_reply'))
       or (x.status = 'needs_input' and m.id is not null)
  loop
    perform scheduler.apply_task_report(v_report.exec, v_report.args, v_now);
  end loop;

  -- success and change notifications, for the tasks that want them
  for v_report in
    select x as exec, m.content
    from unnest(v_finished) x
    join public.agent_tasks t on t.id = x.task_id and t.notify_on && array['success', 'change']::text[]
    left join public.chat_messages_v2 m on m.id = x.assistant_message_id
    where x.status = 'succeeded'
  loop
    perform scheduler.notify_success(v_report.exec, v_report.content);
  end loop;

  -- a task whose run used up a daily budget pauses itself (task lifecycle).
  -- Only a task with a budget of its own, or of a user whose tokens are used
  -- up, can be over one: the others skip budget_error (called for every
  -- task, it was a third of a batch's finish; bench/README.md)
  v_budget_tasks := array(
    select t.id from public.agent_tasks t
    where t.id = any (v_task_ids) and t.status = 'active'
      and (t.max_runs_per_day is not null or t.max_tokens_per_day is not null
           or t.user_id = any ((select scheduler.users_over_token_budget(v_user_ids, v_now))::uuid[])));
  if cardinality(v_budget_tasks) > 0 then
    perform scheduler.pause_for_budget(f.exec, v_now)
    from (select distinct on (x.task_id) x as exec
          from unnest(v_finished) x
          where x.task_id = any (v_budget_tasks)
          order by x.task_id) f;
  end if;

  return query select x.id from unnest(v_finished) x;
end
$$;

-- finish_execution: running -> succeeded | failed | timed_out | needs_input
-- for one execution: a batch of one for finish_executions (above), the one
-- finish path. Fenced on status, worker and attempt; returns false when the
-- fence drops the write (the execution was cancelled or rescued meanwhile).
create or replace function scheduler.finish_execution(
  p_execution_id uuid,
  p_worker_id text,
  p_attempt integer,
  p_status text,
  p_output text default null,
  p_error text default null,
  p_error_kind text default null,
  p_assistant_message_id uuid default null,
  p_usage jsonb default null,
  p_now timestamptz default null
) returns boolean
language plpgsql
security definer
set search_path = ''
as $$
begin
  if p_status is null or not scheduler.is_finishing(p_status) then
    raise exception 'finish_execution: % is not a finishing status', coalesce(p_status, 'null') using errcode = '22023';
  end if;
  return exists (
    select 1 from scheduler.finish_executions(p_worker_id, jsonb_build_array(jsonb_build_object(
      'id', p_execution_id, 'attempt', p_attempt, 'status', p_status, 'output', p_output, 'error', p_error,
      'error_kind', p_error_kind, 'assistant_message_id', p_assistant_message_id, 'usage', p_usage)), p_now));
end
$$;

-- requeue_later: the same execution row goes back to the queue, running ->
-- queued (run_after = now + backoff), while attempts remain, else running ->
-- failed. Fenced like finish. Returns the new status, or NULL when the fence
-- dropped the write. (A new row for a finished execution is
-- scheduler.retry_execution, in scheduling.)
-- p_spend_attempt = false: the run never reached the chat function (it was
-- unreachable: an infrastructure outage, not the run's fault), so the attempt
-- is given back and the run is always requeued; the worker's circuit breaker
-- and run_after keep such runs from spinning.
create or replace function scheduler.requeue_later(
  p_execution_id uuid,
  p_worker_id text,
  p_attempt integer,
  p_error text,
  p_error_kind text default 'transient',
  p_delay_seconds double precision default null,
  p_now timestamptz default null,
  p_spend_attempt boolean default true
) returns text
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_now timestamptz := coalesce(p_now, now());
  v_exec public.agent_task_executions;
begin
  select * into v_exec from public.agent_task_executions e
  where e.id = p_execution_id and e.status = 'running'
    and e.worker_id = p_worker_id and e.attempt = p_attempt
  for update;
  if not found then
    return null;
  end if;
  if v_exec.attempt < v_exec.max_attempts or not p_spend_attempt then
    update public.agent_task_executions e set
      status = 'queued',
      attempt = case when p_spend_attempt then e.attempt else e.attempt - 1 end,
      run_after = v_now + make_interval(secs => coalesce(p_delay_seconds,
                                                         least(600, 5 * power(2, v_exec.attempt - 1)))),
      worker_id = null,
      lease_expires_at = null,
      error = left(p_error, 2000),
      error_kind = p_error_kind
    where e.id = p_execution_id;
    perform pg_notify('agent_task_executions', '');
    return 'queued';
  end if;
  perform scheduler.finish_execution(p_execution_id, p_worker_id, p_attempt, 'failed',
                                     null, p_error, p_error_kind, null, null, v_now);
  return 'failed';
end
$$;

-- Give executions back to the queue without using up an attempt (graceful
-- shutdown): running -> queued, runnable at once by any worker.
create or replace function scheduler.release_executions(
  p_worker_id text, p_ids uuid[], p_now timestamptz default null
) returns integer
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_count integer;
begin
  update public.agent_task_executions e set
    status = 'queued',
    attempt = e.attempt - 1,
    run_after = coalesce(p_now, now()),
    worker_id = null,
    lease_expires_at = null,
    error = 'released by a worker shutting down',
    error_kind = 'shutdown'
  where e.id = any (p_ids) and e.worker_id = p_worker_id and e.status = 'running';
  get diagnostics v_count = row_count;
  if v_count > 0 then
    perform pg_notify('agent_task_executions', '');
  end if;
  return v_count;
end
$$;

-- put_back_running: the rescuers' one move, for a set of running executions
-- whose worker is gone: back to the queue, runnable at once (their attempt
-- used), while attempts remain, else failed with their task's bookkeeping
-- (record_outcome, in task-id order). p_reason is the error_kind and picks the
-- sentence: 'lease_expired' (the worker let its lease run out) or
-- 'worker_lost' (the worker's database session ended). The rows are locked in
-- id order (the one lock order of heartbeat, start, finish and the rescuers)
-- and only those still running move; a caller that chooses them by more than
-- their status (an expired lease, a dead worker) chooses and locks them in one
-- statement, so that its choice still holds when they move. Wakes the workers
-- when any went back to the queue. Returns how many moved.
-- Internal: called by rescue_expired and rescue_dead_workers only.
create or replace function scheduler.put_back_running(
  p_ids uuid[], p_reason text, p_now timestamptz
) returns integer
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_cause text := case p_reason when 'lease_expired' then 'lease expired on worker %s'
                                when 'worker_lost' then 'the session of worker %s ended' end;
  v_ids uuid[];
  v_requeued integer;
  v_exec public.agent_task_executions;
begin
  if v_cause is null then
    raise exception 'put_back_running: % is not a rescue reason (lease_expired, worker_lost)',
      coalesce(p_reason, 'null') using errcode = '22023';
  end if;
  v_ids := array(select e.id from public.agent_task_executions e
                 where e.id = any (p_ids) and e.status = 'running'
                 order by e.id
                 for no key update);

  update public.agent_task_executions e set
    status = 'queued',
    run_after = p_now,
    worker_id = null,
    lease_expires_at = null,
    error = format(v_cause || ' (worker lost)', e.worker_id),
    error_kind = p_reason
  where e.id = any (v_ids) and e.attempt < e.max_attempts;
  get diagnostics v_requeued = row_count;

  for v_exec in
    with failed as (
      update public.agent_task_executions e set
        status = 'failed',
        finished_at = p_now,
        duration_ms = scheduler.duration_ms(e.started_at, p_now),
        lease_expires_at = null,
        error = format(v_cause || ' and no attempt is left', e.worker_id),
        error_kind = p_reason
      where e.id = any (v_ids) and e.attempt >= e.max_attempts
      returning e.*
    )
    -- task by task in task-id order: record_outcome locks each run's task,
    -- and tasks are locked in id order everywhere (finish_executions)
    select * from failed f order by f.task_id, f.id
  loop
    perform scheduler.record_outcome(v_exec, p_now);
  end loop;

  if v_requeued > 0 then
    perform pg_notify('agent_task_executions', '');
  end if;
  return cardinality(v_ids);
end
$$;

-- rescue_expired: running executions whose lease expired (their worker died
-- or hangs) go back to the queue, or fail when no attempt is left
-- (put_back_running). Called by every worker on its tick and by pg_cron every
-- minute. Returns rows moved.
create or replace function scheduler.rescue_expired(p_now timestamptz default null)
returns integer
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_now timestamptz := coalesce(p_now, now());
  v_moved integer;
begin
  v_moved := scheduler.put_back_running(
    array(select e.id from public.agent_task_executions e
          where e.status = 'running' and e.lease_expires_at < v_now
          order by e.id
          for no key update),
    'lease_expired', v_now);

  delete from scheduler.workers w where w.last_seen_at < v_now - interval '5 minutes';
  return v_moved;
end
$$;

-- attach_worker_session: the calling session becomes the worker's liveness
-- (the worker calls it on its LISTEN connection each time that connects).
-- Returns false when the worker is not registered.
create or replace function scheduler.attach_worker_session(p_worker_id text)
returns boolean
language sql
security definer
set search_path = ''
as $$
  with attached as (
    update scheduler.workers w set
      backend_pid = pg_catalog.pg_backend_pid(),
      backend_start = (select a.backend_start from pg_catalog.pg_stat_activity a
                       where a.pid = pg_catalog.pg_backend_pid()),
      session_lost_at = null,
      last_seen_at = now()
    where w.id = p_worker_id
    returning 1
  )
  select exists (select 1 from attached)
$$;

-- rescue_dead_workers: rescue on death, not on lease. A worker whose attached
-- session no longer exists (killed, crashed, its host gone: Postgres ends the
-- session when the socket closes) is marked session_lost_at on first sight;
-- once it has stayed gone for p_grace_seconds (a live worker re-attaches
-- within that after a connection blip) its running executions go back to the
-- queue (or fail when no attempt is left: put_back_running, exactly like an
-- expired lease).
-- The lease stays the fallback for a worker alive but hung or partitioned.
-- Returns the executions moved and the workers lost but still within grace
-- (the caller looks again after the grace). Called by every worker's tick.
create or replace function scheduler.rescue_dead_workers(
  p_grace_seconds double precision default 0.5,
  p_now timestamptz default null
) returns table (rescued integer, pending_workers integer)
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_now timestamptz := coalesce(p_now, now());
  v_dead text[];
  v_rescued integer := 0;
begin
  update scheduler.workers w set session_lost_at = v_now
  where w.backend_pid is not null and w.session_lost_at is null
    and not exists (select 1 from pg_catalog.pg_stat_activity a
                    where a.pid = w.backend_pid and a.backend_start = w.backend_start);

  select coalesce(array_agg(w.id), '{}') into v_dead from scheduler.workers w
  where w.session_lost_at <= v_now - make_interval(secs => p_grace_seconds);

  if cardinality(v_dead) > 0 then
    v_rescued := scheduler.put_back_running(
      array(select e.id from public.agent_task_executions e
            where e.status = 'running' and e.worker_id = any (v_dead)
            order by e.id
            for no key update),
      'worker_lost', v_now);
  end if;

  return query select v_rescued,
    (select count(*)::integer from scheduler.workers w
     where w.session_lost_at > v_now - make_interval(secs => p_grace_seconds));
end
$$;

-- cancel_execution: queued | running -> cancelled. A running execution's
-- worker learns it through NOTIFY agent_task_cancel (payload: the id) or its
-- next heartbeat and abandons the call; its late finish is fenced out.
create or replace function scheduler.cancel_execution(
  p_execution_id uuid, p_reason text default 'cancelled', p_now timestamptz default null
) returns boolean
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_now timestamptz := coalesce(p_now, now());
  v_was text;
begin
  select e.status into v_was from public.agent_task_executions e
  where e.id = p_execution_id for update;
  if v_was is null or v_was not in ('queued', 'running') then
    return false;
  end if;
  update public.agent_task_executions e set
    status = 'cancelled',
    finished_at = v_now,
    duration_ms = scheduler.duration_ms(e.started_at, v_now),
    cancel_requested_at = v_now,
    lease_expires_at = null,
    error = left(p_reason, 2000),
    error_kind = 'cancelled'
  where e.id = p_execution_id;
  if v_was = 'running' then
    perform pg_notify('agent_task_cancel', p_execution_id::text);
  end if;
  return true;
end
$$;

-- Worker registry.
create or replace function scheduler.register_worker(
  p_worker_id text, p_hostname text, p_pid integer, p_concurrency integer
) returns void
language sql
security definer
set search_path = ''
as $$
  insert into scheduler.workers (id, hostname, pid, concurrency)
  values (p_worker_id, p_hostname, p_pid, p_concurrency)
  on conflict (id) do update set last_seen_at = now(), concurrency = excluded.concurrency
$$;

create or replace function scheduler.unregister_worker(p_worker_id text) returns void
language sql
security definer
set search_path = ''
as $$
  delete from scheduler.workers where id = p_worker_id
$$;

-- Delete finished executions older than p_older_than (their messages stay in
-- the conversation; execution_id there is set to NULL by the foreign key):
-- the oldest p_limit of them (NULL: all), walking agent_task_executions_finished_idx.
-- The purge job (scheduler.purge_expired) deletes a batch at a time.
create or replace function scheduler.purge_history(
  p_older_than interval default '30 days', p_now timestamptz default null, p_limit integer default null
) returns integer
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_count integer;
begin
  delete from public.agent_task_executions e
  where e.id in (select x.id from public.agent_task_executions x
                 where x.finished_at < coalesce(p_now, now()) - p_older_than
                 order by x.finished_at
                 limit p_limit);
  get diagnostics v_count = row_count;
  return v_count;
end
$$;

-- report_chat_circuit: a worker tells that its circuit breaker on the chat
-- function opened (it stops claiming: the function or the network is
-- unreachable) or closed again; shown by `agent-tasks queue stats`.
create or replace function scheduler.report_chat_circuit(p_worker_id text, p_open boolean, p_reason text)
returns void
language sql
security definer
set search_path = ''
as $$
  update scheduler.workers w set
    chat_circuit_open_since = case when p_open then coalesce(w.chat_circuit_open_since, now()) end,
    chat_circuit_reason = case when p_open then left(p_reason, 500) end
  where w.id = p_worker_id
$$;

-- Queue figures for operators and the CLI: every queued and running
-- execution, and those finished within p_finished_within (by status) along
-- agent_task_executions_finished_idx. Counting the whole history cost a scan
-- of it at every look (166 ms at 1,000,000 rows, growing with them).
create or replace function scheduler.queue_stats(p_finished_within interval default '24 hours')
returns table (status text, count bigint, oldest timestamptz, next_run_after timestamptz)
language sql
stable
security definer
set search_path = ''
-- the plan cannot see the window and guesses a seventh of the history:
-- starting parallel workers for it cost 8 ms of the 12 at 1,000,000 rows
set max_parallel_workers_per_gather = 0
as $$
  select s.* from (
    select e.status, count(*) as count, min(e.scheduled_for) as oldest,
           min(e.run_after) filter (where e.status = 'queued') as next_run_after
    from public.agent_task_executions e
    where e.status in ('queued', 'running')
    group by e.status
    union all
    select e.status, count(*), min(e.scheduled_for), null
    from public.agent_task_executions e
    where e.finished_at >= now() - p_finished_within
    group by e.status
  ) s
  order by s.status
$$;

grant select on scheduler.workers to task_worker, service_role;
grant execute on function
  scheduler.claim_executions(text, integer, integer, integer, timestamptz),
  scheduler.heartbeat(text, uuid[], integer, integer, timestamptz),
  scheduler.start_execution(uuid, text, integer, text, text, timestamptz),
  scheduler.start_executions(text, jsonb, timestamptz),
  scheduler.finish_execution(uuid, text, integer, text, text, text, text, uuid, jsonb, timestamptz),
  scheduler.finish_executions(text, jsonb, timestamptz),
  scheduler.requeue_later(uuid, text, integer, text, text, double precision, timestamptz, boolean),
  scheduler.report_chat_circuit(text, boolean, text),
  scheduler.release_executions(text, uuid[], timestamptz),
  scheduler.rescue_expired(timestamptz),
  scheduler.attach_worker_session(text),
  scheduler.rescue_dead_workers(double precision, timestamptz),
  scheduler.cancel_execution(uuid, text, timestamptz),
  scheduler.register_worker(text, text, integer, integer),
  scheduler.unregister_worker(text),
  scheduler.purge_history(interval, timestamptz, integer),
  scheduler.queue_stats(interval),
  scheduler.is_terminal(text),
  scheduler.is_finishing(text),
  scheduler.execution_statuses()
to task_worker, service_role;
