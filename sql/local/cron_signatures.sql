-- The pg_cron functions the migrations call, declared so `supabase db lint`
-- (plpgsql_check) can check those calls in a database pg_cron does not serve.
-- pg_cron runs in one database only (cron.database_name); `make test` lints a
-- fresh copy of the migrations, so it creates these there, and only there.
-- Never part of a real database.

create schema if not exists cron;
create or replace function cron.schedule(job_name text, schedule text, command text) returns bigint
language sql as 'select null::bigint';
create or replace function cron.unschedule(job_name text) returns boolean
language sql as 'select null::boolean';
create table if not exists cron.job_run_details (end_time timestamptz);
