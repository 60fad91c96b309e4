-- Task lifecycle: what happens to a task between runs. Pause and resume
-- (users through the client API, operators directly), what each finished
-- execution does to its task (record_outcome: counters, waiting for input,
-- notifications) and the user's reply that resumes a task waiting for input.

-- The keys of agent_tasks.state the lifecycle keeps for itself, next to the
-- agent's own: the question a task waits on (record_outcome sets them, the
-- owner's answer and resume_task clear them), complete_after_reply (a task
-- whose schedule ended before its question) and budget_paused_until
-- (pause_for_budget, read by resume_after_budget). An agent's report never
-- sets them (apply_task_report drops them from state_update: an agent could
-- otherwise mark a task its user paused for resuming at a time of its
-- choosing), and the chat function neither shows them to the agent as its
-- state nor accepts them in a report (supabase/functions/chat/tools/
-- definitions.ts, LIFECYCLE_STATE_KEYS, checked against this list by
-- tests/integration/test_lifecycle_state_keys.py).
create or replace function scheduler.question_state_keys() returns text[]
language plpgsql
immutable
set search_path = ''
as $$
begin
  return array['pending_question', 'waiting_conversation_id', 'waiting_execution_id'];
end
$$;

create or replace function scheduler.lifecycle_state_keys() returns text[]
language plpgsql
immutable
set search_path = ''
as $$
begin
  return scheduler.question_state_keys() || array['complete_after_reply', 'budget_paused_until'];
end
$$;

-- Record a notification about one execution for its owner (failure, question,
-- completion, success or a changed result).
create or replace function scheduler.notify_user(
  p_exec public.agent_task_executions, p_kind text, p_title text, p_body text, p_extra jsonb default '{}'::jsonb
) returns void
language sql
security definer
set search_path = ''
as $$
  -- every notification links the task, the execution and its conversation
  insert into public.notifications (user_id, kind, title, body, data)
  values (p_exec.user_id, p_kind, left(p_title, 200), left(p_body, 2000),
          jsonb_build_object('task_id', p_exec.task_id, 'execution_id', p_exec.id,
                             'conversation_id', p_exec.conversation_id) || coalesce(p_extra, '{}'::jsonb))
$$;

-- Task bookkeeping shared by every terminal transition.
create or replace function scheduler.record_outcome(p_exec public.agent_task_executions, p_now timestamptz)
returns void
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_task public.agent_tasks;
begin
  update public.agent_tasks t set
    last_run_at = p_now,
    success_count = t.success_count + (p_exec.status = 'succeeded')::integer,
    failure_count = t.failure_count + (p_exec.status in ('failed', 'timed_out'))::integer,
    last_error = case when p_exec.status in ('failed', 'timed_out') then p_exec.error
                      when p_exec.status = 'succeeded' then null
                      else t.last_error end,
    -- a question holds every task, also one whose schedule ended with this
    -- very run (a one-off, max_runs, ends_at: enqueue_due completed it before
    -- the run); such a task completes again after the run that answers it
    status = case when p_exec.status = 'needs_input' and t.status in ('active', 'completed') then 'waiting_input'
                  else t.status end,
    next_run_at = case when p_exec.status = 'needs_input' then null else t.next_run_at end,
    state = case when p_exec.status = 'needs_input' and t.status in ('active', 'completed')
                 then t.state || jsonb_build_object('pending_question', p_exec.output,
                                                    'waiting_conversation_id', p_exec.conversation_id,
                                                    'waiting_execution_id', p_exec.id)
                      || case when t.status = 'completed' then '{"complete_after_reply": true}'::jsonb
                              else '{}'::jsonb end
                 else t.state end
  where t.id = p_exec.task_id
  returning * into v_task;

  if p_exec.status in ('failed', 'timed_out') and 'failure' = any (v_task.notify_on) then
    perform scheduler.notify_user(
      p_exec, 'task_failed',
      format('Scheduled task "%s" failed', coalesce(v_task.name, 'task')),
      p_exec.error,
      jsonb_build_object('error_kind', p_exec.error_kind));
  elsif p_exec.status = 'needs_input' then
    perform scheduler.notify_user(
      p_exec, 'task_needs_input',
      format('"%s" needs your input', coalesce(v_task.name, 'task')),
      p_exec.output);
  end if;
end
$$;

-- The scheduler pauses a task on its own (not its user) and says why: the
-- task is paused like pause_task does it (its queued scheduled runs are
-- cancelled), last_error is p_reason, p_state is merged into state, and the
-- owner gets a task_paused notification about p_exec, the run that led to it
-- (title: 'Scheduled task "<name>" paused', then p_until when given, e.g.
-- 'until tomorrow'; body: p_reason). Returns the paused task.
create or replace function scheduler.pause_with_notice(
  p_exec public.agent_task_executions, p_reason text, p_state jsonb default '{}'::jsonb, p_until text default null
) returns public.agent_tasks
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_task public.agent_tasks;
begin
  perform scheduler.pause_task(p_exec.task_id);
  update public.agent_tasks t set
    last_error = p_reason,
    state = t.state || coalesce(p_state, '{}'::jsonb)
  where t.id = p_exec.task_id
  returning * into v_task;
  perform scheduler.notify_user(p_exec, 'task_paused',
    format('Scheduled task "%s" paused', v_task.name) || coalesce(' ' || p_until, ''), p_reason);
  return v_task;
end
$$;

-- A task whose run used up a daily budget (scheduler.budget_error: the
-- user's tokens, the task's tokens or runs) pauses itself (called by
-- scheduler.finish_executions for the active tasks of a batch that can be
-- over a budget) with
-- pause_with_notice: last_error says which limit, and
-- state.budget_paused_until (the next 00:00 UTC) lets
-- scheduler.resume_after_budget resume it then; resume_task resumes it at
-- once.
create or replace function scheduler.pause_for_budget(p_exec public.agent_task_executions, p_now timestamptz)
returns boolean
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_error text := scheduler.budget_error(p_exec.user_id, p_exec.task_id, p_now);
begin
  if v_error is null then
    return false;
  end if;
  perform scheduler.pause_with_notice(p_exec, v_error,
    jsonb_build_object('budget_paused_until', (scheduler.usage_day(p_now) + 1)::timestamp at time zone 'UTC'),
    'until tomorrow');
  return true;
end
$$;

-- Resume the tasks pause_for_budget paused, once their budget day is over
-- (pg_cron, every minute). Returns how many resumed.
create or replace function scheduler.resume_after_budget(p_now timestamptz default null) returns integer
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_count integer := 0;
  v_id uuid;
begin
  for v_id in
    select t.id from public.agent_tasks t
    where t.status = 'paused' and t.state ? 'budget_paused_until'
      and (t.state ->> 'budget_paused_until')::timestamptz <= coalesce(p_now, now())
    order by t.id
  loop
    perform scheduler.resume_task(v_id);
    v_count := v_count + 1;
  end loop;
  return v_count;
end
$$;

-- What the agent reported on a succeeded run (report_task_status, read from
-- the stored reply by finish_executions; p_args NULL when it reported
-- nothing):
--   continue  state_update merged into state (shallow: top-level keys of
--             state_update replace those of state, other keys stay), and
--             next_run_at, when given, replaces the next occurrence if it is
--             still ahead of p_now; a time past ends_at is capped at ends_at.
--   complete  state merged the same way; a one-off (once, manual) completes,
--             a recurring task keeps its schedule unless final = true.
--   needs_input  the execution finished needs_input (record_outcome made the
--             task wait); only its state_update is merged here. A run that answered the question of a task whose
-- schedule had ended completes that task, whatever it reported. Only an
-- active task moves; a task paused meanwhile keeps its status. Completion
-- notifies the user (task_completed).
create or replace function scheduler.apply_task_report(
  p_exec public.agent_task_executions, p_args jsonb, p_now timestamptz
) returns void
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_task public.agent_tasks;
  v_status text := p_args ->> 'status';
  -- the agent's keys only (scheduler.lifecycle_state_keys)
  v_update jsonb := case when jsonb_typeof(p_args -> 'state_update') = 'object'
                         then (p_args -> 'state_update') - scheduler.lifecycle_state_keys()
                         else '{}'::jsonb end;
  v_next timestamptz;
  v_complete boolean;
  v_too_large text;
begin
  select * into v_task from public.agent_tasks t where t.id = p_exec.task_id for update;
  if not found then
    return;
  end if;
  -- the state is shown to the agent at every run: a report may not grow it
  -- past max_task_state_bytes (each report is small, their sum was not
  -- bounded). Such a state_update is not applied and last_error says why;
  -- the rest of the report is.
  if v_update <> '{}'::jsonb then
    v_too_large := scheduler.json_size_error('state', v_task.state || v_update, 'max_task_state_bytes');
    if v_too_large is not null then
      v_update := '{}'::jsonb;
      v_too_large := 'the agent''s state_update was not applied: ' || v_too_large;
    end if;
  end if;
  if p_exec.status = 'needs_input' or v_status = 'needs_input' then
    if v_update <> '{}'::jsonb or v_too_large is not null then
      update public.agent_tasks t set state = t.state || v_update, last_error = coalesce(v_too_large, t.last_error)
      where t.id = v_task.id;
    end if;
    return;
  end if;
  v_complete := v_task.status = 'active' and (
    (v_status = 'complete' and (v_task.schedule_type in ('once', 'manual')
                                or coalesce(p_args ->> 'final', '') = 'true'))
    or (p_exec.trigger_type = 'user_reply' and coalesce(v_task.state ->> 'complete_after_reply', '') = 'true'));
  if v_status = 'continue' and p_args ? 'next_run_at' and jsonb_typeof(p_args -> 'next_run_at') = 'string' then
    begin
      v_next := (p_args ->> 'next_run_at')::timestamptz;
    exception when others then
      v_next := null;
    end;
    if v_next <= p_now then
      v_next := null;
    elsif v_next > v_task.ends_at then
      v_next := v_task.ends_at;
    end if;
  end if;
  if v_update = '{}'::jsonb and not v_complete and v_next is null and v_too_large is null
     and not (v_task.state ? 'complete_after_reply') then
    return;
  end if;

  update public.agent_tasks t set
    state = (t.state || v_update) - 'complete_after_reply',
    last_error = coalesce(v_too_large, t.last_error),
    status = case when v_complete then 'completed' else t.status end,
    next_run_at = case when v_next is not null and t.status = 'active' and not v_complete then v_next
                       else t.next_run_at end
  where t.id = v_task.id
  returning * into v_task;

  if v_complete then
    perform scheduler.notify_user(
      p_exec, 'task_completed',
      format('Scheduled task "%s" is complete', v_task.name),
      coalesce(p_args ->> 'summary', p_exec.output));
  end if;
end
$$;

-- A succeeded run of a task whose notify_on has success or change (called by
-- finish_executions with the stored reply's content). The reply is
-- normalised (trimmed, runs of whitespace collapsed to one space, lower
-- case) and hashed (md5); the task keeps the hash of its last succeeded run
-- in last_reply_hash. success: a task_succeeded notification for every run
-- (data.changed says whether the reply differs); change: a task_changed
-- notification only when the hash differs from the previous one (never for
-- the first run hashed, when there is nothing to compare with).
create or replace function scheduler.notify_success(
  p_exec public.agent_task_executions, p_content text
) returns void
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_task public.agent_tasks;
  v_hash text := md5(lower(btrim(regexp_replace(coalesce(p_content, p_exec.output, ''), '\s+', ' ', 'g'))));
  v_changed boolean;
  v_data jsonb;
begin
  select * into v_task from public.agent_tasks t where t.id = p_exec.task_id for update;
  if not found then
    return;
  end if;
  v_changed := v_task.last_reply_hash is not null and v_task.last_reply_hash <> v_hash;
  update public.agent_tasks t set last_reply_hash = v_hash where t.id = v_task.id;
  v_data := jsonb_build_object('changed', v_changed);
  if 'success' = any (v_task.notify_on) then
    perform scheduler.notify_user(p_exec, 'task_succeeded',
      format('Scheduled task "%s" ran', v_task.name), coalesce(p_content, p_exec.output), v_data);
  elsif v_changed and 'change' = any (v_task.notify_on) then
    perform scheduler.notify_user(p_exec, 'task_changed',
      format('Scheduled task "%s": the result changed', v_task.name), coalesce(p_content, p_exec.output), v_data);
  end if;
end
$$;

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
  update public.agent_tasks set status = 'paused', state = state - 'budget_paused_until'
  where id = p_task_id returning * into v_task;
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
    state = state - scheduler.lifecycle_state_keys()
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

-- After a message is inserted, in one trigger (one function call per message;
-- it lives here for its second half, the conversation counters ride along so
-- that a message costs one trigger call, not two):
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
  v_task public.agent_tasks;
  v_exec public.agent_task_executions;
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
    for v_task in
      update public.agent_tasks t set
        status = 'active',
        state = (t.state - scheduler.question_state_keys())
                || jsonb_build_object('last_answer', left(new.content, 2000),
                                      'answered_at', new.created_at)
      where t.user_id = new.user_id and t.status = 'waiting_input'
        and t.state ->> 'waiting_conversation_id' = new.conversation_id::text
      returning t.*
    loop
      -- the answer is run at once, in this conversation (whatever the task's
      -- conversation rule): trigger_type user_reply, history holds the answer
      v_exec := scheduler.new_execution(v_task, 'user_reply', clock_timestamp(), now(), now());
      v_exec.conversation_id := new.conversation_id;
      insert into public.agent_task_executions select (v_exec).*;
      if v_task.state ? 'complete_after_reply' then
        -- its schedule had ended: this run is its last (becoming active
        -- recomputed an occurrence; drop it)
        update public.agent_tasks t set next_run_at = null where t.id = v_task.id;
      end if;
    end loop;
  end if;
  return null;
end
$$;

create trigger chat_messages_v2_after_insert after insert on public.chat_messages_v2
  for each row execute function scheduler.chat_message_after_insert();

-- the tasks waiting for their user's answer, probed on every user message
create index agent_tasks_waiting_input_idx on public.agent_tasks (user_id) where status = 'waiting_input';

grant execute on function scheduler.pause_task(uuid), scheduler.resume_task(uuid) to service_role;
