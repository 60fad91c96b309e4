-- Invariants the database enforces whoever writes: lengths, the execution
-- state invariant, schedule consistency and the write-time validators (cron,
-- time zone, template variables) with readable messages.
begin;
\ir helpers/personas.psql
select plan(45);

select tests.create_user('alice');
insert into public.agents (id, user_id, name)
values ('a1000000-0000-0000-0000-000000000001', tests.get_user_id('alice'), 'Alice agent');
insert into public.conversation_sessions (id, user_id, agent_id)
values ('c1000000-0000-0000-0000-000000000001', tests.get_user_id('alice'), 'a1000000-0000-0000-0000-000000000001');
insert into public.agent_tasks (id, user_id, agent_id, name, prompt_template, schedule_type, interval_seconds)
values ('d1000000-0000-0000-0000-000000000001', tests.get_user_id('alice'),
        'a1000000-0000-0000-0000-000000000001', 'Digest', 'Summarise {{TODAY}}', 'interval', 3600);

select tests.authenticate_as('alice');

-- Conversation title ------------------------------------------------------------
select lives_ok(
  $$insert into public.conversation_sessions (agent_id, title)
    values ('a1000000-0000-0000-0000-000000000001', repeat('t', 200))$$,
  'a title of exactly 200 characters is accepted');
select throws_ok(
  $$insert into public.conversation_sessions (agent_id, title)
    values ('a1000000-0000-0000-0000-000000000001', repeat('t', 201))$$,
  '23514', null, 'a title longer than 200 characters is rejected');
select throws_ok(
  $$update public.conversation_sessions set title = repeat('t', 201)
    where id = 'c1000000-0000-0000-0000-000000000001'$$,
  '23514', null, 'renaming a conversation to more than 200 characters is rejected');

-- User message length ---------------------------------------------------------------
select lives_ok(
  $$insert into public.chat_messages_v2 (conversation_id, role, content)
    values ('c1000000-0000-0000-0000-000000000001', 'user', repeat('m', 10000))$$,
  'a user message of exactly 10,000 characters is accepted');
select throws_ok(
  $$insert into public.chat_messages_v2 (conversation_id, role, content)
    values ('c1000000-0000-0000-0000-000000000001', 'user', repeat('m', 10001))$$,
  '23514', null, 'a user message longer than 10,000 characters is rejected');

select tests.clear_authentication();
select throws_ok(
  $$insert into public.chat_messages_v2 (conversation_id, role, content)
    values ('c1000000-0000-0000-0000-000000000001', 'moderator', 'hi')$$,
  '23514', null, 'a message role outside user/assistant/system/tool is rejected');
select lives_ok(
  $$insert into public.chat_messages_v2 (conversation_id, role, content)
    values ('c1000000-0000-0000-0000-000000000001', 'assistant', repeat('r', 10001))$$,
  'an assistant reply may be longer than 10,000 characters');
select throws_ok(
  $$insert into public.chat_messages_v2 (conversation_id, role, content, metadata)
    values ('c1000000-0000-0000-0000-000000000001', 'user', 'x', '{"source": "scheduler"}')$$,
  '23514', null, 'even the owner of the tables cannot write a scheduler message without an execution_id');
select throws_ok(
  $$insert into public.chat_messages_v2 (conversation_id, role, content, tool_calls)
    values ('c1000000-0000-0000-0000-000000000001', 'assistant', 'x', '{"name": "t"}')$$,
  '23514', null, 'tool_calls must be a JSON array');

-- finished_at iff terminal status ---------------------------------------------------
select throws_ok(
  $$insert into public.agent_task_executions (task_id, user_id, agent_id, trigger_type, status, scheduled_for)
    values ('d1000000-0000-0000-0000-000000000001', tests.get_user_id('alice'),
            'a1000000-0000-0000-0000-000000000001', 'manual', 'succeeded', '2030-01-01 09:00Z')$$,
  '23514', null, 'a terminal execution without finished_at is rejected');
select throws_ok(
  $$insert into public.agent_task_executions (task_id, user_id, agent_id, trigger_type, status, scheduled_for, finished_at)
    values ('d1000000-0000-0000-0000-000000000001', tests.get_user_id('alice'),
            'a1000000-0000-0000-0000-000000000001', 'manual', 'queued', '2030-01-01 09:01Z', now())$$,
  '23514', null, 'a queued execution with finished_at is rejected');
select throws_ok(
  $$insert into public.agent_task_executions (task_id, user_id, agent_id, trigger_type, status, scheduled_for)
    values ('d1000000-0000-0000-0000-000000000001', tests.get_user_id('alice'),
            'a1000000-0000-0000-0000-000000000001', 'manual', 'running', '2030-01-01 09:02Z')$$,
  '23514', null, 'a running execution without worker, lease and start time is rejected');
select throws_ok(
  $$insert into public.agent_task_executions (task_id, user_id, agent_id, trigger_type, scheduled_for, attempt, max_attempts)
    values ('d1000000-0000-0000-0000-000000000001', tests.get_user_id('alice'),
            'a1000000-0000-0000-0000-000000000001', 'manual', '2030-01-01 09:03Z', 5, 4)$$,
  '23514', null, 'an execution cannot be past its last attempt');
select lives_ok(
  $$insert into public.agent_task_executions (task_id, user_id, agent_id, trigger_type, status, scheduled_for, finished_at)
    values ('d1000000-0000-0000-0000-000000000001', tests.get_user_id('alice'),
            'a1000000-0000-0000-0000-000000000001', 'schedule', 'skipped', '2030-01-01 09:04Z', now())$$,
  'a terminal execution with finished_at is accepted');
select throws_ok(
  $$insert into public.agent_task_executions (task_id, user_id, agent_id, trigger_type, status, scheduled_for, finished_at)
    values ('d1000000-0000-0000-0000-000000000001', tests.get_user_id('alice'),
            'a1000000-0000-0000-0000-000000000001', 'schedule', 'skipped', '2030-01-01 09:04Z', now())$$,
  '23505', null, 'a second execution for the same (task_id, scheduled_for) is rejected');
select throws_ok(
  $$update public.agent_task_executions set finished_at = null
    where task_id = 'd1000000-0000-0000-0000-000000000001' and scheduled_for = '2030-01-01 09:04Z'$$,
  '23514', null, 'clearing finished_at of a terminal execution is rejected');

-- Schedule fields consistent with schedule_type ---------------------------------------
select tests.authenticate_as('alice');
select throws_ok(
  $$insert into public.agent_tasks (agent_id, name, prompt_template, schedule_type)
    values ('a1000000-0000-0000-0000-000000000001', 'x', 'p', 'cron')$$,
  '22023', 'cron expression is required', 'a cron task without cron_expression is rejected');
select throws_ok(
  $$insert into public.agent_tasks (agent_id, name, prompt_template, schedule_type, interval_seconds, cron_expression)
    values ('a1000000-0000-0000-0000-000000000001', 'x', 'p', 'interval', 60, '* * * * *')$$,
  '23514', null, 'an interval task with a cron_expression is rejected');
select throws_ok(
  $$insert into public.agent_tasks (agent_id, name, prompt_template, schedule_type)
    values ('a1000000-0000-0000-0000-000000000001', 'x', 'p', 'once')$$,
  '23514', null, 'a one-off task without run_at is rejected');
select throws_ok(
  $$insert into public.agent_tasks (agent_id, name, prompt_template, schedule_type, interval_seconds)
    values ('a1000000-0000-0000-0000-000000000001', 'x', 'p', 'manual', 60)$$,
  '23514', null, 'a manual task with an interval is rejected');
select throws_ok(
  $$insert into public.agent_tasks (agent_id, name, prompt_template, schedule_type, interval_seconds)
    values ('a1000000-0000-0000-0000-000000000001', 'x', 'p', 'interval', 0)$$,
  '23514', null, 'an interval of zero seconds is rejected');
select throws_ok(
  $$insert into public.agent_tasks (agent_id, name, prompt_template, schedule_type, starts_at, ends_at)
    values ('a1000000-0000-0000-0000-000000000001', 'x', 'p', 'manual', '2030-02-01Z', '2030-01-01Z')$$,
  '22023', null, 'a schedule that ends before it starts is rejected');
select throws_like(
  $$insert into public.agent_tasks (agent_id, name, prompt_template, schedule_type, starts_at, ends_at)
    values ('a1000000-0000-0000-0000-000000000001', 'x', 'p', 'manual', '2030-01-01Z', '2030-01-01Z')$$,
  'ends_at (%) must be later than the start of the schedule (%)', 'an empty window is refused, naming ends_at');
select throws_ok(
  $$insert into public.agent_tasks (agent_id, name, prompt_template, schedule_type, overlap_policy)
    values ('a1000000-0000-0000-0000-000000000001', 'x', 'p', 'manual', 'sometimes')$$,
  '23514', null, 'an unknown overlap_policy is rejected');
select lives_ok(
  $$insert into public.agent_tasks (agent_id, name, prompt_template, schedule_type, cron_expression, timezone)
    values ('a1000000-0000-0000-0000-000000000001', 'Weekdays', 'Plan {{TODAY}}', 'cron', ' 0 9 * * mon-fri ', 'Europe/Berlin')$$,
  'a valid cron task in an IANA time zone is accepted');
select is(
  (select cron_expression from public.agent_tasks where name = 'Weekdays'),
  '0 9 * * mon-fri', 'the cron expression is stored trimmed');

-- Cron validation with readable messages ----------------------------------------------
select alike(tests.caught(
  $$insert into public.agent_tasks (agent_id, name, prompt_template, schedule_type, cron_expression)
    values ('a1000000-0000-0000-0000-000000000001', 'x', 'p', 'cron', '61 * * * *')$$),
  '22023: invalid cron expression ''61 * * * *'': minute field%61%0-59%',
  'a minute of 61 is rejected with a message naming the field and its range');
select alike(tests.caught(
  $$insert into public.agent_tasks (agent_id, name, prompt_template, schedule_type, cron_expression)
    values ('a1000000-0000-0000-0000-000000000001', 'x', 'p', 'cron', '0 9 * *')$$),
  '22023: cron expression ''0 9 * *'' must have 5 fields (minute hour day-of-month month day-of-week), found 4',
  'a cron expression with four fields is rejected and the message explains the five fields');
select alike(tests.caught(
  $$insert into public.agent_tasks (agent_id, name, prompt_template, schedule_type, cron_expression)
    values ('a1000000-0000-0000-0000-000000000001', 'x', 'p', 'cron', '*/0 * * * *')$$),
  '22023: invalid cron expression ''*/0 * * * *'': minute field%step 0%',
  'a zero step is rejected');
select alike(tests.caught(
  $$insert into public.agent_tasks (agent_id, name, prompt_template, schedule_type, cron_expression)
    values ('a1000000-0000-0000-0000-000000000001', 'x', 'p', 'cron', '0 9 * * funday')$$),
  '22023: invalid cron expression ''0 9 * * funday'': day-of-week field%funday%',
  'an unknown day name is rejected');
select alike(tests.caught(
  $$insert into public.agent_tasks (agent_id, name, prompt_template, schedule_type, cron_expression)
    values ('a1000000-0000-0000-0000-000000000001', 'x', 'p', 'cron', '0 24 * * *')$$),
  '22023: invalid cron expression ''0 24 * * *'': hour field%24%0-23%',
  'hour 24 is rejected');
select alike(tests.caught(
  $$insert into public.agent_tasks (agent_id, name, prompt_template, schedule_type, cron_expression)
    values ('a1000000-0000-0000-0000-000000000001', 'x', 'p', 'cron', '0 0 0 * *')$$),
  '22023: invalid cron expression ''0 0 0 * *'': day-of-month field%0%1-31%',
  'day-of-month 0 is rejected');
select lives_ok(
  $$insert into public.agent_tasks (agent_id, name, prompt_template, schedule_type, cron_expression)
    values ('a1000000-0000-0000-0000-000000000001', 'Aliases', 'p', 'cron', '@daily')$$,
  'the @daily alias is accepted');
select throws_ok(
  $$update public.agent_tasks set cron_expression = '0 9 31 2 * *' where name = 'Weekdays'$$,
  '22023', null, 'an update to an invalid cron expression is rejected too');

-- Time zone --------------------------------------------------------------------------
select throws_ok(
  $$insert into public.agent_tasks (agent_id, name, prompt_template, schedule_type, timezone)
    values ('a1000000-0000-0000-0000-000000000001', 'x', 'p', 'manual', 'Mars/Olympus_Mons')$$,
  '22023', 'unknown time zone ''Mars/Olympus_Mons'': use an IANA name such as ''Europe/Berlin'' or ''UTC''',
  'an unknown time zone is rejected with a readable message');
select throws_ok(
  $$update public.agent_tasks set timezone = 'CEST+2' where name = 'Weekdays'$$,
  '22023', null, 'an update to a POSIX-style offset instead of an IANA zone is rejected');

-- Template variables -----------------------------------------------------------------
select throws_ok(
  $$insert into public.agent_tasks (agent_id, name, prompt_template, schedule_type)
    values ('a1000000-0000-0000-0000-000000000001', 'x', 'Report for {{CITY}} on {{TODAY}}', 'manual')$$,
  '22023',
  'unknown template variable {{CITY}}: define it in prompt_variables or use one of NOW, TODAY, YESTERDAY, LAST_7_DAYS, LAST_30_DAYS, WEEKDAY, MONTH',
  'an unknown template variable is rejected and the message lists the built-in ones');
select throws_like(
  $$insert into public.agent_tasks (agent_id, name, prompt_template, schedule_type)
    values ('a1000000-0000-0000-0000-000000000001', 'x', '{{A}} and {{B}} and {{A}}', 'manual')$$,
  'unknown template variables {{A}}, {{B}}: define them%',
  'several unknown variables are listed once each');
select lives_ok(
  $$insert into public.agent_tasks (agent_id, name, prompt_template, prompt_variables, schedule_type)
    values ('a1000000-0000-0000-0000-000000000001', 'City report', 'Report for {{ CITY }} on {{TODAY}}',
            '{"CITY": "Berlin"}', 'manual')$$,
  'a variable defined in prompt_variables is accepted');
select throws_ok(
  $$insert into public.agent_tasks (agent_id, name, prompt_template, prompt_variables, schedule_type)
    values ('a1000000-0000-0000-0000-000000000001', 'x', 'p', '{"TODAY": "never"}', 'manual')$$,
  '22023', 'prompt variable TODAY is built in and cannot be redefined',
  'a built-in variable cannot be redefined');
select throws_ok(
  $$insert into public.agent_tasks (agent_id, name, prompt_template, prompt_variables, schedule_type)
    values ('a1000000-0000-0000-0000-000000000001', 'x', 'p', '{"N": 3}', 'manual')$$,
  '22023', 'prompt variable N must be a string', 'a non-string variable is rejected');
select throws_ok(
  $$insert into public.agent_tasks (agent_id, name, prompt_template, prompt_variables, schedule_type)
    values ('a1000000-0000-0000-0000-000000000001', 'x', 'p', '["CITY"]', 'manual')$$,
  '22023', 'prompt_variables must be a JSON object of strings', 'prompt_variables must be an object');
select throws_ok(
  $$update public.agent_tasks set prompt_template = 'Now {{NOPE}}' where name = 'City report'$$,
  '22023', null, 'an update introducing an unknown variable is rejected');

-- Status a user may set ---------------------------------------------------------------
select throws_ok(
  $$insert into public.agent_tasks (agent_id, name, prompt_template, schedule_type, status)
    values ('a1000000-0000-0000-0000-000000000001', 'x', 'p', 'manual', 'completed')$$,
  '22023', 'a new task must be active or paused, not completed', 'a user cannot create a completed task');
select throws_ok(
  $$update public.agent_tasks set status = 'waiting_input' where name = 'City report'$$,
  '22023', 'status can be changed to active or paused only (from active)',
  'a user cannot put a task into waiting_input');

select * from finish();
rollback;
