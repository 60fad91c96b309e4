-- What the suite assumes of the platform holds as on a Supabase project: GoTrue's
-- auth.users gives an id no default (so the helpers and the product pass one),
-- and query statistics are preloaded in `extensions` (`supabase inspect db`).
begin;
\ir helpers/personas.psql
select plan(4);

select col_hasnt_default('auth', 'users', 'id', 'auth.users.id has no default, as GoTrue creates it');
select throws_ok($$insert into auth.users (email) values ('no-id@pgtap.test')$$, '23502', null,
  'a user row without an id is refused');
select is((select extnamespace::regnamespace::text from pg_extension where extname = 'pg_stat_statements'),
  'extensions', 'pg_stat_statements is installed in extensions');
select ok((select count(*) >= 0 from extensions.pg_stat_statements),
  'pg_stat_statements is preloaded: its view can be read');

select * from finish();
rollback;
