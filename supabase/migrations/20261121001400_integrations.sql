-- Integrations: the MCP servers a user connected, and which of them (and
-- which of their tools) each agent may use.
--
-- The credential of an integration is encrypted by the chat function
-- (AES-GCM under a key from its secrets, docs/integrations.md) and stored in
-- chat_private.integration_credentials, a table no client role can read:
-- not through the table, a view, an RPC or Realtime (only public tables are
-- in the publication). Clients see `has_credential` instead.
--
-- Server URLs are checked here when written and again by the function when it
-- connects, after resolving the host (supabase/functions/chat/mcp/url_policy.ts):
-- HTTPS only, no loopback, link-local or private-range targets, unless the
-- operator's chat_private.integration_policy allows them (the local stack
-- allows loopback and plain HTTP for its own tickets server).

-- The operator's URL policy: one row.
create table chat_private.integration_policy (
  singleton boolean primary key default true check (singleton),
  allow_http boolean not null default false,
  allow_loopback boolean not null default false,
  allow_private boolean not null default false
);
alter table chat_private.integration_policy enable row level security;
comment on table chat_private.integration_policy is
  'Which MCP server URLs users may connect: plain HTTP, loopback, private ranges (all off by default).';
insert into chat_private.integration_policy default values;

-- Why a URL is refused under the operator's policy, or null when it is accepted;
-- the reason names p_field (webhooks check their `url` with the same rule).
-- The function's connect-time check (url_policy.ts) applies the same ranges to
-- every resolved address; this one sees only what is written.
create or replace function chat_private.integration_url_problem(p_url text, p_field text default 'server_url')
returns text
language plpgsql
stable
security definer -- reads the operator's policy, which no client role can
set search_path = ''
as $$
declare
  v_policy chat_private.integration_policy;
  v_parts text[];
  v_host text;
  v_addr inet;
begin
  select * into v_policy from chat_private.integration_policy;
  if p_url is null or length(p_url) > 2000 then
    return p_field || ' must be an http(s) URL of at most 2000 characters';
  end if;
  v_parts := regexp_match(p_url, '^([a-zA-Z][a-zA-Z0-9+.-]*)://([^/?#]*)([/?#].*)?$');
  if v_parts is null then
    return p_field || ' is not an absolute URL';
  end if;
  if lower(v_parts[1]) = 'http' then
    if not coalesce(v_policy.allow_http, false) then
      return p_field || ' must use https';
    end if;
  elsif lower(v_parts[1]) <> 'https' then
    return p_field || ' must use https';
  end if;
  if position('@' in v_parts[2]) > 0 then
    return p_field || ' must not carry a user name or password';
  end if;
  v_host := lower(v_parts[2]);
  if v_host like '[%' then
    v_host := substring(v_host from '^\[([0-9a-f:.]+)\](:[0-9]{1,5})?$');
    if v_host is null then
      return p_field || ' has a malformed IPv6 host';
    end if;
  else
    v_host := substring(v_host from '^([a-z0-9.-]+)(:[0-9]{1,5})?$');
    if v_host is null or v_host = '' then
      return p_field || ' has a malformed host';
    end if;
    v_host := rtrim(v_host, '.');
  end if;
  if v_host = 'localhost' or v_host like '%.localhost' then
    return case when v_policy.allow_loopback then null else p_field || ' must not point at a loopback address' end;
  end if;
  -- a leading zero: Postgres reads 0177 as decimal, URL parsers (fetch) as
  -- octal, so the address written and the address reached would differ
  if v_host ~ '(^|\.)0[0-9]' and v_host ~ '^[0-9.]+$' then
    return p_field || ' has a malformed IP address';
  end if;
  if v_host ~ '^[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+$' or v_host like '%:%' then
    begin
      v_addr := v_host::inet;
    exception when others then
      return p_field || ' has a malformed IP address';
    end;
    return chat_private.integration_address_problem(v_addr, p_field);
  end if;
  -- numeric forms that resolvers read as addresses (2130706433, 0x7f.1, 127.1)
  if v_host ~ '^[0-9.]+$' or v_host ~ '(^|\.)0x[0-9a-f]*(\.|$)' then
    return p_field || ' has a malformed IP address';
  end if;
  return null;
end
$$;
comment on function chat_private.integration_url_problem(text, text) is
  'Why an MCP server URL is refused (scheme, user info, host form, literal address ranges), or null.';

-- Why connecting to an address is refused under the operator's policy, or null.
create or replace function chat_private.integration_address_problem(p_addr inet, p_field text default 'server_url')
returns text
language plpgsql
stable
security definer -- reads the operator's policy, which no client role can
set search_path = ''
as $$
declare
  v_policy chat_private.integration_policy;
  v_v4 inet := p_addr;
begin
  select * into v_policy from chat_private.integration_policy;
  -- an IPv4-mapped IPv6 address is judged as the IPv4 address it carries
  if family(p_addr) = 6 and p_addr <<= '::ffff:0:0/96'::inet then
    v_v4 := substring(host(p_addr) from '^::ffff:([0-9.]+)$')::inet;
  end if;
  if v_v4 <<= '127.0.0.0/8'::inet or v_v4 = '::1'::inet then
    return case when v_policy.allow_loopback then null else p_field || ' must not point at a loopback address' end;
  end if;
  if v_v4 <<= '169.254.0.0/16'::inet or v_v4 <<= 'fe80::/10'::inet then
    return p_field || ' must not point at a link-local address';
  end if;
  if v_v4 <<= '0.0.0.0/8'::inet or v_v4 = '::'::inet or v_v4 <<= '224.0.0.0/3'::inet
     or v_v4 <<= 'ff00::/8'::inet then
    return p_field || ' must not point at an unspecified, multicast or reserved address';
  end if;
  if v_v4 <<= '10.0.0.0/8'::inet or v_v4 <<= '172.16.0.0/12'::inet or v_v4 <<= '192.168.0.0/16'::inet
     or v_v4 <<= '100.64.0.0/10'::inet or v_v4 <<= '198.18.0.0/15'::inet or v_v4 <<= 'fc00::/7'::inet then
    return case when v_policy.allow_private then null else p_field || ' must not point at a private address' end;
  end if;
  return null;
end
$$;
comment on function chat_private.integration_address_problem(inet, text) is
  'Why an MCP server address is refused (loopback, link-local, reserved, private ranges), or null.';

-- user_integrations -----------------------------------------------------------
create table public.user_integrations (
  id uuid primary key default gen_random_uuid(),
  user_id uuid not null default auth.uid() references auth.users (id) on delete cascade,
  -- the prefix of its tools as the model sees them (`tickets__list_tickets`)
  name text not null check (name ~ '^[a-z][a-z0-9_]{0,23}$' and name !~ '__'),
  description text check (length(description) <= 500),
  server_url text not null,
  auth_kind text not null default 'none' check (auth_kind in ('none', 'bearer', 'header')),
  -- the header that carries the credential when auth_kind = 'header'
  header_name text check (header_name ~ '^[A-Za-z0-9-]{1,64}$'
    and lower(header_name) not in ('host', 'content-length', 'content-type', 'accept', 'connection',
                                   'transfer-encoding', 'mcp-session-id', 'mcp-protocol-version')),
  -- written by chat_private.set_integration_credential only
  has_credential boolean not null default false,
  status text not null default 'unknown' check (status in ('unknown', 'ok', 'error')),
  last_error text check (length(last_error) <= 1000),
  last_checked_at timestamptz,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  unique (user_id, name),
  unique (id, user_id),
  check ((auth_kind = 'header') = (header_name is not null))
);
comment on table public.user_integrations is
  'MCP servers (Streamable HTTP) a user connected; the credential is kept encrypted elsewhere and never returned.';

create index user_integrations_user_idx on public.user_integrations (user_id);

-- The most integrations one user may hold.
create or replace function chat_private.max_integrations_per_user() returns integer
language sql immutable set search_path = '' as $$ select 20 $$;

-- Checks every write of an integration: the URL under the operator's policy,
-- the per-user count, and who may write the bookkeeping columns.
create or replace function chat_private.user_integrations_guard() returns trigger
language plpgsql
security definer -- counts the user's rows and reads the URL policy
set search_path = ''
as $$
declare
  v_problem text;
  v_count integer;
begin
  if tg_op = 'INSERT' or new.server_url is distinct from old.server_url then
    v_problem := chat_private.integration_url_problem(new.server_url);
    if v_problem is not null then
      raise exception '%', v_problem using errcode = '22023', hint = 'docs/integrations.md lists what is allowed';
    end if;
  end if;
  if tg_op = 'INSERT' then
    -- serialise a user's concurrent inserts so the count holds
    perform pg_advisory_xact_lock(hashtext('user_integrations'), hashtext(new.user_id::text));
    select count(*) into v_count from public.user_integrations where user_id = new.user_id;
    if v_count >= chat_private.max_integrations_per_user() then
      raise exception 'a user may connect at most % integrations', chat_private.max_integrations_per_user()
        using errcode = '54000';
    end if;
  end if;
  if tg_op = 'UPDATE' and (new.server_url is distinct from old.server_url
                           or new.auth_kind is distinct from old.auth_kind) then
    -- a changed target is unchecked again
    new.status := 'unknown';
    new.last_error := null;
  end if;
  new.updated_at := now();
  return new;
end
$$;

create trigger user_integrations_guard
  before insert or update on public.user_integrations
  for each row execute function chat_private.user_integrations_guard();

-- agent_integrations: the per-agent allow-list --------------------------------
create table public.agent_integrations (
  agent_id uuid not null,
  integration_id uuid not null,
  user_id uuid not null default auth.uid() references auth.users (id) on delete cascade,
  -- the server's tool names this agent may call; null: all of them
  enabled_tools text[] check (cardinality(enabled_tools) <= 100
    and array_position(enabled_tools, null) is null
    and length(array_to_string(enabled_tools, '')) <= 100 * 64),
  created_at timestamptz not null default now(),
  primary key (agent_id, integration_id),
  -- both belong to the same user
  foreign key (agent_id, user_id) references public.agents (id, user_id) on delete cascade,
  foreign key (integration_id, user_id) references public.user_integrations (id, user_id) on delete cascade
);
comment on table public.agent_integrations is
  'Which integrations an agent may use, and optionally which of their tools (in chat and in scheduled runs).';
create index agent_integrations_integration_idx on public.agent_integrations (integration_id, user_id);
create index agent_integrations_user_idx on public.agent_integrations (user_id);

-- The encrypted credentials ----------------------------------------------------
create table chat_private.integration_credentials (
  integration_id uuid primary key references public.user_integrations (id) on delete cascade,
  user_id uuid not null references auth.users (id) on delete cascade,
  -- which key of CHAT_INTEGRATIONS_KEYS encrypted it
  key_id text not null check (key_id ~ '^[A-Za-z0-9_.-]{1,64}$'),
  -- base64 of the 12-byte nonce followed by the AES-GCM ciphertext and tag
  ciphertext text not null check (length(ciphertext) between 24 and 12000),
  updated_at timestamptz not null default now()
);
alter table chat_private.integration_credentials enable row level security;
comment on table chat_private.integration_credentials is
  'AES-GCM ciphertexts of integration credentials; the key lives only in the chat function''s secrets.';
create index integration_credentials_user_idx on chat_private.integration_credentials (user_id);
create index integration_credentials_key_idx on chat_private.integration_credentials (key_id);

-- Store (or, with null, remove) the caller's credential of one of their
-- integrations. Called by the chat function as service_role with the user's
-- claims; false when the integration is not the caller's.
create or replace function chat_private.set_integration_credential(
  p_integration_id uuid, p_key_id text, p_ciphertext text
) returns boolean
language plpgsql
security definer -- writes the private credential table for the owner only
set search_path = ''
as $$
declare
  v_user uuid := auth.uid();
begin
  if v_user is null or not exists (select 1 from public.user_integrations
                                   where id = p_integration_id and user_id = v_user) then
    return false;
  end if;
  if p_ciphertext is null then
    delete from chat_private.integration_credentials where integration_id = p_integration_id;
  else
    insert into chat_private.integration_credentials (integration_id, user_id, key_id, ciphertext)
    values (p_integration_id, v_user, p_key_id, p_ciphertext)
    on conflict (integration_id) do update
      set key_id = excluded.key_id, ciphertext = excluded.ciphertext, updated_at = now();
  end if;
  update public.user_integrations
     set has_credential = p_ciphertext is not null, status = 'unknown', last_error = null
   where id = p_integration_id;
  return true;
end
$$;

-- What a turn (or an integration test) of the caller needs to connect: the
-- caller's integrations enabled for p_agent_id (or the one p_integration_id),
-- with their ciphertexts, and the operator's policy. Never another user's:
-- everything is keyed on auth.uid().
create or replace function chat_private.integrations_for(p_agent_id uuid, p_integration_id uuid)
returns jsonb
language sql
stable
security definer -- reads the private credential table for the owner only
set search_path = ''
as $$
  select jsonb_build_object(
    'policy', (select to_jsonb(p) - 'singleton' from chat_private.integration_policy p),
    'integrations', coalesce((
      select jsonb_agg(jsonb_build_object(
               'id', i.id, 'name', i.name, 'description', i.description, 'server_url', i.server_url,
               'auth_kind', i.auth_kind, 'header_name', i.header_name, 'updated_at', i.updated_at,
               'enabled_tools', a.enabled_tools, 'key_id', c.key_id, 'ciphertext', c.ciphertext)
             order by i.name)
        from public.user_integrations i
        left join public.agent_integrations a
          on a.integration_id = i.id and a.agent_id = p_agent_id and a.user_id = i.user_id
        left join chat_private.integration_credentials c on c.integration_id = i.id and c.user_id = i.user_id
       where i.user_id = (select auth.uid())
         and ((p_integration_id is not null and i.id = p_integration_id)
              or (p_integration_id is null and a.agent_id is not null))), '[]'::jsonb));
$$;

-- Record what the last connection to an integration found (the caller's own).
create or replace function chat_private.record_integration_status(
  p_integration_id uuid, p_status text, p_error text
) returns void
language sql
security definer -- status is not a client-writable column
set search_path = ''
as $$
  update public.user_integrations
     set status = p_status, last_error = left(p_error, 1000), last_checked_at = now()
   where id = p_integration_id and user_id = (select auth.uid())
     and (status, last_error) is distinct from (p_status, left(p_error, 1000));
$$;

-- Re-encryption (key rotation) lists the ciphertexts not under the newest key
-- and rewrites them; operator-only (service_role, no user claims needed).
create or replace function chat_private.credentials_to_reencrypt(p_current_key_id text, p_limit integer)
returns table (integration_id uuid, user_id uuid, key_id text, ciphertext text)
language sql
stable
security definer -- the operator's rotation reads every user's ciphertext, never a key
set search_path = ''
as $$
  select c.integration_id, c.user_id, c.key_id, c.ciphertext
    from chat_private.integration_credentials c
   where c.key_id <> p_current_key_id
   order by c.integration_id
   limit greatest(p_limit, 1);
$$;

create or replace function chat_private.replace_credential(
  p_integration_id uuid, p_old_key_id text, p_key_id text, p_ciphertext text
) returns boolean
language sql
security definer -- rotation rewrites a ciphertext only if nobody changed it meanwhile
set search_path = ''
as $$
  with changed as (
    update chat_private.integration_credentials
       set key_id = p_key_id, ciphertext = p_ciphertext, updated_at = now()
     where integration_id = p_integration_id and key_id = p_old_key_id
    returning 1)
  select exists (select 1 from changed);
$$;

-- RLS and privileges -----------------------------------------------------------
revoke all on public.user_integrations, public.agent_integrations from anon, authenticated;
revoke all on chat_private.integration_policy, chat_private.integration_credentials
  from public, anon, authenticated, service_role;

grant select, delete on public.user_integrations to authenticated;
grant insert (name, description, server_url, auth_kind, header_name) on public.user_integrations to authenticated;
grant update (name, description, server_url, auth_kind, header_name) on public.user_integrations to authenticated;

-- RLS on and the owner-only policies: scheduler.create_owner_policies (…1100_rls.sql)
call scheduler.create_owner_policies('public.user_integrations',
  p_select => 'Users can see their own integrations',
  p_insert => 'Users can connect integrations for themselves',
  p_update => 'Users can change their own integrations',
  p_delete => 'Users can remove their own integrations');

grant select, delete on public.agent_integrations to authenticated;
grant insert (agent_id, integration_id, enabled_tools) on public.agent_integrations to authenticated;
grant update (enabled_tools) on public.agent_integrations to authenticated;

-- the composite foreign keys require agent and integration to be the caller's own
call scheduler.create_owner_policies('public.agent_integrations',
  p_select => 'Users can see which integrations their agents use',
  p_insert => 'Users can enable their integrations for their agents',
  p_update => 'Users can change their agents'' tool allow-lists',
  p_delete => 'Users can disable integrations for their agents');

revoke execute on all functions in schema chat_private from public, anon, authenticated;
grant execute on function
  chat_private.set_integration_credential(uuid, text, text),
  chat_private.integrations_for(uuid, uuid),
  chat_private.record_integration_status(uuid, text, text),
  chat_private.credentials_to_reencrypt(text, integer),
  chat_private.replace_credential(uuid, text, text, text)
to service_role;

-- Realtime: integration status changes reach the owner's browser live. Only
-- public tables are published; the ciphertexts live in chat_private, which
-- no publication includes (tests/integration/test_integrations_sql.py checks
-- every published column).
do $$
begin
  if exists (select 1 from pg_publication where pubname = 'supabase_realtime')
     and not exists (select 1 from pg_publication_tables
                     where pubname = 'supabase_realtime' and schemaname = 'public'
                       and tablename = 'user_integrations') then
    alter publication supabase_realtime add table public.user_integrations;
  end if;
end
$$;
