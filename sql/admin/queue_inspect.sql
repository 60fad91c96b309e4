-- What the queue is doing: counts by status, the claimable backlog, running
-- executions with their leases, live workers, and the latest failures.
-- psql "$DATABASE_URL" -f sql/admin/queue_inspect.sql
select * from scheduler.queue_stats();

select count(*) as claimable,
       extract(epoch from now() - min(run_after))::numeric(10, 1) as oldest_wait_s
from public.agent_task_executions
where status = 'queued' and run_after <= now();

select e.id, t.name as task, e.worker_id, e.attempt, e.max_attempts, e.started_at,
       e.lease_expires_at - now() as lease_left
from public.agent_task_executions e
join public.agent_tasks t on t.id = e.task_id
where e.status = 'running'
order by e.started_at;

select id, hostname, pid, concurrency, in_flight, now() - last_seen_at as seen_ago
from scheduler.workers
order by started_at;

select e.id, t.name as task, e.status, e.error_kind, e.attempt, e.finished_at, left(e.error, 120) as error
from public.agent_task_executions e
join public.agent_tasks t on t.id = e.task_id
where e.status in ('failed', 'timed_out')
order by e.finished_at desc
limit 20;
