-- Retention (scheduler.purge_expired, the purge job every 5 minutes): finished
-- executions, notifications and daily token counts past their retention in
-- scheduler.limits go, oldest first, at most a batch of each per call; what
-- is running or queued, recent, or kept by a NULL retention stays.
begin;
\ir helpers/personas.psql
select plan(13);

select tests.create_user('alice');
insert into public.agents (id, user_id, name) values
  ('a1000000-0000-0000-0000-000000000001', tests.get_user_id('alice'), 'Alice agent');
insert into public.agent_tasks (id, user_id, agent_id, name, prompt_template, schedule_type) values
  ('d1000000-0000-0000-0000-000000000001', tests.get_user_id('alice'), 'a1000000-0000-0000-0000-000000000001',
   'manual', 'p', 'manual');
-- three finished 40, 39 and 38 days ago, one 10 days ago, one still queued from 60 days ago
insert into public.agent_task_executions (id, task_id, user_id, agent_id, trigger_type, status, scheduled_for,
                                          finished_at, created_at) values
  ('e1000000-0000-0000-0000-000000000001', 'd1000000-0000-0000-0000-000000000001', tests.get_user_id('alice'),
   'a1000000-0000-0000-0000-000000000001', 'manual', 'cancelled', now() - interval '40 days', now() - interval '40 days', now() - interval '40 days'),
  ('e1000000-0000-0000-0000-000000000002', 'd1000000-0000-0000-0000-000000000001', tests.get_user_id('alice'),
   'a1000000-0000-0000-0000-000000000001', 'manual', 'cancelled', now() - interval '39 days', now() - interval '39 days', now() - interval '39 days'),
  ('e1000000-0000-0000-0000-000000000003', 'd1000000-0000-0000-0000-000000000001', tests.get_user_id('alice'),
   'a1000000-0000-0000-0000-000000000001', 'manual', 'cancelled', now() - interval '38 days', now() - interval '38 days', now() - interval '38 days'),
  ('e1000000-0000-0000-0000-000000000004', 'd1000000-0000-0000-0000-000000000001', tests.get_user_id('alice'),
   'a1000000-0000-0000-0000-000000000001', 'manual', 'cancelled', now() - interval '10 days', now() - interval '10 days', now() - interval '10 days'),
  ('e1000000-0000-0000-0000-000000000005', 'd1000000-0000-0000-0000-000000000001', tests.get_user_id('alice'),
   'a1000000-0000-0000-0000-000000000001', 'manual', 'queued', now() - interval '60 days', null, now() - interval '60 days');
insert into public.notifications (id, user_id, kind, title, created_at) values
  ('b1000000-0000-0000-0000-000000000001', tests.get_user_id('alice'), 'info', 'old, read', now() - interval '120 days'),
  ('b1000000-0000-0000-0000-000000000002', tests.get_user_id('alice'), 'info', 'old, unread', now() - interval '100 days'),
  ('b1000000-0000-0000-0000-000000000003', tests.get_user_id('alice'), 'info', 'recent', now() - interval '10 days');
update public.notifications set read_at = now() where id = 'b1000000-0000-0000-0000-000000000001';
insert into scheduler.token_usage (day, user_id, tokens) values
  (current_date - 500, tests.get_user_id('alice'), 10),
  (current_date - 401, tests.get_user_id('alice'), 10),
  (current_date - 10, tests.get_user_id('alice'), 10);

select is(scheduler.purge_expired(2), '{"executions": 2, "notifications": 2, "token_usage": 2, "webhook_deliveries": 0}'::jsonb,
  'one call deletes at most a batch of each kind past its retention');
select is(array(select id::text from public.agent_task_executions order by id),
  array['e1000000-0000-0000-0000-000000000003', 'e1000000-0000-0000-0000-000000000004',
        'e1000000-0000-0000-0000-000000000005'],
  'the oldest finished executions go first; the queued one stays however old');
select is(scheduler.purge_expired(2), '{"executions": 1, "notifications": 0, "token_usage": 0, "webhook_deliveries": 0}'::jsonb,
  'the next call takes the rest');
select is(scheduler.purge_expired(2), '{"executions": 0, "notifications": 0, "token_usage": 0, "webhook_deliveries": 0}'::jsonb,
  'and then there is nothing to do');
select is(array(select id::text from public.agent_task_executions order by id),
  array['e1000000-0000-0000-0000-000000000004', 'e1000000-0000-0000-0000-000000000005'],
  'executions within 30 days stay');
select is(array(select title from public.notifications order by created_at), array['recent'],
  'notifications older than 90 days go, read or not');
select is(array(select day from scheduler.token_usage order by day), array[current_date - 10],
  'token counts older than 400 days go');

-- retention is the operator's: NULL keeps the rows, a shorter one takes more
update scheduler.limits set value = 'null' where name = 'history_retention_days';
select is((scheduler.purge_expired(10, now() + interval '1 year')) -> 'executions', '0'::jsonb,
  'with history_retention_days unset no execution goes');
update scheduler.limits set value = '5' where name = 'history_retention_days';
select is((scheduler.purge_expired()) -> 'executions', '1'::jsonb,
  'with 5 days the 10-day-old execution goes too');
select throws_ok($$select scheduler.purge_expired(0)$$, '22023', 'p_batch must be at least 1, got 0',
  'a batch of nothing is a mistake, not a no-op');

-- who may run it
select tests.authenticate_as('alice');
select throws_ok($$select scheduler.purge_expired()$$, '42501', null, 'users cannot purge');
select tests.clear_authentication();
-- whether the index can serve the walk, not whether it pays for so few rows
set local enable_seqscan = off;
set local enable_bitmapscan = off;
set local enable_sort = off;
select matches(tests.plan_of($$select x.id from public.agent_task_executions x
                               where x.finished_at < now() - interval '30 days' order by x.finished_at limit 5000$$),
  'Index Scan using agent_task_executions_finished_idx',
  'a batch of executions walks their finished_at index from the oldest');
select matches(tests.plan_of($$select x.id from public.notifications x
                               where x.created_at < now() - interval '90 days' order by x.created_at limit 5000$$),
  'Index Scan using notifications_created_idx', 'and notifications their created_at index');

select * from finish();
rollback;
