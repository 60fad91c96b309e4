-- chat_private: what the chat edge function uses beyond the user's RLS. The
-- act-as check, the idempotent assistant reply and the per-user rate limit.
begin;
\ir helpers/personas.psql
select plan(33);

select tests.create_user('alice');
select tests.create_user('bob');
insert into public.agents (id, user_id, name) values
  ('a1000000-0000-0000-0000-000000000001', tests.get_user_id('alice'), 'Alice agent'),
  ('a1000000-0000-0000-0000-0000000000a2', tests.get_user_id('alice'), 'Alice other agent'),
  ('a2000000-0000-0000-0000-000000000002', tests.get_user_id('bob'), 'Bob agent');
insert into public.conversation_sessions (id, user_id, agent_id, deleted_at) values
  ('c1000000-0000-0000-0000-000000000001', tests.get_user_id('alice'), 'a1000000-0000-0000-0000-000000000001', null),
  ('c1000000-0000-0000-0000-000000000002', tests.get_user_id('alice'), 'a1000000-0000-0000-0000-000000000001', null),
  ('c1000000-0000-0000-0000-000000000005', tests.get_user_id('alice'), 'a1000000-0000-0000-0000-000000000001', now()),
  ('c2000000-0000-0000-0000-000000000002', tests.get_user_id('bob'), 'a2000000-0000-0000-0000-000000000002', null);
insert into public.agent_tasks (id, user_id, agent_id, name, prompt_template, schedule_type) values
  ('d1000000-0000-0000-0000-000000000001', tests.get_user_id('alice'), 'a1000000-0000-0000-0000-000000000001', 'a', 'p', 'manual'),
  ('d2000000-0000-0000-0000-000000000002', tests.get_user_id('bob'), 'a2000000-0000-0000-0000-000000000002', 'b', 'p', 'manual');
insert into public.agent_task_executions (id, task_id, user_id, agent_id, trigger_type, scheduled_for, conversation_id) values
  ('e1000000-0000-0000-0000-000000000001', 'd1000000-0000-0000-0000-000000000001', tests.get_user_id('alice'),
   'a1000000-0000-0000-0000-000000000001', 'manual', '2030-01-01 09:00Z', 'c1000000-0000-0000-0000-000000000001'),
  ('e2000000-0000-0000-0000-000000000002', 'd2000000-0000-0000-0000-000000000002', tests.get_user_id('bob'),
   'a2000000-0000-0000-0000-000000000002', 'manual', '2030-01-01 09:00Z', 'c2000000-0000-0000-0000-000000000002');
-- alice's execution is being run by a worker: replies are written only then
update public.agent_task_executions
set status = 'running', worker_id = 'w1', attempt = 1, started_at = now(), lease_expires_at = now() + interval '30 seconds'
where id = 'e1000000-0000-0000-0000-000000000001';

-- Only the server side may call chat_private ---------------------------------------------
select tests.authenticate_as('alice');
select throws_ok(
  format($$select chat_private.record_assistant_reply(%L, 'c1000000-0000-0000-0000-000000000001', 'self-made reply')$$,
         tests.get_user_id('alice')),
  '42501', null, 'a signed-in user cannot write an assistant reply through chat_private');
select throws_ok(
  format($$select chat_private.rate_limit_hit(%L, 1000000, 1)$$, tests.get_user_id('alice')),
  '42501', null, 'a signed-in user cannot reset or probe the rate limit');
select tests.authenticate_as_anon();
select throws_ok(
  $$select chat_private.check_act_as(gen_random_uuid(), gen_random_uuid(), null)$$,
  '42501', null, 'anon cannot probe act-as contexts');

-- check_act_as ------------------------------------------------------------------------------
select tests.authenticate_as_service_role();
select is(chat_private.check_act_as(tests.get_user_id('alice'), 'a1000000-0000-0000-0000-000000000001', null), 'ok',
  'a user with their own agent and no conversation is ok');
select is(chat_private.check_act_as(tests.get_user_id('alice'), 'a1000000-0000-0000-0000-000000000001',
                                    'c1000000-0000-0000-0000-000000000001'), 'ok',
  'a user, their agent and their conversation with that agent belong together');
select is(chat_private.check_act_as(tests.get_user_id('alice'), 'a2000000-0000-0000-0000-000000000002', null),
  'context_mismatch', 'acting as alice with bob''s agent is a mismatch');
select is(chat_private.check_act_as(tests.get_user_id('alice'), 'a1000000-0000-0000-0000-000000000001',
                                    'c2000000-0000-0000-0000-000000000002'),
  'context_mismatch', 'acting as alice in bob''s conversation is a mismatch');
select is(chat_private.check_act_as(tests.get_user_id('alice'), 'a1000000-0000-0000-0000-0000000000a2',
                                    'c1000000-0000-0000-0000-000000000001'),
  'context_mismatch', 'a conversation with another of alice''s agents is a mismatch');
select is(chat_private.check_act_as(tests.get_user_id('bob'), 'a2000000-0000-0000-0000-000000000002',
                                    'c1000000-0000-0000-0000-000000000001'),
  'context_mismatch', 'bob with his own agent in alice''s conversation is a mismatch');
select is(chat_private.check_act_as(tests.get_user_id('alice'), '00000000-0000-0000-0000-00000000dead', null),
  'agent_not_found', 'an unknown agent is not found');
select is(chat_private.check_act_as(tests.get_user_id('alice'), 'a1000000-0000-0000-0000-000000000001',
                                    '00000000-0000-0000-0000-00000000dead'),
  'conversation_not_found', 'an unknown conversation is not found');
select is(chat_private.check_act_as(tests.get_user_id('alice'), 'a1000000-0000-0000-0000-000000000001',
                                    'c1000000-0000-0000-0000-000000000005'),
  'conversation_not_found', 'a soft-deleted conversation is not found');
select is(chat_private.check_act_as(gen_random_uuid(), 'a1000000-0000-0000-0000-000000000001', null),
  'context_mismatch', 'an unknown user never matches an existing agent');

-- record_assistant_reply ------------------------------------------------------------------------
select isnt(
  chat_private.record_assistant_reply(tests.get_user_id('alice'), 'c1000000-0000-0000-0000-000000000002', 'Hi Alice',
                                      '[{"name": "search", "status": "ok"}]'),
  null, 'the chat function records a reply outside a scheduled run');
select results_eq(
  $$select role, user_id, tool_calls -> 0 ->> 'name' from public.chat_messages_v2 where content = 'Hi Alice'$$,
  format($$values ('assistant'::text, %L::uuid, 'search'::text)$$, tests.get_user_id('alice')),
  'the reply is one assistant message owned by the user, with its tool calls');
create temporary table reply_ids (attempt int, id uuid) on commit drop;
insert into reply_ids
select 1, chat_private.record_assistant_reply(tests.get_user_id('alice'), 'c1000000-0000-0000-0000-000000000001', 'Sunny',
                                              p_execution_id => 'e1000000-0000-0000-0000-000000000001');
insert into reply_ids
select 2, chat_private.record_assistant_reply(tests.get_user_id('alice'), 'c1000000-0000-0000-0000-000000000001', 'Sunny (retried)',
                                              p_execution_id => 'e1000000-0000-0000-0000-000000000001');
select is((select id from reply_ids where attempt = 1),
  (select id from public.chat_messages_v2 where execution_id = 'e1000000-0000-0000-0000-000000000001' and role = 'assistant'),
  'the reply of a scheduled run returns its message id');
select is((select id from reply_ids where attempt = 2), (select id from reply_ids where attempt = 1),
  'replaying the reply of the same execution returns the existing message');
select results_eq(
  $$select content from public.chat_messages_v2 where execution_id = 'e1000000-0000-0000-0000-000000000001'$$,
  array['Sunny'], 'a retried execution never gets a second assistant reply');
select throws_ok(
  format($$select chat_private.record_assistant_reply(%L, 'c2000000-0000-0000-0000-000000000002', 'hijack')$$,
         tests.get_user_id('alice')),
  'P0002', 'conversation c2000000-0000-0000-0000-000000000002 not found for this user',
  'a reply as alice into bob''s conversation is refused');
select throws_ok(
  format($$select chat_private.record_assistant_reply(%L, 'c1000000-0000-0000-0000-000000000005', 'late')$$,
         tests.get_user_id('alice')),
  'P0002', null, 'a reply into a soft-deleted conversation is refused');
select throws_ok(
  format($$select chat_private.record_assistant_reply(%L, 'c1000000-0000-0000-0000-000000000002', 'x',
                                                       p_execution_id => 'e1000000-0000-0000-0000-000000000001')$$,
         tests.get_user_id('alice')),
  '42501', 'execution e1000000-0000-0000-0000-000000000001 does not belong to conversation c1000000-0000-0000-0000-000000000002',
  'an execution cannot answer in a conversation it did not run in');
select throws_ok(
  format($$select chat_private.record_assistant_reply(%L, 'c1000000-0000-0000-0000-000000000001', 'x',
                                                       p_execution_id => 'e2000000-0000-0000-0000-000000000002')$$,
         tests.get_user_id('alice')),
  '42501', null, 'bob''s execution cannot be used to answer in alice''s conversation');
select is((select count(*)::int from public.chat_messages_v2 where user_id = tests.get_user_id('bob')), 0,
  'nothing was written into bob''s conversation');

-- rate_limit_hit: fixed window per user ------------------------------------------------------------
select results_eq(
  format($$select chat_private.rate_limit_hit(%L, 3, 60, '2030-01-01 09:00:00Z'::timestamptz + make_interval(secs => g))
           from generate_series(0, 2) g$$, tests.get_user_id('alice')),
  array[0, 0, 0], 'the first three calls in the window are allowed');
select is(chat_private.rate_limit_hit(tests.get_user_id('alice'), 3, 60, '2030-01-01 09:00:10Z'), 50,
  'the fourth call in the window is refused with the seconds left in the window');
select is(chat_private.rate_limit_hit(tests.get_user_id('alice'), 3, 60, '2030-01-01 09:00:59.5Z'), 1,
  'the wait is at least one second');
select is(chat_private.rate_limit_hit(tests.get_user_id('bob'), 3, 60, '2030-01-01 09:00:10Z'), 0,
  'another user has their own window');
select is(chat_private.rate_limit_hit(tests.get_user_id('alice'), 3, 60, '2030-01-01 09:01:00Z'), 0,
  'a new window starts once the previous one is over');
select tests.clear_authentication();
select results_eq(
  format($$select window_started_at, hits from chat_private.rate_limits where user_id = %L$$, tests.get_user_id('alice')),
  $$values ('2030-01-01 09:01:00Z'::timestamptz, 1)$$, 'the new window counts from its first request');

-- a cancelled run takes no late reply, but a replay still answers
insert into public.agent_task_executions (id, task_id, user_id, agent_id, trigger_type, scheduled_for,
                                          conversation_id, status, finished_at, error_kind) values
  ('e3000000-0000-0000-0000-000000000003', 'd1000000-0000-0000-0000-000000000001', tests.get_user_id('alice'),
   'a1000000-0000-0000-0000-000000000001', 'manual', '2030-01-02 09:00Z', 'c1000000-0000-0000-0000-000000000001',
   'cancelled', now(), 'cancelled');
select throws_ok(
  format($$select chat_private.record_assistant_reply(%L, 'c1000000-0000-0000-0000-000000000001', 'too late',
                                                       p_execution_id => 'e3000000-0000-0000-0000-000000000003')$$,
         tests.get_user_id('alice')),
  '55000', 'execution e3000000-0000-0000-0000-000000000003 is cancelled and takes no reply',
  'a cancelled execution gets no late assistant reply');
-- a run put back in the queue while its turn called the model (its worker's session ended)
-- keeps the turn's reply: its next attempt replays it instead of calling the model again
insert into public.agent_task_executions (id, task_id, user_id, agent_id, trigger_type, scheduled_for,
                                          conversation_id, status) values
  ('e4000000-0000-0000-0000-000000000004', 'd1000000-0000-0000-0000-000000000001', tests.get_user_id('alice'),
   'a1000000-0000-0000-0000-000000000001', 'manual', '2030-01-03 09:00Z', 'c1000000-0000-0000-0000-000000000001',
   'queued');
select isnt(
  chat_private.record_assistant_reply(tests.get_user_id('alice'), 'c1000000-0000-0000-0000-000000000001',
                                      'the rescued turn''s reply',
                                      p_execution_id => 'e4000000-0000-0000-0000-000000000004'),
  null, 'a queued execution (rescued mid-turn) takes the reply of the turn in flight');
select results_eq(
  $$select content from public.chat_messages_v2
    where execution_id = 'e4000000-0000-0000-0000-000000000004' and role = 'assistant'$$,
  array['the rescued turn''s reply'], 'the reply is stored for the next attempt to replay');
update public.agent_task_executions set status = 'succeeded', finished_at = now(), error_kind = null
where id = 'e1000000-0000-0000-0000-000000000001';
select is(
  chat_private.record_assistant_reply(tests.get_user_id('alice'), 'c1000000-0000-0000-0000-000000000001', 'again',
                                      p_execution_id => 'e1000000-0000-0000-0000-000000000001'),
  (select id from reply_ids where attempt = 1),
  'a replay after the run finished still returns the stored reply');
select * from finish();
rollback;
