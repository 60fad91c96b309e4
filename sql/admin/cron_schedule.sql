-- (Re-)create the scheduler's pg_cron jobs; idempotent (jobs are named).
-- psql "$DATABASE_URL" -f sql/admin/cron_schedule.sql
select scheduler.schedule_cron_jobs();
