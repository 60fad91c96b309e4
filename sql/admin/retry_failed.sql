-- Re-run failed and timed-out executions finished within a window, each as a
-- new execution (trigger_type 'retry') in the same conversation.
-- psql "$DATABASE_URL" -v since='6 hours' -f sql/admin/retry_failed.sql
\if :{?since}
\else
  \set since '1 day'
\endif
select e.id as failed_execution, scheduler.retry_execution(e.id) as retry_execution
from public.agent_task_executions e
where e.status in ('failed', 'timed_out')
  and e.finished_at > now() - :'since'::interval
  and not exists (select 1 from public.agent_task_executions r where r.retry_of = e.id);
