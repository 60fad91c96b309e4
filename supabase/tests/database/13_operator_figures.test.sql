-- The operator's figures at month thirty: scheduler.queue_stats counts every
-- queued and running execution but only what finished lately, and the latest
-- failures have an index of their own, so neither reads the whole history.
begin;
\ir helpers/personas.psql
select plan(5);

select tests.create_user('alice');
insert into public.agents (id, user_id, name) values
  ('a1000000-0000-0000-0000-000000000001', tests.get_user_id('alice'), 'Alice agent');
insert into public.agent_tasks (id, user_id, agent_id, name, prompt_template, schedule_type, overlap_policy) values
  ('d1000000-0000-0000-0000-000000000001', tests.get_user_id('alice'), 'a1000000-0000-0000-0000-000000000001',
   'manual', 'p', 'manual', 'allow');
insert into public.agent_task_executions (task_id, user_id, agent_id, trigger_type, status, scheduled_for,
                                          finished_at, error_kind)
select 'd1000000-0000-0000-0000-000000000001', tests.get_user_id('alice'), 'a1000000-0000-0000-0000-000000000001',
       'manual', s, now() - make_interval(hours => h, secs => k), f, case when s = 'cancelled' then 'cancelled' end
from (values ('queued', 100, null::timestamptz), ('cancelled', 48, now() - interval '47 hours'),
             ('cancelled', 2, now() - interval '1 hour')) v(s, h, f),
     generate_series(1, 2) k;

select is(array(select row(status, count)::text from scheduler.queue_stats()),
  array['(cancelled,2)', '(queued,2)'],
  'queued runs count however old; finished ones only within the last 24 hours');
select is(array(select row(status, count)::text from scheduler.queue_stats('3 days')),
  array['(cancelled,4)', '(queued,2)'], 'a longer window counts more of the history');
select is((select next_run_after is not null from scheduler.queue_stats() where status = 'queued'), true,
  'the queued row says when the next run may start');

-- whether the indexes can serve the reads, not whether they pay for so few rows
set local enable_seqscan = off;
set local enable_bitmapscan = off;
select matches(tests.plan_of($$select * from scheduler.queue_stats()$$) ||
               tests.plan_of($$select e.status, count(*) from public.agent_task_executions e
                               where e.finished_at >= now() - interval '24 hours' group by e.status$$),
  'Index Scan using agent_task_executions_finished_idx',
  'what finished lately is read along the finished index');
select matches(tests.plan_of($$select e.id from public.agent_task_executions e
                               where e.status in ('failed', 'timed_out') order by e.finished_at desc limit 50$$),
  'Index Scan using agent_task_executions_failed_idx',
  'the operator''s latest failures walk their own index');

select * from finish();
rollback;
