-- Demo data only (applied by `supabase db reset` on a local Supabase project;
-- `agent-tasks demo` creates the same rows itself on the local stack).
insert into auth.users (id, email)
values ('7c1e0f7a-0000-4000-8000-000000000001', 'demo@agent-tasks.local')
on conflict (id) do nothing;

insert into public.agents (id, user_id, name, system_prompt)
values ('7c1e0f7a-0000-4000-8000-0000000000a1', '7c1e0f7a-0000-4000-8000-000000000001',
        'Demo assistant', 'You are a concise assistant that posts short scheduled check-ins.')
on conflict (id) do nothing;

insert into public.conversation_sessions (id, user_id, agent_id, title)
values ('7c1e0f7a-0000-4000-8000-0000000000c1', '7c1e0f7a-0000-4000-8000-000000000001',
        '7c1e0f7a-0000-4000-8000-0000000000a1', 'Demo: scheduled check-ins')
on conflict (id) do nothing;

insert into public.agent_tasks (id, user_id, agent_id, name, prompt_template, schedule_type,
                                cron_expression, timezone, conversation_mode, conversation_id)
values ('7c1e0f7a-0000-4000-8000-0000000000d1', '7c1e0f7a-0000-4000-8000-000000000001',
        '7c1e0f7a-0000-4000-8000-0000000000a1', 'Weekday morning summary',
        'Summarise what happened on {{YESTERDAY}} and list three priorities for {{TODAY}}.',
        'cron', '0 9 * * 1-5', 'Europe/Berlin', 'reuse', '7c1e0f7a-0000-4000-8000-0000000000c1')
on conflict (id) do nothing;
