# DisWM at scale — the front door.
#   make run                   the main job on the embedded default (about 10 min on a 2-core CPU)
#   make test                  installs what is missing (venv, pinned packages, redis-server,
#                              prometheus) and runs the tests
#   make cluster-up ACTORS=N   a long-lived local cluster; make scale ACTORS=N | cluster-status |
#                              cluster-down; make monitor (Prometheus on :9090)
#   make cluster-up SHARDS=3   ... with the replay sharded over a local 3-node Redis Cluster
#   make bench                 benchmarks, JSON under bench/ (each with a same-run baseline)
#   make lint/format           ruff

SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
CONFIG ?= quickstart reacher_easy_to_cheetah_run
CLUSTER_CONFIG ?= debug
ACTORS ?= 4
SHARDS ?=
RUN ?= runs/cluster
PORT ?= 9090
SET ?=
DISWM := $(VENV)/bin/diswm
export MUJOCO_GL ?= egl
export RAY_USAGE_STATS_ENABLED ?= 0

.PHONY: help install redis prometheus run test test-all test-two-nodes lint format bench bench-envs \
	bench-replay bench-replay-shards bench-actors bench-learner cluster-up scale cluster-status cluster-down monitor tensorboard clean

help:
	@echo "make run | test | test-all | cluster-up ACTORS=N | scale ACTORS=N | cluster-status |"
	@echo "make cluster-down | monitor | tensorboard [RUNS=runs/<run>] | bench | lint | format | clean"

# The virtualenv with the pinned packages (setup.cfg); rebuilt when setup.cfg changes.
$(STAMP): setup.cfg pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP) redis prometheus

# Debian's redis-server (the replay service and its tests need a real one).
redis:
	@command -v redis-server >/dev/null 2>&1 || { \
	  echo "installing redis-server from Debian"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq redis-server >/dev/null; }
	@redis-server --version

# Debian's prometheus (make monitor, and the test that scrapes a live cluster).
prometheus:
	@command -v prometheus >/dev/null 2>&1 || { \
	  echo "installing prometheus from Debian"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends prometheus >/dev/null; }

# The main job: Redis + Ray locally, a short pretraining, then online DisWM with several actors.
run: install
	$(DISWM) run --config $(CONFIG) $(if $(SET),--set $(SET))

test: install
	$(PY) -m pytest -q -m "not slow and not two_nodes" $(PYTEST_ARGS)

# deploy/README.md's multi-machine steps on one machine: a Ray head and a second Ray node.
test-two-nodes: install
	$(PY) -m pytest -q -m two_nodes $(PYTEST_ARGS)

test-all: install
	$(PY) -m pytest -q $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check diswm learner actors replay_service pretrain tests

format: $(STAMP)
	$(VENV)/bin/ruff check --fix diswm learner actors replay_service pretrain tests
	$(VENV)/bin/ruff format diswm learner actors replay_service pretrain tests

cluster-up: install
	$(DISWM) cluster up --run-dir $(RUN) --actors $(ACTORS) --config $(CLUSTER_CONFIG) $(if $(SET),--set $(SET)) \
	  $(if $(SHARDS),--set replay.shards=$(SHARDS))

scale:
	$(DISWM) cluster scale $(ACTORS) --run-dir $(RUN)

cluster-status:
	$(DISWM) cluster status --run-dir $(RUN)

cluster-down:
	$(DISWM) cluster down --run-dir $(RUN)

monitor: $(STAMP) prometheus
	$(DISWM) monitor --run-dir $(RUN) --port $(PORT)

tensorboard: $(STAMP)
	$(DISWM) tensorboard $(or $(RUNS),runs)

bench: bench-envs bench-replay bench-replay-shards bench-actors bench-learner

bench-envs: install
	$(VENV)/bin/diswm bench envs --json bench/envs.json

bench-replay: install
	$(VENV)/bin/diswm bench replay --json bench/replay.json

# The replay on 1, 2, 3 shards (local Redis Clusters), 4 writer processes and 1 sampler.
bench-replay-shards: install
	$(VENV)/bin/diswm bench replay --shards 1 2 3 --json bench/replay-shards.json

bench-actors: install
	$(VENV)/bin/diswm bench actors --config debug --json bench/actors.json

bench-learner: install
	$(VENV)/bin/diswm bench learner --json bench/learner.json

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
