-- The helpers that state one rule each: the execution status vocabulary,
-- the execution row constructor, the first next_run_at of a schedule, the
-- run time, the single finish path, the act-as context, the owner-only
-- policies and the scheduler's own pause with its notice.
begin;
\ir helpers/personas.psql
select plan(40);

select tests.create_user('alice');
select tests.create_user('bob');
insert into public.agents (id, user_id, name) values
  ('a1000000-0000-0000-0000-000000000001', tests.get_user_id('alice'), 'Alice agent'),
  ('a2000000-0000-0000-0000-000000000002', tests.get_user_id('bob'), 'Bob agent');
insert into public.conversation_sessions (id, user_id, agent_id) values
  ('c1000000-0000-0000-0000-000000000001', tests.get_user_id('alice'), 'a1000000-0000-0000-0000-000000000001');
insert into public.agent_tasks (id, user_id, agent_id, name, prompt_template, schedule_type, max_retries,
                                overlap_policy, priority, timeout_seconds, misfire_policy) values
  ('d1000000-0000-0000-0000-000000000001', tests.get_user_id('alice'), 'a1000000-0000-0000-0000-000000000001',
   'a', 'p', 'manual', 2, 'allow', 7, 120, 'run_all'),
  ('d1000000-0000-0000-0000-000000000002', tests.get_user_id('alice'), 'a1000000-0000-0000-0000-000000000001',
   'b', 'p', 'manual', 0, 'queue', 0, 300, 'run_once');

-- Status vocabulary --------------------------------------------------------------------------
select is(scheduler.execution_statuses(),
  array['queued', 'running', 'succeeded', 'failed', 'timed_out', 'needs_input', 'cancelled', 'skipped'],
  'the execution statuses, in lifecycle order');
select is(array(select s from unnest(scheduler.execution_statuses()) s where scheduler.is_terminal(s)),
  array['succeeded', 'failed', 'timed_out', 'needs_input', 'cancelled', 'skipped'],
  'every status but queued and running is terminal');
select is(array(select s from unnest(scheduler.execution_statuses()) s where scheduler.is_finishing(s)),
  array['succeeded', 'failed', 'timed_out', 'needs_input'],
  'a worker finishes with succeeded, failed, timed_out or needs_input');
select throws_ok(
  $$insert into public.agent_task_executions (task_id, user_id, agent_id, trigger_type, status, scheduled_for)
    select t.id, t.user_id, t.agent_id, 'manual', 'paused', now() from public.agent_tasks t limit 1$$,
  '23514', null, 'a status outside the vocabulary is refused');

select is((select pg_get_constraintdef(c.oid) from pg_constraint c
           where c.conname = 'agent_task_executions_status_check'),
  format('CHECK ((status = ANY (%L::text[])))', scheduler.execution_statuses()),
  'the status CHECK is the vocabulary');
select is((select pg_get_constraintdef(c.oid) from pg_constraint c
           where c.conname = 'agent_task_executions_finished_iff_terminal'),
  format('CHECK (((status = ANY (%L::text[])) = (finished_at IS NOT NULL)))',
         array(select s from unnest(scheduler.execution_statuses()) s where scheduler.is_terminal(s))),
  'finished_at is required exactly for the statuses is_terminal names');

-- Run time -----------------------------------------------------------------------------------
select is(scheduler.duration_ms('2030-01-01 09:00:00Z', '2030-01-01 09:00:01.5Z'), 1500, 'duration in milliseconds');
select is(scheduler.duration_ms('2030-01-01 09:00:01Z', '2030-01-01 09:00:00Z'), 0, 'a clock step back is 0, not negative');
select is(scheduler.duration_ms(null, '2030-01-01 09:00:00Z'), null, 'never started: no duration');

-- The execution row constructor ------------------------------------------------------------
select results_eq(
  $$select x.status, x.trigger_type, x.attempt, x.max_attempts, x.priority::integer, x.timeout_seconds, x.exclusive,
           x.finished_at, x.error, x.error_kind, x.conversation_id, x.retry_of
    from public.agent_tasks t, scheduler.new_execution(t, 'manual', '2030-01-01 09:00Z', '2030-01-01 09:00Z',
                                                        '2030-01-01 09:00:05Z') x
    where t.id = 'd1000000-0000-0000-0000-000000000001'$$,
  $$values ('queued'::text, 'manual'::text, 0, 3, 7, 120, false, null::timestamptz, null::text, null::text,
            null::uuid, null::uuid)$$,
  'a queued run: max_retries + 1 attempts, the task''s priority and timeout, allow = not exclusive');
select is((select x.exclusive from public.agent_tasks t,
             scheduler.new_execution(t, 'schedule', now(), now(), now()) x
           where t.id = 'd1000000-0000-0000-0000-000000000002'),
  true, 'overlap_policy queue (or skip) makes the execution exclusive');
select results_eq(
  $$select x.status, x.finished_at, x.error_kind, x.error
    from public.agent_tasks t, scheduler.new_execution(t, 'schedule', '2030-01-01 09:00Z', '2030-01-01 09:00Z',
                                                        '2030-01-01 09:10Z', 'missed') x
    where t.id = 'd1000000-0000-0000-0000-000000000001'$$,
  $$values ('skipped'::text, '2030-01-01 09:10Z'::timestamptz, 'misfire'::text,
            'skipped: occurrence missed by more than misfire_grace_seconds (misfire_policy = run_all)'::text)$$,
  'a missed occurrence is skipped at p_now with the task''s misfire policy in its reason');
select is((select x.error_kind || ': ' || x.error from public.agent_tasks t,
             scheduler.new_execution(t, 'schedule', now(), now(), now(), 'overlap') x
           where t.id = 'd1000000-0000-0000-0000-000000000001'),
  'overlap: skipped: the previous run was still active (overlap_policy = skip)', 'an overlap skip');
select is((select x.error_kind from public.agent_tasks t,
             scheduler.new_execution(t, 'schedule', now(), now(), now(), 'misfire') x
           where t.id = 'd1000000-0000-0000-0000-000000000001'),
  'misfire', 'a misfire skip');
select throws_ok(
  $$insert into public.agent_task_executions
    select x.* from public.agent_tasks t, scheduler.new_execution(t, 'schedule', now(), now(), now(), 'bored') x
    where t.id = 'd1000000-0000-0000-0000-000000000001'$$,
  '23514', null, 'an unknown skip reason is refused on insert');
select is((select x.conversation_id from public.agent_tasks t,
             scheduler.new_execution(t, 'retry', now(), now(), now(), null,
                                     'c1000000-0000-0000-0000-000000000001', null) x
           where t.id = 'd1000000-0000-0000-0000-000000000001'),
  'c1000000-0000-0000-0000-000000000001'::uuid, 'a retry of a reuse task keeps its conversation');
update public.agent_tasks set conversation_mode = 'new_per_run' where id = 'd1000000-0000-0000-0000-000000000001';
select is((select x.conversation_id from public.agent_tasks t,
             scheduler.new_execution(t, 'retry', now(), now(), now(), null,
                                     'c1000000-0000-0000-0000-000000000001', null) x
           where t.id = 'd1000000-0000-0000-0000-000000000001'),
  null, 'a retry of a new_per_run task gets a new conversation');
select is(scheduler.enqueue_now('d1000000-0000-0000-0000-000000000002', 'manual', '2030-01-01 09:00Z') is not null,
  true, 'enqueue_now inserts through the constructor');
select results_eq(
  $$select status, max_attempts, exclusive, run_after from public.agent_task_executions
    where task_id = 'd1000000-0000-0000-0000-000000000002'$$,
  $$values ('queued'::text, 1, true, '2030-01-01 09:00Z'::timestamptz)$$,
  'the enqueued row is the constructor''s');

-- The first next_run_at of a schedule ---------------------------------------------------------
select is(scheduler.initial_next_run_at(
    jsonb_populate_record(null::public.agent_tasks,
      '{"schedule_type": "interval", "interval_seconds": 60}'), '2030-01-01 09:00Z'),
  '2030-01-01 09:01Z'::timestamptz, 'interval: one interval from now');
select is(scheduler.initial_next_run_at(
    jsonb_populate_record(null::public.agent_tasks,
      '{"schedule_type": "interval", "interval_seconds": 60, "starts_at": "2030-02-01T00:00:00Z"}'),
    '2030-01-01 09:00Z'),
  '2030-02-01 00:00Z'::timestamptz, 'interval: starts_at while it is ahead');
select is(scheduler.initial_next_run_at(
    jsonb_populate_record(null::public.agent_tasks,
      '{"schedule_type": "interval", "interval_seconds": 60, "starts_at": "2029-02-01T00:00:00Z"}'),
    '2030-01-01 09:00Z'),
  '2030-01-01 09:01Z'::timestamptz, 'interval: a past starts_at is ignored');
select is(scheduler.initial_next_run_at(
    jsonb_populate_record(null::public.agent_tasks,
      '{"schedule_type": "interval", "interval_seconds": 3600, "ends_at": "2030-01-01T09:30:00Z"}'),
    '2030-01-01 09:00Z'),
  null, 'interval: nothing past ends_at');
select is(scheduler.initial_next_run_at(
    jsonb_populate_record(null::public.agent_tasks,
      '{"schedule_type": "once", "run_at": "2030-03-01T00:00:00Z"}'), '2030-01-01 09:00Z'),
  '2030-03-01 00:00Z'::timestamptz, 'once: run_at');
select is(scheduler.initial_next_run_at(
    jsonb_populate_record(null::public.agent_tasks,
      '{"schedule_type": "once", "run_at": "2030-03-01T00:00:00Z", "last_scheduled_for": "2030-03-01T00:00:00Z"}'),
    '2030-04-01 09:00Z'),
  null, 'once: an occurrence that already ran does not run again');
select is(scheduler.initial_next_run_at(
    jsonb_populate_record(null::public.agent_tasks,
      '{"schedule_type": "cron", "cron_expression": "0 9 * * *"}'), '2030-01-01 09:00Z'),
  null, 'cron: the planner computes it');
select is(scheduler.initial_next_run_at(
    jsonb_populate_record(null::public.agent_tasks, '{"schedule_type": "manual"}'), '2030-01-01 09:00Z'),
  null, 'manual: never');

-- The single finish path ------------------------------------------------------------------------
update public.agent_task_executions
set status = 'running', worker_id = 'w1', attempt = 1, started_at = '2030-01-01 09:00Z',
    lease_expires_at = '2030-01-01 09:00:30Z'
where task_id = 'd1000000-0000-0000-0000-000000000002';
select is(scheduler.finish_execution(
    (select id from public.agent_task_executions where task_id = 'd1000000-0000-0000-0000-000000000002'),
    'w1', 1, 'succeeded', 'done', null, null, null, null, '2030-01-01 09:00:02Z'),
  true, 'finish_execution finishes a batch of one');
select results_eq(
  $$select e.status, e.duration_ms, t.success_count, t.last_run_at
    from public.agent_task_executions e join public.agent_tasks t on t.id = e.task_id
    where e.task_id = 'd1000000-0000-0000-0000-000000000002'$$,
  $$values ('succeeded'::text, 2000, 1, '2030-01-01 09:00:02Z'::timestamptz)$$,
  'with the batch''s duration and task bookkeeping');

-- The act-as context -------------------------------------------------------------------------
select results_eq(
  format($$select * from chat_private.act_as_context(%L, 'a1000000-0000-0000-0000-000000000001',
                                                     'c1000000-0000-0000-0000-000000000001')$$,
         tests.get_user_id('alice')),
  format($$values ('ok'::text, %L::uuid, 'a1000000-0000-0000-0000-000000000001'::uuid,
                   'c1000000-0000-0000-0000-000000000001'::uuid)$$, tests.get_user_id('alice')),
  'a context that belongs together comes back verified');
select results_eq(
  format($$select * from chat_private.act_as_context(%L, 'a1000000-0000-0000-0000-000000000001',
                                                     'c1000000-0000-0000-0000-000000000001')$$,
         tests.get_user_id('bob')),
  $$values ('context_mismatch'::text, null::uuid, null::uuid, null::uuid)$$,
  'a refused context carries no ids');
select is(chat_private.check_act_as(tests.get_user_id('bob'), 'a1000000-0000-0000-0000-000000000001', null),
  'context_mismatch', 'check_act_as is the verdict of act_as_context');

-- The owner-only policies ------------------------------------------------------------------
select ok(not has_function_privilege('authenticated',
            'scheduler.create_owner_policies(regclass, text, text, text, text)', 'execute')
          and not has_function_privilege('anon',
            'scheduler.create_owner_policies(regclass, text, text, text, text)', 'execute'),
  'no client role may call the owner-only policy generator');
select is(
  (select array_agg(distinct coalesce(p.qual, '-') || ' / ' || coalesce(p.with_check, '-'))
   from pg_policies p
   where p.schemaname = 'public'
     and p.policyname <> 'Users can post their own messages in their own conversations'),
  array['(user_id = ( SELECT auth.uid() AS uid)) / (user_id = ( SELECT auth.uid() AS uid))',
        '(user_id = ( SELECT auth.uid() AS uid)) / -',
        '- / (user_id = ( SELECT auth.uid() AS uid))'],
  'every user table''s policy but the message insert is the owner-only rule, generated once');
create table tests.owned_scratch (id integer, user_id uuid);
call scheduler.create_owner_policies('tests.owned_scratch', p_select => 'Owners see theirs',
                                     p_delete => 'Owners delete theirs');
select results_eq(
  $$select relrowsecurity from pg_class where oid = 'tests.owned_scratch'::regclass$$,
  $$values (true)$$, 'the generator turns RLS on');
select is(
  (select string_agg(format('%s: %s to %s', policyname, cmd, array_to_string(roles, ',')), '; ' order by policyname)
   from pg_policies where tablename = 'owned_scratch'),
  'Owners delete theirs: DELETE to authenticated; Owners see theirs: SELECT to authenticated',
  'it writes one policy per operation named, to authenticated, and none for the others');

-- The scheduler's own pause, with its notice -------------------------------------------------
select ok(not has_function_privilege('authenticated',
            'scheduler.pause_with_notice(public.agent_task_executions, text, jsonb, text)', 'execute')
          and not has_function_privilege('task_worker',
            'scheduler.pause_with_notice(public.agent_task_executions, text, jsonb, text)', 'execute'),
  'pause_with_notice is internal');
update public.agent_tasks set status = 'active', state = '{"kept": 1}' where id = 'd1000000-0000-0000-0000-000000000001';
insert into public.agent_task_executions
select x.* from public.agent_tasks t
cross join lateral scheduler.new_execution(t, 'schedule', '2031-01-01 09:00Z', '2031-01-01 09:00Z', now()) x
where t.id = 'd1000000-0000-0000-0000-000000000001';
select results_eq(
  $$select p.status, p.last_error, p.state
    from public.agent_tasks t
    cross join lateral scheduler.new_execution(t, 'manual', now(), now(), now()) e
    cross join lateral scheduler.pause_with_notice(e, 'too much of something', '{"why": "limit"}', 'until Monday') p
    where t.id = 'd1000000-0000-0000-0000-000000000001'$$,
  $$values ('paused'::text, 'too much of something'::text, '{"kept": 1, "why": "limit"}'::jsonb)$$,
  'pause_with_notice pauses the task, says why in last_error and merges its state');
select is((select status from public.agent_task_executions
           where task_id = 'd1000000-0000-0000-0000-000000000001' and scheduled_for = '2031-01-01 09:00Z'),
  'cancelled', 'its queued scheduled run is cancelled, as pause_task does');
select results_eq(
  $$select kind, title, body, data ->> 'task_id' from public.notifications
    where user_id = tests.get_user_id('alice') and kind = 'task_paused'$$,
  $$values ('task_paused'::text, 'Scheduled task "a" paused until Monday'::text, 'too much of something'::text,
            'd1000000-0000-0000-0000-000000000001'::text)$$,
  'and tells the owner why and until when');

select * from finish();
rollback;
