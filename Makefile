# api-router — every target creates/updates the virtual environment it needs.
#   make run    serve the default profile (qwen) on 0.0.0.0:8000, one worker per CPU
#   make test   install what the tests need (venv + system tools) and run every test
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PROFILE ?=
PORT ?=
PYTEST_ARGS ?=

.PHONY: run test test-fast lint format schema tools image bench bench-quick clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,dev,redis,sentry]'
	touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/api-router $(PROFILE) $(PORT)

# System tools the tests use (Redis, Prometheus, podman, helm …), installed by our own script.
tools:
	bash scripts/install-tools.sh

test: $(STAMP) tools
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff format --check service tests
	$(VENV)/bin/ruff check service tests
	$(VENV)/bin/mypy service

format: $(STAMP)
	$(VENV)/bin/ruff format service tests
	$(VENV)/bin/ruff check --fix service tests

# Regenerate the shipped profile JSON Schema from the pydantic model.
schema: $(STAMP)
	$(PY) -c 'import json; from service.config import profile_schema; print(json.dumps(profile_schema(), indent=2))' > service/config/profile.schema.json

# The container image `api-router` (podman): on the official slim Python base when a registry
# answers, else on a local debootstrap base (scripts/build-base-image.sh), as an air-gapped site.
IMAGE ?= localhost/api-router:latest
image:
	bash scripts/build-image.sh $(IMAGE)

# Benchmark (bench/README.md): not part of `make test`. bench/setup.sh installs wrk, nginx, the
# peers (LiteLLM, Portkey) and the chart's matplotlib in their own ignored folders under .cache/.
BENCH_ARGS ?=
bench: $(STAMP)
	bash bench/setup.sh
	.cache/bench-venv/bin/python bench/run.py $(BENCH_ARGS)

bench-quick: $(STAMP)
	bash bench/setup.sh
	.cache/bench-venv/bin/python bench/run.py --quick $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build dist *.egg-info
