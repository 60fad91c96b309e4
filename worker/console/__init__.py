"""The web console: conversations, chat, schedules, run history, notifications and operator pages.

A Starlette application served by uvicorn (`agent-tasks console`). It owns no
data rule: every user page runs its SQL in one transaction as the signed-in
user (`role authenticated` and the token's claims in `request.jwt.claims`,
exactly as PostgREST runs a supabase-js call), actions go through the public
SQL functions (`run_task_now`, `pause_task`, ...), and chat turns go to the
chat function with the user's own token. Live updates come from the
`console_live` NOTIFY channel (migration 20261121001500_console_live.sql),
handed to each browser only for its own user.

Modules: `settings` (configuration), `auth` (token checks, sign-in cookies),
`db` (the user's transaction), `live` (LISTEN fan-out), `render` (sanitised
Markdown, cron in words), `pages` (the routes), `app` (assembly).
"""
