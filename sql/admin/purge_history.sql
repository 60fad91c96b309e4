-- Delete finished executions older than a window (messages stay in their
-- conversations) and old pg_cron run records.
-- psql "$DATABASE_URL" -v older_than='90 days' -f sql/admin/purge_history.sql
\if :{?older_than}
\else
  \set older_than '30 days'
\endif
select scheduler.purge_history(:'older_than'::interval) as executions_deleted;
delete from cron.job_run_details where end_time < now() - :'older_than'::interval;
