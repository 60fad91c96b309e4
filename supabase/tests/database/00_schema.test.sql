-- Schema contract: tables, columns, RLS on every table, the indexes of the hot
-- queries, the functions, and who may execute them.
begin;
\ir helpers/personas.psql
select plan(89);

-- Tables ----------------------------------------------------------------------
select has_table('public', 'agents', 'public.agents exists');
select has_table('public', 'conversation_sessions', 'public.conversation_sessions exists');
select has_table('public', 'chat_messages_v2', 'public.chat_messages_v2 exists');
select has_table('public', 'agent_tasks', 'public.agent_tasks exists');
select has_table('public', 'agent_task_executions', 'public.agent_task_executions exists');
select has_table('public', 'notifications', 'public.notifications exists');
select has_table('scheduler', 'workers', 'scheduler.workers exists');
select has_table('chat_private', 'rate_limits', 'chat_private.rate_limits exists');

-- Contract columns (the frontend, operators and the worker rely on the names)
select columns_are_present.ok
from (
  select ok(
    not exists (
      select 1 from unnest(cols) c
      where not exists (select 1 from information_schema.columns ic
                        where ic.table_schema = 'public' and ic.table_name = tbl and ic.column_name = c)),
    format('public.%s has the contract columns %s', tbl, array_to_string(cols, ', '))) as ok
  from (values
    ('agents', array['id', 'user_id', 'name', 'system_prompt', 'model', 'settings', 'created_at']),
    ('conversation_sessions', array['id', 'user_id', 'agent_id', 'title', 'archived_at', 'deleted_at',
                                    'last_message_at', 'message_count', 'last_message_preview']),
    ('chat_messages_v2', array['id', 'conversation_id', 'role', 'content', 'metadata', 'tool_calls',
                               'execution_id', 'created_at']),
    ('agent_tasks', array['id', 'user_id', 'agent_id', 'name', 'prompt_template', 'prompt_variables',
                          'schedule_type', 'cron_expression', 'interval_seconds', 'run_at', 'timezone',
                          'ends_at', 'max_runs', 'conversation_mode', 'conversation_id', 'priority',
                          'max_retries', 'timeout_seconds', 'overlap_policy', 'misfire_policy', 'status',
                          'state', 'next_run_at', 'last_run_at', 'run_count', 'success_count',
                          'failure_count', 'last_error']),
    ('agent_task_executions', array['id', 'task_id', 'trigger_type', 'status', 'scheduled_for', 'run_after',
                                    'attempt', 'priority', 'worker_id', 'lease_expires_at', 'started_at',
                                    'finished_at', 'duration_ms', 'conversation_id', 'resolved_prompt',
                                    'user_message_id', 'assistant_message_id', 'output', 'error',
                                    'error_kind', 'usage']),
    ('notifications', array['id', 'user_id', 'kind', 'title', 'body', 'data', 'read_at'])
  ) as t(tbl, cols)
) as columns_are_present;

select col_type_is('public', 'chat_messages_v2', 'metadata', 'jsonb', 'chat_messages_v2.metadata is jsonb');
select col_type_is('public', 'chat_messages_v2', 'tool_calls', 'jsonb', 'chat_messages_v2.tool_calls is jsonb');
select col_type_is('public', 'agent_task_executions', 'scheduled_for', 'timestamp with time zone',
                   'agent_task_executions.scheduled_for is timestamptz');
select col_not_null('public', 'agent_tasks', 'user_id', 'every task has an owner');
select col_not_null('public', 'chat_messages_v2', 'user_id', 'every message has an owner');
select col_default_is('public', 'agent_tasks', 'timezone', 'UTC', 'a task runs in UTC unless told otherwise');
select col_default_is('public', 'agent_tasks', 'overlap_policy', 'skip', 'overlap_policy defaults to skip');

-- Row Level Security ----------------------------------------------------------
select ok(c.relrowsecurity, format('RLS is enabled on %s.%s', n.nspname, c.relname))
from pg_class c join pg_namespace n on n.oid = c.relnamespace
where (n.nspname, c.relname) in (('public', 'agents'), ('public', 'conversation_sessions'),
                                 ('public', 'chat_messages_v2'), ('public', 'agent_tasks'),
                                 ('public', 'agent_task_executions'), ('public', 'notifications'),
                                 ('scheduler', 'workers'), ('chat_private', 'rate_limits'))
order by n.nspname, c.relname;

select is_empty(
  $$select n.nspname || '.' || c.relname from pg_class c join pg_namespace n on n.oid = c.relnamespace
    where c.relkind in ('r', 'p') and n.nspname in ('public', 'scheduler', 'chat_private')
      and not c.relrowsecurity$$,
  'no table in public, scheduler or chat_private is left without RLS');

select is_empty(
  $$select tablename || ': ' || policyname from pg_policies
    where schemaname = 'public' and cmd = 'ALL'$$,
  'no policy is a catch-all "for all" policy');

select is_empty(
  $$select tablename || ': ' || policyname from pg_policies
    where schemaname = 'public' and roles <> '{authenticated}'::name[]$$,
  'every policy applies to authenticated only (anon gets nothing)');

select is_empty(
  $$select tablename || ': ' || policyname from pg_policies
    where schemaname = 'public'
      and coalesce(qual, '') || coalesce(with_check, '') like '%auth.uid()%'
      and coalesce(qual, '') || coalesce(with_check, '') not like '%SELECT auth.uid()%'$$,
  'every policy wraps auth.uid() in a sub-select so it is evaluated once per statement');

select policies_are('public', 'agent_task_executions',
  array['Users can see executions of their own tasks'],
  'executions have a select policy only: users never write the queue directly');

select policies_are('public', 'chat_messages_v2',
  array['Users can read messages of their own conversations',
        'Users can post their own messages in their own conversations'],
  'messages can be read and posted, never updated or deleted through a policy');

select policies_are('public', 'notifications',
  array['Users can see their own notifications', 'Users can mark their own notifications read',
        'Users can delete their own notifications'],
  'notifications cannot be inserted by users');

-- Indexes of the hot queries ---------------------------------------------------
select has_index('public', 'agent_task_executions', 'agent_task_executions_claim_idx',
  array['priority_class', 'turn', 'run_after'], 'the claim scans queued executions by operator class then fair turn');
select has_index('public', 'agent_task_executions', 'agent_task_executions_lease_idx',
  array['lease_expires_at'], 'the rescuer scans running executions by lease');
select has_index('public', 'agent_task_executions', 'agent_task_executions_active_task_idx',
  array['task_id'], 'overlap checks find a task''s active executions by index');
select has_index('public', 'agent_task_executions', 'agent_task_executions_task_history_idx',
  array['task_id', 'created_at', 'id'], 'a task''s history is read by index, keyset on (created_at, id)');
select index_is_unique('public', 'agent_task_executions', 'agent_task_executions_occurrence_key',
  'one scheduled occurrence is unique per (task_id, scheduled_for)');
select has_index('public', 'agent_tasks', 'agent_tasks_due_idx', array['next_run_at'],
  'the due scan reads active tasks by next_run_at');
select has_index('public', 'chat_messages_v2', 'chat_messages_v2_conversation_idx',
  array['conversation_id', 'created_at', 'id'], 'a conversation''s history is read by index, oldest first');
select index_is_unique('public', 'chat_messages_v2', 'chat_messages_v2_execution_role_key',
  'one user message and one assistant reply per execution');
select has_index('public', 'notifications', 'notifications_user_idx', array['user_id', 'created_at'],
  'a user''s notifications are read by index');
select is_empty(
  $$select format('%s.%s(%s)', c.conrelid::regclass, c.conname, a.attname)
    from pg_constraint c
    join pg_attribute a on a.attrelid = c.conrelid and a.attnum = c.conkey[1]
    where c.contype = 'f' and c.confrelid = 'public.agent_task_executions'::regclass
      and not exists (select 1 from pg_index i
                      where i.indrelid = c.conrelid and i.indkey[0] = c.conkey[1]
                        and (i.indpred is null
                             or pg_get_expr(i.indpred, i.indrelid) = format('(%I IS NOT NULL)', a.attname)))$$,
  'every foreign key to agent_task_executions has a usable index, so purge_history never scans messages');

-- Functions --------------------------------------------------------------------
select has_function('scheduler', 'enqueue_due', array['timestamp with time zone', 'integer'],
  'scheduler.enqueue_due(p_now, p_limit) exists');
select has_function('scheduler', 'claim_executions',
  array['text', 'integer', 'integer', 'integer', 'timestamp with time zone'],
  'scheduler.claim_executions exists');
select has_function('scheduler', 'heartbeat',
  array['text', 'uuid[]', 'integer', 'integer', 'timestamp with time zone'], 'scheduler.heartbeat exists');
select has_function('scheduler', 'start_execution',
  array['uuid', 'text', 'integer', 'text', 'text', 'timestamp with time zone'], 'scheduler.start_execution exists');
select has_function('scheduler', 'finish_execution',
  array['uuid', 'text', 'integer', 'text', 'text', 'text', 'text', 'uuid', 'jsonb', 'timestamp with time zone'],
  'scheduler.finish_execution exists');
select has_function('scheduler', 'requeue_later',
  array['uuid', 'text', 'integer', 'text', 'text', 'double precision', 'timestamp with time zone', 'boolean'],
  'scheduler.requeue_later exists');
select has_function('scheduler', 'release_executions', array['text', 'uuid[]', 'timestamp with time zone'],
  'scheduler.release_executions exists');
select has_function('scheduler', 'rescue_expired', array['timestamp with time zone'],
  'scheduler.rescue_expired exists');
select has_function('scheduler', 'cancel_execution', array['uuid', 'text', 'timestamp with time zone'],
  'scheduler.cancel_execution exists');
select has_function('public', 'run_task_now', array['uuid'], 'public.run_task_now exists');
select has_function('public', 'pause_task', array['uuid'], 'public.pause_task exists');
select has_function('public', 'resume_task', array['uuid'], 'public.resume_task exists');
select has_function('public', 'cancel_execution', array['uuid'], 'public.cancel_execution exists');
select has_function('public', 'retry_execution', array['uuid'], 'public.retry_execution exists');
select has_function('public', 'list_conversations', array['uuid', 'integer', 'text', 'boolean'],
  'public.list_conversations exists');
select has_function('chat_private', 'check_act_as', array['uuid', 'uuid', 'uuid'], 'chat_private.check_act_as exists');
select has_function('chat_private', 'record_assistant_reply',
  array['uuid', 'uuid', 'text', 'jsonb', 'jsonb', 'uuid'], 'chat_private.record_assistant_reply exists');
select has_function('chat_private', 'rate_limit_hit',
  array['uuid', 'integer', 'integer', 'timestamp with time zone', 'text'], 'chat_private.rate_limit_hit exists');

select is_empty(
  $$select p.oid::regprocedure::text from pg_proc p
    where p.pronamespace in ('public'::regnamespace, 'scheduler'::regnamespace, 'chat_private'::regnamespace)
      and p.prosecdef
      and not coalesce(p.proconfig, '{}') @> array['search_path=""']$$,
  'every security definer function pins search_path to the empty string');

-- Privileges: the worker-only and chat-only schemas --------------------------------
select ok(not has_schema_privilege('anon', 'scheduler', 'usage'), 'anon cannot use schema scheduler');
select ok(not has_schema_privilege('authenticated', 'scheduler', 'usage'), 'authenticated cannot use schema scheduler');
select ok(not has_schema_privilege('authenticated', 'chat_private', 'usage'),
  'authenticated cannot use schema chat_private');
select is_empty(
  $$select p.oid::regprocedure::text from pg_proc p
    where p.pronamespace = 'scheduler'::regnamespace and has_function_privilege('anon', p.oid, 'execute')$$,
  'no scheduler function is executable by anon');
select is_empty(
  $$select p.oid::regprocedure::text from pg_proc p
    where p.pronamespace = 'scheduler'::regnamespace and has_function_privilege('authenticated', p.oid, 'execute')$$,
  'no scheduler function is executable by authenticated');
select is_empty(
  $$select p.oid::regprocedure::text from pg_proc p
    where p.pronamespace = 'chat_private'::regnamespace
      and (has_function_privilege('anon', p.oid, 'execute') or has_function_privilege('authenticated', p.oid, 'execute'))$$,
  'no chat_private function is executable by anon or authenticated');
select ok(has_function_privilege('task_worker',
  'scheduler.claim_executions(text, integer, integer, integer, timestamp with time zone)', 'execute'),
  'the worker role can claim executions');
select ok(has_function_privilege('task_worker',
  'scheduler.finish_execution(uuid, text, integer, text, text, text, text, uuid, jsonb, timestamp with time zone)', 'execute'),
  'the worker role can finish executions');
select ok(has_function_privilege('service_role', 'chat_private.record_assistant_reply(uuid, uuid, text, jsonb, jsonb, uuid)', 'execute'),
  'service_role (the chat function) can record assistant replies');
select ok(not has_function_privilege('task_worker', 'chat_private.record_assistant_reply(uuid, uuid, text, jsonb, jsonb, uuid)', 'execute'),
  'the worker role cannot write assistant replies directly');
select ok(not has_table_privilege('task_worker', 'public.agent_task_executions', 'update'),
  'the worker role has no direct write on the queue table: it goes through the guarded transitions');

-- Privileges: the client API ------------------------------------------------------
select ok(has_function_privilege('authenticated', 'public.run_task_now(uuid)', 'execute'),
  'authenticated can run its tasks now');
select ok(has_function_privilege('authenticated', 'public.list_conversations(uuid, integer, text, boolean)', 'execute'),
  'authenticated can list its conversations');
select is_empty(
  $$select p.oid::regprocedure::text from pg_proc p
    where p.pronamespace = 'public'::regnamespace and has_function_privilege('anon', p.oid, 'execute')$$,
  'no public function is executable by anon');
select is_empty(
  $$select p.oid::regprocedure::text from pg_proc p
    where p.pronamespace = 'public'::regnamespace and has_function_privilege('public', p.oid, 'execute')$$,
  'no public function is executable by PUBLIC');

-- Privileges: tables -------------------------------------------------------------
select is_empty(
  $$select table_name || ': ' || privilege_type from information_schema.role_table_grants
    where grantee = 'anon' and table_schema = 'public'$$,
  'anon has no privilege on any public table');
select ok(not has_table_privilege('authenticated', 'public.agent_task_executions', 'insert')
          and not has_table_privilege('authenticated', 'public.agent_task_executions', 'update')
          and not has_table_privilege('authenticated', 'public.agent_task_executions', 'delete'),
  'authenticated can only read executions');
select ok(not has_table_privilege('authenticated', 'public.notifications', 'insert'),
  'authenticated cannot create notifications');
select ok(not has_column_privilege('authenticated', 'public.agent_tasks', 'run_count', 'update')
          and not has_column_privilege('authenticated', 'public.agent_tasks', 'next_run_at', 'update')
          and not has_column_privilege('authenticated', 'public.agent_tasks', 'state', 'update')
          and not has_column_privilege('authenticated', 'public.agent_tasks', 'user_id', 'update'),
  'authenticated cannot write a task''s counters, next_run_at, state or owner');
select ok(not has_column_privilege('authenticated', 'public.chat_messages_v2', 'execution_id', 'insert')
          and not has_column_privilege('authenticated', 'public.chat_messages_v2', 'user_id', 'insert'),
  'authenticated cannot set execution_id or user_id on a message');
select ok(not has_column_privilege('authenticated', 'public.conversation_sessions', 'message_count', 'update')
          and not has_column_privilege('authenticated', 'public.conversation_sessions', 'user_id', 'update')
          and not has_column_privilege('authenticated', 'public.conversation_sessions', 'agent_id', 'update'),
  'authenticated cannot write a conversation''s counters, owner or agent');
select ok(not has_table_privilege('authenticated', 'scheduler.workers', 'select'),
  'authenticated cannot read the worker registry');
select ok(not has_table_privilege('authenticated', 'chat_private.rate_limits', 'select'),
  'authenticated cannot read the rate limit counters');

-- Realtime --------------------------------------------------------------------------
select set_eq(
  $$select tablename::text from pg_publication_tables
    where pubname = 'supabase_realtime' and schemaname = 'public'
      and tablename in ('chat_messages_v2', 'conversation_sessions', 'agent_tasks',
                        'agent_task_executions', 'notifications')$$,
  array['chat_messages_v2', 'conversation_sessions', 'agent_tasks', 'agent_task_executions', 'notifications'],
  'the live tables are in the supabase_realtime publication');

select * from finish();
rollback;
