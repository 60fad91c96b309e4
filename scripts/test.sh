#!/usr/bin/env bash
# Every test of the project, in stages: lint, db (pgTAP), deno, py (pytest), browser (the web
# console in Chromium: its own pytest run, Playwright's sync API and asyncio tests kept apart).
# `scripts/test.sh` runs them all; `scripts/test.sh STAGE...` runs some.
set -euo pipefail
cd "$(dirname "$0")/.."
# this checkout's environment (make setup creates it): python, pytest, ruff,
# mypy, deno and agent-tasks all come from .venv/bin
[ -x .venv/bin/python ] || bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
unset PYTHONPATH
stages=("$@")
[ ${#stages[@]} -gt 0 ] || stages=(lint db deno py browser)

run_lint() {
  echo "== lint: ruff, mypy"
  python -m ruff check worker tests bench
  python -m mypy
}

run_db() {
  echo "== db: the Supabase CLI's db lint and db advisors, then pgTAP as supabase test db runs it"
  python -m worker stack up --db-only >/dev/null
  local cli=scripts/supabase-cli/node_modules/.bin/supabase name="pgtap_$$" url
  url=$(python -c "from worker import stack; s=stack.require_running(); print(stack.create_database(s, '$name'))")
  trap "python -c \"from worker import stack; stack.drop_database(stack.require_running(), '$name')\"" RETURN
  psql -q -v ON_ERROR_STOP=1 "$url" -f supabase/seed.sql >/dev/null
  # a fresh copy of the current migrations; any finding fails. pg_cron serves only
  # the main database, so its two functions are declared for plpgsql_check, in the
  # linted copy only (sql/local/cron_signatures.sql)
  python -c "from worker import stack; stack.create_database(stack.require_running(), 'lint_$$')" >/dev/null
  trap "python -c \"from worker import stack; s=stack.require_running(); stack.drop_database(s, '$name'); stack.drop_database(s, 'lint_$$')\"" RETURN
  psql -q -v ON_ERROR_STOP=1 "${url/\/$name?//lint_$$?}" -f sql/local/cron_signatures.sql >/dev/null
  "$cli" --workdir . db lint --db-url "${url/\/$name?//lint_$$?}" --level warning --fail-on warning
  "$cli" --workdir . db advisors --db-url "$url" --type all --fail-on warn
  # `supabase test db` (which needs Docker) enables pgTAP in `extensions`, then runs
  # pg_prove --ext .pg --ext .sql -r on supabase/tests as postgres, against the
  # migrated and seeded database: the same here
  psql -q "$url" -c 'create extension if not exists pgtap with schema extensions' >/dev/null
  (cd supabase/tests && pg_prove --ext .pg --ext .sql -r -d "${url%%\?*}" .)
}

run_deno() {
  export NO_COLOR=1
  echo "== deno: check, lint, test (supabase/functions)"
  local fn=supabase/functions
  (cd "$fn/chat" && deno check index.ts && deno lint .. && deno test --allow-env --allow-read ..)
}

run_py() {
  echo "== py: pytest (unit, integration, end to end)"
  python -m worker stack up --db-only >/dev/null
  python -m pytest -q -p no:cacheprovider tests --ignore=tests/browser
}

run_browser() {
  echo "== browser: the web console in Debian's Chromium (Playwright), screenshots in tests/browser/artifacts/"
  python -m worker stack up --db-only >/dev/null
  python -m pytest -q -p no:cacheprovider tests/browser
}

for s in "${stages[@]}"; do "run_$s"; done
