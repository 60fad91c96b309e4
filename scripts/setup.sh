#!/usr/bin/env bash
# Install everything the project needs on a fresh Debian machine (idempotent):
# Postgres 15 with pg_cron, pgTAP and wal2json (apt-get, as root), then the
# Python package with its dev tools (pip, which also brings Deno from PyPI).
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
[ -x /usr/lib/postgresql/15/bin/postgres ] || need_apt+=(postgresql-15)
[ -f /usr/share/postgresql/15/extension/pg_cron.control ] || need_apt+=(postgresql-15-cron)
[ -f /usr/share/postgresql/15/extension/pgtap.control ] || need_apt+=(postgresql-15-pgtap)
[ -f /usr/lib/postgresql/15/lib/wal2json.so ] || need_apt+=(postgresql-15-wal2json)
command -v pg_prove >/dev/null || need_apt+=(libtap-parser-sourcehandler-pgtap-perl)
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

# the installed package must be this checkout (an editable install of another
# clone would run that clone's code and stack)
here=$(pwd -P)
installed=$(cd / && python3 -c 'import pathlib, worker; print(pathlib.Path(worker.__file__).resolve().parents[1])' 2>/dev/null || true)
if [ "$installed" != "$here" ] \
   || ! python3 -c 'import aiohttp, croniter, dotenv, httpx, hypothesis, jwt, psycopg_pool, pydantic_settings, pytest, pytest_asyncio, rich' 2>/dev/null \
   || ! command -v deno >/dev/null || ! command -v agent-tasks >/dev/null; then
  echo "[setup] pip install -e .[dev]"
  python3 -m pip install -q --disable-pip-version-check -e '.[dev]'
fi
