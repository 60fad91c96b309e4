-- Remove the scheduler's pg_cron jobs (cron_schedule.sql puts them back).
-- psql "$DATABASE_URL" -f sql/admin/cron_unschedule.sql
select jobname, cron.unschedule(jobname) as removed
from cron.job
where jobname like 'agent-tasks-%';
