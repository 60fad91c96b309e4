-- Pause the scheduler's pg_cron jobs (workers still enqueue on their own tick).
-- psql "$DATABASE_URL" -f sql/admin/cron_pause.sql
update cron.job set active = false where jobname like 'agent-tasks-%'
returning jobname, active;
