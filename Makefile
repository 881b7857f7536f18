# The two commands of the README, and the rest of the project's chores.
#   make demo   run the demo app under gunicorn, 4 workers, FileSystemCache in instance/cache
#   make test   lint, type-check and run the whole test suite
# Each first creates .venv and installs the project with its test extra, once.

VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
PORT ?= 8000

.PHONY: demo test bench install

install: $(STAMP)

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/gunicorn -c gunicorn.conf.py --bind 127.0.0.1:$(PORT) app:app

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/python bench/on_filesystem.py --json bench/results/filesystem.json
	$(BIN)/python bench/on_redis.py --json bench/results/redis.json
	$(BIN)/python bench/chart.py bench/results/filesystem.json bench/results/redis.json --out docs/benchmark.svg
