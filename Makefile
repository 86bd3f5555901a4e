# taskd: `make run` starts the daemon on the embedded database, `make test` runs the whole suite.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: run test lint check clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.run-installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[embedded]'
	touch $@

# The dev install adds tests/fixtures/example-handlers: handlers offered by entry points.
$(VENV)/.dev-installed: pyproject.toml tests/fixtures/example-handlers/pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev,embedded,api,bench]'
	$(BIN)/python -m pip install --quiet --no-deps -e tests/fixtures/example-handlers
	touch $@

## run: the daemon on the embedded PostgreSQL (or TASKD_DATABASE_URL when set), with a fake
## Lumina API on 127.0.0.1:8099 behind the lumina queue. Ctrl-C stops both gracefully.
run: $(VENV)/.run-installed
	@$(BIN)/python -m taskd.testing.fake_lumina --port 8099 --job-seconds 2 & \
	trap 'kill $$! 2>/dev/null' EXIT; \
	TASKD_QUEUES__LUMINA__BASE_URL=$${TASKD_QUEUES__LUMINA__BASE_URL:-http://127.0.0.1:8099} \
	TASKD_METRICS_ADDR=$${TASKD_METRICS_ADDR:-127.0.0.1:9464} \
	$(BIN)/taskd run

## test: the whole suite against a real PostgreSQL (see tests/conftest.py for which)
test: $(VENV)/.dev-installed
	$(BIN)/pytest -n auto --dist worksteal

## lint: ruff and mypy --strict
lint: $(VENV)/.dev-installed
	$(BIN)/ruff check src tests
	$(BIN)/mypy

check: lint test

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
