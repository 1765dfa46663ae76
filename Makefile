# The two commands of the README: `make run` (the main job: an offline `flwr run .`
# simulation) and `make test` (set up, lint and run every test). Both create .venv.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test bench

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@

# ARGS go to `flwr run`, e.g. ARGS="--run-config \"rule='krum' attack='sign-flip'\""
run: $(BIN)/.installed
	$(BIN)/python scripts/run_simulation.py $(ARGS)

test: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

$(BIN)/.bench: $(BIN)/.installed
	$(BIN)/pip install --quiet -e ".[dev,bench]"
	$(BIN)/pip install --quiet --no-deps "byzfl==0.0.11"
	touch $@

bench: $(BIN)/.bench
	$(BIN)/python benchmarks/aggregation_speed.py
