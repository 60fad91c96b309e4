-- The backlog of an exclusive task (overlap_policy skip or queue): at most
-- max_queued_runs_per_task runs wait behind its running one
-- (scheduler.backlog_room). The planner records the occurrences beyond that
-- as skipped (enqueue_due, apply_plan); run_task_now and retry_execution are
-- refused with PT409. An 'allow' task has no backlog bound, and neither has
-- the operator's own SQL (scheduler.enqueue_now).
begin;
\ir helpers/personas.psql
select plan(17);

select tests.create_user('alice');
insert into public.agents (id, user_id, name) values
  ('a1000000-0000-0000-0000-000000000001', tests.get_user_id('alice'), 'Alice agent');
insert into public.agent_tasks (id, user_id, agent_id, name, prompt_template, schedule_type, interval_seconds,
                                overlap_policy, conversation_mode) values
  ('b1000000-0000-0000-0000-000000000001', tests.get_user_id('alice'), 'a1000000-0000-0000-0000-000000000001',
   'every minute, slower than that', 'p', 'interval', 60, 'queue', 'new_per_run');
insert into public.agent_tasks (id, user_id, agent_id, name, prompt_template, schedule_type, overlap_policy) values
  ('b2000000-0000-0000-0000-000000000002', tests.get_user_id('alice'), 'a1000000-0000-0000-0000-000000000001',
   'exclusive by hand', 'p', 'manual', 'skip'),
  ('b3000000-0000-0000-0000-000000000003', tests.get_user_id('alice'), 'a1000000-0000-0000-0000-000000000001',
   'parallel by hand', 'p', 'manual', 'allow');
insert into public.agent_tasks (id, user_id, agent_id, name, prompt_template, schedule_type, cron_expression,
                                overlap_policy, misfire_policy, conversation_mode) values
  ('b4000000-0000-0000-0000-000000000004', tests.get_user_id('alice'), 'a1000000-0000-0000-0000-000000000001',
   'cron catching up', 'p', 'cron', '* * * * *', 'queue', 'run_all', 'new_per_run');
update scheduler.limits set value = '3' where name = 'max_queued_runs_per_task';

-- =========================================================================
-- The planner: occurrences beyond the room are skipped, not queued
-- =========================================================================
select is(scheduler.backlog_room('b1000000-0000-0000-0000-000000000001', 'queue'), 3, 'an empty backlog has all its room');
select scheduler.enqueue_due(now() + make_interval(secs => 60 * k + 1)) from generate_series(1, 5) k;
select is(array(select status || ' ' || coalesce(error_kind, '-') from public.agent_task_executions
                where task_id = 'b1000000-0000-0000-0000-000000000001' order by scheduled_for),
  array['queued -', 'queued -', 'queued -', 'skipped overlap', 'skipped overlap'],
  'five occurrences of a task whose runs never end: three wait, two are skipped');
select is((select array_agg(distinct error) from public.agent_task_executions
           where task_id = 'b1000000-0000-0000-0000-000000000001' and status = 'skipped'),
  array['skipped: the task already had 3 waiting to run (max_queued_runs_per_task)'],
  'a skipped occurrence says why, naming the limit');
select is((select run_count from public.agent_tasks where id = 'b1000000-0000-0000-0000-000000000001'), 3,
  'skipped occurrences are not runs');
select cmp_ok((select next_run_at from public.agent_tasks where id = 'b1000000-0000-0000-0000-000000000001'),
  '>', now() + interval '5 minutes', 'and the schedule moves on past them');
select is(scheduler.backlog_room('b1000000-0000-0000-0000-000000000001', 'queue'), 0, 'the backlog is full');
select is(scheduler.backlog_room('b3000000-0000-0000-0000-000000000003', 'allow'), null::integer,
  'an allow task has no backlog bound');

-- the cron planner's catch-up (misfire_policy run_all): one apply_plan of five due occurrences
select ok(scheduler.apply_plan('b4000000-0000-0000-0000-000000000004',
            (select schedule_version from public.agent_tasks where id = 'b4000000-0000-0000-0000-000000000004'),
            date_trunc('minute', now()) + interval '1 minute', false,
            array(select date_trunc('minute', now()) - make_interval(mins => k) from generate_series(5, 1, -1) k)),
  'the planner applies a catch-up of five occurrences');
select is(array(select status || ' ' || coalesce(error_kind, '-') from public.agent_task_executions
                where task_id = 'b4000000-0000-0000-0000-000000000004' order by scheduled_for),
  array['queued -', 'queued -', 'queued -', 'skipped overlap', 'skipped overlap'],
  'the planner queues the earliest three and records the later two as skipped');
select is((select run_count from public.agent_tasks where id = 'b4000000-0000-0000-0000-000000000004'), 3,
  'and counts three runs');

-- =========================================================================
-- Runs nobody scheduled: refused by the API, not for the operator
-- =========================================================================
select scheduler.cancel_execution(scheduler.enqueue_now('b2000000-0000-0000-0000-000000000002'), 'test');
select scheduler.enqueue_now('b2000000-0000-0000-0000-000000000002') from generate_series(1, 3);
select scheduler.enqueue_now('b3000000-0000-0000-0000-000000000003') from generate_series(1, 5);
select is((select count(*)::integer from public.agent_task_executions
           where task_id = 'b2000000-0000-0000-0000-000000000002' and status = 'queued'), 3,
  'the operator''s enqueue_now is not held to the limit');

select tests.authenticate_as('alice');
select throws_ok($$select public.run_task_now('b1000000-0000-0000-0000-000000000001')$$, 'PT409',
  'task "every minute, slower than that" already has 3 waiting to run, the most max_queued_runs_per_task allows; try again once one has run',
  'run now on a full backlog is refused naming the limit (PostgREST answers 409)');
select throws_ok($$select public.run_task_now('b2000000-0000-0000-0000-000000000002')$$, 'PT409', null,
  'an overlap_policy skip task queues its runs by hand one behind the other too');
select throws_ok(format($$select public.retry_execution(%L)$$,
    (select id from public.agent_task_executions
     where task_id = 'b2000000-0000-0000-0000-000000000002' and status = 'cancelled')), 'PT409', null,
  'and so is a retry');
select lives_ok($$select public.run_task_now('b3000000-0000-0000-0000-000000000003')$$,
  'an allow task runs now whatever waits');
select tests.clear_authentication();

-- one run leaves the backlog: room for one
select scheduler.cancel_execution((select id from public.agent_task_executions
  where task_id = 'b1000000-0000-0000-0000-000000000001' and status = 'queued' order by scheduled_for limit 1), 'test');
select tests.authenticate_as('alice');
select lives_ok($$select public.run_task_now('b1000000-0000-0000-0000-000000000001')$$,
  'a run that leaves the backlog makes room for one');
select tests.clear_authentication();

update scheduler.limits set value = 'null' where name = 'max_queued_runs_per_task';
select tests.authenticate_as('alice');
select lives_ok($$select public.run_task_now('b1000000-0000-0000-0000-000000000001')$$,
  'with the limit unset there is no bound');
select tests.clear_authentication();

select * from finish();
rollback;
