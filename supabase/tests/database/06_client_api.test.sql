-- The client API beyond row writes: list_conversations (keyset pagination,
-- counters, preview, auto title, archived and deleted rows) and a user's reply
-- resuming a task that waits for input.
begin;
\ir helpers/personas.psql
select plan(32);

select tests.create_user('alice');
select tests.create_user('bob');
insert into public.agents (id, user_id, name) values
  ('a1000000-0000-0000-0000-000000000001', tests.get_user_id('alice'), 'Alice agent'),
  ('a1000000-0000-0000-0000-0000000000a2', tests.get_user_id('alice'), 'Alice other agent'),
  ('a2000000-0000-0000-0000-000000000002', tests.get_user_id('bob'), 'Bob agent');
insert into public.conversation_sessions (id, user_id, agent_id, title, archived_at, deleted_at) values
  ('c1000000-0000-0000-0000-000000000001', tests.get_user_id('alice'), 'a1000000-0000-0000-0000-000000000001', null, null, null),
  ('c1000000-0000-0000-0000-000000000002', tests.get_user_id('alice'), 'a1000000-0000-0000-0000-000000000001', 'Second', null, null),
  ('c1000000-0000-0000-0000-000000000003', tests.get_user_id('alice'), 'a1000000-0000-0000-0000-0000000000a2', 'Third', null, null),
  ('c1000000-0000-0000-0000-000000000004', tests.get_user_id('alice'), 'a1000000-0000-0000-0000-000000000001', 'Archived', now(), null),
  ('c1000000-0000-0000-0000-000000000005', tests.get_user_id('alice'), 'a1000000-0000-0000-0000-000000000001', 'Deleted', null, now()),
  ('c2000000-0000-0000-0000-000000000006', tests.get_user_id('bob'), 'a2000000-0000-0000-0000-000000000002', 'Bob''s', null, null);
insert into public.chat_messages_v2 (conversation_id, role, content, created_at) values
  ('c1000000-0000-0000-0000-000000000001', 'assistant', 'Welcome! How can I help?', '2030-01-01 09:59Z'),
  ('c1000000-0000-0000-0000-000000000001', 'user', E'  Plan   my\nweek  ', '2030-01-01 10:00Z'),
  ('c1000000-0000-0000-0000-000000000001', 'user', 'and my weekend', '2030-01-01 10:01Z'),
  ('c1000000-0000-0000-0000-000000000002', 'user', 'second conversation', '2030-01-01 11:00Z'),
  ('c1000000-0000-0000-0000-000000000003', 'user', 'third conversation', '2030-01-01 12:00Z'),
  ('c1000000-0000-0000-0000-000000000004', 'user', 'archived conversation', '2030-01-01 13:00Z'),
  ('c1000000-0000-0000-0000-000000000005', 'user', 'deleted conversation', '2030-01-01 14:00Z'),
  ('c2000000-0000-0000-0000-000000000006', 'user', 'bob''s conversation', '2030-01-01 15:00Z');

-- counters, preview and title kept by the trigger ----------------------------------------
select results_eq(
  $$select message_count, last_message_at, last_message_preview, title
    from public.conversation_sessions where id = 'c1000000-0000-0000-0000-000000000001'$$,
  $$values (3, '2030-01-01 10:01Z'::timestamptz, 'and my weekend'::text, 'Plan my week'::text)$$,
  'the conversation counts its messages, keeps the last one as preview and takes its title from the first user message');
select is((select title from public.conversation_sessions where id = 'c1000000-0000-0000-0000-000000000002'), 'Second',
  'a title the user gave is never overwritten');

select tests.authenticate_as('alice');
select lives_ok(
  $$insert into public.conversation_sessions (agent_id) values ('a1000000-0000-0000-0000-0000000000a2')$$,
  'alice starts an untitled conversation');
select lives_ok(
  $$insert into public.chat_messages_v2 (conversation_id, role, content)
    select id, 'user', repeat('long ', 100) from public.conversation_sessions where title is null and message_count = 0$$,
  'alice posts a long first message');
select results_eq(
  $$select char_length(title) <= 200, left(title, 10), char_length(last_message_preview), message_count
    from public.conversation_sessions where agent_id = 'a1000000-0000-0000-0000-0000000000a2' and id <> 'c1000000-0000-0000-0000-000000000003'$$,
  $$values (true, 'long long '::text, 160, 1)$$,
  'an auto title is at most 200 characters and the preview at most 160');
-- keep the new conversation out of the pages below
select lives_ok(
  $$update public.conversation_sessions set deleted_at = now()
    where agent_id = 'a1000000-0000-0000-0000-0000000000a2' and id <> 'c1000000-0000-0000-0000-000000000003'$$,
  'alice deletes that conversation');

-- list_conversations --------------------------------------------------------------------
select results_eq(
  $$select id, message_count, last_message_preview from public.list_conversations(p_limit => 2)$$,
  $$values ('c1000000-0000-0000-0000-000000000003'::uuid, 1, 'third conversation'::text),
           ('c1000000-0000-0000-0000-000000000002'::uuid, 1, 'second conversation'::text)$$,
  'the first page lists alice''s most recent conversations with their counters');
select results_eq(
  $$select id from public.list_conversations(p_limit => 2,
      p_cursor => (select next_cursor from public.list_conversations(p_limit => 2) offset 1 limit 1))$$,
  array['c1000000-0000-0000-0000-000000000001'::uuid],
  'the next page starts after the cursor of the previous page''s last row');
select is_empty(
  $$select id from public.list_conversations(p_limit => 2,
      p_cursor => (select next_cursor from public.list_conversations(p_limit => 3) offset 2 limit 1))$$,
  'the page after the last row is empty');
select results_eq(
  $$select id from public.list_conversations(p_include_archived => true)$$,
  array['c1000000-0000-0000-0000-000000000004'::uuid, 'c1000000-0000-0000-0000-000000000003'::uuid,
        'c1000000-0000-0000-0000-000000000002'::uuid, 'c1000000-0000-0000-0000-000000000001'::uuid],
  'archived conversations are listed only when asked; deleted ones never');
select is_empty(
  $$select id from public.list_conversations() where id = 'c1000000-0000-0000-0000-000000000004'$$,
  'archived conversations are excluded by default');
select results_eq(
  $$select id from public.list_conversations(p_agent_id => 'a1000000-0000-0000-0000-0000000000a2')$$,
  array['c1000000-0000-0000-0000-000000000003'::uuid], 'the list can be filtered by agent');
select is_empty(
  $$select id from public.list_conversations(p_agent_id => 'a2000000-0000-0000-0000-000000000002', p_include_archived => true)$$,
  'filtering by bob''s agent shows alice nothing');
select throws_ok($$select * from public.list_conversations(p_cursor => 'yesterday|nope')$$,
  '22023', 'invalid cursor yesterday|nope: pass next_cursor from the previous page',
  'an invalid cursor is rejected with a readable message');
select throws_ok($$select * from public.list_conversations(p_limit => 0)$$,
  '22023', 'p_limit must be between 1 and 100', 'a page size of zero is rejected');
select throws_ok($$select * from public.list_conversations(p_limit => 101)$$,
  '22023', 'p_limit must be between 1 and 100', 'a page size over 100 is rejected');

select tests.authenticate_as('bob');
select results_eq($$select id from public.list_conversations(p_include_archived => true)$$,
  array['c2000000-0000-0000-0000-000000000006'::uuid], 'bob lists only his own conversation');
select tests.authenticate_as_anon();
select throws_ok($$select * from public.list_conversations()$$, '42501', null, 'anon cannot list conversations');

-- waiting_input: the agent asks, the user's reply resumes the task -------------------------------
select tests.clear_authentication();
insert into public.agent_tasks (id, user_id, agent_id, name, prompt_template, schedule_type, conversation_id) values
  ('d1000000-0000-0000-0000-000000000001', tests.get_user_id('alice'), 'a1000000-0000-0000-0000-000000000001',
   'Weather', 'Weather please', 'manual', 'c1000000-0000-0000-0000-000000000001');
insert into public.agent_task_executions (id, task_id, user_id, agent_id, trigger_type, scheduled_for, run_after, exclusive) values
  ('e1000000-0000-0000-0000-000000000001', 'd1000000-0000-0000-0000-000000000001', tests.get_user_id('alice'),
   'a1000000-0000-0000-0000-000000000001', 'manual', '2030-01-02 09:00Z', '2030-01-02 09:00Z', true);
select is((select count(*)::int from scheduler.claim_executions('w1', 1, 60, null, '2030-01-02 09:00Z')), 1,
  'the worker claims the run');
select is((select count(*)::int from scheduler.start_execution('e1000000-0000-0000-0000-000000000001', 'w1', 1, 'Weather please',
                                                               p_now => '2030-01-02 09:00:01Z')), 1,
  'the scheduled prompt is posted');
select is(scheduler.finish_execution('e1000000-0000-0000-0000-000000000001', 'w1', 1, 'needs_input', 'Which city?',
                                     p_now => '2030-01-02 09:00:05Z'),
  true, 'the run ends asking the user a question');
select results_eq(
  $$select status, next_run_at, state ->> 'pending_question', state ->> 'waiting_conversation_id'
    from public.agent_tasks where id = 'd1000000-0000-0000-0000-000000000001'$$,
  $$values ('waiting_input'::text, null::timestamptz, 'Which city?'::text, 'c1000000-0000-0000-0000-000000000001'::text)$$,
  'the task waits for input in that conversation with the question in its state');
select results_eq(
  $$select kind, body from public.notifications where user_id = tests.get_user_id('alice')$$,
  $$values ('task_needs_input'::text, 'Which city?'::text)$$, 'alice is notified that the task needs her input');

select tests.authenticate_as('bob');
select lives_ok(
  $$insert into public.chat_messages_v2 (conversation_id, role, content)
    values ('c2000000-0000-0000-0000-000000000006', 'user', 'Paris')$$,
  'bob replies in his own conversation');
select tests.authenticate_as('alice');
select lives_ok(
  $$insert into public.chat_messages_v2 (conversation_id, role, content)
    values ('c1000000-0000-0000-0000-000000000002', 'user', 'Rome')$$,
  'alice writes in another conversation');
select is((select status from public.agent_tasks where id = 'd1000000-0000-0000-0000-000000000001'), 'waiting_input',
  'messages in other conversations (or by other users) do not resume the task');
select throws_ok(
  $$update public.agent_tasks set status = 'completed' where id = 'd1000000-0000-0000-0000-000000000001'$$,
  '22023', 'status can be changed to active or paused only (from waiting_input)',
  'alice cannot mark the waiting task completed herself');
select lives_ok(
  $$insert into public.chat_messages_v2 (conversation_id, role, content)
    values ('c1000000-0000-0000-0000-000000000001', 'user', 'Berlin')$$,
  'alice answers in the waiting conversation');
select results_eq(
  $$select status, state ? 'pending_question', state ? 'waiting_conversation_id', state ->> 'last_answer'
    from public.agent_tasks where id = 'd1000000-0000-0000-0000-000000000001'$$,
  $$values ('active'::text, false, false, 'Berlin'::text)$$,
  'her reply resumes the task, clears the question and keeps the answer in its state');
select isnt((select state ->> 'answered_at' from public.agent_tasks where id = 'd1000000-0000-0000-0000-000000000001'), null,
  'the task records when the answer came');

-- validate_schedule ---------------------------------------------------------------------
select is(public.validate_schedule('cron', '0 9 * * 1-5', 'Europe/Berlin', 'Hi {{TODAY}}', '{}'), '{}'::jsonb,
  'validate_schedule returns {} for a valid schedule');
select is(
  (select array_agg(k order by k) from jsonb_object_keys(
     public.validate_schedule('cron', '61 * * * *', 'Mars/Base', 'Hi {{TEAM}}', '{}')) as k),
  array['cron_expression', 'prompt_template', 'timezone'],
  'validate_schedule names every invalid field');
select * from finish();
rollback;
