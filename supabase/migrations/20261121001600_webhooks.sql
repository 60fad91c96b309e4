-- Webhooks: a user's own HTTPS endpoints receive their notifications (a run
-- failed, an agent asks a question, a task completed, ...) as signed POSTs,
-- so an app can forward them to e-mail, Slack or its own backend.
--
-- Delivery is an outbox: a notification's insert writes one
-- scheduler.webhook_deliveries row per matching endpoint, in the same
-- transaction, so a notification and its deliveries exist together or not at
-- all; the workers claim due deliveries (SKIP LOCKED, with a lease), POST
-- them and record the outcome, retrying with backoff. At least once: a
-- worker that dies mid-POST leaves its lease to expire and the delivery is
-- sent again with the same webhook-id, which receivers use to drop repeats.
-- The format is Standard Webhooks (webhook-id, webhook-timestamp,
-- webhook-signature: v1,<base64 HMAC-SHA256>), docs/webhooks.md.
--
-- URLs meet the operator's outbound policy of the integrations
-- (chat_private.integration_policy: HTTPS only, no loopback, link-local or
-- private targets unless allowed), when written and again by the worker for
-- every address the host resolves to, right before it connects.

create table public.webhooks (
  id uuid primary key default gen_random_uuid(),
  user_id uuid not null default auth.uid() references auth.users (id) on delete cascade,
  url text not null,
  -- the notification kinds this endpoint receives
  kinds text[] not null default array['task_failed', 'task_needs_input']::text[]
    check (cardinality(kinds) between 1 and 7 and array_position(kinds, null) is null
           and kinds <@ array['task_failed', 'task_needs_input', 'task_completed', 'task_succeeded',
                              'task_changed', 'task_paused', 'info']::text[]),
  description text check (char_length(description) <= 200),
  enabled boolean not null default true,
  -- the signing secret (Standard Webhooks: whsec_ + base64 of 32 bytes, two
  -- random UUIDs' worth: 244 random bits); its owner reads it to verify
  -- signatures, nobody else can (RLS)
  secret text not null default 'whsec_' || encode(decode(
    replace(gen_random_uuid()::text || gen_random_uuid()::text, '-', ''), 'hex'), 'base64'),
  -- written by the workers (scheduler.finish_webhook_delivery)
  last_delivered_at timestamptz,
  last_failed_at timestamptz,
  last_error text check (char_length(last_error) <= 500),
  -- deliveries in a row that failed for good (every attempt spent); reset by a
  -- delivery and by enabling the endpoint again
  consecutive_failures integer not null default 0 check (consecutive_failures >= 0),
  disabled_reason text check (char_length(disabled_reason) <= 500),
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now()
);
comment on table public.webhooks is
  'A user''s endpoints that receive their notifications as signed POSTs (Standard Webhooks; docs/webhooks.md).';
create index webhooks_user_idx on public.webhooks (user_id);

insert into scheduler.limits (name, value, description) values
  ('max_webhooks_per_user', '5', 'webhook endpoints one user may have'),
  ('webhook_test_per_minute', '5', 'public.test_webhook calls per user per minute'),
  ('webhook_disable_after_failures', '10',
   'deliveries in a row that fail for good (each after webhook_max_attempts) before the endpoint is disabled'),
  ('webhook_max_attempts', '8',
   'POSTs of one delivery before it fails (backoff 5 s, 30 s, 2 min, 10 min, 30 min, 1 h, 3 h: about 5 hours)'),
  ('webhook_delivery_retention_days', '7', 'finished webhook deliveries older than this many days are deleted')
on conflict (name) do nothing;

-- Why a webhook URL is refused, or null: the integrations' outbound rule,
-- naming this field.
create or replace function scheduler.webhook_url_problem(p_url text) returns text
language sql
stable
security definer -- the rule reads the operator's policy, which no client role can
set search_path = ''
as $$
  select chat_private.integration_url_problem(p_url, 'url')
$$;

-- Why connecting to these addresses (what the URL's host resolved to) is
-- refused, or null: the worker asks right before it connects.
create or replace function scheduler.webhook_address_problem(p_addrs inet[]) returns text
language sql
stable
security definer
set search_path = ''
as $$
  select p
  from unnest(p_addrs) a, lateral (select chat_private.integration_address_problem(a, 'url') as p) x
  where p is not null
  limit 1
$$;

-- Every write of a webhook by a user: the URL under the policy, the count,
-- and only the user's own columns (the grants below keep the bookkeeping to
-- the workers).
create or replace function scheduler.webhooks_before_write() returns trigger
language plpgsql
security definer -- counts the user's rows and reads the URL policy
set search_path = ''
as $$
declare
  v_problem text;
  v_count integer;
  v_max integer := scheduler.limit_int('max_webhooks_per_user');
begin
  if tg_op = 'INSERT' or new.url is distinct from old.url then
    v_problem := scheduler.webhook_url_problem(new.url);
    if v_problem is not null then
      raise exception '%', v_problem using errcode = '22023', hint = 'docs/webhooks.md says which URLs are allowed';
    end if;
  end if;
  if tg_op = 'INSERT' and v_max is not null then
    -- serialise a user's concurrent inserts so the count holds
    perform pg_advisory_xact_lock(hashtext('webhooks'), hashtext(new.user_id::text));
    select count(*) into v_count from public.webhooks where user_id = new.user_id;
    if v_count >= v_max then
      raise exception 'a user may have at most % webhooks (max_webhooks_per_user)', v_max using errcode = '54000';
    end if;
  end if;
  if tg_op = 'UPDATE' and new.enabled and not old.enabled then
    new.disabled_reason := null;
    new.consecutive_failures := 0;
  end if;
  new.updated_at := now();
  return new;
end
$$;
create trigger webhooks_before_write before insert or update on public.webhooks
  for each row execute function scheduler.webhooks_before_write();

-- The outbox ----------------------------------------------------------------
create table scheduler.webhook_deliveries (
  -- the webhook-id header: the same on every attempt, so receivers can drop repeats
  id uuid primary key default gen_random_uuid(),
  webhook_id uuid not null references public.webhooks (id) on delete cascade,
  user_id uuid not null,
  -- not a foreign key: the notification may be read, purged or deleted first
  notification_id uuid,
  event text not null,
  payload jsonb not null,
  status text not null default 'pending' check (status in ('pending', 'delivering', 'delivered', 'failed')),
  attempts integer not null default 0 check (attempts >= 0),
  next_attempt_at timestamptz not null default now(),
  worker_id text,
  lease_expires_at timestamptz,
  -- the endpoint's last HTTP status (null: no answer), and why the last attempt failed
  last_status integer,
  last_error text check (char_length(last_error) <= 500),
  created_at timestamptz not null default now(),
  finished_at timestamptz,
  check ((status = 'delivering') = (lease_expires_at is not null)),
  check ((status in ('delivered', 'failed')) = (finished_at is not null))
);
comment on table scheduler.webhook_deliveries is
  'Webhook outbox: one row per notification and endpoint, claimed and POSTed by the workers (docs/webhooks.md).';
alter table scheduler.webhook_deliveries enable row level security;
create index webhook_deliveries_due_idx on scheduler.webhook_deliveries (next_attempt_at) where status = 'pending';
create index webhook_deliveries_lease_idx on scheduler.webhook_deliveries (lease_expires_at) where status = 'delivering';
-- one endpoint's deliveries, newest first (public.list_webhook_deliveries: keyset on
-- (created_at, id)); also the cascade from webhooks
create index webhook_deliveries_webhook_idx on scheduler.webhook_deliveries (webhook_id, created_at desc, id desc);
-- the purge (scheduler.purge_expired)
create index webhook_deliveries_finished_idx on scheduler.webhook_deliveries (finished_at)
  where finished_at is not null;

-- A notification fans out to its owner's enabled endpoints for its kind, in
-- the notification's own transaction. The payload is what a receiver needs
-- to act without calling back: the kind, when, and the notification's
-- title, body and links (task, execution, conversation).
create or replace function scheduler.webhooks_fan_out() returns trigger
language plpgsql
security definer
set search_path = ''
as $$
begin
  insert into scheduler.webhook_deliveries (webhook_id, user_id, notification_id, event, payload)
  select w.id, new.user_id, new.id, new.kind,
         jsonb_build_object('type', new.kind, 'timestamp', new.created_at,
                            'data', jsonb_build_object('notification_id', new.id, 'title', new.title,
                                                       'body', new.body) || new.data)
  from public.webhooks w
  where w.user_id = new.user_id and w.enabled and new.kind = any (w.kinds);
  if found then
    perform pg_notify('webhook_deliveries', '');
  end if;
  return null;
end
$$;
create trigger notifications_webhooks after insert on public.notifications
  for each row execute function scheduler.webhooks_fan_out();

-- An endpoint switched off (by its owner, or by a 410 Gone): what waits for
-- it fails now rather than at each claim.
create or replace function scheduler.webhooks_after_disable() returns trigger
language plpgsql
security definer
set search_path = ''
as $$
begin
  update scheduler.webhook_deliveries d set
    status = 'failed', finished_at = now(), lease_expires_at = null, worker_id = null,
    last_error = left('the webhook was disabled' || coalesce(': ' || new.disabled_reason, ''), 500)
  where d.webhook_id = new.id and d.status = 'pending';
  return null;
end
$$;
create trigger webhooks_after_disable after update of enabled on public.webhooks
  for each row when (old.enabled and not new.enabled) execute function scheduler.webhooks_after_disable();

-- claim: due deliveries of enabled endpoints, oldest first, leased to the
-- worker; deliveries whose lease ran out (their worker died mid-POST) are due
-- again first. attempt counts this POST (1 for the first).
create or replace function scheduler.claim_webhook_deliveries(
  p_worker_id text, p_limit integer, p_lease_seconds integer default 60, p_now timestamptz default null
) returns table (id uuid, webhook_id uuid, url text, secret text, event text, payload jsonb, attempt integer)
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_now timestamptz := coalesce(p_now, now());
begin
  if p_limit is null or p_limit < 1 then
    return;
  end if;
  update scheduler.webhook_deliveries d set status = 'pending', worker_id = null, lease_expires_at = null
  where d.id in (select x.id from scheduler.webhook_deliveries x
                 where x.status = 'delivering' and x.lease_expires_at < v_now
                 for update skip locked);
  return query
  with picked as (
    select d.id from scheduler.webhook_deliveries d
    where d.status = 'pending' and d.next_attempt_at <= v_now
    order by d.next_attempt_at
    limit p_limit
    for update skip locked
  ),
  claimed as (
    update scheduler.webhook_deliveries d set
      status = 'delivering', worker_id = p_worker_id, attempts = d.attempts + 1,
      lease_expires_at = v_now + make_interval(secs => p_lease_seconds)
    from picked p
    where d.id = p.id
    returning d.*
  )
  select c.id, c.webhook_id, w.url, w.secret, c.event, c.payload, c.attempts
  from claimed c join public.webhooks w on w.id = c.webhook_id
  order by c.next_attempt_at;
end
$$;

-- finish: the outcome of one POST, fenced on the worker that holds it.
-- p_error null: delivered. Otherwise the delivery waits p_retry_in_s and is
-- tried again, or fails when attempts reach webhook_max_attempts or
-- p_retry_in_s is null; p_disable (the endpoint answered 410 Gone) also
-- switches the endpoint off. Returns the delivery's new status, or null
-- when the fence dropped the write.
create or replace function scheduler.finish_webhook_delivery(
  p_id uuid, p_worker_id text, p_http_status integer, p_error text,
  p_retry_in_s double precision default null, p_disable boolean default false, p_now timestamptz default null
) returns text
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_now timestamptz := coalesce(p_now, now());
  v_max integer := coalesce(scheduler.limit_int('webhook_max_attempts'), 8);
  v_streak integer := scheduler.limit_int('webhook_disable_after_failures');
  v_delivery scheduler.webhook_deliveries;
  v_failed boolean;
begin
  update scheduler.webhook_deliveries d set
    status = case when p_error is null then 'delivered'
                  when p_disable or p_retry_in_s is null or d.attempts >= v_max then 'failed'
                  else 'pending' end,
    next_attempt_at = case when p_error is not null and p_retry_in_s is not null
                           then v_now + make_interval(secs => greatest(p_retry_in_s, 0))
                           else d.next_attempt_at end,
    worker_id = null,
    lease_expires_at = null,
    last_status = p_http_status,
    last_error = left(p_error, 500),
    finished_at = case when p_error is null or p_disable or p_retry_in_s is null or d.attempts >= v_max
                       then v_now end
  where d.id = p_id and d.status = 'delivering' and d.worker_id = p_worker_id
  returning d.* into v_delivery;
  if not found then
    return null;
  end if;
  -- an endpoint whose deliveries keep failing for good (each after ~5 hours of
  -- retries) is switched off after webhook_disable_after_failures in a row,
  -- rather than being POSTed at for ever
  v_failed := v_delivery.status = 'failed';
  update public.webhooks w set
    last_delivered_at = case when p_error is null then v_now else w.last_delivered_at end,
    last_failed_at = case when p_error is null then w.last_failed_at else v_now end,
    last_error = case when p_error is null then w.last_error else left(p_error, 500) end,
    consecutive_failures = case when p_error is null then 0
                                when v_failed then w.consecutive_failures + 1
                                else w.consecutive_failures end,
    enabled = w.enabled and not p_disable
              and not (v_failed and v_streak is not null and w.consecutive_failures + 1 >= v_streak),
    disabled_reason = case
      when p_disable then left(p_error, 500)
      when w.enabled and v_failed and v_streak is not null and w.consecutive_failures + 1 >= v_streak
        then left(format('%s deliveries in a row failed (webhook_disable_after_failures); the last: %s',
                         w.consecutive_failures + 1, p_error), 500)
      else w.disabled_reason end
  where w.id = v_delivery.webhook_id;
  return v_delivery.status;
end
$$;

-- A test delivery to one of your endpoints (type webhook.test), to set up and
-- check a receiver without waiting for a real notification; it is delivered,
-- retried and recorded like any other. Rate limited (webhook_test_per_minute).
-- Returns the delivery's id: the webhook-id header the receiver will see.
create or replace function public.test_webhook(p_webhook_id uuid) returns uuid
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_hook public.webhooks;
  v_id uuid;
begin
  select * into v_hook from public.webhooks w where w.id = p_webhook_id and w.user_id = auth.uid();
  if not found then
    raise exception 'webhook % not found', p_webhook_id using errcode = 'P0002';
  end if;
  if not v_hook.enabled then
    raise exception 'webhook % is disabled: enable it first', p_webhook_id using errcode = '55000';
  end if;
  perform scheduler.action_rate_check('webhook_test');
  insert into scheduler.webhook_deliveries (webhook_id, user_id, event, payload)
  values (v_hook.id, v_hook.user_id, 'webhook.test',
          jsonb_build_object('type', 'webhook.test', 'timestamp', now(),
                             'data', jsonb_build_object('webhook_id', v_hook.id,
                                                        'title', 'A test delivery from agent-tasks')))
  returning id into v_id;
  perform pg_notify('webhook_deliveries', '');
  return v_id;
end
$$;
comment on function public.test_webhook(uuid) is
  'Send a test delivery (type webhook.test) to one of your webhooks; returns its webhook-id.';

-- What became of one of your endpoint's deliveries, newest first, a keyset page
-- at a time (the cursor of the other list functions). security definer: the
-- outbox is in scheduler, which clients cannot reach; an endpoint that is not
-- the caller's pages like one that does not exist (no rows). The payloads
-- are left out (they are the caller's notifications).
create or replace function public.list_webhook_deliveries(
  p_webhook_id uuid,
  p_limit integer default 20,
  p_cursor text default null
) returns table (
  id uuid, event text, status text, attempts integer, last_status integer, last_error text,
  next_attempt_at timestamptz, created_at timestamptz, finished_at timestamptz, next_cursor text
)
language plpgsql
stable
security definer
set search_path = ''
as $$
declare
  v_after record;
begin
  v_after := public.page_cursor_position(p_cursor, p_limit);
  if not exists (select 1 from public.webhooks w where w.id = p_webhook_id and w.user_id = auth.uid()) then
    return;
  end if;
  return query
    select d.id, d.event, d.status, d.attempts, d.last_status, d.last_error,
           case when d.status = 'pending' then d.next_attempt_at end, d.created_at, d.finished_at,
           public.page_cursor(d.created_at, d.id)
    from scheduler.webhook_deliveries d
    where d.webhook_id = p_webhook_id and (d.created_at, d.id) < (v_after.at, v_after.id)
    order by d.created_at desc, d.id desc
    limit p_limit;
end
$$;
comment on function public.list_webhook_deliveries(uuid, integer, text) is
  'Your webhook''s deliveries (event, status, attempts, last answer), newest first; keyset pagination via next_cursor.';

-- RLS and grants --------------------------------------------------------------
revoke all on public.webhooks from anon, authenticated;
grant select, delete on public.webhooks to authenticated;
grant insert (url, kinds, description, enabled) on public.webhooks to authenticated;
grant update (url, kinds, description, enabled) on public.webhooks to authenticated;
call scheduler.create_owner_policies('public.webhooks',
  p_select => 'Users can see their own webhooks',
  p_insert => 'Users can create webhooks for themselves',
  p_update => 'Users can update their own webhooks',
  p_delete => 'Users can delete their own webhooks');

revoke all on scheduler.webhook_deliveries from public, anon, authenticated;
revoke execute on function scheduler.webhook_url_problem(text), scheduler.webhook_address_problem(inet[]),
  scheduler.claim_webhook_deliveries(text, integer, integer, timestamptz),
  scheduler.finish_webhook_delivery(uuid, text, integer, text, double precision, boolean, timestamptz),
  scheduler.webhooks_before_write(), scheduler.webhooks_fan_out(), scheduler.webhooks_after_disable()
  from public, anon, authenticated;
revoke execute on function public.test_webhook(uuid), public.list_webhook_deliveries(uuid, integer, text)
  from public, anon;
grant execute on function public.test_webhook(uuid), public.list_webhook_deliveries(uuid, integer, text)
  to authenticated, service_role;
grant execute on function scheduler.webhook_address_problem(inet[]),
  scheduler.claim_webhook_deliveries(text, integer, integer, timestamptz),
  scheduler.finish_webhook_delivery(uuid, text, integer, text, double precision, boolean, timestamptz)
  to task_worker, service_role;
