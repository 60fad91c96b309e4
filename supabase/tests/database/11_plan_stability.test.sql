-- The hot path's plans do not depend on statistics: the claim walks the claim
-- index in claim order (sorts and bitmap scans off, jit off), the enqueue pass
-- never JIT-compiles, and the hot tables are vacuumed for their churn.
-- Speed itself is measured in bench/ (bench_queue.py --history, bench_enqueue.py).
begin;
select plan(6);

select ok(
  (select proconfig @> array['plan_cache_mode=force_generic_plan', 'enable_sort=off',
                             'enable_bitmapscan=off', 'jit=off']
   from pg_proc where oid = 'scheduler.claim_executions(text,integer,integer,integer,timestamptz)'::regprocedure),
  'claim_executions: one generic plan, ordered index walk only, no jit');

select ok(
  (select proconfig @> array['jit=off']
   from pg_proc where oid = 'scheduler.enqueue_due(timestamptz,integer)'::regprocedure),
  'enqueue_due: no jit');

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

-- the index the claim walks matches its ORDER BY (priority desc, scheduled_for)
select is(
  (select pg_get_indexdef('public.agent_task_executions_claim_idx'::regclass)),
  'CREATE INDEX agent_task_executions_claim_idx ON public.agent_task_executions USING btree (priority DESC, scheduled_for, run_after) WHERE (status = ''queued''::text)',
  'the claim index is partial on queued and ordered like the claim');

-- the settings stay inside the function: the caller's session is untouched
select scheduler.claim_executions('plan-test', 1);
select is(current_setting('enable_sort'), 'on', 'the caller''s enable_sort is unchanged');

select * from finish();
rollback;
