-- Write-time validation for schedules and prompt templates.
--
-- Each function returns NULL when the input is valid and a readable reason
-- otherwise, so triggers can raise a clear error and clients can call
-- `public.validate_schedule()` before saving. The cron grammar is the one the
-- worker's planner (croniter) evaluates; tests/integration/test_cron_property.py
-- checks that both accept exactly the same five-field expressions.

-- Reason why one cron field is invalid, or NULL.
create or replace function scheduler.cron_field_error(
  p_field text, p_name text, p_min int, p_max int, p_names text[]
) returns text
language plpgsql immutable
set search_path = ''
as $$
declare
  v_item text;
  v_range text;
  v_step text;
  v_parts text[];
  v_lo int;
  v_hi int;
  v_bound text;
  v_value int;
begin
  if p_field is null or p_field = '' then
    return format('%s field is empty', p_name);
  end if;
  foreach v_item in array string_to_array(p_field, ',') loop
    if v_item = '' then
      return format('%s field %L has an empty list item', p_name, p_field);
    end if;
    v_parts := string_to_array(v_item, '/');
    if array_length(v_parts, 1) > 2 then
      return format('%s field %L has more than one step', p_name, v_item);
    end if;
    v_range := v_parts[1];
    v_step := v_parts[2];
    if v_step is not null then
      if v_step !~ '^[0-9]+$' then
        return format('%s field %L has a non-numeric step', p_name, v_item);
      end if;
      if v_step::numeric < 1 or v_step::numeric > (p_max - p_min + 1) then
        return format('%s field %L has step %s outside 1-%s', p_name, v_item, v_step, p_max - p_min + 1);
      end if;
    end if;
    if v_range in ('*', '?') then
      continue;
    end if;
    v_parts := string_to_array(v_range, '-');
    if array_length(v_parts, 1) > 2 or v_range = '' then
      return format('%s field %L is not a value or a range', p_name, v_item);
    end if;
    foreach v_bound in array v_parts loop
      if v_bound ~ '^[0-9]+$' then
        if length(v_bound) > 4 then
          return format('%s field value %s is out of range %s-%s', p_name, v_bound, p_min, p_max);
        end if;
        v_value := v_bound::int;
        if v_value < p_min or v_value > p_max then
          return format('%s field value %s is out of range %s-%s', p_name, v_bound, p_min, p_max);
        end if;
      elsif p_names is not null and lower(v_bound) = any (p_names) then
        continue;
      else
        return format('%s field has an invalid value %L', p_name, v_bound);
      end if;
    end loop;
  end loop;
  return null;
end
$$;

-- Reason why a cron expression is invalid, or NULL. Five fields (minute hour
-- day-of-month month day-of-week) with *, lists, ranges, steps and English
-- month/day names, or one of the @ aliases.
create or replace function scheduler.cron_error(p_expression text) returns text
language plpgsql immutable
set search_path = ''
as $$
declare
  v_fields text[];
  v_error text;
begin
  if p_expression is null then
    return 'cron expression is required';
  end if;
  if lower(btrim(p_expression)) in ('@yearly', '@annually', '@monthly', '@weekly',
                                    '@daily', '@midnight', '@hourly') then
    return null;
  end if;
  v_fields := regexp_split_to_array(btrim(p_expression), '\s+');
  if btrim(p_expression) = '' or array_length(v_fields, 1) <> 5 then
    return format('cron expression %L must have 5 fields (minute hour day-of-month month day-of-week), found %s',
                  p_expression, coalesce(array_length(v_fields, 1), 0));
  end if;
  v_error := coalesce(
    scheduler.cron_field_error(v_fields[1], 'minute', 0, 59, null),
    scheduler.cron_field_error(v_fields[2], 'hour', 0, 23, null),
    scheduler.cron_field_error(v_fields[3], 'day-of-month', 1, 31, null),
    scheduler.cron_field_error(v_fields[4], 'month', 1, 12,
      array['jan','feb','mar','apr','may','jun','jul','aug','sep','oct','nov','dec']),
    scheduler.cron_field_error(v_fields[5], 'day-of-week', 0, 7,
      array['sun','mon','tue','wed','thu','fri','sat'])
  );
  if v_error is not null then
    return format('invalid cron expression %L: %s', p_expression, v_error);
  end if;
  return null;
end
$$;

-- Reason why a time zone is not an IANA zone name, or NULL.
create or replace function scheduler.timezone_error(p_timezone text) returns text
language sql stable
set search_path = ''
as $$
  select case
    when p_timezone is null then 'timezone is required'
    when exists (select 1 from pg_catalog.pg_timezone_names where name = p_timezone) then null
    else format('unknown time zone %L: use an IANA name such as ''Europe/Berlin'' or ''UTC''', p_timezone)
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
  v_unknown text[] := '{}';
begin
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
