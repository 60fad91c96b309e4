-- Write-time validation for schedules and prompt templates.
--
-- Each function returns NULL when the input is valid and a readable reason
-- otherwise, so triggers can raise a clear error and clients can call
-- `public.validate_schedule()` before saving. The cron grammar is the one the
-- worker's planner (croniter) evaluates; tests/integration/test_cron_property.py
-- checks that both accept exactly the same five-field expressions.

-- The cron grammar, field by field, exactly as croniter (the planner) parses a
-- five-field expression, so that everything written here can be planned:
--   * lists `a,b`; `*`; numbers with any leading zeros; names jan..dec and
--     sun..sat in any case; `?` alone in day-of-month or day-of-week (= `*`);
--   * ranges `a-b`, where an equal range (`5-5`) means the whole field and a
--     reversed one (`22-2`, `fri-mon`) wraps around the end of the field;
--     bounds above the field's maximum are refused;
--   * steps `*/n`, `a-b/n` and `a/n` (= `a-max/n`), n >= 1 and of any size;
--   * day-of-week: 7 is Sunday, `d#n` (n-th weekday d of the month, n 1-5,
--     also `mon-fri#2`), `Ln` (last weekday n of the month); `#`/`L` days can
--     not be mixed with plain days;
--   * day-of-month: `L` (last day), `nW` / `Wn` (weekday nearest day n) alone;
--   * with `#`/`L` in day-of-week or `W` in day-of-month, the other day field
--     must be `*` or `?` (croniter intersects the two fields then instead of
--     joining them, and may never find a date: `0 0 11 * 1#1`);
--   * a day-of-month that no selected month has (`0 0 31 4 *`) is refused
--     (croniter's strict check), since the planner could never find a date.
-- Refused although croniter knows them: `H` (hashed, needs a hash id) and `R`
-- (random: the next run would not be reproducible).

-- Expand one cron field to its values. `error` is NULL when the field is
-- valid; `vals` are its numeric values, `has_star` / `has_last` say whether
-- `*` / `L` occur, `nth_keys` the day-of-week values used with `#` or `L`.
-- p_name chooses the field's special syntax ('day-of-month', 'day-of-week').
create or replace function scheduler.cron_field_expand(
  p_field text, p_name text, p_min int, p_max int, p_names text[],
  out error text, out vals int[], out has_star boolean, out has_last boolean, out nth_keys int[]
)
language plpgsql immutable
set search_path = ''
as $$
declare
  v_dom boolean := p_name = 'day-of-month';
  v_dow boolean := p_name = 'day-of-week';
  v_field text := lower(p_field);
  v_items text[];
  v_item text;
  v_e text;
  v_t text;
  v_nth boolean;
  v_m text[];
  v_sws boolean;
  v_slash int;
  v_low numeric;
  v_high numeric;
  v_step numeric;
  v_lo int;
  v_hi int;
  v_st int;
  v_rng int[];
  v_last int;
  v_skip int;
  v_n numeric;
  v_range text := format('%s-%s', p_min, p_max);
begin
  vals := '{}';
  has_star := false;
  has_last := false;
  nth_keys := '{}';
  if v_dow then
    v_range := v_range || ' (7 is also Sunday)';
  end if;
  if p_field is null or p_field = '' then
    error := format('%s field is empty', p_name);
    return;
  end if;
  if v_field ~ '^[hr](\([0-9]+-[0-9]+\))?(/[0-9]+)?$' then
    error := format('%s field %L: hashed (H) and random (R) values are not supported, write the value',
                    p_name, p_field);
    return;
  end if;
  if position('?' in v_field) > 0 then
    if v_field <> '?' then
      error := format('%s field %L: ''?'' must be the whole field', p_name, p_field);
      return;
    end if;
    if not (v_dom or v_dow) then
      error := format('%s field: ''?'' is allowed only in day-of-month and day-of-week', p_name);
      return;
    end if;
    v_field := '*';
  end if;

  v_items := string_to_array(v_field, ',');
  foreach v_item in array v_items loop
    v_e := v_item;
    v_nth := false;
    if v_dow then
      -- d#n (n-th weekday d of the month) and Ln (last weekday n of the month)
      v_m := regexp_match(v_e, '^(?:([a-z0-9_]+|(?:sun|mon|tue|wed|thu|fri|sat)-(?:sun|mon|tue|wed|thu|fri|sat)'
                               '|(?:jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)-'
                               '(?:jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec))#|(l))([0-9]+)$');
      if v_m is not null then
        if v_m[1] is not null then
          if v_m[3]::numeric not between 1 and 5 then
            error := format('%s field %L: the n of day#n must be 1-5, not %s', p_name, v_item, v_m[3]);
            return;
          end if;
          v_e := v_m[1];
        else
          v_e := v_m[3];
        end if;
        v_nth := true;
      end if;
    end if;

    if v_dom then
      -- nW / Wn: the weekday nearest to day n, only as the field's single value
      v_m := regexp_match(v_e, '^(?:([0-9]+)w|w([0-9]+))$');
      if v_m is not null then
        v_n := coalesce(v_m[1], v_m[2])::numeric;
        if v_n < 1 or v_n > 31 then
          error := format('%s field value %s in %L is out of range 1-31', p_name, coalesce(v_m[1], v_m[2]), v_item);
          return;
        end if;
        if cardinality(v_items) > 1 then
          error := format('%s field %L: W (nearest weekday) must be the only value of the field', p_name, p_field);
          return;
        end if;
        vals := vals || v_n::int;
        continue;
      end if;
    end if;

    -- a range a-b[/n], or a/n meaning a-max/n
    v_t := case when v_e ~ '^\*/.' then p_min || '-' || p_max || substr(v_e, 2) else v_e end;
    v_m := regexp_match(v_t, '^([^-]+)-([^-/]+)(/([0-9]+))?$');
    v_sws := false;
    if v_m is null then
      v_slash := length(v_e) - position('/' in reverse(v_e)) + 1;
      if position('/' in v_e) > 0 and v_slash < length(v_e) then
        v_m := regexp_match(left(v_e, v_slash - 1) || '-' || p_max || substr(v_e, v_slash),
                            '^([^-]+)-([^-/]+)(/([0-9]+))?$');
        v_sws := v_m is not null;
      end if;
    end if;

    if v_m is not null then
      if v_dom and v_m[2] = 'l' then
        v_m[2] := '31';
      end if;
      v_low := case when v_m[1] ~ '^[0-9]+$' then v_m[1]::numeric
                    else p_min + array_position(p_names, v_m[1]) - 1 end;
      v_high := case when v_m[2] ~ '^[0-9]+$' then v_m[2]::numeric
                     else p_min + array_position(p_names, v_m[2]) - 1 end;
      if v_low is null or v_high is null then
        error := format('%s field %L: %L is not a valid value', p_name, v_item,
                        case when v_low is null then v_m[1] else v_m[2] end);
        return;
      end if;
      v_step := coalesce(v_m[4], '1')::numeric;
      if v_step = 0 then
        error := format('%s field %L has step 0: a step must be 1 or more', p_name, v_item);
        return;
      end if;
      if v_dow and v_low = 7 then v_low := 0; end if;
      if v_dow and v_high = 7 then v_high := 0; end if;
      if greatest(v_low, v_high) > p_max then
        error := format('%s field range %L is out of range %s', p_name, v_item, v_range);
        return;
      end if;
      v_lo := v_low;
      v_hi := v_high;
      v_st := least(v_step, 1000);  -- any step above the field's width picks one value
      if v_lo = v_hi and v_sws then
        v_rng := array[v_lo];  -- max/n: just the maximum
      else
        if v_lo = v_hi then
          v_lo := p_min;  -- an equal range written as such is the whole field
          v_hi := p_max;
        end if;
        if v_lo > v_hi then
          -- reversed: from a to the end of the field, then from its start to b,
          -- keeping the step's rhythm across the end as croniter does
          v_rng := array(select generate_series(v_lo, p_max, v_st));
          v_last := v_rng[cardinality(v_rng)];
          v_skip := case when (v_last - p_min) + v_st > (p_max - p_min + 1) and (p_max - v_last) < v_st
                         then v_st - (p_max - v_last) else 0 end;
          v_rng := v_rng || array(select generate_series(p_min + v_skip, v_hi, v_st));
        else
          v_rng := array(select generate_series(v_lo, v_hi, v_st));
        end if;
      end if;
      foreach v_lo in array v_rng loop
        if v_lo < p_min or v_lo > p_max then
          error := format('%s field value %s (from %L) is out of range %s', p_name, v_lo, v_item, v_range);
          return;
        end if;
        vals := vals || v_lo;
        if v_nth then
          nth_keys := nth_keys || v_lo;
        end if;
      end loop;
      continue;
    end if;

    -- a single value
    if v_e = '*' then
      has_star := true;
      continue;
    end if;
    if v_dom and v_e = 'l' then
      has_last := true;
      continue;
    end if;
    if v_e ~ '^[0-9]+$' then
      v_n := v_e::numeric;
    else
      v_n := p_min + array_position(p_names, v_e) - 1;
      if v_n is null then
        error := format('%s field has an invalid value %L', p_name, v_item);
        return;
      end if;
    end if;
    if v_dow and v_n = 7 then
      v_n := 0;
    end if;
    if v_n < p_min or v_n > p_max then
      error := format('%s field value %s is out of range %s', p_name, v_e, v_range);
      return;
    end if;
    vals := vals || v_n::int;
    if v_nth then
      nth_keys := nth_keys || v_n::int;
    end if;
  end loop;
end
$$;

-- Reason why one cron field is invalid, or NULL.
create or replace function scheduler.cron_field_error(
  p_field text, p_name text, p_min int, p_max int, p_names text[]
) returns text
language sql immutable
set search_path = ''
as $$
  select (scheduler.cron_field_expand(p_field, p_name, p_min, p_max, p_names)).error
$$;

-- Reason why a cron expression is invalid, or NULL. Five fields (minute hour
-- day-of-month month day-of-week) in the grammar above, or one of the @
-- aliases (@yearly, @annually, @monthly, @weekly, @daily, @midnight, @hourly).
-- Longer than the operator's max_cron_expression_chars (scheduler.limits) is
-- refused before anything is parsed: parsing and planning cost grows with the
-- length, and every field written out in full fits well within the default.
-- stable, not immutable: it reads that limit.
create or replace function scheduler.cron_error(p_expression text) returns text
language plpgsql stable
set search_path = ''
as $$
declare
  v_fields text[];
  v_names constant text[] := array['minute', 'hour', 'day-of-month', 'month', 'day-of-week'];
  v_min constant int[] := array[0, 0, 1, 1, 0];
  v_max constant int[] := array[59, 23, 31, 12, 6];
  v_exp record;
  v_dom record;
  v_month record;
  v_dow record;
  v_count int;
  v_min_day int;
  v_max_days int;
  v_has_w boolean;
  v_dom_star boolean;
  v_dow_star boolean;
begin
  if p_expression is null then
    return 'cron expression is required';
  end if;
  if char_length(p_expression) > scheduler.limit_int('max_cron_expression_chars') then
    return format('cron expression is %s characters; the limit is %s (max_cron_expression_chars)',
                  char_length(p_expression), scheduler.limit_int('max_cron_expression_chars'));
  end if;
  if lower(p_expression) in ('@yearly', '@annually', '@monthly', '@weekly', '@daily', '@midnight', '@hourly') then
    return null;
  end if;
  if octet_length(p_expression) <> char_length(p_expression) then
    return format('invalid cron expression %L: only ASCII characters are allowed', p_expression);
  end if;
  -- fields are separated by ASCII white space, as croniter splits them
  v_fields := regexp_split_to_array(
    regexp_replace(p_expression, '^[ \t\n\r\f\v]+|[ \t\n\r\f\v]+$', '', 'g'), '[ \t\n\r\f\v]+');
  v_count := case when v_fields = array[''] then 0 else cardinality(v_fields) end;
  if v_count <> 5 then
    return format('cron expression %L must have 5 fields (minute hour day-of-month month day-of-week), found %s',
                  p_expression, v_count);
  end if;
  for v_i in 1..5 loop
    v_exp := scheduler.cron_field_expand(
      v_fields[v_i], v_names[v_i], v_min[v_i], v_max[v_i],
      case v_i
        when 4 then array['jan','feb','mar','apr','may','jun','jul','aug','sep','oct','nov','dec']
        when 5 then array['sun','mon','tue','wed','thu','fri','sat']
      end);
    if v_exp.error is not null then
      return format('invalid cron expression %L: %s', p_expression, v_exp.error);
    end if;
    case v_i
      when 3 then v_dom := v_exp;
      when 4 then v_month := v_exp;
      when 5 then v_dow := v_exp;
      else null;
    end case;
  end loop;

  -- `#` and `L` days of the week cannot be mixed with plain days (croniter
  -- refuses it unless the field covers the whole week)
  if cardinality(v_dow.nth_keys) > 0
     and (select count(distinct v) from unnest(v_dow.vals) v) + v_dow.has_star::int <> 7
     and exists (select 1 from unnest(v_dow.vals) v where v <> all (v_dow.nth_keys)) then
    return format('invalid cron expression %L: day-of-week field %L mixes #/L days with plain days',
                  p_expression, v_fields[5]);
  end if;

  -- croniter ORs a restricted day-of-month with a restricted day-of-week,
  -- but it always intersects them with # or L (day-of-week) or W
  -- (day-of-month), and may then never find a date (`0 0 11 * 1#1`): ask for
  -- the other field to be * or ?
  v_has_w := v_fields[3] ~* '^(?:[0-9]+w|w[0-9]+)$';
  v_dom_star := v_dom.has_star or ((select count(distinct d) from unnest(v_dom.vals) d)
                                   + v_dom.has_last::int = 31 and position('*' in v_fields[5]) > 0);
  v_dow_star := v_dow.has_star or ((select count(distinct w) from unnest(v_dow.vals) w) = 7
                                   and position('*' in v_fields[3]) > 0);
  if cardinality(v_dow.nth_keys) > 0 and not v_dom_star then
    return format('invalid cron expression %L: with # or L in day-of-week, set day-of-month to * or ?',
                  p_expression);
  end if;
  if v_has_w and not v_dow_star then
    return format('invalid cron expression %L: with W in day-of-month, set day-of-week to * or ?',
                  p_expression);
  end if;

  -- a day of the month that none of the selected months has never comes
  -- (February counts 29 days); a field listing all 12 months selects them all
  if (select count(distinct m) from unnest(v_month.vals) m) + v_month.has_star::int <> 12
     and cardinality(v_month.vals) > 0 and cardinality(v_dom.vals) > 0 then
    select min(d) into v_min_day from unnest(v_dom.vals) d;
    select max(case when m = 2 then 29 when m in (4, 6, 9, 11) then 30 else 31 end)
      into v_max_days from unnest(v_month.vals) m;
    if v_min_day > v_max_days then
      return format('invalid cron expression %L: day-of-month %s never occurs in month%s %s',
                    p_expression, v_fields[3],
                    case when cardinality(v_month.vals) > 1 then 's' else '' end, v_fields[4]);
    end if;
  end if;
  return null;
end
$$;

-- Reason why a time zone is not an IANA zone name, or NULL.
-- The zone names the server knows, cached: pg_timezone_names reads the whole
-- tz database from disk (~100 ms), far too slow for every task write. A name
-- missing here (tzdata updated since) is looked up the slow way and added.
create table if not exists scheduler.timezones (name text primary key);
alter table scheduler.timezones enable row level security;
comment on table scheduler.timezones is 'Cache of pg_timezone_names for write-time time zone validation.';
insert into scheduler.timezones (name)
select name from pg_catalog.pg_timezone_names
on conflict do nothing;

create or replace function scheduler.timezone_error(p_timezone text) returns text
language plpgsql
set search_path = ''
as $$
begin
  if p_timezone is null then
    return 'timezone is required';
  end if;
  -- IANA names are short; a long one is neither looked up nor echoed back
  if char_length(p_timezone) > 64 then
    return format('unknown time zone (%s characters): use an IANA name such as ''Europe/Berlin'' or ''UTC''',
                  char_length(p_timezone));
  end if;
  if exists (select 1 from scheduler.timezones where name = p_timezone) then
    return null;
  end if;
  if exists (select 1 from pg_catalog.pg_timezone_names where name = p_timezone) then
    insert into scheduler.timezones (name) values (p_timezone) on conflict do nothing;
    return null;
  end if;
  return format('unknown time zone %L: use an IANA name such as ''Europe/Berlin'' or ''UTC''', p_timezone);
end
$$;

-- The variables every prompt template may use, resolved by the worker in the
-- task's time zone at run time.
create or replace function scheduler.builtin_template_variables() returns text[]
language sql immutable
set search_path = ''
as $$
  select array['NOW','TODAY','YESTERDAY','LAST_7_DAYS','LAST_30_DAYS','WEEKDAY','MONTH']
$$;

-- Reason why a prompt template or its variables are invalid, or NULL: every
-- {{NAME}} must be built in or defined in prompt_variables (a JSON object of
-- strings), so an unknown variable never becomes a silent blank.
create or replace function scheduler.template_error(p_template text, p_variables jsonb) returns text
language plpgsql immutable
set search_path = ''
as $$
declare
  v_name text;
  v_key text;
  v_unknown text[] := array[]::text[];
begin
  -- the column's own cap, checked first: validate_schedule takes any size, and
  -- the scan below is linear in it (a 1 MB template cost 2.5 s of CPU)
  if char_length(p_template) > 10000 then
    return format('prompt template is %s characters; at most 10000 are allowed', char_length(p_template));
  end if;
  if p_variables is null or jsonb_typeof(p_variables) <> 'object' then
    return 'prompt_variables must be a JSON object of strings';
  end if;
  for v_key in select jsonb_object_keys(p_variables) loop
    if v_key !~ '^[A-Za-z_][A-Za-z0-9_]{0,63}$' then
      return format('prompt variable name %L must be letters, digits and underscores', v_key);
    end if;
    if jsonb_typeof(p_variables -> v_key) <> 'string' then
      return format('prompt variable %s must be a string', v_key);
    end if;
    if upper(v_key) = any (scheduler.builtin_template_variables()) then
      return format('prompt variable %s is built in and cannot be redefined', v_key);
    end if;
  end loop;
  for v_name in
    select m[1] from regexp_matches(coalesce(p_template, ''), '\{\{\s*([^{}]*?)\s*\}\}', 'g') as m
  loop
    if v_name = any (scheduler.builtin_template_variables()) or p_variables ? v_name then
      continue;
    end if;
    if not v_name = any (v_unknown) then
      v_unknown := v_unknown || v_name;
    end if;
  end loop;
  if cardinality(v_unknown) > 0 then
    return format('unknown template variable%s %s: define %s in prompt_variables or use one of %s',
                  case when cardinality(v_unknown) > 1 then 's' else '' end,
                  (select string_agg('{{' || u || '}}', ', ') from unnest(v_unknown) u),
                  case when cardinality(v_unknown) > 1 then 'them' else 'it' end,
                  array_to_string(scheduler.builtin_template_variables(), ', '));
  end if;
  return null;
end
$$;

grant execute on function scheduler.cron_error(text), scheduler.timezone_error(text),
  scheduler.template_error(text, jsonb), scheduler.builtin_template_variables()
  to task_worker, service_role;
