-- Resume the scheduler's pg_cron jobs.
-- psql "$DATABASE_URL" -f sql/admin/cron_resume.sql
update cron.job set active = true where jobname like 'agent-tasks-%'
returning jobname, active;
