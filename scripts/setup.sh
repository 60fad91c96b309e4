#!/usr/bin/env bash
# Install everything the project needs on a fresh Debian machine (idempotent):
# Postgres 15 with pg_cron, pgTAP and wal2json, Chromium for the browser tests (apt-get, as root), then this
# checkout's own Python environment in .venv/ (git-ignored): the package,
# editable, with the exact versions of uv.lock and the dev tools (Deno comes
# from PyPI too). uv itself is pinned and kept in .tools/ (git-ignored).
# Nothing is installed into the machine's Python: two clones never share a
# package, a console script or a stack.
set -euo pipefail
cd "$(dirname "$0")/.."

UV_VERSION=0.13.9

need_apt=()
[ -x /usr/lib/postgresql/15/bin/postgres ] || need_apt+=(postgresql-15)
[ -f /usr/share/postgresql/15/extension/pg_cron.control ] || need_apt+=(postgresql-15-cron)
[ -f /usr/share/postgresql/15/extension/pgtap.control ] || need_apt+=(postgresql-15-pgtap)
[ -f /usr/lib/postgresql/15/lib/wal2json.so ] || need_apt+=(postgresql-15-wal2json)
command -v pg_prove >/dev/null || need_apt+=(libtap-parser-sourcehandler-pgtap-perl)
# the console's browser tests drive Debian's Chromium with Playwright (its own browser download is not used)
command -v chromium >/dev/null || need_apt+=(chromium)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "missing Debian packages: ${need_apt[*]}; run: sudo apt-get install -y ${need_apt[*]}" >&2
    exit 1
  fi
  echo "[setup] apt-get install ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

uv=.tools/uv/bin/uv
if [ ! -x "$uv" ] || [ "$("$uv" --version 2>/dev/null | cut -d" " -f2)" != "$UV_VERSION" ]; then
  echo "[setup] uv $UV_VERSION into .tools/uv (from PyPI)"
  rm -rf .tools/uv
  # --target: only this folder, never the interpreter's site-packages
  if ! log=$(PIP_ROOT_USER_ACTION=ignore python3 -m pip install -q --disable-pip-version-check \
               --target .tools/uv "uv==$UV_VERSION" 2>&1); then
    echo "$log" >&2
    echo "setup: could not install uv $UV_VERSION with \`python3 -m pip\` (is pip installed? apt-get install python3-pip)" >&2
    exit 1
  fi
fi

# --frozen: exactly uv.lock (refresh it with `.tools/uv/bin/uv lock` after editing pyproject.toml);
# a no-op when .venv already matches it
UV_PROJECT_ENVIRONMENT="$PWD/.venv" "$uv" sync --frozen --quiet

# The Supabase CLI, pinned in scripts/supabase-cli/package.json (npm, project-local):
# the stack applies migrations with it, `make test` lints and checks the schema with it.
if [ ! -x scripts/supabase-cli/node_modules/.bin/supabase ]; then
  command -v npm >/dev/null || { echo "the Supabase CLI needs npm: apt-get install -y nodejs npm" >&2; exit 1; }
  echo "[setup] npm ci (Supabase CLI)"
  npm ci --no-audit --no-fund --prefix scripts/supabase-cli >/dev/null
fi
if ! [ -f /usr/share/postgresql/15/extension/plpgsql_check.control ]; then
  [ "$(id -u)" -eq 0 ] || { echo "missing: sudo apt-get install -y postgresql-15-plpgsql-check" >&2; exit 1; }
  echo "[setup] apt-get install postgresql-15-plpgsql-check (supabase db lint)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql-15-plpgsql-check >/dev/null
fi
