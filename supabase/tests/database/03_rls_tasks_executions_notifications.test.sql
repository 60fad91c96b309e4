-- RLS on tasks, executions and notifications. A task cannot point at another
-- user's agent or conversation (composite foreign keys); executions are
-- read-only for users; notifications can only be read, marked read, deleted.
begin;
\ir helpers/personas.psql
select plan(41);

select tests.create_user('alice');
select tests.create_user('bob');
insert into public.agents (id, user_id, name) values
  ('a1000000-0000-0000-0000-000000000001', tests.get_user_id('alice'), 'Alice agent'),
  ('a1000000-0000-0000-0000-0000000000a2', tests.get_user_id('alice'), 'Alice second agent'),
  ('a2000000-0000-0000-0000-000000000002', tests.get_user_id('bob'), 'Bob agent');
insert into public.conversation_sessions (id, user_id, agent_id) values
  ('c1000000-0000-0000-0000-000000000001', tests.get_user_id('alice'), 'a1000000-0000-0000-0000-000000000001'),
  ('c2000000-0000-0000-0000-000000000002', tests.get_user_id('bob'), 'a2000000-0000-0000-0000-000000000002');
insert into public.agent_tasks (id, user_id, agent_id, name, prompt_template, schedule_type) values
  ('d1000000-0000-0000-0000-000000000001', tests.get_user_id('alice'), 'a1000000-0000-0000-0000-000000000001', 'Alice task', 'p', 'manual'),
  ('d2000000-0000-0000-0000-000000000002', tests.get_user_id('bob'), 'a2000000-0000-0000-0000-000000000002', 'Bob task', 'p', 'manual');
insert into public.agent_task_executions (id, task_id, user_id, agent_id, trigger_type, scheduled_for) values
  ('e1000000-0000-0000-0000-000000000001', 'd1000000-0000-0000-0000-000000000001', tests.get_user_id('alice'),
   'a1000000-0000-0000-0000-000000000001', 'manual', '2030-01-01 09:00Z'),
  ('e2000000-0000-0000-0000-000000000002', 'd2000000-0000-0000-0000-000000000002', tests.get_user_id('bob'),
   'a2000000-0000-0000-0000-000000000002', 'manual', '2030-01-01 09:00Z');
insert into public.notifications (id, user_id, kind, title) values
  ('b1000000-0000-0000-0000-000000000001', tests.get_user_id('alice'), 'info', 'For alice'),
  ('b1000000-0000-0000-0000-0000000000b1', tests.get_user_id('alice'), 'info', 'For alice, to delete'),
  ('b2000000-0000-0000-0000-000000000002', tests.get_user_id('bob'), 'info', 'For bob');

-- agent_tasks --------------------------------------------------------------------
select tests.authenticate_as('alice');
select results_eq($$select id from public.agent_tasks$$,
  array['d1000000-0000-0000-0000-000000000001'::uuid], 'alice sees only her own task');
select results_eq(
  $$insert into public.agent_tasks (agent_id, name, prompt_template, schedule_type, conversation_id)
    values ('a1000000-0000-0000-0000-000000000001', 'Mine', 'p', 'manual', 'c1000000-0000-0000-0000-000000000001')
    returning user_id$$,
  format('select %L::uuid', tests.get_user_id('alice')),
  'alice can create a task for her own agent in her own conversation, owned by her');
select throws_ok(
  $$insert into public.agent_tasks (agent_id, name, prompt_template, schedule_type)
    values ('a2000000-0000-0000-0000-000000000002', 'On bob''s agent', 'p', 'manual')$$,
  '23503', null, 'alice cannot create a task for bob''s agent');
select throws_ok(
  $$insert into public.agent_tasks (agent_id, name, prompt_template, schedule_type, conversation_id)
    values ('a1000000-0000-0000-0000-000000000001', 'Into bob''s chat', 'p', 'manual', 'c2000000-0000-0000-0000-000000000002')$$,
  '23503', null, 'alice cannot point a task at bob''s conversation');
select throws_ok(
  $$insert into public.agent_tasks (agent_id, name, prompt_template, schedule_type, conversation_id)
    values ('a1000000-0000-0000-0000-0000000000a2', 'Wrong agent', 'p', 'manual', 'c1000000-0000-0000-0000-000000000001')$$,
  '23503', null, 'a task''s conversation must be with the task''s own agent');
select throws_ok(
  format($$insert into public.agent_tasks (user_id, agent_id, name, prompt_template, schedule_type)
           values (%L, 'a2000000-0000-0000-0000-000000000002', 'Planted', 'p', 'manual')$$, tests.get_user_id('bob')),
  '42501', null, 'alice cannot create a task owned by bob');
select throws_ok(
  $$update public.agent_tasks set conversation_id = 'c2000000-0000-0000-0000-000000000002'
    where id = 'd1000000-0000-0000-0000-000000000001'$$,
  '23503', null, 'alice cannot re-point her task at bob''s conversation');
select throws_ok(
  $$update public.agent_tasks set run_count = 0, next_run_at = now() where id = 'd1000000-0000-0000-0000-000000000001'$$,
  '42501', null, 'alice cannot write her task''s counters or next_run_at');
select throws_ok(
  $$update public.agent_tasks set state = '{"x": 1}' where id = 'd1000000-0000-0000-0000-000000000001'$$,
  '42501', null, 'alice cannot write her task''s state');
select is_empty($$update public.agent_tasks set name = 'hijacked' where id = 'd2000000-0000-0000-0000-000000000002' returning id$$,
  'alice updating bob''s task touches zero rows');
select is_empty($$update public.agent_tasks set status = 'paused' where id = 'd2000000-0000-0000-0000-000000000002' returning id$$,
  'alice pausing bob''s task directly touches zero rows');
select is_empty($$delete from public.agent_tasks where id = 'd2000000-0000-0000-0000-000000000002' returning id$$,
  'alice deleting bob''s task touches zero rows');
select results_eq($$update public.agent_tasks set status = 'paused' where id = 'd1000000-0000-0000-0000-000000000001' returning status$$,
  array['paused'], 'alice can pause her own task');

select tests.authenticate_as('bob');
select results_eq($$select id, name, status from public.agent_tasks$$,
  $$values ('d2000000-0000-0000-0000-000000000002'::uuid, 'Bob task'::text, 'active'::text)$$,
  'bob sees exactly his own task, unchanged by alice');

select tests.authenticate_as_anon();
select throws_ok($$select * from public.agent_tasks$$, '42501', null, 'anon cannot read tasks');
select throws_ok($$insert into public.agent_tasks (agent_id, name, prompt_template, schedule_type)
                   values ('a1000000-0000-0000-0000-000000000001', 'anon', 'p', 'manual')$$,
  '42501', null, 'anon cannot create tasks');
select throws_ok($$delete from public.agent_tasks$$, '42501', null, 'anon cannot delete tasks');

-- agent_task_executions ---------------------------------------------------------------
select tests.authenticate_as('alice');
select results_eq($$select id from public.agent_task_executions$$,
  array['e1000000-0000-0000-0000-000000000001'::uuid], 'alice sees only executions of her own tasks');
select throws_ok(
  format($$insert into public.agent_task_executions (task_id, user_id, agent_id, trigger_type, scheduled_for)
           values ('d1000000-0000-0000-0000-000000000001', %L, 'a1000000-0000-0000-0000-000000000001', 'manual', now())$$,
         tests.get_user_id('alice')),
  '42501', null, 'alice cannot enqueue an execution directly (only through run_task_now)');
select throws_ok(
  $$update public.agent_task_executions set status = 'cancelled', finished_at = now()
    where id = 'e1000000-0000-0000-0000-000000000001'$$,
  '42501', null, 'alice cannot change her own execution directly (only through the rpc functions)');
select throws_ok(
  $$update public.agent_task_executions set priority = 100 where id = 'e2000000-0000-0000-0000-000000000002'$$,
  '42501', null, 'alice cannot change bob''s execution');
select throws_ok($$delete from public.agent_task_executions where id = 'e2000000-0000-0000-0000-000000000002'$$,
  '42501', null, 'alice cannot delete bob''s execution');
select throws_ok($$delete from public.agent_task_executions where id = 'e1000000-0000-0000-0000-000000000001'$$,
  '42501', null, 'alice cannot delete her own execution history');

select tests.authenticate_as('bob');
select results_eq($$select id, status from public.agent_task_executions$$,
  $$values ('e2000000-0000-0000-0000-000000000002'::uuid, 'queued'::text)$$,
  'bob sees exactly his own execution, still queued');

select tests.authenticate_as_anon();
select throws_ok($$select * from public.agent_task_executions$$, '42501', null, 'anon cannot read executions');
select throws_ok($$update public.agent_task_executions set status = 'cancelled'$$, '42501', null,
  'anon cannot change executions');

-- notifications --------------------------------------------------------------------------
select tests.authenticate_as('alice');
select set_eq($$select id from public.notifications$$,
  array['b1000000-0000-0000-0000-000000000001'::uuid, 'b1000000-0000-0000-0000-0000000000b1'::uuid],
  'alice sees only her own notifications');
select throws_ok(
  format($$insert into public.notifications (user_id, kind, title) values (%L, 'info', 'fake alert')$$,
         tests.get_user_id('bob')),
  '42501', null, 'alice cannot send bob a notification');
select throws_ok(
  format($$insert into public.notifications (user_id, kind, title) values (%L, 'info', 'self alert')$$,
         tests.get_user_id('alice')),
  '42501', null, 'alice cannot create notifications at all');
select results_eq(
  $$update public.notifications set read_at = now() where id = 'b1000000-0000-0000-0000-000000000001' returning read_at is not null$$,
  array[true], 'alice can mark her own notification read');
select throws_ok(
  $$update public.notifications set title = 'edited' where id = 'b1000000-0000-0000-0000-000000000001'$$,
  '42501', null, 'alice cannot edit a notification''s text');
select is_empty(
  $$update public.notifications set read_at = now() where id = 'b2000000-0000-0000-0000-000000000002' returning id$$,
  'alice marking bob''s notification read touches zero rows');
select is_empty($$delete from public.notifications where id = 'b2000000-0000-0000-0000-000000000002' returning id$$,
  'alice deleting bob''s notification touches zero rows');
select results_eq($$delete from public.notifications where id = 'b1000000-0000-0000-0000-0000000000b1' returning id$$,
  array['b1000000-0000-0000-0000-0000000000b1'::uuid], 'alice can delete her own notification');

select tests.authenticate_as('bob');
select results_eq($$select id, read_at from public.notifications$$,
  $$values ('b2000000-0000-0000-0000-000000000002'::uuid, null::timestamptz)$$,
  'bob still has his notification, unread');

select tests.authenticate_as_anon();
select throws_ok($$select * from public.notifications$$, '42501', null, 'anon cannot read notifications');
select throws_ok($$update public.notifications set read_at = now()$$, '42501', null, 'anon cannot mark notifications read');

-- the owner's view at the end -----------------------------------------------------------
select tests.clear_authentication();
select results_eq($$select name, status from public.agent_tasks where id = 'd2000000-0000-0000-0000-000000000002'$$,
  $$values ('Bob task'::text, 'active'::text)$$, 'bob''s task was never renamed or paused');
select is((select count(*)::int from public.agent_task_executions), 2, 'no execution was added or deleted by a user');
select is((select count(*)::int from public.notifications where user_id = tests.get_user_id('bob')), 1,
  'bob''s notification survived');
select is((select count(*)::int from public.agent_tasks where user_id = tests.get_user_id('bob')), 1,
  'no task was planted in bob''s name');

select * from finish();
rollback;
