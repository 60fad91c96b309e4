-- The misfire policy in one place (scheduler.misfire_plan), the same for
-- interval tasks (enqueue_due) and cron tasks (apply_plan, with the planner's
-- occurrences): an occurrence no older than misfire_grace_seconds is on time
-- and runs (a blip of the scheduler is caught up), an older one was missed
-- during real downtime and follows misfire_policy.
begin;
\ir helpers/personas.psql
select plan(16);

-- misfire_plan alone (T = 2030-01-01 09:00)
select results_eq(
  $$select run, skipped from scheduler.misfire_plan('skip', 60,
      array['2030-01-01 09:00:00Z', '2030-01-01 09:00:01Z', '2030-01-01 09:00:02Z']::timestamptz[],
      '2030-01-01 09:00:05Z')$$,
  $$values (array['2030-01-01 09:00:00Z', '2030-01-01 09:00:01Z', '2030-01-01 09:00:02Z']::timestamptz[],
            '{}'::timestamptz[])$$,
  'a blip of seconds is caught up: every occurrence within the grace runs, even under misfire_policy = skip');
select results_eq(
  $$select run, skipped from scheduler.misfire_plan('run_once', 60,
      array['2030-01-01 06:00Z', '2030-01-01 07:00Z', '2030-01-01 08:00Z']::timestamptz[], '2030-01-01 09:00Z')$$,
  $$values (array['2030-01-01 08:00Z']::timestamptz[], array['2030-01-01 06:00Z', '2030-01-01 07:00Z']::timestamptz[])$$,
  'run_once after downtime runs the latest missed occurrence and records the others as skipped');
select results_eq(
  $$select run, skipped from scheduler.misfire_plan('run_once', 60,
      array['2030-01-01 07:00Z', '2030-01-01 08:00Z', '2030-01-01 08:59:30Z']::timestamptz[], '2030-01-01 09:00Z')$$,
  $$values (array['2030-01-01 08:59:30Z']::timestamptz[], array['2030-01-01 07:00Z', '2030-01-01 08:00Z']::timestamptz[])$$,
  'run_once runs no missed occurrence when one on time runs in the same pass');
select results_eq(
  $$select run, skipped from scheduler.misfire_plan('skip', 60,
      array['2030-01-01 07:00Z', '2030-01-01 08:00Z']::timestamptz[], '2030-01-01 09:00Z')$$,
  $$values ('{}'::timestamptz[], array['2030-01-01 07:00Z', '2030-01-01 08:00Z']::timestamptz[])$$,
  'skip runs no missed occurrence');
select results_eq(
  $$select cardinality(run), cardinality(skipped), run[1] > skipped[50]
    from scheduler.misfire_plan('run_all', 0,
      array(select '2030-01-01 00:00Z'::timestamptz + make_interval(mins => k) from generate_series(0, 149) k),
      '2030-01-02 00:00Z')$$,
  $$values (100, 50, true)$$, 'run_all runs the latest 100 missed occurrences and records older ones as skipped');
select results_eq(
  $$select run, skipped from scheduler.misfire_plan('run_once', 60,
      array['2030-01-01 07:00Z', '2030-01-01 08:00Z']::timestamptz[], '2030-01-01 09:00Z', true)$$,
  $$values ('{}'::timestamptz[], array['2030-01-01 07:00Z', '2030-01-01 08:00Z']::timestamptz[])$$,
  'when more due occurrences follow in another pass, none of these missed ones is the latest');

-- the same rule for an interval task (enqueue_due) and a cron task (apply_plan)
select tests.create_user('alice');
insert into public.agents (id, user_id, name) values
  ('a1000000-0000-0000-0000-000000000001', tests.get_user_id('alice'), 'Alice agent');
insert into public.agent_tasks (id, user_id, agent_id, name, prompt_template, schedule_type, interval_seconds,
                                cron_expression, misfire_policy, misfire_grace_seconds, overlap_policy) values
  ('d1000000-0000-0000-0000-000000000001', tests.get_user_id('alice'), 'a1000000-0000-0000-0000-000000000001',
   'every minute (interval)', 'p', 'interval', 60, null, 'skip', 60, 'allow'),
  ('d1000000-0000-0000-0000-000000000002', tests.get_user_id('alice'), 'a1000000-0000-0000-0000-000000000001',
   'every minute (cron)', 'p', 'cron', null, '* * * * *', 'skip', 60, 'allow'),
  ('d1000000-0000-0000-0000-000000000003', tests.get_user_id('alice'), 'a1000000-0000-0000-0000-000000000001',
   'every second (interval)', 'p', 'interval', 1, null, 'skip', 60, 'allow');

-- a scheduler stalled 5 s (blip): an every-second task catches up, nothing is recorded as missed
update public.agent_tasks set next_run_at = '2030-01-01 09:00:00Z' where id = 'd1000000-0000-0000-0000-000000000003';
update public.agent_tasks set next_run_at = '2030-01-01 12:00Z' where id = 'd1000000-0000-0000-0000-000000000001';
select is(scheduler.enqueue_due('2030-01-01 09:00:05.5Z'), 6,
  'after a 5 s stall an every-second task gets its six occurrences (09:00:00-09:00:05) queued');
select results_eq(
  $$select count(*) filter (where status = 'queued')::int, count(*) filter (where status = 'skipped')::int
    from public.agent_task_executions where task_id = 'd1000000-0000-0000-0000-000000000003'$$,
  $$values (6, 0)$$, 'no occurrence of a blip is recorded as misfire-skipped');
select is((select next_run_at from public.agent_tasks where id = 'd1000000-0000-0000-0000-000000000003'),
  '2030-01-01 09:00:06Z'::timestamptz, 'the grid continues after now');

-- real downtime: 08:00-09:00 every minute, now 09:00:30 (grace 60 s): the same for both kinds
update public.agent_tasks set status = 'paused' where id = 'd1000000-0000-0000-0000-000000000003';
update public.agent_tasks set next_run_at = '2030-01-01 08:00Z' where id = 'd1000000-0000-0000-0000-000000000001';
select is(scheduler.enqueue_due('2030-01-01 09:00:30Z'), 1,
  'the interval task runs its on-time occurrence (08:59:30 and later: 09:00) ...');
select ok(scheduler.apply_plan('d1000000-0000-0000-0000-000000000002',
    (select schedule_version from public.agent_tasks where id = 'd1000000-0000-0000-0000-000000000002'),
    '2030-01-01 09:01Z',
    false,
    array(select '2030-01-01 08:00Z'::timestamptz + make_interval(mins => k) from generate_series(0, 60) k),
    false, '2030-01-01 09:00:30Z'),
  'the cron task''s planner hands the same occurrences to apply_plan');
select results_eq(
  $$select t.schedule_type, count(*) filter (where e.status = 'queued')::int,
           count(*) filter (where e.status = 'skipped' and e.error_kind = 'misfire')::int,
           min(e.scheduled_for) filter (where e.status = 'queued')
    from public.agent_task_executions e join public.agent_tasks t on t.id = e.task_id
    where t.id in ('d1000000-0000-0000-0000-000000000001', 'd1000000-0000-0000-0000-000000000002')
    group by t.schedule_type order by t.schedule_type$$,
  $$values ('cron'::text, 1, 60, '2030-01-01 09:00Z'::timestamptz),
           ('interval'::text, 1, 60, '2030-01-01 09:00Z'::timestamptz)$$,
  '... and both kinds run the same on-time occurrence (09:00) and record the same 60 missed ones as skipped');
select results_eq(
  $$select schedule_type, next_run_at from public.agent_tasks
    where id in ('d1000000-0000-0000-0000-000000000001', 'd1000000-0000-0000-0000-000000000002')
    order by schedule_type$$,
  $$values ('cron'::text, '2030-01-01 09:01Z'::timestamptz), ('interval'::text, '2030-01-01 09:01Z'::timestamptz)$$,
  'both continue at 09:01');

-- a cron task whose next_run_at was missed is handed back to the planner, which sees all its missed ones
update public.agent_tasks set next_run_at = '2030-01-01 10:00Z' where id = 'd1000000-0000-0000-0000-000000000002';
update public.agent_tasks set next_run_at = '2030-01-02 12:00Z' where id = 'd1000000-0000-0000-0000-000000000001';
select is(scheduler.enqueue_due('2030-01-01 11:00Z'), 0,
  'enqueue_due decides nothing for a cron occurrence missed beyond its grace');
select results_eq(
  $$select next_run_at, last_scheduled_for from public.agent_tasks where id = 'd1000000-0000-0000-0000-000000000002'$$,
  $$values (null::timestamptz, '2030-01-01 09:00Z'::timestamptz)$$,
  'it waits for the planner, from its last occurrence');
select is((select count(*)::int from public.agent_task_executions
           where task_id = 'd1000000-0000-0000-0000-000000000002' and scheduled_for >= '2030-01-01 10:00Z'), 0,
  'no execution is written for it until the planner hands over the whole downtime');

select * from finish();
rollback;
