-- The execution state machine: every transition and its guards, with p_now
-- controlling time. Sections clear the queue first so each starts from a
-- known state.
begin;
\ir helpers/personas.psql
select plan(100);

select tests.create_user('alice');
select tests.create_user('bob');
insert into public.agents (id, user_id, name) values
  ('a1000000-0000-0000-0000-000000000001', tests.get_user_id('alice'), 'Alice agent'),
  ('a2000000-0000-0000-0000-000000000002', tests.get_user_id('bob'), 'Bob agent');

-- =========================================================================
-- enqueue_due (T0 = 2030-01-01 09:00 UTC)
-- =========================================================================
insert into public.agent_tasks (id, user_id, agent_id, name, prompt_template, schedule_type,
                                interval_seconds, cron_expression, run_at, max_runs,
                                misfire_policy, misfire_grace_seconds) values
  ('d1000000-0000-0000-0000-000000000001', tests.get_user_id('alice'), 'a1000000-0000-0000-0000-000000000001',
   'hourly', 'p', 'interval', 3600, null, null, null, 'run_once', 60),
  ('d1000000-0000-0000-0000-000000000002', tests.get_user_id('alice'), 'a1000000-0000-0000-0000-000000000001',
   'once', 'p', 'once', null, null, '2030-01-01 09:00Z', null, 'run_once', 60),
  ('d1000000-0000-0000-0000-000000000003', tests.get_user_id('alice'), 'a1000000-0000-0000-0000-000000000001',
   'max one run', 'p', 'interval', 60, null, null, 1, 'run_once', 60),
  ('d1000000-0000-0000-0000-000000000004', tests.get_user_id('alice'), 'a1000000-0000-0000-0000-000000000001',
   'daily cron', 'p', 'cron', null, '0 9 * * *', null, null, 'run_once', 60),
  ('d1000000-0000-0000-0000-000000000005', tests.get_user_id('alice'), 'a1000000-0000-0000-0000-000000000001',
   'strict hourly', 'p', 'interval', 3600, null, null, null, 'skip', 10),
  ('d1000000-0000-0000-0000-000000000006', tests.get_user_id('alice'), 'a1000000-0000-0000-0000-000000000001',
   'paused hourly', 'p', 'interval', 3600, null, null, null, 'run_once', 60);
update public.agent_tasks set next_run_at = '2030-01-01 09:00Z'
where id in ('d1000000-0000-0000-0000-000000000001', 'd1000000-0000-0000-0000-000000000003',
             'd1000000-0000-0000-0000-000000000004', 'd1000000-0000-0000-0000-000000000005');
update public.agent_tasks set status = 'paused' where id = 'd1000000-0000-0000-0000-000000000006';

select is(scheduler.enqueue_due('2030-01-01 08:59:59Z'), 0, 'nothing is enqueued before it is due');
select is(scheduler.enqueue_due('2030-01-01 09:00:30Z'), 4,
  'every due active task gets one execution (the count is of runs queued; the misfire skip is recorded too)');
select is(scheduler.enqueue_due('2030-01-01 09:00:30Z'), 0, 'calling enqueue_due again with the same p_now inserts nothing');
select is((select count(*)::int from public.agent_task_executions), 5, 'the queue holds exactly five executions');
select is((select count(*)::int from public.agent_task_executions where task_id = 'd1000000-0000-0000-0000-000000000006'), 0,
  'a paused task is never enqueued');
select results_eq(
  $$select trigger_type, status, scheduled_for, run_after from public.agent_task_executions
    where task_id = 'd1000000-0000-0000-0000-000000000001'$$,
  $$values ('schedule'::text, 'queued'::text, '2030-01-01 09:00Z'::timestamptz, '2030-01-01 09:00Z'::timestamptz)$$,
  'a due occurrence is queued for its scheduled instant');
select results_eq(
  $$select next_run_at, last_scheduled_for, run_count, status from public.agent_tasks
    where id = 'd1000000-0000-0000-0000-000000000001'$$,
  $$values ('2030-01-01 10:00Z'::timestamptz, '2030-01-01 09:00Z'::timestamptz, 1, 'active'::text)$$,
  'an interval task advances next_run_at from the occurrence (not from p_now) and counts the run');
select results_eq(
  $$select status, next_run_at from public.agent_tasks where id = 'd1000000-0000-0000-0000-000000000002'$$,
  $$values ('completed'::text, null::timestamptz)$$, 'a one-off task is completed once enqueued');
select results_eq(
  $$select status, next_run_at, run_count from public.agent_tasks where id = 'd1000000-0000-0000-0000-000000000003'$$,
  $$values ('completed'::text, null::timestamptz, 1)$$, 'a task that reached max_runs is completed');
select results_eq(
  $$select status, next_run_at from public.agent_tasks where id = 'd1000000-0000-0000-0000-000000000004'$$,
  $$values ('active'::text, null::timestamptz)$$, 'a cron task stays active and waits for the planner');
select results_eq(
  $$select status, error_kind, finished_at from public.agent_task_executions
    where task_id = 'd1000000-0000-0000-0000-000000000005'$$,
  $$values ('skipped'::text, 'misfire'::text, '2030-01-01 09:00:30Z'::timestamptz)$$,
  'misfire_policy = skip records an occurrence later than its grace as a visible skipped execution');
select is((select run_count from public.agent_tasks where id = 'd1000000-0000-0000-0000-000000000005'), 0,
  'a skipped occurrence does not count as a run');
select throws_ok(
  $$insert into public.agent_task_executions (task_id, user_id, agent_id, trigger_type, scheduled_for)
    select task_id, user_id, agent_id, 'schedule', scheduled_for from public.agent_task_executions
    where task_id = 'd1000000-0000-0000-0000-000000000001'$$,
  '23505', null, 'a second execution for the same (task_id, scheduled_for) is impossible');

-- run_once after downtime: one run, then the schedule continues after now
update public.agent_tasks set next_run_at = '2030-01-01 09:00Z', misfire_policy = 'run_once'
where id = 'd1000000-0000-0000-0000-000000000003';
update public.agent_tasks set status = 'active', max_runs = null, interval_seconds = 60
where id = 'd1000000-0000-0000-0000-000000000003';
update public.agent_tasks set next_run_at = '2030-01-01 08:00Z', last_scheduled_for = null,
  misfire_grace_seconds = 10
where id = 'd1000000-0000-0000-0000-000000000003';
delete from public.agent_task_executions where task_id = 'd1000000-0000-0000-0000-000000000003';
select is(scheduler.enqueue_due('2030-01-01 09:00:30Z'), 1,
  'an every-minute task one hour behind (misfire_policy = run_once) gets one execution');
select is(scheduler.enqueue_due('2030-01-01 09:00:31Z'), 0,
  'the missed occurrences of a run_once interval task are not run one by one');
select is((select next_run_at from public.agent_tasks where id = 'd1000000-0000-0000-0000-000000000003'),
  '2030-01-01 09:01Z'::timestamptz, 'after a misfire the interval schedule continues on its grid after now');
select results_eq(
  $$select count(*)::int, min(scheduled_for), max(scheduled_for) from public.agent_task_executions
    where task_id = 'd1000000-0000-0000-0000-000000000003' and status = 'skipped' and error_kind = 'misfire'$$,
  $$values (60, '2030-01-01 08:00Z'::timestamptz, '2030-01-01 08:59Z'::timestamptz)$$,
  'run_once ran the latest missed occurrence (09:00); the others are recorded as skipped executions, not dropped');

-- skip after downtime: everything missed is recorded, the schedule jumps ahead at once
update public.agent_tasks set next_run_at = '2030-01-01 05:00Z', status = 'active'
where id = 'd1000000-0000-0000-0000-000000000005';
select lives_ok($$select scheduler.enqueue_due('2030-01-01 09:30Z')$$,
  'enqueue_due catches up a misfire_policy = skip task behind by hours in one call');
select results_eq(
  $$select (select count(*)::int from public.agent_task_executions
            where task_id = 'd1000000-0000-0000-0000-000000000005' and status = 'skipped'
              and scheduled_for between '2030-01-01 05:00Z' and '2030-01-01 09:00Z'),
           (select next_run_at from public.agent_tasks where id = 'd1000000-0000-0000-0000-000000000005'),
           (select count(*)::int from public.agent_task_executions
            where task_id = 'd1000000-0000-0000-0000-000000000005' and status = 'queued')$$,
  $$values (5, '2030-01-01 10:00Z'::timestamptz, 0)$$,
  'misfire_policy = skip records 05:00-09:00 as skipped, runs none of them and continues at 10:00');

-- =========================================================================
-- claim: priority, then scheduled_for, then run_after (T1 = 2030-01-02 09:00)
-- =========================================================================
delete from public.agent_task_executions;
update public.agent_tasks set status = 'paused';
insert into public.agent_tasks (id, user_id, agent_id, name, prompt_template, schedule_type, overlap_policy) values
  ('d1000000-0000-0000-0000-000000000010', tests.get_user_id('alice'), 'a1000000-0000-0000-0000-000000000001',
   'manual, allow', 'p', 'manual', 'allow');
insert into public.agent_task_executions (id, task_id, user_id, agent_id, trigger_type, scheduled_for, run_after, priority,
                                          max_attempts, exclusive)
select x.id, 'd1000000-0000-0000-0000-000000000010', tests.get_user_id('alice'), 'a1000000-0000-0000-0000-000000000001',
       'manual', x.scheduled_for, x.run_after, x.priority, x.max_attempts, false
from (values
  ('e1000000-0000-0000-0000-000000000001'::uuid, '2030-01-02 09:00Z'::timestamptz, '2030-01-02 09:00Z'::timestamptz, 0, 4),
  ('e1000000-0000-0000-0000-000000000002'::uuid, '2030-01-02 09:10Z', '2030-01-02 09:10Z', 5, 4),
  ('e1000000-0000-0000-0000-000000000003'::uuid, '2030-01-02 08:59Z', '2030-01-02 10:00Z', 0, 4),
  ('e1000000-0000-0000-0000-000000000004'::uuid, '2030-01-02 09:05Z', '2030-01-02 09:05Z', 0, 4),
  ('e1000000-0000-0000-0000-000000000005'::uuid, '2030-01-02 09:06Z', '2030-01-02 09:06Z', -10, 1)
) as x(id, scheduled_for, run_after, priority, max_attempts);

select is_empty($$select id from scheduler.claim_executions('w1', 0, 30, null, '2030-01-02 09:20Z')$$,
  'a claim of zero executions takes nothing');
select results_eq($$select id from scheduler.claim_executions('w1', 1, 30, null, '2030-01-02 09:20Z')$$,
  array['e1000000-0000-0000-0000-000000000002'::uuid], 'the claim takes the highest priority first, even if scheduled later');
select results_eq(
  $$select status, worker_id, attempt, started_at, lease_expires_at from public.agent_task_executions
    where id = 'e1000000-0000-0000-0000-000000000002'$$,
  $$values ('running'::text, 'w1'::text, 1, '2030-01-02 09:20Z'::timestamptz, '2030-01-02 09:20:30Z'::timestamptz)$$,
  'a claimed execution is running for the worker with a lease and attempt 1');
select results_eq($$select id from scheduler.claim_executions('w2', 1, 30, null, '2030-01-02 09:20Z')$$,
  array['e1000000-0000-0000-0000-000000000001'::uuid],
  'among equal priorities the earliest occurrence whose run_after has passed comes next');
select results_eq($$select id, task_name, prompt_template from scheduler.claim_executions('w1', 5, 30, null, '2030-01-02 09:20Z')$$,
  $$values ('e1000000-0000-0000-0000-000000000004'::uuid, 'manual, allow'::text, 'p'::text),
           ('e1000000-0000-0000-0000-000000000005'::uuid, 'manual, allow'::text, 'p'::text)$$,
  'the claim returns the rest in order with what the worker needs from the task');
select is_empty($$select id from scheduler.claim_executions('w1', 5, 30, null, '2030-01-02 09:20Z')$$,
  'an execution whose run_after is in the future is not claimed');

-- =========================================================================
-- heartbeat
-- =========================================================================
select is(scheduler.cancel_execution('e1000000-0000-0000-0000-000000000004', 'test', '2030-01-02 09:21Z'), true,
  'a running execution can be cancelled');
select set_eq(
  $$select id, status from scheduler.heartbeat('w1',
      array['e1000000-0000-0000-0000-000000000002', 'e1000000-0000-0000-0000-000000000001',
            'e1000000-0000-0000-0000-000000000004', 'e1000000-0000-0000-0000-0000000000ff']::uuid[],
      60, null, '2030-01-02 09:25Z')$$,
  $$values ('e1000000-0000-0000-0000-000000000001'::uuid, 'running'::text),
           ('e1000000-0000-0000-0000-000000000004'::uuid, 'cancelled'::text),
           ('e1000000-0000-0000-0000-0000000000ff'::uuid, 'missing'::text)$$,
  'the heartbeat reports the executions this worker lost: another worker''s, a cancelled one and an unknown one');
select results_eq(
  $$select lease_expires_at, heartbeat_at from public.agent_task_executions where id = 'e1000000-0000-0000-0000-000000000002'$$,
  $$values ('2030-01-02 09:26Z'::timestamptz, '2030-01-02 09:25Z'::timestamptz)$$,
  'the heartbeat extends the lease of the worker''s own running execution');
select is((select lease_expires_at from public.agent_task_executions where id = 'e1000000-0000-0000-0000-000000000001'),
  '2030-01-02 09:20:30Z'::timestamptz, 'the heartbeat of one worker never extends another worker''s lease');

-- =========================================================================
-- finish: fenced on status, worker and attempt
-- =========================================================================
select is(scheduler.finish_execution('e1000000-0000-0000-0000-000000000002', 'w2', 1, 'succeeded', p_now => '2030-01-02 09:26Z'),
  false, 'a worker that does not hold the execution cannot finish it');
select is(scheduler.finish_execution('e1000000-0000-0000-0000-000000000002', 'w1', 2, 'succeeded', p_now => '2030-01-02 09:26Z'),
  false, 'a stale or future attempt cannot finish it');
select throws_ok(
  $$select scheduler.finish_execution('e1000000-0000-0000-0000-000000000002', 'w1', 1, 'queued')$$,
  '22023', 'finish_execution: queued is not a finishing status', 'finish only accepts a finishing status');
select is(scheduler.finish_execution('e1000000-0000-0000-0000-000000000002', 'w1', 1, 'succeeded', 'done',
                                     p_usage => '{"total_tokens": 42}', p_now => '2030-01-02 09:26Z'),
  true, 'the holder finishes its execution');
select is(scheduler.finish_execution('e1000000-0000-0000-0000-000000000002', 'w1', 1, 'failed', p_now => '2030-01-02 09:27Z'),
  false, 'a second finish of the same attempt is refused');
select results_eq(
  $$select status, output, finished_at, duration_ms, lease_expires_at, usage ->> 'total_tokens'
    from public.agent_task_executions where id = 'e1000000-0000-0000-0000-000000000002'$$,
  $$values ('succeeded'::text, 'done'::text, '2030-01-02 09:26Z'::timestamptz, 360000, null::timestamptz, '42'::text)$$,
  'the finished execution keeps its outcome, duration and usage; the lease is gone');
select results_eq(
  $$select success_count, failure_count, last_run_at from public.agent_tasks where id = 'd1000000-0000-0000-0000-000000000010'$$,
  $$values (1, 0, '2030-01-02 09:26Z'::timestamptz)$$, 'the task counts the success');
select is(scheduler.finish_execution('e1000000-0000-0000-0000-000000000004', 'w1', 1, 'succeeded', p_now => '2030-01-02 09:27Z'),
  false, 'a cancelled execution''s late finish is fenced out');
select is((select status from public.agent_task_executions where id = 'e1000000-0000-0000-0000-000000000004'),
  'cancelled', 'the cancelled execution stays cancelled');

-- =========================================================================
-- requeue_later
-- =========================================================================
select is(scheduler.requeue_later('e1000000-0000-0000-0000-000000000001', 'w1', 1, 'boom', 'transient', null, '2030-01-02 09:30Z'),
  null, 'requeue_later by a worker that does not hold the execution does nothing');
select is(scheduler.requeue_later('e1000000-0000-0000-0000-000000000001', 'w2', 1, 'HTTP 503', 'transient', null, '2030-01-02 09:30Z'),
  'queued', 'a transient error with attempts left re-queues the execution');
select results_eq(
  $$select status, run_after, worker_id, lease_expires_at, attempt, error_detail, error_kind, finished_at
    from public.agent_task_executions where id = 'e1000000-0000-0000-0000-000000000001'$$,
  $$values ('queued'::text, '2030-01-02 09:30:05Z'::timestamptz, null::text, null::timestamptz, 1, 'HTTP 503'::text,
            'transient'::text, null::timestamptz)$$,
  'the re-queued execution waits out its backoff, keeps its attempt count and its error (for operators)');
select is_empty($$select id from scheduler.claim_executions('w3', 5, 30, null, '2030-01-02 09:30:04Z')$$,
  'a re-queued execution is not claimed before its backoff ends');
select results_eq($$select id, attempt from scheduler.claim_executions('w3', 1, 30, null, '2030-01-02 09:30:05Z')$$,
  $$values ('e1000000-0000-0000-0000-000000000001'::uuid, 2)$$, 'after the backoff it is claimed as attempt 2');
select is(scheduler.requeue_later('e1000000-0000-0000-0000-000000000005', 'w1', 1, 'still broken', 'transient', null, '2030-01-02 09:31Z'),
  'failed', 'requeue_later on the last attempt fails the execution');
select results_eq(
  $$select status, error_detail, error, finished_at from public.agent_task_executions
    where id = 'e1000000-0000-0000-0000-000000000005'$$,
  $$values ('failed'::text, 'still broken'::text,
            'the run failed on a temporary error (details in the operator''s logs)'::text,
            '2030-01-02 09:31Z'::timestamptz)$$,
  'the failed execution records the error for operators, a stable sentence for its user, and its end');
select results_eq(
  $$select kind, data ->> 'execution_id' from public.notifications where user_id = tests.get_user_id('alice')$$,
  $$values ('task_failed'::text, 'e1000000-0000-0000-0000-000000000005'::text)$$,
  'the final failure notifies the task''s owner');
select results_eq(
  $$select failure_count, last_error from public.agent_tasks where id = 'd1000000-0000-0000-0000-000000000010'$$,
  $$values (1, 'the run failed on a temporary error (details in the operator''s logs)'::text)$$,
  'the task counts the failure and keeps the last error as its user may read it');

-- =========================================================================
-- rescue_expired
-- =========================================================================
select is(scheduler.rescue_expired('2030-01-02 09:30:30Z'), 0, 'a lease that has not expired is left alone');
select is(scheduler.rescue_expired('2030-01-02 09:40Z'), 1, 'an expired lease is rescued');
select results_eq(
  $$select status, worker_id, attempt, error_kind, run_after from public.agent_task_executions
    where id = 'e1000000-0000-0000-0000-000000000001'$$,
  $$values ('queued'::text, null::text, 2, 'lease_expired'::text, '2030-01-02 09:40Z'::timestamptz)$$,
  'the rescued execution is queued again, runnable at once, its attempt used');
select is(scheduler.finish_execution('e1000000-0000-0000-0000-000000000001', 'w3', 2, 'succeeded', p_now => '2030-01-02 09:41Z'),
  false, 'the lost worker''s late finish is fenced out after the rescue');
update public.agent_task_executions set max_attempts = 3 where id = 'e1000000-0000-0000-0000-000000000001';
select is((select attempt from scheduler.claim_executions('w4', 1, 30, null, '2030-01-02 09:42Z')), 3,
  'the rescued execution is claimed for its last attempt');
select is(scheduler.rescue_expired('2030-01-02 09:50Z'), 1, 'an expired lease on the last attempt is handled');
select results_eq(
  $$select status, error_kind, finished_at from public.agent_task_executions where id = 'e1000000-0000-0000-0000-000000000001'$$,
  $$values ('failed'::text, 'lease_expired'::text, '2030-01-02 09:50Z'::timestamptz)$$,
  'with no attempt left the rescuer fails the execution');
select is((select count(*)::int from public.notifications
           where user_id = tests.get_user_id('alice') and data ->> 'execution_id' = 'e1000000-0000-0000-0000-000000000001'), 1,
  'the owner is notified of the failure found by the rescuer');

-- =========================================================================
-- release_executions
-- =========================================================================
select is((select attempt from scheduler.claim_executions('w5', 1, 30, null, '2030-01-02 10:00Z')), 1,
  'the delayed execution is claimed once runnable');
select is(scheduler.release_executions('w6', array['e1000000-0000-0000-0000-000000000003']::uuid[], '2030-01-02 10:01Z'), 0,
  'a worker cannot release another worker''s execution');
select is(scheduler.release_executions('w5', array['e1000000-0000-0000-0000-000000000003']::uuid[], '2030-01-02 10:01Z'), 1,
  'a worker shutting down releases its execution');
select results_eq(
  $$select status, attempt, worker_id, run_after, error_kind from public.agent_task_executions
    where id = 'e1000000-0000-0000-0000-000000000003'$$,
  $$values ('queued'::text, 0, null::text, '2030-01-02 10:01Z'::timestamptz, 'shutdown'::text)$$,
  'a released execution is queued at once and gets its attempt back');

-- =========================================================================
-- cancel
-- =========================================================================
select is(scheduler.cancel_execution('e1000000-0000-0000-0000-000000000003', 'operator', '2030-01-02 10:02Z'), true,
  'a queued execution can be cancelled');
select results_eq(
  $$select status, finished_at, error, error_kind from public.agent_task_executions where id = 'e1000000-0000-0000-0000-000000000003'$$,
  $$values ('cancelled'::text, '2030-01-02 10:02Z'::timestamptz, 'operator'::text, 'cancelled'::text)$$,
  'the cancelled execution is terminal with its reason');
select is(scheduler.cancel_execution('e1000000-0000-0000-0000-000000000003'), false, 'a cancelled execution cannot be cancelled again');
select is(scheduler.cancel_execution('e1000000-0000-0000-0000-000000000002'), false, 'a succeeded execution cannot be cancelled');
select is(scheduler.cancel_execution('e1000000-0000-0000-0000-0000000000ff'), false, 'an unknown execution is not cancelled');

-- =========================================================================
-- overlap policies (T2 = 2030-01-03 09:00)
-- =========================================================================
delete from public.agent_task_executions;
update public.agent_tasks set status = 'paused';
insert into public.agent_tasks (id, user_id, agent_id, name, prompt_template, schedule_type, interval_seconds, overlap_policy) values
  ('d1000000-0000-0000-0000-000000000021', tests.get_user_id('alice'), 'a1000000-0000-0000-0000-000000000001', 'skip', 'p', 'interval', 60, 'skip'),
  ('d1000000-0000-0000-0000-000000000022', tests.get_user_id('alice'), 'a1000000-0000-0000-0000-000000000001', 'queue', 'p', 'interval', 60, 'queue'),
  ('d1000000-0000-0000-0000-000000000023', tests.get_user_id('alice'), 'a1000000-0000-0000-0000-000000000001', 'allow', 'p', 'interval', 60, 'allow');
update public.agent_tasks set next_run_at = '2030-01-03 09:00Z'
where id in ('d1000000-0000-0000-0000-000000000021', 'd1000000-0000-0000-0000-000000000022', 'd1000000-0000-0000-0000-000000000023');

select is(scheduler.enqueue_due('2030-01-03 09:00Z'), 3, 'the first occurrence of each task is enqueued');
select is((select count(*)::int from scheduler.claim_executions('w1', 10, 600, null, '2030-01-03 09:00Z')), 3,
  'and all three start');
select is(scheduler.enqueue_due('2030-01-03 09:01Z'), 3, 'the second occurrence of each task is recorded');
select results_eq(
  $$select status, error_kind from public.agent_task_executions
    where task_id = 'd1000000-0000-0000-0000-000000000021' and scheduled_for = '2030-01-03 09:01Z'$$,
  $$values ('skipped'::text, 'overlap'::text)$$,
  'overlap_policy = skip records the occurrence as skipped while the previous run is active');
select results_eq(
  $$select task_id from scheduler.claim_executions('w2', 10, 600, null, '2030-01-03 09:01Z')$$,
  array['d1000000-0000-0000-0000-000000000023'::uuid],
  'only the allow task starts a second run while the first still runs');
select is((select count(*)::int from public.agent_task_executions
           where task_id = 'd1000000-0000-0000-0000-000000000023' and status = 'running'), 2,
  'overlap_policy = allow lets both runs of a task run at once');
select is((select status from public.agent_task_executions
           where task_id = 'd1000000-0000-0000-0000-000000000022' and scheduled_for = '2030-01-03 09:01Z'),
  'queued', 'overlap_policy = queue keeps the second occurrence queued while the first runs');
select is(
  scheduler.finish_execution(e.id, 'w1', 1, 'succeeded', p_now => '2030-01-03 09:02Z'), true,
  'the first run of the queue task finishes')
from public.agent_task_executions e
where e.task_id = 'd1000000-0000-0000-0000-000000000022' and e.scheduled_for = '2030-01-03 09:00Z';
select results_eq(
  $$select task_id, scheduled_for from scheduler.claim_executions('w2', 10, 600, null, '2030-01-03 09:02Z')$$,
  $$values ('d1000000-0000-0000-0000-000000000022'::uuid, '2030-01-03 09:01Z'::timestamptz)$$,
  'once the previous run finished, the queued occurrence starts');

-- two queued occurrences of one exclusive task never start together
delete from public.agent_task_executions where task_id = 'd1000000-0000-0000-0000-000000000022';
insert into public.agent_task_executions (task_id, user_id, agent_id, trigger_type, scheduled_for, run_after, exclusive)
select 'd1000000-0000-0000-0000-000000000022', tests.get_user_id('alice'), 'a1000000-0000-0000-0000-000000000001',
       'schedule', s, s, true
from unnest(array['2030-01-03 09:03Z', '2030-01-03 09:04Z']::timestamptz[]) s;
select results_eq(
  $$select scheduled_for from scheduler.claim_executions('w3', 10, 600, null, '2030-01-03 09:05Z')$$,
  array['2030-01-03 09:03Z'::timestamptz],
  'of two queued occurrences of an exclusive task, one claim starts only the earliest');

-- =========================================================================
-- per-user cap
-- =========================================================================
delete from public.agent_task_executions;
insert into public.agent_tasks (id, user_id, agent_id, name, prompt_template, schedule_type, overlap_policy) values
  ('d2000000-0000-0000-0000-000000000031', tests.get_user_id('bob'), 'a2000000-0000-0000-0000-000000000002', 'bob allow', 'p', 'manual', 'allow');
insert into public.agent_task_executions (task_id, user_id, agent_id, trigger_type, scheduled_for, run_after, exclusive)
select 'd1000000-0000-0000-0000-000000000023', tests.get_user_id('alice'), 'a1000000-0000-0000-0000-000000000001',
       'manual', '2030-01-04 09:00Z'::timestamptz + make_interval(secs => g), '2030-01-04 09:00Z', false
from generate_series(1, 4) g;
insert into public.agent_task_executions (task_id, user_id, agent_id, trigger_type, scheduled_for, run_after, exclusive)
values ('d2000000-0000-0000-0000-000000000031', tests.get_user_id('bob'), 'a2000000-0000-0000-0000-000000000002',
        'manual', '2030-01-04 09:10Z', '2030-01-04 09:00Z', false);
select results_eq(
  $$select user_id, count(*)::int from scheduler.claim_executions('w1', 10, 60, 2, '2030-01-04 09:20Z')
    group by user_id order by count(*) desc$$,
  format($$values (%L::uuid, 2), (%L::uuid, 1)$$, tests.get_user_id('alice'), tests.get_user_id('bob')),
  'the per-user cap lets alice run two at once and does not hold bob back');
select is_empty($$select id from scheduler.claim_executions('w2', 10, 60, 2, '2030-01-04 09:20Z')$$,
  'a user at the cap gets nothing more from another worker');
select is((select count(*)::int from scheduler.claim_executions('w2', 10, 60, 3, '2030-01-04 09:20Z')), 1,
  'the cap counts executions already running across workers');
insert into public.agent_task_executions (task_id, user_id, agent_id, trigger_type, scheduled_for, run_after, exclusive)
select 'd1000000-0000-0000-0000-000000000023', tests.get_user_id('alice'), 'a1000000-0000-0000-0000-000000000001',
       'manual', '2030-01-04 08:00Z'::timestamptz + make_interval(secs => g), '2030-01-04 08:00Z', false
from generate_series(1, 20) g;
insert into public.agent_task_executions (task_id, user_id, agent_id, trigger_type, scheduled_for, run_after, exclusive)
values ('d2000000-0000-0000-0000-000000000031', tests.get_user_id('bob'), 'a2000000-0000-0000-0000-000000000002',
        'manual', '2030-01-04 09:15Z', '2030-01-04 09:00Z', false);
select results_eq(
  $$select user_id from scheduler.claim_executions('w3', 1, 60, 3, '2030-01-04 09:20Z')$$,
  format($$values (%L::uuid)$$, tests.get_user_id('bob')),
  'a capped user''s long backlog ahead in the queue does not starve another user');

-- =========================================================================
-- client actions: ownership checks
-- =========================================================================
delete from public.agent_task_executions;
update public.agent_tasks set status = 'active' where id = 'd1000000-0000-0000-0000-000000000001';
insert into public.agent_task_executions (id, task_id, user_id, agent_id, trigger_type, scheduled_for, run_after) values
  ('e1000000-0000-0000-0000-000000000041', 'd1000000-0000-0000-0000-000000000001', tests.get_user_id('alice'),
   'a1000000-0000-0000-0000-000000000001', 'schedule', '2030-01-05 09:00Z', '2030-01-05 09:00Z');

select tests.authenticate_as('bob');
select throws_ok($$select public.run_task_now('d1000000-0000-0000-0000-000000000001')$$,
  'P0002', 'task d1000000-0000-0000-0000-000000000001 not found', 'bob cannot run alice''s task');
select throws_ok($$select public.pause_task('d1000000-0000-0000-0000-000000000001')$$,
  'P0002', 'task d1000000-0000-0000-0000-000000000001 not found', 'bob cannot pause alice''s task');
select throws_ok($$select public.resume_task('d1000000-0000-0000-0000-000000000006')$$,
  'P0002', 'task d1000000-0000-0000-0000-000000000006 not found', 'bob cannot resume alice''s task');
select throws_ok($$select public.cancel_execution('e1000000-0000-0000-0000-000000000041')$$,
  'P0002', 'execution e1000000-0000-0000-0000-000000000041 not found', 'bob cannot cancel alice''s execution');
select throws_ok($$select public.retry_execution('e1000000-0000-0000-0000-000000000041')$$,
  'P0002', 'execution e1000000-0000-0000-0000-000000000041 not found', 'bob cannot retry alice''s execution');
select tests.authenticate_as_anon();
select throws_ok($$select public.run_task_now('d1000000-0000-0000-0000-000000000001')$$,
  '42501', null, 'anon cannot call run_task_now');
select tests.clear_authentication();
select results_eq(
  $$select status, (select count(*)::int from public.agent_task_executions) from public.agent_tasks
    where id = 'd1000000-0000-0000-0000-000000000001'$$,
  $$values ('active'::text, 1)$$, 'bob''s attempts changed nothing of alice''s');

select tests.authenticate_as('alice');
select isnt(public.run_task_now('d1000000-0000-0000-0000-000000000001'), null, 'alice can run her task now');
select results_eq(
  $$select trigger_type, status from public.agent_task_executions where trigger_type = 'manual'$$,
  $$values ('manual'::text, 'queued'::text)$$, 'running a task now queues one manual execution');
select results_eq(
  $$select status, next_run_at from public.pause_task('d1000000-0000-0000-0000-000000000001')$$,
  $$values ('paused'::text, null::timestamptz)$$, 'alice can pause her task and it has no next run');
select results_eq(
  $$select trigger_type, status from public.agent_task_executions order by trigger_type$$,
  $$values ('manual'::text, 'queued'::text), ('schedule'::text, 'cancelled'::text)$$,
  'pausing cancels queued scheduled runs and keeps the manual one');
select results_eq(
  $$select status, next_run_at is not null from public.resume_task('d1000000-0000-0000-0000-000000000001')$$,
  $$values ('active'::text, true)$$, 'alice can resume her task and it is planned again');
select is(public.cancel_execution(e.id), true, 'alice can cancel her queued execution')
from public.agent_task_executions e where e.trigger_type = 'manual';
select is(public.cancel_execution(e.id), false, 'cancelling it twice reports false')
from public.agent_task_executions e where e.trigger_type = 'manual';
select isnt(public.retry_execution('e1000000-0000-0000-0000-000000000041'), null,
  'alice can retry her cancelled execution');
select results_eq(
  $$select trigger_type, status, retry_of from public.agent_task_executions where trigger_type = 'retry'$$,
  $$values ('retry'::text, 'queued'::text, 'e1000000-0000-0000-0000-000000000041'::uuid)$$,
  'the retry is a new queued execution pointing at the one it retries');
select throws_ok(
  $$select public.retry_execution(e.id) from public.agent_task_executions e where e.trigger_type = 'retry'$$,
  '55000', null, 'a queued execution cannot be retried');

-- plan_from and fail_plan ----------------------------------------------------------------
select tests.clear_authentication();
insert into public.agent_tasks (id, user_id, agent_id, name, prompt_template, schedule_type, cron_expression) values
  ('d1000000-0000-0000-0000-0000000000f1', tests.get_user_id('alice'), 'a1000000-0000-0000-0000-000000000001',
   'plan me', 'p', 'cron', '0 9 * * *');
update public.agent_tasks set plan_from = '2000-01-01Z', status = 'paused'
where id = 'd1000000-0000-0000-0000-0000000000f1';
update public.agent_tasks set status = 'active' where id = 'd1000000-0000-0000-0000-0000000000f1';
select ok((select plan_from > '2000-01-01Z' from public.agent_tasks where id = 'd1000000-0000-0000-0000-0000000000f1'),
  'resuming a task moves plan_from to now, so the planner does not catch up the paused period');
select ok(not scheduler.fail_plan('d1000000-0000-0000-0000-0000000000f1', 1, 'stale'),
  'fail_plan from an older schedule_version is dropped');
select ok(scheduler.fail_plan('d1000000-0000-0000-0000-0000000000f1',
            (select schedule_version from public.agent_tasks where id = 'd1000000-0000-0000-0000-0000000000f1'),
            'croniter refused it'),
  'fail_plan with the current schedule_version applies');
select results_eq(
  $$select status, last_error from public.agent_tasks where id = 'd1000000-0000-0000-0000-0000000000f1'$$,
  $$values ('error'::text, 'cannot compute the next run: croniter refused it'::text)$$,
  'a task the planner cannot compute is visibly in error with a readable reason');
select results_eq(
  $$select kind, title, body, data ->> 'task_id', data ->> 'execution_id' from public.notifications
    where data ->> 'task_id' = 'd1000000-0000-0000-0000-0000000000f1'$$,
  $$values ('task_failed'::text, 'Scheduled task "plan me" stopped: its schedule cannot be computed'::text,
            'cannot compute the next run: croniter refused it'::text, 'd1000000-0000-0000-0000-0000000000f1'::text,
            null::text)$$,
  'and its owner is told, once');
select * from finish();
rollback;
