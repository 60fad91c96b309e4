-- Delete finished executions older than a window (messages stay in their
-- conversations) and old pg_cron run records, all at once. The purge job
-- (scheduler.purge_expired, every 5 minutes) does this a batch at a time
-- with the retention in scheduler.limits; this is for a one-off.
-- psql "$DATABASE_URL" -v older_than='90 days' -f sql/admin/purge_history.sql
\if :{?older_than}
\else
  \set older_than '30 days'
\endif
select scheduler.purge_history(:'older_than'::interval) as executions_deleted;
delete from cron.job_run_details where end_time < now() - :'older_than'::interval;
