-- Scheduler messages: only the scheduler path writes a user message with
-- metadata.source = 'scheduler' or an execution_id. Users and even
-- service_role are refused; scheduler.start_execution can, exactly once per
-- execution whatever the number of attempts.
begin;
\ir helpers/personas.psql
select plan(26);

select tests.create_user('alice');
select tests.create_user('bob');
insert into public.agents (id, user_id, name) values
  ('a1000000-0000-0000-0000-000000000001', tests.get_user_id('alice'), 'Alice agent');
insert into public.conversation_sessions (id, user_id, agent_id, title) values
  ('c1000000-0000-0000-0000-000000000001', tests.get_user_id('alice'), 'a1000000-0000-0000-0000-000000000001', 'Daily');
insert into public.agent_tasks (id, user_id, agent_id, name, prompt_template, schedule_type, conversation_id, max_retries) values
  ('d1000000-0000-0000-0000-000000000001', tests.get_user_id('alice'), 'a1000000-0000-0000-0000-000000000001',
   'Daily digest', 'Digest for {{TODAY}}', 'manual', 'c1000000-0000-0000-0000-000000000001', 3),
  ('d1000000-0000-0000-0000-0000000000d2', tests.get_user_id('alice'), 'a1000000-0000-0000-0000-000000000001',
   'Fresh chats', 'Hello', 'manual', null, 3);
update public.agent_tasks set conversation_mode = 'new_per_run' where id = 'd1000000-0000-0000-0000-0000000000d2';
insert into public.agent_task_executions (id, task_id, user_id, agent_id, trigger_type, scheduled_for, run_after, max_attempts) values
  ('e1000000-0000-0000-0000-000000000001', 'd1000000-0000-0000-0000-000000000001', tests.get_user_id('alice'),
   'a1000000-0000-0000-0000-000000000001', 'schedule', '2030-01-01 09:00Z', '2030-01-01 09:00Z', 4),
  ('e1000000-0000-0000-0000-0000000000e2', 'd1000000-0000-0000-0000-0000000000d2', tests.get_user_id('alice'),
   'a1000000-0000-0000-0000-000000000001', 'manual', '2030-01-01 09:00Z', '2030-01-01 09:00Z', 4);

-- Users cannot forge scheduler messages ------------------------------------------------
select tests.authenticate_as('alice');
select throws_ok(
  $$insert into public.chat_messages_v2 (conversation_id, role, content, metadata)
    values ('c1000000-0000-0000-0000-000000000001', 'user', 'forged', '{"source": "scheduler"}')$$,
  '42501', 'only the scheduler may write messages with metadata.source = ''scheduler'' or an execution_id',
  'a user cannot write metadata.source = scheduler');
select throws_ok(
  $$insert into public.chat_messages_v2 (conversation_id, role, content, metadata)
    values ('c1000000-0000-0000-0000-000000000001', 'user', 'forged',
            '{"source": "scheduler", "execution_id": "e1000000-0000-0000-0000-000000000001"}')$$,
  '42501', null, 'a user cannot write a scheduler message even naming a real execution in metadata');
select throws_ok(
  $$insert into public.chat_messages_v2 (conversation_id, role, content, execution_id)
    values ('c1000000-0000-0000-0000-000000000001', 'user', 'forged', 'e1000000-0000-0000-0000-000000000001')$$,
  '42501', null, 'a user cannot set execution_id on a message');
select throws_ok(
  $$insert into public.chat_messages_v2 (conversation_id, role, content, metadata)
    values ('c1000000-0000-0000-0000-000000000001', 'assistant', 'fake reply', '{}')$$,
  '42501', null, 'a user cannot insert an assistant message');
select throws_ok(
  $$insert into public.chat_messages_v2 (conversation_id, role, content)
    values ('c1000000-0000-0000-0000-000000000001', 'tool', '{"result": 1}')$$,
  '42501', null, 'a user cannot insert a tool message');
select lives_ok(
  $$insert into public.chat_messages_v2 (conversation_id, role, content, metadata)
    values ('c1000000-0000-0000-0000-000000000001', 'user', 'typed by hand', '{"source": "web"}')$$,
  'a user can still post an ordinary message with their own metadata');
select throws_ok(
  $$select * from scheduler.start_execution('e1000000-0000-0000-0000-000000000001', 'w1', 1, 'x')$$,
  '42501', null, 'a user cannot call the scheduler path');

-- service_role bypasses RLS but is not the scheduler ------------------------------------
select tests.authenticate_as_service_role();
select throws_ok(
  format($$insert into public.chat_messages_v2 (conversation_id, user_id, role, content, metadata)
           values ('c1000000-0000-0000-0000-000000000001', %L, 'user', 'forged', '{"source": "scheduler"}')$$,
         tests.get_user_id('alice')),
  '42501', 'only the scheduler may write messages with metadata.source = ''scheduler'' or an execution_id',
  'service_role cannot write metadata.source = scheduler');
select throws_ok(
  format($$insert into public.chat_messages_v2 (conversation_id, user_id, role, content, execution_id)
           values ('c1000000-0000-0000-0000-000000000001', %L, 'assistant', 'forged', 'e1000000-0000-0000-0000-000000000001')$$,
         tests.get_user_id('alice')),
  '42501', null, 'service_role cannot write a message with an execution_id directly');
select throws_ok(
  $$update public.chat_messages_v2 set metadata = '{"source": "scheduler"}' where content = 'typed by hand'$$,
  '42501', null, 'service_role cannot turn an existing message into a scheduler message');

-- The scheduler path ----------------------------------------------------------------------
select tests.clear_authentication();
select is((select count(*)::int from scheduler.claim_executions('w1', 10, 30, null, '2030-01-01 09:00:01Z')), 2,
  'the worker claims both executions');
select results_eq(
  $$select conversation_id, created_conversation
    from scheduler.start_execution('e1000000-0000-0000-0000-000000000001', 'w1', 1, 'Digest for 2030-01-01', null, '2030-01-01 09:00:02Z')$$,
  $$values ('c1000000-0000-0000-0000-000000000001'::uuid, false)$$,
  'start_execution uses the task''s conversation (reuse) and creates none');
select results_eq(
  $$select role, content, execution_id, user_id, metadata
    from public.chat_messages_v2 where execution_id = 'e1000000-0000-0000-0000-000000000001'$$,
  format($$values ('user'::text, 'Digest for 2030-01-01'::text, 'e1000000-0000-0000-0000-000000000001'::uuid, %L::uuid,
                   '{"source": "scheduler", "task_id": "d1000000-0000-0000-0000-000000000001", "task_name": "Daily digest",
                     "execution_id": "e1000000-0000-0000-0000-000000000001", "trigger_type": "schedule"}'::jsonb)$$,
         tests.get_user_id('alice')),
  'the scheduler writes one user message owned by alice with the scheduler metadata');
select is(
  (select user_message_id from public.agent_task_executions where id = 'e1000000-0000-0000-0000-000000000001'),
  (select id from public.chat_messages_v2 where execution_id = 'e1000000-0000-0000-0000-000000000001'),
  'the execution records its user message');
select throws_ok(
  $$select * from scheduler.start_execution('e1000000-0000-0000-0000-000000000001', 'w2', 1, 'x')$$,
  '55000', null, 'another worker cannot start an execution it does not hold');
select throws_ok(
  $$select * from scheduler.start_execution('e1000000-0000-0000-0000-000000000001', 'w1', 2, 'x')$$,
  '55000', null, 'the wrong attempt cannot start the execution');

-- A retried execution never duplicates the user message ---------------------------------
select is(
  scheduler.requeue_later('e1000000-0000-0000-0000-000000000001', 'w1', 1, 'upstream 503', 'transient', 0, '2030-01-01 09:00:03Z'),
  'queued', 'a transient error re-queues the execution');
select is((select attempt from scheduler.claim_executions('w2', 1, 30, null, '2030-01-01 09:00:04Z')), 2,
  'another worker claims attempt 2');
select results_eq(
  $$select user_message_id, created_conversation
    from scheduler.start_execution('e1000000-0000-0000-0000-000000000001', 'w2', 2, 'Digest for 2030-01-01 (again)', null, '2030-01-01 09:00:05Z')$$,
  $$select id, false from public.chat_messages_v2 where execution_id = 'e1000000-0000-0000-0000-000000000001'$$,
  'attempt 2 gets the message written by attempt 1 back');
select is((select count(*)::int from public.chat_messages_v2 where execution_id = 'e1000000-0000-0000-0000-000000000001'), 1,
  'the retried execution still has exactly one user message');
select is((select message_count from public.conversation_sessions where id = 'c1000000-0000-0000-0000-000000000001'), 2,
  'the conversation counted the hand-typed message and one scheduled message');

-- new_per_run creates a conversation per run -----------------------------------------------
select results_eq(
  $$select created_conversation, conversation_id <> 'c1000000-0000-0000-0000-000000000001'
    from scheduler.start_execution('e1000000-0000-0000-0000-0000000000e2', 'w1', 1, 'Hello', null, '2030-01-01 09:00:02Z')$$,
  $$values (true, true)$$,
  'a new_per_run task gets a fresh conversation on its run');
select is(
  (select c.user_id from public.conversation_sessions c
   join public.agent_task_executions e on e.conversation_id = c.id
   where e.id = 'e1000000-0000-0000-0000-0000000000e2'),
  tests.get_user_id('alice'), 'the fresh conversation belongs to the task''s owner');

-- what the users see --------------------------------------------------------------------------
select tests.authenticate_as('alice');
select is((select count(*)::int from public.chat_messages_v2 where metadata ->> 'source' = 'scheduler'), 2,
  'alice sees the scheduled messages in her conversations');
select tests.authenticate_as('bob');
select is_empty($$select id from public.chat_messages_v2$$, 'bob sees none of alice''s scheduled messages');
select is_empty($$select id from public.conversation_sessions$$, 'bob does not see the conversation created for alice');

select * from finish();
rollback;
