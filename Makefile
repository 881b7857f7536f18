# The two commands of the README, and the rest of the project's chores.
#   make demo      run the demo app under gunicorn, 4 workers, FileSystemCache in instance/cache
#   make test      lint, type-check and run the whole test suite
#   make nemesis   the fault suite alone, for longer (NEMESIS_SECONDS each case)
#   make bench     the benchmarks, and their chart
# Each creates $(VENV) and installs into it what it needs, once. CI runs `make test` twice:
# PYTHON=python3.11 with CONSTRAINTS=.ci/floors.txt (every floor), and PYTHON=python3.13.

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

.PHONY: demo test nemesis bench install

install: $(VENV)/.test-stamp

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.demo-stamp: pyproject.toml $(CONSTRAINTS) | $(BIN)/python
	$(PIP) -e '.[redis,prometheus,limiter]'
	touch $@

$(VENV)/.test-stamp: pyproject.toml $(CONSTRAINTS) | $(BIN)/python
	$(PIP) -e '.[redis,prometheus,test,lint]'
	touch $@ $(VENV)/.demo-stamp

demo: $(VENV)/.demo-stamp
	$(BIN)/gunicorn -c gunicorn.conf.py --bind 127.0.0.1:$(PORT) app:app

test: $(VENV)/.test-stamp
ifeq ($(LINT),1)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
endif
	$(BIN)/python -m pytest

nemesis: $(VENV)/.test-stamp
	NEMESIS_SECONDS=$(NEMESIS_SECONDS) $(BIN)/python -m pytest tests/nemesis -s -q

$(VENV)/.bench-stamp: $(VENV)/.test-stamp
	$(PIP) -e '.[test,lint,bench]'
	touch $@

bench: $(VENV)/.bench-stamp
	$(BIN)/python bench/on_memo.py --json bench/results/memo.json --svg docs/memo.svg
	$(BIN)/python bench/on_lmdb.py --json bench/results/lmdb.json
	$(BIN)/python bench/on_filesystem.py --json bench/results/filesystem.json
	$(BIN)/python bench/on_redis.py --json bench/results/redis.json
	$(BIN)/python bench/on_gunicorn.py --json bench/results/gunicorn.json
	$(BIN)/python bench/on_limits.py --json bench/results/limits.json
	$(BIN)/python bench/chart.py bench/results/lmdb.json bench/results/filesystem.json \
		bench/results/redis.json --out docs/benchmark.svg
