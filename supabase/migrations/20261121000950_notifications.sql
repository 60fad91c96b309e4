-- Notifications, the user's side: mark one or all read, count the unread.
-- (What writes them is the task lifecycle: scheduler.notify_user.) The
-- functions are `security invoker`: they run under the caller's RLS and the
-- table's column grant (update of read_at only), so they can reach nothing
-- the caller's own supabase-js query could not. The table is in the
-- supabase_realtime publication (realtime migration); EXECUTE is granted to
-- authenticated with the rest of the client API (rls migration).

-- Mark one of your notifications read; false when it is not yours, does not
-- exist or was already read.
create or replace function public.mark_notification_read(p_id uuid) returns boolean
language plpgsql
security invoker
set search_path = ''
as $$
begin
  update public.notifications n set read_at = now()
  where n.id = p_id and n.read_at is null;
  return found;
end
$$;
comment on function public.mark_notification_read(uuid) is
  'Mark one of your notifications read; false when not found (or not yours) or already read.';

-- Mark all your unread notifications read; returns how many.
create or replace function public.mark_all_notifications_read() returns integer
language plpgsql
security invoker
set search_path = ''
as $$
declare
  v_count integer;
begin
  update public.notifications n set read_at = now()
  where n.user_id = (select auth.uid()) and n.read_at is null;
  get diagnostics v_count = row_count;
  return v_count;
end
$$;
comment on function public.mark_all_notifications_read() is 'Mark all your unread notifications read; returns how many.';

-- How many of your notifications are unread (the partial index
-- notifications_unread_idx answers it).
create or replace function public.unread_notification_count() returns integer
language sql
stable
security invoker
set search_path = ''
as $$
  select count(*)::integer from public.notifications n
  where n.user_id = (select auth.uid()) and n.read_at is null
$$;
comment on function public.unread_notification_count() is 'How many of your notifications are unread.';
