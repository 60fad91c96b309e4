# One entry point. `make demo` and `make test` are the README's two commands.
.PHONY: setup up down status reset demo test test-db test-deno test-py lint bench

setup:
	@bash scripts/setup.sh

up: setup
	@agent-tasks stack up

down:
	@agent-tasks stack down

status:
	@agent-tasks stack status

reset: setup
	@agent-tasks stack reset

demo: setup
	@agent-tasks demo

test: setup
	@bash scripts/test.sh

test-db: setup
	@python3 -m worker stack up --db-only >/dev/null && bash scripts/test.sh db

test-deno: setup
	@bash scripts/test.sh deno

test-py: setup
	@bash scripts/test.sh py

lint: setup
	@bash scripts/test.sh lint

bench: setup
	@bash scripts/bench.sh
