# One entry point. `make demo` and `make test` are the README's two commands.
# Everything runs from this checkout's own environment, .venv/ (scripts/setup.sh).
.PHONY: setup up down status reset demo test test-db test-deno test-py test-browser lint bench

BIN := .venv/bin

setup:
	@bash scripts/setup.sh

up: setup
	@$(BIN)/agent-tasks stack up

down:
	@if [ -x $(BIN)/agent-tasks ]; then $(BIN)/agent-tasks stack down; fi

status: setup
	@$(BIN)/agent-tasks stack status

reset: setup
	@$(BIN)/agent-tasks stack reset

demo: setup
	@$(BIN)/agent-tasks demo

test: setup
	@bash scripts/test.sh

test-db: setup
	@bash scripts/test.sh db

test-deno: setup
	@bash scripts/test.sh deno

test-py: setup
	@bash scripts/test.sh py

test-browser: setup
	@bash scripts/test.sh browser

lint: setup
	@bash scripts/test.sh lint

bench: setup
	@bash scripts/bench.sh
