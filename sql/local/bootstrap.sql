-- Supabase platform objects that a plain Postgres lacks.
--
-- Applied by the local stack before the migrations, and only locally: a real
-- Supabase project already has every object below. Each statement is
-- idempotent, so the stack can apply this file on every `up` and to every
-- test database.
--
-- The behaviour copies Supabase's: the auth helpers read the claims that
-- PostgREST puts in `request.jwt.claims`, and the API roles get Supabase's
-- default privileges on `public`, so the migrations' own revokes are tested
-- against the same generous defaults they meet in production.

-- Roles -------------------------------------------------------------------
do $$
begin
  if not exists (select 1 from pg_roles where rolname = 'anon') then
    create role anon nologin noinherit;
  end if;
  if not exists (select 1 from pg_roles where rolname = 'authenticated') then
    create role authenticated nologin noinherit;
  end if;
  if not exists (select 1 from pg_roles where rolname = 'service_role') then
    create role service_role nologin noinherit bypassrls;
  end if;
  if not exists (select 1 from pg_roles where rolname = 'authenticator') then
    create role authenticator login noinherit;
  end if;
end
$$;

grant anon, authenticated, service_role to authenticator;

-- Schemas -----------------------------------------------------------------
create schema if not exists extensions;
create schema if not exists auth;
grant usage on schema extensions to anon, authenticated, service_role;
grant usage on schema auth to anon, authenticated, service_role;
grant usage on schema public to anon, authenticated, service_role;

-- auth.users, shaped as GoTrue makes it where it matters to SQL: the id has
-- no default (GoTrue chooses it), so every insert names one, as it must on a
-- real project and under `supabase test db`. Only the columns the product and
-- its tests use.
create table if not exists auth.users (
  instance_id uuid,
  id uuid not null primary key,
  aud varchar(255) default 'authenticated',
  role varchar(255) default 'authenticated',
  email varchar(255) unique,
  encrypted_password varchar(255),
  raw_app_meta_data jsonb default '{}'::jsonb,
  raw_user_meta_data jsonb default '{}'::jsonb,
  created_at timestamptz default now(),
  updated_at timestamptz default now()
);
-- clusters made before this file matched GoTrue had a default
alter table auth.users alter column id drop default;

-- The helpers read the claims exactly as Supabase's do: first the legacy
-- per-claim setting, then the `request.jwt.claims` JSON that PostgREST sets.
create or replace function auth.uid() returns uuid
language sql stable
as $$
  select coalesce(
    nullif(current_setting('request.jwt.claim.sub', true), ''),
    (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub')
  )::uuid
$$;

create or replace function auth.role() returns text
language sql stable
as $$
  select coalesce(
    nullif(current_setting('request.jwt.claim.role', true), ''),
    (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'role')
  )::text
$$;

create or replace function auth.email() returns text
language sql stable
as $$
  select coalesce(
    nullif(current_setting('request.jwt.claim.email', true), ''),
    (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'email')
  )::text
$$;

create or replace function auth.jwt() returns jsonb
language sql stable
as $$
  select coalesce(
    nullif(current_setting('request.jwt.claim', true), ''),
    nullif(current_setting('request.jwt.claims', true), '')
  )::jsonb
$$;

grant execute on function auth.uid(), auth.role(), auth.email(), auth.jwt()
  to anon, authenticated, service_role;

-- Supabase's default privileges on public: everything to the API roles, RLS
-- decides. Our migrations revoke what they do not want exposed.
alter default privileges in schema public grant all on tables to anon, authenticated, service_role;
alter default privileges in schema public grant all on sequences to anon, authenticated, service_role;
alter default privileges in schema public grant all on functions to anon, authenticated, service_role;

-- Realtime publication (Supabase creates it empty).
do $$
begin
  if not exists (select 1 from pg_publication where pubname = 'supabase_realtime') then
    create publication supabase_realtime;
  end if;
end
$$;

-- Query statistics, preloaded and in `extensions` as on Supabase (the
-- `supabase inspect db` commands read them).
create extension if not exists pg_stat_statements with schema extensions;

-- The migration history (supabase_migrations.schema_migrations) is created
-- and kept by the Supabase CLI itself (`supabase db push`).

-- Supabase puts `extensions` on the search path (pgTAP lives there).
alter role postgres set search_path to "$user", public, extensions;
