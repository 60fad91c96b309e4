-- The operator's limits (scheduler.limits): size caps for every writer,
-- budgets for users, token and run budgets counted from the model's usage,
-- rate limits on run_task_now / retry_execution, and refusals that reveal
-- nothing (docs/security.md).
begin;
\ir helpers/personas.psql
select plan(59);

select tests.create_user('alice');
select tests.create_user('bob');
insert into public.agents (id, user_id, name) values
  ('a1000000-0000-0000-0000-000000000001', tests.get_user_id('alice'), 'Alice agent'),
  ('a2000000-0000-0000-0000-000000000002', tests.get_user_id('bob'), 'Bob agent');
insert into public.conversation_sessions (id, user_id, agent_id) values
  ('c1000000-0000-0000-0000-000000000001', tests.get_user_id('alice'), 'a1000000-0000-0000-0000-000000000001'),
  ('c2000000-0000-0000-0000-000000000002', tests.get_user_id('bob'), 'a2000000-0000-0000-0000-000000000002');
insert into public.agent_tasks (id, user_id, agent_id, name, prompt_template, schedule_type, conversation_id) values
  ('d1000000-0000-0000-0000-000000000001', tests.get_user_id('alice'), 'a1000000-0000-0000-0000-000000000001',
   'manual', 'p', 'manual', 'c1000000-0000-0000-0000-000000000001');

-- =========================================================================
-- Size caps: every writer, the operator's own SQL included
-- =========================================================================
select alike(tests.caught($$select public.validate_schedule('cron', repeat('0-59,', 100000) || '0 * * * *')$$),
  'no error', 'validate_schedule answers the 500 KB expression of finding 1 at once');
select is(public.validate_schedule('cron', repeat('0-59,', 100000) || '0 * * * *') ->> 'cron_expression',
  'cron expression is 500009 characters; the limit is 256 (max_cron_expression_chars)',
  'and the answer names the limit, without echoing the expression');
select alike(tests.caught($$insert into public.agent_tasks (user_id, agent_id, name, prompt_template, schedule_type, cron_expression)
    values (tests.get_user_id('alice'), 'a1000000-0000-0000-0000-000000000001', 'x', 'p', 'cron',
            repeat('0-59,', 100000) || '0 * * * *')$$),
  '22023: cron expression is 500009 characters; the limit is 256 (max_cron_expression_chars)',
  'such a task is not stored, even by the operator');
select is(public.validate_schedule('manual', null, repeat('a', 1000000), 'p',
                                   jsonb_build_object('blob', repeat(md5(random()::text), 4000))),
  jsonb_build_object(
    'timezone', 'unknown time zone (1000000 characters): use an IANA name such as ''Europe/Berlin'' or ''UTC''',
    'prompt_variables', 'prompt_variables is ' || pg_column_size(jsonb_build_object('blob', repeat('x', 128000)))
                        || ' bytes; the limit is 16384 bytes (max_prompt_variables_bytes)'),
  'validate_schedule holds a 1 MB time zone and 128 KB of variables to their caps before looking at them');
select is(public.validate_schedule('manual', null, 'UTC', repeat('{{x}} ', 200000)) ->> 'prompt_template',
  'prompt template is 1200000 characters; at most 10000 are allowed',
  'and a 1.2 MB template (2.5 s of CPU before) to the column''s 10,000 characters');
select is(scheduler.cron_error('0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31,32,33,34,35,36,37,38,39,40,41,42,43,44,45,46,47,48,49,50,51,52,53,54,55,56,57,58,59 * * * *'),
  null, 'every minute written out in full is within the default cap');
select alike(tests.caught($$insert into public.chat_messages_v2 (conversation_id, role, content, metadata)
    values ('c1000000-0000-0000-0000-000000000001', 'user', 'x', jsonb_build_object('blob', repeat(md5(random()::text), 131072)))$$),
  '22023: metadata is % bytes; the limit is 65536 bytes (max_message_metadata_bytes)',
  '4 MB of chat_messages_v2.metadata are refused');
select alike(tests.caught($$update public.agents set settings = jsonb_build_object('blob', repeat(md5(random()::text), 131072))
    where id = 'a1000000-0000-0000-0000-000000000001'$$),
  '22023: settings is % bytes; the limit is 16384 bytes (max_agent_settings_bytes)',
  '4 MB of agents.settings are refused');
select alike(tests.caught($$update public.agent_tasks set prompt_variables = jsonb_build_object('blob', repeat(md5(random()::text), 131072))
    where id = 'd1000000-0000-0000-0000-000000000001'$$),
  '22023: prompt_variables is % bytes; the limit is 16384 bytes (max_prompt_variables_bytes)',
  '4 MB of agent_tasks.prompt_variables are refused');
select throws_ok($$insert into public.agent_tasks (user_id, agent_id, name, prompt_template, schedule_type)
    values (tests.get_user_id('alice'), 'a1000000-0000-0000-0000-000000000001', 'x', repeat('p', 10001), 'manual')$$,
  '22023', 'prompt template is 10001 characters; at most 10000 are allowed',
  'a prompt template over 10,000 characters is refused, naming its size');
update scheduler.limits set value = '1000000' where name = 'max_cron_expression_chars';
select is(public.validate_schedule('cron', repeat('1,', 300) || '0 * * * *'), '{}'::jsonb,
  'the operator raises a limit with one UPDATE, no migration');
update scheduler.limits set value = '256' where name = 'max_cron_expression_chars';

-- =========================================================================
-- Budgets on what a user writes (supabase-js, the agent's tools, the CLI)
-- =========================================================================
select tests.authenticate_as('alice');
select throws_ok($$insert into public.agent_tasks (agent_id, name, prompt_template, schedule_type, interval_seconds)
    values ('a1000000-0000-0000-0000-000000000001', 'x', 'p', 'interval', 1)$$,
  '22023', 'interval_seconds is 1; the shortest interval allowed is 60 s (min_interval_seconds)',
  'a user cannot set an interval of 1 s');
select lives_ok($$insert into public.agent_tasks (agent_id, name, prompt_template, schedule_type, interval_seconds)
    values ('a1000000-0000-0000-0000-000000000001', 'sixty', 'p', 'interval', 60)$$,
  'an interval of 60 s is accepted');
select throws_ok($$update public.agent_tasks set interval_seconds = 5 where name = 'sixty'$$,
  '22023', 'interval_seconds is 5; the shortest interval allowed is 60 s (min_interval_seconds)',
  'nor shorten it later');
select throws_ok($$insert into public.agent_tasks (agent_id, name, prompt_template, schedule_type, max_retries)
    values ('a1000000-0000-0000-0000-000000000001', 'x', 'p', 'manual', 20)$$,
  '22023', 'max_retries is 20; the limit is 5 (max_retries)', 'a user cannot set max_retries = 20');
select lives_ok($$update public.agent_tasks set description = 'renamed' where name = 'sixty'$$,
  'an edit that changes no limited field is not checked again');
select tests.clear_authentication();
update scheduler.limits set value = '2' where name = 'max_active_tasks_per_user';
select tests.authenticate_as('alice');
select throws_ok($$insert into public.agent_tasks (agent_id, name, prompt_template, schedule_type)
    values ('a1000000-0000-0000-0000-000000000001', 'third', 'p', 'manual')$$,
  '22023', 'you have 2 active tasks; the limit is 2 (max_active_tasks_per_user): pause or delete one first',
  'a third active task is refused at max_active_tasks_per_user = 2');
select lives_ok($$insert into public.agent_tasks (agent_id, name, prompt_template, schedule_type, status)
    values ('a1000000-0000-0000-0000-000000000001', 'third', 'p', 'manual', 'paused')$$,
  'a paused one is accepted');
select throws_ok($$select public.resume_task((select id from public.agent_tasks where name = 'third'))$$,
  '22023', 'you have 2 active tasks; the limit is 2 (max_active_tasks_per_user): pause or delete one first',
  'and resuming it is refused while two are active');
select tests.clear_authentication();
update scheduler.limits set value = '100' where name = 'max_active_tasks_per_user';
select lives_ok($$insert into public.agent_tasks (user_id, agent_id, name, prompt_template, schedule_type, interval_seconds, max_retries)
    values (tests.get_user_id('alice'), 'a1000000-0000-0000-0000-000000000001', 'ops', 'p', 'interval', 1, 20)$$,
  'the operator''s own SQL is not held to the user budgets');

-- models and clamps
select tests.authenticate_as('alice');
select throws_ok($$update public.agents set model = 'o1-pro' where id = 'a1000000-0000-0000-0000-000000000001'$$,
  '22023', 'model o1-pro is not allowed here; allowed models: gpt-4o-mini, gpt-4o, gpt-4.1-mini, gpt-4.1-nano, gpt-4.1 (allowed_models)',
  'a user cannot pick a model off the operator''s allow-list');
select throws_ok($$update public.agents set settings = '{"max_tokens": 1000000}' where id = 'a1000000-0000-0000-0000-000000000001'$$,
  '22023', 'settings.max_tokens is 1000000; the limit is 4096 (max_output_tokens)', 'nor max_tokens = 1,000,000');
select throws_ok($$update public.agents set settings = '{"history_token_budget": 1000000}' where id = 'a1000000-0000-0000-0000-000000000001'$$,
  '22023', 'settings.history_token_budget is 1000000; the limit is 32000 (max_history_token_budget)',
  'nor a history budget over the clamp');
select lives_ok($$update public.agents set model = 'gpt-4o', settings = '{"max_tokens": 800}' where id = 'a1000000-0000-0000-0000-000000000001'$$,
  'an allowed model and a max_tokens within the clamp are accepted');
select tests.clear_authentication();
update public.agents set model = 'o1-pro' where id = 'a2000000-0000-0000-0000-000000000002';
select throws_ok($$select chat_private.turn_check(tests.get_user_id('bob'), 'a2000000-0000-0000-0000-000000000002')$$,
  'PT422', null, 'a turn of an agent whose model is off the list is refused (an agent written before the list changed)');
update scheduler.limits set value = 'null' where name = 'allowed_models';
update public.agents set settings = '{"max_tokens": 1000000, "history_token_budget": 500}'
  where id = 'a2000000-0000-0000-0000-000000000002';  -- the operator's own write
select ok(chat_private.turn_check(tests.get_user_id('bob'), 'a2000000-0000-0000-0000-000000000002'),
  'allowed_models = null allows any model');
select tests.authenticate_as('bob');
select is((select (chat_turn.user_turn_begin(0, 'a2000000-0000-0000-0000-000000000002', null, 'hi', 30, 200)).agent::jsonb
           -> 'settings'),
  '{"max_tokens": 4096, "history_token_budget": 500}'::jsonb,
  'the turn clamps max_tokens to max_output_tokens, whoever wrote the agent');
select tests.clear_authentication();

-- =========================================================================
-- Rate limits on run_task_now and retry_execution
-- =========================================================================
update scheduler.limits set value = '3' where name = 'run_now_per_minute';
select tests.authenticate_as('alice');
select lives_ok($$select public.run_task_now('d1000000-0000-0000-0000-000000000001')$$, 'run now 1 of 3');
select lives_ok($$select public.run_task_now('d1000000-0000-0000-0000-000000000001')$$, 'run now 2 of 3');
select lives_ok($$select public.run_task_now('d1000000-0000-0000-0000-000000000001')$$, 'run now 3 of 3');
select alike(tests.caught($$select public.run_task_now('d1000000-0000-0000-0000-000000000001')$$),
  'PT429: rate limit reached: at most 3 run_now calls per minute (run_now_per_minute); retry in % s',
  'the fourth run_task_now in a minute is refused naming the limit (PostgREST answers 429)');
select tests.clear_authentication();
select is((select count(*)::integer from public.agent_task_executions where task_id = 'd1000000-0000-0000-0000-000000000001'),
  3, 'only three runs were queued');
update public.agent_task_executions set status = 'failed', finished_at = now(), error = 'x', error_kind = 'permanent'
  where task_id = 'd1000000-0000-0000-0000-000000000001';
update scheduler.limits set value = '1' where name = 'retry_per_minute';
select tests.authenticate_as('alice');
select lives_ok($$select public.retry_execution((select id from public.agent_task_executions order by created_at, id limit 1))$$,
  'one retry');
select alike(tests.caught($$select public.retry_execution((select id from public.agent_task_executions order by created_at, id limit 1 offset 1))$$),
  'PT429: rate limit reached: at most 1 retry calls per minute (retry_per_minute)%',
  'the second retry in a minute is refused at retry_per_minute = 1');
select tests.clear_authentication();
update scheduler.limits set value = '10' where name in ('run_now_per_minute', 'retry_per_minute');
delete from chat_private.rate_limits;

-- =========================================================================
-- Token and run budgets, counted from the usage the model reports
-- =========================================================================
update scheduler.limits set value = '1000' where name = 'max_tokens_per_user_per_day';
select chat_private.record_assistant_reply(tests.get_user_id('alice'), 'c1000000-0000-0000-0000-000000000001', 'hi',
  null, '{"usage": {"prompt_tokens": 500, "completion_tokens": 100, "total_tokens": 600}}');
select is(scheduler.tokens_used(tests.get_user_id('alice'), null), 600::bigint,
  'a stored reply counts the total_tokens the model reported');
select ok(chat_private.turn_check(tests.get_user_id('alice'), 'a1000000-0000-0000-0000-000000000001'),
  'under the daily budget a turn may start');
select chat_private.record_assistant_reply(tests.get_user_id('alice'), 'c1000000-0000-0000-0000-000000000001', 'again',
  null, '{"usage": {"total_tokens": 450}}');
select throws_ok($$select chat_private.turn_check(tests.get_user_id('alice'), 'a1000000-0000-0000-0000-000000000001')$$,
  'PT429', 'daily token budget used up: 1050 of 1000 tokens today (max_tokens_per_user_per_day); it renews at 00:00 UTC',
  'over it, the next turn (user or act-as) is refused naming the limit');
select tests.authenticate_as('alice');
select throws_ok($$select public.run_task_now('d1000000-0000-0000-0000-000000000001')$$,
  'PT429', 'daily token budget used up: 1050 of 1000 tokens today (max_tokens_per_user_per_day); it renews at 00:00 UTC',
  'and so is run_task_now');
select tests.clear_authentication();
select is(scheduler.budget_error(tests.get_user_id('alice'), null, now() + interval '1 day'), null,
  'the budget renews the next UTC day');
update scheduler.limits set value = '1000000' where name = 'max_tokens_per_user_per_day';

-- a task's own runs per day
update public.agent_tasks set max_runs_per_day = 4 where id = 'd1000000-0000-0000-0000-000000000001';
select tests.authenticate_as('alice');
select throws_ok($$select public.run_task_now('d1000000-0000-0000-0000-000000000001')$$,
  'PT429', 'this task ran 4 times today, its max_runs_per_day is 4; it renews at 00:00 UTC',
  'a task at max_runs_per_day takes no manual run');
select tests.clear_authentication();

-- a task whose run uses up its token budget pauses itself
update public.agent_tasks set max_runs_per_day = null, max_tokens_per_day = 100
  where name = 'sixty';
insert into public.agent_task_executions (id, task_id, user_id, agent_id, trigger_type, status, scheduled_for,
                                         conversation_id, started_at, worker_id, lease_expires_at)
values ('e1000000-0000-0000-0000-000000000001', (select id from public.agent_tasks where name = 'sixty'),
        tests.get_user_id('alice'),
        'a1000000-0000-0000-0000-000000000001', 'schedule', 'running', now(), 'c1000000-0000-0000-0000-000000000001',
        now(), 'w1', now() + interval '30 s');
select chat_private.record_assistant_reply(tests.get_user_id('alice'), 'c1000000-0000-0000-0000-000000000001', 'done',
  null, '{"usage": {"total_tokens": 150}}', 'e1000000-0000-0000-0000-000000000001');
select is(scheduler.tokens_used(tests.get_user_id('alice'), (select id from public.agent_tasks where name = 'sixty')), 150::bigint,
  'a scheduled run''s usage counts toward its task (act-as turns included)');
select ok(scheduler.finish_execution('e1000000-0000-0000-0000-000000000001', 'w1', 0, 'succeeded', 'done'),
  'the run finishes');
select results_eq(
  $$select status, last_error, (state ->> 'budget_paused_until')::timestamptz = (current_date + 1)::timestamp at time zone 'UTC'
    from public.agent_tasks where name = 'sixty'$$,
  $$values ('paused'::text,
            'this task''s daily token budget is used up: 150 of 100 tokens today (max_tokens_per_day); it renews at 00:00 UTC'::text,
            true)$$,
  'the task that used up its budget pauses itself with a readable last_error, until the next UTC day');
select is((select count(*)::integer from public.notifications where user_id = tests.get_user_id('alice') and kind = 'task_paused'),
  1, 'its owner is notified');
select results_eq(
  $$select title, body from public.notifications where user_id = tests.get_user_id('alice') and kind = 'task_paused'$$,
  $$values ('Scheduled task "sixty" paused until tomorrow'::text,
            'this task''s daily token budget is used up: 150 of 100 tokens today (max_tokens_per_day); it renews at 00:00 UTC'::text)$$,
  'the notice says until when and which limit');
select is(scheduler.resume_after_budget(), 0, 'it stays paused today');
select is(scheduler.resume_after_budget(now() + interval '1 day'), 1, 'and resumes the next day');
select is((select status from public.agent_tasks where name = 'sixty'), 'active',
  'active again, without the budget mark');

-- a task with no budget of its own pauses when its user's tokens are used up
-- (finish_executions checks only the tasks that can be over a budget)
update scheduler.limits set value = '1000' where name = 'max_tokens_per_user_per_day';
select is(scheduler.users_over_token_budget(array[tests.get_user_id('alice'), tests.get_user_id('bob'),
                                                  tests.get_user_id('alice')]),
  array[tests.get_user_id('alice')], 'of a batch''s users, the ones over their daily tokens, once each');
update public.agent_tasks set max_runs_per_day = null where id = 'd1000000-0000-0000-0000-000000000001';
insert into public.agent_task_executions (id, task_id, user_id, agent_id, trigger_type, status, scheduled_for,
                                         conversation_id, started_at, worker_id, lease_expires_at)
values ('e1000000-0000-0000-0000-000000000002', 'd1000000-0000-0000-0000-000000000001', tests.get_user_id('alice'),
        'a1000000-0000-0000-0000-000000000001', 'manual', 'running', now() + interval '1 s',
        'c1000000-0000-0000-0000-000000000001', now(), 'w1', now() + interval '30 s');
select is((select count(*)::integer from scheduler.finish_executions('w1',
            '[{"id": "e1000000-0000-0000-0000-000000000002", "attempt": 0, "status": "succeeded"}]')), 1,
  'a run of a task without budgets finishes');
select results_eq(
  $$select status, last_error from public.agent_tasks where id = 'd1000000-0000-0000-0000-000000000001'$$,
  $$values ('paused'::text, 'daily token budget used up: 1200 of 1000 tokens today (max_tokens_per_user_per_day); it renews at 00:00 UTC'::text)$$,
  'and its task pauses, its owner''s daily tokens being used up');
update scheduler.limits set value = '1000000' where name = 'max_tokens_per_user_per_day';

-- =========================================================================
-- Refusals that reveal nothing
-- =========================================================================
select throws_ok($$select chat_private.rate_limit_hit(gen_random_uuid(), 10, 60)$$,
  '28000', 'unknown user', 'a user who does not exist is an invalid credential (401), not a foreign key error (500)');
select tests.authenticate_as('alice');
select is(
  tests.caught($$insert into public.chat_messages_v2 (conversation_id, role, content)
    values ('c2000000-0000-0000-0000-000000000002', 'user', 'x')$$),
  tests.caught($$insert into public.chat_messages_v2 (conversation_id, role, content)
    values (gen_random_uuid(), 'user', 'x')$$),
  'posting into another user''s conversation answers exactly like a conversation that does not exist');
select is(
  array(select tests.caught(format($$insert into public.chat_messages_v2 (conversation_id, role, content, metadata)
           values ('c1000000-0000-0000-0000-000000000001', 'user', 'x', %L)$$, m))
        from unnest(array['{"Source": "scheduler"}', '{"source": "Scheduler"}', '{"source": "scheduler "}',
                          '{"source": "scheduler\u200b"}', '{"source\u200b": "scheduler"}',
                          '{"task_id": "d1000000-0000-0000-0000-000000000001"}',
                          '{"execution_id": "e1000000-0000-0000-0000-000000000001"}', '{"Trigger-Type": "manual"}']) m),
  array_fill('42501: only the scheduler may write messages with metadata.source = ''scheduler'' or an execution_id'::text,
             array[8]),
  'look-alike scheduler metadata is refused from a user, whatever its spelling');
select lives_ok($$insert into public.chat_messages_v2 (conversation_id, role, content, metadata)
    values ('c1000000-0000-0000-0000-000000000001', 'user', 'x', '{"source": "web", "client": "ios"}')$$,
  'a user''s own metadata is still accepted');
select throws_ok($$select worker_id from public.agent_task_executions$$, '42501', null,
  'users cannot read which worker ran their executions');
select throws_ok($$select error_detail from public.agent_task_executions$$, '42501', null,
  'nor the worker''s own error text');
select tests.clear_authentication();
select is(scheduler.public_error('chat function unreachable: ConnectError: [Errno 111] connect to 10.0.0.7:5432', 'transient'),
  'the run failed on a temporary error (details in the operator''s logs)',
  'the worker''s internal error text becomes a stable sentence for users');
select is(scheduler.public_error('chat function 429 budget_exhausted: daily token budget used up', 'permanent'),
  'chat function 429 budget_exhausted: daily token budget used up',
  'the chat function''s own answers (a stable code) are shown as they are');

select * from finish();
rollback;
