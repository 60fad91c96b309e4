-- Integrations: the URL check at write under the operator's policy, RLS on
-- user_integrations and agent_integrations, the credential table no client
-- reaches, and the chat_private functions that act only for auth.uid().
begin;
\ir helpers/personas.psql
select plan(24);

select tests.create_user('alice');
select tests.create_user('bob');
insert into public.agents (id, user_id, name) values
  ('a1000000-0000-0000-0000-000000000001', tests.get_user_id('alice'), 'Alice agent'),
  ('a2000000-0000-0000-0000-000000000002', tests.get_user_id('bob'), 'Bob agent');
-- the strict default of a deployed project (the local stack loosens it)
update chat_private.integration_policy set allow_http = false, allow_loopback = false, allow_private = false;

-- URL check at write --------------------------------------------------------------
select is(chat_private.integration_url_problem('https://mcp.example.com/mcp'), null, 'a public https URL is accepted');
select is(chat_private.integration_url_problem('https://8.8.8.8:8443/mcp'), null, 'a public address is accepted');
select is(chat_private.integration_url_problem('http://mcp.example.com/mcp'), 'server_url must use https', 'plain http is refused');
select is(chat_private.integration_url_problem('https://127.0.0.1/mcp'), 'server_url must not point at a loopback address', 'loopback is refused');
select is(chat_private.integration_url_problem('https://[::ffff:127.0.0.1]/mcp'), 'server_url must not point at a loopback address', 'an IPv4-mapped loopback is refused');
select is(chat_private.integration_url_problem('https://169.254.169.254/'), 'server_url must not point at a link-local address', 'the metadata address is refused');
select is(chat_private.integration_url_problem('https://192.168.0.10/'), 'server_url must not point at a private address', 'a private address is refused');
select is(chat_private.integration_url_problem('https://0x7f.1/'), 'server_url has a malformed IP address', 'numeric host forms are refused');
select is(chat_private.integration_url_problem('https://a@mcp.example.com/'), 'server_url must not carry a user name or password', 'user info is refused');
update chat_private.integration_policy set allow_http = true, allow_loopback = true;
select is(chat_private.integration_url_problem('http://127.0.0.1:54331/mcp'), null, 'the operator can allow loopback over http');
select is(chat_private.integration_url_problem('https://169.254.169.254/'), 'server_url must not point at a link-local address', 'link-local stays refused whatever the policy');
update chat_private.integration_policy set allow_http = false, allow_loopback = false;

-- RLS ------------------------------------------------------------------------------
insert into public.user_integrations (id, user_id, name, server_url, auth_kind)
  values ('11000000-0000-0000-0000-000000000001', tests.get_user_id('alice'), 'tickets', 'https://mcp.example.com/mcp',
          'bearer');
select tests.authenticate_as('alice');
select is(tests.caught($$insert into public.user_integrations (name, server_url) values ('meta', 'https://169.254.169.254/')$$),
  '22023: server_url must not point at a link-local address', 'a refused URL is a readable SQL error for the user');
insert into public.user_integrations (name, server_url) values ('wiki', 'https://wiki.example.com/mcp');
insert into public.agent_integrations (agent_id, integration_id)
  values ('a1000000-0000-0000-0000-000000000001', '11000000-0000-0000-0000-000000000001');
select is((select count(*) from public.user_integrations)::int, 2, 'alice sees the integrations she connected');
select is(tests.caught($$update public.user_integrations set status = 'ok'$$), '42501: permission denied for table user_integrations',
  'status is not client-writable');
select is(tests.caught($$select * from chat_private.integration_credentials$$), '42501: permission denied for schema chat_private',
  'the credential table is out of reach');
select is(tests.caught($$select chat_private.integrations_for(null, '11000000-0000-0000-0000-000000000001')$$),
  '42501: permission denied for schema chat_private', 'so is the loader');

select tests.authenticate_as('bob');
select is((select count(*) from public.user_integrations)::int, 0, 'bob sees none of alice''s integrations');
select is((select count(*) from public.agent_integrations)::int, 0, 'nor her allow-lists');
with changed as (update public.user_integrations set server_url = 'https://evil.example.com/' returning 1)
select is((select count(*) from changed)::int, 0, 'bob cannot change her integration');
select is(tests.caught($$insert into public.agent_integrations (agent_id, integration_id)
  values ('a2000000-0000-0000-0000-000000000002', '11000000-0000-0000-0000-000000000001')$$),
  '23503: insert or update on table "agent_integrations" violates foreign key constraint "agent_integrations_integration_id_user_id_fkey"',
  'bob cannot enable her integration for his agent');

-- the function's calls, as service_role with a user's claims ---------------------------
select tests.authenticate_as('bob');
select set_config('role', 'service_role', true);
select is(chat_private.set_integration_credential('11000000-0000-0000-0000-000000000001', 'k1', repeat('A', 40)), false,
  'bob''s claims cannot set alice''s credential');
select is(chat_private.integrations_for(null, '11000000-0000-0000-0000-000000000001') -> 'integrations', '[]'::jsonb,
  'bob''s claims load none of alice''s integrations');
select tests.authenticate_as('alice');
select set_config('role', 'service_role', true);
select is(chat_private.set_integration_credential('11000000-0000-0000-0000-000000000001', 'k1', repeat('A', 40)), true,
  'alice''s claims set her credential');
select is(chat_private.integrations_for('a1000000-0000-0000-0000-000000000001', null) #>> '{integrations,0,key_id}', 'k1',
  'the turn of her agent loads it');

select * from finish();
rollback;
