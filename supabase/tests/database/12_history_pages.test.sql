-- Keyset pages of message history, run history and tasks (public.list_messages,
-- public.list_executions, public.list_tasks): newest first, the cursor continues after the last
-- row (ties on the timestamp go by id), another user's rows page exactly like
-- rows that do not exist, and the cursor is an index condition under RLS, so
-- a deep page costs what the first costs (bench/bench_pages.py times it).
begin;
\ir helpers/personas.psql
select plan(28);

select tests.create_user('alice');
select tests.create_user('bob');
insert into public.agents (id, user_id, name) values
  ('a1000000-0000-0000-0000-000000000001', tests.get_user_id('alice'), 'Alice agent'),
  ('a2000000-0000-0000-0000-000000000002', tests.get_user_id('bob'), 'Bob agent'),
  ('a3000000-0000-0000-0000-000000000003', tests.get_user_id('alice'), 'Alice helper');
insert into public.conversation_sessions (id, user_id, agent_id) values
  ('c1000000-0000-0000-0000-000000000001', tests.get_user_id('alice'), 'a1000000-0000-0000-0000-000000000001'),
  ('c2000000-0000-0000-0000-000000000002', tests.get_user_id('bob'), 'a2000000-0000-0000-0000-000000000002');
-- five messages; the last two at the same instant
insert into public.chat_messages_v2 (id, conversation_id, user_id, role, content, created_at) values
  ('01000000-0000-0000-0000-000000000001', 'c1000000-0000-0000-0000-000000000001', tests.get_user_id('alice'), 'user', 'one', '2030-01-01 10:00Z'),
  ('01000000-0000-0000-0000-000000000002', 'c1000000-0000-0000-0000-000000000001', tests.get_user_id('alice'), 'assistant', 'two', '2030-01-01 10:01Z'),
  ('01000000-0000-0000-0000-000000000003', 'c1000000-0000-0000-0000-000000000001', tests.get_user_id('alice'), 'user', 'three', '2030-01-01 10:02Z'),
  ('01000000-0000-0000-0000-000000000004', 'c1000000-0000-0000-0000-000000000001', tests.get_user_id('alice'), 'assistant', 'four', '2030-01-01 10:03Z'),
  ('01000000-0000-0000-0000-000000000005', 'c1000000-0000-0000-0000-000000000001', tests.get_user_id('alice'), 'user', 'five', '2030-01-01 10:03Z'),
  ('02000000-0000-0000-0000-000000000001', 'c2000000-0000-0000-0000-000000000002', tests.get_user_id('bob'), 'user', 'bob', '2030-01-01 10:00Z');
insert into public.agent_tasks (id, user_id, agent_id, name, prompt_template, schedule_type, overlap_policy) values
  ('d1000000-0000-0000-0000-000000000001', tests.get_user_id('alice'), 'a1000000-0000-0000-0000-000000000001', 'A', 'p', 'manual', 'allow'),
  ('d1000000-0000-0000-0000-000000000002', tests.get_user_id('alice'), 'a1000000-0000-0000-0000-000000000001', 'B', 'p', 'manual', 'allow'),
  ('d2000000-0000-0000-0000-000000000003', tests.get_user_id('bob'), 'a2000000-0000-0000-0000-000000000002', 'C', 'p', 'manual', 'allow'),
  ('d1000000-0000-0000-0000-000000000004', tests.get_user_id('alice'), 'a3000000-0000-0000-0000-000000000003', 'D', 'p', 'manual', 'allow');
insert into public.agent_task_executions (id, task_id, user_id, agent_id, trigger_type, scheduled_for, created_at) values
  ('e1000000-0000-0000-0000-000000000001', 'd1000000-0000-0000-0000-000000000001', tests.get_user_id('alice'), 'a1000000-0000-0000-0000-000000000001', 'manual', '2030-01-01 09:00Z', '2030-01-01 09:00Z'),
  ('e1000000-0000-0000-0000-000000000002', 'd1000000-0000-0000-0000-000000000002', tests.get_user_id('alice'), 'a1000000-0000-0000-0000-000000000001', 'manual', '2030-01-01 09:01Z', '2030-01-01 09:01Z'),
  ('e1000000-0000-0000-0000-000000000003', 'd1000000-0000-0000-0000-000000000001', tests.get_user_id('alice'), 'a1000000-0000-0000-0000-000000000001', 'manual', '2030-01-01 09:02Z', '2030-01-01 09:02Z'),
  ('e2000000-0000-0000-0000-000000000004', 'd2000000-0000-0000-0000-000000000003', tests.get_user_id('bob'), 'a2000000-0000-0000-0000-000000000002', 'manual', '2030-01-01 09:03Z', '2030-01-01 09:03Z');

select tests.authenticate_as('alice');

-- message history ---------------------------------------------------------------
select results_eq(
  $$select content from public.list_messages('c1000000-0000-0000-0000-000000000001', 2)$$,
  array['five', 'four'], 'the first page is the newest messages, a tie on created_at by id');
select results_eq(
  $$select content from public.list_messages('c1000000-0000-0000-0000-000000000001', 2,
      (select next_cursor from public.list_messages('c1000000-0000-0000-0000-000000000001', 1)))$$,
  array['four', 'three'], 'a cursor inside a tie continues with the next id');
select results_eq(
  $$select content from public.list_messages('c1000000-0000-0000-0000-000000000001', 10,
      (select next_cursor from public.list_messages('c1000000-0000-0000-0000-000000000001', 3) offset 2))$$,
  array['two', 'one'], 'the last page ends with the first message');
select is_empty(
  $$select id from public.list_messages('c2000000-0000-0000-0000-000000000002')$$,
  'bob''s conversation pages like one that does not exist');
select is_empty(
  $$select id from public.list_messages('c9000000-0000-0000-0000-000000000009')$$,
  'a conversation that does not exist has no page');
select throws_ok($$select * from public.list_messages('c1000000-0000-0000-0000-000000000001', 10, 'soon|x')$$,
  '22023', 'invalid cursor soon|x: pass next_cursor from the previous page',
  'an invalid cursor is rejected with a readable message');
select throws_ok($$select * from public.list_messages('c1000000-0000-0000-0000-000000000001', 500)$$,
  '22023', 'p_limit must be between 1 and 100', 'a page size over 100 is rejected');

-- run history -------------------------------------------------------------------
select results_eq(
  $$select id from public.list_executions(p_limit => 2)$$,
  array['e1000000-0000-0000-0000-000000000003'::uuid, 'e1000000-0000-0000-0000-000000000002'::uuid],
  'all of alice''s runs, newest first, none of bob''s');
select results_eq(
  $$select id from public.list_executions(p_limit => 2,
      p_cursor => (select next_cursor from public.list_executions(p_limit => 2) offset 1))$$,
  array['e1000000-0000-0000-0000-000000000001'::uuid], 'the next page continues after the cursor');
select results_eq(
  $$select id from public.list_executions('d1000000-0000-0000-0000-000000000001')$$,
  array['e1000000-0000-0000-0000-000000000003'::uuid, 'e1000000-0000-0000-0000-000000000001'::uuid],
  'one task''s runs');
select is_empty($$select id from public.list_executions('d2000000-0000-0000-0000-000000000003')$$,
  'bob''s task pages like one that does not exist');

select ok(not exists (select 1 from pg_proc p, unnest(p.proargnames) a
                      where p.oid = 'public.list_executions(uuid, integer, text)'::regprocedure
                        and a in ('worker_id', 'error_detail')),
  'a run page has the error users see, never the worker or the error''s detail');

-- tasks -------------------------------------------------------------------------
-- (inserted in one transaction: one created_at, so the order is the id's)
select results_eq($$select name from public.list_tasks()$$, array['D', 'B', 'A'],
  'alice''s tasks, newest first (a tie on created_at by id), none of bob''s');
select results_eq($$select name from public.list_tasks(1, (select next_cursor from public.list_tasks(1)))$$,
  array['B'], 'the next page continues after the cursor');
select results_eq($$select agent_name from public.list_tasks(2)$$, array['Alice helper', 'Alice agent'],
  'each task with its agent''s name');
select results_eq(
  $$select name from public.list_tasks(p_agent_id => 'a1000000-0000-0000-0000-000000000001')$$,
  array['B', 'A'], 'one agent''s tasks');
select results_eq(
  $$select name from public.list_tasks(1, (select next_cursor from public.list_tasks(1, null,
      'a1000000-0000-0000-0000-000000000001')), 'a1000000-0000-0000-0000-000000000001')$$,
  array['A'], 'one agent''s next page continues after the cursor');
select is_empty($$select id from public.list_tasks(p_agent_id => 'a2000000-0000-0000-0000-000000000002')$$,
  'bob''s agent pages like one that does not exist');

-- the cursor is an index condition under RLS ----------------------------------------
select tests.clear_authentication();
-- a handful of rows: take the cheapest paths away so the test asks whether
-- the index can serve the condition, not whether it pays for so few rows
set local enable_seqscan = off;
set local enable_bitmapscan = off;
set local enable_sort = off;
select tests.authenticate_as('alice');
select matches(
  tests.plan_of($$select id from public.chat_messages_v2 m
    where m.conversation_id = 'c1000000-0000-0000-0000-000000000001'
      and (m.created_at, m.id) < ('2030-01-01 10:02Z'::timestamptz, '01000000-0000-0000-0000-000000000003'::uuid)
    order by m.created_at desc, m.id desc limit 20$$),
  'Index Cond: \(\(conversation_id = .*ROW\(created_at, id\) <',
  'the message page walks chat_messages_v2_conversation_idx from the cursor under RLS');
select matches(
  tests.plan_of($$select id from public.agent_task_executions e
    where e.task_id = 'd1000000-0000-0000-0000-000000000001'
      and (e.created_at, e.id) < ('2030-01-01 09:02Z'::timestamptz, 'e1000000-0000-0000-0000-000000000003'::uuid)
    order by e.created_at desc, e.id desc limit 20$$),
  -- (with four rows the planner may take either history index; both start at the cursor)
  'Index Cond: \(\((task_id|user_id) = .*ROW\(created_at, id\) <',
  'a task''s run page walks a history index from the cursor under RLS');
select matches(
  tests.plan_of($$select id from public.agent_task_executions e
    where (e.created_at, e.id) < ('2030-01-01 09:02Z'::timestamptz, 'e1000000-0000-0000-0000-000000000003'::uuid)
    order by e.created_at desc, e.id desc limit 20$$),
  'agent_task_executions_user_history_idx.*\n.*Index Cond: \(\(user_id = .*ROW\(created_at, id\) <',
  'the run page of all tasks walks agent_task_executions_user_history_idx after RLS''s user_id');
select matches(
  tests.plan_of($$select id from public.agent_tasks t
    where (t.created_at, t.id) < (now(), 'd1000000-0000-0000-0000-000000000002'::uuid)
    order by t.created_at desc, t.id desc limit 20$$),
  'agent_tasks_user_idx.*\n.*Index Cond: \(\(user_id = .*ROW\(created_at, id\) <',
  'the task page walks agent_tasks_user_idx from the cursor after RLS''s user_id');
select matches(
  tests.plan_of($$select id from public.agent_tasks t
    where t.agent_id = 'a1000000-0000-0000-0000-000000000001'
      and (t.created_at, t.id) < (now(), 'd1000000-0000-0000-0000-000000000002'::uuid)
    order by t.created_at desc, t.id desc limit 20$$),
  'agent_tasks_agent_idx.*\n.*Index Cond: \(\(agent_id = .*user_id = .*ROW\(created_at, id\) <',
  'one agent''s task page walks agent_tasks_agent_idx from the cursor after RLS''s user_id');
reset enable_seqscan;
reset enable_bitmapscan;
reset enable_sort;

select tests.authenticate_as_anon();
select throws_ok($$select * from public.list_executions()$$, '42501', null, 'anon cannot list runs');
select throws_ok($$select * from public.list_tasks()$$, '42501', null, 'anon cannot list tasks');
select throws_ok($$select * from public.list_messages('c1000000-0000-0000-0000-000000000001')$$, '42501', null,
  'anon cannot list messages');

-- the cursor rule lives once: every list decodes its cursor through
-- page_cursor_position (and writes it with page_cursor), none parses it itself
select is(array(select p.proname::text from pg_proc p
                where p.pronamespace = 'public'::regnamespace and 'p_cursor' = any (p.proargnames)
                order by 1),
  array['list_conversations', 'list_executions', 'list_messages', 'list_tasks', 'list_webhook_deliveries',
        'page_cursor_position'],
  'the functions that take a page cursor');
select is(array(select p.proname::text from pg_proc p
                where p.pronamespace = 'public'::regnamespace and 'p_cursor' = any (p.proargnames)
                  and p.proname <> 'page_cursor_position'
                  and (p.prosrc not like '%public.page_cursor_position(p_cursor, p_limit)%'
                       or p.prosrc not like '%public.page_cursor(%'
                       or p.prosrc ~ 'split_part|p_cursor::')
                order by 1),
  '{}'::text[], 'each list decodes its cursor only through page_cursor_position and writes it with page_cursor');

select * from finish();
rollback;
