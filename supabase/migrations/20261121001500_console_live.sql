-- Live updates for the web console (worker/console): one NOTIFY on channel
-- `console_live` per statement and per watched owner, naming what changed,
-- never its content. The console's one LISTEN connection hands each event
-- only to the browsers signed in as that owner (`u`), and the browser then
-- re-reads the rows through the console under the user's RLS: a payload that
-- reached the wrong process would still reveal ids only.
--
-- Statement-level triggers with transition tables: the worker finishes and
-- starts runs in batches, so a batch of 100 finishes is one trigger call and
-- one notification per user (and conversation), not 100.
--
-- Only watched owners are announced. A console registers the users it has a
-- browser open for in scheduler.console_watchers (scheduler.console_watch,
-- renewed while the browser listens, expiring a minute after it stops). With
-- nobody watching, a statement costs the trigger one index probe and sends
-- nothing: NOTIFY takes a cluster-wide lock at commit that serialises every
-- notifying transaction, and the queue's claims and finishes must not queue
-- behind it for pages nobody has open (bench/bench_queue.py measured 10–15 %
-- of the queue core's throughput). With someone watching, only that owner's
-- rows are announced.
--
-- Payload (JSON text, < 1 kB): {"t": table, "u": user_id, "c": conversation_id
-- or null, "ids": up to 20 row ids, "n": rows changed}.

create table scheduler.console_watchers (
  user_id uuid not null,
  -- the console process that holds the browser connection (one per process)
  console_id uuid not null,
  expires_at timestamptz not null,
  primary key (user_id, console_id)
);
alter table scheduler.console_watchers enable row level security;
comment on table scheduler.console_watchers is
  'Owners a console has a browser listening for; the live triggers announce only their rows.';
create index console_watchers_expires_idx on scheduler.console_watchers (expires_at);

-- A console's whole watch list, replaced: p_user_ids are watched for
-- p_ttl_seconds more, this console's other rows are dropped, and every
-- console's expired rows go. Returns how many this console watches.
create or replace function scheduler.console_watch(p_console_id uuid, p_user_ids uuid[],
                                                   p_ttl_seconds integer default 60)
returns integer
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_count integer;
begin
  if p_console_id is null or p_ttl_seconds is null or p_ttl_seconds not between 1 and 3600 then
    raise exception 'console_watch: a console id and a ttl of 1 to 3600 seconds are required'
      using errcode = '22023';
  end if;
  if cardinality(p_user_ids) > 100000 then
    raise exception 'console_watch: at most 100000 users per console' using errcode = '22023';
  end if;
  delete from scheduler.console_watchers w
  where w.expires_at < now()
     or (w.console_id = p_console_id and w.user_id <> all (coalesce(p_user_ids, '{}')));
  insert into scheduler.console_watchers (user_id, console_id, expires_at)
  select distinct u, p_console_id, now() + make_interval(secs => p_ttl_seconds)
  from unnest(coalesce(p_user_ids, '{}')) u
  where u is not null
  order by 1
  on conflict (user_id, console_id) do update set expires_at = excluded.expires_at;
  get diagnostics v_count = row_count;
  return v_count;
end
$$;
comment on function scheduler.console_watch(uuid, uuid[], integer) is
  'The console''s watch list: the owners whose changes console_live announces, for p_ttl_seconds.';
revoke execute on function scheduler.console_watch(uuid, uuid[], integer) from public, anon, authenticated;
grant execute on function scheduler.console_watch(uuid, uuid[], integer) to service_role;

create or replace function scheduler.console_live_notify() returns trigger
language plpgsql
-- security definer: the watch list is no client's to read, whoever writes
security definer
set search_path = ''
as $$
declare
  v_users uuid[];
  v_conversations uuid[];
  v_ids uuid[];
  v_row record;
begin
  -- nobody watching: nothing to announce (one probe of a tiny index)
  if not exists (select 1 from scheduler.console_watchers w where w.expires_at > now()) then
    return null;
  end if;
  -- the changed rows' owner, conversation and id; static queries per table
  -- shape (plpgsql keeps a compiled copy of a trigger function per table, so
  -- each is planned once per session)
  if tg_table_name in ('chat_messages_v2', 'agent_task_executions') then
    select array_agg(c.user_id), array_agg(c.conversation_id), array_agg(c.id)
    into v_users, v_conversations, v_ids from changed c;
  elsif tg_table_name = 'conversation_sessions' then
    select array_agg(c.user_id), array_agg(c.id), array_agg(c.id)
    into v_users, v_conversations, v_ids from changed c;
  else
    select array_agg(c.user_id), array_agg(null::uuid), array_agg(c.id)
    into v_users, v_conversations, v_ids from changed c;
  end if;
  for v_row in
    select x.user_id, x.conversation_id, (array_agg(x.id order by x.id))[1:20] as ids, count(*) as n
    from unnest(v_users, v_conversations, v_ids) as x(user_id, conversation_id, id)
    where exists (select 1 from scheduler.console_watchers w
                  where w.user_id = x.user_id and w.expires_at > now())
    group by 1, 2
  loop
    perform pg_notify('console_live', json_build_object(
      't', tg_table_name, 'u', v_row.user_id, 'c', v_row.conversation_id,
      'ids', v_row.ids, 'n', v_row.n)::text);
  end loop;
  return null;
end
$$;
comment on function scheduler.console_live_notify() is
  'Statement trigger: one NOTIFY console_live per watched owner (and conversation) naming the changed rows.';
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
