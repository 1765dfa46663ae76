# The two commands of the README: `make test` (set up and run every test) and,
# once the ServerApp lands, `make run`.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin

.PHONY: test lint bench

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@

test: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

$(BIN)/.bench: $(BIN)/.installed
	$(BIN)/pip install --quiet -e ".[dev,bench]"
	$(BIN)/pip install --quiet --no-deps "byzfl==0.0.11"
	touch $@

bench: $(BIN)/.bench
	$(BIN)/python benchmarks/aggregation_speed.py
