-- The scheduler's pg_cron jobs and their recent runs.
-- psql "$DATABASE_URL" -f sql/admin/cron_jobs.sql
select jobid, jobname, schedule, active, command
from cron.job
where jobname like 'agent-tasks-%'
order by jobname;

select j.jobname, d.status, d.start_time, d.end_time - d.start_time as took, d.return_message
from cron.job_run_details d
join cron.job j using (jobid)
where j.jobname like 'agent-tasks-%'
order by d.start_time desc
limit 20;
