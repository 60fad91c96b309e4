-- Rescue on death, not on lease: a worker is alive while the session it
-- attached exists; once that session has been gone for the grace period its
-- running executions go back to the queue (or fail on their last attempt).
-- A dead session is simulated by pointing backend_pid at no backend.
begin;
\ir helpers/personas.psql
select plan(29);

select tests.create_user('alice');
insert into public.agents (id, user_id, name) values
  ('a1000000-0000-0000-0000-000000000001', tests.get_user_id('alice'), 'Alice agent');
insert into public.agent_tasks (id, user_id, agent_id, name, prompt_template, schedule_type, max_retries) values
  ('d1000000-0000-0000-0000-000000000001', tests.get_user_id('alice'), 'a1000000-0000-0000-0000-000000000001',
   'Digest', 'Digest', 'manual', 3);
insert into public.agent_task_executions (id, task_id, user_id, agent_id, trigger_type, scheduled_for, run_after,
                                          max_attempts, exclusive) values
  ('e1000000-0000-0000-0000-000000000001', 'd1000000-0000-0000-0000-000000000001', tests.get_user_id('alice'),
   'a1000000-0000-0000-0000-000000000001', 'manual', '2030-01-01 09:00Z', '2030-01-01 09:00Z', 2, false),
  ('e2000000-0000-0000-0000-000000000002', 'd1000000-0000-0000-0000-000000000001', tests.get_user_id('alice'),
   'a1000000-0000-0000-0000-000000000001', 'manual', '2030-01-01 09:01Z', '2030-01-01 09:00Z', 1, false);

-- privileges
select ok(has_function_privilege('task_worker', 'scheduler.rescue_dead_workers(double precision, timestamptz)', 'execute'),
  'task_worker may call rescue_dead_workers');
select ok(has_function_privilege('task_worker', 'scheduler.attach_worker_session(text)', 'execute'),
  'task_worker may call attach_worker_session');
select ok(not has_function_privilege('authenticated', 'scheduler.rescue_dead_workers(double precision, timestamptz)', 'execute'),
  'an authenticated user may not call rescue_dead_workers');
select ok(not has_function_privilege('authenticated', 'scheduler.attach_worker_session(text)', 'execute'),
  'an authenticated user may not call attach_worker_session');

select ok(not has_function_privilege('task_worker',
  'scheduler.put_back_running(uuid[], text, timestamptz)', 'execute'),
  'the rescuers'' shared move is internal');

-- attaching
select is(scheduler.attach_worker_session('nobody'), false, 'an unregistered worker cannot attach');
select scheduler.register_worker('w1', 'host', 1, 4);
select scheduler.register_worker('w2', 'host', 2, 4);
select is(scheduler.attach_worker_session('w1'), true, 'a registered worker attaches its session');
select results_eq($$select backend_pid, session_lost_at from scheduler.workers where id = 'w1'$$,
  $$values (pg_backend_pid(), null::timestamptz)$$, 'the worker row names this session');

select is((select count(*)::int from scheduler.claim_executions('w1', 2, 30, null, '2030-01-01 09:05Z')), 2,
  'w1 runs both executions');
select results_eq($$select * from scheduler.rescue_dead_workers(0.5, '2030-01-01 09:05:01Z')$$,
  $$values (0, 0)$$, 'a worker whose session exists is left alone');

-- the session ends (simulated: no backend has this pid)
update scheduler.workers set backend_pid = -1 where id = 'w1';
select results_eq($$select * from scheduler.rescue_dead_workers(0.5, '2030-01-01 09:05:02Z')$$,
  $$values (0, 1)$$, 'first sight of a dead session: nothing moved yet, one worker pending');
select is((select session_lost_at from scheduler.workers where id = 'w1'), '2030-01-01 09:05:02Z'::timestamptz,
  'the rescuer records when it first saw the session gone');
select results_eq($$select * from scheduler.rescue_dead_workers(0.5, '2030-01-01 09:05:02.3Z')$$,
  $$values (0, 1)$$, 'within the grace period nothing moves');
select results_eq($$select * from scheduler.rescue_dead_workers(0.5, '2030-01-01 09:05:02.5Z')$$,
  $$values (2, 0)$$, 'after the grace period both running executions are rescued');
select results_eq(
  $$select status, worker_id, attempt, error_kind, run_after from public.agent_task_executions
    where id = 'e1000000-0000-0000-0000-000000000001'$$,
  $$values ('queued'::text, null::text, 1, 'worker_lost'::text, '2030-01-01 09:05:02.5Z'::timestamptz)$$,
  'with attempts left the execution is queued again at once, its attempt used');
select is((select error from public.agent_task_executions where id = 'e1000000-0000-0000-0000-000000000001'),
  'the session of worker w1 ended (worker lost)', 'the error says which worker was lost and why');
select results_eq(
  $$select status, error_kind, finished_at from public.agent_task_executions
    where id = 'e2000000-0000-0000-0000-000000000002'$$,
  $$values ('failed'::text, 'worker_lost'::text, '2030-01-01 09:05:02.5Z'::timestamptz)$$,
  'on its last attempt the execution fails');
select is((select failure_count from public.agent_tasks where id = 'd1000000-0000-0000-0000-000000000001'), 1,
  'the failure is recorded on the task like any other');
select is(scheduler.finish_execution('e1000000-0000-0000-0000-000000000001', 'w1', 1, 'succeeded',
                                     p_now => '2030-01-01 09:05:03Z'),
  false, 'the lost worker''s late finish is fenced out');

-- a worker that re-attaches (a connection blip) is alive again
select is(scheduler.attach_worker_session('w1'), true, 'the worker re-attaches after a blip');
select is((select session_lost_at from scheduler.workers where id = 'w1'), null::timestamptz,
  're-attaching clears the lost mark');
select is((select count(*)::int from scheduler.claim_executions('w2', 1, 30, null, '2030-01-01 09:06Z')), 1,
  'another worker claims the rescued execution');

-- the rescuers' shared move takes a set of ids and a reason
select throws_ok($$select scheduler.put_back_running(array['e1000000-0000-0000-0000-000000000001']::uuid[],
                                                      'bored', '2030-01-01 09:07Z')$$,
  '22023', null, 'a put-back names one of the rescue reasons');
select is(scheduler.put_back_running(array['e1000000-0000-0000-0000-000000000001',
                                           'e2000000-0000-0000-0000-000000000002']::uuid[],
                                     'lease_expired', '2030-01-01 09:07Z'),
  1, 'a put-back moves only the executions of its set still running');
select results_eq(
  $$select status, error_kind, error from public.agent_task_executions
    where id = 'e1000000-0000-0000-0000-000000000001'$$,
  $$values ('failed'::text, 'lease_expired'::text, 'lease expired on worker w2 and no attempt is left'::text)$$,
  'the reason picks the error kind and the sentence, which names the worker');

-- the chat circuit breaker a worker reports (queue stats shows it)
select ok(not has_function_privilege('authenticated', 'scheduler.report_chat_circuit(text, boolean, text)', 'execute'),
  'an authenticated user may not call report_chat_circuit');
select lives_ok($$select scheduler.register_worker('w9', 'host', 1, 4);
                  select scheduler.report_chat_circuit('w9', true, 'chat function unreachable: refused')$$,
  'a worker reports its circuit open');
select results_eq($$select chat_circuit_open_since is not null, chat_circuit_reason from scheduler.workers where id = 'w9'$$,
  $$values (true, 'chat function unreachable: refused'::text)$$, 'the open circuit and its reason are recorded');
select scheduler.report_chat_circuit('w9', false, null);
select results_eq($$select chat_circuit_open_since, chat_circuit_reason from scheduler.workers where id = 'w9'$$,
  $$values (null::timestamptz, null::text)$$, 'closing it clears both');

select * from finish();
rollback;
