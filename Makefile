# api-router — every target creates/updates the virtual environment it needs.
#   make run    serve the default profile (qwen) on 0.0.0.0:8000, one worker per CPU
#   make test   install what the tests need (venv + system tools) and run every test
#   make lint   ruff (format + lint) and mypy, as CI runs them before the tests
#   make lock   rewrite requirements/*.txt from pyproject.toml (UPGRADE=1: newest in range)
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PROFILE ?=
PORT ?=
PYTEST_ARGS ?=

.PHONY: run test test-fast lint format lock schema tools image bench bench-quick clean

# The venv holds exactly requirements/dev.txt (hash-checked, nothing resolved; anything else
# removed), then the project itself, editable, built by the locked setuptools. A changed lock
# or pyproject.toml re-syncs it.
$(STAMP): requirements/dev.txt pyproject.toml scripts/sync-venv.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) scripts/sync-venv.py requirements/dev.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	$(PY) -m pip check
	touch $(STAMP)

# The lock files, from pyproject.toml's ranges, with every file's sha256 (uv, pinned, in its own
# venv under .cache/tools). One resolution for every platform and Python >= 3.11 (markers where
# they differ). Versions already locked are kept unless UPGRADE=1 (or LOCK_ARGS='--upgrade-package
# NAME'), so `make lock` after an edit of pyproject.toml moves only what the edit requires.
#   requirements/dev.txt      every extra: what `make test` and `make lint` install into .venv
#   requirements/runtime.txt  the dependencies, the redis and otel extras: what the image installs,
#                             held to dev.txt's versions, so the image runs what the tests ran
# The build backend (pyproject's build-system.requires, on stdin) is locked into both: the
# project is then installed with --no-build-isolation and nothing is resolved at build time.
UV_VERSION := 0.13.8
UV_VENV := .cache/tools/uv-$(UV_VERSION)
UV := $(UV_VENV)/bin/uv
UPGRADE ?=
LOCK_ARGS ?=
BUILD_REQUIRES := $(PYTHON) -c 'import tomllib; print(*tomllib.load(open("pyproject.toml", "rb"))["build-system"]["requires"], sep="\n")'
UV_COMPILE := $(UV) pip compile --quiet --no-config --system-certs --universal --python-version 3.11 \
	--generate-hashes --annotation-style line --custom-compile-command 'make lock'

$(UV):
	$(PYTHON) -m venv $(UV_VENV)
	$(UV_VENV)/bin/pip install --quiet uv==$(UV_VERSION)

lock: $(UV)
	mkdir -p requirements
	$(BUILD_REQUIRES) | $(UV_COMPILE) $(if $(UPGRADE),--upgrade) $(LOCK_ARGS) \
		--all-extras pyproject.toml - --output-file requirements/dev.txt
	$(BUILD_REQUIRES) | $(UV_COMPILE) --constraint requirements/dev.txt \
		--extra redis --extra otel pyproject.toml - --output-file requirements/runtime.txt

run: $(STAMP)
	$(VENV)/bin/api-router $(PROFILE) $(PORT)

# System tools the tests use (Redis, Prometheus, podman, helm …), installed by our own script.
tools:
	bash scripts/install-tools.sh

# The suite runs in TEST_WORKERS processes (pytest-xdist; every test starts its own servers on
# free ports, so they do not meet; what must not happen twice at once, such as building the
# image or playing the chart's fixed-name pod, takes a lock: tests/support.py `machine_lock`).
# The default `--dist load` hands out tests by index: the scope schedulers key them by node id
# and lose schemathesis's tests, which share one (tests/lost_tests.py fails such a run). Most of
# a test's time is a router starting or a timeout running out, so two processes on two cores
# take ~0.6 of one's time (README, "Start").
# TEST_WORKERS=0: one process, as plain pytest.
TEST_WORKERS ?= 2
XDIST := $(if $(filter-out 0,$(TEST_WORKERS)),-n $(TEST_WORKERS))

# The project's bytecode is written once before the run: the tests start a few hundred router
# processes (`python -m service` and its spawned workers), and with PYTHONDONTWRITEBYTECODE set
# (as on these machines) none of them would store it, so each compiled all of service/ from
# source again, about 0.15 s per process (0.3 s of a router's 1.5 s start, measured 2026-12-04).
# A source file edited later is recompiled in memory as usual (its .pyc no longer matches).
BYTECODE := $(PY) -m compileall -q service tests

test: $(STAMP) tools
	$(BYTECODE)
	$(PY) -m pytest $(XDIST) $(PYTEST_ARGS)

# Every test that needs no system service (no root, no tools); `make test` runs these and the rest.
SERVICE_MARKERS := not redis and not prometheus and not podman and not helm and not agents
test-fast: $(STAMP)
	$(BYTECODE)
	$(PY) -m pytest $(XDIST) -m "$(SERVICE_MARKERS)" $(PYTEST_ARGS)

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
	$(PY) -c 'import json; from service.config import routing_schema; print(json.dumps(routing_schema(), indent=2))' > service/config/routing.schema.json

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
