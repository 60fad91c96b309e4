-- pg_cron jobs: the database keeps the queue moving even with no worker
-- polling. pg_cron serves one database (cron.database_name); in any other
-- database (a test copy, a branch) this migration only says so and applies.
-- cron.schedule with a job name replaces an existing job of that name, so
-- re-applying is idempotent. sql/admin/cron_jobs.sql lists, pauses and
-- re-creates them.

create or replace function scheduler.schedule_cron_jobs() returns text
language plpgsql
set search_path = ''
as $$
begin
  if not exists (select 1 from pg_catalog.pg_available_extensions where name = 'pg_cron') then
    return 'pg_cron is not installed: jobs not scheduled';
  end if;
  if current_database() <> coalesce(current_setting('cron.database_name', true), 'postgres') then
    return format('pg_cron runs in database %s, not %s: jobs not scheduled',
                  coalesce(current_setting('cron.database_name', true), 'postgres'), current_database());
  end if;
  create extension if not exists pg_cron with schema pg_catalog;
  perform cron.schedule('agent-tasks-enqueue-due', '* * * * *', 'select scheduler.enqueue_due()');
  perform cron.schedule('agent-tasks-rescue-expired', '* * * * *', 'select scheduler.rescue_expired()');
  perform cron.schedule('agent-tasks-resume-after-budget', '* * * * *', 'select scheduler.resume_after_budget()');
  perform cron.schedule('agent-tasks-purge', '17 3 * * *',
    $job$select scheduler.purge_history('30 days');
         delete from cron.job_run_details where end_time < now() - interval '7 days'$job$);
  return 'pg_cron jobs scheduled';
end
$$;
revoke execute on function scheduler.schedule_cron_jobs() from public;

do $$
begin
  raise notice '%', scheduler.schedule_cron_jobs();
end
$$;
