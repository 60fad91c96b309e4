#!/usr/bin/env bash
# Every test of the project, in stages: lint, db (pgTAP), deno, py (pytest).
# `scripts/test.sh` runs them all; `scripts/test.sh STAGE...` runs some.
set -euo pipefail
cd "$(dirname "$0")/.."
# this checkout's environment (make setup creates it): python, pytest, ruff,
# mypy, deno and agent-tasks all come from .venv/bin
[ -x .venv/bin/python ] || bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
unset PYTHONPATH
stages=("$@")
[ ${#stages[@]} -gt 0 ] || stages=(lint db deno py)

run_lint() {
  echo "== lint: ruff, mypy"
  python -m ruff check worker tests bench
  python -m mypy
}

run_db() {
  echo "== db: pgTAP (supabase/tests/database) on a fresh database"
  python -m worker stack up --db-only >/dev/null
  local name="pgtap_$$" url
  url=$(python -c "from worker import stack; s=stack.require_running(); print(stack.create_database(s, '$name'))")
  trap "python -c \"from worker import stack; stack.drop_database(stack.require_running(), '$name')\"" RETURN
  psql -q "$url" -c 'create extension if not exists pgtap with schema extensions' >/dev/null
  PGOPTIONS='-c search_path=public,extensions' pg_prove --ext .sql -r -d "$url" supabase/tests/database/
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
  python -m pytest -q -p no:cacheprovider tests
}

for s in "${stages[@]}"; do "run_$s"; done
