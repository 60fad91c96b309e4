#!/usr/bin/env bash
# Every benchmark: runs each bench/bench_*.py in turn (or the ones named, e.g.
# `scripts/bench.sh queue enqueue`) and prints their JSON figures, one object
# per bench, as {"bench": NAME, "exit": CODE, "result": {...}} lines.
# Benchmarks are never tests: a bench that misses its goal still prints.
# Needs the local stack's Postgres (started if needed); the queue bench also
# installs its peers (npm install in bench/peers; Procrastinate is in .venv/).
set -uo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || bash scripts/setup.sh || exit 1
export PATH="$PWD/.venv/bin:$PATH"

if [ $# -gt 0 ]; then
  benches=()
  for name in "$@"; do benches+=("bench/bench_${name#bench_}.py"); done
else
  benches=(bench/bench_*.py)
fi

status=0
for path in "${benches[@]}"; do
  name=$(basename "$path" .py)
  echo "[bench] $name" >&2
  out=$(python "$path")
  code=$?
  [ $code -eq 0 ] || status=1
  python -c 'import json, sys
name, code, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
try:
    result = json.loads(out)
except ValueError:
    result = {"unparsed_output": out[-2000:]}
print(json.dumps({"bench": name, "exit": code, "result": result}))' "${name#bench_}" "$code" "$out"
done
exit $status
