-- Live updates for the web console (worker/console): one NOTIFY on channel
-- `console_live` per statement and per owner, naming what changed, never its
-- content. The console's one LISTEN connection hands each event only to the
-- browsers signed in as that owner (`u`), and the browser then re-reads the
-- rows through the console under the user's RLS: a payload that reached the
-- wrong process would still reveal ids only.
--
-- Statement-level triggers with transition tables: the worker finishes and
-- starts runs in batches, so a batch of 100 finishes is one trigger call and
-- one notification per user (and conversation), not 100.
--
-- Payload (JSON text, < 1 kB): {"t": table, "u": user_id, "c": conversation_id
-- or null, "ids": up to 20 row ids, "n": rows changed}.

create or replace function scheduler.console_live_notify() returns trigger
language plpgsql
security invoker
set search_path = ''
as $$
declare
  v_row record;
begin
  for v_row in execute format(
    'select c.user_id, %s as conversation_id, (array_agg(c.id order by c.id))[1:20] as ids, count(*) as n
       from changed c group by 1, 2',
    case when tg_table_name in ('chat_messages_v2', 'agent_task_executions') then 'c.conversation_id'
         when tg_table_name = 'conversation_sessions' then 'c.id'
         else 'null::uuid' end)
  loop
    perform pg_notify('console_live', json_build_object(
      't', tg_table_name, 'u', v_row.user_id, 'c', v_row.conversation_id,
      'ids', v_row.ids, 'n', v_row.n)::text);
  end loop;
  return null;
end
$$;
comment on function scheduler.console_live_notify() is
  'Statement trigger: one NOTIFY console_live per owner (and conversation) naming the changed rows.';
revoke execute on function scheduler.console_live_notify() from public, anon, authenticated;

do $$
declare
  v_table text;
begin
  foreach v_table in array array['chat_messages_v2', 'conversation_sessions', 'agent_tasks',
                                 'agent_task_executions', 'notifications'] loop
    execute format('drop trigger if exists console_live_insert on public.%I', v_table);
    execute format('create trigger console_live_insert after insert on public.%I
                      referencing new table as changed
                      for each statement execute function scheduler.console_live_notify()', v_table);
    execute format('drop trigger if exists console_live_update on public.%I', v_table);
    execute format('create trigger console_live_update after update on public.%I
                      referencing new table as changed
                      for each statement execute function scheduler.console_live_notify()', v_table);
  end loop;
end
$$;
