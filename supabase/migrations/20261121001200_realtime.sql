-- Realtime: the browser sees new messages, execution status, task state and
-- notifications live. Supabase Realtime applies the tables' RLS per
-- subscriber, so each user receives only their own rows.
do $$
declare
  v_table text;
begin
  if not exists (select 1 from pg_publication where pubname = 'supabase_realtime') then
    raise notice 'publication supabase_realtime does not exist; skipping realtime setup';
    return;
  end if;
  foreach v_table in array array['chat_messages_v2', 'conversation_sessions', 'agent_tasks',
                                 'agent_task_executions', 'notifications'] loop
    if not exists (select 1 from pg_publication_tables
                   where pubname = 'supabase_realtime' and schemaname = 'public' and tablename = v_table) then
      execute format('alter publication supabase_realtime add table public.%I', v_table);
    end if;
  end loop;
end
$$;
