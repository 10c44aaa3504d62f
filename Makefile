# Two commands on a fresh machine: `make run` and `make test`. Everything installs from this repo.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test test-pg lint clean

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[test]'
	@touch $(STAMP)

install: $(STAMP)

## Start the backend on embedded defaults (PostgreSQL under ./data); the bot too when BOT_TOKEN is set.
run: $(STAMP)
	$(BIN)/llm-bot-core run

## The Directus admin panel on 127.0.0.1:8055 (DIRECTUS_PORT) over the same database as `make run`.
## The first run installs Node 22 and Directus into ~/.cache/llm-bot-core (several minutes).
.PHONY: admin
admin: $(STAMP)
	$(BIN)/llm-bot-core admin

## The whole test suite against real PostgreSQL (embedded, or TEST_DATABASE_URL) and Redis.
test: $(STAMP)
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

## The suite again on the machine's PostgreSQL server (CI runs both).
TEST_PG_URL ?= postgresql+asyncpg://postgres@127.0.0.1:5432/postgres
test-pg: $(STAMP)
	TEST_DATABASE_URL=$(TEST_PG_URL) $(BIN)/python -m pytest -m "not directus"
