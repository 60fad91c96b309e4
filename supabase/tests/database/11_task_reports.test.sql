-- Tasks that converse: what report_task_status does to a task
-- (scheduler.apply_task_report, through finish_executions reading the stored
-- reply), a question holding a one-off whose schedule ended, the reply that
-- enqueues a user_reply run, resuming a finished one-off, and the
-- notification functions users call.
begin;
\ir helpers/personas.psql
select plan(60);

select tests.create_user('alice');
select tests.create_user('bob');
insert into public.agents (id, user_id, name) values
  ('a1000000-0000-0000-0000-000000000001', tests.get_user_id('alice'), 'Alice agent'),
  ('a2000000-0000-0000-0000-000000000002', tests.get_user_id('bob'), 'Bob agent');
insert into public.conversation_sessions (id, user_id, agent_id) values
  ('c1000000-0000-0000-0000-000000000001', tests.get_user_id('alice'), 'a1000000-0000-0000-0000-000000000001'),
  ('c1000000-0000-0000-0000-000000000002', tests.get_user_id('alice'), 'a1000000-0000-0000-0000-000000000001'),
  ('c2000000-0000-0000-0000-000000000003', tests.get_user_id('bob'), 'a2000000-0000-0000-0000-000000000002');

-- Run one execution as worker w1 at p_now: claim, start, store the reply
-- (with p_tool_calls), finish with p_status. Test scaffolding only.
create function tests.run(p_exec uuid, p_status text, p_output text, p_tool_calls jsonb, p_now timestamptz)
returns void language plpgsql as $$
declare
  v_attempt integer;
  v_conv uuid;
  v_reply uuid;
begin
  select c.attempt into v_attempt from scheduler.claim_executions('w1', 100, 60, null, p_now) c where c.id = p_exec;
  select s.conversation_id into v_conv from scheduler.start_execution(p_exec, 'w1', v_attempt, 'prompt', null, p_now) s;
  insert into public.chat_messages_v2 (conversation_id, user_id, role, content, tool_calls, execution_id)
  select v_conv, e.user_id, 'assistant', coalesce(p_output, 'ok'), p_tool_calls, p_exec
  from public.agent_task_executions e where e.id = p_exec
  returning id into v_reply;
  perform scheduler.finish_execution(p_exec, 'w1', v_attempt, p_status, p_output, null, null, v_reply, null, p_now);
end
$$;

create function tests.report(p_args jsonb) returns jsonb language sql as $$
  select jsonb_build_array(jsonb_build_object('id', 'call_1', 'name', 'report_task_status', 'arguments', p_args,
                                              'result', jsonb_build_object('reported', p_args ->> 'status'),
                                              'status', 'ok'))
$$;

-- continue: state merged (shallow), next run overridden ---------------------------------
insert into public.agent_tasks (id, user_id, agent_id, name, prompt_template, schedule_type, interval_seconds,
                                conversation_id, state, ends_at) values
  ('d1000000-0000-0000-0000-000000000001', tests.get_user_id('alice'), 'a1000000-0000-0000-0000-000000000001',
   'Steps', 'Next step', 'interval', 3600, 'c1000000-0000-0000-0000-000000000001',
   '{"a": 1, "nested": {"x": 1}}', '2030-01-02 12:00Z');
select isnt(scheduler.enqueue_now('d1000000-0000-0000-0000-000000000001', 'manual', '2030-01-02 09:00Z'), null,
  'a manual run of the interval task is queued');
select tests.run((select id from public.agent_task_executions where task_id = 'd1000000-0000-0000-0000-000000000001'),
  'succeeded', 'step one', tests.report('{"status": "continue", "state_update": {"b": 2, "nested": {"y": 2}},
                                          "next_run_at": "2030-01-02 09:30Z"}'), '2030-01-02 09:00:05Z');
select results_eq(
  $$select status, state, next_run_at from public.agent_tasks where id = 'd1000000-0000-0000-0000-000000000001'$$,
  $$values ('active'::text, '{"a": 1, "b": 2, "nested": {"y": 2}}'::jsonb, '2030-01-02 09:30Z'::timestamptz)$$,
  'continue merges state_update shallowly (top-level keys replaced) and honours next_run_at');
select is((select success_count from public.agent_tasks where id = 'd1000000-0000-0000-0000-000000000001'), 1,
  'the reported run is an ordinary succeeded run for the counters');

select lives_ok($$select scheduler.apply_task_report(e, '{"status": "continue", "next_run_at": "2030-01-05 00:00Z"}',
                                                     '2030-01-02 09:10Z')
                  from public.agent_task_executions e where e.task_id = 'd1000000-0000-0000-0000-000000000001'$$,
  'a next_run_at past the task''s end is accepted');
select is((select next_run_at from public.agent_tasks where id = 'd1000000-0000-0000-0000-000000000001'),
  '2030-01-02 12:00Z'::timestamptz, 'and capped at ends_at');
select lives_ok($$select scheduler.apply_task_report(e, '{"status": "continue", "next_run_at": "2030-01-01 00:00Z"}',
                                                     '2030-01-02 09:10Z')
                  from public.agent_task_executions e where e.task_id = 'd1000000-0000-0000-0000-000000000001'$$,
  'a next_run_at in the past is ignored');
select is((select next_run_at from public.agent_tasks where id = 'd1000000-0000-0000-0000-000000000001'),
  '2030-01-02 12:00Z'::timestamptz, 'the next run stays where it was');

-- complete: a recurring task goes on unless final ------------------------------------------
select lives_ok($$select scheduler.apply_task_report(e, '{"status": "complete"}', '2030-01-02 09:10Z')
                  from public.agent_task_executions e where e.task_id = 'd1000000-0000-0000-0000-000000000001'$$,
  'complete without final on a recurring task');
select is((select status from public.agent_tasks where id = 'd1000000-0000-0000-0000-000000000001'), 'active',
  'a recurring task keeps its schedule after complete');
select lives_ok($$select scheduler.apply_task_report(e, '{"status": "complete", "final": true, "summary": "All done"}',
                                                     '2030-01-02 09:10Z')
                  from public.agent_task_executions e where e.task_id = 'd1000000-0000-0000-0000-000000000001'$$,
  'complete with final');
select results_eq(
  $$select status, next_run_at from public.agent_tasks where id = 'd1000000-0000-0000-0000-000000000001'$$,
  $$values ('completed'::text, null::timestamptz)$$, 'final completes a recurring task');
select results_eq(
  $$select kind, body, data ->> 'task_id' from public.notifications
    where user_id = tests.get_user_id('alice') and kind = 'task_completed'$$,
  $$values ('task_completed'::text, 'All done'::text, 'd1000000-0000-0000-0000-000000000001'::text)$$,
  'completion notifies the user with the summary');

-- a one-off asks: it waits although enqueue_due completed it ------------------------------
insert into public.agent_tasks (id, user_id, agent_id, name, prompt_template, schedule_type, run_at, conversation_id) values
  ('d1000000-0000-0000-0000-000000000002', tests.get_user_id('alice'), 'a1000000-0000-0000-0000-000000000001',
   'Once', 'Ask me', 'once', '2030-01-03 09:00Z', 'c1000000-0000-0000-0000-000000000002');
select is(scheduler.enqueue_due('2030-01-03 09:00Z'), 1, 'the one-off is enqueued');
select is((select status from public.agent_tasks where id = 'd1000000-0000-0000-0000-000000000002'), 'completed',
  'enqueue_due completes a one-off as it enqueues its only run');
select tests.run((select id from public.agent_task_executions where task_id = 'd1000000-0000-0000-0000-000000000002'),
  'needs_input', 'Which city?', tests.report('{"status": "needs_input", "question": "Which city?",
                                                "state_update": {"asked": 1,
                                                  "waiting_conversation_id": "c1000000-0000-0000-0000-000000000001"}}'),
  '2030-01-03 09:00:05Z');
select results_eq(
  $$select status, next_run_at, state ->> 'pending_question', (state ->> 'complete_after_reply')::boolean
    from public.agent_tasks where id = 'd1000000-0000-0000-0000-000000000002'$$,
  $$values ('waiting_input'::text, null::timestamptz, 'Which city?'::text, true)$$,
  'the question holds the one-off: waiting_input, to complete after the answer''s run');
select is((select state -> 'asked' from public.agent_tasks where id = 'd1000000-0000-0000-0000-000000000002'), '1'::jsonb,
  'a needs_input report''s state_update is merged too');
select is((select state ->> 'waiting_conversation_id' from public.agent_tasks
           where id = 'd1000000-0000-0000-0000-000000000002'), 'c1000000-0000-0000-0000-000000000002',
  'but not its keys the lifecycle keeps: the task waits in the run''s own conversation');
select is(scheduler.enqueue_due('2030-01-03 10:00Z'), 0, 'no scheduled run while waiting');

-- another user cannot answer it ------------------------------------------------------------
select tests.authenticate_as('bob');
select throws_ok(
  $$insert into public.chat_messages_v2 (conversation_id, role, content)
    values ('c1000000-0000-0000-0000-000000000002', 'user', 'Paris')$$,
  '42501', null, 'bob cannot post in alice''s waiting conversation');
select throws_ok($$select public.resume_task('d1000000-0000-0000-0000-000000000002')$$, 'P0002', null,
  'bob cannot resume alice''s task (not found)');

-- alice answers: a user_reply run is queued at once ----------------------------------------
select tests.authenticate_as('alice');
select lives_ok(
  $$insert into public.chat_messages_v2 (conversation_id, role, content)
    values ('c1000000-0000-0000-0000-000000000002', 'user', 'Berlin')$$,
  'alice answers in the conversation through a direct insert');
select tests.clear_authentication();
select results_eq(
  $$select status, next_run_at, state ? 'pending_question', state ->> 'last_answer'
    from public.agent_tasks where id = 'd1000000-0000-0000-0000-000000000002'$$,
  $$values ('active'::text, null::timestamptz, false, 'Berlin'::text)$$,
  'the task is active again, with no scheduled occurrence (its schedule had ended)');
select results_eq(
  $$select trigger_type, status, conversation_id from public.agent_task_executions
    where task_id = 'd1000000-0000-0000-0000-000000000002' and trigger_type = 'user_reply'$$,
  $$values ('user_reply'::text, 'queued'::text, 'c1000000-0000-0000-0000-000000000002'::uuid)$$,
  'the answer enqueues a user_reply run in that conversation');
select tests.run((select id from public.agent_task_executions
                  where task_id = 'd1000000-0000-0000-0000-000000000002' and trigger_type = 'user_reply'),
  'succeeded', 'Berlin it is', null, '2030-01-03 09:10Z');
select results_eq(
  $$select status, state ? 'complete_after_reply' from public.agent_tasks where id = 'd1000000-0000-0000-0000-000000000002'$$,
  $$values ('completed'::text, false)$$, 'the one-off completes after the run that answered, without a report');
select is((select count(*)::int from public.notifications
           where data ->> 'task_id' = 'd1000000-0000-0000-0000-000000000002' and kind = 'task_completed'), 1,
  'and its completion is notified');

-- resuming a finished one-off needs a new run_at ------------------------------------------
select tests.authenticate_as('alice');
select throws_ok($$select public.resume_task('d1000000-0000-0000-0000-000000000002')$$, '22023',
  'this one-off task already ran; give it a new run_at (in the future) to resume it',
  'resuming a finished one-off without a new time is refused, readably');
select lives_ok(
  $$update public.agent_tasks set status = 'active', run_at = now() + interval '1 day'
    where id = 'd1000000-0000-0000-0000-000000000002'$$,
  'with a new run_at it resumes');
select isnt((select next_run_at from public.agent_tasks where id = 'd1000000-0000-0000-0000-000000000002'), null,
  'and is scheduled again');

-- a manual task that asks, then completes ---------------------------------------------------
select tests.clear_authentication();
insert into public.agent_tasks (id, user_id, agent_id, name, prompt_template, schedule_type, conversation_id) values
  ('d1000000-0000-0000-0000-000000000003', tests.get_user_id('alice'), 'a1000000-0000-0000-0000-000000000001',
   'Manual', 'Go', 'manual', 'c1000000-0000-0000-0000-000000000001');
select isnt(scheduler.enqueue_now('d1000000-0000-0000-0000-000000000003', 'manual', '2030-01-04 09:00Z'), null,
  'a manual run');
select tests.run((select id from public.agent_task_executions where task_id = 'd1000000-0000-0000-0000-000000000003'),
  'succeeded', 'done', tests.report('{"status": "complete", "state_update": {"result": 42}}'), '2030-01-04 09:00:05Z');
select results_eq(
  $$select status, state from public.agent_tasks where id = 'd1000000-0000-0000-0000-000000000003'$$,
  $$values ('completed'::text, '{"result": 42}'::jsonb)$$, 'complete completes a manual task and merges its state');

-- a skipped occurrence is told in the task's conversation ------------------------------------
insert into public.agent_tasks (id, user_id, agent_id, name, prompt_template, schedule_type, interval_seconds,
                                conversation_id, overlap_policy) values
  ('d1000000-0000-0000-0000-000000000004', tests.get_user_id('alice'), 'a1000000-0000-0000-0000-000000000001',
   'Pulse', 'Tick', 'interval', 60, 'c1000000-0000-0000-0000-000000000001', 'skip');
select isnt(scheduler.enqueue_now('d1000000-0000-0000-0000-000000000004', 'manual', '2030-01-05 08:59Z'), null,
  'a run is still queued');
update public.agent_tasks set next_run_at = '2030-01-05 09:00Z' where id = 'd1000000-0000-0000-0000-000000000004';
select cmp_ok(scheduler.enqueue_due('2030-01-05 09:00:01Z'), '>=', 1, 'the due occurrence is recorded');
select results_eq(
  $$select m.role, m.content, m.metadata - 'execution_id' - 'task_id', m.execution_id = e.id
    from public.chat_messages_v2 m
    join public.agent_task_executions e on e.task_id = 'd1000000-0000-0000-0000-000000000004' and e.status = 'skipped'
    where m.metadata ->> 'kind' = 'skipped'$$,
  $$values ('system'::text,
            'Skipped the run of "Pulse" scheduled for 2030-01-05 09:00: skipped: the previous run was still active (overlap_policy = skip)'::text,
            '{"source": "scheduler", "kind": "skipped", "task_name": "Pulse", "scheduled_for": "2030-01-05T09:00:00+00:00",
              "skipped_count": 1, "reason": "overlap", "trigger_type": "schedule"}'::jsonb, true)$$,
  'the skipped occurrence appears in the task''s conversation as a system message saying which and why');

-- the scheduled turn reads its task under the user's RLS --------------------------------------
update public.agent_tasks set system_addon = 'Answer in German.' where id = 'd1000000-0000-0000-0000-000000000003';
select tests.authenticate_as('alice');
select results_eq(
  $$select b.task ->> 'name', b.task ->> 'system_addon', (b.task -> 'state')::jsonb, b.task ->> 'trigger_type',
           (b.task ->> 'run_count')::int
    from public.agent_task_executions e,
         chat_turn.act_as_turn_begin(true, e.agent_id, e.conversation_id, e.id, e.user_message_id, 30, 200) b
    where e.task_id = 'd1000000-0000-0000-0000-000000000003'$$,
  $$values ('Manual'::text, 'Answer in German.'::text, '{"result": 42}'::jsonb, 'manual'::text, 1)$$,
  'act_as_turn_begin returns the task being run: name, system_addon, state, trigger and run number');
select tests.clear_authentication();
select id as manual_exec from public.agent_task_executions where task_id = 'd1000000-0000-0000-0000-000000000003' \gset
select tests.authenticate_as('bob');
select is((select b.task::text from chat_turn.act_as_turn_begin(true, 'a1000000-0000-0000-0000-000000000001',
             'c1000000-0000-0000-0000-000000000001', :'manual_exec', gen_random_uuid(), 30, 200) b), null,
  'another user reads no task through act_as_turn_begin, even by its execution''s id');
select tests.clear_authentication();
select throws_ok(
  $$update public.agent_tasks set system_addon = repeat('x', 4001) where id = 'd1000000-0000-0000-0000-000000000003'$$,
  '23514', null, 'system_addon is at most 4,000 characters');

-- notify_on: change notifies only a materially different reply; failure can be turned off ---
insert into public.agent_tasks (id, user_id, agent_id, name, prompt_template, schedule_type, conversation_id, notify_on) values
  ('d1000000-0000-0000-0000-000000000005', tests.get_user_id('alice'), 'a1000000-0000-0000-0000-000000000001',
   'Price', 'Price?', 'manual', 'c1000000-0000-0000-0000-000000000001', '{change}'),
  ('d1000000-0000-0000-0000-000000000006', tests.get_user_id('alice'), 'a1000000-0000-0000-0000-000000000001',
   'Quiet', 'Hm', 'manual', 'c1000000-0000-0000-0000-000000000001', '{}'),
  ('d1000000-0000-0000-0000-000000000007', tests.get_user_id('alice'), 'a1000000-0000-0000-0000-000000000001',
   'Chatty', 'Hi', 'manual', 'c1000000-0000-0000-0000-000000000001', '{success}');
create function tests.run_now(p_task uuid, p_status text, p_output text, p_at timestamptz) returns void
language sql as $$
  select tests.run(scheduler.enqueue_now(p_task, 'manual', p_at), p_status, p_output, null, p_at + interval '1 second')
$$;
select tests.run_now('d1000000-0000-0000-0000-000000000005', 'succeeded', 'Price: 10 EUR', '2030-01-06 09:00Z');
select is((select count(*)::int from public.notifications where data ->> 'task_id' = 'd1000000-0000-0000-0000-000000000005'), 0,
  'change: the first run has nothing to compare with');
select tests.run_now('d1000000-0000-0000-0000-000000000005', 'succeeded', E'  price:   10\n EUR ', '2030-01-06 10:00Z');
select is((select count(*)::int from public.notifications where data ->> 'task_id' = 'd1000000-0000-0000-0000-000000000005'), 0,
  'change: a reply differing only in case and whitespace is not a change');
select tests.run_now('d1000000-0000-0000-0000-000000000005', 'succeeded', 'Price: 12 EUR', '2030-01-06 11:00Z');
select results_eq(
  $$select kind, body, (data ->> 'changed')::boolean from public.notifications
    where data ->> 'task_id' = 'd1000000-0000-0000-0000-000000000005'$$,
  $$values ('task_changed'::text, 'Price: 12 EUR'::text, true)$$, 'change: a different reply notifies once');
select tests.run_now('d1000000-0000-0000-0000-000000000006', 'failed', null, '2030-01-06 12:00Z');
select is((select count(*)::int from public.notifications where data ->> 'task_id' = 'd1000000-0000-0000-0000-000000000006'), 0,
  'a task without failure in notify_on fails quietly');
select tests.run_now('d1000000-0000-0000-0000-000000000007', 'succeeded', 'Hello', '2030-01-06 13:00Z');
select tests.run_now('d1000000-0000-0000-0000-000000000007', 'succeeded', 'Hello', '2030-01-06 14:00Z');
select results_eq(
  $$select kind, (data ->> 'changed')::boolean from public.notifications
    where data ->> 'task_id' = 'd1000000-0000-0000-0000-000000000007' order by created_at, id$$,
  $$values ('task_succeeded'::text, false), ('task_succeeded'::text, false)$$, 'success notifies every succeeded run');
select throws_ok(
  $$update public.agent_tasks set notify_on = '{sometimes}' where id = 'd1000000-0000-0000-0000-000000000007'$$,
  '23514', null, 'notify_on takes failure, needs_input, success and change only');
select tests.authenticate_as('alice');
select lives_ok(
  $$update public.agent_tasks set notify_on = '{failure,change}' where id = 'd1000000-0000-0000-0000-000000000007'$$,
  'users set notify_on on their tasks');
select tests.clear_authentication();
-- the four notifications above are read before the counting below
update public.notifications set read_at = now()
where data ->> 'task_id' in ('d1000000-0000-0000-0000-000000000005', 'd1000000-0000-0000-0000-000000000007');

-- notifications: read them, count them, only your own ---------------------------------------
select tests.authenticate_as('bob');
select is(public.unread_notification_count(), 0, 'bob has no notifications');
select is(public.mark_notification_read((select id from public.notifications limit 1)), false,
  'bob sees no notification of alice''s to mark');
select is(public.mark_all_notifications_read(), 0, 'mark all marks none of alice''s for bob');
select tests.authenticate_as('alice');
select is(public.unread_notification_count(), 4, 'alice has four unread notifications');
select is(public.mark_notification_read((select id from public.notifications where kind = 'task_needs_input')), true,
  'alice marks one read');
select is(public.mark_notification_read((select id from public.notifications where kind = 'task_needs_input')), false,
  'marking it again changes nothing');
select is(public.mark_all_notifications_read(), 3, 'mark all marks the other three');
select is(public.unread_notification_count(), 0, 'none is left unread');
select tests.authenticate_as_anon();
select throws_ok($$select public.unread_notification_count()$$, '42501', null, 'anon cannot count notifications');

-- an agent's report never sets the lifecycle's keys ----------------------------------------
select tests.clear_authentication();
insert into public.agent_tasks (id, user_id, agent_id, name, prompt_template, schedule_type, interval_seconds,
                                conversation_id) values
  ('d1000000-0000-0000-0000-0000000000f1', tests.get_user_id('alice'), 'a1000000-0000-0000-0000-000000000001',
   'Keys', 'Go on', 'interval', 3600, 'c1000000-0000-0000-0000-000000000001');
select isnt(scheduler.enqueue_now('d1000000-0000-0000-0000-0000000000f1', 'manual', '2030-01-05 09:00Z'), null,
  'a manual run of the task is queued');
select tests.run((select id from public.agent_task_executions where task_id = 'd1000000-0000-0000-0000-0000000000f1'),
  'succeeded', 'ok', tests.report('{"status": "continue", "state_update": {"c": 3,
    "budget_paused_until": "2030-01-01T00:00:00Z", "complete_after_reply": true, "pending_question": "?"}}'),
  '2030-01-05 09:00:05Z');
select is((select state from public.agent_tasks where id = 'd1000000-0000-0000-0000-0000000000f1'), '{"c": 3}'::jsonb,
  'a continue report sets its own keys and none of scheduler.lifecycle_state_keys()');
select scheduler.pause_task('d1000000-0000-0000-0000-0000000000f1');
select is(scheduler.resume_after_budget('2030-01-06Z'), 0,
  'so a task its user paused is not resumed at a time the agent chose');

-- a report may not grow the state past max_task_state_bytes ---------------------------------
update scheduler.limits set value = '300' where name = 'max_task_state_bytes';
insert into public.agent_tasks (id, user_id, agent_id, name, prompt_template, schedule_type, interval_seconds,
                                conversation_id, state) values
  ('d1000000-0000-0000-0000-0000000000f2', tests.get_user_id('alice'), 'a1000000-0000-0000-0000-000000000001',
   'Big', 'Go on', 'interval', 3600, 'c1000000-0000-0000-0000-000000000001', '{"kept": 1}');
select isnt(scheduler.enqueue_now('d1000000-0000-0000-0000-0000000000f2', 'manual', '2030-01-05 09:00Z'), null,
  'a manual run of the task is queued');
select tests.run((select id from public.agent_task_executions where task_id = 'd1000000-0000-0000-0000-0000000000f2'),
  'succeeded', 'ok', tests.report(jsonb_build_object('status', 'continue', 'next_run_at', '2030-01-05 12:00Z',
                                                     'state_update', jsonb_build_object('big', repeat('x', 400)))),
  '2030-01-05 09:00:05Z');
select results_eq(
  $$select state, next_run_at from public.agent_tasks where id = 'd1000000-0000-0000-0000-0000000000f2'$$,
  $$values ('{"kept": 1}'::jsonb, '2030-01-05 12:00Z'::timestamptz)$$,
  'a state_update that would pass the limit is not applied; the rest of the report is');
select matches((select last_error from public.agent_tasks where id = 'd1000000-0000-0000-0000-0000000000f2'),
  '^the agent''s state_update was not applied: state is [0-9]+ bytes; the limit is 300 bytes \(max_task_state_bytes\)$',
  'and the task says why');
select isnt(scheduler.enqueue_now('d1000000-0000-0000-0000-0000000000f2', 'manual', '2030-01-05 10:00Z'), null,
  'another run is queued');
select tests.run((select id from public.agent_task_executions
                  where task_id = 'd1000000-0000-0000-0000-0000000000f2' and status = 'queued'),
  'succeeded', 'ok', tests.report('{"status": "continue", "state_update": {"small": 2}}'), '2030-01-05 10:00:05Z');
select is((select state from public.agent_tasks where id = 'd1000000-0000-0000-0000-0000000000f2'),
  '{"kept": 1, "small": 2}'::jsonb, 'a state_update within the limit is applied');

select * from finish();
rollback;
