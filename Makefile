# Siphera developer commands. `make run` and `make test` work on a fresh machine: they
# create .venv, ensure PostgreSQL and Redis run (starting or installing them), then act.
# `make test` also installs Chromium (browser test), coturn (TURN tests), xmlsec1 (the SAML
# tests' identity provider), espeak-ng (speech for the transcription test) when missing, and
# a Docker Compose client (the test that runs `docker-compose config` on docker-compose.yml).
# Settings come from the environment (README: Configuration), e.g.
#   make run PORT=8001 DATABASE_URL=postgres://postgres@127.0.0.1:5432/siphera_dev

SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV := .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: help run test lint format bench clean services stop-local venv chromium coturn xmlsec1 espeak \
	compose

help:
	@echo "make run         set up, migrate, seed the demo org, run web + worker + beat"
	@echo "make test        set up, then run the whole test suite (pytest)"
	@echo "make lint        ruff, import layers (lint-imports), bash -n on scripts"
	@echo "make format      ruff format + ruff check --fix"
	@echo "make bench       run bench/*.py: relay rate, latency, 10k idle sockets; call set-up; SCIM push of 10k users; the HTTP path under wrk (~14 min)"
	@echo "make clean       remove caches, collected static files and logs (keeps .venv, data)"
	@echo "make stop-local  stop the PostgreSQL/Redis that the scripts started under var/"

venv:
	@scripts/ensure_venv.sh

services:
	@scripts/ensure_services.sh

chromium:
	@scripts/ensure_chromium.sh

coturn:
	@scripts/ensure_coturn.sh

xmlsec1:
	@scripts/ensure_xmlsec1.sh

espeak:
	@scripts/ensure_espeak.sh

compose:
	@scripts/ensure_compose.sh

run: venv services
	@exec scripts/run.sh

# PYTEST_ARGS passes options through, e.g. make test PYTEST_ARGS="-k websocket -x".
# pytest's own exit code is reported by make ("Error 5" when no test ran) and fails the run.
test: venv services chromium coturn xmlsec1 compose espeak
	@echo "==> Running the test suite (real PostgreSQL, Redis, uvicorn and Celery worker)"
	$(PY) -m pytest $(PYTEST_ARGS)

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports --no-cache
	@for f in scripts/*.sh bench/*.sh .ci/run; do bash -n "$$f" || exit 1; done

format: venv
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# Runs every bench/*.py (each prints its figures and writes bench/results/*-latest.json).
bench: venv services
	@shopt -s nullglob; files=(bench/*.py); \
	if (( $${#files[@]} == 0 )); then \
		echo "No benchmarks yet: bench/*.py does not exist, nothing was measured."; \
	else \
		for f in "$${files[@]}"; do echo "==> $(PY) $$f"; $(PY) "$$f" || exit $$?; done; \
	fi

stop-local:
	@scripts/ensure_services.sh --stop-local

# Keeps .venv and the project-local database/Redis under var/ (stop them with make stop-local).
clean:
	rm -rf .pytest_cache .ruff_cache var/static var/celerybeat-schedule* static_collected
	find . -path ./.venv -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +
