# taskd: `make run` starts the daemon on the embedded database, `make test` runs the whole suite.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# The example handlers of tests/fixtures/example-handlers, installed for the tests only: the
# tests put this folder on their path (tests/conftest.py), so `taskd handlers` in the
# environment that `make run` uses never lists them.
TEST_SITE := $(VENV)/test-site

.PHONY: run run-photo test lint check clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	# pip 25.1 is the first to install PEP 735 dependency groups (--group dev).
	$(BIN)/python -m pip install --quiet --upgrade 'pip>=25.1'

$(VENV)/.run-installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[embedded,api]'
	touch $@

# The dev install: the extras, the dev and bench dependency groups, and the example handlers
# (offered by entry points) in $(TEST_SITE).
$(VENV)/.dev-installed: pyproject.toml tests/fixtures/example-handlers/pyproject.toml \
		tests/fixtures/example-handlers/src/taskd_example_handlers/__init__.py | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade 'pip>=25.1'  # a venv from before --group
	$(BIN)/python -m pip install --quiet -e '.[embedded,api,otel]' --group dev --group bench
	# Earlier versions installed the example handlers into the venv itself.
	$(BIN)/python -m pip uninstall --quiet --yes taskd-example-handlers 2>/dev/null || true
	rm -rf $(TEST_SITE)
	$(BIN)/python -m pip install --quiet --no-deps --target $(TEST_SITE) \
		tests/fixtures/example-handlers
	touch $@

## run: the daemon on the embedded PostgreSQL (or TASKD_DATABASE_URL when set), with the fake
## external APIs (taskd.testing.fake_apis: a Lumina-style job API and a content audit) on
## 127.0.0.1:8099 behind the lumina queue, polled every 0.5 s (the lumina
## queue's default is 5 s, for a real API), and `taskd api` with the operators' console on
## 127.0.0.1:8080 (TASKD_CONSOLE_PORT), started once the daemon is ready; it prints a sign-in
## link with a development admin token valid 30 minutes. Without TASKD_API__JWT_SECRET a
## random one is made for the run. Ctrl-C stops all three gracefully.
run: $(VENV)/.run-installed
	@$(BIN)/python -m taskd.testing.fake_apis --port 8099 --job-seconds 2 & lumina=$$!; \
	TASKD_API__JWT_SECRET=$${TASKD_API__JWT_SECRET:-$$($(BIN)/python -c \
		'import secrets; print(secrets.token_hex(32))')}; \
	export TASKD_API__JWT_SECRET; \
	metrics=$${TASKD_METRICS_ADDR:-127.0.0.1:9464}; \
	$(BIN)/python -m taskd.testing.dev_console --port $${TASKD_CONSOLE_PORT:-8080} \
		--wait-for http://$$metrics/readyz & console=$$!; \
	trap 'kill $$lumina $$console 2>/dev/null' EXIT; \
	TASKD_QUEUES__LUMINA__BASE_URL=$${TASKD_QUEUES__LUMINA__BASE_URL:-http://127.0.0.1:8099} \
	TASKD_QUEUES__LUMINA__POLLING_INTERVAL=$${TASKD_QUEUES__LUMINA__POLLING_INTERVAL:-0.5} \
	TASKD_METRICS_ADDR=$$metrics \
	$(BIN)/taskd run

## run-photo: the photo-platform profile (deploy/examples/photo-platform.toml: basic_clean and
## model_pose12) on the embedded PostgreSQL (or TASKD_DATABASE_URL), with the fake image and
## audit APIs on 127.0.0.1:8099 (2 s jobs; the audit rejects images whose prompt holds
## "[unsafe]"). Ctrl-C stops both. Then: docs/photo-platform.md.
run-photo: $(VENV)/.run-installed
	@$(BIN)/python -m taskd.testing.fake_apis --port 8099 --job-seconds 2 \
		--reject-marker '[unsafe]' & \
	trap 'kill $$! 2>/dev/null' EXIT; \
	TASKD_CONFIG=$${TASKD_CONFIG:-deploy/examples/photo-platform.toml} \
	TASKD_METRICS_ADDR=$${TASKD_METRICS_ADDR:-127.0.0.1:9464} \
	$(BIN)/taskd run

## test: the whole suite against a real PostgreSQL (see tests/conftest.py for which)
test: $(VENV)/.dev-installed
	TASKD_TEST_SITE=$(abspath $(TEST_SITE)) $(BIN)/pytest -n auto --dist worksteal

## lint: ruff and mypy --strict
lint: $(VENV)/.dev-installed
	$(BIN)/ruff check src tests
	$(BIN)/mypy

check: lint test

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
