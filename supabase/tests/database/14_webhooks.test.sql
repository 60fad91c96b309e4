-- Webhooks (migration 20261121001600_webhooks.sql): a user's endpoints under
-- RLS with their URL under the outbound policy and a per-user cap; a
-- notification fans out to the matching endpoints in its own transaction;
-- deliveries are claimed with a lease, finished fenced on the worker,
-- retried, failed after the last attempt, re-claimed when a lease runs out;
-- a 410 disables the endpoint and fails what waits for it; the purge clears
-- old finished deliveries.
begin;
\ir helpers/personas.psql
select plan(45);

select tests.create_user('alice');
select tests.create_user('bob');
-- strict policy (the deployed default): HTTPS, no loopback or private targets
update chat_private.integration_policy set allow_http = false, allow_loopback = false, allow_private = false;

-- the kinds an endpoint may take are exactly the notification kinds
select is(
  array(select distinct m[1] from pg_constraint c, regexp_matches(pg_get_constraintdef(c.oid), '''([a-z_]+)''', 'g') m
        where c.conrelid = 'public.webhooks'::regclass and pg_get_constraintdef(c.oid) like '%kinds <@%' order by 1),
  array(select distinct m[1] from pg_constraint c, regexp_matches(pg_get_constraintdef(c.oid), '''([a-z_]+)''', 'g') m
        where c.conrelid = 'public.notifications'::regclass and c.conname = 'notifications_kind_check' order by 1),
  'a webhook''s kinds are the notification kinds');

-- endpoints ----------------------------------------------------------------------
select tests.authenticate_as('alice');
select lives_ok($$insert into public.webhooks (url, kinds)
                  values ('https://hooks.example.com/agent', '{task_failed,task_succeeded}')$$,
  'a user adds an HTTPS endpoint for some kinds');
select lives_ok($$insert into public.webhooks (url) values ('https://other.example.com/in')$$,
  'the default kinds: failures and questions');
-- known ids for what follows (the API lets no client choose one)
select tests.clear_authentication();
update public.webhooks set id = 'f1000000-0000-0000-0000-000000000001' where url = 'https://hooks.example.com/agent';
update public.webhooks set id = 'f1000000-0000-0000-0000-000000000002' where url = 'https://other.example.com/in';
select tests.authenticate_as('alice');
select is((select kinds from public.webhooks where id = 'f1000000-0000-0000-0000-000000000002'),
  array['task_failed', 'task_needs_input'], 'failures and questions by default');
select matches((select secret from public.webhooks where id = 'f1000000-0000-0000-0000-000000000001'),
  '^whsec_[A-Za-z0-9+/]{43}=$', 'a Standard Webhooks secret (32 bytes) the owner can read');
select isnt((select secret from public.webhooks where id = 'f1000000-0000-0000-0000-000000000001'),
  (select secret from public.webhooks where id = 'f1000000-0000-0000-0000-000000000002'), 'each endpoint its own secret');
select throws_ok($$insert into public.webhooks (url) values ('http://hooks.example.com/agent')$$,
  '22023', 'url must use https', 'plain HTTP is refused, naming the field');
select throws_ok($$insert into public.webhooks (url) values ('https://127.0.0.1:9/hook')$$,
  '22023', 'url must not point at a loopback address', 'a loopback target is refused');
select throws_ok($$insert into public.webhooks (url) values ('https://10.1.2.3/hook')$$,
  '22023', 'url must not point at a private address', 'a private target is refused');
select throws_ok($$insert into public.webhooks (url, kinds) values ('https://hooks.example.com/x', '{task_exploded}')$$,
  '23514', null, 'an unknown kind is refused');
select throws_ok($$update public.webhooks set secret = 'whsec_mine' where id = 'f1000000-0000-0000-0000-000000000001'$$,
  '42501', null, 'the secret is not the user''s to write');
select throws_ok($$update public.webhooks set last_delivered_at = now() where id = 'f1000000-0000-0000-0000-000000000001'$$,
  '42501', null, 'nor is the delivery bookkeeping');
select throws_ok($$select * from scheduler.webhook_deliveries$$, '42501', null, 'users cannot read the outbox');
insert into public.webhooks (url) select 'https://hooks.example.com/' || g from generate_series(1, 3) g;
select throws_ok($$insert into public.webhooks (url) values ('https://hooks.example.com/sixth')$$,
  '54000', 'a user may have at most 5 webhooks (max_webhooks_per_user)', 'the per-user cap');
delete from public.webhooks where url like 'https://hooks.example.com/_';

select tests.authenticate_as('bob');
select is_empty($$select id from public.webhooks$$, 'bob sees none of alice''s endpoints');
select is_empty($$update public.webhooks set url = 'https://evil.example.com/' returning id$$,
  'bob cannot redirect them');
select throws_ok($$insert into public.webhooks (user_id, url) values (tests.get_user_id('alice'), 'https://evil.example.com/')$$,
  '42501', null, 'nor add one for alice');

-- a test delivery: the owner's only, to an enabled endpoint, rate limited
select tests.authenticate_as('bob');
select throws_ok($$select public.test_webhook('f1000000-0000-0000-0000-000000000001')$$,
  'P0002', 'webhook f1000000-0000-0000-0000-000000000001 not found', 'bob cannot test alice''s endpoint');
select tests.authenticate_as('alice');
select isnt(public.test_webhook('f1000000-0000-0000-0000-000000000002'), null, 'alice sends a test delivery');
select tests.clear_authentication();
select is((select (event, payload -> 'data' ->> 'title', status) from scheduler.webhook_deliveries),
  row('webhook.test'::text, 'A test delivery from agent-tasks'::text, 'pending'::text),
  'a webhook.test delivery waits in the outbox');
delete from scheduler.webhook_deliveries;
update scheduler.limits set value = '1' where name = 'webhook_test_per_minute';
select tests.authenticate_as('alice');
select throws_ok($$select public.test_webhook('f1000000-0000-0000-0000-000000000002')$$,
  'PT429', null, 'webhook_test_per_minute holds');
select tests.clear_authentication();
delete from scheduler.webhook_deliveries;

-- fan-out ------------------------------------------------------------------------
select tests.clear_authentication();
insert into public.notifications (id, user_id, kind, title, body, data) values
  ('b1000000-0000-0000-0000-000000000001', tests.get_user_id('alice'), 'task_failed', 'Run failed', 'boom',
   '{"task_id": "d1000000-0000-0000-0000-000000000001"}'),
  ('b1000000-0000-0000-0000-000000000002', tests.get_user_id('alice'), 'task_paused', 'Paused', null, '{}');
select is((select count(*)::int from scheduler.webhook_deliveries), 2,
  'a failure reaches both endpoints that take failures; a pause reaches none');
select is((select payload from scheduler.webhook_deliveries where webhook_id = 'f1000000-0000-0000-0000-000000000001'),
  jsonb_build_object('type', 'task_failed',
                     'timestamp', (select created_at from public.notifications where id = 'b1000000-0000-0000-0000-000000000001'),
                     'data', jsonb_build_object('notification_id', 'b1000000-0000-0000-0000-000000000001', 'title', 'Run failed',
                                                'body', 'boom', 'task_id', 'd1000000-0000-0000-0000-000000000001')),
  'the payload: the kind, when, and the notification with its links');

-- claim and finish -----------------------------------------------------------------
create temp table claimed on commit drop as
  select * from scheduler.claim_webhook_deliveries('w1', 10, 60);
select is((select count(*)::int from claimed), 2, 'both are claimed');
select is((select array_agg(distinct attempt) from claimed), array[1], 'as their first attempt');
select is_empty($$select * from scheduler.claim_webhook_deliveries('w2', 10, 60)$$,
  'a leased delivery is no one else''s');
select is(scheduler.finish_webhook_delivery((select id from claimed where webhook_id = 'f1000000-0000-0000-0000-000000000001'),
                                            'w2', 200, null), null, 'the fence: another worker cannot finish it');
select is(scheduler.finish_webhook_delivery((select id from claimed where webhook_id = 'f1000000-0000-0000-0000-000000000001'),
                                            'w1', 204, null), 'delivered', 'a 2xx delivers it');
select ok((select last_delivered_at is not null from public.webhooks where id = 'f1000000-0000-0000-0000-000000000001'),
  'the endpoint shows its last delivery');
select is(scheduler.finish_webhook_delivery((select id from claimed where webhook_id = 'f1000000-0000-0000-0000-000000000002'),
                                            'w1', 503, 'the endpoint answered 503', 30), 'pending',
  'a failure waits to be tried again');
select is_empty($$select * from scheduler.claim_webhook_deliveries('w1', 10, 60)$$, 'not before its wait is over');
select is((select attempt from scheduler.claim_webhook_deliveries('w1', 10, 60, now() + interval '31 seconds')), 2,
  'then it is claimed again, as attempt 2');
-- its worker dies mid-POST: the lease runs out and it is due again
select is((select attempt from scheduler.claim_webhook_deliveries('w3', 10, 60, now() + interval '2 minutes')), 3,
  'an expired lease makes it due again (at least once)');
update scheduler.webhook_deliveries set attempts = 8 where webhook_id = 'f1000000-0000-0000-0000-000000000002';
select is(scheduler.finish_webhook_delivery((select id from scheduler.webhook_deliveries
                                             where webhook_id = 'f1000000-0000-0000-0000-000000000002'),
                                            'w3', 500, 'the endpoint answered 500', 30), 'failed',
  'after webhook_max_attempts it fails');

-- the owner's delivery log, newest first, a keyset page at a time; not yours: no rows
update scheduler.webhook_deliveries set created_at = now() - interval '1 minute'
  where webhook_id = 'f1000000-0000-0000-0000-000000000001';
select tests.authenticate_as('alice');
select results_eq(
  $$select event, status, attempts from public.list_webhook_deliveries('f1000000-0000-0000-0000-000000000002')$$,
  $$values ('task_failed'::text, 'failed'::text, 8)$$, 'alice reads what became of her endpoint''s deliveries');
select is((select count(*)::int from public.list_webhook_deliveries('f1000000-0000-0000-0000-000000000001', 1,
            (select next_cursor from public.list_webhook_deliveries('f1000000-0000-0000-0000-000000000001', 1)))), 0,
  'the next page continues after the cursor (one delivery: none)');
select tests.authenticate_as('bob');
select is_empty($$select id from public.list_webhook_deliveries('f1000000-0000-0000-0000-000000000001')$$,
  'bob''s view of alice''s endpoint: like one that does not exist');
select tests.clear_authentication();

-- 410 Gone disables the endpoint; what waits for it fails
delete from public.webhooks where id = 'f1000000-0000-0000-0000-000000000002';
insert into public.notifications (user_id, kind, title) values
  (tests.get_user_id('alice'), 'task_failed', 'Again'), (tests.get_user_id('alice'), 'task_failed', 'And again');
select is(scheduler.finish_webhook_delivery((select id from scheduler.claim_webhook_deliveries('w1', 1, 60)),
            'w1', 410, 'the endpoint answered 410 Gone: the webhook was disabled', null, true), 'failed',
  'a 410 fails the delivery');
select is((select (enabled, disabled_reason) from public.webhooks where id = 'f1000000-0000-0000-0000-000000000001'),
  row(false, 'the endpoint answered 410 Gone: the webhook was disabled'::text),
  'and disables the endpoint, saying why');
select is((select array_agg(last_error) from scheduler.webhook_deliveries
           where webhook_id = 'f1000000-0000-0000-0000-000000000001' and status = 'failed'
             and last_error like 'the webhook was disabled%'),
  array['the webhook was disabled: the endpoint answered 410 Gone: the webhook was disabled'],
  'what waited for it fails, saying why');

-- a streak of deliveries failing for good switches an endpoint off; enabling it again starts afresh
update scheduler.limits set value = '2' where name = 'webhook_disable_after_failures';
insert into public.webhooks (id, user_id, url, kinds) values
  ('f1000000-0000-0000-0000-000000000004', tests.get_user_id('alice'), 'https://fourth.example.com/in', '{task_paused}');
insert into public.notifications (user_id, kind, title) values
  (tests.get_user_id('alice'), 'task_paused', 'P1'), (tests.get_user_id('alice'), 'task_paused', 'P2');
select is(array(select scheduler.finish_webhook_delivery(c.id, 'w1', 500, 'the endpoint answered 500')
                from scheduler.claim_webhook_deliveries('w1', 10, 60) c),
  array['failed', 'failed'], 'two deliveries fail for good');
select is((select (enabled, consecutive_failures, disabled_reason) from public.webhooks
           where id = 'f1000000-0000-0000-0000-000000000004'),
  row(false, 2, '2 deliveries in a row failed (webhook_disable_after_failures); the last: the endpoint answered 500'::text),
  'webhook_disable_after_failures in a row disable the endpoint, saying why');
select tests.authenticate_as('alice');
update public.webhooks set enabled = true where id = 'f1000000-0000-0000-0000-000000000004';
select tests.clear_authentication();
select is((select (enabled, consecutive_failures, disabled_reason) from public.webhooks
           where id = 'f1000000-0000-0000-0000-000000000004'),
  row(true, 0, null::text), 'enabled again by its owner, it starts afresh');

-- the purge: finished deliveries past webhook_delivery_retention_days go
insert into public.webhooks (id, user_id, url) values
  ('f1000000-0000-0000-0000-000000000003', tests.get_user_id('alice'), 'https://third.example.com/in');
insert into public.notifications (user_id, kind, title) values (tests.get_user_id('alice'), 'task_needs_input', 'Q?');
update scheduler.webhook_deliveries set finished_at = now() - interval '8 days' where status in ('delivered', 'failed');
select is((scheduler.purge_expired()) -> 'webhook_deliveries', '5'::jsonb, 'old finished deliveries are purged');
select is((select count(*)::int from scheduler.webhook_deliveries where status = 'pending'), 1,
  'what still waits is kept');

select * from finish();
rollback;
