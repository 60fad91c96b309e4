-- The hot path's plans do not depend on statistics: the claim walks the claim
-- index in claim order (sorts and bitmap scans off, jit off), the enqueue pass
-- never JIT-compiles, and the hot tables are vacuumed for their churn.
-- Speed itself is measured in bench/ (bench_queue.py --history, bench_enqueue.py).
begin;
\ir helpers/personas.psql
select plan(10);

select ok(
  (select proconfig @> array['plan_cache_mode=force_generic_plan', 'enable_sort=off',
                             'enable_bitmapscan=off', 'enable_hashjoin=off', 'enable_mergejoin=off', 'jit=off']
   from pg_proc where oid = 'scheduler.claim_executions(text,integer,integer,integer,timestamptz)'::regprocedure),
  'claim_executions: one generic plan, ordered index walks and nested loops only, no jit');

select ok(
  (select proconfig @> array['jit=off', 'enable_bitmapscan=off', 'plan_cache_mode=force_generic_plan',
                             'enable_hashjoin=off', 'enable_mergejoin=off']
   from pg_proc where oid = 'scheduler.enqueue_due(timestamptz,integer)'::regprocedure),
  'enqueue_due: one generic plan, no jit, the due scan walks its index (marking dead entries as it goes), '
  'due tasks looked up by primary key');

select ok(
  (select reloptions @> array['autovacuum_vacuum_scale_factor=0.01', 'autovacuum_vacuum_threshold=5000',
                              'autovacuum_analyze_scale_factor=0.02']
   from pg_class where oid = 'public.agent_task_executions'::regclass),
  'agent_task_executions: autovacuum set for its churn');

select ok(
  (select reloptions @> array['autovacuum_vacuum_scale_factor=0.01', 'autovacuum_vacuum_threshold=1000',
                              'autovacuum_analyze_scale_factor=0.02']
   from pg_class where oid = 'public.agent_tasks'::regclass),
  'agent_tasks: autovacuum set for its churn');

-- the indexes the claim walks match its two ORDER BYs: fair turns, then a
-- user's own runs by priority
select is(
  (select pg_get_indexdef('public.agent_task_executions_claim_idx'::regclass)),
  'CREATE INDEX agent_task_executions_claim_idx ON public.agent_task_executions USING btree (priority_class DESC, turn, run_after) WHERE (status = ''queued''::text)',
  'the claim index is partial on queued and ordered like the claim''s turns');

select is(
  (select pg_get_indexdef('public.agent_task_executions_user_queue_idx'::regclass)),
  'CREATE INDEX agent_task_executions_user_queue_idx ON public.agent_task_executions USING btree (user_id, priority_class DESC, priority DESC, scheduled_for, run_after) WHERE (status = ''queued''::text)',
  'the per-user pick index is partial on queued and ordered like a user''s own runs');

-- the settings stay inside the function: the caller's session is untouched
select scheduler.claim_executions('plan-test', 1);
select is(current_setting('enable_sort'), 'on', 'the caller''s enable_sort is unchanged');

-- conversation pages: the keyset condition is an index condition under RLS
-- (an expression such as coalesce() is not leakproof, so behind the policy it
-- was only a filter and page N read every row before it)
select tests.create_user('alice');
insert into public.agents (id, user_id, name) values
  ('a1000000-0000-0000-0000-000000000001', tests.get_user_id('alice'), 'Alice agent');
insert into public.conversation_sessions (id, user_id, agent_id, created_at)
select ('c1000000-0000-0000-0000-00000000000' || g)::uuid, tests.get_user_id('alice'),
       'a1000000-0000-0000-0000-000000000001', '2026-11-01 00:00:00+00'
from generate_series(1, 3) g;
-- three rows: take the cheapest path away so the test asks whether the index
-- can serve the condition, not whether it pays for three rows
set local enable_seqscan = off;
set local enable_bitmapscan = off;
set local enable_sort = off;
select tests.authenticate_as('alice');
select matches(
  tests.plan_of($$
       select id from public.conversation_sessions c
       where c.deleted_at is null and c.archived_at is null
         and (c.activity_at, c.id) < ('2026-11-02 00:00:00+00'::timestamptz, 'c1000000-0000-0000-0000-000000000002'::uuid)
       order by c.activity_at desc, c.id desc limit 20$$),
  'Index Cond: \(\(user_id = .*ROW\(activity_at, id\) <',
  'the conversation page walks conversation_sessions_user_recent_idx from the cursor under RLS');
-- three conversations with the same activity time: pages of one step through
-- them by id, none twice, none skipped
select results_eq(
  $$select id from public.list_conversations(p_limit => 1,
      p_cursor => (select next_cursor from public.list_conversations(p_limit => 1)))$$,
  array['c1000000-0000-0000-0000-000000000002'::uuid],
  'a tie on activity_at continues with the next id');
select results_eq(
  $$select id from public.list_conversations(p_limit => 1,
      p_cursor => (select next_cursor from public.list_conversations(p_limit => 2) offset 1))$$,
  array['c1000000-0000-0000-0000-000000000001'::uuid],
  'and then the last one');
select tests.clear_authentication();
reset enable_seqscan;
reset enable_bitmapscan;
reset enable_sort;

select * from finish();
rollback;
