# DisWM at scale — the front door.
#   make test        installs what is missing (venv, pinned packages, redis-server) and runs the tests
#   make bench       runs the benchmarks, writing JSON under bench/
#   make lint/format ruff

SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
export MUJOCO_GL ?= egl

.PHONY: help install redis test test-all lint format bench bench-envs bench-replay clean

help:
	@echo "make test | test-all | bench | lint | format | clean"

# The virtualenv with the pinned packages (setup.cfg); rebuilt when setup.cfg changes.
$(STAMP): setup.cfg pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP) redis

# Debian's redis-server (the replay service and its tests need a real one).
redis:
	@command -v redis-server >/dev/null 2>&1 || { \
	  echo "installing redis-server from Debian"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq redis-server >/dev/null; }
	@redis-server --version

test: install
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

test-all: install
	$(PY) -m pytest -q $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check diswm learner actors replay_service pretrain tests

format: $(STAMP)
	$(VENV)/bin/ruff check --fix diswm learner actors replay_service pretrain tests
	$(VENV)/bin/ruff format diswm learner actors replay_service pretrain tests

bench: bench-envs bench-replay

bench-envs: install
	$(VENV)/bin/diswm bench envs --json bench/envs.json

bench-replay: install
	$(VENV)/bin/diswm bench replay --json bench/replay.json

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
