-- scheduler.start_executions: start_execution for a claim batch. Every item is
-- fenced and idempotent exactly like start_execution, and a bad item (fenced,
-- conversation gone) is reported in its row without aborting or undoing the
-- rest of the batch.
begin;
\ir helpers/personas.psql
select plan(22);

select tests.create_user('alice');
insert into public.agents (id, user_id, name) values
  ('a1000000-0000-0000-0000-000000000001', tests.get_user_id('alice'), 'Alice agent');
insert into public.conversation_sessions (id, user_id, agent_id, title) values
  ('c1000000-0000-0000-0000-000000000001', tests.get_user_id('alice'), 'a1000000-0000-0000-0000-000000000001', 'Daily'),
  ('c2000000-0000-0000-0000-000000000002', tests.get_user_id('alice'), 'a1000000-0000-0000-0000-000000000001', 'Gone');
insert into public.agent_tasks (id, user_id, agent_id, name, prompt_template, schedule_type, conversation_id, max_retries) values
  ('d1000000-0000-0000-0000-000000000001', tests.get_user_id('alice'), 'a1000000-0000-0000-0000-000000000001',
   'Daily digest', 'Digest', 'manual', 'c1000000-0000-0000-0000-000000000001', 3),
  ('d2000000-0000-0000-0000-000000000002', tests.get_user_id('alice'), 'a1000000-0000-0000-0000-000000000001',
   'Lost chat', 'Hi', 'manual', 'c2000000-0000-0000-0000-000000000002', 3),
  ('d3000000-0000-0000-0000-000000000003', tests.get_user_id('alice'), 'a1000000-0000-0000-0000-000000000001',
   'Fresh chats', 'Hello', 'manual', null, 3);
update public.agent_tasks set conversation_mode = 'new_per_run' where id = 'd3000000-0000-0000-0000-000000000003';
insert into public.agent_task_executions (id, task_id, user_id, agent_id, trigger_type, scheduled_for, run_after, max_attempts) values
  ('e1000000-0000-0000-0000-000000000001', 'd1000000-0000-0000-0000-000000000001', tests.get_user_id('alice'),
   'a1000000-0000-0000-0000-000000000001', 'manual', '2030-01-01 09:00Z', '2030-01-01 09:00Z', 4),
  ('e2000000-0000-0000-0000-000000000002', 'd2000000-0000-0000-0000-000000000002', tests.get_user_id('alice'),
   'a1000000-0000-0000-0000-000000000001', 'manual', '2030-01-01 09:00Z', '2030-01-01 09:00Z', 4),
  ('e3000000-0000-0000-0000-000000000003', 'd3000000-0000-0000-0000-000000000003', tests.get_user_id('alice'),
   'a1000000-0000-0000-0000-000000000001', 'manual', '2030-01-01 09:00Z', '2030-01-01 09:00Z', 4),
  ('e4000000-0000-0000-0000-000000000004', 'd1000000-0000-0000-0000-000000000001', tests.get_user_id('alice'),
   'a1000000-0000-0000-0000-000000000001', 'manual', '2030-01-01 09:00:01Z', '2030-01-01 09:00Z', 4);
update public.agent_task_executions set exclusive = false;  -- two runs of d1 may run at once
-- the user deletes the conversation of task d2 after its run was queued
update public.conversation_sessions set deleted_at = now() where id = 'c2000000-0000-0000-0000-000000000002';

-- =========================================================================
-- Privileges and input
-- =========================================================================
select ok(has_function_privilege('task_worker', 'scheduler.start_executions(text, jsonb, timestamptz)', 'execute'),
  'task_worker may call start_executions');
select ok(has_function_privilege('service_role', 'scheduler.start_executions(text, jsonb, timestamptz)', 'execute'),
  'service_role may call start_executions');
select ok(not has_function_privilege('authenticated', 'scheduler.start_executions(text, jsonb, timestamptz)', 'execute'),
  'an authenticated user may not call start_executions');
select throws_ok(
  $$select * from scheduler.start_executions('w1', '{"id": 1}')$$,
  '22023', null, 'p_items must be a JSON array');
select is((select count(*)::int from scheduler.start_executions('w1', '[]')), 0,
  'an empty batch starts nothing');

select is((select count(*)::int from scheduler.claim_executions('w1', 10, 30, null, '2030-01-01 09:00:02Z')), 4,
  'the worker claims all four executions');

-- =========================================================================
-- A mixed batch: two good items, a gone conversation, a fenced item
-- =========================================================================
create temporary table first_batch on commit drop as
select * from scheduler.start_executions('w1', jsonb_build_array(
  jsonb_build_object('id', 'e1000000-0000-0000-0000-000000000001', 'attempt', 1, 'resolved_prompt', 'Digest one'),
  jsonb_build_object('id', 'e2000000-0000-0000-0000-000000000002', 'attempt', 1, 'resolved_prompt', 'Hi'),
  jsonb_build_object('id', 'e3000000-0000-0000-0000-000000000003', 'attempt', 1, 'resolved_prompt', 'Hello',
                     'conversation_title', 'Fresh chats — 2030-01-01'),
  jsonb_build_object('id', 'e4000000-0000-0000-0000-000000000004', 'attempt', 2, 'resolved_prompt', 'Digest two')
), '2030-01-01 09:00:03Z');

select is((select count(*)::int from first_batch), 4, 'every item of the batch gets one result row');
select results_eq(
  $$select error_code from first_batch order by id$$,
  $$values (null::text), ('P0002'), (null), ('55000')$$,
  'the gone conversation and the wrong attempt are reported per item, the others succeed');
select results_eq(
  $$select conversation_id, created_conversation from first_batch where id = 'e1000000-0000-0000-0000-000000000001'$$,
  $$values ('c1000000-0000-0000-0000-000000000001'::uuid, false)$$,
  'a reuse item runs in the task''s conversation and creates none');
select results_eq(
  $$select created_conversation, title from first_batch b join public.conversation_sessions c on c.id = b.conversation_id
    where b.id = 'e3000000-0000-0000-0000-000000000003'$$,
  $$values (true, 'Fresh chats — 2030-01-01'::text)$$,
  'a new_per_run item gets a fresh conversation named by conversation_title');
select ok((select error_message like '%no longer exists%' from first_batch where id = 'e2000000-0000-0000-0000-000000000002'),
  'the conversation-gone item carries the error message');
select results_eq(
  $$select e.user_message_id from public.agent_task_executions e
    where e.id in ('e1000000-0000-0000-0000-000000000001', 'e3000000-0000-0000-0000-000000000003') order by e.id$$,
  $$select user_message_id from first_batch where error_code is null order by id$$,
  'the good items record the user message they report');
select results_eq(
  $$select execution_id, count(*)::int from public.chat_messages_v2
    where execution_id is not null group by execution_id order by execution_id$$,
  $$values ('e1000000-0000-0000-0000-000000000001'::uuid, 1), ('e3000000-0000-0000-0000-000000000003'::uuid, 1)$$,
  'exactly one user message per started execution and none for the failed items');
select results_eq(
  $$select status, user_message_id from public.agent_task_executions
    where id in ('e2000000-0000-0000-0000-000000000002', 'e4000000-0000-0000-0000-000000000004') order by id$$,
  $$values ('running'::text, null::uuid), ('running', null)$$,
  'the failed items are left running and untouched for the worker to finish');

-- =========================================================================
-- Idempotency and the fence
-- =========================================================================
select results_eq(
  $$select id, user_message_id, created_conversation, error_code
    from scheduler.start_executions('w1', jsonb_build_array(
      jsonb_build_object('id', 'e1000000-0000-0000-0000-000000000001', 'attempt', 1, 'resolved_prompt', 'Digest one'),
      jsonb_build_object('id', 'e3000000-0000-0000-0000-000000000003', 'attempt', 1, 'resolved_prompt', 'Hello')))
    order by id$$,
  $$select id, user_message_id, false, null::text from first_batch where error_code is null order by id$$,
  'starting the same items again returns the same messages and creates nothing');
select is((select count(*)::int from public.chat_messages_v2 where execution_id is not null), 2,
  'the repeated batch wrote no second user message');
select results_eq(
  $$select error_code from scheduler.start_executions('w2', jsonb_build_array(
      jsonb_build_object('id', 'e1000000-0000-0000-0000-000000000001', 'attempt', 1, 'resolved_prompt', 'x')))$$,
  $$values ('55000'::text)$$,
  'another worker is fenced off an execution it does not hold');
select results_eq(
  $$select error_code, user_message_id is not null from scheduler.start_executions('w1', jsonb_build_array(
      jsonb_build_object('id', 'e4000000-0000-0000-0000-000000000004', 'attempt', 1, 'resolved_prompt', 'Digest two')))$$,
  $$values (null::text, true)$$,
  'the fenced item starts once asked with its real attempt');

-- A retried execution (attempt 2, another worker) gets its first message back.
select is(
  scheduler.requeue_later('e1000000-0000-0000-0000-000000000001', 'w1', 1, 'upstream 503', 'transient', 0, '2030-01-01 09:00:04Z'),
  'queued', 'a transient error re-queues e1');
select is((select attempt from scheduler.claim_executions('w2', 1, 30, null, '2030-01-01 09:00:05Z')), 2,
  'w2 claims attempt 2 of e1');
select results_eq(
  $$select user_message_id, error_code from scheduler.start_executions('w2', jsonb_build_array(
      jsonb_build_object('id', 'e1000000-0000-0000-0000-000000000001', 'attempt', 2, 'resolved_prompt', 'Digest again')))$$,
  $$select user_message_id, null::text from first_batch where id = 'e1000000-0000-0000-0000-000000000001'$$,
  'attempt 2 gets the message written by attempt 1 back');
select is((select count(*)::int from public.chat_messages_v2 where execution_id = 'e1000000-0000-0000-0000-000000000001'), 1,
  'the retried execution still has exactly one user message');

select * from finish();
rollback;
