-- chat_turn: the chat function's per-turn functions run under the user's RLS
-- (security invoker) and grant nothing beyond it; chat_private.save_reply
-- stores a reply once; the merged chat_messages_v2 triggers behave as before.
begin;
\ir helpers/personas.psql
select plan(36);

select tests.create_user('alice');
select tests.create_user('bob');
insert into public.agents (id, user_id, name, settings) values
  ('a1000000-0000-0000-0000-000000000001', tests.get_user_id('alice'), 'Alice agent', '{"history_messages": 2}'),
  ('a1000000-0000-0000-0000-0000000000a2', tests.get_user_id('alice'), 'Alice other agent', '{}'),
  ('a2000000-0000-0000-0000-000000000002', tests.get_user_id('bob'), 'Bob agent', '{}');
insert into public.conversation_sessions (id, user_id, agent_id, title, deleted_at) values
  ('c1000000-0000-0000-0000-000000000001', tests.get_user_id('alice'), 'a1000000-0000-0000-0000-000000000001', 'Chat', null),
  ('c1000000-0000-0000-0000-000000000005', tests.get_user_id('alice'), 'a1000000-0000-0000-0000-000000000001', null, now()),
  ('c2000000-0000-0000-0000-000000000002', tests.get_user_id('bob'), 'a2000000-0000-0000-0000-000000000002', null, null);
insert into public.chat_messages_v2 (id, conversation_id, user_id, role, content, created_at) values
  ('f1000000-0000-0000-0000-000000000001', 'c1000000-0000-0000-0000-000000000001', tests.get_user_id('alice'), 'user', 'one', '2030-01-01 09:00Z'),
  ('f1000000-0000-0000-0000-000000000002', 'c1000000-0000-0000-0000-000000000001', tests.get_user_id('alice'), 'assistant', 'two', '2030-01-01 09:01Z'),
  ('f1000000-0000-0000-0000-000000000003', 'c1000000-0000-0000-0000-000000000001', tests.get_user_id('alice'), 'user', 'three', '2030-01-01 09:02Z');

-- Privileges ----------------------------------------------------------------------------
select ok(has_schema_privilege('authenticated', 'chat_turn', 'usage'), 'authenticated can use schema chat_turn');
select ok(not has_schema_privilege('anon', 'chat_turn', 'usage'), 'anon cannot use schema chat_turn');
select is_empty(
  $$select p.oid::regprocedure::text from pg_proc p
    where p.pronamespace = 'chat_turn'::regnamespace and (p.prosecdef or has_function_privilege('anon', p.oid, 'execute'))$$,
  'every chat_turn function is security invoker and none is executable by anon');
select ok(not has_function_privilege('authenticated',
  'chat_private.save_reply(uuid, uuid, text, jsonb, jsonb, uuid, text[])', 'execute'),
  'a signed-in user cannot call chat_private.save_reply');
select ok(has_function_privilege('service_role',
  'chat_private.save_reply(uuid, uuid, text, jsonb, jsonb, uuid, text[])', 'execute'),
  'service_role (the chat function) can call chat_private.save_reply');

-- user_turn_begin ----------------------------------------------------------------------
select tests.authenticate_as('alice');
select is((select wait from chat_turn.user_turn_begin(7, 'a1000000-0000-0000-0000-000000000001',
             'c1000000-0000-0000-0000-000000000001', 'limited', 30, 200)), 7,
  'a rate-limited turn reports the wait');
select is((select user_message from chat_turn.user_turn_begin(7, 'a1000000-0000-0000-0000-000000000001',
             'c1000000-0000-0000-0000-000000000001', 'limited', 30, 200))::text, null,
  'a rate-limited turn writes no message');
create temp table t1 on commit drop as
  select * from chat_turn.user_turn_begin(0, 'a1000000-0000-0000-0000-000000000001',
                                          'c1000000-0000-0000-0000-000000000001', 'four', 30, 200);
select is((select agent ->> 'id' from t1), 'a1000000-0000-0000-0000-000000000001', 'the turn loads alice''s agent');
select is((select conversation ->> 'agent_id' from t1), 'a1000000-0000-0000-0000-000000000001',
  'the turn loads the conversation and its agent');
select is((select history::text from t1), '[{"role" : "user", "content" : "three"}, {"role" : "assistant", "content" : "two"}]',
  'history: the agent''s history_messages (2) newest prior messages, newest first, without the new one');
select is((select m.content from public.chat_messages_v2 m where m.id = ((select user_message ->> 'id' from t1))::uuid),
  'four', 'the user''s message is stored');
select is((select m.user_id from public.chat_messages_v2 m where m.id = ((select user_message ->> 'id' from t1))::uuid),
  tests.get_user_id('alice'), 'the user''s message belongs to alice');
select is((select message_count from public.conversation_sessions where id = 'c1000000-0000-0000-0000-000000000001'), 4,
  'the conversation counts the new message');

select is((select agent::text from chat_turn.user_turn_begin(0, 'a2000000-0000-0000-0000-000000000002',
             'c2000000-0000-0000-0000-000000000002', 'hi', 30, 200)), null,
  'bob''s agent is invisible to alice');
select is((select conversation::text from chat_turn.user_turn_begin(0, 'a1000000-0000-0000-0000-000000000001',
             'c2000000-0000-0000-0000-000000000002', 'hi', 30, 200)), null,
  'bob''s conversation is invisible to alice');
select is((select conversation::text from chat_turn.user_turn_begin(0, 'a1000000-0000-0000-0000-000000000001',
             'c1000000-0000-0000-0000-000000000005', 'hi', 30, 200)), null,
  'a deleted conversation is not found');
select is((select user_message::text from chat_turn.user_turn_begin(0, 'a1000000-0000-0000-0000-0000000000a2',
             'c1000000-0000-0000-0000-000000000001', 'hi', 30, 200)), null,
  'no message is written when the conversation is with another agent');
select is((select count(*)::integer from public.chat_messages_v2 where content = 'hi'), 0,
  'refused turns wrote no message');

create temp table t2 on commit drop as
  select * from chat_turn.user_turn_begin(0, 'a1000000-0000-0000-0000-0000000000a2', null,
                                          E'  Plan\n my   week  ', 30, 200);
select is((select c.title from public.conversation_sessions c where c.id = ((select conversation ->> 'id' from t2))::uuid),
  'Plan my week', 'a turn without conversation starts one, titled from the first message');
select is((select history::text from t2), '[]', 'a new conversation has no history');

-- act_as_turn_begin ----------------------------------------------------------------------
select is((select agent::text from chat_turn.act_as_turn_begin(false, 'a1000000-0000-0000-0000-000000000001',
             'c1000000-0000-0000-0000-000000000001', gen_random_uuid(), 'f1000000-0000-0000-0000-000000000002', 30, 200)),
  null, 'act_as_turn_begin reads nothing when the act-as check failed');
select is((select history::text from chat_turn.act_as_turn_begin(true, 'a1000000-0000-0000-0000-000000000001',
             'c1000000-0000-0000-0000-000000000001', gen_random_uuid(), 'f1000000-0000-0000-0000-000000000002', 30, 200)),
  '[{"role" : "assistant", "content" : "two"}, {"role" : "user", "content" : "one"}]',
  'act-as history ends at the given message, newest first');
select is((select execution_status from chat_turn.act_as_turn_begin(true, 'a1000000-0000-0000-0000-000000000001',
             'c1000000-0000-0000-0000-000000000001', gen_random_uuid(), 'f1000000-0000-0000-0000-000000000002', 30, 200)),
  null, 'an execution that is not the user''s has no status');
select is((select user_message::text from chat_turn.act_as_turn_begin(true, 'a2000000-0000-0000-0000-000000000002',
             'c2000000-0000-0000-0000-000000000002', gen_random_uuid(), 'f1000000-0000-0000-0000-000000000001', 30, 200)),
  '{"id" : "f1000000-0000-0000-0000-000000000001", "conversation_id" : "c1000000-0000-0000-0000-000000000001", "role" : "user", "execution_id" : null}',
  'act_as_turn_begin reads only what the user can read (her own message)');
select is((select agent::text from chat_turn.act_as_turn_begin(true, 'a2000000-0000-0000-0000-000000000002',
             'c2000000-0000-0000-0000-000000000002', gen_random_uuid(), 'f1000000-0000-0000-0000-000000000001', 30, 200)),
  null, 'act_as_turn_begin cannot read another user''s agent');

-- save_reply ---------------------------------------------------------------------------------
select tests.authenticate_as_service_role();
select is((chat_private.save_reply(tests.get_user_id('alice'), 'c1000000-0000-0000-0000-000000000001', 'Sure.',
           null, '{"model": "m"}', null, array['succeeded']) ->> 'content'), 'Sure.',
  'save_reply stores the reply and returns it');
select is((select role from public.chat_messages_v2 where content = 'Sure.'), 'assistant', 'the reply is an assistant message');
select throws_ok(
  format($$select chat_private.save_reply(%L, 'c2000000-0000-0000-0000-000000000002', 'hijack', null, '{}', null, '{}')$$,
         tests.get_user_id('alice')),
  'P0002', null, 'save_reply refuses a conversation that is not the user''s (record_assistant_reply''s check)');

-- Triggers ---------------------------------------------------------------------------------
select is((select last_message_preview from public.conversation_sessions where id = 'c1000000-0000-0000-0000-000000000001'),
  'Sure.', 'the reply moves the conversation''s preview');
select throws_ok(
  $$insert into public.chat_messages_v2 (conversation_id, role, content, metadata)
    values ('c1000000-0000-0000-0000-000000000001', 'user', 'fake', '{"source": "scheduler"}')$$,
  '42501', 'only the scheduler may write messages with metadata.source = ''scheduler'' or an execution_id',
  'service_role still cannot write a scheduler message (the guard''s WHEN clause)');
select throws_ok(
  $$update public.chat_messages_v2 set conversation_id = 'c1000000-0000-0000-0000-000000000005'
    where id = 'f1000000-0000-0000-0000-000000000001'$$,
  '42501', 'a message cannot move to another conversation', 'a message still cannot move (guard_move)');
select results_eq(
  $$insert into public.chat_messages_v2 (conversation_id, role, content)
    values ('c2000000-0000-0000-0000-000000000002', 'user', 'as service') returning user_id$$,
  format('select %L::uuid', tests.get_user_id('bob')),
  'a privileged writer''s message gets the conversation owner''s user_id');

-- a long reply: the preview is computed from a prefix when that is enough, else from all of it
reset role;
insert into public.chat_messages_v2 (conversation_id, user_id, role, content) values
  ('c2000000-0000-0000-0000-000000000002', tests.get_user_id('bob'), 'assistant', repeat('word ', 5000));
select is((select last_message_preview from public.conversation_sessions where id = 'c2000000-0000-0000-0000-000000000002'),
  left(repeat('word ', 5000), 160), 'a long reply''s preview is its first 160 characters');
insert into public.chat_messages_v2 (conversation_id, user_id, role, content) values
  ('c2000000-0000-0000-0000-000000000002', tests.get_user_id('bob'), 'assistant', repeat(' ', 3000) || 'tail   end');
select is((select last_message_preview from public.conversation_sessions where id = 'c2000000-0000-0000-0000-000000000002'),
  ' tail end', 'whitespace beyond the first 1,000 characters is collapsed as before');

-- a user's answer resumes the task waiting in that conversation
insert into public.agent_tasks (id, user_id, agent_id, name, prompt_template, schedule_type, status, state) values
  ('d1000000-0000-0000-0000-000000000001', tests.get_user_id('alice'), 'a1000000-0000-0000-0000-000000000001',
   'ask', 'p', 'manual', 'waiting_input',
   '{"pending_question": "Which day?", "waiting_conversation_id": "c1000000-0000-0000-0000-000000000001"}');
select tests.authenticate_as('alice');
insert into public.chat_messages_v2 (conversation_id, role, content)
values ('c1000000-0000-0000-0000-000000000001', 'user', 'Monday');
reset role;
select is((select status from public.agent_tasks where id = 'd1000000-0000-0000-0000-000000000001'), 'active',
  'the user''s answer resumes the waiting task');
select is((select state ->> 'last_answer' from public.agent_tasks where id = 'd1000000-0000-0000-0000-000000000001'),
  'Monday', 'the answer is kept in the task''s state');

select * from finish();
rollback;
