-- pg_cron jobs: the database keeps the queue moving even with no worker
-- polling. pg_cron serves one database (cron.database_name); in any other
-- database (a test copy, a branch) this migration only says so and applies.
-- cron.schedule with a job name replaces an existing job of that name, so
-- re-applying is idempotent. sql/admin/cron_jobs.sql lists, pauses and
-- re-creates them.

-- The purge job: rows past their retention (scheduler.limits:
-- history_retention_days, notification_retention_days,
-- token_usage_retention_days; NULL keeps them), at most p_batch of each kind
-- per call, oldest first, each kind along an index of its age. Run every 5
-- minutes, so a call is a short transaction whatever the backlog (a batch
-- of 5,000 executions with two messages each: 0.5-0.85 s), where one
-- statement over a large history holds the cluster's vacuum horizon for its
-- whole run (300,000 such executions: 28 s; bench/bench_purge.py), the hot
-- queue table's dead rows included. Returns what it deleted: {executions, notifications, token_usage}.
create or replace function scheduler.purge_expired(p_batch integer default 5000, p_now timestamptz default null)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_now timestamptz := coalesce(p_now, now());
  v_days integer;
  v_executions integer := 0;
  v_notifications integer := 0;
  v_usage integer := 0;
  v_deliveries integer := 0;
begin
  if p_batch is null or p_batch < 1 then
    raise exception 'p_batch must be at least 1, got %', p_batch using errcode = '22023';
  end if;
  v_days := least(scheduler.limit_int('history_retention_days'), 1000000);
  if v_days is not null then
    v_executions := scheduler.purge_history(make_interval(days => v_days), v_now, p_batch);
  end if;
  v_days := least(scheduler.limit_int('notification_retention_days'), 1000000);
  if v_days is not null then
    delete from public.notifications n
    where n.id in (select x.id from public.notifications x
                   where x.created_at < v_now - make_interval(days => v_days)
                   order by x.created_at
                   limit p_batch);
    get diagnostics v_notifications = row_count;
  end if;
  v_days := least(scheduler.limit_int('token_usage_retention_days'), 1000000);
  if v_days is not null then
    delete from scheduler.token_usage u
    where (u.user_id, u.day, u.task_id) in (
      select x.user_id, x.day, x.task_id from scheduler.token_usage x
      where x.day < (v_now at time zone 'UTC')::date - v_days
      order by x.day
      limit p_batch);
    get diagnostics v_usage = row_count;
  end if;
  -- finished webhook deliveries (the webhooks migration's outbox)
  v_days := least(scheduler.limit_int('webhook_delivery_retention_days'), 1000000);
  if v_days is not null then
    delete from scheduler.webhook_deliveries d
    where d.id in (select x.id from scheduler.webhook_deliveries x
                   where x.finished_at < v_now - make_interval(days => v_days)
                   order by x.finished_at
                   limit p_batch);
    get diagnostics v_deliveries = row_count;
  end if;
  return jsonb_build_object('executions', v_executions, 'notifications', v_notifications, 'token_usage', v_usage,
                            'webhook_deliveries', v_deliveries);
end
$$;
revoke execute on function scheduler.purge_expired(integer, timestamptz) from public;
grant execute on function scheduler.purge_expired(integer, timestamptz) to service_role;

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
  perform cron.schedule('agent-tasks-purge', '*/5 * * * *',
    $job$select scheduler.purge_expired();
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
