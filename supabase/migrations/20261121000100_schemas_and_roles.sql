-- Schemas and roles of the scheduler.
--
-- `scheduler` holds the queue and the worker-only functions. PostgREST does
-- not expose it (keep it out of `[api] schemas` in config.toml), and EXECUTE
-- on its functions is revoked from anon and authenticated.
--
-- `chat_private` holds what the chat edge function needs beyond RLS: writing
-- the assistant's reply and the per-user rate limit.

create schema if not exists scheduler;
create schema if not exists chat_private;

revoke all on schema scheduler from public;
revoke all on schema chat_private from public;

-- The worker's role. It owns nothing and reads no table: every queue action
-- is a `security definer` function in `scheduler` granted to it. Give a login
-- role membership (`grant task_worker to my_worker_login`) or run the worker
-- with the project's direct connection string.
do $$
begin
  if not exists (select 1 from pg_roles where rolname = 'task_worker') then
    create role task_worker nologin;
  end if;
end
$$;

grant usage on schema scheduler to task_worker, service_role;
grant usage on schema chat_private to service_role;

-- Functions created in these schemas are not executable by PUBLIC unless a
-- migration grants them explicitly.
alter default privileges in schema scheduler revoke execute on functions from public;
alter default privileges in schema chat_private revoke execute on functions from public;
alter default privileges in schema public revoke execute on functions from public;

-- Shared trigger: keep updated_at current.
create or replace function scheduler.set_updated_at() returns trigger
language plpgsql
set search_path = ''
as $$
begin
  new.updated_at := now();
  return new;
end
$$;
