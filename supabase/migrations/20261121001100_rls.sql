-- Row Level Security and privileges.
--
-- Every table has RLS. Policies are one per operation, `to authenticated`,
-- with `(select auth.uid())` so Postgres evaluates it once per statement.
-- anon gets nothing. Table privileges are narrowed to the columns a client
-- may write: counters, schedule bookkeeping and scheduler fields are written
-- only by the queue's functions.

-- The owner-only policy set of a user table, stated once: RLS on, and for
-- each operation given a name (a sentence) its policy `to authenticated` on
-- `user_id = (select auth.uid())` (an update checks the old and the new row).
-- An operation given no name gets no policy: no client reaches its rows that
-- way (or a policy of its own, written next to the call, says more). Used
-- here and by the integrations' tables. Migration-time only: no client role
-- may call it.
create or replace procedure scheduler.create_owner_policies(
  p_table regclass,
  p_select text default null,
  p_insert text default null,
  p_update text default null,
  p_delete text default null
)
language plpgsql
set search_path = ''
as $$
declare
  v_owner constant text := 'user_id = (select auth.uid())';
begin
  execute format('alter table %s enable row level security', p_table);
  if p_select is not null then
    execute format('create policy %I on %s for select to authenticated using (%s)', p_select, p_table, v_owner);
  end if;
  if p_insert is not null then
    execute format('create policy %I on %s for insert to authenticated with check (%s)', p_insert, p_table, v_owner);
  end if;
  if p_update is not null then
    execute format('create policy %I on %s for update to authenticated using (%s) with check (%s)',
                   p_update, p_table, v_owner, v_owner);
  end if;
  if p_delete is not null then
    execute format('create policy %I on %s for delete to authenticated using (%s)', p_delete, p_table, v_owner);
  end if;
end
$$;
revoke execute on procedure scheduler.create_owner_policies(regclass, text, text, text, text)
  from public, anon, authenticated;

revoke all on public.agents, public.conversation_sessions, public.chat_messages_v2,
  public.agent_tasks, public.agent_task_executions, public.notifications
  from anon, authenticated;

-- agents -------------------------------------------------------------------
grant select, delete on public.agents to authenticated;
grant insert (name, system_prompt, model, settings) on public.agents to authenticated;
grant update (name, system_prompt, model, settings) on public.agents to authenticated;

call scheduler.create_owner_policies('public.agents',
  p_select => 'Users can see their own agents',
  p_insert => 'Users can create agents for themselves',
  p_update => 'Users can update their own agents',
  p_delete => 'Users can delete their own agents');

-- conversation_sessions -----------------------------------------------------
grant select, delete on public.conversation_sessions to authenticated;
grant insert (agent_id, title) on public.conversation_sessions to authenticated;
grant update (title, archived_at, deleted_at) on public.conversation_sessions to authenticated;

-- the composite foreign key (agent_id, user_id) already requires the agent
-- to be the caller's own
call scheduler.create_owner_policies('public.conversation_sessions',
  p_select => 'Users can see their own conversations',
  p_insert => 'Users can start conversations with their own agents',
  p_update => 'Users can rename, archive and delete their own conversations',
  p_delete => 'Users can delete their own conversations');

-- chat_messages_v2 -----------------------------------------------------------
grant select on public.chat_messages_v2 to authenticated;
grant insert (conversation_id, role, content, metadata) on public.chat_messages_v2 to authenticated;

call scheduler.create_owner_policies('public.chat_messages_v2',
  p_select => 'Users can read messages of their own conversations');
-- users write their own user-role messages, never scheduler ones
create policy "Users can post their own messages in their own conversations" on public.chat_messages_v2
  for insert to authenticated with check (
    user_id = (select auth.uid())
    and role = 'user'
    and execution_id is null
    and (metadata ->> 'source') is distinct from 'scheduler'
    and exists (select 1 from public.conversation_sessions c
                where c.id = conversation_id and c.user_id = (select auth.uid()) and c.deleted_at is null)
  );

-- agent_tasks ----------------------------------------------------------------
grant select, delete on public.agent_tasks to authenticated;
grant insert (agent_id, name, description, prompt_template, prompt_variables, schedule_type,
              cron_expression, interval_seconds, run_at, timezone, starts_at, ends_at, max_runs,
              conversation_mode, conversation_id, priority, max_retries, timeout_seconds,
              overlap_policy, misfire_policy, misfire_grace_seconds, status, notify_on, system_addon,
              max_runs_per_day, max_tokens_per_day)
  on public.agent_tasks to authenticated;
grant update (name, description, prompt_template, prompt_variables, schedule_type,
              cron_expression, interval_seconds, run_at, timezone, starts_at, ends_at, max_runs,
              conversation_mode, conversation_id, priority, max_retries, timeout_seconds,
              overlap_policy, misfire_policy, misfire_grace_seconds, status, notify_on, system_addon,
              max_runs_per_day, max_tokens_per_day)
  on public.agent_tasks to authenticated;

-- the composite foreign keys require the agent and the target conversation to
-- be the caller's own (and the conversation to be with that agent)
call scheduler.create_owner_policies('public.agent_tasks',
  p_select => 'Users can see their own tasks',
  p_insert => 'Users can create tasks for their own agents',
  p_update => 'Users can update their own tasks',
  p_delete => 'Users can delete their own tasks');

-- agent_task_executions: read-only for users (run, cancel, retry go through
-- rpc), every column but worker_id (which machine ran it) and error_detail
-- (the worker's own error text; users read error, scheduler.public_error of
-- it): those are the operator's. Clients name their columns (supabase-js
-- `select('id, status, …')`); `select *` is refused for the two hidden ones.
grant select (id, task_id, user_id, agent_id, trigger_type, status, scheduled_for, run_after, attempt,
              max_attempts, priority, timeout_seconds, exclusive, lease_expires_at, heartbeat_at,
              started_at, finished_at, duration_ms, conversation_id, resolved_prompt, user_message_id,
              assistant_message_id, output, error, error_kind, usage, retry_of, cancel_requested_at,
              created_at, updated_at)
  on public.agent_task_executions to authenticated;
call scheduler.create_owner_policies('public.agent_task_executions',
  p_select => 'Users can see executions of their own tasks');

-- notifications --------------------------------------------------------------
grant select, delete on public.notifications to authenticated;
grant update (read_at) on public.notifications to authenticated;
call scheduler.create_owner_policies('public.notifications',
  p_select => 'Users can see their own notifications',
  p_update => 'Users can mark their own notifications read',
  p_delete => 'Users can delete their own notifications');

-- Functions -------------------------------------------------------------------
-- Supabase grants EXECUTE on new public functions to anon and authenticated by
-- default; only the client API stays callable, and only when signed in.
revoke execute on all functions in schema public from public, anon, authenticated;
grant execute on function
  public.run_task_now(uuid),
  public.pause_task(uuid),
  public.resume_task(uuid),
  public.cancel_execution(uuid),
  public.retry_execution(uuid),
  public.list_conversations(uuid, integer, text, boolean),
  public.list_messages(uuid, integer, text),
  public.list_executions(uuid, integer, text),
  public.list_tasks(integer, text, uuid),
  public.page_cursor_position(text, integer),
  public.page_cursor(timestamptz, uuid),
  public.validate_schedule(text, text, text, text, jsonb)
to authenticated, service_role;
grant execute on function
  public.mark_notification_read(uuid),
  public.mark_all_notifications_read(),
  public.unread_notification_count()
to authenticated, service_role;

revoke execute on all functions in schema scheduler from public, anon, authenticated;
revoke execute on all functions in schema chat_private from public, anon, authenticated;
