# `make test` is the one test command: it builds the virtualenv, makes sure a redis-server exists,
# then runs ruff, mypy and pytest. CI (.ci/run) calls exactly this.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: test lint typecheck pytest bench install clean

test: install lint typecheck pytest

install: $(VENV)/.installed
	@./scripts/ensure-redis-server $(VENV)

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test,dev]'
	touch $@

lint: install
	$(BIN)/ruff check services testkit tests bench examples

typecheck: install
	$(BIN)/mypy

pytest: install
	$(BIN)/pytest -q

bench: install
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
